"""API key management (admin role): create, list, revoke.

A create or revoke *is* its audit entry (``audit.api_key_create`` /
``audit.api_key_revoke``, see query/http/auth.py): the key store appends it and
only then changes what authentication accepts.
"""

from __future__ import annotations

from aiohttp import web

from auditlog.query.http.base import NODE, authorize, json_object


async def create_key(request: web.Request) -> web.Response:
    admin = authorize(request, "admin")
    service = request.app[NODE]
    body = await json_object(request, {"name", "role"}, set(), '{"name": "...", "role": "writer|reader|admin"}')
    name, role, ip = body.get("name"), body.get("role"), request.remote
    rec, token = await service.run(lambda: service.keys.create(name, role, user=admin.name, ip=ip, by_key_id=admin.id))
    return web.json_response({**rec.public(), "key": token}, status=201)


async def list_keys(request: web.Request) -> web.Response:
    authorize(request, "admin")
    return web.json_response({"keys": [k.public() for k in request.app[NODE].keys.list()]})


async def revoke_key(request: web.Request) -> web.Response:
    admin = authorize(request, "admin")
    service = request.app[NODE]
    kid, ip = request.match_info["key_id"], request.remote
    rec = await service.run(lambda: service.keys.revoke(kid, user=admin.name, ip=ip, by_key_id=admin.id))
    return web.json_response(rec.public())


def setup(app: web.Application) -> None:
    app.router.add_post("/api/v1/api-keys", create_key)
    app.router.add_get("/api/v1/api-keys", list_keys)
    app.router.add_delete("/api/v1/api-keys/{key_id}", revoke_key)
