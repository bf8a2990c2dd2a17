"""Syslog forwarding: RFC 5424 messages over UDP, TCP (RFC 6587 octet
counting) or TLS (RFC 5425), following the local log from a persisted cursor.

Each node forwards its own log.  The forwarder runs in its own thread, reads
through the engine's reader (it never takes the writer's lock, so it never
slows appends), and remembers in ``<data-dir>/state/syslog_cursor.json`` the
last seq it handed to the transport, sealed (engine/state.py) with the target
it was sent to.  A cursor that fails its seal (edited, forged, or the plain
file of an earlier version) is reported (a warning, an ``audit.recovery``
entry, ``cursor_rejected`` in the status and the state-rejected counter) and
forwarding starts again from the beginning of the log; a sealed cursor for
another target starts over too.  A sealed cursor replaced by an older copy of
itself only makes entries go out again.  After a receiver outage or a restart it
resends from there: delivery is at-least-once over TCP/TLS (the entry id in the
structured data lets receivers drop duplicates).  The cursor moves only past
bytes the receiver's TCP stack acknowledged, and after a lost connection the
last ``resend_bytes`` sent on it go out again, since acknowledged bytes still
in a stopped receiver's socket buffer are lost with it.  UDP has no delivery
feedback at all: it is best effort, and says so.
"""

from __future__ import annotations

import fcntl
import http.client
import json
import logging
import os
import random
import re
import select
import socket
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from auditlog.engine.entry import ENTRY_SUB, Entry, format_ts
from auditlog.engine.errors import ConfigError
from auditlog.engine.log import NodeLog
from auditlog.engine.settings import Setting, check_fields, defaults_of, file_path, int_at_least, text
from auditlog.engine.state import StateSeal, StateTampered
from auditlog.export.errors import ExportError
from auditlog.export.relp import RelpSession

log = logging.getLogger("auditlog.syslog")

FACILITY_LOG_AUDIT = 13
SEV_ALERT, SEV_WARNING, SEV_NOTICE, SEV_INFO = 1, 4, 5, 6
DEFAULT_SD_ID = "audit@32473"
_SD_NAME_OK = re.compile(r"^[\x21\x23-\x3c\x3e-\x5c\x5e-\x7e]{1,32}$")  # printusascii minus = ] " and space
BOM = "\ufeff"
CURSOR_FILE = "syslog_cursor.json"
TIOCOUTQ = 0x5411  # Linux: bytes in the socket send queue not yet acknowledged
TCP_CLOSE = 7  # Linux tcp_info.tcpi_state of a closed (reset) connection


def check_sd_id(sd_id: str) -> str:
    name, at, num = sd_id.partition("@")
    if not (_SD_NAME_OK.match(sd_id) and at and name and num.isdigit()):
        raise ExportError(f"syslog sd_id must look like name@<private enterprise number>, got {sd_id!r}")
    return sd_id


def _sd_escape(value: str) -> str:
    # RFC 5424 section 6.3.3: '"', '\' and ']' are escaped inside PARAM-VALUE
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("]", "\\]")


def _printable(s: str, limit: int) -> str:
    s = "".join(c if "!" <= c <= "~" else "_" for c in s)
    return s[:limit] or "-"


def severity(e: Entry) -> int:
    if e.integrity != "ok":
        return SEV_ALERT
    if e.action.startswith("security."):
        return SEV_WARNING
    return SEV_INFO if e.success else SEV_NOTICE


#: the largest RFC 5424 ``meta sequenceId``
MAX_SEQUENCE_ID = 2147483647


def sequence_id(seq: int) -> int:
    """The ``meta sequenceId`` of the entry of ``seq``: the seq itself, wrapping to 1
    after 2147483647 (RFC 5424 section 7.3.1)."""
    return (seq - 1) % MAX_SEQUENCE_ID + 1


