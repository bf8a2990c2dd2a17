"""Legal holds over HTTP: set and release (admin), list (reader or admin).

A hold set or released *is* its audit entry (``audit.legal_hold_set`` /
``audit.legal_hold_release``, ``engine.holds``): the node appends it, and
retention and the archive follow from the log.
"""

from __future__ import annotations

from aiohttp import web

from auditlog.query.errors import QueryError
from auditlog.query.http.base import NODE, authorize, json_object
from auditlog.query.timeparse import parse_time

_BODY = '{"from": "<time>", "to": "<time>", "reason": "..."}'


async def set_hold(request: web.Request) -> web.Response:
    admin = authorize(request, "admin")
    node = request.app[NODE]
    fields = {"from", "to", "reason"}
    body = await json_object(request, fields, fields, _BODY)
    if not all(isinstance(body[k], str) for k in ("from", "to", "reason")):
        raise QueryError(f"from, to and reason must be strings: {_BODY}")
    from_us, to_us = parse_time(body["from"], param="from"), parse_time(body["to"], param="to")
    hold = await node.run(node.set_hold, from_us, to_us, body["reason"], admin.name, request.remote)
    return web.json_response(hold.to_dict(), status=201)


async def list_holds(request: web.Request) -> web.Response:
    authorize(request, "read")
    node = request.app[NODE]
    holds = await node.run(node.holds)
    # "uncertain": damage in the log may hide a hold (retention then drops nothing)
    return web.json_response({"holds": [h.to_dict() for h in holds], "uncertain": holds.uncertain})


async def release_hold(request: web.Request) -> web.Response:
    admin = authorize(request, "admin")
    node = request.app[NODE]
    reason = request.query.get("reason")
    hold = await node.run(node.release_hold, request.match_info["hold_id"], admin.name, reason, request.remote)
    return web.json_response({**hold.to_dict(), "released": True})


def setup(app: web.Application) -> None:
    app.router.add_post("/api/v1/holds", set_hold)
    app.router.add_get("/api/v1/holds", list_holds)
    app.router.add_delete("/api/v1/holds/{hold_id}", release_hold)
