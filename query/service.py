"""The running node: its writer, reader, keys, metrics and bookkeeping entries.

Everything the HTTP routes need lives here, built once by ``auditlog serve``
(or a test) and handed to ``create_app``.  Blocking work (appends, scans,
verification) runs in a thread pool so the event loop stays responsive; the
writer's group commit merges concurrent appends into one write and fsync.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from engine import clock
from engine.datadir import DataDir, Node
from engine.entry import EntryDraft, format_ts
from engine.errors import EngineError
from engine.log import NodeLog
from engine.settings import StoreSettings
from engine.state import StateSeal
from engine.writer import AppendResult, LogWriter, canonical_drafts
from ingest.limits import DEFAULT_LIMITS, Limits
from query.auth import KEY_FILE, ApiKey, KeyStore, set_aside
from query.idempotency import IdempotencyCache, request_fingerprint
from query.metrics import Metrics

log = logging.getLogger("auditlog.service")

#: Ingest bodies up to this size are decoded and validated on the event loop
#: (a few events take tens of microseconds; a hop to a thread or worker costs more).
INLINE_VALIDATION_BYTES = 16384


def _settle(items: list, results: list | None, error: BaseException | None) -> None:
    """On the event loop: answer the requests of one commit."""
    for i, (_, _, fut, _) in enumerate(items):
        if fut.done():           # the request went away; its events are stored all the same
            continue
        if error is not None:
            fut.set_exception(error)
        else:
            fut.set_result(results[i])


class Overloaded(Exception):
    """The write queue is full: the caller should retry later (HTTP 503)."""


@dataclass(frozen=True)
class ServiceSettings:
    max_body_bytes: int = 16 * 1024 * 1024
    max_query_limit: int = 10000
    default_query_limit: int = 1000
    max_pending_events: int = 200_000
    idempotency_entries: int = 10_000
    #: worker processes that decode and validate ingest bodies (0: in a thread here)
    validate_workers: int = 0
    key_use_interval: float = 60.0
    retention_interval: float = 86400.0
    limits: Limits = DEFAULT_LIMITS


class Service:
    def __init__(self, data_dir: DataDir, node: Node, store: StoreSettings = StoreSettings(),
                 settings: ServiceSettings = ServiceSettings()):
        self.data_dir = data_dir
        self.node = node
        self.node_id = node.node_id
        self.store = store
        self.settings = settings
        self.log = NodeLog(data_dir, node)
        if store.line_files:
            from engine.lines import LineFiles
            from export.ndjson import LINES_TAG, line_renderer
            self.log.line_files = LineFiles(node.key, f"{LINES_TAG} {node.node_id}",
                                            line_renderer(node.node_id), keep=True)
        self.writer = LogWriter(data_dir, node, store, self.log)
        self.seal = StateSeal(node.key, node.node_id)
        #: the API keys: a projection of the log's key entries, held in memory (loaded by ``open``)
        self.keys = KeyStore(node, data_dir.state, self.log, self.writer)
        self.metrics = Metrics()
        #: seals and opens this node's state files (engine.state)
        self.state_seal = StateSeal(node.key, node.node_id)
        self.executor = ThreadPoolExecutor(max_workers=8, thread_name_prefix="auditlog-io")
        self.validators = None
        if settings.validate_workers > 0:
            from query.validation_pool import ValidationPool
            self.validators = ValidationPool(settings.validate_workers)
        self.idempotency = IdempotencyCache(
            settings.idempotency_entries, data_dir.state / IdempotencyCache.FILE_NAME,
            seal=self.state_seal, fsync=store.fsync != "none")
        # shown even at 0, so that a scrape tells "checked, nothing forged" from "not checked"
        self.metrics.inc("auditlog_state_rejected_total", self.idempotency.rejected,
                         file=IdempotencyCache.FILE_NAME)
        self._idem_locks: dict[str, asyncio.Lock] = {}
        self.pending_events = 0
        self._appends: list[tuple[list, bool, asyncio.Future]] = []
        self._appends_lock = threading.Lock()
        self._committer_running = False
        self._key_uses: dict[str, list] = {}
        self._key_lock = threading.Lock()
        self.started = time.time()
        self.last_retention: dict | None = None
        #: set by ``auditlog serve`` when [cluster] is configured (query.cluster.Cluster)
        self.cluster = None
        #: set by ``auditlog serve`` when [syslog] is configured (export.syslog.SyslogForwarder)
        self.syslog = None

    # -- lifecycle -------------------------------------------------------------

    def open(self) -> "Service":
        self.writer.on_commit = self._on_commit
        self.writer.before_commit = self._record_idempotency_keys
        self.writer.open()
        # keys written ahead of a commit that a crash then lost (cut back by recovery)
        # must not answer for seqs the log does not hold
        self.idempotency.prune_beyond(self.writer.next_seq - 1)
        m = self.metrics
        m.declare("auditlog_state_rejected_total", "counter",
                  "State files under <data-dir>/state/ ignored at start because they failed their seal")
        self.keys.load()   # records audit.recovery itself for a snapshot it could not use
        for problem in self.keys.problems:
            log.warning("%s", problem)
        if self.keys.rejected is not None:
            m.inc("auditlog_state_rejected_total", file=KEY_FILE)
        self.last_retention = self._derive_last_retention(report=True)
        m.gauge("auditlog_write_queue_events", "Events waiting for the writer", lambda: self.pending_events)
        m.gauge("auditlog_head_seq", "Last seq appended on this node", lambda: self.writer.next_seq - 1)
        m.gauge("auditlog_retention_last_run_timestamp_seconds", "When retention last ran",
                lambda: _parse_iso(self.last_retention.get("ran_at")) if self.last_retention else None)
        m.gauge("auditlog_retention_last_dropped_entries", "Entries dropped by the last retention run",
                lambda: self.last_retention.get("dropped_entries") if self.last_retention else None)
        return self

    def close(self) -> None:
        if self.syslog is not None:
            self.syslog.stop()
        try:
            self.flush_key_uses()
        except Exception:   # pragma: no cover - shutdown must go on
            log.exception("could not record API key use at shutdown")
        self.writer.close()
        self.idempotency.close()
        if self.validators is not None:
            self.validators.close()
        self.executor.shutdown(wait=True)

    def start_syslog(self, settings) -> None:
        from export.syslog import SyslogForwarder
        self.syslog = SyslogForwarder(self, settings)
        m = self.metrics
        m.gauge("auditlog_syslog_lag_entries", "Entries appended but not yet forwarded to syslog",
                lambda: self.syslog.status()["lag"])
        m.gauge("auditlog_syslog_errors", "Syslog send/connect errors since start",
                lambda: self.syslog.errors)
        m.gauge("auditlog_syslog_connected", "1 when connected to the syslog receiver",
                lambda: int(self.syslog.connected))
        self.syslog.start()

    def _on_commit(self, n: int, seconds: float) -> None:
        if self.syslog is not None:
            self.syslog.wake.set()
        self.metrics.inc("auditlog_appended_entries_total", n)
        self.metrics.fsync_seconds.observe(seconds)
        self.metrics.batch_size.observe(n)

    # -- writing -----------------------------------------------------------------

    async def run(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    async def decode_and_validate(self, raw: bytes, ctype: str) -> list[EntryDraft] | list[bytes]:
        """An ingest body's validated drafts (in a worker process when configured,
        then as packed drafts: either kind goes to ``append``)."""
        from ingest.body import decode_and_validate
        limits = self.settings.limits
        if len(raw) <= INLINE_VALIDATION_BYTES:
            # a few events: cheaper here than the hop to a thread or a worker
            return decode_and_validate(raw, ctype, limits)
        if self.validators is None:
            return await self.run(decode_and_validate, raw, ctype, limits)
        from query.validation_pool import decode_and_validate_packed, unpack_result
        result = await asyncio.get_running_loop().run_in_executor(
            self.validators.executor, decode_and_validate_packed, raw, ctype, limits)
        return unpack_result(result)

    async def fingerprint(self, raw: bytes, ctype: str) -> str:
        """The request fingerprint an Idempotency-Key is bound to (``request_fingerprint``);
        a large body is hashed off the event loop (hashlib lets go of the GIL)."""
        if len(raw) <= INLINE_VALIDATION_BYTES:
            return request_fingerprint(raw, ctype)
        return await self.run(request_fingerprint, raw, ctype)

    def answer(self, res: AppendResult) -> dict:
        """The body of a 201 for an appended batch (also what an idempotent replay returns)."""
        n = self.node_id
        return {"appended": res.last_seq - res.first_seq + 1, "first_id": f"{n}:{res.first_seq}",
                "last_id": f"{n}:{res.last_seq}"}

    def _record_idempotency_keys(self, tagged: list) -> None:
        """In the commit, before its entries are written: the batches' idempotency keys,
        request fingerprints and answers, durable first (a crash in between leaves a key
        for seqs the log lacks, which ``prune_beyond`` drops at the next start)."""
        self.idempotency.put_many([(key, fingerprint, self.answer(res))
                                   for (key, fingerprint), res in tagged])

    async def append(self, drafts: list[EntryDraft] | list[bytes], canonical: bool = False,
                     idempotency_key: str | None = None,
                     fingerprint: str | None = None) -> AppendResult:
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
        if self.pending_events + n > self.settings.max_pending_events:
            raise Overloaded(f"write queue full ({self.pending_events} events waiting)")
        self.pending_events += n
        try:
            loop = asyncio.get_running_loop()
            fut = loop.create_future()
            with self._appends_lock:
                self._appends.append((drafts, canonical, fut, tag))
                start = not self._committer_running
                self._committer_running = True
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
            with self._appends_lock:
                items, self._appends = self._appends, []
                if not items:
                    self._committer_running = False
                    return
            try:
                batches = [d if canonical else canonical_drafts(d) for d, canonical, _, _ in items]
                results = self.writer.append_batches(batches, canonical=True,
                                                     tags=[tag for *_, tag in items])
            except BaseException as e:   # every waiting request gets the error
                keys = [tag[0] for *_, tag in items if tag is not None]
                if keys:
                    self.idempotency.forget(keys)   # they answer for nothing now
                loop.call_soon_threadsafe(_settle, items, None, e)
            else:
                loop.call_soon_threadsafe(_settle, items, results, None)

    def idempotency_lock(self, key: str) -> asyncio.Lock:
        lock = self._idem_locks.get(key)
        if lock is None:
            if len(self._idem_locks) > 10000:
                self._idem_locks = {k: v for k, v in self._idem_locks.items() if v.locked()}
            lock = self._idem_locks[key] = asyncio.Lock()
        return lock

    async def record(self, user: str, action: str, **fields) -> AppendResult:
        """Append one of the log's own bookkeeping entries.

        Not subject to back-pressure: it records something already done (a key
        created or revoked, an export sent), so a full queue must not drop it.
        """
        return await self.run(self.writer.append_batch, [EntryDraft(
            user, action, fields.get("target"), None, fields.get("ip"), fields.get("user_agent"), True,
            fields.get("details", {}))])

    # -- API key use (at most one entry per key per interval, with a count) ----

    def note_key_use(self, key: ApiKey, ip: str | None) -> None:
        with self._key_lock:
            rec = self._key_uses.get(key.id)
            if rec is None:
                self._key_uses[key.id] = [key.name, key.role, 1, clock.now_us(), ip]
            else:
                rec[2] += 1
                rec[4] = ip or rec[4]

    def flush_key_uses(self) -> int:
        with self._key_lock:
            uses, self._key_uses = self._key_uses, {}
        if not uses:
            return 0
        drafts = [EntryDraft(name, "auth.api_key_used", kid, None, ip, None, True,
                             {"key_id": kid, "role": role, "count": count,
                              "first_use": format_ts(first)[:19] + "Z"})
                  for kid, (name, role, count, first, ip) in sorted(uses.items())]
        self.writer.append_batch(drafts)
        return len(drafts)

    # -- retention -----------------------------------------------------------------

    def head_info(self) -> dict:
        """This node's row of ``/api/v1/cluster`` (also served to peers)."""
        from engine.entry import format_ts
        head_seq, last_ts = self.log.head()
        days = self.store.retention_days
        cluster = self.cluster
        return {"node": self.node_id, "status": "ok", "head_seq": head_seq,
                "last_ts": format_ts(last_ts) if last_ts else None,
                "retention_days": "forever" if days is None else days,
                "retention_last_run": self.last_retention,
                "last_checkpoint": cluster.last_checkpoint if cluster else None,
                "syslog": self.syslog.status() if self.syslog else None}

    def signatures_at(self, seqs) -> dict:
        """Signatures of the entries at ``seqs`` plus the log's seq range (witness checks).

        One ordered walk over the log from the lowest seq asked for to the highest,
        not a lookup per seq; only where the next seq asked for lies more than
        ``WALK_GAP`` entries ahead does a fresh scan start there (a scan's start
        costs about as much as walking that many entries).  A seq in range with no
        entry that verifies (missing, damaged) answers None.
        """
        from query.witness import WALK_GAP

        def first_seq() -> int:
            infos = self.log.segment_infos()
            return next((i.first_seq for i in infos if i.header is not None), 1)

        head_seq, _ = self.log.head()      # first: every seq up to it is on disk for the walk
        first = first_seq()
        want = sorted({s for s in seqs if first <= s <= head_seq})
        n = len(want)
        found: dict[int, bytes | None] = {}
        i = 0
        while i < n:
            start = i
            for e in self.log.scan(after_seq=want[i] - 1):
                s = e.seq
                while i < n and want[i] < s:
                    i += 1          # passed by: no entry there
                if i == n:
                    break
                if want[i] == s:
                    if e.integrity == "ok":
                        # two entries at one seq that verify and disagree: neither answers
                        have = found.get(s, e.signature)
                        found[s] = e.signature if have == e.signature else None
                elif want[i] - s > WALK_GAP:
                    break           # far to the next one: a fresh scan starts there
            else:
                break               # the log ends before the rest
            if i == start:
                break
        # a retention run meanwhile dropped whatever lies below its new first seq
        first = max(first, first_seq())
        sigs: dict[str, str | None] = {}
        for s in want:
            if s >= first:
                sig = found.get(s)
                sigs[str(s)] = sig.hex() if sig is not None else None
        return {"node": self.node_id, "first_seq": first, "head_seq": head_seq, "sigs": sigs}

    def run_retention(self, as_of_us=None, dry_run=False):
        from engine.retention import run_retention
        if not dry_run:
            # the snapshot must hold every key whose create entry may be dropped now
            self.keys.checkpoint()
        report = run_retention(self.writer, as_of_us, dry_run)
        if not dry_run:
            self.last_retention = self._derive_last_retention()
        return report

    def _derive_last_retention(self, report: bool = False) -> dict | None:
        """The last retention run, from the log's purge entries and the sealed quiet-run record."""
        from engine.retention import STATE_FILE, load_last_run
        last, problem = load_last_run(self.log, self.seal, self.data_dir.state)
        if problem is not None and report:
            self.state_rejected(STATE_FILE, problem)
        return last

    def state_rejected(self, file: str, problem: str) -> None:
        """Report a state file that failed its seal (and is being ignored): a warning,
        the ``auditlog_state_rejected_total`` counter and an ``audit.recovery`` entry;
        the file is then set aside as ``<file>.rejected``."""
        log.warning("state file %s ignored: %s", file, problem)
        self.metrics.inc("auditlog_state_rejected_total", file=file)
        self.writer.append_batch([EntryDraft("system", "audit.recovery",
                                             details={"reason": problem, "file": file})])
        set_aside(self.data_dir.state / file)


def _parse_iso(s: str | None) -> float | None:
    if not s:
        return None
    from query.timeparse import parse_time
    return parse_time(s) / 1e6
