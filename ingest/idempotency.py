"""Idempotency keys of ingest batches: bound to their request, remembered
(bounded) and persisted as sealed state.

A batch retried with the same ``Idempotency-Key`` (scoped to the API key that
sent it) and the same request gets the first answer back instead of being
appended twice.  The key is bound to the request's fingerprint (the body's
SHA-256 and the Content-Type family): the same key with another request is
refused (HTTP 422), as the IETF httpapi Idempotency-Key draft asks, so a
client that reuses a key by mistake learns of it instead of losing a batch.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from auditlog.engine.datadir import write_atomic
from auditlog.engine.state import StateSeal
from auditlog.ingest.body import JSON_TYPES, MSGPACK_TYPES
from auditlog.ingest.errors import IngestError

log = logging.getLogger("auditlog.idempotency")

#: at most this many rejected lines are logged one by one at start (then a count)
_MAX_LOGGED_PROBLEMS = 20


class IdempotencyKeyReused(IngestError):
    """The Idempotency-Key already answered a different request; nothing was written."""

    http_status = 422


def request_fingerprint(raw: bytes, content_type: str) -> str:
    """``family:sha256-hex`` of a request body; the family (``json``, ``msgpack``, or
    the media type as sent) keeps a JSON and a msgpack body apart whatever their bytes."""
    if content_type in JSON_TYPES:
        family = "json"
    elif content_type in MSGPACK_TYPES:
        family = "msgpack"
    else:
        family = content_type
    return f"{family}:{hashlib.sha256(raw).hexdigest()}"


@dataclass(frozen=True, slots=True)
class Remembered:
    """What a key was first used for: the request's fingerprint and the answer it got."""

    fingerprint: str
    answer: dict


def _last_seq(answer: dict) -> int | None:
    """The last seq an append answer names (``"last_id": "node:seq"``)."""
    try:
        return int(str(answer["last_id"]).rpartition(":")[2])
    except (KeyError, ValueError):
        return None


