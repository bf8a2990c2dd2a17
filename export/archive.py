"""The archive: sealed segments copied to S3-compatible object storage.

Each sealed, intact segment goes to ``<prefix>/<node>/<segment name>`` as it
is on disk (the segment format is self-verifying: header MAC, chained frame
MACs, signed entries).  It is stored with its SHA-256 checksum, under Object
Lock when ``object_lock`` asks for it (retained until its newest entry's time
plus the archive's ``retention_days``; "forever": until 9999-12-31), then read
back, compared byte for byte and indexed from the copy that came back (every
frame's MAC checked) before it counts as archived.

What is archived is kept in the sealed state file ``state/archive.json``
(name, object version, SHA-256, size, seqs, times): retention reads it to
drop a segment locally only once its archived copy has been verified, and
its ``audit.retention_purge`` entry names the objects.  A state file that
fails its seal is set aside and forgotten; the segments still on disk are
then checked against their objects again (never trusted from the file).

The archiver runs in its own thread with its own timeouts: an unreachable
store shows as errors and a growing lag (``/metrics``, ``/api/v1/cluster``),
never as slower appends.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from auditlog.engine import clock
from auditlog.engine.archived import ArchivedRef, ArchiveUnavailable
from auditlog.engine.catalog import SegmentInfo, index_segment
from auditlog.engine.datadir import DataDir
from auditlog.engine.entry import EntryDraft
from auditlog.engine.errors import ConfigError
from auditlog.engine.holds import Hold
from auditlog.engine.index import index_path
from auditlog.engine.log import NodeLog
from auditlog.engine.settings import (
    Setting,
    check_fields,
    choice,
    defaults_of,
    file_path,
    int_at_least,
    parse_duration,
    parse_retention,
    text,
)
from auditlog.engine.state import StateSeal, StateTampered
from auditlog.export.s3 import S3Store, StoreError, parse_url

log = logging.getLogger("auditlog.archive")

LOCK_MODES = ("compliance", "governance", "off")
ARCHIVE_PURGE = "audit.archive_purge"
STATE_FILE = "archive.json"
#: what "forever" keeps an object locked until
FOREVER = dt.datetime(9999, 12, 31, tzinfo=dt.UTC)
DAY_US = 86_400 * 1_000_000


def _url(v, name: str) -> str:
    text(v, name)
    try:
        parse_url(v)
    except ValueError as e:
        raise ConfigError(f"{name}: {e}") from None
    return v


def _endpoint(v, name: str) -> str:
    text(v, name)
    if not v.startswith(("http://", "https://")):
        raise ConfigError(f"{name} must be an http:// or https:// URL, got {v!r}")
    return v.rstrip("/")


def _retention(v, name: str) -> int | None:
    return parse_retention(v, name)


#: ``[archive]``: sealed segments copied to S3-compatible object storage
ARCHIVE_SETTINGS: tuple[Setting, ...] = (
    Setting(
        "archive.url",
        None,
        "s3://BUCKET/PREFIX: where sealed segments go",
        _url,
        required='[archive] needs url = "s3://BUCKET/PREFIX"',
    ),
    Setting("archive.endpoint", None, "the store's URL (default: AWS S3)", _endpoint),
    Setting("archive.region", "us-east-1", "the store's region", text),
    Setting(
        "archive.credentials_file",
        None,
        "TOML file (mode 0600) with access_key_id and secret_access_key "
        "(default: AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)",
        file_path,
        path=True,
    ),
    Setting(
        "archive.retention_days",
        None,
        "days the archive keeps a segment after its newest entry (at least the local retention_days), "
        'or "forever" (the default)',
        _retention,
    ),
    Setting(
        "archive.object_lock",
        "compliance",
        "compliance | governance | off: Object Lock mode of each object (the bucket must have Object Lock)",
        choice(LOCK_MODES),
    ),
    Setting("archive.interval", 30.0, 'how often to look for newly sealed segments (seconds or "30s")', parse_duration),
    Setting(
        "archive.cache_mb",
        1024,
        "MiB of archived segments kept on local disk for reads that reach before it",
        int_at_least(1),
    ),
)
_ARCHIVE = defaults_of(ARCHIVE_SETTINGS)


@dataclass(frozen=True)
class ArchiveSettings:
    url: str
    endpoint: str | None = _ARCHIVE["endpoint"]
    region: str = _ARCHIVE["region"]
    credentials_file: str | None = _ARCHIVE["credentials_file"]
    retention_days: int | None = _ARCHIVE["retention_days"]  # None: forever
    object_lock: str = _ARCHIVE["object_lock"]
    interval: float = _ARCHIVE["interval"]
    cache_mb: int = _ARCHIVE["cache_mb"]

    def __post_init__(self):
        check_fields(self, ARCHIVE_SETTINGS)

    def check_against(self, local_days: int | None) -> None:
        """The archive keeps at least what the node keeps."""
        if self.retention_days is not None and (local_days is None or self.retention_days < local_days):
            here = "forever" if local_days is None else f"{local_days} days"
            raise ConfigError(
                f"[archive] retention_days ({self.retention_days}) must be at least the node's retention_days ({here})"
            )

    def store(self) -> S3Store:
        return S3Store(self.url, endpoint=self.endpoint, region=self.region, credentials_file=self.credentials_file)


@dataclass(frozen=True)
class Archived:
    """One segment's verified copy in the archive."""

    name: str
    key: str
    version_id: str | None
    sha256: str
    size: int
    first_seq: int
    last_seq: int
    min_ts: int | None
    max_ts: int | None
    #: the S3 legal hold is on (a legal hold in force overlaps its entries)
    legal_hold: bool = False
    #: the archive's retention let it go (an audit.archive_purge entry says so); the
    #: object is deleted next, again at each pass until the store lets it go
    expiring: bool = False

    def to_row(self) -> dict:
        return dict(self.__dict__)

    @classmethod
    def from_row(cls, d) -> Archived | None:
        try:
            a = cls(**d)
        except TypeError:
            return None
        if not (isinstance(a.name, str) and isinstance(a.sha256, str) and type(a.size) is int):
            return None
        return a


