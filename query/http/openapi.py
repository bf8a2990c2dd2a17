"""The OpenAPI 3 description of the HTTP API (kept next to the routes it describes)."""

from __future__ import annotations

from auditlog.ingest.taxonomy import NODE_ACTIONS, RESERVED_ACTIONS, TAXONOMY
from auditlog.query.filters import PARAM_NAMES

#: One event as a client sends it (also the request body example).
EXAMPLE_EVENT = {
    "user": "alice",
    "action": "config.filter_update",
    "target": "filter-12",
    "domain": "example.org",
    "ip": "192.0.2.10",
    "user_agent": "admin-ui/1.0",
    "success": True,
    "details": {"old": "block", "new": "quarantine"},
}

_FILTER_DOCS = {
    "from": "Inclusive start: RFC 3339, a date (YYYY-MM-DD) or relative (-30d, -12h, -15m)",
    "to": "Exclusive end, same forms as from",
    "user": "User(s), comma-separated (OR)",
    "action": "Action(s), exact or prefix like config.*",
    "target": "Target(s)",
    "domain": "Domain(s)",
    "ip": "IP address(es)",
    "recipient": "details.recipient value(s)",
    "success": "true or false",
    "node": "Node id(s)",
}


def _param(name: str, desc: str, schema: dict | None = None, required: bool = False) -> dict:
    return {
        "name": name,
        "in": "query",
        "required": required,
        "description": desc,
        "schema": schema or {"type": "string", "maxLength": 4096},
    }


def _flag_param(name: str, desc: str) -> dict:
    """A query parameter that is true or false (``1`` and ``0`` too)."""
    return _param(name, desc, {"type": "string", "enum": ["true", "false", "1", "0"]})


def _filters() -> list[dict]:
    out = []
    for n in PARAM_NAMES:
        schema = {"type": "string", "enum": ["true", "false"]} if n == "success" else None
        out.append(_param(n, _FILTER_DOCS[n], schema))
    return out


ERROR = {"$ref": "#/components/schemas/Error"}


def _object_body(**properties: dict) -> dict:
    """A required JSON request body: an object of exactly these properties, each required."""
    schema = {"type": "object", "required": list(properties), "additionalProperties": False, "properties": properties}
    return {"required": True, "content": {"application/json": {"schema": schema}}}


def _responses(ok: dict, *codes: int) -> dict:
    r = {**ok}
    text = {
        400: "Invalid input",
        401: "Missing or invalid API key",
        403: "Role not allowed",
        404: "Not found",
        405: "Method not allowed (the log is append-only)",
        413: "Body too large",
        415: "Unsupported media type",
        422: "Idempotency-Key already used for a different request (nothing written)",
        409: "Conflict: the log has damage, no checkpoint can vouch for it",
        503: "Overloaded; retry after Retry-After",
    }
    for c in codes:
        r[str(c)] = {"description": text[c], "content": {"application/json": {"schema": ERROR}}}
    return r