class IdempotencyCache:
    """Recently seen Idempotency-Key values -> the request they came with and the
    response it got (bounded LRU), persisted so that a batch retried across a
    server restart is not appended twice.

    In memory: an ``OrderedDict`` of the last ``size`` keys (least recently used
    dropped first), each with its :class:`Remembered` record.  On disk (``path``,
    normally ``<data-dir>/state/idempotency.jsonl``, mode 0600): one sealed line
    per key (``engine.state``, name ``idempotency``; the record is
    ``{"k": key, "fp": fingerprint, "v": response}``), appended by ``put_many``
    with one ``write`` and made durable (``fdatasync``) before it returns, i.e.
    before the batch's entries are written.  At startup the file is read back
    keeping the last ``size`` keys.  A line whose seal does not open (written by
    hand, edited, or another node's) grants nothing: it is ignored, logged as a
    warning naming the file and line, and counted in :attr:`rejected` (the
    service exports it as ``auditlog_state_rejected_total``).  A last line
    without its newline is a write a crash cut short, not tampering: it is
    dropped and the file rewritten before the next append.  Once the file holds
    more than ``2 * size`` lines it is compacted: the live records are written
    (sealed) to a temp file, fsynced and renamed over it (then the directory is
    fsynced), so a crash leaves either the old or the new file, never a mix.

    A seal proves the node wrote a line, not that the line is the newest: a file
    put back to an older copy of itself only forgets keys (their retries are
    appended again) or brings back keys whose batches the log holds anyway.

    The file is only opened for writing on the first ``put_many`` (a second
    process that reads it in ``__init__`` and then fails to get the writer lock
    never touches it).  A failure to persist raises: the commit that asked fails
    and writes nothing (the client retries), the keys are dropped from memory
    and the next write rewrites the whole file.

    Ordering against the log: the service records a batch's key *inside* the
    commit that writes the batch (``LogWriter.before_commit``, via
    :meth:`put_many`), after the seqs are assigned and before any byte of the
    entries is written, so the key is durable no later than the entries.  A
    crash between the two leaves a key whose answer names seqs the log does not
    hold (recovery cut the torn commit back): :meth:`prune_beyond`, called at
    start-up with the recovered head, drops such keys, and the client's retry is
    appended.  A commit that fails after its keys were written makes the
    service call :meth:`forget`, which rewrites the file without them at once
    (the failed batch's seqs are reused by the next one).

    With ``fsync=False`` (used when the store runs with ``fsync = "none"``) lines
    are written but not fsynced: they survive a process crash, not a power loss,
    like the log itself.  With the store's ``fsync = "interval"`` the log may lose
    an acknowledged tail on power loss while this file keeps its key; a client
    retrying that batch then gets a replay for entries no longer there.  Use
    ``fsync = "always"`` (the default) where that matters.
    """

    FILE_NAME = "idempotency.jsonl"
    #: the seal's purpose (the file's stem, as ``StateSeal.read_lines`` expects)
    STATE_NAME = "idempotency"

    def __init__(self, size: int, path: Path | None = None, *, seal: StateSeal | None = None, fsync: bool = True):
        if path is not None and seal is None:
            raise ValueError("a persisted idempotency cache needs the node's StateSeal")
        self.size = size
        self.path = Path(path) if path is not None else None
        self._seal = seal
        self._fsync = fsync
        #: key -> (its record, the sealed line that holds it on disk, None until needed)
        self._d: OrderedDict[str, tuple[Remembered, bytes | None]] = OrderedDict()
        self._lock = threading.Lock()
        self._fd: int | None = None
        #: lines in the file (live, superseded or rejected); compaction past 2 * size
        self._lines = 0
        #: the file must be rewritten from memory before the next append
        self._rewrite = False
        #: lines of the file that failed their seal when it was loaded (ignored)
        self.rejected = 0
        if self.path is not None:
            self._load()

    # -- public API ---------------------------------------------------------------

    def get(self, key: str) -> Remembered | None:
        with self._lock:
            v = self._d.get(key)
            if v is None:
                return None
            self._d.move_to_end(key)
            return v[0]

    def put_many(self, items: list[tuple[str, str, dict]]) -> None:
        """Record several ``(key, fingerprint, answer)`` with one write and one sync;
        raises ``OSError`` if they could not be made durable (then none of them is kept)."""
        with self._lock:
            lines = []
            for key, fingerprint, answer in items:
                line = self._line(key, fingerprint, answer)
                lines.append(line)
                self._d[key] = (Remembered(fingerprint, answer), line)
                self._d.move_to_end(key)
            while len(self._d) > self.size:
                self._d.popitem(last=False)
            if self.path is None:
                return
            try:
                if self._rewrite or self._lines + len(items) > 2 * max(self.size, 1):
                    self._compact()
                else:
                    self._append(b"".join(lines))
                    self._lines += len(items) - 1
            except OSError:
                for key, *_ in items:
                    self._d.pop(key, None)
                self._rewrite = True
                self._close_fd()
                raise

    def forget(self, keys: list[str]) -> None:
        """Drop keys whose batch was not stored after all, from memory and from disk now."""
        with self._lock:
            for key in keys:
                self._d.pop(key, None)
            if self.path is None:
                return
            try:
                self._compact()
            except OSError as e:
                log.error(
                    "could not rewrite %s without keys of a failed commit (%s); retrying on the next write",
                    self.path,
                    e.strerror or e,
                )
                self._rewrite = True
                self._close_fd()

    def prune_beyond(self, head_seq: int) -> int:
        """Drop keys whose answer ends after ``head_seq`` (their batch was lost in a
        crash before it was durable); returns how many were dropped."""
        with self._lock:
            stale = []
            for k, (rec, _) in self._d.items():
                last = _last_seq(rec.answer)
                if last is None or last > head_seq:
                    stale.append(k)
            for k in stale:
                del self._d[k]
            if stale:
                log.warning("dropped %d idempotency key(s) of batches a crash kept out of the log", len(stale))
                if self.path is not None:
                    try:
                        self._compact()
                    except OSError as e:
                        log.error("could not rewrite %s (%s)", self.path, e.strerror or e)
                        self._rewrite = True
            return len(stale)

    def close(self) -> None:
        with self._lock:
            self._close_fd()

    def __len__(self) -> int:
        return len(self._d)

    # -- persistence ----------------------------------------------------------------

    def _line(self, key: str, fingerprint: str, answer: dict) -> bytes:
        if self._seal is None:
            return b""
        return self._seal.seal(self.STATE_NAME, {"k": key, "fp": fingerprint, "v": answer}) + b"\n"

    def _load(self) -> None:
        try:
            with open(self.path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                f.seek(max(size - 1, 0))
                torn = size > 0 and f.read(1) != b"\n"
        except FileNotFoundError:
            return
        except OSError as e:
            log.error(
                "cannot read %s (%s): idempotency keys of earlier runs are not honoured", self.path, e.strerror or e
            )
            self._rewrite = True
            return
        records, problems = self._seal.read_lines(self.path)
        # a torn last line (a crash mid-write) is not returned by read_lines and is
        # no problem; it must not have the next line appended to it, though
        self._rewrite = torn
        d = self._d
        malformed = 0
        for rec in records:
            try:
                k, fp, v = rec["k"], rec["fp"], rec["v"]
                if not (isinstance(k, str) and isinstance(fp, str) and isinstance(v, dict)):
                    raise TypeError
            except (KeyError, TypeError):
                malformed += 1  # sealed by this node, but not a record this version reads
                continue
            d[k] = (Remembered(fp, v), None)  # sealed again only if the file is rewritten
            d.move_to_end(k)
        while len(d) > self.size:
            d.popitem(last=False)
        self._lines = len(records) + len(problems)
        if malformed:
            self._rewrite = True
            log.warning("%s: skipped %d sealed record(s) of an unknown shape", self.path, malformed)
        if problems:
            # kept in the file (where `auditlog verify` sees them) until the next rewrite
            self.rejected = len(problems)
            for p in problems[:_MAX_LOGGED_PROBLEMS]:
                # p starts with the file's name: "idempotency.jsonl line 3: MAC does not match"
                log.warning("%s%s%s; ignored (it grants no idempotent replay)", self.path.parent, os.sep, p)
            if len(problems) > _MAX_LOGGED_PROBLEMS:
                log.warning(
                    "state file %s: %d more line(s) failed their seal; ignored",
                    self.path,
                    len(problems) - _MAX_LOGGED_PROBLEMS,
                )

    def _open_fd(self) -> int:
        if self._fd is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        return self._fd

    def _close_fd(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            try:
                os.close(fd)
            except OSError:  # pragma: no cover
                pass

    def _append(self, data: bytes) -> None:
        fd = self._open_fd()
        view = memoryview(data)
        while view:
            n = os.write(fd, view)
            view = view[n:]
        if self._fsync:
            os.fdatasync(fd)
        self._lines += 1

    def _compact(self) -> None:
        """Rewrite the file with the live records only: temp file, fsync, rename, fsync dir."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = b"".join(
            line if line is not None else self._line(k, rec.fingerprint, rec.answer)
            for k, (rec, line) in self._d.items()
        )
        write_atomic(self.path, data, sync=self._fsync, mode=0o600, sync_dir=self._fsync)
        self._close_fd()
        self._lines = len(self._d)
        self._rewrite = False
