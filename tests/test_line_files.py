"""Line files (``engine.lines``): each verified frame's NDJSON lines kept in ``<segment>.lines``.

Every read is compared byte for byte with the entry path (``ndjson_lines(list(log.scan()))``
without line files) while the files are tampered with, moved, torn, written under another
tag, and the segment is damaged under an intact block; then retention and a real server."""

from __future__ import annotations

import json
import os
import shutil
import struct
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers_engine import (
    build_log,
    flip_byte,
    frames_of,
    invoke_cli,
    run_cli,
    segment_paths,
    served_log,
    write_config,
)
from helpers_http import ServeProcess

from cli.config import load_config
from engine.datadir import DataDir
from engine.errors import ConfigError
from engine.items import VerifiedFrame
from engine.lines import LineFiles, cut_lines, line_marks, lines_path
from engine.log import NodeLog
from export.ndjson import LINES_TAG, line_renderer, ndjson_lines
from query.filters import Filter
from query.scan import read_node, scan_node
from query.sources import LineTaker

SEG = 8192  # 400 events in batches of 7: ~7 segments of ~8 frames
FILE_HEADER = struct.Struct("<4sBB")
BLOCK = struct.Struct("<QQII")  # frame offset, frame end, count, lines length
MAC = 32


# ----------------------------------------------------------------------------- helpers


def real_tag(node) -> str:
    return f"{LINES_TAG} {node.node_id}"


def line_files(node, keep: bool = True, tag: str | None = None, render=None) -> LineFiles:
    return LineFiles(node.key, tag or real_tag(node), render or line_renderer(node.node_id), keep=keep)


def log_with(dd, node, lf: LineFiles | None) -> NodeLog:
    log = NodeLog(dd, node)
    log.line_files = lf
    return log


@dataclass
class Piece:
    """What the NDJSON path (``query.sources.LineTaker``) made of one item of a read:
    ``kind`` "frame" for a whole verified frame (from a line file or rendered), "entries"
    for a part of a frame or damage (``entries``: what was rendered)."""

    kind: str
    ts: list[int]
    lines: list[bytes]
    entries: list | None


def pieces(log: NodeLog, items, lo=None, hi=None, order="asc") -> list[Piece]:
    out = []
    for item in items:
        ts, lens, blob, _ = LineTaker(log, iter([item]), lo, hi, order).take(1 << 30)
        whole = type(item) is VerifiedFrame and item.whole
        entries = (
            None
            if whole
            else (item.entries() if type(item) is VerifiedFrame else item.as_entries(lo, hi, None, order == "desc"))
        )
        out.append(Piece("frame" if whole else "entries", ts, cut_lines(blob, line_marks(lens)), entries))
    return out


def joined(ps: list[Piece]) -> tuple[list[int], list[bytes]]:
    """(ts, lines) of the pieces, in order."""
    return [t for p in ps for t in p.ts], [x for p in ps for x in p.lines]


def read(dd, node, lf: LineFiles | None, lo=None, hi=None, order="asc"):
    """(ts, lines, pieces) of an NDJSON read with line files ``lf``."""
    log = log_with(dd, node, lf)
    ps = pieces(log, log.read(lo, hi, order=order), lo, hi, order)
    return (*joined(ps), ps)


def reference(dd, node, *args, **kw):
    """(ts, lines) of the entry path: no line files involved."""
    entries = list(NodeLog(dd, node).scan(*args, **kw))
    return [e.ts for e in entries], ndjson_lines(entries)


def blocks(path: Path) -> tuple[str, list[tuple[int, int, int, int, int]]]:
    """(tag, [(file pos, frame offset, frame end, count, block size)]) of a whole line file,
    read by the layout in docs/FORMAT.md (per line an 8-byte ts and a 4-byte length)."""
    data = path.read_bytes()
    magic, _, n = FILE_HEADER.unpack_from(data)
    assert magic == b"AULN"
    pos, out = FILE_HEADER.size + n, []
    while pos + BLOCK.size <= len(data):
        off, end, count, nbytes = BLOCK.unpack_from(data, pos)
        assert not out or off == out[-1][2], "blocks chained frame to frame"
        out.append((pos, off, end, count, BLOCK.size + 12 * count + nbytes + MAC))
        pos += out[-1][4]
    assert pos == len(data), f"{path} is not a sequence of whole blocks"
    return data[FILE_HEADER.size : FILE_HEADER.size + n].decode(), out


