"""What the node's HTTP apps and their routes share: the running node under its
app key, the one error shape, the error middleware and authorization.

Routes import this module, never ``query.http.app`` (which imports the routes).
One error shape for every failure, pinned by tests::

    {"error": {"status": 400, "message": "...", "problems": [...]}}
"""

from __future__ import annotations

import json
import logging

from aiohttp import web

from auditlog.engine.errors import AuditLogError
from auditlog.ingest.committer import Overloaded
from auditlog.query.errors import QueryError
from auditlog.query.http.auth import AuthError, require
from auditlog.query.node import RunningNode

log = logging.getLogger("auditlog.http")
NODE: web.AppKey[RunningNode] = web.AppKey("node", RunningNode)


def error_response(status: int, message: str, **extra) -> web.Response:
    body = {"error": {"status": status, "message": message, **extra}}
    headers = {"WWW-Authenticate": 'Bearer realm="auditlog"'} if status == 401 else None
    return web.json_response(body, status=status, headers=headers)


#: reads that stream the log: while one runs, background indexing waits its turn
_READ_PREFIXES = ("/api/v1/audit-log", "/api/v1/reports", "/peer/v1/scan")


@web.middleware
async def error_middleware(request: web.Request, handler):
    node = request.app[NODE]
    # a follow (follow=true) counts itself, for each look only: it waits far longer than it reads
    reading = (
        request.method == "GET" and request.path.startswith(_READ_PREFIXES) and "follow" not in request.rel_url.query
    )
    if reading:
        node.reads_in_flight += 1
    try:
        resp = await _handle(request, handler, node)
    finally:
        if reading:
            node.reads_in_flight -= 1
    return resp


#: the longest request line and header the HTTP parser takes (aiohttp's own 8190 would
#: answer a longer one with a plain-text 400 before any route or middleware runs)
MAX_LINE_BYTES = 256 * 1024
#: the longest query string a route is asked to read; longer gets a JSON 414
MAX_QUERY_BYTES = 32 * 1024


async def _handle(request: web.Request, handler, node):
    if len(request.query_string) > MAX_QUERY_BYTES:
        return error_response(
            414, f"query string too long: {len(request.query_string)} bytes (limit {MAX_QUERY_BYTES})"
        )
    try:
        resp = await handler(request)
    except AuditLogError as e:
        extra = {}
        problems = getattr(e, "problems", None)
        if problems:
            extra["problems"] = problems[:100]
        resp = error_response(e.http_status, str(e), **extra)
    except Overloaded as e:
        resp = error_response(
            503,
            f"{e}; retry later",
        )
        resp.headers["Retry-After"] = "1"
    except web.HTTPRequestEntityTooLarge:
        resp = error_response(413, f"request body too large (limit {node.settings.max_body_bytes} bytes)")
    except web.HTTPMethodNotAllowed as e:
        resp = error_response(
            405,
            f"method {request.method} not allowed here; the log is append-only "
            f"(allowed: {', '.join(sorted(e.allowed_methods))})",
        )
        resp.headers["Allow"] = ",".join(sorted(e.allowed_methods))
    except web.HTTPException as e:
        if e.status < 400:
            raise
        resp = error_response(e.status, e.reason if e.status != 404 else f"no such resource: {request.path}")
    except Exception:  # never leak a traceback to a client
        log.exception("unhandled error on %s %s", request.method, request.path)
        resp = error_response(500, "internal error (logged on the server)")
    route = request.match_info.route.resource.canonical if request.match_info.route.resource else "unmatched"
    node.metrics.inc("auditlog_http_requests_total", route=route, status=resp.status)
    return resp


async def json_object(request: web.Request, keys: set[str], required: set[str], shape: str) -> dict:
    """The request body as a JSON object with only ``keys`` and at least ``required``
    (QueryError naming ``shape`` otherwise)."""
    try:
        body = json.loads(await request.text())
    except (ValueError, UnicodeDecodeError):
        raise QueryError(f"body must be JSON: {shape}") from None
    if not isinstance(body, dict) or set(body) - keys or not required <= set(body):
        raise QueryError(f"body must be {shape}")
    return body


def authorize(request: web.Request, grant: str):
    """Authenticate the bearer key and check its role; records the key's use."""
    node = request.app[NODE]
    header = request.headers.get("Authorization", "")
    token = header[7:].strip() if header[:7].lower() == "bearer " else None
    if header and token is None:
        raise AuthError("Authorization header must be 'Bearer <key>'")
    key = node.keys.authenticate(token)
    node.note_key_use(key, request.remote)
    require(key, grant)
    return key
