"""SPEC 4: "flipping any single byte of a sealed segment is detected" -- checked byte by byte.

A small log (two sealed segments and the active one, a few frames each) is
damaged one byte at a time, in place, and restored after each check.
``engine.verify.verify_node`` runs in-process (fast); for sealed segments the
read path (``NodeLog.scan``) must also flag the damage, never raise and never
drop a seq without saying so.
"""

from __future__ import annotations

import shutil

import pytest
from helpers_engine import draft, flip_byte, init_dir, segment_header, segment_paths
from helpers_engine import settings as store_settings
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from auditlog.engine.datadir import DataDir
from auditlog.engine.log import NodeLog
from auditlog.engine.verify import verify_node
from auditlog.engine.writer import LogWriter

N = 9


@pytest.fixture(scope="module")
def small_log(tmp_path_factory):
    root = tmp_path_factory.mktemp("every-byte") / "data"
    dd, node = init_dir(root)
    with LogWriter(dd, node, store_settings()) as w:
        w.append_batch([draft(0), draft(1)])
        w.append_batch([draft(2)])
        w.roll()
        w.append_batch([draft(3), draft(4), draft(5)])
        w.append_batch([draft(6)])
        w.roll()
        w.append_batch([draft(7), draft(8)])
    segs = segment_paths(dd)
    assert len(segs) == 3
    rep = verify_node(dd, node)
    assert rep.ok and rep.entries_checked == N
    return dd, node, segs


def _scan_accounts_for_everything(dd, node) -> bool:
    """The read path flags something and every seq is returned or covered by a flag."""
    entries = list(NodeLog(dd, node).scan())
    bad = [e for e in entries if e.integrity != "ok"]
    assert all(e.violation for e in bad)
    ok_seqs = {e.seq for e in entries if e.integrity == "ok"}
    # whatever is missing must at least be behind a flag at or before it
    missing = set(range(1, N + 1)) - ok_seqs - {e.seq for e in bad}
    if missing:
        assert bad and min(e.seq for e in bad) <= min(missing), (missing, bad)
    return bool(bad)


def _check_all_offsets(dd, node, target, offsets, mask=0xFF, read_path=True):
    undetected, unflagged = [], []
    for off in offsets:
        flip_byte(target, off, mask)
        try:
            rep = verify_node(dd, node)
            if rep.ok:
                undetected.append(off)
            elif not any(v.segment == target.name for v in rep.violations):
                undetected.append((off, "blamed elsewhere", [v.segment for v in rep.violations]))
            if read_path and not _scan_accounts_for_everything(dd, node):
                unflagged.append(off)
        finally:
            flip_byte(target, off, mask)
    return undetected, unflagged


@pytest.mark.parametrize("which", [0, 1], ids=["first-sealed", "second-sealed"])
def test_every_byte_of_a_sealed_segment(small_log, which):
    dd, node, segs = small_log
    target = segs[which]
    size = target.stat().st_size
    undetected, unflagged = _check_all_offsets(dd, node, target, range(size))
    assert undetected == [], f"flips not reported by verify at offsets {undetected}"
    assert unflagged == [], f"flips not flagged by the read path at offsets {unflagged}"
    assert verify_node(dd, node).ok  # everything restored


@pytest.mark.parametrize("mask", [0xFF, 0x01, 0x80])
def test_every_byte_of_the_first_segment_header(small_log, mask):
    dd, node, segs = small_log
    target = segs[0]
    hsize = segment_header(target, node).size
    assert hsize > 100
    undetected, unflagged = _check_all_offsets(dd, node, target, range(hsize), mask)
    assert undetected == [] and unflagged == []


def test_every_byte_of_the_active_segment_with_no_writer_running(small_log):
    """Verify (no writer holds the lock) also catches every flip in the active segment:
    a flip that makes the last frame look cut short is reported as a torn tail."""
    dd, node, segs = small_log
    target = segs[-1]
    undetected, _ = _check_all_offsets(dd, node, target, range(target.stat().st_size), read_path=False)
    assert undetected == []


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_random_damage_anywhere_is_detected(small_log, data):
    dd, node, segs = small_log
    which = data.draw(st.integers(0, len(segs) - 1), label="segment")
    target = segs[which]
    original = target.read_bytes()
    start = data.draw(st.integers(0, len(original) - 1), label="offset")
    length = data.draw(st.integers(1, min(16, len(original) - start)), label="length")
    new = data.draw(st.binary(min_size=length, max_size=length), label="bytes")
    if new == original[start : start + length]:
        new = bytes([new[0] ^ 0x5A]) + new[1:]
    try:
        target.write_bytes(original[:start] + new + original[start + length :])
        rep = verify_node(dd, node)
        assert not rep.ok, (target.name, start, new)
        if which < len(segs) - 1:
            assert _scan_accounts_for_everything(dd, node)
    finally:
        target.write_bytes(original)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_random_cut_of_a_sealed_segment_is_detected(small_log, data):
    dd, node, segs = small_log
    which = data.draw(st.integers(0, len(segs) - 2), label="segment")
    target = segs[which]
    original = target.read_bytes()
    cut = data.draw(st.integers(0, len(original) - 1), label="new size")
    try:
        target.write_bytes(original[:cut])
        assert not verify_node(dd, node).ok
        assert _scan_accounts_for_everything(dd, node)
    finally:
        target.write_bytes(original)


def test_the_fixture_is_restored_intact(small_log, tmp_path):
    """Control: the same files, copied untouched, verify clean and read back whole."""
    dd, node, segs = small_log
    root = tmp_path / "copy"
    shutil.copytree(dd.root, root)
    copy = DataDir(root)
    assert verify_node(copy, node).ok
    entries = list(NodeLog(copy, node).scan())
    assert [e.seq for e in entries] == list(range(1, N + 1))
    assert [e.details["n"] for e in entries] == list(range(N))