def damage_setup(dd, node, segment: int):
    """(frame count, reference read, a segment's line file, its bytes, its blocks)."""
    path = lines_path(segment_paths(dd)[segment])
    return n_frames(dd, node), reference(dd, node), path, path.read_bytes(), blocks(path)[1]


def n_frames(dd, node) -> int:
    return sum(len(frames_of(p, node)) for p in segment_paths(dd))


def snapshot(dd) -> dict[str, tuple[bytes, int]]:
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in dd.segments.glob("*.lines")}


@pytest.fixture
def built(tmp_path):
    return build_log(tmp_path / "data", 400, per_batch=7, segment_max_bytes=SEG)


@pytest.fixture
def kept(built):
    """The log with every frame's lines kept (a first full read by a keeper)."""
    dd, node = built
    assert read(dd, node, line_files(node))[:2] == reference(dd, node)
    return dd, node


# ----------------------------------------------------------------------------- engine


def test_lines_equal_entry_path_rendered_then_from_files(built):
    dd, node = built
    total = n_frames(dd, node)
    listing = sorted(dd.segments.iterdir())
    lf = line_files(node, keep=False)  # renders every frame, writes nothing
    assert read(dd, node, lf)[:2] == reference(dd, node) and (lf.hits, lf.rendered) == (0, total)
    assert sorted(dd.segments.iterdir()) == listing
    lf = line_files(node)
    ts, lines, batches = read(dd, node, lf)
    assert (ts, lines) == reference(dd, node)
    assert all(b.kind == "frame" for b in batches)
    assert (lf.rendered, lf.hits, lf.rejected) == (total, 0, 0)
    for seg in segment_paths(dd):  # one block per frame, bound to its place
        tag, bl = blocks(lines_path(seg))
        assert tag == real_tag(node)
        assert [(b[1], b[2], b[3]) for b in bl] == [(f.offset, f.end, f.count) for f in frames_of(seg, node)]
    before = snapshot(dd)
    for order, keep in (("asc", True), ("desc", True), ("asc", False), ("desc", False)):
        ref_ts, ref_lines = reference(dd, node, order=order)
        lf = line_files(node, keep=keep)  # fresh readers: everything from the files
        ts, lines, batches = read(dd, node, lf, order=order)
        assert lines == ref_lines and ts == ref_ts, order
        assert (lf.hits, lf.rendered, lf.rejected) == (total, 0, 0)
        i = 0
        for b in batches:  # each frame's .ts are its entries' ts
            assert b.kind == "frame" and b.ts == ref_ts[i : i + len(b.ts)]
            i += len(b.ts)
    assert snapshot(dd) == before  # bytes and mtimes: nothing written again


def in_frame_order(dd, node) -> bool:
    """Does every line file hold blocks for its segment's first frames, in frame order?"""
    offs = {p: [b[1] for b in blocks(lines_path(p))[1]] for p in segment_paths(dd) if lines_path(p).exists()}
    return all(o == [f.offset for f in frames_of(p, node)][: len(o)] for p, o in offs.items())


def test_desc_reads_by_a_keeper_keep_blocks_in_frame_order_only(built):
    dd, node = built
    ref = reference(dd, node, order="desc")
    assert read(dd, node, line_files(node), order="desc")[:2] == ref and in_frame_order(dd, node)
    read(dd, node, line_files(node))
    segs = segment_paths(dd)
    path = lines_path(segs[1])
    os.truncate(path, blocks(path)[1][3][0])  # only its first 3 blocks left
    lines_path(segs[2]).unlink()
    lf = line_files(node)
    assert read(dd, node, lf, order="desc")[:2] == ref and lf.hits > 0 and in_frame_order(dd, node)
    assert len(blocks(path)[1]) == 4  # frame 3 came next in frame order
    read(dd, node, line_files(node))
    lf = line_files(node, keep=False)
    assert read(dd, node, lf, order="desc")[:2] == ref and (lf.hits, lf.rendered) == (n_frames(dd, node), 0)


