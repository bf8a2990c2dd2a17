"""Syslog forwarding (SPEC section 8): RFC 5424 messages, and a real rsyslog receiving them.

Unit tests of ``export.syslog.format_message`` check every header field, the
structured data and its escaping, the BOM + UTF-8 MSG and the UDP size cap,
all through a small *strict* RFC 5424 parser (``parse_rfc5424`` below).

The end-to-end tests run ``auditlog serve`` with a ``[syslog]`` config
against a real ``rsyslogd`` (``helpers_rsyslog.Rsyslog``) over TCP (RFC 6587
octet counting), TLS (RFC 5425, rsyslog's gtls driver with test certificates)
and UDP, and check that every entry arrives, also when the receiver and the
node are restarted mid-stream.  They skip only when rsyslogd is missing and
``CI`` is not ``true``.
"""

from __future__ import annotations

import json
import re
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from helpers_http import AUDITLOG, ServeProcess, bearer, clean_env, free_port, run_cli
from helpers_rsyslog import Rsyslog, make_tls_files, require_gtls, require_rsyslogd

from auditlog.engine.entry import Entry, format_ts
from auditlog.export.errors import ExportError
from auditlog.export.syslog import DEFAULT_SD_ID, check_sd_id, format_message

# -- a strict RFC 5424 parser ------------------------------------------------------------

_TS = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,6})?(Z|[+-]\d{2}:\d{2})$")
BOM = b"\xef\xbb\xbf"


def _printusascii(s: bytes, lo: int, hi: int, what: str) -> str:
    assert lo <= len(s) <= hi, f"{what}: length {len(s)} not in {lo}..{hi}: {s!r}"
    assert all(33 <= b <= 126 for b in s), f"{what}: not PRINTUSASCII: {s!r}"
    return s.decode("ascii")


def _sd_name(buf: bytes, i: int, what: str) -> tuple[str, int]:
    j = i
    while j < len(buf) and 33 <= buf[j] <= 126 and buf[j] not in b'= ]"':
        j += 1
    assert 1 <= j - i <= 32, f"{what}: bad SD-NAME at {i}: {buf[i : i + 40]!r}"
    return buf[i:j].decode("ascii"), j


