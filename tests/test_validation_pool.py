"""Ingest validation in worker processes answers exactly as validation in-process."""

from __future__ import annotations

import json

import msgpack
import pytest
from helpers_http import free_port, make_keys

from auditlog.bench.servers import wait_serving
from auditlog.ingest.limits import Limits
from auditlog.query.node import ServiceSettings

GOOD = [
    {"user": "alice", "action": "auth.login", "ip": "::ffff:192.0.2.7", "details": {"z": 1, "a": {"y": 2, "b": 3}}},
    {
        "user": "bob",
        "action": "quarantine.release",
        "target": "Q1",
        "details": {"recipient": "anna@example.com", "subject": "Grüße"},
    },
]
BAD = [GOOD[0], {"user": "", "action": "Not.Valid", "ip": "300.1.1.1"}, {"user": "x"}]

CASES = [
    ("good", json.dumps(GOOD).encode(), "application/json", 201),
    ("good-msgpack", msgpack.packb(GOOD), "application/msgpack", 201),
    ("bad-events", json.dumps(BAD).encode(), "application/json", 400),
    ("bad-json", b"[{", "application/json", 400),
    ("bad-type", b"<x/>", "application/xml", 415),
    ("too-many", json.dumps([GOOD[0]] * 11).encode(), "application/json", 413),
    ("duplicate-key", b'[{"user": "a", "user": "b", "action": "auth.login"}]', "application/json", 400),
]


@pytest.mark.parametrize("name,body,ctype,status", CASES, ids=[c[0] for c in CASES])
async def test_worker_validation_matches_in_process(make_service, make_client, name, body, ctype, status):
    answers = []
    for workers in (0, 1):
        svc = make_service(
            settings=ServiceSettings(validate_workers=workers, limits=Limits(max_batch=10)), name=f"d{workers}"
        )
        assert (svc.ingest.validator.pool is not None) == (workers == 1)
        client = await make_client(svc)
        keys = make_keys(svc)
        token = keys["writer"]
        resp = await client.post(
            "/api/v1/events", data=body, headers={"Authorization": f"Bearer {token}", "Content-Type": ctype}
        )
        assert resp.status == status, await resp.text()
        got = await resp.json()
        if status == 201:
            page = await (
                await client.get("/api/v1/audit-log", headers={"Authorization": f"Bearer {keys['reader']}"})
            ).json()
            stored = [
                (e["user"], e["ip"], json.dumps(e["details"]))
                for e in page["events"]
                if not e["action"].startswith(("auth.api_key", "audit.api_key"))
            ]
            answers.append((got["appended"], stored))
        else:
            answers.append(got)
    assert answers[0] == answers[1]  # same answer, same stored entries (details canonical)
    if status == 400 and name == "bad-events":
        fields = {(p["index"], p["field"]) for p in answers[1]["error"]["problems"]}
        assert {(1, "user"), (1, "action"), (1, "ip"), (2, "action")} <= fields


def test_worker_processes_die_with_a_killed_server(tmp_path):
    """A SIGKILLed server must not leave validation workers behind holding its pipes."""
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    exe = str(Path(sys.executable).with_name("auditlog"))
    subprocess.run([exe, "--data-dir", str(tmp_path / "d"), "init", "--node-id", "n"], check=True, capture_output=True)
    port = free_port()
    cfg = tmp_path / "c.toml"
    cfg.write_text("[server]\nvalidate_workers = 1\n")
    proc = subprocess.Popen(
        [exe, "--data-dir", str(tmp_path / "d"), "--config", str(cfg), "serve", "--listen", f"127.0.0.1:{port}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    # ready once /healthz answers (the port itself is taken before the node starts)
    why = wait_serving(proc, f"http://127.0.0.1:{port}", timeout=20)
    assert why is None, why
    children = [int(p) for p in Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()]
    assert children, "serve should have started its validation worker"
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    t0 = time.monotonic()
    assert proc.stdout.read() == b""  # EOF: nobody else holds the pipe open
    assert time.monotonic() - t0 < 10
    for pid in children:  # and the workers are gone
        for _ in range(50):
            if not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text():
                break
            time.sleep(0.1)
        else:
            os.kill(pid, signal.SIGKILL)
            raise AssertionError(f"worker {pid} outlived the killed server")
    proc.stdout.close()
    proc.stderr.close()
