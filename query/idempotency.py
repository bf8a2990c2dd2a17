"""Idempotency keys of ingest batches: remembered (bounded) and persisted.

A batch retried with the same ``Idempotency-Key`` (scoped to the API key that
sent it) gets the first answer back instead of being appended twice.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections import OrderedDict
from pathlib import Path

from engine.datadir import write_atomic

log = logging.getLogger("auditlog.idempotency")


def _last_seq(answer: dict) -> int | None:
    """The last seq an append answer names (``"last_id": "node:seq"``)."""
    try:
        return int(str(answer["last_id"]).rpartition(":")[2])
    except (KeyError, ValueError):
        return None


class IdempotencyCache:
    """Recently seen Idempotency-Key values -> the response they got (bounded LRU),
    persisted so that a batch retried across a server restart is not appended twice.

    In memory: an ``OrderedDict`` of the last ``size`` keys (least recently used
    dropped first).  On disk (``path``, normally ``<data-dir>/state/idempotency.jsonl``,
    mode 0600): one JSON line ``{"k": key, "v": response}`` per key, appended by
    ``put_many`` with one ``write`` and made durable (``fdatasync``) before it
    returns, i.e. before the batch's entries are written.  At startup the file is read
    back keeping the last ``size`` keys (a torn or garbled line is skipped); once the
    file holds more than ``2 * size`` lines it is compacted: the live entries are
    written to a temp file, fsynced and renamed over it (then the directory is
    fsynced), so a crash leaves either the old or the new file, never a mix.

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

    def __init__(self, size: int, path: Path | None = None, *, fsync: bool = True):
        self.size = size
        self.path = Path(path) if path is not None else None
        self._fsync = fsync
        self._d: OrderedDict[str, dict] = OrderedDict()
        self._lock = threading.Lock()
        self._fd: int | None = None
        #: lines in the file (live or superseded); compaction past 2 * size
        self._lines = 0
        #: the file must be rewritten from memory before the next append
        self._rewrite = False
        if self.path is not None:
            self._load()

    # -- public API ---------------------------------------------------------------

    def get(self, key: str) -> dict | None:
        with self._lock:
            v = self._d.get(key)
            if v is not None:
                self._d.move_to_end(key)
            return v

    def put_many(self, items: list[tuple[str, dict]]) -> None:
        """Record several keys with one write and one sync; raises ``OSError`` if
        they could not be made durable (then none of them is kept)."""
        with self._lock:
            for key, value in items:
                self._d[key] = value
                self._d.move_to_end(key)
            while len(self._d) > self.size:
                self._d.popitem(last=False)
            if self.path is None:
                return
            try:
                if self._rewrite or self._lines + len(items) > 2 * max(self.size, 1):
                    self._compact()
                else:
                    self._append(b"".join(self._line(k, v) for k, v in items))
                    self._lines += len(items) - 1
            except OSError:
                for key, _ in items:
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
                log.error("could not rewrite %s without keys of a failed commit (%s); "
                          "retrying on the next write", self.path, e.strerror or e)
                self._rewrite = True
                self._close_fd()

    def prune_beyond(self, head_seq: int) -> int:
        """Drop keys whose answer ends after ``head_seq`` (their batch was lost in a
        crash before it was durable); returns how many were dropped."""
        with self._lock:
            stale = [k for k, v in self._d.items() if _last_seq(v) is None or _last_seq(v) > head_seq]
            for k in stale:
                del self._d[k]
            if stale:
                log.warning("dropped %d idempotency key(s) of batches a crash kept out of the log",
                            len(stale))
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

    @staticmethod
    def _line(key: str, value: dict) -> bytes:
        return (json.dumps({"k": key, "v": value}, ensure_ascii=False, separators=(",", ":"))
                + "\n").encode("utf-8")

    def _load(self) -> None:
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return
        except OSError as e:
            log.error("cannot read %s (%s): idempotency keys of earlier runs are not honoured",
                      self.path, e.strerror or e)
            self._rewrite = True
            return
        lines = data.split(b"\n")
        if lines and lines[-1] == b"":
            lines.pop()
        elif lines:
            self._rewrite = True     # torn last line (crash mid-write): rewrite before appending
        bad = 0
        d = self._d
        for raw in lines:
            try:
                rec = json.loads(raw)
                k, v = rec["k"], rec["v"]
                if not isinstance(k, str) or not isinstance(v, dict):
                    raise ValueError("bad record")
            except (ValueError, KeyError, TypeError):
                bad += 1
                continue
            d[k] = v
            d.move_to_end(k)
        while len(d) > self.size:
            d.popitem(last=False)
        self._lines = len(lines)
        if bad:
            self._rewrite = True
            log.warning("%s: skipped %d unreadable line(s)", self.path, bad)

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
            except OSError:   # pragma: no cover
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
        """Rewrite the file with the live entries only: temp file, fsync, rename, fsync dir."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = b"".join(self._line(k, v) for k, v in self._d.items())
        write_atomic(self.path, data, sync=self._fsync, mode=0o600, sync_dir=self._fsync)
        self._close_fd()
        self._lines = len(self._d)
        self._rewrite = False