def object_name(node: str, segment: str) -> str:
    return f"{node}/{segment}"


def index_object(node: str, segment: str) -> str:
    """The object of a segment's ``.idx`` (derived: reads use it only if its MAC and its
    binding to the segment hold)."""
    return f"{node}/{index_path(Path(segment)).name}"


class Manifest:
    """What is archived: the sealed ``state/archive.json`` (thread-safe)."""

    def __init__(self, seal: StateSeal, state_dir: Path, url: str, rejected: Callable[[str, str], None]):
        self.seal = seal
        self.path = Path(state_dir) / STATE_FILE
        self.url = url
        self._lock = threading.Lock()
        self._items: dict[str, Archived] = {}
        #: the rows in seq order, made again at each change (readers take it whole)
        self._ordered: tuple[Archived, ...] = ()
        try:
            d = seal.read(self.path)
        except StateTampered as e:
            rejected(STATE_FILE, f"{STATE_FILE}: {str(e).split(': ', 1)[-1]}; archived segments are checked again")
            d = None
        if isinstance(d, dict) and d.get("url") == url and isinstance(d.get("segments"), list):
            for row in d["segments"]:
                a = Archived.from_row(row) if isinstance(row, dict) else None
                if a is not None:
                    self._items[a.name] = a
        self._order()

    def _order(self) -> None:
        self._ordered = tuple(sorted(self._items.values(), key=lambda x: x.first_seq))

    def get(self, name: str) -> Archived | None:
        with self._lock:
            return self._items.get(name)

    def all(self) -> tuple[Archived, ...]:
        """Every row, in seq order (a snapshot: safe beside a pass that changes them)."""
        return self._ordered

    def add(self, a: Archived) -> None:
        self.add_all([a])

    def add_all(self, archived: list[Archived]) -> None:
        self._change(archived, [])

    def remove(self, names: list[str]) -> None:
        if names:
            self._change([], names)

    def _change(self, archived: list[Archived], removed: list[str]) -> None:
        with self._lock:
            for a in archived:
                self._items[a.name] = a
            for n in removed:
                self._items.pop(n, None)
            self._order()
            rows = [x.to_row() for x in self._ordered]
            self.seal.write(self.path, {"url": self.url, "segments": rows})

    def __len__(self) -> int:
        return len(self._ordered)

    def archived(self, info: SegmentInfo) -> dict | None:
        """For retention: the verified copy of ``info`` (the file on disk still being the
        one archived), as the purge entry names it; None when there is none."""
        a = self.get(info.name)
        if a is None:
            return None
        try:
            if info.path.stat().st_size != a.size or sha256_file(info.path) != a.sha256:
                return None
        except OSError:
            return None
        return {"url": self.url, "key": a.key, "version_id": a.version_id, "sha256": a.sha256}


