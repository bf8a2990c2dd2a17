"""Decoding and validating ingest bodies: on the event loop, in a thread, or in
worker processes (``Validator`` picks by body size and configuration).

Validation is pure CPU and holds the GIL, so in one process it competes with
the writer, the HTTP server and the readers for one core.  Worker processes
take it off the serving process: a body goes in as bytes, and the validated
events come back already packed (``engine.entry.pack_draft``: the tail of
each entry's canonical encoding), so the writer only adds seq, ts and the
signature.  Errors come back as plain data and are raised again here as the
same exceptions, so callers cannot tell the difference.
"""

from __future__ import annotations

import asyncio
import multiprocessing
from concurrent.futures import Executor, ProcessPoolExecutor

from auditlog.engine.entry import pack_draft
from auditlog.engine.errors import AuditLogError
from auditlog.ingest.body import BodyError, UnsupportedMediaError, decode_and_validate
from auditlog.ingest.errors import BatchTooLargeError, InvalidEventError
from auditlog.ingest.idempotency import request_fingerprint
from auditlog.ingest.limits import Limits

#: Ingest bodies up to this size are decoded and validated on the event loop
#: (a few events take tens of microseconds; a hop to a thread or worker costs more).
INLINE_VALIDATION_BYTES = 16384


def decode_and_validate_packed(raw: bytes, ctype: str, limits: Limits):
    """In a worker: ("ok", [packed draft, ...]) or ("error", kind, data)."""
    try:
        drafts = decode_and_validate(raw, ctype, limits)
    except InvalidEventError as e:
        return ("error", "invalid", (e.problems, e.label))
    except BatchTooLargeError as e:
        return ("error", "too_large", (e.limit, e.count))
    except UnsupportedMediaError as e:
        return ("error", "media", str(e))
    except BodyError as e:
        return ("error", "body", str(e))
    return ("ok", [pack_draft(d) for d in drafts])


def unpack_result(result) -> list[bytes]:
    """The packed drafts of a worker's result (for ``LogWriter.append_batch``), or its error."""
    if result[0] == "ok":
        return result[1]
    _, kind, data = result
    if kind == "invalid":
        raise InvalidEventError(*data)
    if kind == "too_large":
        raise BatchTooLargeError(*data)
    if kind == "media":
        raise UnsupportedMediaError(data)
    if kind == "body":
        raise BodyError(data)
    raise AuditLogError("internal: unknown validation result")


def _worker_init() -> None:
    """Tie the worker's life to the server's and let go of its stdout.

    A worker outliving a killed server would keep the server's stdout pipe
    open (whoever reads it would never see the end) and hold memory for
    nothing: on Linux the kernel sends it SIGKILL when its parent dies.
    """
    import os
    import sys

    try:
        import ctypes
        import signal

        libc = ctypes.CDLL(None, use_errno=True)
        PR_SET_PDEATHSIG = 1
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() == 1:  # the parent died before prctl took effect
            os._exit(0)
    except (OSError, AttributeError):
        pass
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(devnull, 1)
    os.close(devnull)
    sys.stdout = open(os.devnull, "w")


def _warm_up() -> int:
    """Import the validation path in a worker (so the first request does not pay for it)."""
    import auditlog.ingest.body  # noqa: F401

    return 1


class ValidationPool:
    def __init__(self, workers: int):
        # spawn: workers start from a clean interpreter, not a fork of a threaded
        # server holding the writer's lock and open files, and they are the
        # server's own children (so they die with it, see _worker_init)
        ctx = multiprocessing.get_context("spawn")
        self.executor = ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_worker_init)
        # start every worker now, before the first request
        for f in [self.executor.submit(_warm_up) for _ in range(workers)]:
            f.result(timeout=60)

    def close(self) -> None:
        self.executor.shutdown(wait=True, cancel_futures=True)


class Validator:
    """Where an ingest body is decoded, validated and fingerprinted: small bodies
    on the event loop, larger ones in ``executor``'s threads, or in ``workers``
    worker processes when there are any (then as packed drafts: either kind goes
    to ``ingest.committer.Committer.append``)."""

    def __init__(self, limits: Limits, executor: Executor, workers: int = 0):
        self.limits = limits
        self.executor = executor
        self.pool = ValidationPool(workers) if workers > 0 else None

    async def validate(self, raw: bytes, ctype: str):
        limits = self.limits
        if len(raw) <= INLINE_VALIDATION_BYTES:
            # a few events: cheaper here than the hop to a thread or a worker
            return decode_and_validate(raw, ctype, limits)
        loop = asyncio.get_running_loop()
        if self.pool is None:
            return await loop.run_in_executor(self.executor, decode_and_validate, raw, ctype, limits)
        result = await loop.run_in_executor(self.pool.executor, decode_and_validate_packed, raw, ctype, limits)
        return unpack_result(result)

    async def fingerprint(self, raw: bytes, ctype: str) -> str:
        """The request fingerprint an Idempotency-Key is bound to (``request_fingerprint``);
        a large body is hashed off the event loop (hashlib lets go of the GIL)."""
        if len(raw) <= INLINE_VALIDATION_BYTES:
            return request_fingerprint(raw, ctype)
        return await asyncio.get_running_loop().run_in_executor(self.executor, request_fingerprint, raw, ctype)

    def close(self) -> None:
        if self.pool is not None:
            self.pool.close()
