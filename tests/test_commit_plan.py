"""engine.commit.plan_commit, the pure unit the writer carries out, held to the format by
Hypothesis: whatever the entries' sizes and the segment limits, the planned bytes are a log
that verifies, frames and segments stay within their bounds, and only a commit's last frame
says that the commit ends."""

from __future__ import annotations

import struct

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from auditlog.engine.chain import GENESIS
from auditlog.engine.commit import plan_commit
from auditlog.engine.datadir import DataDir
from auditlog.engine.entry import EntryDraft, pack_draft
from auditlog.engine.frame import HEADER, HEADER_SIZE, MAX_PAYLOAD, OVERHEAD
from auditlog.engine.log import NodeLog
from auditlog.engine.segment import SegmentHeader, segment_name
from auditlog.engine.verify import verify_node

T0 = 1_773_478_800_000_000


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    commits=st.lists(st.lists(st.integers(0, 5000), min_size=1, max_size=40), min_size=1, max_size=5),
    seg_max=st.sampled_from([4096, 6000, 16384, 65536, 1 << 20]),
    packed=st.booleans(),
)
def test_planned_commits_are_a_log_that_verifies(tmp_path_factory, commits, seg_max, packed):
    dd = DataDir(tmp_path_factory.mktemp("plan") / "data")
    node = dd.init("gw1")
    frame_max = min(MAX_PAYLOAD, seg_max // 4)
    raw, h = SegmentHeader.build(node.key, "gw1", 1, T0, GENESIS, GENESIS)
    files = {1: bytearray(raw)}
    cur, size, has_frames = 1, h.size, False
    seq, sig, mac = 1, GENESIS, h.mac
    n = 0
    for i, pads in enumerate(commits):
        drafts = [
            EntryDraft("u", "config.filter_update", details={"n": n + j, "pad": "x" * k}) for j, k in enumerate(pads)
        ]
        n += len(drafts)
        plan = plan_commit(
            [pack_draft(d) for d in drafts] if packed else drafts,
            key=node.key,
            node="gw1",
            seq=seq,
            ts=T0 + i,
            prev_sig=sig,
            prev_mac=mac,
            segment_size=size,
            segment_has_frames=has_frames,
            segment_max_bytes=seg_max,
            frame_max_payload=frame_max,
        )
        flags = []
        for piece in plan.pieces:
            if piece.header is not None:
                assert has_frames, "a roll only leaves a segment that holds a frame"
                cur = piece.header.first_seq
                files[cur] = bytearray(piece.header_bytes)
                size, has_frames = piece.header.size, False
            assert piece.frames
            for f in piece.frames:
                assert f.offset == size
                fields = HEADER.unpack_from(f.data)
                plen, count, fl = fields[1], fields[2], fields[3]
                assert plen <= frame_max or count == 1, (plen, frame_max, count)
                assert len(f.data) == OVERHEAD + plen and count == f.count
                files[cur] += f.data
                size += len(f.data)
                # a segment grows past its limit only by a frame alone in it
                assert size <= seg_max or (not has_frames), (size, seg_max)
                has_frames = True
                flags.append(fl)
        assert flags == [1] * (len(flags) - 1) + [0]
        assert plan.next_seq == seq + len(drafts)
        seq, sig, mac = plan.next_seq, plan.last_sig, plan.last_mac
    for first, data in files.items():
        (dd.segments / segment_name(first)).write_bytes(bytes(data))
    rep = verify_node(dd, node)
    assert rep.ok and rep.entries_checked == n, rep.violations
    entries = list(NodeLog(dd, node).scan())
    assert [e.details["n"] for e in entries] == list(range(n))
    assert [e.ts for e in entries] == sorted(e.ts for e in entries)


def test_a_commit_that_fits_is_one_piece_in_the_active_segment(tmp_path):
    dd = DataDir(tmp_path / "data")
    node = dd.init("gw1")
    raw, h = SegmentHeader.build(node.key, "gw1", 1, T0, GENESIS, GENESIS)
    plan = plan_commit(
        [EntryDraft("u", "auth.login")] * 3,
        key=node.key,
        node="gw1",
        seq=1,
        ts=T0,
        prev_sig=GENESIS,
        prev_mac=h.mac,
        segment_size=h.size,
        segment_has_frames=False,
        segment_max_bytes=1 << 20,
        frame_max_payload=MAX_PAYLOAD,
    )
    assert len(plan.pieces) == 1 and plan.pieces[0].header is None and len(plan.pieces[0].frames) == 1
    f = plan.pieces[0].frames[0]
    assert (f.offset, f.first_seq, f.count) == (h.size, 1, 3)
    assert struct.unpack_from("<I", f.data, 12)[0] == 0 and f.data[:4] == b"ALF3"
    assert plan.last_mac == f.data[-32:] and len(f.data) > HEADER_SIZE
