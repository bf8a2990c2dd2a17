"""POST /api/v1/events: append a batch, all or nothing, 201 once durable.

With an ``Idempotency-Key`` (scoped to the API key that sent it) the batch is
appended once: a retry of the same request (same fingerprint: body bytes and
Content-Type family) gets the first answer again (200, ``Idempotent-Replay:
true``); the same key with a different request is refused with 422 and nothing
is written.
"""

from __future__ import annotations

from aiohttp import web

from ingest.body import BodyError
from query.app import SERVICE, authorize
from query.idempotency import IdempotencyKeyReused

MAX_IDEMPOTENCY_KEY = 200


async def post_events(request: web.Request) -> web.Response:
    key = authorize(request, "append")
    service = request.app[SERVICE]
    idem = request.headers.get("Idempotency-Key")
    if idem is not None and (not idem or len(idem) > MAX_IDEMPOTENCY_KEY or not idem.isprintable()):
        raise BodyError(f"Idempotency-Key must be 1-{MAX_IDEMPOTENCY_KEY} printable characters")
    raw = await request.read()
    ctype = request.content_type if request.body_exists else ""
    if idem is None:
        # decoding and validation are CPU work: off the event loop, in one hop
        drafts = await service.decode_and_validate(raw, ctype)
        body = service.answer(await service.append(drafts, canonical=True))
        return web.json_response(body, status=201)
    scoped = f"{key.id}:{idem}"
    fingerprint = await service.fingerprint(raw, ctype)
    # one request per key at a time: a retry racing its first attempt waits for its answer
    async with service.idempotency_lock(scoped):
        seen = service.idempotency.get(scoped)
        if seen is not None:
            if seen.fingerprint != fingerprint:
                raise IdempotencyKeyReused(
                    f"Idempotency-Key {idem!r} was already used for a different request "
                    f"(another body or Content-Type); nothing was written. A retry must send "
                    f"the same body; a new batch needs a new key")
            return web.json_response(seen.answer, status=200, headers={"Idempotent-Replay": "true"})
        drafts = await service.decode_and_validate(raw, ctype)
        # the key and fingerprint are recorded in the same commit as the entries
        body = service.answer(await service.append(drafts, canonical=True, idempotency_key=scoped,
                                                   fingerprint=fingerprint))
    return web.json_response(body, status=201)


def setup(app: web.Application) -> None:
    app.router.add_post("/api/v1/events", post_events)