def parse_rfc5424(raw: bytes) -> dict:
    """Parse one RFC 5424 SYSLOG-MSG (no transport framing), asserting every rule on the way.

    Returns {"pri", "facility", "severity", "version", "timestamp", "hostname",
    "app_name", "procid", "msgid", "sd": [(sd_id, {name: value})], "msg": bytes}.
    """
    m = re.match(rb"^<(\d{1,3})>([1-9]\d{0,2}) ", raw)
    assert m, f"no PRI/VERSION: {raw[:40]!r}"
    pri = int(m.group(1))
    assert 0 <= pri <= 191 and (m.group(1) == b"0" or not m.group(1).startswith(b"0")), m.group(1)
    out: dict = {"pri": pri, "facility": pri // 8, "severity": pri % 8, "version": int(m.group(2))}
    rest = raw[m.end() :]
    fields = []
    for name, hi in (("timestamp", 64), ("hostname", 255), ("app_name", 48), ("procid", 128), ("msgid", 32)):
        sp = rest.find(b" ")
        assert sp > 0, f"{name}: missing or empty in {raw[:120]!r}"
        fields.append(_printusascii(rest[:sp], 1, hi, name))
        out[name] = fields[-1]
        rest = rest[sp + 1 :]
    assert out["timestamp"] == "-" or _TS.match(out["timestamp"]), out["timestamp"]
    # STRUCTURED-DATA
    sd: list[tuple[str, dict]] = []
    i = 0
    if rest.startswith(b"-"):
        i = 1
    else:
        assert rest.startswith(b"["), f"no STRUCTURED-DATA: {rest[:40]!r}"
        while i < len(rest) and rest[i : i + 1] == b"[":
            sd_id, i = _sd_name(rest, i + 1, "SD-ID")
            params: dict[str, str] = {}
            while rest[i : i + 1] == b" ":
                name, i = _sd_name(rest, i + 1, "PARAM-NAME")
                assert rest[i : i + 2] == b'="', f'PARAM {name}: no =" at {rest[i : i + 10]!r}'
                i += 2
                val = bytearray()
                while True:
                    assert i < len(rest), f"PARAM {name}: unterminated value"
                    c = rest[i]
                    if c == 0x5C:  # backslash: only \" \\ \] are escapes; anything else is literal
                        nxt = rest[i + 1 : i + 2]
                        assert nxt in (b'"', b"\\", b"]"), f"PARAM {name}: lone backslash before {nxt!r}"
                        val += nxt
                        i += 2
                        continue
                    if c == 0x22:
                        i += 1
                        break
                    assert c != 0x5D, f"PARAM {name}: unescaped ']' in value"
                    val.append(c)
                    i += 1
                assert name not in params, f"PARAM {name} twice"
                params[name] = bytes(val).decode("utf-8")  # PARAM-VALUE is UTF-8 (strict)
            assert rest[i : i + 1] == b"]", f"SD-ELEMENT {sd_id}: no closing ] at {rest[i : i + 20]!r}"
            i += 1
            assert sd_id not in [s for s, _ in sd], f"SD-ID {sd_id} twice"
            sd.append((sd_id, params))
    out["sd"] = sd
    tail = rest[i:]
    if tail:
        assert tail.startswith(b" "), f"no SP before MSG: {tail[:20]!r}"
        msg = tail[1:]
        if msg.startswith(BOM):
            msg[3:].decode("utf-8")  # MSG-UTF8: must be valid UTF-8 (raises otherwise)
        out["msg"] = msg
    else:
        out["msg"] = b""
    return out


def audit_params(parsed: dict, sd_id: str = DEFAULT_SD_ID) -> dict:
    d = dict(parsed["sd"])
    assert sd_id in d, parsed["sd"]
    return d[sd_id]


# -- format_message -------------------------------------------------------------------------

TS = 1_773_479_553_123_456  # 2026-03-14T09:12:33.123456Z


def entry(seq=7, **kw) -> Entry:
    f = dict(
        node="gw1",
        seq=seq,
        ts=TS,
        user="alice",
        action="config.filter_update",
        target="filter-12",
        domain="example.org",
        ip="192.0.2.10",
        user_agent="Mozilla/5.0",
        success=True,
        details={"old": "block", "new": "quarantine"},
        signature=bytes(range(32)),
    )
    f.update(kw)
    return Entry.of(**f)


def test_header_fields_and_structured_data():
    e = entry()
    raw = format_message(e)
    p = parse_rfc5424(raw)
    assert (p["facility"], p["severity"]) == (13, 6)  # log audit, informational
    assert raw.startswith(b"<110>1 ")
    assert p["version"] == 1
    assert p["timestamp"] == "2026-03-14T09:12:33.123456Z" == format_ts(TS)
    assert p["hostname"] == "gw1"
    assert p["app_name"] == "auditlog"
    assert p["procid"] == "-"
    assert p["msgid"] == "config.filter_update"
    assert [s for s, _ in p["sd"]] == ["audit@32473", "meta"]
    # RFC 5424 7.3.1: the entry's seq as the meta sequenceId, so a receiver sees gaps
    assert dict(p["sd"])["meta"] == {"sequenceId": "7"}
    params = audit_params(p)
    assert params["id"] == "gw1:7" and params["node"] == "gw1" and params["seq"] == "7"
    assert params["user"] == "alice" and params["action"] == "config.filter_update"
    assert params["target"] == "filter-12" and params["domain"] == "example.org"
    assert params["ip"] == "192.0.2.10" and params["user_agent"] == "Mozilla/5.0"
    assert params["success"] == "true" and params["integrity"] == "ok"
    assert params["signature"] == bytes(range(32)).hex()
    assert json.loads(params["details"]) == {"old": "block", "new": "quarantine"}
    assert "truncated" not in params
    assert p["msg"].startswith(BOM)
    assert p["msg"][3:].decode() == "alice config.filter_update succeeded on filter-12 from 192.0.2.10"


def test_sequence_id_is_the_seq_and_wraps_where_rfc_5424_says():
    from auditlog.export.syslog import MAX_SEQUENCE_ID, sequence_id

    assert [sequence_id(s) for s in (1, 2, MAX_SEQUENCE_ID, MAX_SEQUENCE_ID + 1, 2 * MAX_SEQUENCE_ID + 5)] == [
        1,
        2,
        MAX_SEQUENCE_ID,
        1,
        5,
    ]
    # kept when a message is cut down to fit UDP
    p = parse_rfc5424(format_message(entry(details={"x": "y" * 5000}), max_bytes=600))
    assert b'[meta sequenceId="7"]' in format_message(entry(details={"x": "y" * 5000}), max_bytes=600)
    assert "meta" in [s for s, _ in p["sd"]]


def test_severity_follows_outcome_security_and_integrity():
    sev = lambda e: parse_rfc5424(format_message(e))["severity"]  # noqa: E731
    assert sev(entry()) == 6
    assert sev(entry(success=False, action="auth.login_failed")) == 5
    assert sev(entry(action="security.brute_force_detected")) == 4
    assert sev(entry(integrity="violation", violation="bad signature")) == 1
    p = parse_rfc5424(format_message(entry(integrity="violation", violation="bad signature")))
    assert audit_params(p)["integrity"] == "violation" and audit_params(p)["violation"] == "bad signature"
    failed = parse_rfc5424(format_message(entry(success=False)))
    assert audit_params(failed)["success"] == "false" and b"FAILED" in failed["msg"]


def test_optional_fields_absent_not_empty():
    p = parse_rfc5424(format_message(entry(target=None, domain=None, ip=None, user_agent=None, details={})))
    params = audit_params(p)
    for k in ("target", "domain", "ip", "user_agent", "details"):
        assert k not in params, (k, params)
    assert p["msg"][3:].decode() == "alice config.filter_update succeeded"


def test_sd_id_is_configurable_and_checked():
    p = parse_rfc5424(format_message(entry(), sd_id="acme@12345"))
    assert [s for s, _ in p["sd"]] == ["acme@12345", "meta"]
    assert audit_params(p, "acme@12345")["id"] == "gw1:7"
    assert check_sd_id("acme@12345") == "acme@12345"
    for bad in ("audit", "audit@", "@32473", "au dit@1", 'a"b@1', "a]b@1", "a=b@1", "audit@x1", "x" * 30 + "@123"):
        with pytest.raises(ExportError):
            check_sd_id(bad)


def test_param_values_escaped():
    nasty = 'a"b\\c]d [x="y"] \\\\'
    e = entry(target=nasty, user='eve"]', details={"k": 'v"]\\'}, user_agent='UA ]"\\')
    raw = format_message(e)
    assert b'target="a\\"b\\\\c\\]d [x=\\"y\\"\\] \\\\\\\\"' in raw
    params = audit_params(parse_rfc5424(raw))
    assert params["target"] == nasty
    assert params["user"] == 'eve"]'
    assert params["user_agent"] == 'UA ]"\\'
    assert json.loads(params["details"]) == {"k": 'v"]\\'}


def test_bom_and_utf8_msg():
    e = entry(user="jürgen", target="Überweisung 請求書 📧", details={"subject": "Grüße"})
    raw = format_message(e)
    p = parse_rfc5424(raw)
    assert p["msg"].startswith(BOM)
    text = p["msg"][3:].decode("utf-8")
    assert text == "jürgen config.filter_update succeeded on Überweisung 請求書 📧 from 192.0.2.10"
    params = audit_params(p)
    assert params["user"] == "jürgen" and params["target"] == "Überweisung 請求書 📧"
    assert json.loads(params["details"]) == {"subject": "Grüße"}  # not \u-escaped: real UTF-8
    assert "Grüße".encode() in raw


def test_udp_size_cap_truncates_details_and_flags_it():
    big = {"blob": "x" * 20000, "subject": "ü" * 500}
    e = entry(details=big)
    whole = format_message(e)
    assert len(whole) > 20000
    for cap in (8192, 2048, 480):
        raw = format_message(e, max_bytes=cap)
        assert len(raw) <= cap, (cap, len(raw))
        p = parse_rfc5424(raw)
        params = audit_params(p)
        assert params["truncated"] == "true"
        assert "details" not in params
        assert params["id"] == "gw1:7" and params["signature"] == bytes(range(32)).hex()
    # a message under the cap is untouched
    small = entry()
    assert format_message(small, max_bytes=8192) == format_message(small)
    assert "truncated" not in audit_params(parse_rfc5424(format_message(small, max_bytes=8192)))


def test_udp_size_cap_with_huge_fields_stays_valid():
    """The identifying params fit even when target and user agent alone exceed the cap:
    the result is still valid RFC 5424 (no cut through the structured data or a UTF-8 sequence)."""
    e = entry(target="ä" * 1000, user_agent="Mozilla/5.0 " + "é" * 2000, user="u" * 1000, details={"blob": "x" * 5000})
    for cap in (480, 1000, 2048):
        raw = format_message(e, max_bytes=cap)
        assert len(raw) <= cap, (cap, len(raw))
        p = parse_rfc5424(raw)
        params = audit_params(p)
        assert params["truncated"] == "true"
        assert params["id"] == "gw1:7" and params["seq"] == "7" and params["action"] == "config.filter_update"
        assert params["signature"] == bytes(range(32)).hex()


# -- the forwarder against a receiver that drops what its kernel acknowledged -------------------


def _frames(buf: bytes) -> list[bytes]:
    """Complete RFC 6587 octet-counted frames in buf (a partial last one is left out)."""
    out, i = [], 0
    while True:
        sp = buf.find(b" ", i)
        if sp < 0:
            return out
        n = int(buf[i:sp])
        if sp + 1 + n > len(buf):
            return out
        out.append(buf[sp + 1 : sp + 1 + n])
        i = sp + 1 + n


def test_forwarder_resends_what_a_reset_receiver_never_read(make_service):
    """A receiver stops reading, its kernel still acknowledges everything (so the cursor reaches
    the head and the forwarder goes idle), then it is reset with that data unread, as rsyslog
    on SIGTERM.  Plain TCP syslog has no
    application acknowledgement: the forwarder must send the last bytes of the lost connection
    again, and notice the reset while idle, or those entries are never delivered."""
    import socket
    import struct

    from auditlog.engine.entry import EntryDraft
    from auditlog.export.syslog import SyslogSettings
    from auditlog.query.node import forwarder

    service = make_service()
    service.writer.append_batch(
        [EntryDraft("alice", "config.filter_update", f"f-{i}", details={"n": i}) for i in range(120)]
    )
    head = service.writer.next_seq - 1
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 18)  # room for every entry, unread
    srv.bind(("127.0.0.1", 0))
    srv.listen(4)
    srv.settimeout(15)
    fwd = forwarder(service, SyslogSettings(target=f"tcp://127.0.0.1:{srv.getsockname()[1]}"), batch=10)
    service.syslog = fwd  # stopped by service.close() at teardown
    fwd.start()
    try:
        conn1, _ = srv.accept()
        conn1.settimeout(10)
        buf = b""
        while len(_frames(buf)) < 30:
            buf += conn1.recv(2048)
        read = {audit_params(parse_rfc5424(m))["id"] for m in _frames(buf)}
        last_read = max(int(i.split(":")[1]) for i in read)
        deadline = time.monotonic() + 10
        while fwd.cursor < head:  # all sent and acknowledged by the kernel; most never read
            assert time.monotonic() < deadline, (fwd.cursor, last_read)
            time.sleep(0.01)
        assert last_read < head - 50
        time.sleep(0.6)  # the forwarder is idle now: nothing new to send
        conn1.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        conn1.close()  # reset, the unread bytes gone
        srv.settimeout(5)  # noticed while idle, without a new entry
        conn2, _ = srv.accept()
        conn2.settimeout(10)
        buf2 = b""
        want = {f"node-a:{s}" for s in range(1, head + 1)}
        got = set(read)
        while not want <= got:
            chunk = conn2.recv(65536)
            assert chunk, f"connection closed with {len(want - got)} entries missing"
            buf2 += chunk
            got |= {audit_params(parse_rfc5424(m))["id"] for m in _frames(buf2)}
        conn2.close()
        assert fwd.errors >= 1 and fwd.last_error
    finally:
        fwd.stop()
        srv.close()