@pytest.mark.parametrize("where", ["lines", "ts", "mac", "count"])
def test_tampered_block_is_never_served_and_is_kept_again(kept, where):
    dd, node = kept
    total, ref, path, good, bl = damage_setup(dd, node, 1)
    k = 2
    pos, _, _, _, size = bl[k]
    at = {"lines": pos + size - MAC - 40, "ts": pos + BLOCK.size + 8 + 1, "mac": pos + size - 5, "count": pos + 16}[
        where
    ]
    flip_byte(path, at, 0x01)
    bad = path.read_bytes()
    # a reader that does not keep: the block is refused, the file left as it is
    lf = line_files(node, keep=False)
    assert read(dd, node, lf)[:2] == ref and lf.rejected >= 1 and path.read_bytes() == bad
    # a keeper: refused, cut off with what follows, rendered and kept again
    lf = line_files(node)
    assert read(dd, node, lf)[:2] == ref and lf.rejected == 1
    assert lf.rendered == len(bl) - k and lf.hits == total - lf.rendered
    assert path.read_bytes() == good  # rendering is deterministic: the same blocks again
    assert read(dd, node, lf)[:2] == ref  # the same reader now uses them
    assert lf.hits == 2 * total - lf.rendered and lf.rejected == 1
    fresh = line_files(node, keep=False)
    assert read(dd, node, fresh, order="desc")[:2] == reference(dd, node, order="desc")
    assert (fresh.hits, fresh.rendered, fresh.rejected) == (total, 0, 0)


def test_blocks_moved_between_segments_or_from_another_node_are_refused(kept, tmp_path):
    dd, node = kept
    total = n_frames(dd, node)
    ref = reference(dd, node)
    a, b = (lines_path(p) for p in segment_paths(dd)[1:3])
    good_a, good_b = a.read_bytes(), b.read_bytes()
    assert blocks(a)[1][0][1] == blocks(b)[1][0][1]  # same frame offsets: only the MAC differs
    a.write_bytes(good_b)
    b.write_bytes(good_a)
    lf = line_files(node, keep=False)
    assert read(dd, node, lf)[:2] == ref and lf.rejected >= 2 and lf.hits < total
    lf = line_files(node)
    assert read(dd, node, lf)[:2] == ref and lf.rejected == 2
    assert (a.read_bytes(), b.read_bytes()) == (good_a, good_b)

    # the same events, node id and tag, in another data dir (another key)
    other_dd, other = build_log(tmp_path / "other", 400, per_batch=7, segment_max_bytes=SEG)
    assert other.node_id == node.node_id and other.key != node.key
    read(other_dd, other, line_files(other))
    segs = segment_paths(dd)
    for p, q in zip(segs, segment_paths(other_dd)):
        shutil.copyfile(lines_path(q), lines_path(p))
    lf = line_files(node, keep=False)
    assert read(dd, node, lf)[:2] == ref and lf.hits == 0 and lf.rejected >= len(segs)
    lf = line_files(node)
    assert read(dd, node, lf)[:2] == ref and lf.rejected == len(segs)
    lf = line_files(node)
    assert read(dd, node, lf)[:2] == ref and (lf.hits, lf.rejected) == (total, 0)


