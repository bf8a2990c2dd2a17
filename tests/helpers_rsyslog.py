"""A real rsyslogd for the syslog end-to-end tests (``tests/test_syslog.py``).

``Rsyslog(workdir, proto="tcp"|"tls"|"udp")`` writes a private config and runs
``rsyslogd -n -C -f CONF -i PIDFILE`` in the foreground as a subprocess:

* its own ``$WorkDirectory`` (``global(workDirectory=...)``) and pid file;
  only the modules below are loaded, so no kernel log (imklog) and no
  ``/dev/log`` socket (imuxsock): nothing is shared with a system rsyslog
  (``-C``: it does not chdir to ``/`` either);
* one input on a free loopback port: ``imtcp`` (plain; RFC 6587 octet
  counting is detected by imtcp), ``imtcp`` with the gtls stream driver in
  TLS-only mode, anonymous client auth, the test CA/cert/key (RFC 5425),
  ``imrelp`` (RELP), or ``imudp``;
* every received message appended to ``received.jsonl`` by ``omfile``, one
  JSON object per line: ``raw`` is ``%rawmsg%`` (the message exactly as
  received, control characters not escaped) so the test can parse it as RFC
  5424 itself; ``msgid``, ``app``, ``host``, ``sd``, ``version`` are what
  rsyslog's own RFC 5424 parser made of it.

The main queue is ``Direct`` (the input thread writes through to omfile
before it reads more) and omfile flushes at every transaction end, so what
rsyslog accepted is in the file, also after SIGTERM.  ``stop()`` sends
SIGTERM and waits; ``start()`` again reuses the same port and file.

rsyslog missing: ``require_rsyslogd()`` skips the test, unless ``CI=true``,
where the test fails (CI installs rsyslog and rsyslog-gnutls, see .ci/run).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from auditlog.bench.servers import terminate

RSYSLOGD = shutil.which("rsyslogd") or ("/usr/sbin/rsyslogd" if os.path.exists("/usr/sbin/rsyslogd") else None)
MODULE_DIRS = (
    "/usr/lib/x86_64-linux-gnu/rsyslog",
    "/usr/lib/aarch64-linux-gnu/rsyslog",
    "/usr/lib/rsyslog",
    "/usr/lib64/rsyslog",
)


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def require_rsyslogd() -> str:
    """The rsyslogd path; skip when missing (but fail under CI=true)."""
    if RSYSLOGD is None:
        if in_ci():
            pytest.fail(
                "rsyslogd is not installed but CI=true: the syslog end-to-end tests must run "
                "(apt-get install rsyslog rsyslog-gnutls)"
            )
        pytest.skip("rsyslogd not installed (apt-get install rsyslog rsyslog-gnutls)")
    return RSYSLOGD


def has_module(name: str) -> bool:
    return any(os.path.exists(os.path.join(d, name)) for d in MODULE_DIRS)


def _require_module(so: str, what: str) -> None:
    require_rsyslogd()
    if not has_module(so):
        msg = f"rsyslog's {what} is not installed"
        if in_ci():
            pytest.fail(msg + " but CI=true")
        pytest.skip(msg)


def require_relp() -> None:
    _require_module("imrelp.so", "RELP input (imrelp.so, package rsyslog-relp)")


def require_gtls() -> None:
    _require_module("lmnsd_gtls.so", "gtls stream driver (lmnsd_gtls.so, package rsyslog-gnutls)")


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_tls_files(out: Path, sans: tuple[str, ...] = ("127.0.0.1",)) -> dict[str, Path]:
    """A test CA and a server certificate (SAN 127.0.0.1) for rsyslog's TLS input:
    {"ca", "cert", "key"} (EC P-256, PEM), made with the cluster PKI's own tools."""
    from auditlog.query.cluster.pki import ca_init, issue_cert

    ca_cert, _ = ca_init(out / "ca", name="auditlog test syslog CA")
    cert, key = issue_cert(out / "ca", "syslog-receiver", list(sans), out)
    return {"ca": ca_cert, "cert": cert, "key": key}


_TEMPLATE = """\
template(name="auditlog_test_json" type="list" option.jsonf="on") {
  property(outname="raw" name="rawmsg" format="jsonf")
  property(outname="version" name="protocol-version" format="jsonf")
  property(outname="pri" name="pri" format="jsonf")
  property(outname="host" name="hostname" format="jsonf")
  property(outname="app" name="app-name" format="jsonf")
  property(outname="msgid" name="msgid" format="jsonf")
  property(outname="sd" name="structured-data" format="jsonf")
  property(outname="input" name="inputname" format="jsonf")
}
"""