# -- end to end: auditlog serve -> rsyslog -----------------------------------------------------


def write_events(path: Path, n: int, start: int = 0) -> Path:
    with open(path, "w") as f:
        for i in range(start, start + n):
            f.write(
                json.dumps(
                    {
                        "user": f"user{i % 7}",
                        "action": "config.filter_update",
                        "target": f"filter-{i}",
                        "domain": "example.org",
                        "ip": "192.0.2.10",
                        "user_agent": "pytest",
                        "success": i % 11 != 0,
                        "details": {"n": i, "q": 'quote " ] \\'},
                    }
                )
                + "\n"
            )
    return path


class Node(ServeProcess):
    """``auditlog --data-dir D --config C serve --listen 127.0.0.1:PORT``."""

    def __init__(self, data_dir: Path, config: Path, port: int | None = None):
        import subprocess

        self.data_dir = Path(data_dir)
        self.port = port or free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.stderr_path = self.data_dir.parent / f"serve-{self.port}-{time.monotonic_ns()}.stderr"
        self._stderr = open(self.stderr_path, "wb")
        self.proc = subprocess.Popen(
            [
                AUDITLOG,
                "--data-dir",
                str(self.data_dir),
                "--config",
                str(config),
                "serve",
                "--listen",
                f"127.0.0.1:{self.port}",
            ],
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            stdin=subprocess.DEVNULL,
            env=clean_env(),
        )
        self.stdout_lines = []
        self._reader = threading.Thread(target=self._read_stdout, daemon=True)
        self._reader.start()


