"""The writer never destroys acknowledged data, a batch is durable whole or not at all,
and files that cannot continue the log are set aside, never deleted.

With real files, the real writer, the real CLI and real ``auditlog serve`` processes
(one of them killed with SIGKILL in the middle of a commit that rolls to a new
segment).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path

import pytest
from helpers_engine import (
    PYTHON,
    draft,
    flip_byte,
    frames_of,
    invoke_cli,
    run_cli,
    segment_paths,
    settings,
    verify_json,
)
from helpers_http import ServeProcess, clean_env, free_port, http_request

from auditlog.engine.log import NodeLog
from auditlog.engine.verify import verify_node
from auditlog.engine.writer import LogWriter

CRASH_SERVER = str(Path(__file__).with_name("crash_server.py"))


# -- a damaged last whole frame is kept, whatever part of its header is hit -------------------

HEADER_FIELDS = {
    "magic": 0,
    "payload_len": 5,
    "count": 8,
    "flags": 12,
    "first_seq": 16,
    "min_ts": 30,
    "max_ts": 38,
    "checksum": 40,
}


@pytest.mark.parametrize("field", sorted(HEADER_FIELDS))
def test_a_bit_flipped_in_the_header_of_the_last_whole_frame_is_kept_not_cut(written, field):
    dd, node = written
    active = segment_paths(dd)[-1]
    last = frames_of(active, node)[-1]
    flip_byte(active, last.offset + HEADER_FIELDS[field], 0x01 if field != "payload_len" else 0x40)
    before = active.read_bytes()
    w = LogWriter(dd, node, settings(1 << 20)).open()
    try:
        rec = w.recovery
        w.append_batch([draft(100)])
    finally:
        w.close()
    assert active.read_bytes() == before, "acknowledged bytes were cut"
    assert rec is not None and "cut_offset" not in rec, rec
    assert "kept_tail" in rec or "damaged" in rec, rec
    assert len(segment_paths(dd)) == 2  # continued in a new segment
    entries = list(NodeLog(dd, node).scan())
    ok = {e.seq for e in entries if e.integrity == "ok"}
    assert set(range(1, 19)) <= ok  # everything before it intact
    assert not ({19, 20} & ok)  # the damaged frame is flagged or a marker
    assert [e for e in entries if e.integrity != "ok"]
    assert entries[-1].details == {"n": 100}
    rep = verify_node(dd, node)
    # the damage is reported where it is; the seqs of the kept frame (never given out again)
    # may also be named as missing before the next segment (docs/FORMAT.md section 9, step 5)
    assert not rep.ok and [v for v in rep.violations if v.segment == active.name], rep.violations
    assert all(
        v.segment == active.name or (v.kind == "segment_missing" and v.seq_from >= 19 and v.seq_to == 20)
        for v in rep.violations
    ), rep.violations
    assert rec.get("kept_tail", {}).get("seqs", [19, 20]) == [19, 20]


def test_an_unfinished_write_after_the_last_frame_is_still_cut(written):
    """The rule cuts what can be an unfinished write: a copy of a frame cut short, zeros."""
    dd, node = written
    active = segment_paths(dd)[-1]
    good = active.stat().st_size
    last = frames_of(active, node)[-1]
    frame = active.read_bytes()[last.offset : last.end]
    with open(active, "ab") as f:
        f.write(frame[:60] + bytes(12))  # a frame begun, then zeros: shorter than it
    w = LogWriter(dd, node, settings(1 << 20)).open()
    w.close()
    assert w.recovery["cut_offset"] == good and active.stat().st_size > good  # + the recovery entry
    assert verify_node(dd, node).ok


# -- garbage in segments/ is set aside, and logging goes on -----------------------------------


@pytest.mark.parametrize("name", ["99999999999999999999.seg", "00000000000000000050.seg", "notes.seg"])
def test_a_garbage_file_named_like_a_segment_is_set_aside_and_logging_goes_on(written, name):
    dd, node = written
    junk = b"garbage" if name != "notes.seg" else b"AUDITSEG" + os.urandom(200)
    (dd.segments / name).write_bytes(junk)
    r = invoke_cli(dd.root, "append", "--user", "bob", "--action", "auth.login")
    assert r.exit_code == 0, r.output
    assert not (dd.segments / name).exists()
    kept = dd.root / "quarantine" / name
    assert kept.read_bytes() == junk  # moved, never deleted
    entries = list(NodeLog(dd, node).scan())
    rec = [e for e in entries if e.action == "audit.recovery"]
    assert rec and list(rec[-1].details["set_aside"]) == [
        {
            "file": name,
            "moved_to": f"quarantine/{name}",
            "bytes": len(junk),
            "sha256": hashlib.sha256(junk).hexdigest(),
            "reason": rec[-1].details["set_aside"][0]["reason"],
        }
    ]
    assert entries[-1].user == "bob" and entries[-1].seq == 22
    rc, rep = verify_json(dd.root)
    assert rc == 1 and [v["kind"] for v in rep["violations"]] == ["set_aside"]
    assert rep["violations"][0]["segment"] == f"quarantine/{name}"
    kept.unlink()  # reviewed and removed: clean again
    assert verify_json(dd.root)[0] == 0


def test_serve_starts_on_a_data_dir_with_a_huge_garbage_segment_name(tmp_path):
    data = tmp_path / "data"
    assert run_cli(data, "init", "--node-id", "gw1").returncode == 0
    p = run_cli(data, "apikey", "create", "--role", "writer", "--name", "w")
    assert p.returncode == 0, p.stderr
    key = p.stdout.strip().splitlines()[-1]
    (data / "segments" / "99999999999999999999.seg").write_bytes(b"garbage")
    srv = ServeProcess(data)
    try:
        srv.wait_ready()
        status, _, body = srv.request(
            "/api/v1/events",
            key,
            method="POST",
            body=json.dumps([{"user": "u", "action": "auth.login"}]).encode(),
            headers={"Content-Type": "application/json"},
        )
        assert status == 201, body
    finally:
        assert srv.terminate() == 0, srv.stderr()
    assert (data / "quarantine" / "99999999999999999999.seg").exists()


# -- a crash in a commit that spans a segment roll ----------------------------------------------


def _batch(n: int) -> bytes:
    return json.dumps(
        [
            {
                "user": "bulk",
                "action": "config.filter_update",
                "target": f"f-{i}",
                "details": {"n": i, "pad": "p" * 120},
            }
            for i in range(n)
        ]
    ).encode()


@pytest.mark.parametrize("when", ["before-create", "after-create"])
def test_a_batch_interrupted_by_a_crash_across_a_roll_is_appended_once_on_retry(tmp_path, when):
    data = tmp_path / "data"
    cfg = tmp_path / "auditlog.toml"
    cfg.write_text('segment_max_bytes = 65536\nfsync = "always"\n')
    assert run_cli(data, "init", "--node-id", "gw1").returncode == 0
    p = run_cli(data, "apikey", "create", "--role", "writer", "--name", "w", config=cfg)
    assert p.returncode == 0, p.stderr
    key = p.stdout.strip().splitlines()[-1]
    body = _batch(2000)  # ~330 KiB: frames in several segments
    headers = {"Content-Type": "application/json", "Idempotency-Key": "batch-1"}
    port = free_port()
    proc = subprocess.Popen(
        [
            PYTHON,
            CRASH_SERVER,
            when,
            "--data-dir",
            str(data),
            "--config",
            str(cfg),
            "serve",
            "--listen",
            f"127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=clean_env(),
    )
    try:
        from auditlog.bench.servers import wait_serving

        assert wait_serving(proc, f"http://127.0.0.1:{port}") is None, proc.stderr.read()
        try:
            status, _, _ = http_request(
                f"http://127.0.0.1:{port}/api/v1/events", key, method="POST", body=body, headers=headers, timeout=30
            )
        except OSError:
            status = None  # the server died mid-request
        assert status is None
        assert proc.wait(30) == -9
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stderr.close()
    # part of the batch was durable when it died; nothing of it was acknowledged
    entries = list(NodeLog(_dd(data), _dd(data).open()).scan())
    durable = [e for e in entries if e.user == "bulk"]
    assert 0 < len(durable) < 2000  # the frames written before the roll
    # the restarted server cuts the interrupted commit back whole, and the retry lands once
    srv = ServeProcess(data, config=cfg)
    try:
        srv.wait_ready()
        status, _, answer = srv.request("/api/v1/events", key, method="POST", body=body, headers=headers)
        assert status == 201, answer
        status, hdrs, again = srv.request("/api/v1/events", key, method="POST", body=body, headers=headers)
        assert status == 200 and hdrs["Idempotent-Replay"] == "true" and again == answer
    finally:
        assert srv.terminate() == 0, srv.stderr()
    entries = list(NodeLog(_dd(data), _dd(data).open()).scan())
    bulk = [e for e in entries if e.user == "bulk"]
    assert [e.details["n"] for e in bulk] == list(range(2000))  # once, whole, in order
    assert all(e.integrity == "ok" for e in entries)
    first = json.loads(answer)["first_id"]
    assert bulk[0].id == first
    rec = [e for e in entries if e.action == "audit.recovery"]
    assert rec and "interrupted_commit" in rec[-1].details, [r.details for r in rec]
    assert verify_json(data)[0] == 0


def _dd(root: Path):
    from auditlog.engine.datadir import DataDir

    return DataDir(root)


# -- state files are checked by verify -----------------------------------------------------------


def test_verify_reports_a_forged_state_file(written):
    dd, node = written
    dd.state.mkdir(exist_ok=True)
    (dd.state / "retention.json").write_text(json.dumps({"ran_at": "2026-01-01T00:00:00Z", "dropped_entries": 999}))
    rc, rep = verify_json(dd.root)
    assert rc == 1 and [(v["kind"], v["segment"]) for v in rep["violations"]] == [
        ("state_corrupt", "state/retention.json")
    ]
