"""query.linemerge: merged NDJSON lines come out exactly in (ts, node, seq) order
(or its reverse), whatever the chunking, ties and stream lengths; the peer
line-chunk wire format round-trips and refuses malformed chunks."""

from __future__ import annotations

import json
import random
from array import array
from datetime import UTC

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from auditlog.query.cluster.peers import PeerError, pack_line_chunk, unpack_line_chunk
from auditlog.query.linemerge import LineSource, merge_lines, node_ranks
from auditlog.query.lines import LEN_CODE, line_marks


class ListSource(LineSource):
    """A node's stream from a list of (ts, seq), handed out in the given chunk sizes;
    ``fail_after`` chunks it fails as a lost peer does."""

    def __init__(self, node: str, rows: list[tuple[int, int]], chunks: list[int], fail_after: int | None = None):
        super().__init__(node)
        self.rows = rows
        self.chunks = list(chunks)
        self.fail_after = fail_after
        self.served = 0

    async def next_lines(self):
        if self.fail_after is not None and self.served >= self.fail_after:
            self.fail("lost")
            return None
        if not self.rows:
            return None
        n = self.chunks.pop(0) if self.chunks else 3
        part, self.rows = self.rows[:n], self.rows[n:]
        self.served += 1
        lines = [line(self.node, ts, seq) for ts, seq in part]
        return [ts for ts, _ in part], line_marks(map(len, lines)), b"".join(lines)


def line(node: str, ts: int, seq: int) -> bytes:
    return json.dumps({"node": node, "seq": seq, "ts": ts}).encode() + b"\n"


def node_rows(rnd: random.Random, n: int, order: str) -> list[tuple[int, int]]:
    ts, rows = 1000, []
    for seq in range(1, n + 1):
        ts += rnd.choice([0, 0, 1, 2, 5])  # equal timestamps within a node happen
        rows.append((ts, seq))
    return rows[::-1] if order == "desc" else rows


async def merged(sources, order) -> list[tuple[int, str, int]]:
    out = []
    async for n, parts in merge_lines(sources, order, node_ranks(s.node for s in sources)):
        lines = b"".join(parts).splitlines()
        assert len(lines) == n
        for raw in lines:
            d = json.loads(raw)
            out.append((d["ts"], d["node"], d["seq"]))
    return out


def expected(per_node: dict[str, list[tuple[int, int]]], order: str) -> list[tuple[int, str, int]]:
    rows = [(ts, node, seq) for node, rs in per_node.items() for ts, seq in rs]
    return sorted(rows, reverse=(order == "desc"))


@settings(max_examples=150, deadline=None)
@given(
    seed=st.integers(0, 10**6),
    order=st.sampled_from(["asc", "desc"]),
    sizes=st.lists(st.integers(0, 60), min_size=1, max_size=4),
    chunking=st.lists(st.integers(1, 17), min_size=1, max_size=8),
)
async def test_merge_order_matches_a_full_sort(seed, order, sizes, chunking):
    rnd = random.Random(seed)
    names = ["node-b", "a", "node-a", "zz"][: len(sizes)]
    per_node = {name: node_rows(rnd, n, order) for name, n in zip(names, sizes)}
    sources = [ListSource(name, rows, [rnd.choice(chunking) for _ in range(50)]) for name, rows in per_node.items()]
    got = await merged(sources, order)
    assert got == expected(per_node, order)
    assert [s.consumed for s in sources] == [len(per_node[s.node]) for s in sources]


