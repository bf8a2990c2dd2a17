"""POST /api/v1/events: append a batch, all or nothing, 201 once durable.

With an ``Idempotency-Key`` (scoped to the API key that sent it) the batch is
appended once: a retry of the same request (same fingerprint: body bytes and
Content-Type family) gets the first answer again (200, ``Idempotent-Replay:
true``); the same key with a different request is refused with 422 and nothing
is written (``ingest.pipeline``).
"""

from __future__ import annotations

from aiohttp import web

from auditlog.ingest.body import BodyError
from auditlog.query.http.base import NODE, authorize

MAX_IDEMPOTENCY_KEY = 200


async def post_events(request: web.Request) -> web.Response:
    key = authorize(request, "append")
    node = request.app[NODE]
    idem = request.headers.get("Idempotency-Key")
    if idem is not None and (not idem or len(idem) > MAX_IDEMPOTENCY_KEY or not idem.isprintable()):
        raise BodyError(f"Idempotency-Key must be 1-{MAX_IDEMPOTENCY_KEY} printable characters")
    raw = await request.read()
    ctype = request.content_type if request.body_exists else ""
    body, replayed = await node.ingest.submit(raw, ctype, idem, scope=key.id)
    if replayed:
        return web.json_response(body, status=200, headers={"Idempotent-Replay": "true"})
    return web.json_response(body, status=201)


def setup(app: web.Application) -> None:
    app.router.add_post("/api/v1/events", post_events)