#: the shortest lock an object gets (stores refuse a retain-until date in the past)
MIN_LOCK = dt.timedelta(days=1)


def retain_until(max_ts_us: int | None, days: int | None, now: dt.datetime | None = None) -> dt.datetime:
    """When an object whose newest entry is at ``max_ts_us`` may go (``days`` None: forever),
    at least :data:`MIN_LOCK` after ``now`` (the store's clock: a lock is enforced in real time)."""
    if days is None:
        return FOREVER
    base = dt.datetime.fromtimestamp((max_ts_us or 0) / 1e6, dt.UTC)
    floor = (now or dt.datetime.now(dt.UTC)) + MIN_LOCK
    return max(base + dt.timedelta(days=days), floor.replace(microsecond=0))


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


class Archiver:
    """Copies this node's sealed segments to the archive (in a thread)."""

    def __init__(
        self,
        settings: ArchiveSettings,
        *,
        store: S3Store,
        reader: NodeLog,
        data_dir: DataDir,
        seal: StateSeal,
        rejected: Callable[[str, str], None],
        now: Callable[[], int] = clock.now_us,
        holds: Callable[[], list[Hold]] = lambda: [],
        record: Callable[[EntryDraft], object] | None = None,
    ):
        """``now()``: the node's clock in µs (the lag is measured on it); ``holds()``: the
        legal holds in force (``engine.holds``), mirrored as S3 legal holds."""
        self.settings = settings
        self.now = now
        self.holds = holds
        #: appends one of the node's own entries (the writer's); None: archive retention waits
        self.record = record
        self.store = store
        self.reader = reader
        self.node = reader.node
        self.data_dir = data_dir
        self.manifest = Manifest(seal, data_dir.state, settings.url, rejected)
        self.scratch = data_dir.root / "archive-check"
        self.archived_segments = 0
        self.archived_bytes = 0
        self.errors = 0
        self.last_error: str | None = None
        self.last_success: float | None = None  # Unix time of the last verified copy
        self.pending = 0
        self.oldest_pending_ts: int | None = None
        self.bucket_checked = False
        self.wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pass = threading.Lock()

    # -- the bucket ---------------------------------------------------------------

    def check_bucket(self) -> None:
        """The bucket is reachable and, when a lock mode is asked for, has Object Lock
        (StoreError / ConfigError otherwise)."""
        self.store.check_bucket()
        if self.settings.object_lock != "off" and not self.store.lock_enabled():
            raise ConfigError(
                f"[archive] object_lock = {self.settings.object_lock!r}, but the bucket of {self.settings.url} "
                'has no Object Lock: create it with Object Lock enabled, or set object_lock = "off"'
            )
        self.bucket_checked = True

    # -- one pass ------------------------------------------------------------------

    def candidates(self) -> list[SegmentInfo]:
        """Sealed, intact segments not archived yet, oldest first."""
        infos = self.reader.segment_infos()[:-1]  # never the active one
        out = []
        for info in infos:
            if self.manifest.get(info.name) is not None:
                continue
            if not info.usable or info.tail is not None or info.index.damaged:
                continue  # damage stays local, reported by verify; retention never drops it
            out.append(info)
        return out

    def run_once(self) -> int:
        """Archive what is sealed and not archived yet; the number of segments archived.
        One pass at a time (the thread's and one asked for, e.g. before retention)."""
        with self._pass:
            return self._pass_once()

    def _pass_once(self) -> int:
        if not self.bucket_checked:
            self.check_bucket()
        todo = self.candidates()
        self._note_pending(todo)
        done = 0
        for info in todo:
            if self._stop.is_set():
                break
            self.archive(info)
            done += 1
            self._note_pending(todo[done:])
        self.sync_holds()
        self.expire()
        return done

    def expire(self, as_of_us: int | None = None) -> list[str]:
        """Delete the archived segments whose newest entry is older than the archive's
        ``retention_days``: a prefix of the archive, never a segment a legal hold in force
        overlaps (nor anything after it) and never one still on disk.  What goes is
        recorded first, as an ``audit.archive_purge`` entry (``record``); without a way
        to record, nothing goes.  The names deleted."""
        days = self.settings.retention_days
        if days is None or self.record is None:
            return []
        cutoff = (self.now() if as_of_us is None else as_of_us) - days * DAY_US
        holds = self.holds()
        if getattr(holds, "uncertain", None):
            return []  # damage may hide a hold: nothing goes (engine.holds)
        victims: list[Archived] = []
        for a in self.manifest.all():
            if a.max_ts is None or a.max_ts >= cutoff:
                break
            if any(h.overlaps(a.min_ts, a.max_ts) for h in holds) or (self.data_dir.segments / a.name).exists():
                break
            victims.append(a)
        if not victims:
            return []
        new = [a for a in victims if not a.expiring]
        if new:
            self.record(
                EntryDraft(
                    "system",
                    ARCHIVE_PURGE,
                    details={
                        "url": self.settings.url,
                        "retention_days": days,
                        "seq_from": new[0].first_seq,
                        "seq_to": new[-1].last_seq,
                        "objects": [[a.name, a.key, a.version_id, a.sha256, a.first_seq, a.last_seq] for a in new],
                    },
                )
            )
            self.manifest.add_all([dataclasses.replace(a, expiring=True) for a in new])
        gone = []
        try:
            for a in victims:  # oldest first: a failure part way leaves a prefix gone
                self.store.delete(object_name(self.node, a.name), a.version_id)
                gone.append(a.name)
                try:
                    self.store.delete(index_object(self.node, a.name))
                except StoreError:
                    pass  # derived data: a read never takes it without its segment
        finally:
            self.manifest.remove(gone)
        return gone

    def sync_holds(self) -> int:
        """Give each archived object the S3 legal hold its entries' times call for: on while
        a hold in force overlaps them, off once none does.  The number changed."""
        if self.settings.object_lock == "off":
            return 0  # a bucket without Object Lock has no legal holds
        holds = self.holds()
        uncertain = bool(getattr(holds, "uncertain", None))
        changed = 0
        for a in self.manifest.all():
            # with uncertain holds (damage may hide one) a legal hold is set, never lifted
            want = a.legal_hold and uncertain or any(h.overlaps(a.min_ts, a.max_ts) for h in holds)
            if want != a.legal_hold:
                self.store.set_legal_hold(object_name(self.node, a.name), a.version_id, want)
                self.manifest.add(dataclasses.replace(a, legal_hold=want))
                changed += 1
        return changed

    def _note_pending(self, todo: list[SegmentInfo]) -> None:
        self.pending = len(todo)
        self.oldest_pending_ts = todo[0].index.max_ts if todo and todo[0].index.frames else None

    def archive(self, info: SegmentInfo) -> Archived:
        """Store one segment, read it back and check it; record it as archived.  Both
        ways stream through files: memory stays flat whatever the segment size."""
        size = info.path.stat().st_size
        digest = sha256_file(info.path)
        s = self.settings
        idx = info.index
        lock = None if s.object_lock == "off" else s.object_lock
        name = object_name(self.node, info.name)
        until = retain_until(idx.max_ts, s.retention_days)
        stored = self.store.put(name, info.path, lock_mode=lock, retain_until=until, sha256=digest)
        problem = self.check_copy(info, name, stored.version_id, digest)
        if problem is not None:
            raise StoreError(f"{s.url}: the copy of {info.name} read back {problem}")
        a = Archived(
            info.name,
            stored.key,
            stored.version_id,
            digest,
            size,
            info.first_seq,
            info.last_seq,
            idx.min_ts,
            idx.max_ts,
        )
        self.manifest.add(a)
        self.archived_segments += 1
        self.archived_bytes += size
        # its index beside it (MAC'd with the node's index key, derived data): a read from the
        # archive then need not walk the whole segment before its first entry
        try:
            self.store.put(index_object(self.node, info.name), idx.to_bytes(self.reader.key.derive(b"index")))
        except StoreError as e:
            log.warning("archive: the index of %s was not stored (%s); reads will index it themselves", info.name, e)
        self.last_success = time.time()
        return a

    def check_copy(self, info: SegmentInfo, name: str, version_id: str | None, digest: str) -> str | None:
        """None when the stored copy, read back, is the segment byte for byte and every
        frame of it verifies."""
        # named as the segment (its header says so), in a directory of this pass's own
        where = self.scratch / f"{os.getpid()}-{threading.get_ident()}"
        where.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = where / info.name
        try:
            self.store.download(name, version_id, tmp)
            got_digest = sha256_file(tmp)
            if got_digest != digest:
                return f"differs from the segment ({tmp.stat().st_size} bytes, SHA-256 {got_digest[:16]}...)"
            got = index_segment(tmp, self.reader.key, self.node)
        finally:
            shutil.rmtree(where, ignore_errors=True)
        if got.header is None or got.problem is not None:
            return f"has no usable header ({(got.problem.detail if got.problem else 'unreadable')})"
        if got.tail is not None or got.index.damaged or got.last_seq != info.last_seq:
            return "does not verify frame by frame"
        return None

    # -- the thread ----------------------------------------------------------------

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="auditlog-archive", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self.wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        backoff = 1.0
        while not self._stop.is_set():
            try:
                self.run_once()
                self.last_error = None
                backoff = 1.0
                wait = self.settings.interval
            except (StoreError, ConfigError, OSError) as e:
                self.errors += 1
                self.last_error = str(e)
                log.warning("archive: %s", e)
                wait = min(backoff, self.settings.interval)
                backoff = min(backoff * 2, 300.0)
            except Exception as e:  # pragma: no cover - the thread must go on
                self.errors += 1
                self.last_error = f"{type(e).__name__}: {e}"
                log.exception("archive pass failed")
                wait = self.settings.interval
            self.wake.wait(wait)
            self.wake.clear()

    def status(self) -> dict:
        lag = None
        if self.oldest_pending_ts is not None:
            lag = max(0.0, (self.now() - self.oldest_pending_ts) / 1e6)
        return {
            "url": self.settings.url,
            "object_lock": self.settings.object_lock,
            "retention_days": "forever" if self.settings.retention_days is None else self.settings.retention_days,
            "archived_segments": len(self.manifest),
            "pending_segments": self.pending,
            "lag_seconds": lag,
            "errors": self.errors,
            "last_error": self.last_error,
            "last_success": self.last_success,
        }

    def archived(self, info: SegmentInfo) -> dict | None:
        return self.manifest.archived(info)


