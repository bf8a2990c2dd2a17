"""HTTP streaming destinations: this node's log POSTed as NDJSON batches to a URL (a
SIEM's HTTP input, a collector), like GitLab's audit event streaming.

Each batch is the entries' NDJSON lines (their wire shape, ``id`` included for
deduplication), with the configured verification token in the
``X-Auditlog-Token`` header.  The cursor (a sealed state file, as syslog's) moves
only past a batch the receiver answered with a 2xx status, so delivery is
at-least-once: a batch that failed, timed out or got any other answer is sent
again, after a backoff that grows to ``max_backoff``.  An unreachable receiver
never slows appends: the forwarder reads the log like any reader, in its own
thread.
"""

from __future__ import annotations

import http.client
import os
import ssl
import stat
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from auditlog.engine.errors import ConfigError
from auditlog.engine.settings import Setting, check_fields, defaults_of, file_path, int_at_least, parse_duration, text
from auditlog.export.ndjson import ndjson_lines
from auditlog.export.syslog import SyslogForwarder

STREAM_CURSOR_FILE = "http_stream_cursor.json"
TOKEN_HEADER = "X-Auditlog-Token"
MAX_TOKEN_FILE = 4096


def _url(v, name: str) -> str:
    text(v, name)
    u = urlsplit(v)
    if u.scheme not in ("http", "https") or not u.hostname:
        raise ConfigError(f"{name} must be an http:// or https:// URL, got {v!r}")
    return v


#: ``[http_stream]``: POST this node's log as NDJSON batches to a URL
HTTP_STREAM_SETTINGS: tuple[Setting, ...] = (
    Setting("http_stream.url", None, "the URL batches are POSTed to", _url, required="[http_stream] needs url"),
    Setting(
        "http_stream.token_file",
        None,
        "a file (mode 0600) holding the verification token sent as X-Auditlog-Token",
        file_path,
        path=True,
    ),
    Setting("http_stream.ca", None, "CA file to check an https:// receiver with", file_path, path=True),
    Setting("http_stream.batch", 500, "entries per POST", int_at_least(1)),
    Setting("http_stream.timeout", 10.0, "seconds a POST may take before it counts as failed", parse_duration),
)
_STREAM = defaults_of(HTTP_STREAM_SETTINGS)


@dataclass(frozen=True)
class HttpStreamSettings:
    url: str
    token_file: str | None = _STREAM["token_file"]
    ca: str | None = _STREAM["ca"]
    batch: int = _STREAM["batch"]
    timeout: float = _STREAM["timeout"]

    def __post_init__(self):
        check_fields(self, HTTP_STREAM_SETTINGS)
        if self.batch > 10_000:
            raise ConfigError("http_stream.batch is at most 10000")

    # what the forwarder's loop reads of a target
    @property
    def target(self) -> str:
        return self.url

    @property
    def scheme(self) -> str:
        return urlsplit(self.url).scheme

    def token(self) -> str | None:
        """The verification token, from a file only its owner may read (never logged)."""
        if self.token_file is None:
            return None
        path = Path(self.token_file)
        try:
            if stat.S_IMODE(os.stat(path).st_mode) & 0o077:
                raise ConfigError(f"{path} is readable by group or others; run: chmod 600 {path}")
            with open(path, "rb") as f:
                raw = f.read(MAX_TOKEN_FILE + 1)
        except OSError as e:
            raise ConfigError(f"cannot read the http_stream token file {path}: {e.strerror or e}") from None
        tok = raw.decode("utf-8", "replace").strip()
        if not tok or len(raw) > MAX_TOKEN_FILE or any(c in tok for c in "\r\n"):
            raise ConfigError(f"{path} holds no usable token (one line of text)")
        return tok


class HttpTransport:
    """POSTs batches over one kept-alive connection; ``send`` returns only on a 2xx."""

    #: the receiver's 2xx is an application-level acknowledgement of the whole batch
    acknowledges = True

    def __init__(self, settings: HttpStreamSettings):
        self.s = settings
        self.conn: http.client.HTTPConnection | None = None
        self.token = settings.token()
        self.acked = 0
        u = urlsplit(settings.url)
        self.path = (u.path or "/") + (f"?{u.query}" if u.query else "")

    @property
    def sock(self):
        return self.conn

    def connect(self, timeout: float | None = None) -> None:
        u = urlsplit(self.s.url)
        t = self.s.timeout if timeout is None else timeout
        if u.scheme == "https":
            ctx = ssl.create_default_context(cafile=self.s.ca)
            self.conn = http.client.HTTPSConnection(u.hostname, u.port, timeout=t, context=ctx)
        else:
            self.conn = http.client.HTTPConnection(u.hostname, u.port, timeout=t)
        self.conn.connect()

    def send(self, lines: list[bytes]) -> None:
        self.acked = 0
        headers = {"Content-Type": "application/x-ndjson"}
        if self.token is not None:
            headers[TOKEN_HEADER] = self.token
        self.conn.request("POST", self.path, body=b"".join(lines), headers=headers)
        resp = self.conn.getresponse()
        body = resp.read(4096)
        if not 200 <= resp.status < 300:
            raise OSError(f"the receiver answered HTTP {resp.status}: {body[:200].decode('utf-8', 'replace')}")
        self.acked = len(lines)

    def peer_gone(self) -> bool:
        return False

    def close(self) -> None:
        if self.conn is not None:
            try:
                self.conn.close()
            finally:
                self.conn = None


class HttpStreamForwarder(SyslogForwarder):
    """The syslog forwarder's cursor and loop, with NDJSON batches POSTed over HTTP."""

    cursor_file = STREAM_CURSOR_FILE

    def transport(self):
        return HttpTransport(self.settings)

    def messages(self, entries) -> list[bytes]:
        return ndjson_lines(entries)