def setup_node(tmp_path: Path, syslog_table: str, n_initial: int) -> tuple[Path, Path, dict]:
    """A data dir with n_initial events and writer/reader keys, and a config with [syslog]."""
    data = tmp_path / "data"
    r = run_cli(data, "init", "--node-id", "gw1")
    assert r.returncode == 0, r.stderr
    if n_initial:
        r = run_cli(data, "append", "--file", str(write_events(tmp_path / "initial.ndjson", n_initial)))
        assert r.returncode == 0 and r.stdout.strip() == str(n_initial), r.stderr
    keys = {}
    for role in ("writer", "reader"):
        r = run_cli(data, "apikey", "create", "--role", role, "--name", f"t-{role}")
        assert r.returncode == 0, r.stderr
        keys[role] = r.stdout.strip().splitlines()[-1]
    cfg = tmp_path / "auditlog.toml"
    cfg.write_text(f'node_id = "gw1"\nfsync = "none"\n\n[syslog]\n{syslog_table}\n')
    return data, cfg, keys


def log_entries(node: Node, key: str) -> dict[str, dict]:
    status, _, body = node.request("/api/v1/audit-log?format=ndjson", key)
    assert status == 200
    out = {}
    for line in body.decode().splitlines():
        d = json.loads(line)
        if "id" in d:
            out[d["id"]] = d
    return out


