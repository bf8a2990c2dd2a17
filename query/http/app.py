"""The aiohttp application: ``create_app(node)`` mounts every route on a running
node (``query.node``); the node's cluster and syslog forwarder run for as long
as the app does (its ``cleanup_ctx``)."""

from __future__ import annotations

from aiohttp import web

from auditlog.query.http.base import MAX_LINE_BYTES, NODE, error_middleware
from auditlog.query.http.routes import admin, audit_log, events, holds, ops
from auditlog.query.node import RunningNode


def create_app(node: RunningNode) -> web.Application:
    app = web.Application(
        middlewares=[error_middleware],
        client_max_size=node.settings.max_body_bytes,
        handler_args={"max_line_size": MAX_LINE_BYTES, "max_field_size": MAX_LINE_BYTES},
    )
    app[NODE] = node
    app.cleanup_ctx.append(node.running)
    events.setup(app)
    audit_log.setup(app)
    admin.setup(app)
    holds.setup(app)
    ops.setup(app)
    return app