def format_message(e: Entry, sd_id: str = DEFAULT_SD_ID, max_bytes: int | None = None) -> bytes:
    """One RFC 5424 message (no transport framing)."""
    pri = FACILITY_LOG_AUDIT * 8 + severity(e)
    params = [("id", e.id), ("node", e.node), ("seq", str(e.seq)), ("user", e.user), ("action", e.action)]
    for name, val in (("target", e.target), ("domain", e.domain), ("ip", e.ip), ("user_agent", e.user_agent)):
        if val is not None:
            params.append((name, str(val)))
    params += [
        ("success", "true" if e.success else "false"),
        ("signature", e.signature.hex() if isinstance(e.signature, bytes) else ""),
        ("integrity", e.integrity),
    ]
    if e.violation:
        params.append(("violation", e.violation))
    details = json.dumps(e.details, ensure_ascii=False, separators=(",", ":"), default=str) if e.details else None
    text = f"{e.user} {e.action} {'succeeded' if e.success else 'FAILED'}"
    if e.target:
        text += f" on {e.target}"
    if e.ip:
        text += f" from {e.ip}"
    header = f"<{pri}>1 {format_ts(e.ts)} {_printable(e.node, 255)} auditlog - {_printable(e.action, 32)} "
    # RFC 5424 7.3.1: the entry's seq as the sequence, so a receiver sees a gap in one
    # node's messages as a gap in the numbers (1 .. 2147483647, then from 1 again)
    meta = f'[meta sequenceId="{sequence_id(e.seq)}"]'

    def build(details_value: str | None, truncated: bool, msg: str, base: list | None = None) -> bytes:
        ps = (
            (params if base is None else base)
            + ([("details", details_value)] if details_value is not None else [])
            + ([("truncated", "true")] if truncated else [])
        )
        sd = "[" + sd_id + "".join(f' {k}="{_sd_escape(v)}"' for k, v in ps) + "]"
        return (header + sd + meta + " " + BOM + msg).encode("utf-8")

    out = build(details, False, text)
    if max_bytes is None or len(out) <= max_bytes:
        return out
    # too big for the transport: drop details first, then shorten the text
    out = build(None, True, text)
    if len(out) <= max_bytes:
        return out
    # still too big (long user, target, user agent...): clip the free-text values and
    # the text to the longest length that fits.  id, node, seq, success, signature and
    # integrity stay whole; cutting the bytes instead would break the structured data
    # or a UTF-8 sequence and the receiver would drop the message.
    keep = {"id", "node", "seq", "success", "signature", "integrity"}

    def clipped(n: int) -> bytes:
        return build(None, True, text[:n], [(k, v if k in keep else v[:n]) for k, v in params])

    lo, hi = 0, max([len(v) for _, v in params] + [len(text)])
    best = clipped(0)
    while lo <= hi:
        mid = (lo + hi) // 2
        cand = clipped(mid)
        if len(cand) <= max_bytes:
            best, lo = cand, mid + 1
        else:
            hi = mid - 1
    return best


def _target(v, name: str) -> str:
    text(v, name)
    try:
        u = urlsplit(v)
        port = u.port
    except ValueError:
        u, port = None, None
    if u is None or u.scheme not in ("udp", "tcp", "tls", "relp") or not u.hostname or not port:
        raise ConfigError(
            f"{name} must be udp://HOST:PORT, tcp://HOST:PORT, tls://HOST:PORT or relp://HOST:PORT, got {v!r}"
        )
    return v


def _format(v, name: str) -> str:
    if v != "rfc5424":
        raise ConfigError(f'{name} must be "rfc5424", got {v!r}')
    return v


def _sd_id(v, name: str) -> str:
    text(v, name)
    try:
        return check_sd_id(v)
    except ExportError:
        raise ConfigError(f"{name} must look like name@<enterprise number>, got {v!r}") from None