def received(rs: Rsyslog) -> tuple[dict[str, list[dict]], list[dict]]:
    """{id: [params of each arrival]}, and every message parsed (strictly) from the raw bytes."""
    by_id: dict[str, list[dict]] = {}
    parsed = []
    for m in rs.messages():
        p = parse_rfc5424(m["raw"].encode("utf-8"))
        # rsyslog's own RFC 5424 parser agrees
        assert m["version"] == "1" and m["app"] == p["app_name"] and m["msgid"] == p["msgid"], m
        assert m["host"] == p["hostname"], m
        p["rsyslog_sd"] = m["sd"]
        parsed.append(p)
        by_id.setdefault(audit_params(p)["id"], []).append(p)
    return by_id, parsed


def check_against_log(p: dict, e: dict) -> None:
    params = audit_params(p)
    assert params["id"] == e["id"] and params["seq"] == str(e["seq"]) and params["node"] == e["node"]
    assert params["user"] == e["user"] and params["action"] == e["action"]
    assert params.get("target") == e["target"] and params.get("domain") == e["domain"]
    assert params.get("ip") == e["ip"] and params.get("user_agent") == e["user_agent"]
    assert params["success"] == ("true" if e["success"] else "false")
    assert params["signature"] == e["signature"] and params["integrity"] == e["integrity"] == "ok"
    if e["details"]:
        assert json.loads(params["details"]) == e["details"]
    assert p["timestamp"] == e["ts"] and p["hostname"] == e["node"] and p["msgid"] == e["action"]
    assert p["severity"] == (6 if e["success"] else 5)


def wait_seqs(rs: Rsyslog, head: int, timeout: float = 30) -> dict[str, list[dict]]:
    want = {f"gw1:{s}" for s in range(1, head + 1)}
    rs.wait_for(lambda msgs: want <= {_id_of(m) for m in msgs}, timeout=timeout)
    return received(rs)[0]


def _id_of(m: dict) -> str | None:
    g = re.search(r'\[audit@32473 id="([^"]+)"', m["raw"])
    return g.group(1) if g else None


def syslog_status(node: Node, key: str) -> dict:
    status, body = node.json("/api/v1/cluster", key)
    assert status == 200, body
    return next(r for r in body["nodes"] if r["node"] == "gw1")["syslog"]


def metric(node: Node, name: str) -> float:
    status, _, body = node.request("/metrics")
    assert status == 200
    for line in body.decode().splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in /metrics:\n{body.decode()[:2000]}")


def wait_caught_up(node: Node, key: str, timeout: float = 30) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        st = syslog_status(node, key)
        if st["lag"] == 0 and st["connected"]:
            return st
        assert time.monotonic() < deadline, st
        time.sleep(0.1)


