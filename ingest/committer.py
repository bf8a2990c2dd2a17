"""The committer: ingest batches into the writer's group commit, with back-pressure.

Requests queue their batches; one committer thread at a time hands everything
queued to one ``LogWriter.append_batches`` call (one write, one fsync) and one
wake-up of the event loop answers them all.  A batch sent with an idempotency
key has the key, its request's fingerprint and its answer made durable inside
the same commit (``LogWriter.before_commit``), so a crash can neither lose a key
nor keep one for entries the log lacks.  When more events wait than
``max_pending`` allows, a batch is refused (``Overloaded``) instead of queued.
"""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import Executor

from auditlog.engine.entry import EntryDraft
from auditlog.engine.errors import EngineError
from auditlog.engine.writer import AppendResult, LogWriter, canonical_drafts
from auditlog.ingest.idempotency import IdempotencyCache


class Overloaded(Exception):
    """The write queue is full: the caller should retry later (HTTP 503)."""


def append_answer(node_id: str, res: AppendResult) -> dict:
    """The body of a 201 for an appended batch (also what an idempotent replay returns)."""
    return {
        "appended": res.last_seq - res.first_seq + 1,
        "first_id": f"{node_id}:{res.first_seq}",
        "last_id": f"{node_id}:{res.last_seq}",
    }


def _settle(items: list, results: list | None, error: BaseException | None) -> None:
    """On the event loop: answer the requests of one commit."""
    for i, (_, _, fut, _) in enumerate(items):
        if fut.done():  # the request went away; its events are stored all the same
            continue
        if error is not None:
            fut.set_exception(error)
        else:
            fut.set_result(results[i])


class Committer:
    """Feeds one writer from the event loop; ``pending_events`` is what waits for it."""

    def __init__(self, writer: LogWriter, executor: Executor, *, max_pending: int, idempotency: IdempotencyCache):
        self.writer = writer
        self.executor = executor
        self.max_pending = max_pending
        self.idempotency = idempotency
        self.node_id = writer.node
        self.pending_events = 0
        self._appends: list[tuple[list, bool, asyncio.Future, tuple | None]] = []
        self._lock = threading.Lock()
        self._running = False
        writer.before_commit = self._record_idempotency_keys

    def answer(self, res: AppendResult) -> dict:
        return append_answer(self.node_id, res)

    def _record_idempotency_keys(self, tagged: list) -> None:
        """In the commit, before its entries are written: the batches' idempotency keys,
        request fingerprints and answers, durable first (a crash in between leaves a key
        for seqs the log lacks, which ``prune_beyond`` drops at the next start)."""
        self.idempotency.put_many([(key, fingerprint, self.answer(res)) for (key, fingerprint), res in tagged])

    async def append(
        self,
        drafts: list[EntryDraft] | list[bytes],
        canonical: bool = False,
        idempotency_key: str | None = None,
        fingerprint: str | None = None,
    ) -> AppendResult:
        """Append through the writer's queue; ``canonical`` for validated drafts.

        With ``idempotency_key`` (and the ``fingerprint`` of the request it came
        with) the key, fingerprint and answer are recorded durably in the same
        commit as the entries (see ``IdempotencyCache``).
        """
        n = len(drafts)
        if not n:
            raise EngineError("empty batch")
        tag = None
        if idempotency_key is not None:
            if fingerprint is None:
                raise ValueError("an idempotency key needs the fingerprint of its request")
            tag = (idempotency_key, fingerprint)
        if self.pending_events + n > self.max_pending:
            raise Overloaded(f"write queue full ({self.pending_events} events waiting)")
        self.pending_events += n
        try:
            loop = asyncio.get_running_loop()
            fut = loop.create_future()
            with self._lock:
                self._appends.append((drafts, canonical, fut, tag))
                start = not self._running
                self._running = True
            if start:
                loop.run_in_executor(self.executor, self._commit_appends, loop)
            return await fut
        finally:
            self.pending_events -= n

    def _commit_appends(self, loop: asyncio.AbstractEventLoop) -> None:
        """The committer (one thread at a time): every batch waiting goes into one
        group commit, and one wake-up of the event loop answers them all.

        One thread instead of a thread per request: requests never wait for a
        free executor thread to join a commit, so a commit takes every request
        that arrived during the previous fsync.
        """
        while True:
            with self._lock:
                items, self._appends = self._appends, []
                if not items:
                    self._running = False
                    return
            try:
                batches = [d if canonical else canonical_drafts(d) for d, canonical, _, _ in items]
                results = self.writer.append_batches(batches, canonical=True, tags=[tag for *_, tag in items])
            except BaseException as e:  # every waiting request gets the error
                keys = [tag[0] for *_, tag in items if tag is not None]
                if keys:
                    self.idempotency.forget(keys)  # they answer for nothing now
                loop.call_soon_threadsafe(_settle, items, None, e)
            else:
                loop.call_soon_threadsafe(_settle, items, results, None)
