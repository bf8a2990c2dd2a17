"""Tampering with a node's files the way an attacker would, and what the log says.

Each test copies a pristine log (several sealed segments plus the active one),
damages the real files, then runs the real CLI: ``auditlog verify --json`` must
name the kind, node, seq range and segment file, and ``auditlog query`` must
return every seq either intact or flagged (a damaged entry marked
``"integrity": "violation"`` or a marker entry naming kind and range), exit 1,
and never crash or silently drop the damaged range.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers_engine import (
    SMALL_SEGMENT,
    append_events,
    build_log,
    covers,
    flip_byte,
    frames_of,
    invoke_cli,
    keyless_rewrite,
    query_json,
    read_coverage,
    rechain,
    rewrite_frame,
    segment_paths,
    settings,
    verify_json,
    violations_of,
    write_config,
)

from auditlog.engine.datadir import DataDir, Node
from auditlog.engine.entry import EntryDraft, format_ts
from auditlog.engine.frame import HEADER_SIZE
from auditlog.engine.writer import LogWriter

N = 300  # events 0..299 -> seqs 1..300 (seq s carries details n = s - 1)
PER_BATCH = 3  # 3 entries per frame


@dataclass
class Log:
    root: Path
    dd: DataDir
    node: Node

    @property
    def segs(self) -> list[Path]:
        return segment_paths(self.dd)

    def frames(self, i: int):
        return frames_of(self.segs[i], self.node)

    def seq_range(self, i: int) -> tuple[int, int]:
        fr = self.frames(i)
        return fr[0].first_seq, fr[-1].last_seq


def _copy(src: Path, dst: Path, node: Node) -> Log:
    shutil.copytree(src, dst)
    return Log(dst, DataDir(dst), node)


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    root = tmp_path_factory.mktemp("pristine") / "data"
    dd, node = build_log(root, N, per_batch=PER_BATCH, min_sealed=3)
    rc, rep = verify_json(root)
    assert rc == 0 and rep["ok"] and rep["entries_checked"] == N, rep
    return root, node


@pytest.fixture(scope="module")
def other_nodes(tmp_path_factory):
    """Logs of other data dirs: another node id, and the same node id re-initialised (new key)."""
    out = {}
    for node_id in ("gw2", "gw1"):
        root = tmp_path_factory.mktemp(f"other-{node_id}") / "data"
        dd, node = build_log(root, N, node_id=node_id, per_batch=PER_BATCH, min_sealed=3)
        out[node_id] = Log(root, dd, node)
    return out


@pytest.fixture
def log(pristine, tmp_path) -> Log:
    root, node = pristine
    return _copy(root, tmp_path / "data", node)


# -- assertions shared by every case ----------------------------------------------------


def assert_verify_reports(
    lg: Log,
    kind: str,
    seq_from: int,
    seq_to: int,
    segment: str | set[str],
    *,
    only: set[str] | None = None,
    subprocess_: bool = False,
) -> dict:
    """verify exits 1 with ok false and a ``kind`` violation naming node, range and segment."""
    rc, rep = verify_json(lg.root, subprocess_=subprocess_)
    assert rc == 1, rep
    assert rep["ok"] is False
    names = {segment} if isinstance(segment, str) else segment
    found = [
        v
        for v in violations_of(rep, kind)
        if v["node"] == "gw1" and v["segment"] in names and covers(v, seq_from, seq_to)
    ]
    assert found, f"no {kind} covering seq {seq_from}..{seq_to} in {names}: {rep['violations']}"
    for v in rep["violations"]:
        assert set(v) == {"kind", "node", "seq_from", "seq_to", "segment", "detail"}
        assert v["detail"]
    if only is not None:
        assert {v["kind"] for v in rep["violations"]} <= only, rep["violations"]
    return rep


def assert_query_flags(
    lg: Log, damaged: set[int], *, last_seq: int = N, subprocess_: bool = False, kinds: set[str] | None = None
) -> tuple[dict, set]:
    """query exits 1, returns every seq intact or flagged, flags ``damaged``, and
    every entry it calls intact is the untouched original."""
    rc, entries, err = query_json(lg.root, subprocess_=subprocess_)
    assert rc == 1, (rc, err)
    assert "integrity" in err
    assert "Traceback" not in err
    ok, flagged = read_coverage(entries, last_seq)
    missing = set(range(1, last_seq + 1)) - set(ok) - flagged
    assert not missing, f"silently dropped seqs {sorted(missing)}"
    assert damaged <= flagged, f"not flagged: {sorted(damaged - flagged)}"
    for seq, e in ok.items():
        if seq <= N:  # later entries are the log's own (retention purge, ...)
            assert e["user"] == "alice" and e["details"] == {"n": seq - 1}, e
    if kinds is not None:
        texts = [e["violation"] for e in entries if e["integrity"] == "violation"]
        assert any(t.split(":")[0] in kinds for t in texts), texts
    return ok, flagged


# -- bytes inside a frame ------------------------------------------------------------------


@pytest.mark.parametrize(
    "where, expected",
    [
        ("payload", "checksum_mismatch"),
        ("checksum", "checksum_mismatch"),  # the payload_xxh64 field of the frame header
        ("first_seq", "mac_mismatch"),  # a header field only the MAC covers
        ("count", "mac_mismatch"),
        ("min_ts", "frame_corrupt"),  # min_ts > max_ts: not a plausible header
        ("mac", "mac_mismatch"),
    ],
)
def test_flipped_byte_in_a_frame(log, where, expected):
    seg = log.segs[1]
    fr, nxt = log.frames(1)[2:4]
    offset = {
        "payload": fr.payload_offset + 20,
        "checksum": fr.offset + 40,
        "first_seq": fr.offset + 16,
        "count": fr.offset + 8,
        # byte 6 of the i64 is 0x00 for every date before the year 10889:
        # 0xFF there always puts min_ts above max_ts, whatever the clock said
        "min_ts": fr.offset + 30,
        "mac": fr.mac_offset + 7,
    }[where]
    flip_byte(seg, offset)
    rep = assert_verify_reports(log, expected, fr.first_seq, fr.last_seq, seg.name, subprocess_=(where == "payload"))
    # the damage is pinned to that frame (a flipped MAC also fails the next frame,
    # whose MAC chains from the stored bytes): nothing further away is blamed
    limit = nxt.last_seq if where == "mac" else fr.last_seq
    for v in rep["violations"]:
        assert v["seq_from"] >= fr.first_seq and (v["seq_to"] or 0) <= limit, v
    expected = {expected}
    ok, flagged = assert_query_flags(
        log, set(range(fr.first_seq, fr.last_seq + 1)), subprocess_=(where == "payload"), kinds=expected
    )
    # the damage costs that frame only (and the next one for a flipped MAC)
    assert set(range(fr.first_seq, fr.last_seq + 1)) <= flagged <= set(range(fr.first_seq, limit + 1))


def test_reencoded_entry_with_fresh_checksum_but_no_key(log):
    """Change an entry, re-encode the frame and recompute its xxhash: only the MAC can tell."""
    seg = log.segs[2]
    fr = log.frames(2)[3]
    recs = [list(r) for r in fr.records]
    recs[1][2] = "mallory"  # R_USER
    keyless_rewrite(seg, fr.offset, recs)
    rep = assert_verify_reports(log, "mac_mismatch", fr.first_seq, fr.last_seq, seg.name, only={"mac_mismatch"})
    assert len(rep["violations"]) == 1
    rc, entries, _ = query_json(log.root)
    assert rc == 1 and not any(e["user"] == "mallory" for e in entries)
    # the compressed payload that did not verify is never opened: one marker for the frame
    (marker,) = [e for e in entries if fr.first_seq <= e["seq"] <= fr.last_seq]
    assert marker["seq"] == fr.first_seq and marker["integrity"] == "violation"
    assert "mac_mismatch" in marker["violation"] and f"{fr.first_seq}..{fr.last_seq}" in marker["violation"]
    assert_query_flags(log, set(range(fr.first_seq, fr.last_seq + 1)))


# -- forgeries by someone holding the node key -------------------------------------------------


def test_key_holder_rewrites_entry_but_not_its_signature(log):
    seg = log.segs[1]
    fr = log.frames(1)[4]
    recs = [list(r) for r in fr.records]
    recs[0][3] = "config.dkim_rotate"  # R_ACTION: a different action, same signature
    rewrite_frame(seg, log.node, fr.offset, recs)
    rechain(log.dd, log.node, seg)  # every frame MAC and header link made valid again
    seq = fr.first_seq
    rep = assert_verify_reports(log, "signature_mismatch", seq, seq, seg.name, only={"signature_mismatch"})
    v = violations_of(rep, "signature_mismatch")
    assert [(x["seq_from"], x["seq_to"]) for x in v] == [(seq, seq)]


@pytest.mark.parametrize("how", ["remove", "reorder", "remove_frame"])
def test_key_holder_removes_or_reorders_entries_inside_a_segment(log, how):
    seg = log.segs[1]
    frames = log.frames(1)
    fr = frames[4]
    recs = [list(r) for r in fr.records]
    if how == "remove":
        del recs[1]
        rewrite_frame(seg, log.node, fr.offset, recs)
        touched = {fr.first_seq + 1}
    elif how == "reorder":
        recs[0], recs[2] = recs[2], recs[0]
        rewrite_frame(seg, log.node, fr.offset, recs)
        touched = set(range(fr.first_seq, fr.last_seq + 1))
    else:
        data = seg.read_bytes()
        seg.write_bytes(data[: fr.offset] + data[fr.end :])
        touched = set(range(fr.first_seq, fr.last_seq + 1))
    rechain(log.dd, log.node, seg)
    rc, rep = verify_json(log.root)
    assert rc == 1 and rep["ok"] is False
    assert {v["kind"] for v in rep["violations"]} <= {"seq_gap", "signature_mismatch", "frame_corrupt"}
    gaps = violations_of(rep, "seq_gap")
    assert gaps, rep["violations"]
    reported: set[int] = set()
    for v in rep["violations"]:
        assert v["segment"] == seg.name and v["node"] == "gw1"
        reported.update(range(v["seq_from"], v["seq_to"] + 1))
    # the removed / moved seqs are named, and nothing far away is blamed
    assert touched <= reported, (touched, rep["violations"])
    assert reported <= set(range(fr.first_seq, fr.last_seq + 2))
    if how == "remove":
        assert any(covers(v, fr.first_seq + 1, fr.first_seq + 1) for v in gaps)
        assert any(covers(v, fr.first_seq + 2, fr.first_seq + 2) for v in violations_of(rep, "signature_mismatch"))


# -- segment headers -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "offset",
    [0, 9, 20, 27, 50, 90, 106, 130],
    ids=["magic", "version", "first_seq", "created", "prev_sig", "prev_mac", "node_id", "header_mac"],
)
def test_flipped_byte_in_a_segment_header(log, offset):
    seg = log.segs[1]
    lo, hi = log.seq_range(1)
    flip_byte(seg, offset)
    assert_verify_reports(log, "header_corrupt", lo, hi, seg.name)
    assert_query_flags(log, set(range(lo, hi + 1)), kinds={"header_corrupt"})


def test_flipped_byte_in_the_first_segment_header(log):
    seg = log.segs[0]
    lo, hi = log.seq_range(0)
    flip_byte(seg, 60)
    assert_verify_reports(log, "header_corrupt", lo, hi, seg.name)
    assert_query_flags(log, set(range(lo, hi + 1)))


# -- whole segments -----------------------------------------------------------------------------------


def test_segment_deleted_from_the_middle(log):
    victim, after = log.segs[1], log.segs[2]
    lo, hi = log.seq_range(1)
    victim.unlink()
    assert_verify_reports(
        log, "segment_missing", lo, hi, {victim.name, after.name}, only={"segment_missing"}, subprocess_=True
    )
    assert_query_flags(log, set(range(lo, hi + 1)), kinds={"segment_missing"})


@pytest.mark.parametrize("with_index", [True, False])
def test_first_segment_deleted_without_a_purge(log, with_index):
    victim = log.segs[0]
    lo, hi = log.seq_range(0)
    victim.unlink()
    if not with_index:
        victim.with_suffix(".idx").unlink(missing_ok=True)
    rep = assert_verify_reports(
        log, "segment_missing", 1, hi, {victim.name, log.segs[0].name}, only={"segment_missing"}
    )
    assert violations_of(rep, "segment_missing")[0]["seq_from"] == 1
    assert_query_flags(log, set(range(1, hi + 1)))


def test_sealed_segment_truncated_at_a_frame_boundary(log):
    seg = log.segs[1]
    frames = log.frames(1)
    cut = frames[-3]
    os.truncate(seg, cut.offset)
    hi = frames[-1].last_seq
    assert_verify_reports(
        log, "segment_missing", cut.first_seq, hi, {seg.name, log.segs[2].name}, only={"segment_missing"}
    )
    assert_query_flags(log, set(range(cut.first_seq, hi + 1)))


@pytest.mark.parametrize("into", [10, HEADER_SIZE + 30])
def test_sealed_segment_truncated_mid_frame(log, into):
    seg = log.segs[1]
    frames = log.frames(1)
    cut = frames[-3]
    os.truncate(seg, cut.offset + into)
    rep = assert_verify_reports(log, "truncated", cut.first_seq, cut.first_seq, seg.name)
    assert violations_of(rep, "truncated")[0]["seq_from"] == cut.first_seq
    assert_query_flags(log, set(range(cut.first_seq, frames[-1].last_seq + 1)))


def test_two_segments_swapped_by_name(log):
    a, b = log.segs[1], log.segs[2]
    ra, rb = log.seq_range(1), log.seq_range(2)
    tmp = a.with_name("swap.tmp")
    a.rename(tmp)
    b.rename(a)
    tmp.rename(b)
    rep = assert_verify_reports(log, "segment_misnamed", *rb, a.name)  # a's name now holds b's seqs
    assert_verify_reports(log, "segment_misnamed", *ra, b.name)
    # one finding per run, not one per entry
    assert len(rep["violations"]) <= 8, rep["violations"]
    rc, entries, _ = query_json(log.root)
    assert rc == 1
    ok, flagged = read_coverage(entries, N)
    assert set(range(1, N + 1)) <= set(ok) | flagged
    assert any("segment_misnamed" in (e.get("violation") or "") for e in entries)


def test_segment_duplicated_under_another_name(log):
    src = log.segs[1]
    lo, hi = log.seq_range(1)
    dup = src.with_name(f"{lo + 1:020d}.seg")
    shutil.copyfile(src, dup)
    rep = assert_verify_reports(log, "segment_duplicate", lo, hi, dup.name)
    assert violations_of(rep, "segment_misnamed")[0]["segment"] == dup.name
    # nothing is blamed on the original segments
    assert {v["segment"] for v in rep["violations"]} == {dup.name}
    rc, entries, _ = query_json(log.root)
    assert rc == 1
    assert any("segment_duplicate" in (e.get("violation") or "") for e in entries)


@pytest.mark.parametrize("other_id", ["gw2", "gw1"], ids=["other-node", "same-id-other-key"])
def test_segment_from_another_data_dir_replaces_ours(log, other_nodes, other_id):
    other = other_nodes[other_id]
    theirs = other.segs[1]
    ours = log.segs[1]
    assert theirs.name == ours.name
    lo, hi = log.seq_range(1)
    shutil.copyfile(theirs, ours)
    assert_verify_reports(log, "foreign_segment", lo, hi, ours.name, only={"foreign_segment"})
    assert_query_flags(log, set(range(lo, hi + 1)), kinds={"foreign_segment"})


def test_segment_from_another_data_dir_added(log, other_nodes):
    theirs = other_nodes["gw2"].segs[1]
    extra = log.segs[1].with_name(f"{log.seq_range(1)[0] + 5:020d}.seg")
    shutil.copyfile(theirs, extra)
    rep = assert_verify_reports(log, "foreign_segment", log.seq_range(1)[0] + 5, log.seq_range(1)[0] + 5, extra.name)
    assert {v["segment"] for v in rep["violations"]} == {extra.name}
    rc, entries, _ = query_json(log.root)
    assert rc == 1
    ok, _ = read_coverage(entries, N)
    assert set(ok) == set(range(1, N + 1))  # our own entries are all still there, intact


def test_reads_never_crash_on_garbage_segments(log):
    """Random bytes under a segment name, an empty file, a header-only stub."""
    (log.dd.segments / f"{5:020d}.seg").write_bytes(os.urandom(3000))
    (log.dd.segments / f"{6:020d}.seg").write_bytes(b"")
    (log.dd.segments / f"{7:020d}.seg").write_bytes(log.segs[0].read_bytes()[:100])
    rc, rep = verify_json(log.root)
    assert rc == 1 and rep["violations"]
    assert {v["segment"] for v in rep["violations"]} >= {f"{5:020d}.seg", f"{7:020d}.seg"}
    rc, entries, err = query_json(log.root)
    assert rc == 1 and "Traceback" not in err
    ok, flagged = read_coverage(entries, N)
    assert set(range(1, N + 1)) <= set(ok) | flagged


# -- retention is not tampering, but deleting more than it did is ---------------------------------


def _retention(lg: Log, config: Path, as_of: str) -> None:
    r = invoke_cli(lg.root, "retention", "run", "--as-of", as_of, config=config)
    assert r.exit_code == 0, r.output
    assert "dropped" in r.stdout


def test_retention_then_deleting_the_next_oldest_segment(log, tmp_path):
    cfg = write_config(tmp_path / "auditlog.toml", segment_max_bytes=SMALL_SEGMENT, retention_days=90)
    before = [p.name for p in log.segs]
    _retention(log, cfg, "2099-01-01")
    after = [p.name for p in log.segs]
    assert not set(before) & set(after)  # every old segment went
    rc, rep = verify_json(log.root)
    assert rc == 0 and rep["ok"], rep
    # more entries, more segments; the purge entry sits in the oldest one left
    append_events(log.dd, log.node, 200, start=1000, per_batch=PER_BATCH)
    rc, rep = verify_json(log.root)
    assert rc == 0 and rep["ok"], rep
    segs = log.segs
    assert len(segs) >= 3
    victim = segs[0]
    hi = frames_of(victim, log.node)[-1].last_seq
    victim.unlink()
    rc, rep = verify_json(log.root)
    assert rc == 1
    v = violations_of(rep, "segment_missing")
    assert v and v[0]["seq_from"] == 1 and v[0]["seq_to"] >= hi, rep


def test_partial_retention_then_deleting_the_next_oldest_segment(log, tmp_path):
    cfg = write_config(tmp_path / "auditlog.toml", segment_max_bytes=SMALL_SEGMENT, retention_days=90)
    first = frames_of(log.segs[0], log.node)
    newest_ts = max(r[1] for f in first for r in f.records)
    # the cutoff falls just after the first segment's newest entry: only it may go
    as_of = format_ts(newest_ts + 90 * 86_400_000_000 + 1)
    names = [p.name for p in log.segs]
    _retention(log, cfg, as_of)
    assert [p.name for p in log.segs] == names[1:]
    rc, rep = verify_json(log.root)
    assert rc == 0 and rep["ok"], rep
    rc, entries, _ = query_json(log.root, "--action", "audit.retention_purge")
    assert rc == 0 and len(entries) == 1
    d = entries[0]["details"]
    last = first[-1].last_seq
    assert (d["seq_from"], d["seq_to"], d["count"]) == (1, last, last)
    lo, hi = log.seq_range(0)
    log.segs[0].unlink()
    rc, rep = verify_json(log.root)
    assert rc == 1
    assert any(v["kind"] == "segment_missing" and covers(v, lo, hi) for v in rep["violations"]), rep
    assert_query_flags(log, set(range(lo, hi + 1)), last_seq=N + 1)


def test_retention_does_not_anchor_a_forged_purge_from_a_client(log, tmp_path):
    """An ``audit.retention_purge``-looking entry not written by the node is no anchor."""
    lo, hi = log.seq_range(0)
    sig = frames_of(log.segs[0], log.node)[-1].records[-1][10].hex()
    with LogWriter(log.dd, log.node, settings()) as w:
        w.append_batch(
            [EntryDraft("mallory", "audit.retention_purge", details={"segments": [[log.segs[0].name, lo, hi, sig]]})]
        )
    log.segs[0].unlink()
    rc, rep = verify_json(log.root)
    assert rc == 1
    assert any(v["kind"] == "segment_missing" and covers(v, 1, hi) for v in rep["violations"])


def test_intact_log_reads_clean(log):
    """The control: the pristine copy verifies and reads back whole, exit 0."""
    rc, rep = verify_json(log.root, subprocess_=True)
    assert rc == 0 and rep == {"ok": True, "entries_checked": N, "violations": []}
    rc, entries, err = query_json(log.root, subprocess_=True)
    assert rc == 0, err
    assert [e["seq"] for e in entries] == list(range(1, N + 1))
    assert all(e["integrity"] == "ok" for e in entries)
    assert [e["details"]["n"] for e in entries] == list(range(N))
    # timestamps are RFC 3339 and non-decreasing
    ts = [dt.datetime.fromisoformat(e["ts"].replace("Z", "+00:00")) for e in entries]
    assert ts == sorted(ts)