class Poster:
    """Posts batches of events over HTTP in a thread until stopped; retries on connection errors
    (the node may be restarting) so that no batch is silently lost."""

    def __init__(self, node_ref: list, key: str, batch: int = 10, pause: float = 0.02):
        self.node_ref, self.key, self.batch, self.pause = node_ref, key, batch, pause
        self.posted = 0
        self.i = 100_000
        self._stop = threading.Event()
        self.error: BaseException | None = None
        self.t = threading.Thread(target=self._run, daemon=True)

    def start(self) -> Poster:
        self.t.start()
        return self

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                events = [
                    {"user": "poster", "action": "auth.login", "ip": "198.51.100.7", "details": {"n": self.i + k}}
                    for k in range(self.batch)
                ]
                body = json.dumps(events).encode()
                while not self._stop.is_set():
                    node = self.node_ref[0]
                    try:
                        req = urllib.request.Request(
                            node.base + "/api/v1/events",
                            data=body,
                            method="POST",
                            headers={**bearer(self.key), "Content-Type": "application/json"},
                        )
                        with urllib.request.urlopen(req, timeout=10) as r:
                            assert r.status == 201
                        self.posted += self.batch
                        self.i += self.batch
                        break
                    except (OSError, urllib.error.URLError):
                        time.sleep(0.05)
                time.sleep(self.pause)
        except BaseException as e:  # pragma: no cover - reported by stop()
            self.error = e

    def stop(self) -> int:
        self._stop.set()
        self.t.join(15)
        assert self.error is None, self.error
        return self.posted


@pytest.fixture
def rsyslog_tcp(tmp_path):
    require_rsyslogd()
    rs = Rsyslog(tmp_path / "rsyslog", "tcp")
    rs.start()
    yield rs
    rs.close()


@pytest.mark.e2e
def test_tcp_every_entry_arrives_through_receiver_and_node_restarts(tmp_path, rsyslog_tcp):
    rs = rsyslog_tcp
    n = 2000
    data, cfg, keys = setup_node(tmp_path, f'target = "{rs.target}"', n)
    node = Node(data, cfg)
    nodes = [node]
    try:
        node.wait_ready()
        head0 = node.json("/api/v1/cluster", keys["reader"])[1]["nodes"][0]["head_seq"]
        assert head0 >= n
        by_id = wait_seqs(rs, head0)
        log = log_entries(node, keys["reader"])
        for s in range(1, head0 + 1):
            arrivals = by_id[f"gw1:{s}"]
            assert len(arrivals) == 1, (s, len(arrivals))  # no restart yet: exactly once
            check_against_log(arrivals[0], log[f"gw1:{s}"])
        # rsyslog's parser found our SD element too
        assert all(p["rsyslog_sd"].startswith('[audit@32473 id="gw1:') for p in received(rs)[1])
        st = wait_caught_up(node, keys["reader"])
        assert st["cursor_seq"] >= head0 and st["target"] == rs.target
        assert metric(node, "auditlog_syslog_lag_entries") == 0
        assert metric(node, "auditlog_syslog_connected") == 1
        # the forwarder moves its cursor, then counts what it sent, then saves the cursor:
        # the count and the file are polled, not read once
        deadline = time.monotonic() + 10
        while True:
            st = syslog_status(node, keys["reader"])
            cursor_file = json.loads((data / "state" / "syslog_cursor.json").read_text())
            if st["sent"] >= head0 and cursor_file["data"]["seq"] >= head0:
                break
            assert time.monotonic() < deadline, (st, cursor_file["data"])
            time.sleep(0.05)
        assert cursor_file["name"] == "syslog_cursor" and len(cursor_file["mac"]) == 64  # sealed
        assert cursor_file["data"]["target"] == rs.target and cursor_file["data"]["seq"] >= head0

        poster = Poster(nodes, keys["writer"]).start()
        try:
            # 1. the node restarts mid-stream: the forwarder resumes from its cursor
            deadline = time.monotonic() + 20
            while syslog_status(node, keys["reader"])["cursor_seq"] < head0 + 50:
                assert time.monotonic() < deadline, "posted events are not being forwarded"
                time.sleep(0.05)
            assert node.terminate() == 0, node.stderr()
            saved = json.loads((data / "state" / "syslog_cursor.json").read_text())["data"]["seq"]
            assert saved > head0
            node = Node(data, cfg, port=node.port)
            nodes[0] = node
            node.wait_ready()
            time.sleep(0.7)
            wait_caught_up(node, keys["reader"])
            cursor = syslog_status(node, keys["reader"])["cursor_seq"]
            by_id = wait_seqs(rs, cursor)
            # resumed from the cursor, not from seq 1: nothing before the restart came
            # twice, except at most the one batch in flight when it stopped
            assert all(len(by_id[f"gw1:{s}"]) == 1 for s in range(1, head0 + 1))
            dups_node_restart = sum(len(v) - 1 for v in by_id.values())
            assert dups_node_restart <= 500, dups_node_restart

            # 2. the receiver goes away while events keep coming, and comes back ~1 s later
            rs.stop()
            # the forwarder notices at its next send (not after an ack timeout) and lags
            # (8 s: below the forwarder's 10 s wait for an acknowledgement)
            down_deadline = time.monotonic() + 8
            while metric(node, "auditlog_syslog_lag_entries") == 0 or metric(node, "auditlog_syslog_connected"):
                assert time.monotonic() < down_deadline, "receiver outage not noticed within 8 s"
                time.sleep(0.05)
            st = syslog_status(node, keys["reader"])
            assert not st["connected"] and st["lag"] > 0 and st["errors"] > 0 and st["last_error"]
            time.sleep(0.7)
            rs.start()
            time.sleep(0.7)
        finally:
            posted = poster.stop()
        assert posted > 0
        wait_caught_up(node, keys["reader"], timeout=45)
        head = node.json("/api/v1/cluster", keys["reader"])[1]["nodes"][0]["head_seq"]
        assert head >= head0 + posted
        by_id = wait_seqs(rs, head)
        assert wait_caught_up(node, keys["reader"])["cursor_seq"] >= head
        log = log_entries(node, keys["reader"])
        for s in range(1, head + 1):  # every entry arrived, intact (duplicates allowed)
            for p in by_id[f"gw1:{s}"]:
                check_against_log(p, log[f"gw1:{s}"])
        assert all(len(by_id[f"gw1:{s}"]) == 1 for s in range(1, head0 + 1))
    finally:
        node.close()
        assert "Traceback" not in node.stderr(), node.stderr()


