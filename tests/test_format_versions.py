"""Old files: logs written in segment formats 1 and 2 (by the code before formats 2 and 3)
still read, verify and take new entries, which go to format 3 segments (docs/FORMAT.md
section 10)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from format_verifier import verify_data_dir
from helpers_engine import (
    flip_byte,
    frames_of,
    invoke_cli,
    keyless_rewrite,
    query_json,
    segment_paths,
    verify_json,
)

from auditlog.engine.datadir import DataDir
from auditlog.engine.entry import R_USER
from auditlog.engine.frame import FLAG_CONTINUES
from auditlog.engine.log import NodeLog
from auditlog.engine.segment import FORMAT_VERSION, SegmentData, parse_segment_header, walk_frames

V1_LOG = Path(__file__).with_name("data") / "v1-log"
V1_ENTRIES = 153
V1_SEQS = range(151, 304)


@pytest.fixture
def v1(tmp_path) -> DataDir:
    root = tmp_path / "data"
    shutil.copytree(V1_LOG, root, ignore=shutil.ignore_patterns("README.md"))
    os.chmod(root / "node.key", 0o600)
    return DataDir(root)


def versions(dd: DataDir) -> list[int]:
    out = []
    for p in segment_paths(dd):
        with SegmentData(p) as sd:
            out.append(parse_segment_header(bytes(sd.data[:300]), None).version)
    return out


def test_the_fixture_is_format_1():
    dd = DataDir(V1_LOG)
    assert set(versions(dd)) == {1} and len(versions(dd)) == 9


def test_a_format_1_log_reads_and_verifies(v1):
    assert versions(v1) == [1] * 9
    rc, rep = verify_json(v1.root)
    assert rc == 0 and rep["ok"] and rep["entries_checked"] == V1_ENTRIES, rep
    res = verify_data_dir(v1.root)  # the independent verifier, from FORMAT.md alone
    assert res.problems == [] and res.entries_verified == V1_ENTRIES
    rc, entries, _ = query_json(v1.root)
    assert rc == 0 and [e["seq"] for e in entries] == list(V1_SEQS)
    assert all(e["integrity"] == "ok" for e in entries)
    # the head is anchored by the retention purge in the first segment
    assert entries[30]["action"] == "audit.retention_purge"
    # selective reads (term postings built now, over format 1 frames) give the full scan's answer
    alice = [e["seq"] for e in entries if e["user"] == "alice" and e["ip"] == "192.0.2.9"]
    rc, got, _ = query_json(v1.root, "--user", "alice", "--ip", "192.0.2.9")
    assert rc == 0 and [e["seq"] for e in got] == alice and alice
    rc, got, _ = query_json(v1.root, "--recipient", "ben@example.com")
    assert rc == 0 and got and all("ben@example.com" in e["details"]["recipient"] for e in got)


def test_a_format_1_log_takes_new_entries_in_a_format_3_segment(v1):
    before = [p.read_bytes() for p in segment_paths(v1)]
    r = invoke_cli(v1.root, "append", "--user", "zoe", "--action", "auth.login")
    assert r.exit_code == 0 and r.stdout.strip() == "gw1:304", r.output
    assert [p.read_bytes() for p in segment_paths(v1)[:9]] == before  # old files untouched
    assert versions(v1) == [1] * 9 + [FORMAT_VERSION]
    rc, rep = verify_json(v1.root)
    assert rc == 0 and rep["entries_checked"] == V1_ENTRIES + 1, rep
    res = verify_data_dir(v1.root)
    assert res.problems == [] and res.entries_verified == V1_ENTRIES + 1
    entries = list(NodeLog(v1, v1.open()).scan())
    assert [e.seq for e in entries] == list(range(151, 305)) and entries[-1].user == "zoe"


def test_damage_to_a_format_1_segment_is_still_reported(v1):
    seg = segment_paths(v1)[3]
    flip_byte(seg, seg.stat().st_size - 100)
    rc, rep = verify_json(v1.root)
    assert rc == 1 and {v["segment"] for v in rep["violations"]} == {seg.name}
    rc, entries, _ = query_json(v1.root)
    assert rc == 1 and [e for e in entries if e["integrity"] == "violation"]
    assert not [p for p in verify_data_dir(v1.root).problems if p.segment != seg.name]
    assert json.loads(json.dumps(rep))["ok"] is False


# -- format 2 ------------------------------------------------------------------------------

V2_LOG = Path(__file__).with_name("data") / "v2-log"
V2_ENTRIES = 114


@pytest.fixture
def v2(tmp_path) -> DataDir:
    root = tmp_path / "data"
    shutil.copytree(V2_LOG, root, ignore=shutil.ignore_patterns("README.md"))
    os.chmod(root / "node.key", 0o600)
    return DataDir(root)


def test_the_fixture_is_format_2_with_a_commit_across_segments(v2):
    assert versions(v2) == [2] * 7 and FORMAT_VERSION == 3
    node = v2.open()
    last_continues = []
    for p in segment_paths(v2):
        hdr = parse_segment_header(p.read_bytes()[:300], node.key)
        with SegmentData(p) as sd:
            frames = list(walk_frames(sd.data, hdr.size, hdr.mac, node.key, version=2))
        assert all(f.problem is None for f in frames)
        last_continues.append(bool(frames[-1].header.flags & FLAG_CONTINUES))
    assert any(last_continues[:-1]) and not last_continues[-1]


def test_a_format_2_log_reads_and_verifies(v2):
    rc, rep = verify_json(v2.root)
    assert rc == 0 and rep["ok"] and rep["entries_checked"] == V2_ENTRIES, rep
    res = verify_data_dir(v2.root)
    assert res.problems == [] and res.entries_verified == V2_ENTRIES
    rc, entries, _ = query_json(v2.root)
    assert rc == 0 and [e["seq"] for e in entries] == list(range(1, V2_ENTRIES + 1))
    assert all(e["integrity"] == "ok" for e in entries)
    users = {e["user"] for e in entries}
    for user in sorted(users)[:3]:
        rc, got, _ = query_json(v2.root, "--user", user)
        assert rc == 0 and [e["seq"] for e in got] == [e["seq"] for e in entries if e["user"] == user]


def test_a_format_2_log_takes_new_entries_in_a_format_3_segment(v2):
    before = [p.read_bytes() for p in segment_paths(v2)]
    r = invoke_cli(v2.root, "append", "--user", "zoe", "--action", "auth.login")
    assert r.exit_code == 0 and r.stdout.strip() == f"gw1:{V2_ENTRIES + 1}", r.output
    assert [p.read_bytes() for p in segment_paths(v2)[:7]] == before
    assert versions(v2) == [2] * 7 + [3]
    rc, rep = verify_json(v2.root)
    assert rc == 0 and rep["entries_checked"] == V2_ENTRIES + 1, rep
    res = verify_data_dir(v2.root)
    assert res.problems == [] and res.entries_verified == V2_ENTRIES + 1
    rc, entries, _ = query_json(v2.root)
    assert [e["seq"] for e in entries] == list(range(1, V2_ENTRIES + 2)) and entries[-1]["user"] == "zoe"


def test_a_keyless_edit_of_a_format_2_frame_is_flagged_with_what_it_says(v2):
    """Format 2 payloads are not compressed: a frame that fails its MAC is still decoded,
    its records served flagged (a format 3 frame shows a marker instead)."""
    seg = segment_paths(v2)[2]
    node = v2.open()
    fr = frames_of(seg, node)[1]
    recs = [list(r) for r in fr.records]
    recs[0][R_USER] = "mallory"
    keyless_rewrite(seg, fr.offset, recs)
    rc, rep = verify_json(v2.root)
    assert rc == 1 and [(v["kind"], v["seq_from"], v["seq_to"]) for v in rep["violations"]] == [
        ("mac_mismatch", fr.first_seq, fr.last_seq)
    ]
    rc, entries, _ = query_json(v2.root)
    bad = [e for e in entries if e["integrity"] == "violation"]
    assert rc == 1 and [e["seq"] for e in bad] == list(range(fr.first_seq, fr.last_seq + 1))
    assert bad[0]["user"] == "mallory" and "mac_mismatch" in bad[0]["violation"]
    assert len(entries) == V2_ENTRIES
