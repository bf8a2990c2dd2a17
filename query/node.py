"""The running node, and ``build_node``: the one place it is put together.

``build_node(config, data_dir)`` turns a node's configuration (``NodeConfig``:
what ``cli.config.Config.node_config`` makes of the config file) and its data
dir into a ``RunningNode``: the writer and the reader, the API keys, metrics,
idempotency keys, the committer and validation (``ingest/``), and, when
configured, the cluster (``query.cluster``) and the syslog forwarder
(``export.syslog``), each handed what it needs.  The node is open (writer
recovered, keys loaded) when ``build_node`` returns; its cluster and forwarder
run while an app made by ``query.http.app.create_app`` runs (``running``, in the
app's ``cleanup_ctx``), and ``close`` closes everything.

It sits above ``ingest``, ``export`` and the rest of ``query`` because it is
the only code that needs all of them; ``auditlog serve``, the tests' fixtures
and the benchmark servers all build their nodes here.  Blocking work (appends,
scans, verification) runs in a thread pool so the event loop stays responsive.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from auditlog.engine import clock
from auditlog.engine.datadir import DataDir, Node
from auditlog.engine.entry import EntryDraft, format_ts
from auditlog.engine.holds import Hold, held_segment, holds_in_force, release_draft, set_draft
from auditlog.engine.holds import find as find_hold
from auditlog.engine.log import NodeLog
from auditlog.engine.settings import StoreSettings
from auditlog.engine.state import StateSeal
from auditlog.engine.writer import AppendResult, LogWriter
from auditlog.export.archive import Archiver, ArchiveSettings, attach_reads
from auditlog.export.http_stream import HttpStreamForwarder, HttpStreamSettings
from auditlog.export.s3 import StoreError
from auditlog.export.syslog import SyslogForwarder, SyslogSettings
from auditlog.ingest.committer import Committer
from auditlog.ingest.idempotency import IdempotencyCache
from auditlog.ingest.limits import DEFAULT_LIMITS, Limits
from auditlog.ingest.pipeline import IngestPipeline
from auditlog.ingest.validation_pool import Validator
from auditlog.query.cluster.fanout import Cluster
from auditlog.query.cluster.settings import ClusterSettings
from auditlog.query.errors import QueryError
from auditlog.query.http.auth import KEY_FILE, ApiKey, KeyStore, set_aside
from auditlog.query.http.metrics import Metrics

#: entries that need no checkpoint of their own (``RunningNode._only_bookkeeping``)
_BOOKKEEPING = frozenset({"audit.tree_head", "audit.checkpoint"})

log = logging.getLogger("auditlog.service")


def default_validate_workers() -> int:
    """One validation worker when there is a second CPU for it, else none."""
    return 1 if (os.cpu_count() or 1) > 1 else 0


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
    #: seconds between signed checkpoints (audit.tree_head) while the log grows;
    #: one is also made when a segment is sealed (``[server] checkpoint_interval``)
    checkpoint_interval: float = 60.0
    limits: Limits = DEFAULT_LIMITS


@dataclass(frozen=True)
class NodeConfig:
    """Everything ``build_node`` needs besides the data dir."""

    store: StoreSettings = StoreSettings()
    service: ServiceSettings = ServiceSettings()
    cluster: ClusterSettings | None = None
    syslog: SyslogSettings | None = None
    http_stream: HttpStreamSettings | None = None
    archive: ArchiveSettings | None = None


def build_node(config: NodeConfig, data_dir: DataDir) -> RunningNode:
    """The node of ``data_dir`` as ``config`` says, open; ``close()`` it when done."""
    node = data_dir.open()
    store, settings = config.store, config.service
    reader = NodeLog(data_dir, node)
    # the active segment's postings are written out by the background job
    # (query.http.server), not by the query that extended them
    reader.postings.persist_active = False
    writer = LogWriter(data_dir, node, store, reader)
    seal = StateSeal(node.key, node.node_id)
    executor = ThreadPoolExecutor(max_workers=8, thread_name_prefix="auditlog-io")
    idempotency = IdempotencyCache(
        settings.idempotency_entries,
        data_dir.state / IdempotencyCache.FILE_NAME,
        seal=seal,
        fsync=store.fsync != "none",
    )
    committer = Committer(writer, executor, max_pending=settings.max_pending_events, idempotency=idempotency)
    validator = Validator(settings.limits, executor, settings.validate_workers)
    rn = RunningNode(
        data_dir,
        node,
        config,
        reader,
        writer,
        seal,
        executor,
        idempotency,
        committer,
        IngestPipeline(validator, committer, idempotency),
    )
    try:
        rn.open()
        if config.cluster is not None and config.cluster.enabled:
            from auditlog.query.cluster.pki import check_own_cert

            problem = check_own_cert(Path(config.cluster.cert), node.node_id, writer.signing_key.public_raw)
            if problem is not None:
                log.warning("%s", problem)
            rn.cluster = Cluster(rn, config.cluster.without(node.node_id))
        if config.syslog is not None:
            rn.syslog = forwarder(rn, config.syslog)
            rn.metrics_for_forwarder("auditlog_syslog", rn.syslog, "syslog receiver")
        if config.http_stream is not None:
            config.http_stream.token()  # a token file others can read, or none usable: refused now
            rn.stream = forwarder(rn, config.http_stream, kind=HttpStreamForwarder)
            rn.metrics_for_forwarder("auditlog_http_stream", rn.stream, "HTTP stream's receiver")
        if config.archive is not None:
            rn.archiver = archiver(rn, config.archive)
    except BaseException:
        rn.close()
        raise
    return rn


def forwarder(rn: RunningNode, settings, batch: int | None = None, kind=SyslogForwarder) -> SyslogForwarder:
    """A forwarder of ``rn``'s log (syslog, or ``kind``: the HTTP stream), handed exactly
    what it uses."""
    if batch is None:
        batch = getattr(settings, "batch", 500)
    return kind(
        settings,
        reader=rn.log,
        head_seq=lambda: rn.writer.next_seq - 1,
        seal=rn.seal,
        state_dir=rn.data_dir.state,
        rejected=rn.state_rejected,
        batch=batch,
    )


def archiver(rn: RunningNode, settings: ArchiveSettings) -> Archiver:
    """The archiver of ``rn``'s sealed segments.  A bucket without Object Lock when a
    lock is asked for refuses the start (ConfigError); a store that cannot be reached
    now is a warning, and the archiver checks the bucket again before its first copy."""
    settings.check_against(rn.store.retention_days)
    arch = Archiver(
        settings,
        store=settings.store(),
        reader=rn.log,
        data_dir=rn.data_dir,
        seal=rn.seal,
        rejected=rn.state_rejected,
        now=rn.writer.now,
        holds=rn.holds,
        record=lambda draft: rn.writer.append_batch([draft]),
    )
    try:
        arch.check_bucket()
    except StoreError as e:
        log.warning("archive: %s (archiving starts once the store answers)", e)
    # reads whose window reaches before the first segment on disk take it from the archive
    attach_reads(
        rn.log,
        settings,
        data_dir=rn.data_dir,
        seal=rn.seal,
        rejected=rn.state_rejected,
        store=arch.store,
        manifest=arch.manifest,
    )
    m = rn.metrics
    m.gauge("auditlog_archive_segments", "Segments archived and verified", lambda: len(arch.manifest))
    m.gauge("auditlog_archive_pending_segments", "Sealed segments not archived yet", lambda: arch.pending)
    m.gauge(
        "auditlog_archive_lag_seconds",
        "Age of the newest entry of the oldest sealed segment not archived yet",
        lambda: arch.status()["lag_seconds"],
    )
    m.gauge(
        "auditlog_archive_bytes_total",
        "Bytes archived and verified since start",
        lambda: arch.archived_bytes,
        kind="counter",
    )
    m.gauge("auditlog_archive_errors_total", "Archive errors since start", lambda: arch.errors, kind="counter")
    m.gauge(
        "auditlog_archive_last_success_timestamp_seconds",
        "When a segment was last archived and verified",
        lambda: arch.last_success,
    )
    return arch


class RunningNode:
    """One node at work: what the HTTP routes, the peer listener and the background
    jobs use.  Made by ``build_node``."""

    def __init__(
        self,
        data_dir: DataDir,
        node: Node,
        config: NodeConfig,
        reader: NodeLog,
        writer: LogWriter,
        seal: StateSeal,
        executor: ThreadPoolExecutor,
        idempotency: IdempotencyCache,
        committer: Committer,
        ingest: IngestPipeline,
    ):
        self.data_dir = data_dir
        self.node = node
        self.node_id = node.node_id
        self.config = config
        self.store = config.store
        self.settings = config.service
        self.log = reader
        self.writer = writer
        #: seals and opens this node's state files (engine.state)
        self.seal = seal
        self.executor = executor
        self.idempotency = idempotency
        self.committer = committer
        self.ingest = ingest
        #: the API keys: a projection of the log's key entries, held in memory (loaded by ``open``)
        self.keys = KeyStore(node, data_dir.state, reader, writer)
        self.metrics = Metrics()
        # shown even at 0, so that a scrape tells "checked, nothing forged" from "not checked"
        self.metrics.inc("auditlog_state_rejected_total", idempotency.rejected, file=IdempotencyCache.FILE_NAME)
        self._key_uses: dict[str, list] = {}
        self._key_lock = threading.Lock()
        self.last_retention: dict | None = None
        #: the cluster (query.cluster.fanout.Cluster) when [cluster] has a listener or peers
        self.cluster: Cluster | None = None
        #: the syslog forwarder (export.syslog.SyslogForwarder) when [syslog] is configured
        self.syslog: SyslogForwarder | None = None
        #: the HTTP stream (export.http_stream.HttpStreamForwarder) when [http_stream] is configured
        self.stream: HttpStreamForwarder | None = None
        #: the archiver (export.archive.Archiver) when [archive] is configured
        self.archiver: Archiver | None = None
        self._closed = False
        #: the last signed checkpoint this process recorded: its entry's seq, the
        #: segment being written then, when (monotonic); and the last reason none could be
        self._tree_head: tuple[int, str, float] | None = None
        self._tree_problem: str | None = None
        #: the last signed checkpoint this process recorded: (its entry's seq, the note)
        self._tree_note: tuple[int, str] | None = None
        self._tree_lock = threading.Lock()
        #: reads streaming the log right now (HTTP and peer; ``query.http.base``)
        self.reads_in_flight = 0
        #: set when the server begins to stop: long-lived streams (follow=true) end
        self.stopping = False

    # -- lifecycle -------------------------------------------------------------

    def open(self) -> None:
        self.writer.on_commit = self._on_commit
        self.writer.open()
        # keys written ahead of a commit that a crash then lost (cut back by recovery)
        # must not answer for seqs the log does not hold
        self.idempotency.prune_beyond(self.writer.next_seq - 1)
        # the first signed checkpoint comes a checkpoint_interval after start, or at a seal
        self._tree_head = (self.writer.next_seq - 1, self.writer.active_name, time.monotonic())
        m = self.metrics
        m.declare(
            "auditlog_state_rejected_total",
            "counter",
            "State files under <data-dir>/state/ ignored at start because they failed their seal",
        )
        self.keys.load()  # records audit.recovery itself for a snapshot it could not use
        for problem in self.keys.problems:
            log.warning("%s", problem)
        if self.keys.rejected is not None:
            m.inc("auditlog_state_rejected_total", file=KEY_FILE)
        self.last_retention = self._derive_last_retention(report=True)
        m.gauge("auditlog_write_queue_events", "Events waiting for the writer", lambda: self.committer.pending_events)
        m.gauge("auditlog_head_seq", "Last seq appended on this node", lambda: self.writer.next_seq - 1)
        m.gauge(
            "auditlog_retention_last_run_timestamp_seconds",
            "When retention last ran",
            lambda: _parse_iso(self.last_retention.get("ran_at")) if self.last_retention else None,
        )
        m.gauge(
            "auditlog_retention_last_dropped_entries",
            "Entries dropped by the last retention run",
            lambda: self.last_retention.get("dropped_entries") if self.last_retention else None,
        )

    def metrics_for_forwarder(self, prefix: str, fwd, receiver: str) -> None:
        """Lag, errors and connection of a forwarder (syslog, the HTTP stream) in /metrics."""
        m = self.metrics
        m.gauge(
            f"{prefix}_lag_entries",
            f"Entries appended but not yet taken by the {receiver}",
            lambda: fwd.status()["lag"],
        )
        m.gauge(
            f"{prefix}_errors_total", f"{receiver} send/connect errors since start", lambda: fwd.errors, kind="counter"
        )
        m.gauge(f"{prefix}_connected", f"1 when connected to the {receiver}", lambda: int(fwd.connected))

    async def start(self) -> None:
        """Start what runs beside the requests: the syslog forwarder, the cluster's
        peer connections (recording membership changes)."""
        if self.syslog is not None:
            self.syslog.start()
        if self.stream is not None:
            self.stream.start()
        if self.archiver is not None:
            self.archiver.start()
        if self.cluster is not None:
            await self.cluster.start()

    async def stop(self) -> None:
        if self.cluster is not None:
            await self.cluster.stop()
        if self.syslog is not None:
            self.syslog.stop()
        if self.stream is not None:
            self.stream.stop()
        if self.archiver is not None:
            self.archiver.stop()

    async def running(self, app=None):
        """For an aiohttp app's ``cleanup_ctx``: started with the app, stopped with it."""
        await self.start()
        try:
            yield
        finally:
            await self.stop()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self.syslog is not None:
            self.syslog.stop()
        if self.stream is not None:
            self.stream.stop()
        if self.archiver is not None:
            self.archiver.stop()
        try:
            self.flush_key_uses()
        except Exception:  # pragma: no cover - shutdown must go on
            log.exception("could not record API key use at shutdown")
        self.writer.close()
        self.idempotency.close()
        self.ingest.validator.close()
        self.executor.shutdown(wait=True)

    def _on_commit(self, n: int, seconds: float) -> None:
        if self.syslog is not None:
            self.syslog.wake.set()
        if self.stream is not None:
            self.stream.wake.set()
        self.metrics.inc("auditlog_appended_entries_total", n)
        self.metrics.fsync_seconds.observe(seconds)
        self.metrics.batch_size.observe(n)

    async def run(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    async def record(self, user: str, action: str, **fields) -> AppendResult:
        """Append one of the log's own bookkeeping entries.

        Not subject to back-pressure: it records something already done (a key
        created or revoked, an export sent), so a full queue must not drop it.
        """
        return await self.run(
            self.writer.append_batch,
            [
                EntryDraft(
                    user,
                    action,
                    fields.get("target"),
                    None,
                    fields.get("ip"),
                    fields.get("user_agent"),
                    True,
                    fields.get("details", {}),
                )
            ],
        )

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
        drafts = [
            EntryDraft(
                name,
                "auth.api_key_used",
                kid,
                None,
                ip,
                None,
                True,
                {"key_id": kid, "role": role, "count": count, "first_use": format_ts(first)[:19] + "Z"},
            )
            for kid, (name, role, count, first, ip) in sorted(uses.items())
        ]
        self.writer.append_batch(drafts)
        return len(drafts)

    # -- retention -----------------------------------------------------------------

    def head_info(self) -> dict:
        """This node's row of ``/api/v1/cluster`` (also served to peers)."""
        from auditlog.engine.entry import format_ts

        head_seq, last_ts = self.log.head()
        days = self.store.retention_days
        cluster = self.cluster
        oldest = self.oldest_ts()
        return {
            "node": self.node_id,
            "status": "ok",
            "head_seq": head_seq,
            "last_ts": format_ts(last_ts) if last_ts else None,
            "oldest_ts": format_ts(oldest) if oldest is not None else None,
            "oldest_ts_us": oldest,
            "retention_days": "forever" if days is None else days,
            "retention_last_run": self.last_retention,
            "last_checkpoint": cluster.last_checkpoint if cluster else None,
            "syslog": self.syslog.status() if self.syslog else None,
            "http_stream": self.stream.status() if self.stream else None,
            "archive": self.archiver.status() if self.archiver else None,
        }

    def oldest_ts(self) -> int | None:
        """The ts of the oldest entry this node still holds (where retention has left the
        log starting), None for an empty log."""
        for e in self.log.scan():
            return e.ts
        return None

    def postings_job(self) -> int:
        """The term-postings job (every few seconds): sealed segments' sidecars built ahead
        of the first selective query, and the active segment's new frames indexed, but
        only while no read is streaming the log, so the two do not compete for the CPU
        (what is left waits for the next run, or for the query that needs it)."""
        if self.reads_in_flight:
            return 0
        return self.log.build_missing_terms()

    # -- signed checkpoints (engine.tree) ---------------------------------------------

    def record_tree_head(self) -> dict:
        """Bring the Merkle tree up to the log, sign a checkpoint and record it as an
        ``audit.tree_head`` entry (``engine.tree.TreeError`` when the log has damage)."""
        from auditlog.engine.tree import record_tree_head

        with self._tree_lock:
            note, seq = record_tree_head(self.writer)
            self._tree_head = (seq, self.writer.active_name, time.monotonic())
            self._tree_note = (seq, note)
            self._tree_problem = None
        self.metrics.inc("auditlog_tree_heads_total")
        return {"seq": seq, "checkpoint": note}

    def newest_checkpoint(self) -> str | None:
        """The newest signed checkpoint, for witnesses: the last one this process
        recorded while nothing but its own entry came after it, else a new one
        (None for an empty log)."""
        head = self.writer.next_seq - 1
        if head == 0:
            return None
        last = self._tree_note
        if last is not None and (last[0] == head or self._only_bookkeeping(last[0], head)):
            return last[1]
        return self.record_tree_head()["checkpoint"]

    def _only_bookkeeping(self, seq: int, head: int, most: int = 64) -> bool:
        """Whether the entries after ``seq`` up to ``head`` are only signed checkpoints and
        witness records: then no new checkpoint is needed for them (they are covered with
        the next entry that is not), and an idle cluster falls quiet instead of
        checkpointing its peers' cosignatures and cosigning its peers' checkpoints of
        them for ever.  At most ``most`` such entries wait."""
        if head - seq > most:
            return False
        for e in self.log.scan(after_seq=seq):
            if e.seq > head:
                break
            if e.integrity != "ok" or e.user != "system" or e.action not in _BOOKKEEPING:
                return False
        return True

    def tree_answer(self, old_size: int) -> dict:
        """The newest signed checkpoint and the consistency proof to it from the tree of
        ``old_size`` entries (none when that tree is not smaller), for a witness check."""
        from auditlog.engine.note import Checkpoint, parse
        from auditlog.engine.tree import LogTree, TreeError

        try:
            note = self.newest_checkpoint()
            if note is None:
                raise QueryError("the log is empty: no checkpoint yet")
            size = Checkpoint.parse(parse(note)[0]).size
            proof: list[bytes] = []
            if 0 < old_size < size:
                with LogTree(self.log, self.node.key, self.data_dir) as tree:
                    proof = tree.consistency(old_size, size)
        except TreeError as e:
            # the tree cannot vouch for the log (damage, entries cut): said, not hidden
            return {"node": self.node_id, "error": str(e)}
        return {"node": self.node_id, "checkpoint": note, "proof": [h.hex() for h in proof]}

    def tree_head_job(self) -> None:
        """The background job (every few seconds): a signed checkpoint when a segment was
        sealed since the last one, or ``checkpoint_interval`` passed and the log grew."""
        from auditlog.engine.tree import TreeError

        head = self.writer.next_seq - 1
        last = self._tree_head
        if head == 0 or (last is not None and head == last[0]):
            return  # nothing since the last one (or only its own entry)
        if last is not None and self.writer.active_name == last[1]:
            if time.monotonic() - last[2] < self.settings.checkpoint_interval:
                return
            if self._only_bookkeeping(last[0], head):
                return  # only checkpoints and witness records since: nothing new to vouch for
        try:
            self.record_tree_head()
        except TreeError as e:
            if str(e) != self._tree_problem:
                log.warning("no signed checkpoint: %s", e)
                self._tree_problem = str(e)

    def tree_proof(self, kind: str, a: int, b: int) -> dict:
        """An inclusion proof (``kind`` "inclusion": the entry of seq ``a`` in the tree of
        ``b`` entries) or a consistency proof ("consistency": from ``a`` entries to
        ``b``), for a size the tree has reached (``engine.tree.TreeError`` otherwise)."""
        from auditlog.engine.tree import LogTree, TreeError

        with LogTree(self.log, self.node.key, self.data_dir) as tree:
            size = tree.load().size
            if b > size:
                raise TreeError(f"the tree has reached {size} entries, not {b}: no checkpoint of that size yet")
            if kind == "inclusion":
                leaf, proof = tree.inclusion(a, b)
                return {
                    "node": self.node_id,
                    "seq": a,
                    "size": b,
                    "leaf_index": a - 1,
                    "leaf_hash": leaf.hex(),
                    "proof": [h.hex() for h in proof],
                }
            proof = tree.consistency(a, b)
            return {"node": self.node_id, "old_size": a, "new_size": b, "proof": [h.hex() for h in proof]}

    def make_bundle(self, flt, loop=None):
        """An evidence bundle of this node's entries matching ``flt`` (``query.bundles``).
        In a cluster (given the event ``loop``: this runs in a worker) its checkpoint is
        handed to the peers first and carries their cosignatures."""
        from auditlog.query.bundles import build_bundle

        cosign = None
        if loop is not None and self.cluster is not None and self.cluster.peers:
            from auditlog.query.cluster.checkpoints import cosign_round

            cluster = self.cluster

            def cosign(note: str) -> str:
                wait = cluster.settings.peer_timeout * 4 + 5
                try:
                    lines = asyncio.run_coroutine_threadsafe(cosign_round(cluster, note), loop).result(wait)
                except Exception as e:  # the bundle goes out uncosigned, which its verifier says
                    log.warning("the bundle's checkpoint was not cosigned: %r", e)
                    return note
                return note + "".join(lines[p] for p in sorted(lines))

        with self._tree_lock:
            built = build_bundle(self.writer, self.log, self.data_dir, flt, cosign)
            self._tree_head = (built.checkpoint_size + 1, self.writer.active_name, time.monotonic())
        self.metrics.inc("auditlog_tree_heads_total")
        return built

    def tree_heads(self, limit: int, window=None) -> dict:
        """The newest ``limit`` signed checkpoints recorded in the log (within the time
        ``window``, a Filter of from/to, when given), newest first, and what could not be
        read of them."""
        from auditlog.engine.tree import TREE_HEAD_ACTION
        from auditlog.query.filters import Filter
        from auditlog.query.scan import scan_node

        found: list[dict] = []
        problems: list[dict] = []
        flt = Filter.from_params({"action": TREE_HEAD_ACTION})
        if window is not None:
            flt = dataclasses.replace(flt, from_us=window.from_us, to_us=window.to_us)
        for e in scan_node(self.log, flt, order="desc"):
            if e.integrity != "ok" or e.action != TREE_HEAD_ACTION:
                problems.append({"seq": e.seq, "integrity": e.integrity, "violation": e.violation})
                continue
            d = e.details if isinstance(e.details, dict) else {}
            found.append(
                {
                    "seq": e.seq,
                    "ts": format_ts(e.ts),
                    "size": d.get("size"),
                    "root": d.get("root"),
                    "checkpoint": d.get("checkpoint"),
                }
            )
            if len(found) >= limit:
                break
        return {"node": self.node_id, "checkpoints": found, "violations": problems}

    # -- legal holds (engine.holds) ---------------------------------------------------

    def holds(self) -> list[Hold]:
        """The legal holds in force (a projection of the log)."""
        return holds_in_force(self.log)

    def set_hold(self, from_us: int, to_us: int, reason: str, by: str, ip: str | None = None) -> Hold:
        """Set a legal hold: its entry is the hold (its id is the entry's)."""
        res = self.writer.append_batch([set_draft(from_us, to_us, reason, by)._replace(ip=ip)])
        if self.archiver is not None:
            self.archiver.wake.set()  # the archive's objects in the range get their S3 legal hold
        return find_hold(self.log, f"{self.node_id}:{res.first_seq}")

    def release_hold(self, hold_id: str, by: str, reason: str | None = None, ip: str | None = None) -> Hold:
        hold = find_hold(self.log, hold_id)
        self.writer.append_batch([release_draft(hold, by, reason)._replace(ip=ip)])
        if self.archiver is not None:
            self.archiver.wake.set()
        return hold

    def run_retention(self, as_of_us=None, dry_run=False):
        from auditlog.engine.retention import run_retention

        if not dry_run:
            # the snapshot must hold every key whose create entry may be dropped now
            self.keys.checkpoint()
        with self._tree_lock:  # retention brings the Merkle tree up first (engine.tree)
            archived = self.archiver.archived if self.archiver is not None else None
            report = run_retention(self.writer, as_of_us, dry_run, archived, held_segment(self.holds()))
        if not dry_run:
            self.last_retention = self._derive_last_retention()
        return report

    def _derive_last_retention(self, report: bool = False) -> dict | None:
        """The last retention run, from the log's purge entries and the sealed quiet-run record."""
        from auditlog.engine.retention import STATE_FILE, load_last_run

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
        self.writer.append_batch([EntryDraft("system", "audit.recovery", details={"reason": problem, "file": file})])
        set_aside(self.data_dir.state / file)


def _parse_iso(s: str | None) -> float | None:
    if not s:
        return None
    from auditlog.query.timeparse import parse_time

    return parse_time(s) / 1e6
