"""Live tail: ``GET /api/v1/audit-log?follow=true`` (NDJSON until the client leaves,
heartbeats with a cursor that resumes, cluster-wide with a node that goes down named)
and ``auditlog query --follow`` (a real process following a log another process
appends to)."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import time

import pytest
from helpers_http import AUDITLOG, assert_error, bearer, clean_env, ev, post_events, run_cli


async def _next_lines(resp, want, timeout: float = 20.0) -> list[dict]:
    """Lines of the stream until ``want(lines)`` holds."""
    got: list[dict] = []
    deadline = time.monotonic() + timeout
    while not want(got):
        left = deadline - time.monotonic()
        assert left > 0, got
        line = await asyncio.wait_for(resp.content.readline(), left)
        assert line, "the stream ended"
        got.append(json.loads(line))
    return got


async def test_follow_streams_new_entries_heartbeats_and_resumes(client, keys, service):
    h = bearer(keys["reader"])
    assert (await post_events(client, keys["writer"], [ev(i) for i in range(3)])).status == 201
    resp = await client.get("/api/v1/audit-log", headers=h, params={"follow": "true", "action": "config.*"})
    assert resp.status == 200 and resp.content_type == "application/x-ndjson"
    # from now: what was there before is not sent; new matches are
    await asyncio.sleep(0.3)
    assert (await post_events(client, keys["writer"], [ev(10 + i) for i in range(4)])).status == 201
    lines = await _next_lines(resp, lambda got: any("heartbeat" in x for x in got))
    entries = [x for x in lines if "id" in x]
    assert [e["details"]["n"] for e in entries] == [10, 11, 12, 13]
    assert all(e["action"].startswith("config.") and e["integrity"] == "ok" for e in entries)
    cursor = next(x["heartbeat"]["cursor"] for x in lines if "heartbeat" in x)
    resp.close()
    # resume from the cursor: only what came after
    assert (await post_events(client, keys["writer"], [ev(20)])).status == 201
    resp = await client.get(
        "/api/v1/audit-log", headers=h, params={"follow": "true", "action": "config.*", "cursor": cursor}
    )
    lines = await _next_lines(resp, lambda got: any("id" in x for x in got))
    assert [x["details"]["n"] for x in lines if "id" in x] == [20]
    resp.close()
    # from a time: the matches since then first, then the new ones
    resp = await client.get(
        "/api/v1/audit-log", headers=h, params={"follow": "true", "action": "config.*", "from": "2000-01-01"}
    )
    lines = await _next_lines(resp, lambda got: sum("id" in x for x in got) >= 8)
    assert [x["details"]["n"] for x in lines if "id" in x][:8] == [0, 1, 2, 10, 11, 12, 13, 20]
    resp.close()
    # after the clients left, background indexing is not held up by them: a follow counts
    # as a read only for the moment of each look
    await asyncio.sleep(1.5)
    samples = []
    for _ in range(20):
        samples.append(service.reads_in_flight)
        await asyncio.sleep(0.05)
    assert min(samples) == 0, samples
    for bad in ({"format": "json"}, {"order": "desc"}, {"limit": "5"}, {"follow": "yes"}):
        await assert_error(
            await client.get("/api/v1/audit-log", headers=h, params={"follow": "true", **bad}), 400, "follow"
        )


@pytest.mark.e2e
def test_cli_query_follow_prints_what_another_process_appends(tmp_path):
    data = tmp_path / "data"
    assert run_cli(data, "init", "--node-id", "gw1").returncode == 0
    for i in range(12):
        assert run_cli(data, "append", "--user", f"u{i}", "--action", "auth.login").returncode == 0
    proc = subprocess.Popen(
        [AUDITLOG, "--data-dir", str(data), "query", "--follow", "--format", "ndjson", "--action", "auth.*"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=clean_env(),
    )
    try:
        first = [json.loads(proc.stdout.readline()) for _ in range(10)]  # the last 10, oldest first
        assert [e["user"] for e in first] == [f"u{i}" for i in range(2, 12)]
        for who in ("late1", "late2"):
            assert run_cli(data, "append", "--user", who, "--action", "auth.logout").returncode == 0
        later = [json.loads(proc.stdout.readline()) for _ in range(2)]
        assert [(e["user"], e["action"]) for e in later] == [("late1", "auth.logout"), ("late2", "auth.logout")]
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=10)
    assert proc.returncode == 0 and "Traceback" not in err, err
    r = run_cli(data, "query", "--follow", "--format", "csv")
    assert r.returncode == 2 and "--follow prints table or ndjson" in r.stderr


@pytest.mark.e2e
def test_follow_over_a_cluster_names_a_node_that_goes_down(tmp_path):
    import http.client

    from helpers_cluster import LocalCluster, make_events

    cl = LocalCluster(tmp_path / "cl", ("a", "b", "c"), peer_timeout=2.0)
    try:
        cl.build()
        cl.start()
        a = cl["a"]
        conn = http.client.HTTPConnection("127.0.0.1", a.http_port, timeout=30)
    except BaseException:
        cl.close()
        raise
    try:
        conn.request("GET", "/api/v1/audit-log?follow=true&action=config.*", headers=bearer(a.reader_key))
        resp = conn.getresponse()
        assert resp.status == 200
        time.sleep(1.5)
        cl["b"].post_events(make_events(6, "from-b"))
        cl["c"].post_events(make_events(6, "from-c"))

        def read_until(pred, timeout=30):
            got = []
            deadline = time.monotonic() + timeout
            while not pred(got):
                assert time.monotonic() < deadline, got
                line = resp.readline()
                if line.strip():
                    got.append(json.loads(line))
            return got

        lines = read_until(lambda got: {x["node"] for x in got if "id" in x} >= {"b", "c"})
        assert all(x["action"].startswith("config.") for x in lines if "id" in x)
        cl["c"].kill()
        lines = read_until(lambda got: any("node_status" in x for x in got))
        st = next(x["node_status"] for x in lines if "node_status" in x)
        assert st["node"] == "c" and st["status"] == "unreachable"
        cl["b"].post_events(make_events(6, "more-b"))
        lines = read_until(lambda got: any(x.get("node") == "b" for x in got if "id" in x))
    finally:
        conn.close()
        cl.close()