#: ``[syslog]``: forward this node's log to a syslog receiver / SIEM
SYSLOG_SETTINGS: tuple[Setting, ...] = (
    Setting(
        "syslog.target",
        None,
        "udp://HOST:PORT, tcp://HOST:PORT, tls://HOST:PORT or relp://HOST:PORT",
        _target,
        required='[syslog] needs target = "udp://HOST:PORT", "tcp://HOST:PORT", "tls://HOST:PORT" or "relp://HOST:PORT"',
    ),
    Setting("syslog.format", "rfc5424", "message format: rfc5424", _format),
    Setting("syslog.sd_id", DEFAULT_SD_ID, "structured-data id, name@<enterprise number>", _sd_id),
    Setting("syslog.ca", None, "CA file to check a tls:// receiver with", file_path, path=True),
    Setting("syslog.cert", None, "client certificate for a tls:// receiver", file_path, path=True),
    Setting("syslog.key", None, "key of the client certificate", file_path, path=True),
    Setting("syslog.server_name", None, "TLS name to check (default: the target host)", text),
    Setting("syslog.udp_max_bytes", 8192, "largest UDP message; longer ones are shortened", int_at_least(480)),
)
_SYSLOG = defaults_of(SYSLOG_SETTINGS)


@dataclass(frozen=True)
class SyslogSettings:
    target: str  # udp://host:port | tcp://host:port | tls://host:port | relp://host:port
    format: str = _SYSLOG["format"]
    sd_id: str = _SYSLOG["sd_id"]
    ca: str | None = _SYSLOG["ca"]
    cert: str | None = _SYSLOG["cert"]
    key: str | None = _SYSLOG["key"]
    server_name: str | None = _SYSLOG["server_name"]
    udp_max_bytes: int = _SYSLOG["udp_max_bytes"]

    def __post_init__(self):
        check_fields(self, SYSLOG_SETTINGS)
        if self.scheme != "tls" and (self.ca or self.cert or self.key):
            raise ConfigError("syslog ca/cert/key only apply to a tls:// target")

    @property
    def scheme(self) -> str:
        return urlsplit(self.target).scheme

    def address(self) -> tuple[str, int]:
        u = urlsplit(self.target)
        return u.hostname, u.port


class Transport:
    def __init__(self, settings: SyslogSettings):
        self.s = settings
        self.sock: socket.socket | None = None
        #: the RELP session of a relp:// target (application-level acknowledgements)
        self.relp: RelpSession | None = None

    def connect(self, timeout: float = 5.0) -> None:
        host, port = self.s.address()
        scheme = self.s.scheme
        if scheme == "udp":
            info = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)[0]
            self.sock = socket.socket(info[0], socket.SOCK_DGRAM)
            self.sock.connect(info[4])
            return
        raw = socket.create_connection((host, port), timeout=timeout)
        if scheme == "tls":
            ctx = ssl.create_default_context(cafile=self.s.ca)
            ctx.minimum_version = ssl.TLSVersion.TLSv1_2
            if self.s.cert:
                ctx.load_cert_chain(self.s.cert, self.s.key)
            try:
                raw = ctx.wrap_socket(raw, server_hostname=self.s.server_name or host)
            except BaseException:
                raw.close()
                raise
        raw.settimeout(timeout)
        self.sock = raw
        if scheme == "relp":
            self.relp = RelpSession(raw)
            self.relp.open()

    @property
    def acknowledges(self) -> bool:
        """Whether the receiver acknowledges each message itself (RELP): then nothing is
        resent but what it did not acknowledge."""
        return self.s.scheme == "relp"

    @property
    def acked(self) -> int:
        """Messages of the last ``send`` the receiver acknowledged itself (RELP), in order."""
        return self.relp.acked if self.relp is not None else 0

    def send(self, messages: list[bytes]) -> None:
        if self.relp is not None:
            self.relp.send(messages)  # returns once the receiver answered 200 for each
            return
        if self.s.scheme == "udp":
            for m in messages:
                self.sock.send(m)
            return
        # RFC 6587 octet counting (also what RFC 5425 prescribes over TLS)
        self.sock.sendall(b"".join(b"%d %s" % (len(m), m) for m in messages))
        self.wait_acked()

    def wait_acked(self, timeout: float = 10.0) -> None:
        """Block until the receiver's TCP stack acknowledged every byte sent.

        ``sendall`` returns once bytes are in our kernel's buffer; if the
        receiver dies then, they are lost.  The cursor only moves past what
        the receiver acknowledged (Linux TIOCOUTQ: bytes not yet acked), so a
        batch in flight during an outage is sent again.
        """
        deadline = time.monotonic() + timeout
        fd = self.sock.fileno()
        buf = bytearray(4)
        while True:
            try:
                fcntl.ioctl(fd, TIOCOUTQ, buf)
            except OSError:
                return  # not supported here: fall back to sendall's guarantee
            if int.from_bytes(buf, "little") == 0:
                return
            # a receiver that went away resets the connection: the unacknowledged count
            # then never drops to 0, so notice it now rather than after the timeout
            err = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                raise OSError(err, f"connection to the receiver lost: {os.strerror(err)}")
            info = self.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)
            if info and info[0] == TCP_CLOSE:
                raise OSError("connection closed by the receiver before it acknowledged the data")
            if time.monotonic() > deadline:
                raise OSError("receiver did not acknowledge the data in time")
            time.sleep(0.002)

    def peer_gone(self) -> bool:
        """Whether the receiver closed or reset the connection (checked while idle, so a
        receiver restart is noticed, and what it lost resent, without waiting for a new entry)."""
        if self.sock is None or self.s.scheme == "udp":
            return False
        p = select.poll()
        p.register(self.sock.fileno(), select.POLLRDHUP | select.POLLERR | select.POLLHUP)
        return any(ev & (select.POLLRDHUP | select.POLLERR | select.POLLHUP) for _, ev in p.poll(0))

    def close(self) -> None:
        if self.relp is not None:
            self.relp.close()
            self.relp = None
        if self.sock is not None:
            try:
                self.sock.close()
            finally:
                self.sock = None