def openapi_document() -> dict:
    event_in = {
        "type": "object",
        "additionalProperties": False,
        "required": ["user", "action"],
        "properties": {
            "user": {"type": "string", "minLength": 1, "maxLength": 1024},
            # what the server accepts: the taxonomy (less the node's own actions) or custom.*
            "action": {
                "description": "Dotted action name. The node's own actions (audit.*, "
                f"{', '.join(sorted(NODE_ACTIONS))}) are refused (400)",
                "anyOf": [
                    {"type": "string", "enum": sorted(TAXONOMY - RESERVED_ACTIONS)},
                    {"type": "string", "maxLength": 1024, "pattern": r"^custom(\.[a-z0-9_]+)+$"},
                ],
            },
            "target": {"type": ["string", "null"]},
            "domain": {"type": ["string", "null"]},
            "ip": {
                "anyOf": [{"type": "string", "format": "ipv4"}, {"type": "string", "format": "ipv6"}, {"type": "null"}]
            },
            "user_agent": {"type": ["string", "null"]},
            "success": {"type": "boolean"},
            "details": {"type": "object"},
        },
    }
    entry = {
        "type": "object",
        "properties": {
            k: {"type": t}
            for k, t in (
                ("id", "string"),
                ("node", "string"),
                ("seq", "integer"),
                ("ts", "string"),
                ("user", "string"),
                ("action", "string"),
                ("target", ["string", "null"]),
                ("domain", ["string", "null"]),
                ("ip", ["string", "null"]),
                ("user_agent", ["string", "null"]),
                ("success", "boolean"),
                ("details", "object"),
                ("signature", "string"),
                ("integrity", "string"),
                ("violation", "string"),
            )
        },
    }
    bearer = [{"bearer": []}]
    return {
        # 3.1: the schemas use JSON Schema type lists such as ["string", "null"]
        "openapi": "3.1.0",
        "info": {
            "title": "auditlog",
            "version": "1",
            "description": "Tamper-evident, append-only audit log. There is no update or delete.",
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["error"],
                    "properties": {
                        "error": {
                            "type": "object",
                            "required": ["status", "message"],
                            "properties": {
                                "status": {"type": "integer"},
                                "message": {"type": "string"},
                                "problems": {"type": "array", "items": {"type": "object"}},
                            },
                        }
                    },
                },
                "EventIn": event_in,
                "Entry": entry,
            },
        },
        "paths": {
            "/api/v1/events": {
                "post": {
                    "summary": "Append a batch of events (all or nothing); 201 once durable",
                    "security": bearer,
                    "parameters": [
                        {
                            "name": "Idempotency-Key",
                            "in": "header",
                            "required": False,
                            "description": (
                                "Makes a retry safe: bound to the request (SHA-256 of the body "
                                "and the Content-Type family, JSON or msgpack) and scoped to the "
                                "API key. The same key with the same request replays the first "
                                "answer (200, Idempotent-Replay: true) and appends nothing; the "
                                "same key with a different request is refused (422). Keys are "
                                "kept for the node's last 10 000 keyed batches, across "
                                "restarts."
                            ),
                            "schema": {"type": "string", "minLength": 1, "maxLength": 200},
                        }
                    ],
                    "requestBody": {
                        "required": True,
                        "description": (
                            'A JSON array of events, {"events": [...]}, or the same in msgpack. A '
                            "repeated key in any object or map, at any depth, is refused (400 naming it)."
                        ),
                        "content": {
                            "application/json": {
                                "example": [EXAMPLE_EVENT],
                                "schema": {
                                    "oneOf": [
                                        {"type": "array", "items": {"$ref": "#/components/schemas/EventIn"}},
                                        {
                                            "type": "object",
                                            "required": ["events"],
                                            "additionalProperties": False,
                                            "properties": {
                                                "events": {
                                                    "type": "array",
                                                    "items": {"$ref": "#/components/schemas/EventIn"},
                                                }
                                            },
                                        },
                                    ]
                                },
                            },
                            "application/msgpack": {"schema": {"type": "string", "format": "binary"}},
                        },
                    },
                    "responses": _responses(
                        {
                            "201": {
                                "description": "Appended",
                                "content": {
                                    "application/json": {
                                        "schema": {
                                            "type": "object",
                                            "properties": {
                                                "appended": {"type": "integer"},
                                                "first_id": {"type": "string"},
                                                "last_id": {"type": "string"},
                                            },
                                        }
                                    }
                                },
                            },
                            "200": {
                                "description": "Replay of an Idempotency-Key already appended with "
                                "this request (header Idempotent-Replay: true); the "
                                "body is the first answer",
                                "headers": {"Idempotent-Replay": {"schema": {"type": "string", "enum": ["true"]}}},
                            },
                        },
                        400,
                        401,
                        403,
                        413,
                        415,
                        422,
                        503,
                    ),
                }
            },
            "/api/v1/audit-log": {
                "get": {
                    "summary": "Query entries, merged by (ts, node, seq); JSON page or NDJSON stream",
                    "security": bearer,
                    "parameters": _filters()
                    + [
                        _param(
                            "limit",
                            "Page size, 1..10000 (default 1000)",
                            {"type": "integer", "minimum": 1, "maximum": 10000},
                        ),
                        _param("cursor", "next_cursor from the previous page"),
                        _param("order", "asc (default) or desc", {"type": "string", "enum": ["asc", "desc"]}),
                        _param(
                            "format",
                            "json (default), ndjson, or ecs (Elastic Common Schema, NDJSON)",
                            {"type": "string", "enum": ["json", "ndjson", "ecs"]},
                        ),
                        _flag_param(
                            "follow",
                            "true: stream new matching entries as NDJSON until the client leaves (from now, from, "
                            "or a cursor), with heartbeat lines that carry a cursor to resume",
                        ),
                    ],
                    "responses": _responses(
                        {
                            "200": {
                                "description": "A page",
                                "content": {
                                    "application/json": {
                                        "schema": {
                                            "type": "object",
                                            "properties": {
                                                "events": {
                                                    "type": "array",
                                                    "items": {"$ref": "#/components/schemas/Entry"},
                                                },
                                                "next_cursor": {"type": ["string", "null"]},
                                                "nodes": {"type": "object"},
                                                "integrity_violations": {"type": "integer"},
                                            },
                                        }
                                    },
                                    "application/x-ndjson": {"schema": {"type": "string"}},
                                },
                            }
                        },
                        400,
                        401,
                        403,
                    ),
                }
            },
            "/api/v1/audit-log/export.csv": {
                "get": {
                    "summary": "CSV export of the whole filtered range (streamed; audited)",
                    "security": bearer,
                    "parameters": _filters()
                    + [
                        _param("order", "asc or desc", {"type": "string", "enum": ["asc", "desc"]}),
                        _flag_param(
                            "bom", "false: no UTF-8 byte order mark (for machine consumers; default true, for Excel)"
                        ),
                    ],
                    "responses": _responses(
                        {"200": {"description": "CSV", "content": {"text/csv": {"schema": {"type": "string"}}}}},
                        400,
                        401,
                        403,
                    ),
                }
            },
            "/api/v1/audit-log/export.pdf": {
                "get": {
                    "summary": "PDF report of the filtered entries (GDPR subject access; audited)",
                    "security": bearer,
                    "parameters": _filters()
                    + [
                        _param("order", "asc or desc", {"type": "string", "enum": ["asc", "desc"]}),
                        _param("title", "Report title", {"type": "string", "maxLength": 200}),
                        _flag_param(
                            "bundle",
                            "true: make the evidence bundle of exactly these entries first, embed it in the PDF "
                            "and name its SHA-256 and checkpoints",
                        ),
                        _flag_param("signatures", "true: an appendix with every entry's signature"),
                    ],
                    "responses": _responses(
                        {
                            "200": {
                                "description": "PDF",
                                "content": {"application/pdf": {"schema": {"type": "string", "format": "binary"}}},
                            }
                        },
                        400,
                        401,
                        403,
                    ),
                }
            },
            "/api/v1/reports/four-eyes": {
                "get": {
                    "summary": "Four-eyes report: each action confirmed by a different user?",
                    "security": bearer,
                    "parameters": [
                        _param("from", _FILTER_DOCS["from"]),
                        _param("to", _FILTER_DOCS["to"]),
                        _param("node", _FILTER_DOCS["node"]),
                        _param(
                            "pair",
                            "ACTION:CONFIRM_ACTION (repeatable; default config.dkim_rotate:config.dkim_rotate_confirm)",
                        ),
                    ],
                    "responses": _responses(
                        {
                            "200": {
                                "description": "Report",
                                "content": {
                                    "application/json": {
                                        "schema": {
                                            "type": "object",
                                            "properties": {
                                                "rotations": {"type": "array", "items": {"type": "object"}},
                                                "orphan_confirmations": {"type": "array"},
                                                "ok": {"type": "boolean"},
                                            },
                                        }
                                    }
                                },
                            }
                        },
                        400,
                        401,
                        403,
                    ),
                }
            },
            "/api/v1/verify": {
                "get": {
                    "summary": "Integrity report of this node (scope=cluster: all nodes)",
                    "security": bearer,
                    "parameters": [_param("scope", "node or cluster", {"type": "string", "enum": ["node", "cluster"]})],
                    "responses": _responses({"200": {"description": "Report"}}, 400, 401, 403),
                }
            },
            "/api/v1/audit-log/count": {
                "get": {
                    "summary": "How many entries match, from every node (counted where they are, none rendered); "
                    "entries that do not verify are counted apart as violations",
                    "security": bearer,
                    "parameters": _filters(),
                    "responses": _responses({"200": {"description": "count, violations, nodes"}}, 400, 401, 403),
                }
            },
            "/api/v1/audit-log/histogram": {
                "get": {
                    "summary": "The matches per interval over the filter's whole range, from every node: buckets "
                    "with their start, count and count per node (the counts sum to the matches)",
                    "security": bearer,
                    "parameters": _filters()
                    + [
                        _param(
                            "interval",
                            "bucket width: a whole number and s, m, h or d (like 1h); at most 10000 buckets",
                            {"type": "string", "pattern": "^[1-9][0-9]{0,5}[smhd]$"},
                            required=True,
                        )
                    ],
                    "responses": _responses(
                        {"200": {"description": "interval, buckets, count, violations, nodes"}}, 400, 401, 403
                    ),
                }
            },
            "/api/v1/audit-log/export.bundle": {
                "get": {
                    "summary": "Evidence bundle of the matching entries (tar; checked offline with node.pub, or, on a node with peers, every node's bundle with cosigned checkpoints and certificates, checked with the cluster CA); audited",
                    "security": bearer,
                    "parameters": _filters(),
                    "responses": _responses({"200": {"description": "The bundle"}}, 400, 401, 403, 409),
                }
            },
            "/api/v1/checkpoints": {
                "get": {
                    "summary": "The node's newest signed checkpoints (C2SP notes over its Merkle tree), newest first: "
                    "the latest, the newest limit, or those made from .. to",
                    "security": bearer,
                    "parameters": [
                        _param(
                            "limit",
                            "how many (1 to 1000; default 1, or 1000 with from/to)",
                            {"type": "integer", "minimum": 1, "maximum": 1000},
                        ),
                        _param(
                            "from", "made at or after (RFC 3339 or relative, as for the audit log)", {"type": "string"}
                        ),
                        _param("to", "made before", {"type": "string"}),
                    ],
                    "responses": _responses({"200": {"description": "Checkpoints"}}, 400, 401, 403),
                },
                "post": {
                    "summary": "Make a signed checkpoint now (admin); 409 when the log has damage",
                    "security": bearer,
                    "responses": _responses(
                        {"201": {"description": "The checkpoint and its entry's seq"}}, 400, 401, 403, 409
                    ),
                },
            },
            "/api/v1/proofs/inclusion": {
                "get": {
                    "summary": "Inclusion proof (RFC 9162) of the entry of seq in the node's tree of size entries",
                    "security": bearer,
                    "parameters": [
                        _param("seq", "the entry's seq", {"type": "integer", "minimum": 1}, required=True),
                        _param("size", "a checkpoint's tree size", {"type": "integer", "minimum": 1}, required=True),
                    ],
                    "responses": _responses({"200": {"description": "Leaf hash and proof"}}, 400, 401, 403, 409),
                }
            },
            "/api/v1/proofs/consistency": {
                "get": {
                    "summary": "Consistency proof (RFC 9162) from the node's tree of old entries to new",
                    "security": bearer,
                    "parameters": [
                        _param("old", "the older checkpoint's size", {"type": "integer", "minimum": 1}, required=True),
                        _param("new", "the newer checkpoint's size", {"type": "integer", "minimum": 1}, required=True),
                    ],
                    "responses": _responses({"200": {"description": "Proof"}}, 400, 401, 403, 409),
                }
            },
            "/api/v1/cluster": {
                "get": {
                    "summary": "Nodes, reachability, heads, retention",
                    "security": bearer,
                    "responses": _responses({"200": {"description": "Cluster status"}}, 401, 403),
                }
            },
            "/api/v1/api-keys": {
                "get": {
                    "summary": "List API keys (admin)",
                    "security": bearer,
                    "responses": _responses({"200": {"description": "Keys (no secrets)"}}, 401, 403),
                },
                "post": {
                    "summary": "Create an API key (admin); the key is shown once",
                    "security": bearer,
                    "requestBody": _object_body(
                        name={"type": "string", "minLength": 1, "maxLength": 128},
                        role={"type": "string", "enum": ["writer", "reader", "admin"]},
                    ),
                    "responses": _responses({"201": {"description": "Created"}}, 400, 401, 403),
                },
            },
            "/api/v1/api-keys/{key_id}": {
                "delete": {
                    "summary": "Revoke an API key (admin)",
                    "security": bearer,
                    "parameters": [{"name": "key_id", "in": "path", "required": True, "schema": {"type": "string"}}],
                    "responses": _responses({"200": {"description": "Revoked"}}, 401, 403, 404),
                }
            },
            "/api/v1/holds": {
                "get": {
                    "summary": "The legal holds in force (reader or admin)",
                    "security": bearer,
                    "responses": _responses({"200": {"description": "Holds"}}, 401, 403),
                },
                "post": {
                    "summary": "Set a legal hold (admin): entries from 'from' to 'to' are never purged",
                    "security": bearer,
                    "requestBody": _object_body(
                        **{
                            "from": {"type": "string", "minLength": 1},
                            "to": {"type": "string", "minLength": 1},
                            "reason": {"type": "string", "minLength": 1, "maxLength": 1000},
                        }
                    ),
                    "responses": _responses({"201": {"description": "Set"}}, 400, 401, 403),
                },
            },
            "/api/v1/holds/{hold_id}": {
                "delete": {
                    "summary": "Release a legal hold (admin)",
                    "security": bearer,
                    "parameters": [
                        {"name": "hold_id", "in": "path", "required": True, "schema": {"type": "string"}},
                        {"name": "reason", "in": "query", "required": False, "schema": {"type": "string"}},
                    ],
                    "responses": _responses({"200": {"description": "Released"}}, 400, 401, 403, 404),
                }
            },
            "/api/v1/whoami": {
                "get": {
                    "summary": "The calling key's name and role",
                    "security": bearer,
                    "responses": _responses({"200": {"description": "Identity"}}, 401),
                }
            },
            "/api/v1/openapi.json": {
                "get": {"summary": "This document", "responses": {"200": {"description": "OpenAPI"}}}
            },
            "/healthz": {"get": {"summary": "Liveness", "responses": {"200": {"description": "ok"}}}},
            "/metrics": {"get": {"summary": "Prometheus metrics", "responses": {"200": {"description": "text"}}}},
        },
    }
