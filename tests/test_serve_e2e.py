"""``auditlog serve`` as a real process: start, demo key, query, export, SIGTERM, single
writer, ``apikey`` refused while serving, and memory that stays flat while streaming."""

from __future__ import annotations

import csv
import io
import json
import re
import threading
import time
import urllib.request

import pytest
from helpers_http import ServeProcess, rss_kib, run_cli


@pytest.fixture
def served(tmp_path):
    """A demo server on a fresh data dir (initialised by serve itself)."""
    data = tmp_path / "data"
    srv = ServeProcess(data, "--demo")
    try:
        srv.wait_ready()
        yield srv
    finally:
        srv.close()


def test_serve_demo_query_export_and_sigterm(served, tmp_path):
    key = served.last_stdout_line()
    assert key.startswith("alk_"), served.stdout_lines
    assert "demo" in served.stderr()

    status, health = served.json("/healthz")
    assert status == 200 and health["status"] == "ok"
    node = health["node"]

    status, page = served.json("/api/v1/audit-log?limit=50", key)
    assert status == 200
    assert len(page["events"]) == 50 and page["next_cursor"]
    assert page["nodes"] == {node: {"status": "ok"}} and page["integrity_violations"] == 0
    assert [e["seq"] for e in page["events"]] == list(range(1, 51))

    # a filter the demo data answers: failed logins
    status, failed = served.json("/api/v1/audit-log?action=auth.login_failed&success=false&limit=10000", key)
    assert status == 200 and failed["events"]
    assert all(e["action"] == "auth.login_failed" and not e["success"] for e in failed["events"])

    # the demo key is a reader: no writes, no key management
    status, err = served.json(
        "/api/v1/events", key, method="POST", body=b"[]", headers={"Content-Type": "application/json"}
    )
    assert status == 403 and err["error"]["status"] == 403
    assert served.json("/api/v1/api-keys", key)[0] == 403
    assert served.json("/api/v1/audit-log", None)[0] == 401

    status, headers, body = served.request("/api/v1/audit-log/export.csv?action=config.*", key)
    assert status == 200
    assert headers["Content-Disposition"].startswith("attachment")
    assert body.startswith(b"\xef\xbb\xbf")
    rows = list(csv.reader(io.StringIO(body.decode("utf-8")[1:], newline="")))
    assert rows[0][:3] == ["timestamp", "node_id", "seq"]
    assert len(rows) > 1 and all(r[4].startswith("config.") for r in rows[1:])
    n_rows = len(rows) - 1

    deadline = time.monotonic() + 30  # the export is recorded once its body has ended
    while time.monotonic() < deadline:
        _, exp = served.json("/api/v1/audit-log?action=audit.export", key)
        if exp["events"]:
            break
        time.sleep(0.05)
    assert [e["details"]["rows"] for e in exp["events"]] == [n_rows]

    _, cluster = served.json("/api/v1/cluster", key)
    head = cluster["nodes"][0]["head_seq"]
    assert head > n_rows

    # SIGTERM: a prompt, clean exit
    t0 = time.monotonic()
    assert served.terminate(timeout=15) == 0, served.stderr()
    assert time.monotonic() - t0 < 10
    assert "Traceback" not in served.stderr()

    v = run_cli(served.data_dir, "verify", "--json")
    assert v.returncode == 0, (v.stdout, v.stderr)
    report = json.loads(v.stdout)
    assert report["ok"] is True and report["violations"] == []
    # everything served is on disk (plus the key-use entries flushed at shutdown)
    assert report["entries_checked"] >= head
    q = run_cli(served.data_dir, "query", "--format", "ndjson", "--action", "auth.api_key_used")
    used = [json.loads(line) for line in q.stdout.splitlines()]
    assert used and all(key not in line for line in q.stdout.splitlines())
    assert sum(e["details"]["count"] for e in used) >= 6


def test_second_writer_and_apikey_refused_while_serving(served):
    key = served.last_stdout_line()
    second = ServeProcess(served.data_dir)
    try:
        rc = second.proc.wait(30)
        err = second.stderr()
    finally:
        second.close()
    assert rc == 2, err
    # one clear line: another writer holds this data dir
    assert re.search(r"another auditlog (process|writer)", err), err
    assert "writ" in err and str(served.data_dir) in err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("auditlog: error:")

    p = run_cli(served.data_dir, "apikey", "create", "--role", "reader", "--name", "sneaky")
    assert p.returncode == 2, (p.stdout, p.stderr)
    assert "/api/v1/api-keys" in p.stderr and "Traceback" not in p.stderr
    assert p.stdout.strip() == ""
    assert "sneaky" not in (served.data_dir / "state" / "api_keys.json").read_text()
    key_id = key.split("_")[1]
    p = run_cli(served.data_dir, "apikey", "revoke", key_id)
    assert p.returncode == 2 and "/api/v1/api-keys" in p.stderr
    # an export while serving: pointed to the HTTP route of the same export, nothing written
    out = served.data_dir.parent / "x.csv"
    p = run_cli(served.data_dir, "export", "csv", "--action", "config.*", "-o", str(out))
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert "/api/v1/audit-log/export.csv?action=config.%2A" in p.stderr, p.stderr
    assert not out.exists() and not list(served.data_dir.parent.glob("x.csv*"))
    p = run_cli(served.data_dir, "export", "ecs", "-o", str(out))
    assert p.returncode == 2 and "/api/v1/audit-log?format=ecs" in p.stderr

    # the first server is unharmed and the key still works
    assert served.json("/api/v1/audit-log?limit=1", key)[0] == 200
    assert served.terminate() == 0


