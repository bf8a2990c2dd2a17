"""The single writer of a node's log: lock, recovery, group commit, rolling.

``append_batch`` returns only once its entries are durable (``fsync="always"``).
Concurrent callers share one write and one fsync: the first caller to find no
commit in progress becomes the leader, takes everything queued and commits it;
the others wait for the result of the commit that carried their entries.

A commit's bytes are planned first (``engine.commit.plan_commit``: entries
signed, cut into frames, frames into segments), then written, synced and
published in that order.  Recovery on open (``engine.recovery``) cuts only
what can be an unfinished write and sets aside files that cannot continue the
log.  A commit that fails part-way (a write, an fsync, creating the next
segment) is undone: segments it created are removed and the active file is cut
back to its last good frame before the error is returned.
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from auditlog.engine import clock
from auditlog.engine.catalog import SegmentInfo, index_segment
from auditlog.engine.chain import GENESIS
from auditlog.engine.commit import Piece, plan_commit
from auditlog.engine.datadir import LEFTOVER_SUFFIX, DataDir, Node, fsync_dir, write_atomic
from auditlog.engine.entry import EntryDraft, sort_details
from auditlog.engine.errors import EngineError, WriteFailedError, WriterLockedError
from auditlog.engine.index import FrameRow, SegmentIndex, index_path
from auditlog.engine.log import NodeLog
from auditlog.engine.recovery import cut_back, interrupted_commit, set_aside_blocking, verified_claims, whole_frame_in
from auditlog.engine.segment import (
    FORMAT_VERSION,
    SegmentData,
    SegmentHeader,
    insert_successor,
    list_segments,
    segment_name,
    seq_from_name,
)
from auditlog.engine.settings import StoreSettings


@dataclass(frozen=True)
class AppendResult:
    first_seq: int
    last_seq: int
    ts: int


def canonical_drafts(drafts: Sequence[EntryDraft]) -> list:
    """The drafts with every ``details`` map in canonical (sorted) form; packed drafts as they are."""
    return [d._replace(details=sort_details(d.details)) if type(d) is not bytes and d.details else d for d in drafts]


class _Pending:
    __slots__ = ("drafts", "tag", "result", "error", "done")

    def __init__(self, drafts, tag=None):
        self.drafts = drafts
        #: the caller's label for this batch, handed to ``LogWriter.before_commit``
        self.tag = tag
        self.result: AppendResult | None = None
        self.error: BaseException | None = None
        self.done = False


class WriterLock:
    """An exclusive lock on ``<data-dir>/LOCK`` held for the writer's lifetime.

    On Linux it is an open-file-description lock (``F_OFD_SETLK``): unlike a
    classic POSIX ``lockf`` lock it belongs to this one open file, so a second
    writer in the *same* process is refused too, and closing some other
    descriptor of the file (``is_held`` in the writer's own process, a second
    writer's failed start) does not silently drop it.  Without OFD locks
    ``flock`` gives the same semantics.
    """

    _OFD_SETLK = getattr(fcntl, "F_OFD_SETLK", None)
    _OFD_GETLK = getattr(fcntl, "F_OFD_GETLK", None)
    # struct flock: l_type, l_whence (short), l_start, l_len (off_t), l_pid (pid_t)
    _FLOCK = "hhqqi"

    def __init__(self, path: Path):
        self.path = path
        self.fd: int | None = None

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            self._lock(fd, exclusive=True)
        except OSError as e:
            os.close(fd)
            if e.errno not in (errno.EAGAIN, errno.EACCES):
                raise EngineError(f"cannot lock {self.path}: {e.strerror or e}") from None
            raise WriterLockedError(
                f"another auditlog writer is active on {self.path.parent} (a running server or "
                "another command holds its lock; only one writer per data dir, readers need no lock)"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self.fd = fd

    @classmethod
    def _lock(cls, fd: int, exclusive: bool) -> None:
        if cls._OFD_SETLK is not None:
            try:
                fcntl.fcntl(fd, cls._OFD_SETLK, struct.pack(cls._FLOCK, fcntl.F_WRLCK, 0, 0, 0, 0))
                return
            except OSError as e:
                if e.errno != errno.EINVAL:
                    raise
                cls._OFD_SETLK = cls._OFD_GETLK = None  # a kernel without OFD locks
        fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing drops the lock
            self.fd = None

    @classmethod
    def is_held(cls, path: Path) -> bool:
        """True when some writer holds the lock (tested without taking it where possible)."""
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            return False
        try:
            if cls._OFD_GETLK is not None:
                # asks who would block a write lock, without acquiring anything; also
                # sees a lock held through another open file of this same process
                try:
                    res = fcntl.fcntl(fd, cls._OFD_GETLK, struct.pack(cls._FLOCK, fcntl.F_WRLCK, 0, 0, 0, 0))
                    return struct.unpack(cls._FLOCK, res)[0] != fcntl.F_UNLCK
                except OSError as e:
                    if e.errno != errno.EINVAL:
                        raise
                    cls._OFD_SETLK = cls._OFD_GETLK = None
            try:  # pragma: no cover - no OFD locks
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except OSError:
                return True
            fcntl.flock(fd, fcntl.LOCK_UN)
            return False
        except OSError:
            return False
        finally:
            os.close(fd)


class LogWriter:
    """Appends to one node's log.  Thread-safe; one per data dir (OS lock)."""

    def __init__(
        self,
        data_dir: DataDir,
        node: Node,
        settings: StoreSettings = StoreSettings(),
        log: NodeLog | None = None,
        clock: Callable[[], int] | None = None,
    ):
        self.data_dir = data_dir
        #: the node's Ed25519 signing key (engine.signing), set by open()
        self.signing_key = None
        #: where "now" comes from (µs); None: the system clock (``engine.clock.now_us``)
        self._clock = clock
        self.node = node.node_id
        self.key = node.key
        self.settings = settings
        self.log = log or NodeLog(data_dir, node)
        self._index_key = node.key.derive(b"index")
        self._lock = WriterLock(data_dir.lock_path)
        self._cv = threading.Condition()
        self._queue: list[_Pending] = []
        self._committing = False
        self._closed = True
        self._active: SegmentInfo | None = None
        self._fd: int | None = None
        self.next_seq = 1
        self.last_sig = GENESIS
        self.last_mac = GENESIS
        self.last_ts = 0
        self._in_skew = False
        self._last_sync = 0.0
        self._dirty = False
        self.recovery: dict | None = None
        #: segments created by the commit in progress (removed again if it fails)
        self._new_segments: list[Path] | None = None
        #: set when a failed write could not even be cut back: no more appends
        self._failed: str | None = None
        #: observers: called with (batch_size, fsync_seconds) after each commit
        self.on_commit = None
        #: called in the commit, before anything is written, with ``[(tag, AppendResult)]``
        #: for the tagged batches in it; if it raises, the commit fails and writes nothing
        self.before_commit = None

    def now(self) -> int:
        """The writer's current time, µs (its injected clock, else the system's)."""
        return self._clock() if self._clock is not None else clock.now_us()

    # -- open / close --------------------------------------------------------

    def open(self) -> LogWriter:
        self._lock.acquire()
        try:
            # a data dir made before there were signing keys gets one from its writer
            self.signing_key = self.data_dir.ensure_signing_key()
            self._recover()
        except BaseException:
            self._lock.release()
            raise
        self._closed = False
        self.log.live_active = lambda: self._active
        if self.recovery is not None:
            self.append_batch([EntryDraft("system", "audit.recovery", details=self.recovery)])
        return self

    def close(self) -> None:
        with self._cv:
            while self._committing:
                self._cv.wait()
            if self._closed:
                return
            self._closed = True
        if self._fd is not None:
            if self._dirty:
                os.fsync(self._fd)
            os.close(self._fd)
            self._fd = None
        self.log.live_active = None
        self._lock.release()

    def __enter__(self) -> LogWriter:
        return self.open()

    def __exit__(self, *exc) -> None:
        self.close()

    def _recover(self) -> None:
        """Make the log writable again after whatever ended the last writer, cutting
        only what can be an unfinished write (``engine.recovery``)."""
        seg_dir = self.data_dir.segments
        seg_dir.mkdir(exist_ok=True)
        for n in os.listdir(seg_dir):
            if n.endswith((".tmp", LEFTOVER_SUFFIX)):
                # an interrupted create or index write, or a read cache of earlier
                # versions; never log data
                os.unlink(seg_dir / n)
        notes: dict = {}
        reasons: list[str] = []
        moved, claimed = set_aside_blocking(self.data_dir, self.key, self.node)
        if moved:
            notes["set_aside"] = moved
            reasons.append(f"{len(moved)} file(s) in segments/ that cannot continue this log set aside in quarantine/")
        paths = list_segments(seg_dir)
        if not paths:
            self.recovery = self._note(reasons, notes)
            self._create_segment(claimed + 1, GENESIS, GENESIS)
            return
        active = paths[-1]
        info = index_segment(active, self.key, self.node)
        while info.usable and insert_successor(seg_dir, paths, info.last_seq + 1):
            # the listing missed the newest segment (readers rename sidecars in this
            # directory meanwhile): it is named after the seq that follows
            active = paths[-1]
            info = index_segment(active, self.key, self.node)
        if not info.usable:
            # The active segment's header is unreadable or not ours: keep it untouched,
            # continue after it without reusing any seq it may hold.
            prev_infos = [i for i in self.log.segment_infos()[:-1] if i.usable]
            base = prev_infos[-1] if prev_infos else None
            next_seq = max(
                (seq_from_name(active.name) or 1) + 1,
                (base.last_seq + 1) if base else 1,
                verified_claims(active, self.key, self.node) + 1,
                claimed + 1,
            )
            reasons.append("active segment unusable, continued in a new segment")
            notes.update({"segment": active.name, "detail": info.problem.detail if info.problem else ""})
            self.recovery = self._note(reasons, notes)
            self.last_ts = (base.index.verified_hi if base else None) or 0
            self._create_segment(next_seq, base.last_sig if base else GENESIS, base.last_mac if base else GENESIS)
            return
        idx = info.index
        # What a crash mid-write can leave after the last whole frame: a frame cut
        # short (``info.tail``), or bytes that are not a frame at all.  They are cut
        # only if nothing in them is a whole frame; a whole frame that fails its
        # checks is damage wherever it sits: kept, never cut (it may hold
        # acknowledged entries), its seqs never reused.
        cut_at = info.tail[0] if info.tail is not None else None
        last = len(idx.frames) - 1
        if last >= 0 and last in idx.damaged and idx.frames[last].count == 0:
            cut_at = idx.frames[last].offset
        kept_tail = None
        if cut_at is not None:
            with SegmentData(active) as sd:
                kept_tail = whole_frame_in(sd.data, cut_at, sd.size, info.version, self.key)
            if kept_tail is not None:
                # the seqs its records held are never given out again
                first = (
                    (info.last_seq + 1)
                    if not (idx.frames and (len(idx.frames) - 1) in idx.damaged and idx.frames[-1].count == 0)
                    else idx.frames[-1].first_seq
                )
                claimed = max(claimed, first + kept_tail.records - 1)
                notes["kept_tail"] = {
                    "offset": cut_at,
                    "detail": kept_tail.detail,
                    "seqs": [first, first + kept_tail.records - 1],
                }
                reasons.append(f"bytes after the last whole frame hold {kept_tail.detail}: kept as damage")
                cut_at = None
        if cut_at is not None:
            size = active.stat().st_size
            with open(active, "r+b") as f:
                f.truncate(cut_at)
                f.flush()
                os.fsync(f.fileno())
            reasons.append("torn tail cut back to the last whole frame")
            notes.update({"segment": active.name, "cut_offset": cut_at, "cut_bytes": size - cut_at})
            info = index_segment(active, self.key, self.node)
            idx = info.index
        if not idx.damaged and info.tail is None:
            commit = interrupted_commit(self.log.segment_infos())
            if commit is not None:
                cut = cut_back(commit)
                reasons.append(
                    f"an interrupted commit (seq {commit.seq_from}..{commit.seq_to}, never acknowledged) cut back whole"
                )
                notes["interrupted_commit"] = cut
                paths = list_segments(seg_dir)
                active = paths[-1]
                info = index_segment(active, self.key, self.node)
                idx = info.index
        self.last_ts = idx.verified_hi
        if self.last_ts is None:  # nothing intact here yet: the previous segment's end
            prev_infos = [i for i in self.log.segment_infos()[:-1] if i.index is not None]
            self.last_ts = prev_infos[-1].index.verified_hi if prev_infos else None
        self.last_ts = self.last_ts or 0
        self.next_seq = max(info.last_seq + 1 if idx.frames else info.header.first_seq, claimed + 1)
        self.last_sig = info.last_sig or GENESIS
        self.last_mac = info.last_mac
        if idx.damaged or info.tail is not None:
            reasons.append("active segment damaged; kept as is, continued in a new segment")
            notes["segment"] = active.name
            if idx.damaged:
                notes["damaged"] = [[v[0], v[2], v[3]] for v in idx.damaged.values()]
            self.recovery = self._note(reasons, notes)
            self._create_segment(self.next_seq, self.last_sig, self.last_mac)
            return
        self.recovery = self._note(reasons, notes)
        if info.version < FORMAT_VERSION or self.next_seq != (
            info.last_seq + 1 if idx.frames else info.header.first_seq
        ):
            # an older format (its frames cannot say where a commit ends), or seqs in use
            # elsewhere: new entries go to a new segment
            self._create_segment(self.next_seq, self.last_sig, self.last_mac)
            return
        self._set_active(info)

    @staticmethod
    def _note(reasons: list[str], notes: dict) -> dict | None:
        """The details of the ``audit.recovery`` entry, or None when nothing happened."""
        if not reasons:
            return None
        return {"reason": "; ".join(reasons), **notes}

    # -- segments --------------------------------------------------------------

    def _set_active(self, info: SegmentInfo) -> None:
        if self._fd is not None:
            os.close(self._fd)
        self._fd = os.open(info.path, os.O_WRONLY | os.O_APPEND)
        self._active = info
        self._active_size = info.index.size

    def _create_segment(
        self, first_seq: int, prev_sig: bytes, prev_mac: bytes, built: tuple[bytes, SegmentHeader] | None = None
    ) -> None:
        """Create a segment durably: header to a temp file, fsync, rename, fsync the dir
        (``built``: its header, already built by a commit's plan)."""
        seg_dir = self.data_dir.segments
        path = seg_dir / segment_name(first_seq)
        if path.exists():
            raise EngineError(f"segment {path.name} already exists; refusing to overwrite it")
        raw, header = built or SegmentHeader.build(self.key, self.node, first_seq, self.now(), prev_sig, prev_mac)
        tmp = path.with_name(path.name + ".tmp")
        try:
            with open(tmp, "wb") as f:
                f.write(raw)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
            fsync_dir(seg_dir)  # a crash before this line may lose the empty segment, nothing else
        except BaseException:
            for p in (tmp, path):  # a failed create leaves nothing behind (it holds no entry)
                try:
                    os.unlink(p)
                except FileNotFoundError:
                    pass
            raise
        if self._new_segments is not None:
            self._new_segments.append(path)
        self.next_seq = first_seq
        self.last_sig = prev_sig
        self.last_mac = header.mac
        self._set_active(SegmentInfo(path, header, SegmentIndex(path.name, header.mac, header.size)))

    def _seal(self, info: SegmentInfo) -> None:
        """Write a just-sealed segment's index (derived, best effort)."""
        try:
            write_atomic(index_path(info.path), info.index.to_bytes(self._index_key), sync=False)
        except OSError:
            pass

    @contextmanager
    def _exclusive(self):
        """Hold the commit slot: no group commit runs while the block does."""
        with self._cv:
            while self._committing:
                self._cv.wait()
            self._committing = True
        try:
            yield
        finally:
            with self._cv:
                self._committing = False
                self._cv.notify_all()

    def roll(self) -> None:
        """Seal the active segment and start a new one (no entries needed)."""
        with self._exclusive():
            self._roll_locked()

    def _roll_locked(self, piece: Piece | None = None) -> None:
        """Start a new segment (``piece``: the one a commit's plan rolls into)."""
        if self._dirty:
            os.fsync(self._fd)
            self._dirty = False
        old = self._active
        if piece is None:
            self._create_segment(self.next_seq, self.last_sig, self.last_mac)
        else:
            self._create_segment(
                piece.header.first_seq, piece.header.prev_sig, piece.header.prev_mac, (piece.header_bytes, piece.header)
            )
        self._seal(old)

    @property
    def active_name(self) -> str:
        """The file name of the segment being written."""
        return self._active.path.name

    def active_age(self) -> float:
        return (self.now() - self._active.header.created_us) / 1e6

    # -- appending ---------------------------------------------------------------

    def append_batch(self, drafts: Sequence[EntryDraft], canonical: bool = False) -> AppendResult:
        """Append drafts; returns once durable.  All or nothing.

        ``canonical=True`` promises every ``details`` map already has its keys
        sorted (ingest's validation does that); otherwise they are sorted here,
        in the caller's thread, before the batch joins the commit queue.
        An item may also be a packed draft (``bytes`` from ``pack_draft``),
        which is taken as it is.
        """
        return self.append_batches([drafts], canonical)[0]

    def append_batches(
        self, batches: Sequence[Sequence[EntryDraft]], canonical: bool = False, tags: Sequence | None = None
    ) -> list[AppendResult]:
        """Append several batches in one group commit; returns once all are durable.

        Each batch gets its own result (its own contiguous seqs, in the order
        given).  They are written together, so they succeed or fail together:
        a failed commit raises and leaves none of them behind.  ``tags`` (one
        per batch, None for untagged) are passed to :attr:`before_commit`.
        """
        reqs = []
        for i, drafts in enumerate(batches):
            if not drafts:
                raise EngineError("empty batch")
            reqs.append(
                _Pending(drafts if canonical else canonical_drafts(drafts), tags[i] if tags is not None else None)
            )
        if not reqs:
            return []
        last = reqs[-1]
        with self._cv:
            if self._closed:
                raise EngineError("the writer is closed")
            if self._failed:
                raise WriteFailedError(self._failed)
            self._queue.extend(reqs)  # taken by one commit, all together
            while not last.done:
                if not self._committing:
                    batch, self._queue = self._queue, []
                    self._committing = True
                    self._cv.release()
                    try:
                        self._commit(batch)
                    finally:
                        self._cv.acquire()
                        self._committing = False
                        self._cv.notify_all()
                else:
                    self._cv.wait()
        for r in reqs:
            if r.error is not None:
                raise r.error
        return [r.result for r in reqs]

    def _commit(self, batch: list[_Pending], forced_ts: int | None = None) -> None:
        try:
            self._commit_unsafe(batch, forced_ts)
        except OSError as e:
            err = WriteFailedError(f"write to the log failed ({e.strerror or e}); nothing from this batch was stored")
            for r in batch:
                r.error, r.done = err, True
        except BaseException as e:  # pragma: no cover - defensive
            for r in batch:
                r.error, r.done = e, True

    def seed_history(self, drafts: Sequence[EntryDraft], at_us: int) -> AppendResult:
        """Append drafts stamped ``at_us`` instead of now: only for seeding a demo log
        (and the merge benchmark's data sets).

        The stamp must not go back from the last entry nor lie in the future, so
        the log's time order and chain hold as for any other append; the HTTP
        API and the CLI's append never reach this.
        """
        if at_us < self.last_ts or at_us > self.now():
            raise EngineError("seed timestamps must not go backwards or into the future")
        req = _Pending(drafts)
        with self._exclusive():
            self._commit([req], at_us)
        if req.error is not None:
            raise req.error
        return req.result

    def _commit_unsafe(self, batch: list[_Pending], forced_ts: int | None = None) -> None:
        t = self.now() if forced_ts is None else forced_ts
        settings = self.settings
        if self._active.index.frames and ((t - self._active.header.created_us) / 1e6 >= settings.segment_max_age):
            self._roll_locked()
        skew = None
        was_in_skew = self._in_skew
        if t < self.last_ts:
            if not self._in_skew:
                skew = EntryDraft(
                    "system",
                    "audit.clock_skew",
                    details={  # keys in canonical order
                        "behind_us": self.last_ts - t,
                        "clock_us": t,
                        "last_ts_us": self.last_ts,
                    },
                )
            self._in_skew = True
            ts = self.last_ts
        else:
            self._in_skew = False
            ts = t
        # snapshot for rollback
        snap = (
            self.next_seq,
            self.last_sig,
            self.last_mac,
            self._active,
            self._active_size,
            len(self._active.index.frames),
        )
        all_drafts = [skew] if skew else []
        for r in batch:
            all_drafts.extend(r.drafts)
        # every batch's seqs are known before anything is written
        first_of = self.next_seq + (1 if skew else 0)
        for r in batch:
            n = len(r.drafts)
            r.result = AppendResult(first_of, first_of + n - 1, ts)
            first_of += n
        tagged = [(r.tag, r.result) for r in batch if r.tag is not None]
        plan = plan_commit(
            all_drafts,
            key=self.key,
            node=self.node,
            seq=self.next_seq,
            ts=ts,
            prev_sig=self.last_sig,
            prev_mac=self.last_mac,
            segment_size=self._active_size,
            segment_has_frames=bool(self._active.index.frames),
            segment_max_bytes=settings.segment_max_bytes,
            frame_max_payload=settings.frame_max_payload,
        )
        self._new_segments = []
        try:
            if tagged and self.before_commit is not None:
                # before any byte of the batch is written: what the hook records
                # (e.g. idempotency keys) is durable before the entries are
                self.before_commit(tagged)
            for piece in plan.pieces:
                if piece.header is not None:
                    # the frames written so far are durable before the next segment exists
                    self._roll_locked(piece)
                self._write_piece(piece, ts)
        except BaseException:
            # whatever failed (a write, an fsync, creating the next segment), nothing
            # of this batch may stay behind: it was never acknowledged
            self._rollback(snap)
            self._in_skew = was_in_skew  # a lost audit.clock_skew entry is written next time
            raise
        finally:
            self._new_segments = None
        self.next_seq, self.last_sig, self.last_mac, self.last_ts = (plan.next_seq, plan.last_sig, plan.last_mac, ts)
        for r in batch:
            r.done = True

    def _write_piece(self, piece: Piece, ts: int) -> None:
        """Write a piece's frames to the active segment, make them durable, then publish
        them to readers."""
        data = piece.data
        view = memoryview(data)
        while view:
            n = os.write(self._fd, view)  # O_APPEND: lands at the end of the file
            view = view[n:]
        t0 = time.perf_counter()
        mode = self.settings.fsync
        if mode == "always" or (
            mode == "interval" and time.monotonic() - self._last_sync >= self.settings.fsync_interval
        ):
            # after this line the frames survive a crash; before it, a crash may leave
            # a torn tail, or an unfinished commit, which recovery cuts back (never
            # acknowledged)
            os.fdatasync(self._fd)
            self._last_sync = time.monotonic()
            self._dirty = False
        else:
            self._dirty = True
        dt = time.perf_counter() - t0
        idx = self._active.index
        for f in piece.frames:
            idx.add_frame(FrameRow(f.offset, f.first_seq, f.count, ts, ts))
            idx.last_mac = f.mac
            idx.last_sig = f.last_sig
        self._active_size += len(data)
        idx.size = self._active_size
        if self.on_commit:
            self.on_commit(sum(f.count for f in piece.frames), dt)

    def _rollback(self, snap) -> None:
        """Undo a failed commit: drop the segments it created, cut the active file
        back to its last good frame.  If even that fails the writer refuses further
        appends (the next open recovers the file)."""
        next_seq, last_sig, last_mac, active, size, nframes = snap
        seg_dir = self.data_dir.segments
        new = self._new_segments or []
        try:
            for p in new:
                for q in (p, index_path(p)):
                    try:
                        os.unlink(q)
                    except FileNotFoundError:
                        pass
            if new:
                # rolling sealed ``active`` (its index written) before the failure:
                # that index describes frames that are removed now
                try:
                    os.unlink(index_path(active.path))
                except FileNotFoundError:
                    pass
                fsync_dir(seg_dir)
            if new or self._active is not active:
                self._set_active(active)
            os.ftruncate(self._fd, size)
            os.fsync(self._fd)
        except OSError as e:
            self._failed = (
                f"the log could not be cut back after a failed write ({e.strerror or e}); "
                "restart the writer to recover the segment"
            )
        idx = active.index
        if len(idx.frames) > nframes:
            idx.last_mac, idx.last_sig = last_mac, last_sig
        idx.truncate(nframes)
        idx.size = size
        self._active_size = size
        self.next_seq, self.last_sig, self.last_mac = next_seq, last_sig, last_mac
