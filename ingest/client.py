"""A Python client for the gateway's subsystems: ``AuditClient``.

Synchronous, thread-safe, standard library only on the wire (``http.client``,
``threading``), so a subsystem needs nothing beyond this package::

    from auditlog.ingest.client import AuditClient

    with AuditClient("http://127.0.0.1:8080", api_key, on_unavailable="raise") as audit:
        audit.log("alice", "quarantine.release", target="msg-1234", ip="192.0.2.10",
                  details={"recipient": "bob@example.com"})
    # leaving the block flushed everything queued and stopped the sender thread

How it works
------------
``log()`` validates the event locally (``ingest.event.validate_event``: a bad
event raises ``InvalidEventError`` at once, in the caller's thread) and puts it
on a bounded in-memory queue.  One background thread sends the queue in
batches (JSON, up to ``batch_size`` events, or whatever is queued once the
oldest event has waited ``flush_interval`` seconds) to ``POST /api/v1/events``.

Every batch gets a fresh ``Idempotency-Key`` (a uuid4) that stays the same on
every retry of that batch, and every retry sends the very same body bytes: the
server binds a key to its request (body SHA-256 and Content-Type family) and
answers 422 to the same key with another body.  Retries, with exponential backoff and jitter, happen
on connection errors, timeouts, 408/425/429/502/503/504 (``Retry-After`` is
honoured) and 500.  Any other 4xx (or a 500 that persists past the retry budget)
means the server will never take the batch: it is *rejected*, kept in
``client.rejected`` and raised (``BatchRejectedError``) from the next ``log()``,
``flush()`` or ``close()``.  A 413 splits the batch in two and sends each half.

``flush(timeout)`` returns once every event queued before the call is
acknowledged by the server -- the server answers only after its fsync, so
acknowledged means durable -- or raises.  ``close()`` flushes, then stops the
thread.  ``append_now(events)`` sends one batch synchronously from the caller's
thread (same retry rules, bounded by the retry budget) and returns the server's
``{"appended", "first_id", "last_id"}``: for callers that must not proceed
before their entry is durable.  It bypasses the queue, so it is not ordered with
events passed to ``log()``.

Delivery guarantee
------------------
*At least once* from the client: an accepted event (``log()`` returned) stays in
memory until the server acknowledged it; it is never dropped because the server
is down, only if the process dies or ``close()`` gives up after its timeout
(it then raises, saying how many events were not delivered).

*Exactly once* in the log: a batch whose response was lost (connection dropped,
timeout, server restarted after the commit) is retried with the same key and the
server replays its first answer instead of appending again.  This holds within
the server's idempotency window: the key must still be among the node's last
``idempotency_entries`` (10 000) keys, which survive restarts and crashes: the
server makes a batch's key durable in the same commit as its entries (see
``ingest.idempotency.IdempotencyCache``).  Retries happen within seconds to
minutes, far inside that window unless thousands of batches arrive in between.

Raise or buffer: ``on_unavailable``
-----------------------------------
What should a subsystem do when the log cannot take its events?  There is no
right answer for everyone, so the choice is explicit:

``"raise"`` (default: fail closed, for actions that must not happen without an
audit trail).  ``log()`` raises ``LogUnavailableError`` *immediately* when the
queue is full, or when the log is unavailable: the batch being sent has failed
for longer than ``retry_deadline`` seconds (or more than ``max_retries``
attempts).  The caller can then refuse the action it was about to audit.
Events accepted earlier are still retried in the background and delivered when
the server is back; the unavailable state ends with the first success.

``"buffer"`` (fail open, for high-volume events where availability matters
more).  Outages do not affect ``log()`` until ``max_queue`` events are waiting;
then ``log()`` blocks until there is room, at most ``block_timeout`` seconds,
and raises ``LogUnavailableError`` after that.  The queue is only in memory:
buffered events are lost if the process dies.

In both modes the client never throws away an event it accepted.
"""

from __future__ import annotations

import atexit
import functools
import http.client
import json
import logging
import random
import socket
import ssl
import threading
import time
import uuid
import weakref
from collections import deque
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from urllib.parse import unquote, urlsplit

from auditlog.ingest.errors import InvalidEventError
from auditlog.ingest.event import validate_batch, validate_event

__all__ = [
    "AuditClient",
    "AuditClientError",
    "LogUnavailableError",
    "BatchRejectedError",
    "ClientClosedError",
    "RejectedBatch",
    "InvalidEventError",
]