@pytest.mark.parametrize("rebuild_index", [False, True])
def test_damaged_segment_frame_is_flagged_never_served_from_its_block(kept, rebuild_index):
    dd, node = kept
    total = n_frames(dd, node)
    seg = segment_paths(dd)[1]
    fr = frames_of(seg, node)[2]
    lines_before = lines_path(seg).read_bytes()
    # one byte of the compressed payload: the frame fails its checksum (and is never opened)
    flip_byte(seg, (fr.payload_offset + fr.mac_offset) // 2, 0x01)
    for p in dd.segments.glob("*.idx") if rebuild_index else ():
        p.unlink()
    damaged = set(range(fr.first_seq, fr.last_seq + 1))
    for order in ("asc", "desc"):
        lf = line_files(node)
        ts, lines, batches = read(dd, node, lf, order=order)
        assert (ts, lines) == reference(dd, node, order=order)
        flagged = [b.entries for b in batches if b.kind == "entries"]
        # a compressed frame that does not verify is never decompressed: one marker
        assert len(flagged) == 1 and len(flagged[0]) == 1
        (marker,) = flagged[0]
        assert marker.integrity == "violation" and marker.seq == fr.first_seq
        assert f"seq {fr.first_seq}..{fr.last_seq}" in marker.violation
        rows = [json.loads(x) for x in lines]
        seqs = sorted(r["seq"] for r in rows)
        assert set(range(1, 401)) - set(seqs) == damaged - {fr.first_seq}
        assert all((r["integrity"] == "violation") == (r["seq"] in damaged) for r in rows)
        assert (lf.hits, lf.rendered, lf.rejected) == (total - 1, 0, 0)
    assert lines_path(seg).read_bytes() == lines_before  # the block is still there, intact


@pytest.mark.parametrize("cut", ["lines", "block_header", "file_header", "junk"])
def test_torn_tail_is_cut_back_and_kept_again(kept, cut):
    dd, node = kept
    total, ref, path, good, bl = damage_setup(dd, node, 2)
    pos, _, _, _, size = bl[-1]
    at = {"lines": pos + size // 2, "block_header": pos + 10, "file_header": 3, "junk": pos}[cut]
    os.truncate(path, at)
    if cut == "junk":  # a tail longer than the block written over it
        with open(path, "ab") as f:
            f.write(b"\xff" * 2 * size)
        at += 2 * size
    lost = 1 if cut != "file_header" else len(bl)
    lf = line_files(node, keep=False)
    assert read(dd, node, lf)[:2] == ref and (lf.hits, lf.rendered, lf.rejected) == (total - lost, lost, 0)
    assert path.stat().st_size == at
    lf = line_files(node)
    assert read(dd, node, lf)[:2] == ref and (lf.hits, lf.rendered) == (total - lost, lost)
    assert path.read_bytes() == good and len(blocks(path)[1]) == len(bl)
    lf = line_files(node, keep=False)
    assert read(dd, node, lf, order="desc")[:2] == reference(dd, node, order="desc")
    assert (lf.hits, lf.rendered, lf.rejected) == (total, 0, 0)


def test_file_deleted_under_a_running_keeper_is_kept_again(kept):
    """The server keeps one ``LineFiles`` for its lifetime; deleting a line file is
    "always safe" (FORMAT.md section 7) and the next reads should keep it again."""
    dd, node = kept
    lf = line_files(node)
    log = log_with(dd, node, lf)
    assert joined(pieces(log, log.read())) == reference(dd, node)
    path = lines_path(segment_paths(dd)[1])
    good = path.read_bytes()
    path.unlink()
    for _ in range(2):
        assert joined(pieces(log, log.read())) == reference(dd, node)
    assert path.exists() and path.read_bytes() == good


def test_file_of_another_tag_is_not_used_and_is_rewritten_by_a_keeper(built):
    dd, node = built
    total = n_frames(dd, node)
    ref = reference(dd, node)

    def stale(recs):  # what another renderer made of the same frames
        return [b'{"stale":%d}\n' % r[0] for r in recs]

    read(dd, node, line_files(node, tag=f"ndjson-0 {node.node_id}", render=stale))
    assert all(blocks(lines_path(p))[0] == "ndjson-0 gw1" for p in segment_paths(dd))
    before = snapshot(dd)
    lf = line_files(node, keep=False)
    assert read(dd, node, lf)[:2] == ref and (lf.hits, lf.rendered) == (0, total)
    assert snapshot(dd) == before
    relabelled = lines_path(segment_paths(dd)[0])  # "ndjson-0" -> "ndjson-1" in its header only
    flip_byte(relabelled, FILE_HEADER.size + len("ndjson-"), ord("0") ^ ord("1"))
    assert blocks(relabelled)[0] == real_tag(node)
    lf = line_files(node, keep=False)
    assert read(dd, node, lf)[:2] == ref and lf.hits == 0 and lf.rejected > 0
    lf = line_files(node)
    assert read(dd, node, lf)[:2] == ref and (lf.hits, lf.rendered) == (0, total)
    for seg in segment_paths(dd):
        tag, bl = blocks(lines_path(seg))
        assert tag == real_tag(node) and [b[1] for b in bl] == [f.offset for f in frames_of(seg, node)]
    lf = line_files(node)
    assert read(dd, node, lf)[:2] == ref and (lf.hits, lf.rendered) == (total, 0)
    # ... and the other renderer no longer finds its lines either
    lf = line_files(node, keep=False, tag="ndjson-0 gw1", render=stale)
    assert read(dd, node, lf)[1][0] == b'{"stale":1}\n' and lf.hits == 0


def test_time_range_and_after_seq_cut_frames_like_the_entry_path(kept):
    dd, node = kept
    entries = list(NodeLog(dd, node).scan())
    lo, hi = entries[10].ts, entries[-40].ts  # (a commit's entries share one ts: frames are whole)
    for order in ("asc", "desc"):
        lf = line_files(node)
        ts, lines, batches = read(dd, node, lf, lo, hi, order=order)
        assert (ts, lines) == reference(dd, node, lo, hi, order=order)
        assert 0 < len(lines) < len(entries) - 40 and lf.hits == len(batches)
        for after in (45, 300):  # inside a frame of 7 (seq 43..49, 295..301)
            lf = line_files(node)
            log = log_with(dd, node, lf)
            batches = pieces(log, read_node(log, Filter(), order=order, after=(after, 100)), order=order)
            want = list(scan_node(NodeLog(dd, node), Filter(), order=order, after=(after, 100)))
            assert joined(batches) == ([e.ts for e in want], ndjson_lines(want))
            assert {e.seq for e in want} == set(range(after + 1, 401) if order == "asc" else range(1, after))
            assert {b.kind for b in batches} == {"frame", "entries"} and lf.hits == len(batches) - 1
    flt = Filter(users=("alice",), from_us=lo)  # a predicate: every frame through entries
    lf = line_files(node)
    log = log_with(dd, node, lf)
    got = joined(pieces(log, read_node(log, flt), flt.from_us))
    assert got[1] == ndjson_lines(list(scan_node(NodeLog(dd, node), flt))) and lf.hits == 0


def test_retention_drops_side_files_with_their_segment(kept, tmp_path):
    dd, node = kept
    assert NodeLog(dd, node).build_missing_terms(limit=100) > 0
    sealed = [p.stem for p in segment_paths(dd)[:-1]]
    assert all((dd.segments / (stem + ext)).exists() for stem in sealed for ext in (".seg", ".idx", ".terms", ".lines"))
    cfg = write_config(tmp_path / "c.toml", segment_max_bytes=SEG, retention_days=90, fsync="none")
    r = invoke_cli(dd.root, "retention", "run", "--as-of", "2999-01-01", config=cfg)
    assert r.exit_code == 0, r.output
    from engine.retention import load_last_run
    from engine.state import StateSeal

    dropped = load_last_run(NodeLog(dd, node), StateSeal(node.key, node.node_id), dd.state)[0]["dropped_segments"]
    assert set(sealed) <= {Path(n).stem for n in dropped}
    left = sorted(p.name for p in dd.segments.iterdir())
    assert not [n for n in left if Path(n).stem in {Path(d).stem for d in dropped}], left
    assert {Path(n).stem for n in left if Path(n).suffix in (".idx", ".terms", ".lines")} <= {
        p.stem for p in segment_paths(dd)
    }  # no side file without its segment
    lf = line_files(node)
    assert read(dd, node, lf)[:2] == reference(dd, node)
    assert lines_path(segment_paths(dd)[0]).exists()


# ----------------------------------------------------------------------------- the server


def ndjson_and_pages(srv, key: str, order: str) -> tuple[bytes, list[dict]]:
    status, _, body = srv.request(f"/api/v1/audit-log?format=ndjson&order={order}", key)
    assert status == 200, body[:300]
    events, cursor = [], ""
    while cursor is not None:
        status, page = srv.json(
            f"/api/v1/audit-log?limit=10000&order={order}"
            + (f"&cursor={urllib.parse.quote(cursor)}" if cursor else ""),
            key,
        )
        assert status == 200, page
        events, cursor = events + page["events"], page["next_cursor"]
    return body, events


def parsed(body: bytes) -> list[dict]:
    return [json.loads(x) for x in body.splitlines()]


@pytest.mark.parametrize("enabled", [True, False])
def test_server_ndjson_with_and_without_line_files(tmp_path, enabled):
    data, cfg, key = served_log(tmp_path, "d", "" if enabled else "line_files = false\n")
    segs = data / "segments"
    srv = ServeProcess(data, config=cfg)
    try:
        srv.wait_ready()
        for order in ("asc", "desc"):
            first, events = ndjson_and_pages(srv, key, order)
            assert len(events) >= 3000 and parsed(first) == events
            assert [e["seq"] for e in events] == sorted((e["seq"] for e in events), reverse=order == "desc")
            kept = sorted(segs.glob("*.lines"))  # one per segment, kept by the first read
            assert len(kept) == (len(list(segs.glob("*.seg"))) if enabled else 0)
            files = {p: p.read_bytes() for p in kept}
            assert ndjson_and_pages(srv, key, order)[0] == first
            assert {p: p.read_bytes() for p in kept} == files
        assert srv.terminate() == 0, srv.stderr()
    finally:
        srv.close()
    assert bool(list(segs.glob("*.lines"))) == enabled


def test_server_sends_what_the_line_files_hold_only_when_enabled(tmp_path):
    """The wiring: a server with line files reads blocks under its tag (made here with
    the node key and a renderer that marks its lines); with ``line_files = false`` it
    never looks at them."""
    data, cfg, key = served_log(tmp_path, "d", "", n=600)
    dd = DataDir(data)
    node = dd.open()
    read(dd, node, line_files(node, render=lambda recs: [b'{"marked":%d}\n' % r[0] for r in recs]))
    marked_files, n_marked = snapshot(dd), len(list(NodeLog(dd, node).scan()))
    off = tmp_path / "off.toml"
    off.write_text(cfg.read_text() + "line_files = false\n")
    for config, marked in ((off, False), (cfg, True)):
        srv = ServeProcess(data, config=config)
        try:
            srv.wait_ready()
            status, _, body = srv.request("/api/v1/audit-log?format=ndjson", key)
            rows = parsed(body)
            assert status == 200 and len(rows) >= n_marked and (rows[0] == {"marked": 1}) == marked
            assert sum("marked" in r for r in rows) == (n_marked if marked else 0)
            assert srv.terminate() == 0
        finally:
            srv.close()
        if not marked:
            assert snapshot(dd) == marked_files


# ----------------------------------------------------------------------------- config


@pytest.mark.parametrize("value", ['"yes"', "1"])
def test_line_files_setting_must_be_a_bool(tmp_path, value):
    cfg = tmp_path / "c.toml"
    cfg.write_text(f"line_files = {value}\n")
    with pytest.raises(ConfigError) as ei:
        load_config(cfg)
    assert "line_files" in str(ei.value) and ei.value.exit_code == 2
    assert run_cli(tmp_path / "d", "init", "--node-id", "gw1").returncode == 0
    p = run_cli(tmp_path / "d", "verify", config=cfg)
    assert p.returncode == 2 and "line_files" in p.stderr and "Traceback" not in p.stderr
    for text, want in (("line_files = false\n", False), ("line_files = true\n", True), ("", True)):
        cfg.write_text(text)
        assert load_config(cfg).line_files is load_config(cfg).store_settings().line_files is want