@pytest.mark.e2e
def test_tls_forwarding_to_rsyslog_tls_input(tmp_path):
    require_gtls()
    tls = make_tls_files(tmp_path / "tls")
    rs = Rsyslog(tmp_path / "rsyslog", "tls", tls)
    rs.start()
    try:
        n = 300
        data, cfg, keys = setup_node(
            tmp_path, f'target = "{rs.target}"\nca = "{tls["ca"]}"\nsd_id = "gwaudit@32473"', n
        )
        node = Node(data, cfg)
        try:
            node.wait_ready()
            st = wait_caught_up(node, keys["reader"])
            head = st["cursor_seq"]
            assert head >= n
            want = {f"gw1:{s}" for s in range(1, head + 1)}
            msgs = rs.wait_for(lambda ms: want <= {re.search(r'id="([^"]+)"', m["raw"]).group(1) for m in ms})
            assert {m["input"] for m in msgs} == {"tls"}
            log = log_entries(node, keys["reader"])
            for m in msgs:
                p = parse_rfc5424(m["raw"].encode())
                params = audit_params(p, "gwaudit@32473")
                e = log[params["id"]]
                assert params["signature"] == e["signature"] and params["user"] == e["user"]
                assert m["sd"].startswith("[gwaudit@32473 ")
        finally:
            node.close()
    finally:
        rs.close()


@pytest.mark.e2e
def test_tls_forwarding_refuses_an_unknown_ca(tmp_path):
    """The forwarder checks rsyslog's certificate: with another CA nothing is sent."""
    require_gtls()
    tls = make_tls_files(tmp_path / "tls")
    other = make_tls_files(tmp_path / "other")
    rs = Rsyslog(tmp_path / "rsyslog", "tls", tls)
    rs.start()
    try:
        data, cfg, keys = setup_node(tmp_path, f'target = "{rs.target}"\nca = "{other["ca"]}"', 20)
        node = Node(data, cfg)
        try:
            node.wait_ready()
            deadline = time.monotonic() + 10
            while True:
                st = syslog_status(node, keys["reader"])
                if st["errors"] and st["last_error"]:
                    break
                assert time.monotonic() < deadline, st
                time.sleep(0.1)
            assert not st["connected"] and st["cursor_seq"] == 0 and st["lag"] >= 20
            assert "certificate" in st["last_error"].lower() or "SSL" in st["last_error"], st
            assert rs.messages() == []
        finally:
            node.close()
    finally:
        rs.close()