class ArchiveReads:
    """What reads take from the archive (``engine.archived.ArchivedSegments``): the
    verified copies the manifest records, fetched into ``<data-dir>/archive-cache/`` at
    their recorded versions, checked against their recorded SHA-256, and let go
    least recently used first beyond ``cache_mb`` (thread-safe)."""

    def __init__(self, store: S3Store, manifest: Manifest, data_dir: DataDir, node: str, budget_bytes: int):
        self.store = store
        self.manifest = manifest
        self.node = node
        self.dir = data_dir.root / "archive-cache"
        self.budget = budget_bytes
        self._lock = threading.Lock()
        self.fetches = 0
        self._refs: tuple[tuple, list[ArchivedRef]] = ((), [])

    def refs(self) -> list[ArchivedRef]:
        rows = self.manifest.all()
        if rows is not self._refs[0]:  # made again only when the record changed
            self._refs = (rows, [ArchivedRef(a.name, a.first_seq, a.last_seq, a.min_ts, a.max_ts) for a in rows])
        return self._refs[1]

    def owns(self, path: Path) -> bool:
        return path.parent == self.dir

    def fetch(self, name: str) -> Path:
        a = self.manifest.get(name)
        if a is None:
            raise ArchiveUnavailable(f"{name} is not recorded as archived")
        path = self.dir / name
        with self._lock:
            try:
                if path.stat().st_size == a.size:
                    os.utime(path)  # most recently used
                    return path
            except FileNotFoundError:
                pass
            self.dir.mkdir(mode=0o700, exist_ok=True)
            tmp = path.with_name(name + ".part")
            try:
                self.store.download(object_name(self.node, name), a.version_id, tmp)
                got = sha256_file(tmp)
                if got != a.sha256:
                    raise ArchiveUnavailable(
                        f"{a.key} version {a.version_id} is not the copy that was archived (SHA-256 {got[:16]}...)"
                    )
                os.replace(tmp, path)
                self._fetch_index(name)
            except StoreError as e:
                raise ArchiveUnavailable(str(e)) from None
            finally:
                try:
                    os.unlink(tmp)
                except FileNotFoundError:
                    pass
            self.fetches += 1
            self._trim(keep=path)
            return path

    def _fetch_index(self, name: str) -> None:
        """The segment's archived ``.idx`` into the cache, if there is one (the catalogue
        takes it only if it holds for the file)."""
        dest = index_path(self.dir / name)
        tmp = dest.with_name(dest.name + ".part")
        try:
            self.store.download(index_object(self.node, name), None, tmp)
            os.replace(tmp, dest)
        except (StoreError, OSError):
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass

    def _trim(self, keep: Path) -> None:
        files = []
        for p in self.dir.iterdir():
            try:
                st = p.stat()
            except FileNotFoundError:
                continue
            files.append((st.st_mtime_ns, st.st_size, p))
        total = sum(f[1] for f in files)
        for _, size, p in sorted(files):
            if total <= self.budget:
                break
            if p.name.split(".", 1)[0] == keep.name.split(".", 1)[0]:
                continue  # the segment just fetched and its index
            try:
                os.unlink(p)
                total -= size
            except FileNotFoundError:
                pass


def attach_reads(
    reader: NodeLog,
    settings: ArchiveSettings,
    *,
    data_dir: DataDir,
    seal: StateSeal,
    rejected: Callable[[str, str], None],
    store: S3Store | None = None,
    manifest: Manifest | None = None,
) -> ArchiveReads:
    """Let ``reader``'s reads reach into the archive (``NodeLog.archive``)."""
    reads = ArchiveReads(
        store if store is not None else settings.store(),
        manifest if manifest is not None else Manifest(seal, data_dir.state, settings.url, rejected),
        data_dir,
        reader.node,
        settings.cache_mb << 20,
    )
    reader.archive = reads
    return reads
