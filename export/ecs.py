"""Elastic Common Schema (ECS 8.x) documents, one per entry, as NDJSON.

Field mapping:

=========================  ===============================================
``@timestamp``             entry ts (RFC 3339, µs)
``event.action``           action; ``event.category``/``event.type`` from
                           the taxonomy family (auth -> authentication,
                           config -> configuration, ...)
``event.outcome``          success / failure
``event.id``/``sequence``  ``<node>:<seq>`` / seq
``event.hash``             the entry's chained HMAC signature (hex)
``event.kind``             ``event`` (``alert`` for security.* and violations)
``user.name``              user
``source.ip``              ip
``user_agent.original``    user_agent
``email.*``                quarantine events: local_id (the gateway's own
                           mail id, ``details.mail_id``), message_id (the
                           RFC 5322 Message-ID, ``details.message_id``, when
                           sent), subject, from, to
``observer``/``host``      the node that recorded the entry
``labels.integrity``       ok / violation (``error.message`` says why)
``auditlog.*``             target, domain and details as recorded
=========================  ===============================================
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator

from auditlog.engine.entry import Entry, format_ts

ECS_VERSION = "8.11.0"

# family -> (category, default types); per-action types refine it.  Types stay within
# the ECS "expected event types" of their category (email: info only; intrusion_detection:
# allowed, denied, info), or Elastic's checks flag the pair; event.action says the rest.
_CATEGORY = {
    "auth": (["authentication"], ["info"]),
    "user": (["iam"], ["user"]),
    "config": (["configuration"], ["change"]),
    "quarantine": (["email"], ["info"]),
    "cluster": (["host"], ["info"]),
    "licence": (["configuration"], ["change"]),
    "backup": (["database"], ["info"]),
    "restore": (["database"], ["change"]),
    "security": (["intrusion_detection"], ["info"]),
    "audit": (["configuration"], ["info"]),
    "custom": (["host"], ["info"]),
}
_TYPES = {
    "auth.login": ["start"],
    "auth.logout": ["end"],
    "auth.login_failed": ["start"],
    "user.create": ["user", "creation"],
    "user.delete": ["user", "deletion"],
    "user.update": ["user", "change"],
    "user.role_change": ["user", "change"],
    "user.password_reset": ["user", "change"],
    "config.domain_add": ["creation"],
    "config.domain_remove": ["deletion"],
    "config.filter_create": ["creation"],
    "config.filter_delete": ["deletion"],
    "cluster.node_join": ["start"],
    "cluster.node_leave": ["end"],
    "audit.api_key_create": ["creation"],
    "audit.api_key_revoke": ["deletion"],
    "audit.retention_purge": ["deletion"],
}


def ecs_document(e: Entry) -> dict:
    family = e.action.split(".", 1)[0]
    category, types = _CATEGORY.get(family, (["host"], ["info"]))
    types = _TYPES.get(e.action, types)
    alert = family == "security" or e.integrity != "ok"
    doc: dict = {
        "@timestamp": format_ts(e.ts),
        "ecs": {"version": ECS_VERSION},
        "event": {
            "id": e.id,
            "sequence": e.seq,
            "action": e.action,
            "kind": "alert" if alert else "event",
            "category": category,
            "type": types,
            "outcome": "success" if e.success else "failure",
            "hash": e.signature.hex() if isinstance(e.signature, bytes) else None,
            "module": "auditlog",
            "dataset": "auditlog.audit",
        },
        "user": {"name": e.user},
        "observer": {"name": e.node, "type": "mail-gateway", "product": "auditlog"},
        "host": {"name": e.node},
        "labels": {"integrity": e.integrity},
        "auditlog": {"target": e.target, "domain": e.domain, "details": _plain(e.details)},
    }
    if e.ip:
        doc["source"] = {"ip": e.ip}
    if e.user_agent:
        doc["user_agent"] = {"original": e.user_agent}
    d = e.details if isinstance(e.details, dict) else {}
    if family == "quarantine" or "recipient" in d:
        email = {}
        if d.get("mail_id") is not None:
            # the gateway's quarantine id: not the RFC 5322 Message-ID (email.message_id)
            email["local_id"] = str(d["mail_id"])
        if d.get("message_id") is not None:
            email["message_id"] = str(d["message_id"])
        if d.get("subject") is not None:
            email["subject"] = str(d["subject"])
        if d.get("sender") is not None:
            email["from"] = {"address": [str(d["sender"])]}
        if d.get("recipient") is not None:
            rc = d["recipient"]
            email["to"] = {"address": [str(r) for r in rc] if isinstance(rc, (list, tuple)) else [str(rc)]}
        if email:
            doc["email"] = email
    if e.domain:
        doc.setdefault("destination", {})["domain"] = e.domain
    if e.integrity != "ok":
        doc["error"] = {"message": e.violation or "integrity violation"}
    return doc


def iter_ecs(entries: Iterable[Entry], chunk: int = 500) -> Iterator[str]:
    """ECS documents as NDJSON text, several lines per chunk."""
    lines: list[str] = []
    for e in entries:
        lines.append(json.dumps(ecs_document(e), ensure_ascii=False, separators=(",", ":")))
        if len(lines) >= chunk:
            lines.append("")
            yield "\n".join(lines)
            lines.clear()
    if lines:
        lines.append("")
        yield "\n".join(lines)


def _plain(v):
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, bytes):
        return v.hex()
    return v
