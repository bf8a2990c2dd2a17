"""A directory listing that misses a segment name never becomes a gap in what is read.

One ``listdir`` of ``segments/`` while files are created and renamed there (a
writer's new segment, readers' ``.idx``/``.terms`` sidecars) is no snapshot:
on ext4 it was seen to leave out a segment that existed all along, and a
reader then reported ``segment_missing`` for seqs that were on disk.  These
tests make the listing leave names out (the kernel's part, which cannot be
provoked on demand) and check that every reader still finds every segment, and
that a segment really gone is still reported.
"""

from __future__ import annotations

import os

import pytest
from helpers_engine import append_events, build_log, draft, segment_paths, settings

from auditlog.engine.log import NodeLog
from auditlog.engine.verify import verify_node
from auditlog.engine.writer import LogWriter

N = 120


@pytest.fixture
def log(tmp_path):
    dd, node = build_log(tmp_path / "data", N, min_sealed=5)
    return dd, node


def _hide(monkeypatch, dd, names: set[str], times: int | None = None):
    """Leave ``names`` out of listings of the segment directory (``times`` listings, or all)."""
    real = os.listdir
    left = [times]

    def listdir(path="."):
        got = real(path)
        if os.fspath(path) == os.fspath(dd.segments) and (left[0] is None or left[0] > 0):
            if left[0] is not None:
                left[0] -= 1
            return [n for n in got if n not in names]
        return got

    monkeypatch.setattr(os, "listdir", listdir)


def _seqs(log: NodeLog) -> list[int]:
    entries = list(log.scan())
    assert all(e.integrity == "ok" for e in entries), [e for e in entries if e.integrity != "ok"][:1]
    return [e.seq for e in entries]


@pytest.mark.parametrize("which", ["middle", "first", "two_in_a_row"])
def test_a_reader_finds_the_segments_a_listing_missed(log, monkeypatch, which):
    dd, node = log
    names = [p.name for p in segment_paths(dd)]
    hidden = {"middle": {names[2]}, "first": {names[0]}, "two_in_a_row": {names[2], names[3]}}
    _hide(monkeypatch, dd, hidden[which])
    reader = NodeLog(dd, node)
    assert [i.name for i in reader.segment_infos()] == names
    assert _seqs(reader) == list(range(1, N + 1))
    assert reader.structure_problems(reader.segment_infos()) == []


def test_a_listing_that_missed_the_newest_segment_reads_as_a_prefix(log, monkeypatch):
    """Past the listing's end a reader does not look further (it would chase a writer
    that keeps rolling): it reads the committed prefix it listed, without damage."""
    dd, node = log
    names = [p.name for p in segment_paths(dd)]
    _hide(monkeypatch, dd, {names[-1]})
    reader = NodeLog(dd, node)
    infos = reader.segment_infos()
    assert [i.name for i in infos] == names[:-1]
    assert _seqs(reader) == list(range(1, infos[-1].last_seq + 1))
    assert reader.structure_problems(infos) == []
    assert verify_node(dd, node).ok


def test_the_head_of_a_shortened_log_missed_once_is_found_by_a_second_listing(log, monkeypatch):
    dd, node = log
    paths = segment_paths(dd)
    paths[0].unlink()  # the log now starts after seq 1, as after a retention purge
    names = [p.name for p in paths[1:]]
    _hide(monkeypatch, dd, {names[0]}, times=1)
    reader = NodeLog(dd, node)
    assert [i.name for i in reader.segment_infos()] == names


def test_verify_finds_the_segments_a_listing_missed(log, monkeypatch):
    dd, node = log
    names = [p.name for p in segment_paths(dd)]
    _hide(monkeypatch, dd, {names[0], names[3], names[-2]})
    rep = verify_node(dd, node)
    assert rep.ok, rep.violations
    assert rep.entries_checked == N


def test_a_writer_whose_listing_missed_the_newest_segment_continues_in_it(log, monkeypatch):
    dd, node = log
    names = [p.name for p in segment_paths(dd)]
    _hide(monkeypatch, dd, {names[-1], names[-2]})
    with LogWriter(dd, node, settings()) as w:
        assert w.active_name == names[-1]
        res = w.append_batch([draft(N)])
    assert (res.first_seq, res.last_seq) == (N + 1, N + 1)
    monkeypatch.undo()
    reader = NodeLog(dd, node)
    assert _seqs(reader) == list(range(1, N + 2))
    assert verify_node(dd, node).ok


def test_a_segment_really_gone_is_still_reported(log, monkeypatch):
    dd, node = log
    paths = segment_paths(dd)
    gone = paths[2]
    first, last = NodeLog(dd, node).segment_infos()[2].first_seq, NodeLog(dd, node).segment_infos()[2].last_seq
    gone.unlink()
    _hide(monkeypatch, dd, {paths[4].name})  # and the listing misses another one
    reader = NodeLog(dd, node)
    problems = reader.structure_problems(reader.segment_infos())
    assert [(p.kind, p.seq_from, p.seq_to) for p in problems] == [("segment_missing", first, last)]
    seqs = [e.seq for e in reader.scan() if e.integrity == "ok"]
    assert seqs == [s for s in range(1, N + 1) if not first <= s <= last]
    rep = verify_node(dd, node)
    assert [(v.kind, v.seq_from, v.seq_to) for v in rep.violations] == [("segment_missing", first, last)]


def test_a_long_lived_reader_keeps_finding_new_segments(tmp_path, monkeypatch):
    """Each new listing misses the segment before the newest one; the reader still reads all."""
    dd, node = build_log(tmp_path / "data", 60)
    reader = NodeLog(dd, node)
    total = 60
    for _ in range(4):
        append_events(dd, node, 30, start=total)
        total += 30
        names = [p.name for p in segment_paths(dd)]
        monkeypatch.undo()
        _hide(monkeypatch, dd, {names[-2]})
        assert _seqs(reader) == list(range(1, total + 1))