class SyslogForwarder:
    """Follows the local log and forwards it; restartable from its cursor.  A subclass
    may bring its own ``transport()``, ``messages()`` and ``cursor_file``
    (``export.http_stream``)."""

    cursor_file = CURSOR_FILE

    #: after a lost TCP/TLS connection, the last this many bytes sent on it are sent
    #: again: plain syslog over TCP has no application-level acknowledgement, and a
    #: receiver stopped with data in its socket buffer loses it although its kernel
    #: acknowledged it (rsyslog does, on SIGTERM)
    resend_bytes = 1 << 20

    def __init__(
        self,
        settings: SyslogSettings,
        *,
        reader: NodeLog,
        head_seq: Callable[[], int],
        seal: StateSeal,
        state_dir: Path,
        rejected: Callable[[str, str], None],
        batch: int = 500,
    ):
        """``reader``: the log to follow; ``head_seq()``: the last seq appended;
        ``seal``: this node's state seal (the cursor file is sealed state);
        ``rejected(file, problem)``: reports a state file that failed its seal
        (an ``audit.recovery`` entry, the counter) and sets it aside."""
        self.settings = settings
        self.reader = reader
        self.head_seq = head_seq
        self.seal = seal
        self.rejected = rejected
        self.batch = batch
        self.path = Path(state_dir) / self.cursor_file
        #: why the cursor file was not used (None: it was, or there was none)
        self.cursor_rejected: str | None = None
        #: the position (seq, sub) of the last item the receiver acknowledged (a marker for
        #: damage sits before the entry with the same seq: engine.items); (0, 0) before any;
        #: read from the cursor file when the forwarder starts
        self.position: tuple[int, int] = (0, 0)
        self.sent = 0
        self.errors = 0
        self.last_error: str | None = None
        self.connected = False
        self.wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def cursor(self) -> int:
        """The seq of the last entry the receiver acknowledged (0: none yet)."""
        return self.position[0]

    def _load_cursor(self) -> tuple[int, int]:
        try:
            d = self.seal.read(self.path)
        except StateTampered as e:
            self.cursor_rejected = (
                f"{self.cursor_file}: {str(e).split(': ', 1)[-1]}; "
                "forwarding starts again from the beginning of the log"
            )
            self.rejected(self.cursor_file, self.cursor_rejected)
            return (0, 0)
        if not (
            isinstance(d, dict)
            and d.get("target") == self.settings.target
            and type(d.get("seq")) is int
            and d["seq"] >= 0
            and type(d.get("sub", ENTRY_SUB)) is int
        ):
            return (0, 0)  # none yet, or another target's: everything goes to this one
        head = self.reader.head()[0]
        if d["seq"] > head:
            # the log was cut back (or lost its tail in a crash without fsync): the seqs
            # after its head will hold new entries, which must go out too
            log.warning(
                "%s: cursor at seq %d but the log ends at seq %d; forwarding resumes after %d",
                self.cursor_file,
                d["seq"],
                head,
                head,
            )
            return (head, ENTRY_SUB)
        return (d["seq"], d.get("sub", ENTRY_SUB))

    def _save_cursor(self) -> None:
        seq, sub = self.position
        self.seal.write(self.path, {"target": self.settings.target, "seq": seq, "sub": sub}, sync=False)

    def status(self) -> dict:
        head = self.head_seq()
        return {
            "target": self.settings.target,
            "cursor_seq": self.cursor,
            "lag": max(0, head - self.cursor),
            "connected": self.connected,
            "sent": self.sent,
            "errors": self.errors,
            "last_error": self.last_error,
            "cursor_rejected": self.cursor_rejected,
        }

    def start(self) -> None:
        """Read the cursor file and start forwarding from it (in a thread)."""
        self.cursor_rejected = None
        self.position = self._load_cursor()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="auditlog-syslog", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self.wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def transport(self):
        return Transport(self.settings)

    def messages(self, entries: list[Entry]) -> list[bytes]:
        udp = self.settings.scheme == "udp"
        return [format_message(e, self.settings.sd_id, self.settings.udp_max_bytes if udp else None) for e in entries]

    def _run(self) -> None:
        backoff = 0.2
        transport = self.transport()
        udp = self.settings.scheme == "udp"
        acks = transport.acknowledges  # RELP, HTTP: see Transport.acknowledges
        # (cursor before the batch, its bytes) of the batches acknowledged on this connection
        recent: deque[tuple[int, int]] = deque()
        recent_bytes = 0
        while not self._stop.is_set():
            try:
                if transport.sock is None:
                    transport.connect()
                    self.connected = True
                    recent.clear()
                    recent_bytes = 0
                entries = self._next_entries()
                if not entries:
                    if transport.peer_gone():
                        raise OSError("the receiver closed the connection")
                    self.wake.wait(0.5)
                    self.wake.clear()
                    continue
                messages = self.messages(entries)
                before = self.position
                try:
                    transport.send(messages)
                except (OSError, ssl.SSLError, http.client.HTTPException):
                    if acks and transport.acked:
                        # what the receiver took before it failed counts: it is not sent again
                        self.position = max(self.position, entries[transport.acked - 1].position)
                        self.sent += transport.acked
                        self._save_cursor()
                    raise
                self.position = max(self.position, entries[-1].position)
                self.sent += len(entries)
                if not udp and not acks:
                    size = sum(len(m) for m in messages)
                    recent.append((before, size))
                    recent_bytes += size
                    while len(recent) > 1 and recent_bytes - recent[0][1] >= self.resend_bytes:
                        recent_bytes -= recent.popleft()[1]
                self._save_cursor()
                backoff = 0.2
            except (OSError, ssl.SSLError, ExportError, http.client.HTTPException) as e:
                self.errors += 1
                self.last_error = f"{type(e).__name__}: {e}"
                if self.connected:
                    log.warning("syslog forwarding to %s failed: %s", self.settings.target, e)
                self.connected = False
                transport.close()
                if recent:
                    # bytes the receiver's kernel acknowledged may never have reached the
                    # receiver itself (a receiver stopped with data in its socket buffer
                    # drops it): send the last resend_bytes of this connection again
                    # (at-least-once; the id lets receivers drop the duplicates)
                    self.position = min(self.position, recent[0][0])
                    recent.clear()
                    recent_bytes = 0
                    try:
                        self._save_cursor()
                    except OSError:  # pragma: no cover - kept in memory, saved next time
                        log.exception("cannot save the syslog cursor")
                self._stop.wait(backoff * (1 + random.random() / 2))
                backoff = min(backoff * 2, 30.0)
        transport.close()

    def _next_entries(self) -> list[Entry]:
        out = []
        for e in self.reader.scan(after=self.position if self.position[0] else None):
            out.append(e)
            if len(out) >= self.batch:
                break
        return out