class Rsyslog:
    """One private rsyslogd: ``start()``, ``wait_ready()``, ``messages()``, ``stop()``."""

    def __init__(self, workdir: Path, proto: str = "tcp", tls: dict[str, Path] | None = None, port: int | None = None):
        assert proto in ("tcp", "tls", "udp", "relp"), proto
        self.rsyslogd = require_rsyslogd()
        if proto == "relp":
            require_relp()
        if proto == "tls":
            require_gtls()
            assert tls is not None, "proto=tls needs make_tls_files()"
        self.proto = proto
        self.tls = tls
        self.dir = Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "work").mkdir(exist_ok=True)
        self.port = port or free_port(socket.SOCK_DGRAM if proto == "udp" else socket.SOCK_STREAM)
        self.out = self.dir / "received.jsonl"
        self.conf = self.dir / "rsyslog.conf"
        self.pidfile = self.dir / "rsyslogd.pid"
        self.log_path = self.dir / "rsyslogd.log"
        self.proc: subprocess.Popen | None = None
        self._log = None
        self.conf.write_text(self._config())

    @property
    def target(self) -> str:
        return f"{self.proto}://127.0.0.1:{self.port}"

    def _config(self) -> str:
        lines = [
            f'global(workDirectory="{self.dir / "work"}" maxMessageSize="64k"',
            '       parser.escapeControlCharactersOnReceive="off"',
            '       processInternalMessages="on")',
            'main_queue(queue.type="Direct")',
        ]
        if self.proto == "udp":
            lines += ['module(load="imudp")', f'input(type="imudp" address="127.0.0.1" port="{self.port}" name="udp")']
        elif self.proto == "relp":
            lines += [
                'module(load="imrelp")',
                f'input(type="imrelp" address="127.0.0.1" port="{self.port}" name="relp")',
            ]
        elif self.proto == "tcp":
            lines += [
                'module(load="imtcp" maxSessions="100")',
                f'input(type="imtcp" address="127.0.0.1" port="{self.port}" name="tcp")',
            ]
        else:
            t = self.tls
            lines[0] = (
                f'global(workDirectory="{self.dir / "work"}" maxMessageSize="64k"\n'
                f'       defaultNetstreamDriver="gtls"\n'
                f'       defaultNetstreamDriverCAFile="{t["ca"]}"\n'
                f'       defaultNetstreamDriverCertFile="{t["cert"]}"\n'
                f'       defaultNetstreamDriverKeyFile="{t["key"]}"'
            )
            lines += [
                'module(load="imtcp" maxSessions="100" StreamDriver.Name="gtls" StreamDriver.Mode="1" '
                'StreamDriver.AuthMode="anon")',
                f'input(type="imtcp" address="127.0.0.1" port="{self.port}" name="tls")',
            ]
        lines.append(_TEMPLATE)
        # the test's messages only (rsyslog's own notices go to the log file via stderr)
        lines.append(
            f'if $inputname != "rsyslogd" then {{\n'
            f'  action(type="omfile" file="{self.out}" template="auditlog_test_json" '
            f'flushOnTXEnd="on" asyncWriting="off")\n'
            f"}} else {{\n"
            f'  action(type="omfile" file="{self.dir / "internal.log"}")\n'
            f"}}"
        )
        return "\n".join(lines) + "\n"

    # -- lifecycle -------------------------------------------------------------------

    def start(self, timeout: float = 15) -> Rsyslog:
        assert self.proc is None or self.proc.poll() is not None, "already running"
        try:
            self.pidfile.unlink()
        except FileNotFoundError:
            pass
        self._log = open(self.log_path, "ab")
        # -n: foreground; -C: no chdir to /; -i: our own pid file (a system rsyslogd may run too)
        self.proc = subprocess.Popen(
            [self.rsyslogd, "-n", "-C", "-f", str(self.conf), "-i", str(self.pidfile)],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 15) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"rsyslogd exited with {self.proc.returncode}: {self.log()}")
            if self._listening():
                return
            time.sleep(0.05)
        raise AssertionError(f"rsyslogd not listening on {self.port} after {timeout}s: {self.log()}")

    def _listening(self) -> bool:
        if self.proto == "udp":
            # a bound UDP port is listed in /proc/net/udp (hex port, state 07)
            hexport = f"{self.port:04X}"
            for line in Path("/proc/net/udp").read_text().splitlines()[1:]:
                local = line.split()[1]
                if local.endswith(":" + hexport) and local.startswith("0100007F"):
                    return True
            return False
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                return True  # imtcp takes an empty connection without complaint
        except OSError:
            return False

    def stop(self, timeout: float = 15) -> int:
        """SIGTERM and wait (the Direct queue means nothing accepted is left unwritten)."""
        if self.proc is None:
            return 0
        if not terminate(self.proc, timeout):
            raise AssertionError(f"rsyslogd ignored SIGTERM for {timeout}s: {self.log()}")
        if self._log is not None:
            self._log.close()
            self._log = None
        return self.proc.returncode

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> Rsyslog:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    # -- what arrived --------------------------------------------------------------------

    def log(self) -> str:
        parts = []
        for p in (self.log_path, self.dir / "internal.log"):
            if p.exists():
                parts.append(p.read_text(errors="replace")[-4000:])
        return "\n".join(parts)

    def messages(self) -> list[dict]:
        """Every record written so far (a partial last line is left for the next call)."""
        if not self.out.exists():
            return []
        lines = self.out.read_bytes().split(b"\n")
        out = []
        for i, line in enumerate(lines):
            if not line.strip():
                continue
            try:
                out.append(json.loads(line))
            except ValueError:
                if i == len(lines) - 1:
                    break  # the last line is still being written
                raise
        return out

    def wait_for(self, predicate, timeout: float = 30, poll: float = 0.1) -> list[dict]:
        """Poll messages() until predicate(messages) is true; returns the messages."""
        deadline = time.monotonic() + timeout
        msgs = self.messages()
        while not predicate(msgs):
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"rsyslog: condition not met after {timeout}s ({len(msgs)} messages); log: {self.log()}"
                )
            time.sleep(poll)
            msgs = self.messages()
        return msgs
