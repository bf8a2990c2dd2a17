"""Crash recovery and failed writes, with real processes and real files.

* A writer subprocess (``tests/crash_writer.py``) appends batches and prints
  each acknowledgement only after ``append_batch`` returned; it is SIGKILLed
  at random moments.  After every kill the next writer open (recovery) must
  keep every acknowledged event, intact, and leave a log that verifies.
* Torn tails are cut back and recorded; damage is kept, never cut.
* A write that fails (EFBIG under ``RLIMIT_FSIZE``) is cut back and reported.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time
from pathlib import Path

import pytest
from crash_writer import expected_details
from helpers_engine import PYTHON, draft, flip_byte, frames_of, init_dir, segment_paths, settings

from auditlog.engine.catalog import index_segment
from auditlog.engine.log import NodeLog
from auditlog.engine.verify import verify_node
from auditlog.engine.writer import LogWriter

CRASH_WRITER = str(Path(__file__).with_name("crash_writer.py"))


def start_writer(*args: str) -> subprocess.Popen:
    proc = subprocess.Popen(
        [PYTHON, CRASH_WRITER, *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    return proc


def parse_acks(out: str) -> dict[int, int]:
    """n -> seq for every acknowledged event (only complete lines count)."""
    acked = {}
    for line in out.split("\n")[:-1]:  # the last piece is "" or a line cut by the kill
        parts = line.split()
        if parts and parts[0] == "ack":
            first_seq, last_seq, first_n, last_n = map(int, parts[1:5])
            assert last_seq - first_seq == last_n - first_n
            for i in range(last_n - first_n + 1):
                acked[first_n + i] = first_seq + i
    return acked


def parse_tries(out: str) -> list[tuple[int, int]]:
    """(first n, last n) of every batch the writer began to append."""
    return [tuple(map(int, line.split()[1:3])) for line in out.split("\n")[:-1] if line.startswith("try ")]


def expected_cut(dd, node) -> tuple[str, int, int] | None:
    """(segment, offset, bytes) a recovery must cut from the active segment, if any."""
    active = segment_paths(dd)[-1]
    info = index_segment(active, node.key, node.node_id)
    if info.header is None:
        return None
    size = active.stat().st_size
    if info.tail is not None:
        return active.name, info.tail[0], size - info.tail[0]
    idx = info.index
    last = len(idx.frames) - 1
    if last >= 0 and last in idx.damaged and idx.frames[last].count == 0:
        off = idx.frames[last].offset
        return active.name, off, size - off
    return None


def tear_unacknowledged_tail(dd, node, max_acked_seq: int, rng: random.Random) -> int:
    """Make the kill look as if it had landed inside ``write``: when the active segment's
    last frame holds only unacknowledged entries (the kill came before the ack, e.g.
    during fsync), cut the file somewhere inside that frame.  Returns 1 if it did."""
    active = segment_paths(dd)[-1]
    info = index_segment(active, node.key, node.node_id)
    if info.header is None or info.tail is not None or not info.index.frames or info.index.damaged:
        return 0
    row = info.index.frames[-1]
    if row.first_seq <= max_acked_seq:
        return 0
    size = active.stat().st_size
    os.truncate(active, rng.randint(row.offset + 1, size - 1))
    return 1


def check_log(dd, node, acked: dict[int, int]) -> list:
    """Every acknowledged event is there, intact, at its seq; seqs run 1..N; verify is clean."""
    entries = list(NodeLog(dd, node).scan())
    assert all(e.integrity == "ok" for e in entries), [e for e in entries if e.integrity != "ok"][:3]
    seqs = [e.seq for e in entries]
    assert seqs == list(range(1, len(seqs) + 1)), "seqs not contiguous from 1"
    by_seq = {e.seq: e for e in entries}
    for n, seq in acked.items():
        e = by_seq.get(seq)
        assert e is not None, f"acknowledged event n={n} (seq {seq}) is gone"
        assert (e.user, e.action, e.target) == ("crash", "config.filter_update", f"t-{n}"), e
        assert e.details == expected_details(n), (seq, e.details)
    rep = verify_node(dd, node)
    assert rep.ok, rep.violations
    return entries


# -- SIGKILL at random moments ------------------------------------------------------------------


@pytest.mark.slow
def test_sigkill_at_random_moments_loses_nothing_acknowledged(tmp_path):
    dd, node = init_dir(tmp_path / "data")
    seed = int(os.environ.get("CRASH_SEED", random.randrange(1 << 30)))
    print(f"CRASH_SEED={seed} reproduces this run")
    rng = random.Random(seed)
    acked: dict[int, int] = {}
    tried: list[tuple[int, int]] = []
    cuts = torn = interrupted = 0
    t_end = time.monotonic() + 12
    rounds = 0
    while rounds < 20 or (rounds < 40 and time.monotonic() < t_end):
        rounds += 1
        seg_max = (4096, 8192, 16384, 1 << 20)[rounds % 4]  # small ones: kills land near rolls
        fsync = rng.choice(["always", "always", "none"])
        proc = start_writer("loop", dd.root, rounds * 1_000_000, seg_max, fsync, rng.randrange(1 << 30))
        try:
            ready = proc.stdout.readline()
            assert ready.startswith("ready"), (ready, proc.stderr.read() if proc.poll() is not None else "")
            time.sleep(rng.uniform(0.01, 0.2))
        finally:
            proc.send_signal(signal.SIGKILL)
            out, err = proc.communicate(timeout=30)
        assert proc.returncode == -signal.SIGKILL, err
        new = parse_acks(out)
        acked.update(new)
        if rng.random() < 0.5:
            torn += tear_unacknowledged_tail(dd, node, max(acked.values(), default=0), rng)
        # nothing but a torn tail may be wrong before recovery (the writer is dead)
        rep = verify_node(dd, node)
        assert {v.kind for v in rep.violations} <= {"torn_tail"}, (seed, rep.violations)
        cut = expected_cut(dd, node)
        assert (cut is not None) == bool(rep.violations), (seed, cut, rep.violations)
        w = LogWriter(dd, node, settings(seg_max, fsync="always")).open()
        try:
            rec = dict(w.recovery or {})
            commit = rec.pop("interrupted_commit", None)
            if commit is not None:
                # the log ended inside a commit: it was never acknowledged, and it is
                # cut back whole, also out of the segments it rolled into
                interrupted += 1
                a, b = commit["seqs"]
                assert not {s for s in acked.values() if a <= s <= b}, (seed, commit)
            if cut is None:
                assert not rec or set(rec) == {"reason"}, (seed, w.recovery)
            else:
                cuts += 1
                seg, off, nbytes = cut
                assert rec["segment"] == seg
                assert (rec["cut_offset"], rec["cut_bytes"]) == (off, nbytes), seed
        finally:
            w.close()
        entries = check_log(dd, node, acked)
        # every batch begun is in the log whole, or not at all
        tried.extend(parse_tries(out))
        have = {e.details["n"] for e in entries if e.user == "crash"}
        for first_n, last_n in tried:
            got = len({n for n in range(first_n, last_n + 1) if n in have})
            assert got in (0, last_n - first_n + 1), (seed, first_n, last_n, got)
        if cut is not None:
            rec = [e for e in entries if e.action == "audit.recovery"]
            assert rec and rec[-1].details["cut_offset"] == cut[1] and rec[-1].details["cut_bytes"] == cut[2]
            assert rec[-1].user == "system"
    assert rounds >= 20
    assert len(acked) > 200, "the writer hardly wrote anything: the test proves little"
    assert len(segment_paths(dd)) >= 3
    assert cuts >= torn
    print(
        f"seed {seed}: {rounds} rounds, {len(acked)} acknowledged events, {cuts} torn tails cut "
        f"({torn} of them made by tearing an unacknowledged last frame), {interrupted} "
        "interrupted commits cut back whole"
    )


# -- torn tails and damage, made by hand --------------------------------------------------------


def _reopen_and_append(dd, node, *ns):
    w = LogWriter(dd, node, settings(1 << 20)).open()
    recovery = w.recovery
    for n in ns:
        w.append_batch([draft(n)])
    w.close()
    return recovery


def _entries(dd, node):
    return list(NodeLog(dd, node).scan())


def _assert_flagged(entries, seqs: set[int]) -> None:
    """The damaged frame's seqs come back flagged: entry by entry when its records still
    decode, or as one marker naming their range (a compressed payload with a changed
    byte does not decompress)."""
    bad = [e for e in entries if e.integrity != "ok"]
    assert bad and all(e.violation for e in bad)
    if {e.seq for e in bad} != seqs:
        assert len(bad) == 1 and f"seq {min(seqs)}..{max(seqs)}" in bad[0].violation, bad


@pytest.mark.parametrize("tail", ["short-garbage", "long-garbage", "zeros", "half-frame", "header-only"])
def test_torn_tail_is_cut_back_and_recorded(written, tail):
    dd, node = written
    active = segment_paths(dd)[-1]
    good_size = active.stat().st_size
    last = frames_of(active, node)[-1]
    frame = active.read_bytes()[last.offset : last.end]
    junk = {
        "short-garbage": os.urandom(30),
        "long-garbage": b"\x01" + os.urandom(400),
        "zeros": bytes(4096),
        "half-frame": frame[: len(frame) // 2],
        "header-only": frame[:48],
    }[tail]
    with open(active, "ab") as f:
        f.write(junk)
    rep = verify_node(dd, node)
    # a cut-short frame is a torn tail; bytes that are no frame at all are reported as
    # an open-ended frame_corrupt stretch (docs/FORMAT.md section 9) -- cut all the same
    kind = "torn_tail" if tail in ("short-garbage", "half-frame", "header-only") else "frame_corrupt"
    assert [(v.kind, v.seq_from, v.seq_to, v.segment) for v in rep.violations] == [(kind, 21, None, active.name)]

    recovery = _reopen_and_append(dd, node, 100)
    assert recovery == {
        "reason": "torn tail cut back to the last whole frame",
        "segment": active.name,
        "cut_offset": good_size,
        "cut_bytes": len(junk),
    }
    entries = _entries(dd, node)
    assert [e.seq for e in entries] == list(range(1, 23))
    assert [e.details.get("n") for e in entries[:20]] == list(range(20))
    rec = entries[20]
    assert rec.action == "audit.recovery" and rec.user == "system"
    assert rec.details["cut_offset"] == good_size and rec.details["cut_bytes"] == len(junk)
    assert entries[21].details == {"n": 100}
    assert segment_paths(dd) == [active]  # continued in the same segment
    assert junk not in active.read_bytes()[good_size:]
    assert verify_node(dd, node).ok


def test_damaged_middle_frame_is_kept_and_writer_continues_in_a_new_segment(written):
    dd, node = written
    active = segment_paths(dd)[-1]
    frames = frames_of(active, node)
    bad = frames[3]
    flip_byte(active, bad.payload_offset + 10)
    before = active.read_bytes()

    recovery = _reopen_and_append(dd, node, 100, 101)
    assert active.read_bytes() == before  # kept as is, byte for byte
    assert recovery["segment"] == active.name and "kept as is" in recovery["reason"]
    assert recovery["damaged"] == [["checksum_mismatch", bad.first_seq, bad.last_seq]]
    segs = segment_paths(dd)
    assert len(segs) == 2 and segs[1].name == f"{21:020d}.seg"  # no seq reused
    entries = _entries(dd, node)
    damaged = {bad.first_seq, bad.last_seq}
    ok = {e.seq: e for e in entries if e.integrity == "ok"}
    assert sorted(ok) == [s for s in range(1, 24) if s not in damaged]
    assert ok[21].action == "audit.recovery"
    assert [ok[s].details.get("n") for s in (22, 23)] == [100, 101]
    _assert_flagged(entries, damaged)
    rep = verify_node(dd, node)
    assert [(v.kind, v.seq_from, v.seq_to, v.segment) for v in rep.violations] == [
        ("checksum_mismatch", bad.first_seq, bad.last_seq, active.name)
    ]
    # and the next restart does not touch either segment again
    sizes = [p.stat().st_size for p in segs]
    assert _reopen_and_append(dd, node) is None
    assert [p.stat().st_size for p in segment_paths(dd)] == sizes


@pytest.mark.parametrize("where", ["payload", "mac"])
def test_damaged_last_whole_frame_is_kept_not_cut(written, where):
    """A complete last frame that fails its check may hold acknowledged entries: it is
    damage, not a torn tail -- kept as is, reported, and its seqs are never reused."""
    dd, node = written
    active = segment_paths(dd)[-1]
    last = frames_of(active, node)[-1]
    flip_byte(active, last.payload_offset + 5 if where == "payload" else last.mac_offset + 3)
    before = active.read_bytes()

    recovery = _reopen_and_append(dd, node, 100)
    assert active.read_bytes() == before
    assert recovery["damaged"][0][1:] == [last.first_seq, last.last_seq]
    assert "cut_offset" not in recovery
    entries = _entries(dd, node)
    ok = {e.seq: e for e in entries if e.integrity == "ok"}
    assert sorted(ok) == [s for s in range(1, 23) if s not in (19, 20)]
    _assert_flagged(entries, {19, 20})
    assert ok[22].details == {"n": 100}
    rep = verify_node(dd, node)
    assert {(v.seq_from, v.seq_to) for v in rep.violations} == {(19, 20)}


def test_torn_tail_after_damage_is_cut_and_both_are_recorded(written):
    dd, node = written
    active = segment_paths(dd)[-1]
    frames = frames_of(active, node)
    flip_byte(active, frames[2].payload_offset + 3)
    good_size = active.stat().st_size
    with open(active, "ab") as f:
        f.write(active.read_bytes()[frames[0].offset : frames[0].offset + 60])
    recovery = _reopen_and_append(dd, node, 100)
    assert recovery["cut_offset"] == good_size and recovery["cut_bytes"] == 60
    assert recovery["damaged"] == [["checksum_mismatch", 5, 6]]
    assert active.stat().st_size == good_size
    assert len(segment_paths(dd)) == 2
    rep = verify_node(dd, node)
    assert {(v.kind, v.seq_from, v.seq_to) for v in rep.violations} == {("checksum_mismatch", 5, 6)}


def test_unusable_active_segment_header_is_kept_and_not_reused(written):
    dd, node = written
    active = segment_paths(dd)[-1]
    flip_byte(active, 30)
    before = active.read_bytes()
    recovery = _reopen_and_append(dd, node, 100)
    assert active.read_bytes() == before
    assert recovery["segment"] == active.name
    segs = segment_paths(dd)
    assert len(segs) == 2 and int(segs[1].name[:20]) > 20
    rep = verify_node(dd, node)
    assert rep.violations and all(v.segment == active.name for v in rep.violations)
    assert any(v.kind == "header_corrupt" for v in rep.violations)


def test_leftover_temp_files_of_an_interrupted_roll_are_removed(written):
    dd, node = written
    stray = dd.segments / (f"{21:020d}.seg" + ".tmp")
    stray.write_bytes(b"AUDITSEG half a header")
    (dd.segments / "00000000000000000001.idx.tmp").write_bytes(b"x")
    assert _reopen_and_append(dd, node, 100) is None
    assert sorted(p.name for p in dd.segments.iterdir()) == ["00000000000000000001.seg"]
    assert verify_node(dd, node).ok


def test_restart_on_an_empty_new_segment_keeps_time_monotonic(tmp_path):
    """Right after a roll the active segment holds no entry: the restarted writer still
    knows the last timestamp (from the previous segment) and never goes back."""
    dd, node = init_dir(tmp_path / "data")
    with LogWriter(dd, node, settings()) as w:
        w.append_batch([draft(0)])
        w.roll()
        last_ts = w.last_ts
    w2 = LogWriter(dd, node, settings()).open()
    try:
        assert w2.last_ts == last_ts
    finally:
        w2.close()


# -- failed writes ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "scenario, seg_max, limit",
    [
        ("plain", 1 << 20, 16384),  # the batch's frame cannot be written to the active segment
        ("roll", 16384, 13400),  # the batch rolls to a new segment and fails there
        ("create", 16384, 100),  # creating the segment the batch rolls into fails
    ],
)
def test_failed_write_is_cut_back_and_reported(tmp_path, scenario, seg_max, limit):
    dd, node = init_dir(tmp_path / "data")
    proc = start_writer("fsize", dd.root, seg_max, limit, scenario)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    lines = out.splitlines()
    assert lines[-1] == "done"
    failed = [ln for ln in lines if ln.startswith("failed")]
    assert len(failed) == 2, out
    # the big batch failed with a clear error, and nothing of it stayed on disk
    f_from, f_to = map(int, failed[0].split()[1:3])
    assert "write to the log failed" in failed[0] and "File too large" in failed[0]
    sizes = next(ln for ln in lines if ln.startswith("sizes")).split()
    assert sizes[1] == sizes[2], "the active segment was not cut back to its last good frame"
    assert sizes[4] == sizes[5], "a segment created by the failed batch was left behind"
    acked = parse_acks(out)
    assert not set(range(f_from, f_to + 1)) & set(acked)
    # the writer kept working for smaller appends after the failure
    assert max(acked) > f_to, "no append succeeded after the failed batch"
    entries = list(NodeLog(dd, node).scan())
    assert all(e.integrity == "ok" for e in entries)
    assert {e.details["n"] for e in entries} == set(acked)
    assert [e.seq for e in entries] == list(range(1, len(acked) + 1))
    for e in entries:
        assert e.details == {"n": e.details["n"], "pad": "x" * (e.details["n"] * 37 % 300)}
    # nothing half-written: no torn tail, no stray files, a clean verify
    active = segment_paths(dd)[-1]
    info = index_segment(active, node.key, node.node_id)
    assert info.tail is None and not info.index.damaged
    assert active.stat().st_size == info.index.size
    assert not [p for p in dd.segments.iterdir() if p.name.endswith(".tmp")]
    rep = verify_node(dd, node)
    assert rep.ok, rep.violations
    # and a writer without the limit carries on from there
    w = LogWriter(dd, node, settings(seg_max)).open()
    try:
        assert w.recovery is None
        assert w.append_batch([draft(7)]).first_seq == len(acked) + 1
    finally:
        w.close()