@pytest.mark.parametrize("run", [1, 2, 7, 50, 400])
@pytest.mark.parametrize("order", ["asc", "desc"])
async def test_runs_long_and_short_merge_exactly(run, order):
    """Nodes taking turns every ``run`` entries (a commit's entries share a ts and are
    contiguous): long runs are merged slice by slice, short ones fall back to one sort
    per round; both give the full sort's order, ties included."""
    rnd = random.Random(run)
    per_node: dict[str, list[tuple[int, int]]] = {"n1": [], "n2": [], "n3": []}
    t = 1000
    for turn in range(1200 // run):
        node = ["n1", "n2", "n3"][turn % 3] if turn % 5 else rnd.choice(["n1", "n2", "n3"])
        rows = per_node[node]
        same = rnd.random() < 0.3  # a run whose ts equals the last one's
        t += 0 if same else rnd.choice([1, 3])
        for _ in range(run):
            rows.append((t, len(rows) + 1))
    if order == "desc":
        per_node = {n: r[::-1] for n, r in per_node.items()}
    sources = [ListSource(n, r, [rnd.choice([5, 64, 300, 2000]) for _ in range(400)]) for n, r in per_node.items()]
    assert await merged(sources, order) == expected(per_node, order)


async def test_same_timestamp_on_every_node_orders_by_node_then_seq():
    per_node = {"n2": [(5, 1), (5, 2)], "n1": [(5, 1), (5, 2)], "n3": [(4, 1), (5, 2)]}
    for order in ("asc", "desc"):
        rows = {n: (r[::-1] if order == "desc" else r) for n, r in per_node.items()}
        got = await merged([ListSource(n, r, [1, 1, 1]) for n, r in rows.items()], order)
        assert got == expected(rows, order)


async def test_a_source_lost_mid_stream_stops_and_the_rest_still_arrives():
    rnd = random.Random(7)
    per_node = {"a": node_rows(rnd, 30, "asc"), "b": node_rows(rnd, 30, "asc")}
    lost = ListSource("b", per_node["b"], [5, 5, 5], fail_after=2)
    got = await merged([ListSource("a", per_node["a"], [4] * 10), lost], "asc")
    assert [r for r in got if r[1] == "a"] == [(ts, "a", s) for ts, s in per_node["a"]]
    assert [r for r in got if r[1] == "b"] == [(ts, "b", s) for ts, s in per_node["b"][:10]]
    assert got == sorted(got)
    assert lost.status["status"] == "unreachable" and lost.consumed == 10


async def test_no_sources_and_empty_sources():
    assert await merged([], "asc") == []
    assert await merged([ListSource("a", [], [])], "asc") == []


def test_line_chunk_round_trip():
    ts = [1_700_000_000_000_000, 1_700_000_000_000_001, -5]
    lines = [b'{"a":"x\\ny"}\n', b'{"b":"\xc3\xbc"}\n', b"{}\n"]
    lens = array(LEN_CODE, map(len, lines))
    msg = msgpack.unpackb(b"".join(pack_line_chunk(ts, lens, [lines[0], lines[1] + lines[2]], 2)), raw=False)
    assert unpack_line_chunk(msg) == (ts, [-1, 12, 23, 26], b"".join(lines), 2)
    one = msgpack.unpackb(b"".join(pack_line_chunk(ts[:1], lens[:1], [lines[0]], 0)), raw=False)
    assert unpack_line_chunk(one) == (ts[:1], [-1, 12], lines[0], 0)
    empty = msgpack.unpackb(b"".join(pack_line_chunk([], array(LEN_CODE), [], 0)), raw=False)
    assert unpack_line_chunk(empty) == ([], [-1], b"", 0)


@pytest.mark.parametrize("size", [0, 1, 255, 256, 65535, 65536, 300_000])
@pytest.mark.parametrize("bad", [0, 127, 128, 70_000])
def test_line_chunk_framing_is_msgpack(size, bad):
    """The hand-framed chunk decodes as the map msgpack itself would encode, at every
    bin-length boundary."""
    line = b"x" * (size - 1) + b"\n" if size else b""
    lens = array(LEN_CODE, [size] if size else [])
    ts = [7] if size else []
    raw = b"".join(pack_line_chunk(ts, lens, [line[: size // 2], line[size // 2 :]], bad))
    t = array("q", ts).tobytes()
    assert msgpack.unpackb(raw, raw=False) == {"t": t, "n": lens.tobytes(), "v": bad, "l": line}


def _lens(*ns: int) -> bytes:
    return array(LEN_CODE, ns).tobytes()


@pytest.mark.parametrize(
    "msg",
    [
        {"t": b"\0" * 7, "n": _lens(3), "l": b"{}\n", "v": 0},  # not whole int64s
        {"t": b"\0" * 16, "n": _lens(3), "l": b"{}\n", "v": 0},  # two stamps, one length
        {"t": b"\0" * 16, "n": _lens(1, 2), "l": b"{}\n", "v": 0},  # a line cut before its LF
        {"t": b"\0" * 16, "n": _lens(0, 3), "l": b"{}\n", "v": 0},  # an empty line
        {"t": b"\0" * 8, "n": _lens(2), "l": b"{}", "v": 0},  # line not terminated
        {"t": b"\0" * 8, "n": _lens(3), "l": b"{}\n{}\n", "v": 0},  # lengths short of the blob
        {"t": b"\0" * 8, "n": _lens(7), "l": b"{}\n", "v": 0},  # lengths beyond the blob
        {"t": b"\0" * 8, "n": _lens(5), "l": b"{\r}\n", "v": 0},  # a raw CR
        {"t": b"", "n": b"", "l": b"{}\n", "v": 0},  # lines without stamps
        {"t": "x", "n": _lens(3), "l": b"{}\n", "v": 0},
        {"t": b"\0" * 8, "n": "x", "l": b"{}\n", "v": 0},
        {"t": b"\0" * 8, "n": _lens(3), "l": b"{}\n", "v": "1"},
    ],
)
def test_malformed_line_chunks_are_refused(msg):
    with pytest.raises(PeerError):
        unpack_line_chunk(msg)


async def test_a_stream_out_of_order_is_cut_off_not_looped_on():
    good = ListSource("a", [(1, 1), (2, 2), (3, 3), (4, 4)], [2, 2])
    bad = ListSource("b", [(1, 1), (9, 2), (3, 3), (2, 4), (1, 5)], [2, 3])
    got = await merged([good, bad], "asc")
    assert [r for r in got if r[1] == "a"] == [(1, "a", 1), (2, "a", 2), (3, "a", 3), (4, "a", 4)]
    assert bad.status == {"status": "unreachable", "error": "sent entries out of order"}
    assert got == sorted(got)


# ------------------------------------------------------------------ a node's own lines


@pytest.mark.parametrize("damage", [False, True])
def test_lines_from_verified_frames_equal_lines_from_entries(tmp_path, damage):
    """LineTaker over the reader's items (whole verified frames and parts of them,
    damage) gives byte for byte the lines of the entry scan, also around a damaged
    frame, as lines and joined."""
    from helpers_engine import build_log, frames_of, segment_paths

    from auditlog.engine.items import VerifiedFrame
    from auditlog.engine.log import NodeLog
    from auditlog.export.csv import TimestampFormatter
    from auditlog.export.ndjson import ndjson_lines
    from auditlog.query.filters import Filter
    from auditlog.query.lines import cut_lines
    from auditlog.query.scan import read_node, scan_node
    from auditlog.query.sources import LineTaker

    dd, node = build_log(tmp_path / "data", 400, per_batch=7)
    if damage:
        seg = segment_paths(dd)[1]
        fr = frames_of(seg, node)[0]
        raw = bytearray(seg.read_bytes())
        raw[fr.payload_offset + 5] ^= 0x01
        seg.write_bytes(bytes(raw))
    log = NodeLog(dd, node)
    from auditlog.engine.entry import format_ts

    all_ts = sorted(e.ts for e in log.scan())
    mid = format_ts(all_ts[len(all_ts) // 2])
    cases = [
        ({}, "asc", None),
        ({}, "desc", None),
        ({}, "asc", 40),
        ({}, "desc", 80),
        ({"from": mid}, "asc", None),
        ({"to": mid}, "desc", None),
        ({"user": "alice"}, "asc", None),
        ({"target": "filter-3"}, "desc", None),
    ]
    kinds = set()
    for params, order, after in cases:
        flt = Filter.from_params(params)
        pos = None if after is None else (after, 100)
        want = ndjson_lines(scan_node(log, flt, order=order, after=pos), TimestampFormatter().format)
        taker = LineTaker(read_node(log, flt, order=order, after=pos), flt.from_us, flt.to_us, order)
        kinds |= {
            "whole" if type(b) is VerifiedFrame and b.whole else "part"
            for b in read_node(log, flt, order=order, after=pos)
        }
        got, ts = [], []
        while (chunk := taker.take(13)) is not None:
            ts += chunk[0]
            got += cut_lines(chunk[2], line_marks(chunk[1]))
        assert got == want, (params, order, after)
        assert ts == [_ts_of(line) for line in got]
        if damage and not params and after is None:
            assert any(b'"integrity":"violation"' in line for line in got)
    assert kinds == {"whole", "part"}  # both paths were taken


def _ts_of(line: bytes) -> int:
    from datetime import datetime

    text = json.loads(line)["ts"]
    d = datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    return int(d.timestamp()) * 1_000_000 + d.microsecond