@pytest.mark.slow
def test_ndjson_stream_of_a_big_range_keeps_rss_flat(tmp_path):
    n = 300_000
    data = tmp_path / "big"
    assert run_cli(data, "init", "--node-id", "big").returncode == 0
    src = tmp_path / "events.ndjson"
    with open(src, "w") as f:
        for i in range(n):
            f.write(
                json.dumps(
                    {
                        "user": f"user{i % 50}",
                        "action": "config.filter_update",
                        "target": f"filter-{i}",
                        "domain": "example.org",
                        "ip": f"192.0.2.{i % 250}",
                        "details": {"n": i, "old": "block", "new": "quarantine"},
                    }
                )
                + "\n"
            )
    p = run_cli(data, "append", "--file", str(src), timeout=300)
    assert p.returncode == 0 and p.stdout.strip() == str(n), p.stderr
    src.unlink()

    k = run_cli(data, "apikey", "create", "--role", "reader", "--name", "siem")
    assert k.returncode == 0, k.stderr
    key = k.stdout.strip().splitlines()[-1]  # the key is the last stdout line
    srv = ServeProcess(data)
    try:
        srv.wait_ready()
        # warm up (imports, first scan), then measure
        assert srv.request("/api/v1/audit-log?format=ndjson&limit=10", key)[0] == 200
        base = rss_kib(srv.pid)
        base_anon = rss_kib(srv.pid, "RssAnon")
        peak = {"VmRSS": base, "RssAnon": base_anon}
        done = threading.Event()

        def sample():
            while not done.is_set():
                for f in peak:
                    peak[f] = max(peak[f], rss_kib(srv.pid, f))
                time.sleep(0.02)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        req = urllib.request.Request(
            srv.base + "/api/v1/audit-log?format=ndjson", headers={"Authorization": f"Bearer {key}"}
        )
        lines = 0
        size = 0
        last = b""
        try:
            with urllib.request.urlopen(req, timeout=120) as r:
                assert r.status == 200
                assert r.headers.get("Content-Length") is None  # streamed, not buffered
                while chunk := r.read(1 << 16):
                    lines += chunk.count(b"\n")
                    size += len(chunk)
                    last = (last + chunk)[-4096:]
        finally:
            done.set()
            sampler.join()
        assert lines == n + 1  # + the apikey create entry
        assert json.loads(last.rstrip(b"\n").rsplit(b"\n", 1)[-1])["seq"] == n + 1
        assert size > 100 * 1024 * 1024, "the stream should dwarf the RSS bound"
        for f in peak:
            peak[f] = max(peak[f], rss_kib(srv.pid, f))
        # Memory the server owns (anonymous pages) stays flat: a buffered answer would
        # hold the 100+ MB of output, or far more as Python objects.
        anon_mb = (peak["RssAnon"] - base_anon) / 1024
        assert anon_mb < 60, f"server anonymous RSS grew by {anon_mb:.1f} MB streaming {size >> 20} MB"
        # VmRSS also counts the segment file's pages mapped while it is scanned
        # (page cache, dropped when the scan is done): allow at most one segment for them.
        biggest_seg_mb = max(p.stat().st_size for p in (data / "segments").glob("*.seg")) / 2**20
        vm_mb = (peak["VmRSS"] - base) / 1024
        assert vm_mb < 60 + biggest_seg_mb, f"server RSS grew by {vm_mb:.1f} MB streaming {size >> 20} MB"
        assert srv.terminate() == 0
    finally:
        srv.close()


@pytest.mark.parametrize(
    "listen",
    ["127.0.0.1:\u00b2", "127.0.0.1:99999", "127.0.0.1", "host:-1", "127.0.0.1:" + "9" * 5000],
    ids=["superscript", "too-big", "no-port", "negative", "huge"],
)
def test_serve_bad_listen_is_a_usage_error(tmp_path, listen):
    data = tmp_path / "never"
    p = run_cli(data, "serve", "--listen", listen, timeout=30)
    assert p.returncode == 2, (p.stdout, p.stderr)
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("auditlog: error:") and "listen" in lines[0], p.stderr
    assert not data.exists()  # refused before anything was initialised


def test_demo_prints_a_labelled_reader_writer_and_admin_key(served):
    reader = served.last_stdout_line()
    err = served.stderr()
    keys = dict(re.findall(r"auditlog:\s+(reader|writer|admin)\s+(alk_\S+)", err))
    assert set(keys) == {"reader", "writer", "admin"}, err
    assert keys["reader"] == reader
    # each does what its label says
    body = json.dumps([{"user": "demo", "action": "auth.login"}]).encode()
    status, ack = served.json(
        "/api/v1/events", keys["writer"], method="POST", body=body, headers={"Content-Type": "application/json"}
    )
    assert status == 201 and ack["appended"] == 1
    assert served.json("/api/v1/api-keys", keys["admin"])[0] == 200
    assert served.json("/api/v1/api-keys", keys["writer"])[0] == 403


def test_serve_on_a_port_in_use_writes_nothing(tmp_path):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        # a fresh data dir: not even initialised
        fresh = tmp_path / "fresh"
        r = run_cli(fresh, "serve", "--listen", f"127.0.0.1:{port}", "--demo")
        assert r.returncode == 2 and f"cannot listen on 127.0.0.1:{port}" in r.stderr, r.stderr
        assert "Traceback" not in r.stderr and not fresh.exists()
        # an existing one: not a byte changed, no entry appended
        data = tmp_path / "data"
        assert run_cli(data, "init", "--node-id", "gw1").returncode == 0
        before = {p: p.read_bytes() for p in data.rglob("*") if p.is_file()}
        r = run_cli(data, "serve", "--listen", f"127.0.0.1:{port}")
        assert r.returncode == 2 and "cannot listen" in r.stderr
        after = {p: p.read_bytes() for p in data.rglob("*") if p.is_file()}
        assert after == before
