"""An ingest request from its body to a durable answer: fingerprint, idempotency
check, decoding and validation, the commit.

With an idempotency key the batch is appended once: a retry of the same request
(same fingerprint: body bytes and Content-Type family) gets the first answer
again; the same key with another request is refused (``IdempotencyKeyReused``)
and nothing is written.  One request per key runs at a time, so a retry racing
its first attempt waits for that attempt's answer.
"""

from __future__ import annotations

import asyncio

from auditlog.ingest.committer import Committer
from auditlog.ingest.idempotency import IdempotencyCache, IdempotencyKeyReused
from auditlog.ingest.validation_pool import Validator

#: past this many per-key locks, the idle ones are dropped
_MAX_LOCKS = 10000


class IngestPipeline:
    def __init__(self, validator: Validator, committer: Committer, idempotency: IdempotencyCache):
        self.validator = validator
        self.committer = committer
        self.idempotency = idempotency
        self._locks: dict[str, asyncio.Lock] = {}

    def _lock(self, key: str) -> asyncio.Lock:
        lock = self._locks.get(key)
        if lock is None:
            if len(self._locks) > _MAX_LOCKS:
                self._locks = {k: v for k, v in self._locks.items() if v.locked()}
            lock = self._locks[key] = asyncio.Lock()
        return lock

    async def submit(
        self, raw: bytes, ctype: str, idempotency_key: str | None = None, scope: str = ""
    ) -> tuple[dict, bool]:
        """(the answer, whether it is a replay of an earlier request's answer); an
        ``idempotency_key`` counts within its ``scope`` (the API key that sent it)."""
        if idempotency_key is None:
            drafts = await self.validator.validate(raw, ctype)
            return self.committer.answer(await self.committer.append(drafts, canonical=True)), False
        scoped = f"{scope}:{idempotency_key}"
        fingerprint = await self.validator.fingerprint(raw, ctype)
        async with self._lock(scoped):
            seen = self.idempotency.get(scoped)
            if seen is not None:
                if seen.fingerprint != fingerprint:
                    raise IdempotencyKeyReused(
                        f"Idempotency-Key {idempotency_key!r} was already used for a "
                        f"different request (another body or Content-Type); nothing was written. A retry "
                        f"must send the same body; a new batch needs a new key"
                    )
                return seen.answer, True
            drafts = await self.validator.validate(raw, ctype)
            # the key and fingerprint are recorded in the same commit as the entries
            res = await self.committer.append(drafts, canonical=True, idempotency_key=scoped, fingerprint=fingerprint)
            return self.committer.answer(res), False
