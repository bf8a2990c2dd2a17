"""POST /api/v1/events: append a batch, all or nothing, 201 once durable."""

from __future__ import annotations

import json

import msgpack
from aiohttp import web

from ingest.errors import IngestError
from ingest.event import reject_duplicate_keys, validate_batch
from query.app import SERVICE, authorize

MAX_IDEMPOTENCY_KEY = 200


class BodyError(IngestError):
    pass


class UnsupportedMediaError(IngestError):
    http_status = 415


def decode_body(raw: bytes, content_type: str) -> list:
    """The events of a request body (JSON array, {"events": [...]}, or msgpack)."""
    if content_type in ("application/msgpack", "application/x-msgpack"):
        try:
            data = msgpack.unpackb(raw, raw=False, strict_map_key=True, max_bin_len=0, max_ext_len=0)
        except Exception as e:   # msgpack raises several unrelated types
            raise BodyError(f"body is not valid msgpack: {type(e).__name__}") from None
    elif content_type in ("application/json", "", "text/json"):
        try:
            data = json.loads(raw.decode("utf-8"), object_pairs_hook=reject_duplicate_keys,
                              parse_constant=_no_constant)
        except UnicodeDecodeError:
            raise BodyError("body is not UTF-8") from None
        except (ValueError, RecursionError) as e:
            raise BodyError(f"body is not valid JSON: {str(e)[:200]}") from None
    else:
        raise UnsupportedMediaError(
            f"unsupported Content-Type {content_type!r}: use application/json or application/msgpack")
    if isinstance(data, dict):
        if set(data) != {"events"}:
            raise BodyError('a JSON object body must be {"events": [...]} and nothing else')
        data = data["events"]
    if not isinstance(data, (list, tuple)):
        raise BodyError("body must be an array of events or {\"events\": [...]}")
    return list(data)


def _decode_and_validate(raw: bytes, ctype: str, limits):
    return validate_batch(decode_body(raw, ctype), limits)


def _no_constant(name: str):
    raise ValueError(f"{name} is not allowed in JSON")


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
        res = await service.append(drafts, canonical=True)
        body = _result(service, res)
    else:
        scoped = f"{key.id}:{idem}"
        async with service.idempotency_lock(scoped):
            body = service.idempotency.get(scoped)
            if body is None:
                res = await service.append(drafts, canonical=True)
                body = _result(service, res)
                await service.run(service.idempotency.put, scoped, body)
            elif body["appended"] != len(drafts):
                raise BodyError("Idempotency-Key was already used for a different batch")
            else:
                return web.json_response(body, status=200, headers={"Idempotent-Replay": "true"})
    return web.json_response(body, status=201)


def _result(service, res) -> dict:
    n = service.node_id
    return {"appended": res.last_seq - res.first_seq + 1, "first_id": f"{n}:{res.first_seq}",
            "last_id": f"{n}:{res.last_seq}"}


def setup(app: web.Application) -> None:
    app.router.add_post("/api/v1/events", post_events)
