"""POST /api/v1/events: append a batch, all or nothing, 201 once durable."""

from __future__ import annotations

from aiohttp import web

from ingest.body import BodyError
from query.app import SERVICE, authorize

MAX_IDEMPOTENCY_KEY = 200


async def post_events(request: web.Request) -> web.Response:
    key = authorize(request, "append")
    service = request.app[SERVICE]
    idem = request.headers.get("Idempotency-Key")
    if idem is not None and (not idem or len(idem) > MAX_IDEMPOTENCY_KEY or not idem.isprintable()):
        raise BodyError(f"Idempotency-Key must be 1-{MAX_IDEMPOTENCY_KEY} printable characters")
    raw = await request.read()
    ctype = request.content_type if request.body_exists else ""
    # decoding and validation are CPU work: off the event loop, in one hop
    drafts = await service.decode_and_validate(raw, ctype)
    if idem is None:
        body = service.answer(await service.append(drafts, canonical=True))
    else:
        scoped = f"{key.id}:{idem}"
        async with service.idempotency_lock(scoped):
            body = service.idempotency.get(scoped)
            if body is None:
                # the key is recorded in the same commit as the entries
                body = service.answer(await service.append(drafts, canonical=True,
                                                           idempotency_key=scoped))
            elif body["appended"] != len(drafts):
                raise BodyError("Idempotency-Key was already used for a different batch")
            else:
                return web.json_response(body, status=200, headers={"Idempotent-Replay": "true"})
    return web.json_response(body, status=201)


def setup(app: web.Application) -> None:
    app.router.add_post("/api/v1/events", post_events)