log = logging.getLogger("auditlog.client")

EVENTS_PATH = "/api/v1/events"
ON_UNAVAILABLE = ("raise", "buffer")
#: statuses that mean "not now": retried until the server takes the batch
TRANSIENT_STATUSES = frozenset({408, 425, 429, 502, 503, 504})
#: a Retry-After longer than this is capped (a misconfigured proxy must not stall us for hours)
MAX_RETRY_AFTER = 60.0
USER_AGENT = "auditlog-client/0.1"


# --------------------------------------------------------------------------- errors


class AuditClientError(Exception):
    """Base of the client's own errors (local validation raises ``InvalidEventError``)."""


class LogUnavailableError(AuditClientError):
    """The log cannot take (or has not acknowledged) events in time."""


class ClientClosedError(AuditClientError):
    """The client was closed."""


@dataclass
class RejectedBatch:
    """A batch the server refused for good (4xx other than 408/425/429, or a persistent 500)."""

    status: int
    message: str
    events: list[dict]
    idempotency_key: str
    problems: list[dict] = field(default_factory=list)
    #: an earlier attempt got no answer (connection lost, timeout, 500), so the server
    #: may have committed the batch before refusing a retry (e.g. its key was revoked
    #: in between): check the log before sending these events again
    maybe_appended: bool = False


class BatchRejectedError(AuditClientError):
    """The server refused a batch; nothing of it was written."""

    def __init__(self, batch: RejectedBatch, more: int = 0):
        self.batch = batch
        self.status = batch.status
        self.problems = batch.problems
        extra = f" (and {more} more rejected batch(es), see client.rejected)" if more else ""
        super().__init__(
            f"server rejected a batch of {len(batch.events)} event(s) with HTTP {batch.status}: {batch.message}{extra}"
        )


# --------------------------------------------------------------------------- transport


class _UnixHTTPConnection(http.client.HTTPConnection):
    """HTTP over a Unix socket (``auditlog serve --unix-socket``)."""

    def __init__(self, socket_path: str, timeout: float):
        super().__init__("localhost", timeout=timeout)
        self.socket_path = socket_path

    def connect(self) -> None:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.settimeout(self.timeout)
            s.connect(self.socket_path)
        except BaseException:
            s.close()
            raise
        self.sock = s


@dataclass
class _Outcome:
    kind: str  # "ok", "rejected", "too_large", "unavailable", "aborted"
    body: dict | None = None
    status: int = 0
    message: str = ""
    problems: list = field(default_factory=list)
    uncertain: bool = False  # an earlier attempt may have reached the server


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return min(float(value), MAX_RETRY_AFTER)
    try:
        dt = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, min(dt.timestamp() - time.time(), MAX_RETRY_AFTER))


