"""The aiohttp application: ``create_app(service)`` mounts every route.

One error shape for every failure, pinned by tests::

    {"error": {"status": 400, "message": "...", "problems": [...]}}
"""

from __future__ import annotations

import logging

from aiohttp import web

from engine.errors import AuditLogError
from query.auth import AuthError, require
from query.service import Overloaded, Service

log = logging.getLogger("auditlog.http")
SERVICE: web.AppKey[Service] = web.AppKey("service", Service)


def error_response(status: int, message: str, **extra) -> web.Response:
    body = {"error": {"status": status, "message": message, **extra}}
    headers = {"WWW-Authenticate": 'Bearer realm="auditlog"'} if status == 401 else None
    return web.json_response(body, status=status, headers=headers)


@web.middleware
async def error_middleware(request: web.Request, handler):
    service = request.app[SERVICE]
    try:
        resp = await handler(request)
    except AuditLogError as e:
        extra = {}
        problems = getattr(e, "problems", None)
        if problems:
            extra["problems"] = problems[:100]
        resp = error_response(e.http_status, str(e), **extra)
    except Overloaded as e:
        resp = error_response(503, f"{e}; retry later", )
        resp.headers["Retry-After"] = "1"
    except web.HTTPRequestEntityTooLarge:
        resp = error_response(413, f"request body too large (limit {service.settings.max_body_bytes} bytes)")
    except web.HTTPMethodNotAllowed as e:
        resp = error_response(405, f"method {request.method} not allowed here; the log is append-only "
                                   f"(allowed: {', '.join(sorted(e.allowed_methods))})")
        resp.headers["Allow"] = ",".join(sorted(e.allowed_methods))
    except web.HTTPException as e:
        if e.status < 400:
            raise
        resp = error_response(e.status, e.reason if e.status != 404 else f"no such resource: {request.path}")
    except Exception:   # never leak a traceback to a client
        log.exception("unhandled error on %s %s", request.method, request.path)
        resp = error_response(500, "internal error (logged on the server)")
    route = request.match_info.route.resource.canonical if request.match_info.route.resource else "unmatched"
    service.metrics.inc("auditlog_http_requests_total", route=route, status=resp.status)
    return resp


def authorize(request: web.Request, grant: str):
    """Authenticate the bearer key and check its role; records the key's use."""
    service = request.app[SERVICE]
    header = request.headers.get("Authorization", "")
    token = header[7:].strip() if header[:7].lower() == "bearer " else None
    if header and token is None:
        raise AuthError("Authorization header must be 'Bearer <key>'")
    key = service.keys.authenticate(token)
    service.note_key_use(key, request.remote)
    require(key, grant)
    return key


def create_app(service: Service) -> web.Application:
    from query.routes import admin, audit_log, events, ops
    app = web.Application(middlewares=[error_middleware], client_max_size=service.settings.max_body_bytes)
    app[SERVICE] = service
    events.setup(app)
    audit_log.setup(app)
    admin.setup(app)
    ops.setup(app)
    return app
