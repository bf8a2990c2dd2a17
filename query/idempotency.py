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

log = logging.getLogger("auditlog.idempotency")


class IdempotencyCache:
    """Recently seen Idempotency-Key values -> the response they got (bounded LRU),
    persisted so that a batch retried across a server restart is not appended twice.

    In memory: an ``OrderedDict`` of the last ``size`` keys (least recently used
    dropped first).  On disk (``path``, normally ``<data-dir>/state/idempotency.jsonl``,
    mode 0600): one JSON line ``{"k": key, "v": response}`` appended per ``put``,
    written with one ``write`` and made durable (``fdatasync``) before ``put``
    returns, i.e. before the client is sent its 201.  At startup the file is read
    back keeping the last ``size`` keys (a torn or garbled line is skipped); once the
    file holds more than ``2 * size`` lines it is compacted: the live entries are
    written to a temp file, fsynced and renamed over it (then the directory is
    fsynced), so a crash leaves either the old or the new file, never a mix.

    The file is only opened for writing on the first ``put`` (a second process
    that reads it in ``__init__`` and then fails to get the writer lock never
    touches it).  A failure to persist never fails the request -- the batch *is*
    in the log and the client must hear so -- it is logged, the entry is kept in
    memory, and the next ``put`` rewrites the whole file.

    Window that remains (documented, not closed here): the key is recorded
    *after* the log's commit.  If the process dies (or the machine loses power)
    between the log's fsync of a batch and the fsync of its line here, and the
    client, which never saw the 201, retries the batch with the same key after the
    restart, that batch is appended a second time.  The window is the time from the
    writer thread's return to this ``put`` on the event loop (microseconds to a few
    milliseconds) and needs a crash inside it *and* a lost response.  Closing it
    cleanly needs the key to become durable in the same commit as the entries,
    which this class cannot do from outside the writer: the route would pass the
    scoped key to ``LogWriter.append_batch``, the writer would append
    ``key -> (first_seq, last_seq)`` to this file before the frame's fdatasync, and
    on startup, after the writer's recovery, records claiming seqs beyond the
    recovered head would be dropped.  (A record written ahead of a commit that
    then fails must also be removed on that error path: the failed batch's seqs
    are reused by the next batch.)

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

    def put(self, key: str, value: dict) -> None:
        with self._lock:
            self._d[key] = value
            self._d.move_to_end(key)
            while len(self._d) > self.size:
                self._d.popitem(last=False)
            if self.path is None:
                return
            try:
                if self._rewrite or self._lines + 1 > 2 * max(self.size, 1):
                    self._compact()
                else:
                    self._append(self._line(key, value))
            except OSError as e:
                # The batch is durable in the log; failing the request now would make the
                # client retry it.  Keep the key in memory and rewrite the file next time.
                log.error("could not persist idempotency key to %s (%s); kept in memory only "
                          "until the next successful write", self.path, e.strerror or e)
                self._rewrite = True
                self._close_fd()

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
        from engine.datadir import fsync_dir
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        data = b"".join(self._line(k, v) for k, v in self._d.items())
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            view = memoryview(data)
            while view:
                n = os.write(fd, view)
                view = view[n:]
            if self._fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
        self._close_fd()
        os.replace(tmp, self.path)
        if self._fsync:
            fsync_dir(self.path.parent)
        self._lines = len(self._d)
        self._rewrite = False