def _encode(event: dict) -> bytes:
    return json.dumps(event, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode("utf-8")


def _close_at_exit(ref) -> None:
    client = ref()
    if client is not None:
        try:
            client.close(timeout=client.exit_timeout)
        except Exception as e:
            log.error("audit client: at interpreter exit: %s", e)


# --------------------------------------------------------------------------- the client


class AuditClient:
    """Batching, retrying, thread-safe client of ``POST /api/v1/events``.

    :param base_url: ``http://host:port``, ``https://host:port`` (a path prefix
        is kept, for a reverse proxy) or ``unix:///path/to/socket``.
    :param api_key: a ``writer`` key.
    :param batch_size: events per request at most (the server takes up to 10 000).
    :param flush_interval: seconds the oldest queued event waits for a fuller batch.
    :param max_queue: events accepted but not yet acknowledged, at most.
    :param on_unavailable: ``"raise"`` or ``"buffer"``, see the module docstring.
    :param block_timeout: ``"buffer"`` mode: how long ``log()`` waits for room.
    :param max_retries: failed attempts of one batch before the log counts as
        unavailable (``None``: no limit by count).
    :param retry_deadline: seconds a batch may keep failing before the log counts as
        unavailable (``None``: no limit by time).  ``append_now`` gives up after
        this budget; the background sender never gives up on a transient error.
    :param backoff_initial, backoff_max: exponential backoff bounds (seconds);
        each delay is drawn from [d/2, d] (jitter).
    :param timeout: socket timeout of one request (connect, send, answer).
    :param ssl_context: for ``https``; default: the system's trust store.
    :param max_batch_bytes: a batch is also cut at this JSON size (server limit 16 MiB).
    :param exit_timeout: at interpreter exit an unclosed client flushes for this long.
    """

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        batch_size: int = 500,
        flush_interval: float = 0.5,
        max_queue: int = 100_000,
        on_unavailable: str = "raise",
        block_timeout: float = 30.0,
        max_retries: int | None = None,
        retry_deadline: float | None = 10.0,
        backoff_initial: float = 0.05,
        backoff_max: float = 5.0,
        timeout: float = 10.0,
        ssl_context: ssl.SSLContext | None = None,
        max_batch_bytes: int = 8 * 1024 * 1024,
        exit_timeout: float = 5.0,
    ):
        if on_unavailable not in ON_UNAVAILABLE:
            raise ValueError(f"on_unavailable must be 'raise' or 'buffer', got {on_unavailable!r}")
        if not 1 <= batch_size <= 10_000:
            raise ValueError("batch_size must be from 1 to 10000")
        if max_queue < batch_size:
            raise ValueError("max_queue must be at least batch_size")
        if flush_interval < 0 or timeout <= 0 or backoff_initial <= 0 or backoff_max < backoff_initial:
            raise ValueError("flush_interval, timeout and backoff bounds must be positive")
        if not isinstance(api_key, str) or not api_key or any(c in api_key for c in "\r\n"):
            raise ValueError("api_key must be a non-empty string")
        self.base_url = base_url
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.max_queue = max_queue
        self.on_unavailable = on_unavailable
        self.block_timeout = block_timeout
        self.max_retries = max_retries
        self.retry_deadline = retry_deadline
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.timeout = timeout
        self.max_batch_bytes = max_batch_bytes
        self.exit_timeout = exit_timeout
        self._connect = self._connector(base_url, timeout, ssl_context)
        self._headers = {
            "Authorization": f"Bearer {api_key}",
            "Content-Type": "application/json",
            "Accept": "application/json",
            "User-Agent": USER_AGENT,
        }
        self._rng = random.Random()

        self._cv = threading.Condition(threading.Lock())
        self._queue: deque[tuple[float, bytes]] = deque()
        self._accepted = 0  # events ever accepted by log()
        self._done = 0  # of those, acknowledged or rejected (FIFO: one sender)
        self._flush_upto = 0  # send without waiting for a full batch up to here
        self._error: BatchRejectedError | None = None  # to raise on the next call
        self._fatal: BaseException | None = None  # the sender thread crashed
        self._unavailable: str | None = None  # why the log counts as unavailable
        self._closing = False
        self._closed = False
        self._abort = threading.Event()
        self._conn: http.client.HTTPConnection | None = None  # the sender's keep-alive connection
        #: batches the server refused for good (newest last)
        self.rejected: list[RejectedBatch] = []
        #: counters, for monitoring and tests
        self.stats = {"acknowledged": 0, "batches": 0, "requests": 0, "retries": 0, "replays": 0, "rejected": 0}

        self._thread = threading.Thread(target=self._run, name="auditlog-client-sender", daemon=True)
        self._thread.start()
        self._atexit = functools.partial(_close_at_exit, weakref.ref(self))
        atexit.register(self._atexit)

    # -- public API ---------------------------------------------------------------

    def log(self, user: str, action: str, **fields) -> None:
        """Validate one event and queue it (``target``, ``domain``, ``ip``,
        ``user_agent``, ``success``, ``details`` as keyword arguments).

        Raises ``InvalidEventError`` for a bad event, ``BatchRejectedError`` if an
        earlier batch was rejected since the last call that raised it,
        ``LogUnavailableError`` per ``on_unavailable`` and ``ClientClosedError``
        after ``close()``.  When it raises, this event was not queued.
        """
        self.log_event({"user": user, "action": action, **fields})

    def log_event(self, event: dict) -> None:
        """``log()`` for an event already built as a dict (not modified, not kept)."""
        self._check_state()
        validate_event(event)
        payload = _encode(event)  # a snapshot: later changes to the caller's dict do not leak in
        now = time.monotonic()
        with self._cv:
            self._check_state_locked()
            if self.on_unavailable == "raise":
                if self._unavailable is not None:
                    raise LogUnavailableError(
                        f"the audit log is unavailable ({self._unavailable}); {self._pending()} event(s) waiting"
                    )
                if self._pending() >= self.max_queue:
                    raise LogUnavailableError(
                        f"queue full: {self._pending()} event(s) not yet acknowledged by the audit log"
                    )
            elif self._pending() >= self.max_queue:
                deadline = now + self.block_timeout
                while self._pending() >= self.max_queue:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        why = f" ({self._unavailable})" if self._unavailable else ""
                        raise LogUnavailableError(
                            f"queue full for {self.block_timeout:g}s: {self._pending()} event(s) "
                            f"not yet acknowledged by the audit log{why}"
                        )
                    self._cv.wait(remaining)
                    self._check_state_locked()
            self._queue.append((now, payload))
            self._accepted += 1
            if len(self._queue) == 1 or len(self._queue) >= self.batch_size:
                self._cv.notify_all()

    def flush(self, timeout: float | None = 30.0) -> None:
        """Wait until every event queued before this call is acknowledged (durable).

        Raises ``LogUnavailableError`` after ``timeout`` seconds (``None``: wait
        for ever) and ``BatchRejectedError`` if a batch was rejected.
        """
        with self._cv:
            if self._closed:
                raise ClientClosedError("the audit client is closed")
            target = self._accepted
        self._wait_done(target, timeout)

    def close(self, timeout: float | None = 30.0) -> None:
        """Flush (up to ``timeout``), then stop the sender thread.

        If not everything could be delivered in time the thread is stopped anyway
        and ``LogUnavailableError`` says how many events were not; a rejection is
        raised as ``BatchRejectedError``.  Closing twice is a no-op.
        """
        with self._cv:
            if self._closing:
                return
            self._closing = True
            target = self._accepted
            self._cv.notify_all()
        atexit.unregister(self._atexit)
        try:
            self._wait_done(target, timeout, closing=True)
        finally:
            self._abort.set()
            with self._cv:
                self._closed = True
                self._cv.notify_all()
            self._thread.join(self.timeout + 1.0)
            self._drop_conn()

    def append_now(self, events: list[dict], timeout: float | None = None) -> dict:
        """Send one batch now, from this thread; return the server's answer once durable.

        The batch is validated locally as a whole (``InvalidEventError`` naming each
        bad event, ``BatchTooLargeError`` above 10 000 events).  Retries like the
        background sender, for at most ``retry_deadline``/``max_retries`` (or
        ``timeout`` seconds if given), then raises ``LogUnavailableError``.  A refusal
        raises ``BatchRejectedError`` (not added to ``rejected``).
        """
        if self._closed:
            raise ClientClosedError("the audit client is closed")
        validate_batch(list(events))
        payloads = [_encode(e) for e in events]
        key = uuid.uuid4().hex
        holder: list = [None]
        try:
            out = self._deliver(
                self._body(payloads),
                key,
                holder,
                background=False,
                deadline=None if timeout is None else time.monotonic() + timeout,
            )
        finally:
            if holder[0] is not None:
                holder[0].close()
        if out.kind == "ok":
            return out.body
        if out.kind in ("rejected", "too_large"):
            raise BatchRejectedError(
                RejectedBatch(out.status, out.message, list(events), key, out.problems, out.uncertain)
            )
        raise LogUnavailableError(f"the audit log did not take the batch: {out.message}")

    @property
    def pending(self) -> int:
        """Events accepted by ``log()`` and not yet acknowledged or rejected."""
        with self._cv:
            return self._pending()

    @property
    def unavailable(self) -> str | None:
        """Why the log currently counts as unavailable (``None`` when it does not)."""
        return self._unavailable

    def __enter__(self) -> AuditClient:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
            return
        try:  # do not hide the exception that is already on its way
            self.close()
        except AuditClientError as e:
            log.error("audit client: while closing after %s: %s", exc_type.__name__, e)

    # -- caller side helpers ---------------------------------------------------------

    def _pending(self) -> int:
        return self._accepted - self._done

    def _check_state(self) -> None:
        if self._closing or self._error is not None or self._fatal is not None:
            with self._cv:
                self._check_state_locked()

    def _check_state_locked(self) -> None:
        if self._closing:
            raise ClientClosedError("the audit client is closed")
        if self._fatal is not None:
            raise LogUnavailableError(f"the audit client's sender failed: {self._fatal!r}")
        if self._error is not None:
            err, self._error = self._error, None
            raise err

    def _wait_done(self, target: int, timeout: float | None, closing: bool = False) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cv:
            if target > self._flush_upto:
                self._flush_upto = target
                self._cv.notify_all()
            while self._done < target:
                if self._fatal is not None:
                    raise LogUnavailableError(f"the audit client's sender failed: {self._fatal!r}")
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    why = f" ({self._unavailable})" if self._unavailable else ""
                    what = "not delivered, the client is closed" if closing else "not yet acknowledged"
                    raise LogUnavailableError(
                        f"{'close' if closing else 'flush'} timed out after {timeout:g}s: "
                        f"{target - self._done} event(s) {what}{why}"
                    )
                self._cv.wait(remaining)
            if self._error is not None:
                err, self._error = self._error, None
                raise err

    # -- the sender thread -------------------------------------------------------------

    def _run(self) -> None:
        try:
            while True:
                batch = self._next_batch()
                if batch is None:
                    return
                self._send_batch(batch)
        except BaseException as e:  # pragma: no cover - a bug: make callers see it
            log.exception("audit client sender thread failed")
            with self._cv:
                self._fatal = e
                self._cv.notify_all()
        finally:
            self._drop_conn()

    def _next_batch(self) -> list[bytes] | None:
        """Wait for a batch worth sending (full, old enough, flushed or closing); take it."""
        with self._cv:
            while True:
                if self._abort.is_set():
                    return None
                q = self._queue
                if q:
                    if len(q) >= self.batch_size or self._closing or self._done < self._flush_upto:
                        break
                    wait = q[0][0] + self.flush_interval - time.monotonic()
                    if wait <= 0:
                        break
                    self._cv.wait(wait)
                elif self._closing:
                    return None
                else:
                    self._cv.wait()
            out: list[bytes] = []
            size = 2
            while q and len(out) < self.batch_size:
                n = len(q[0][1]) + 1
                if out and size + n > self.max_batch_bytes:
                    break
                out.append(q.popleft()[1])
                size += n
            return out

    def _send_batch(self, payloads: list[bytes]) -> None:
        key = uuid.uuid4().hex
        holder = [self._conn]
        try:
            out = self._deliver(self._body(payloads), key, holder, background=True)
        finally:
            self._conn = holder[0]
        if out.kind == "aborted":
            return
        if out.kind == "too_large" and len(payloads) > 1 and not out.uncertain:
            # nothing of this batch was written: send the halves, each with its own key
            half = len(payloads) // 2
            self._send_batch(payloads[:half])
            self._send_batch(payloads[half:])
            return
        with self._cv:
            self._done += len(payloads)
            if out.kind == "ok":
                self.stats["acknowledged"] += len(payloads)
                self.stats["batches"] += 1
            else:
                rb = RejectedBatch(
                    out.status, out.message, [json.loads(p) for p in payloads], key, out.problems, out.uncertain
                )
                self.rejected.append(rb)
                self.stats["rejected"] += 1
                log.error(
                    "audit client: batch of %d event(s) rejected: HTTP %d %s", len(payloads), out.status, out.message
                )
                if self._error is None:
                    self._error = BatchRejectedError(rb)
            self._cv.notify_all()

    # -- one batch, with retries ---------------------------------------------------------

    @staticmethod
    def _body(payloads: list[bytes]) -> bytes:
        return b"[" + b",".join(payloads) + b"]"

    def _deliver(
        self, body: bytes, key: str, holder: list, *, background: bool, deadline: float | None = None
    ) -> _Outcome:
        """POST one batch until it is acknowledged, refused, or (not background) out of budget.

        ``holder[0]`` is the connection to use (replaced when it breaks).
        """
        headers = dict(self._headers, **{"Idempotency-Key": key})
        attempts = 0
        first_failure: float | None = None
        first_500: float | None = None
        errors_500 = 0
        uncertain = False
        while True:
            if background and self._abort.is_set():
                return _Outcome("aborted")
            status, resp_headers, data, error = self._post(body, headers, holder)
            if status is not None and 200 <= status < 300:
                try:
                    answer = json.loads(data)
                except ValueError:
                    answer = {}
                with self._cv:
                    self.stats["requests"] += 1
                    if resp_headers.get("Idempotent-Replay", "").lower() == "true":
                        self.stats["replays"] += 1
                    if background and self._unavailable is not None:
                        log.warning("audit client: the audit log is available again")
                        self._unavailable = None
                        self._cv.notify_all()
                return _Outcome("ok", body=answer, status=status)
            message, problems = error or "", []
            if status is not None:
                message, problems = self._error_text(status, data)
            with self._cv:
                self.stats["requests"] += 1
            if status is not None and status not in TRANSIENT_STATUSES and status != 500:
                kind = "too_large" if status == 413 else "rejected"
                return _Outcome(kind, status=status, message=message, problems=problems, uncertain=uncertain)
            # transient: connection error, timeout, 5xx, 408/425/429
            if status is None or status == 500 or status == 504:
                uncertain = True  # the server may have seen (and committed) this attempt
            attempts += 1
            now = time.monotonic()
            if first_failure is None:
                first_failure = now
            reason = f"HTTP {status}: {message}" if status is not None else message
            exhausted = (self.max_retries is not None and attempts > self.max_retries) or (
                self.retry_deadline is not None and now - first_failure >= self.retry_deadline
            )
            if deadline is not None:
                exhausted = now >= deadline
            if status == 500:
                # not an outage: the server fails on this batch.  Retried (safe with the key)
                # for the same budget, counted from the first 500, then rejected.
                errors_500 += 1
                if first_500 is None:
                    first_500 = now
                if (
                    (self.max_retries is not None and errors_500 > self.max_retries)
                    or (self.retry_deadline is not None and now - first_500 >= self.retry_deadline)
                    or (deadline is not None and now >= deadline)
                ):
                    return _Outcome("rejected", status=status, message=message, problems=problems, uncertain=uncertain)
            elif exhausted:
                if not background:
                    return _Outcome("unavailable", message=reason)
                with self._cv:
                    if self._unavailable is None:
                        log.warning("audit client: the audit log is unavailable (%s); still retrying", reason)
                    self._unavailable = reason
                    self._cv.notify_all()
            with self._cv:
                self.stats["retries"] += 1
            delay = min(self.backoff_max, self.backoff_initial * (2 ** min(attempts - 1, 30)))
            delay = self._rng.uniform(delay / 2, delay)
            ra = _retry_after(resp_headers.get("Retry-After")) if status is not None else None
            if ra is not None:
                delay = max(delay, ra + self._rng.uniform(0, min(1.0, self.backoff_initial * 4)))
            if deadline is not None:
                delay = max(0.0, min(delay, deadline - now))
            if background:
                if self._abort.wait(delay):
                    return _Outcome("aborted")
            else:
                time.sleep(delay)

    def _post(self, body: bytes, headers: dict, holder: list):
        """One attempt: (status, headers, body, None) or (None, {}, b"", error text)."""
        conn = holder[0]
        try:
            if conn is None:
                conn = holder[0] = self._connect()
            conn.request("POST", self._path, body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
            if resp.will_close:
                conn.close()
                holder[0] = None
            return resp.status, resp.headers, data, None
        except (OSError, http.client.HTTPException) as e:
            if conn is not None:
                conn.close()
            holder[0] = None
            return None, {}, b"", f"{type(e).__name__}: {e}" if str(e) else type(e).__name__

    @staticmethod
    def _error_text(status: int, data: bytes) -> tuple[str, list]:
        try:
            err = json.loads(data)["error"]
            return str(err.get("message", ""))[:500], list(err.get("problems") or [])
        except (ValueError, KeyError, TypeError, AttributeError):
            return (data[:200].decode("utf-8", "replace") or http.client.responses.get(status, "")), []

    def _drop_conn(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def _connector(self, base_url: str, timeout: float, ssl_context):
        u = urlsplit(base_url)
        if u.scheme == "unix":
            path = unquote(u.path)
            if not path:
                raise ValueError("unix base_url must be unix:///path/to/socket")
            self._path = EVENTS_PATH
            return lambda: _UnixHTTPConnection(path, timeout)
        if u.scheme not in ("http", "https") or not u.hostname:
            raise ValueError(
                f"base_url must be http://host:port, https://host:port or unix:///socket, got {base_url!r}"
            )
        self._path = u.path.rstrip("/") + EVENTS_PATH
        host, port = u.hostname, u.port
        if u.scheme == "https":
            ctx = ssl_context or ssl.create_default_context()
            return lambda: http.client.HTTPSConnection(host, port, timeout=timeout, context=ctx)
        return lambda: http.client.HTTPConnection(host, port, timeout=timeout)