@pytest.mark.e2e
def test_udp_big_message_truncated_under_cap_normal_ones_intact(tmp_path):
    require_rsyslogd()
    rs = Rsyslog(tmp_path / "rsyslog", "udp")
    rs.start()
    try:
        data, cfg, keys = setup_node(tmp_path, f'target = "{rs.target}"\nudp_max_bytes = 4096', 0)
        events = tmp_path / "udp.ndjson"
        big = {"subject": "Grüße " * 100, "blob": "x" * 14000}
        with open(events, "w") as f:
            f.write(
                json.dumps(
                    {"user": "alice", "action": "config.filter_update", "target": "small-1", "details": {"n": 1}}
                )
                + "\n"
            )
            f.write(
                json.dumps({"user": "alice", "action": "config.filter_update", "target": "big", "details": big}) + "\n"
            )
            f.write(
                json.dumps(
                    {"user": "alice", "action": "config.filter_update", "target": "small-2", "details": {"n": 2}}
                )
                + "\n"
            )
        r = run_cli(data, "append", "--file", str(events))
        assert r.returncode == 0, r.stderr
        node = Node(data, cfg)
        try:
            node.wait_ready()
            st = wait_caught_up(node, keys["reader"])
            head = st["cursor_seq"]
            msgs = rs.wait_for(lambda ms: len(ms) >= head, timeout=15)
            by_target = {}
            for m in msgs:
                raw = m["raw"].encode()
                assert len(raw) <= 4096, len(raw)
                p = parse_rfc5424(raw)
                by_target[audit_params(p).get("target")] = audit_params(p)
            assert by_target["big"]["truncated"] == "true" and "details" not in by_target["big"]
            assert by_target["big"]["id"].startswith("gw1:")
            for t, n in (("small-1", 1), ("small-2", 2)):
                assert "truncated" not in by_target[t] and json.loads(by_target[t]["details"]) == {"n": n}
            assert {m["input"] for m in msgs} == {"udp"}
        finally:
            node.close()
    finally:
        rs.close()


@pytest.fixture
def rsyslog_relp(tmp_path):
    from helpers_rsyslog import require_relp

    require_relp()
    rs = Rsyslog(tmp_path / "rsyslog", "relp")
    rs.start()
    yield rs
    rs.close()


@pytest.mark.e2e
def test_relp_every_entry_arrives_acknowledged_through_receiver_restarts(tmp_path, rsyslog_relp):
    # RELP: the cursor moves only past what rsyslog's imrelp answered "200 OK" for, so a
    # receiver restart loses nothing and duplicates are bounded by the window in flight
    from auditlog.export.relp import WINDOW

    rs = rsyslog_relp
    n = 1500
    data, cfg, keys = setup_node(tmp_path, f'target = "{rs.target}"', n)
    node = Node(data, cfg)
    try:
        node.wait_ready()
        head0 = node.json("/api/v1/cluster", keys["reader"])[1]["nodes"][0]["head_seq"]
        by_id = wait_seqs(rs, head0)
        log = log_entries(node, keys["reader"])
        for s in range(1, head0 + 1):
            assert len(by_id[f"gw1:{s}"]) == 1, s  # exactly once while nothing fails
            check_against_log(by_id[f"gw1:{s}"][0], log[f"gw1:{s}"])
        st = wait_caught_up(node, keys["reader"])
        assert st["target"] == rs.target and st["connected"] and st["cursor_seq"] >= head0
        poster = Poster([node], keys["writer"]).start()
        try:
            for _ in range(2):  # the receiver stops and comes back, twice, while events keep coming
                time.sleep(0.5)
                rs.stop()
                deadline = time.monotonic() + 8  # below the 10 s wait for an acknowledgement
                while metric(node, "auditlog_syslog_connected"):
                    assert time.monotonic() < deadline, "receiver outage not noticed within 8 s"
                    time.sleep(0.05)
                time.sleep(0.5)
                rs.start()
        finally:
            posted = poster.stop()
        assert posted > 0
        wait_caught_up(node, keys["reader"], timeout=45)
        head = node.json("/api/v1/cluster", keys["reader"])[1]["nodes"][0]["head_seq"]
        by_id = wait_seqs(rs, head)
        log = log_entries(node, keys["reader"])
        for s in range(1, head + 1):  # every entry arrived, intact
            assert by_id[f"gw1:{s}"], s
            for p in by_id[f"gw1:{s}"]:
                check_against_log(p, log[f"gw1:{s}"])
        dups = sum(len(v) - 1 for v in by_id.values())
        assert dups <= 2 * WINDOW, dups  # at most what was in flight at each of the two stops
    finally:
        node.close()
