"""docs/FORMAT.md is precise enough to verify a log without auditlog code.

``format_verifier.py`` was written from the document alone.  These tests build
real logs through the engine and check that the independent verifier accepts
them, computes the same signatures as the engine, and catches tampering.
"""

from __future__ import annotations

import ast
import hmac
import os
import re
import shutil
import struct
import sys
from pathlib import Path

import pytest

from auditlog.engine import clock
from auditlog.engine.chain import NodeKey
from auditlog.engine.datadir import DataDir
from auditlog.engine.entry import EntryDraft, canonical_bytes, packed_len, record_from_canonical, sort_details
from auditlog.engine.frame import build_frame
from auditlog.engine.log import NodeLog
from auditlog.engine.retention import DAY_US, run_retention
from auditlog.engine.segment import SegmentHeader
from auditlog.engine.settings import StoreSettings
from auditlog.engine.verify import verify_node
from auditlog.engine.writer import LogWriter

sys.path.insert(0, str(Path(__file__).parent))
from format_verifier import verify_data_dir  # noqa: E402

DOC = Path(__file__).resolve().parent.parent / "docs" / "FORMAT.md"
VERIFIER = Path(__file__).resolve().parent / "format_verifier.py"
NODE = "gw-node-7"
# small segments so the log spans several files; frames then hold <= 2 KiB of records
SETTINGS = StoreSettings(segment_max_bytes=8192, fsync="none")


def _drafts(batch: int) -> list[EntryDraft]:
    """Varied entries: nested maps, unicode, IPv6, big/negative ints, floats, long strings."""
    if batch % 4 == 3:
        # many tiny records: frames with >= 16 records (array16 payload header)
        return [EntryDraft("svc", "auth.api_key_used", success=bool(i % 2)) for i in range(70)]
    out = []
    for i in range(batch % 5 + 1):
        details = {
            "zeta": i,
            "alpha": {"nested": {"z": [1, 2, {"b": None, "a": True}], "a": -5}},
            "subject": "Grüße aus Köln — 日本語 🔐",
            "ratio": 0.25 * i,
            "big": 2**63 - 1,
            "neg": -(2**40),
            "long": "x" * (40 + 90 * i),
            "list": ["a", 1, 2.5, False],
        }
        out.append(
            EntryDraft(
                user=f"admin{i}@example.com" if i % 2 else "Zoë",
                action="config.filter_update" if i % 2 else "quarantine.release",
                target=f"filter-{batch}-{i}" if i % 3 else None,
                domain="example.org" if i % 2 else None,
                ip="2001:db8::8a2e:370:7334" if i % 2 else "192.0.2.10",
                user_agent="Mozilla/5.0 (X11; Linux x86_64) — ünïcode" if i == 1 else None,
                success=i != 2,
                details=sort_details(details),  # as ingest stores them
            )
        )
    if batch == 5:
        # handed to the writer unsorted, as the engine's own bookkeeping entries are
        out.append(EntryDraft("system", "audit.export", details={"zz": 1, "aa": {"y": 2, "b": 3}}))
    if batch == 6:
        out.append(EntryDraft("system", "custom.big_record", details={"blob": "é" * 3000}))
    return out


def _build(root: Path, batches: int = 40) -> tuple[DataDir, object, int]:
    dd = DataDir(root)
    node = dd.init(NODE)
    total = 0
    with LogWriter(dd, node, SETTINGS) as w:
        for b in range(batches):
            drafts = _drafts(b)
            w.append_batch(drafts)
            total += len(drafts)
    return dd, node, total


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("fmt") / "data"
    dd, node, total = _build(root)
    return dd, node, total


def _copy(dd: DataDir, dest: Path) -> Path:
    shutil.copytree(dd.root, dest)
    os.chmod(dest / "node.key", 0o600)
    return dest


def _segments(root: Path) -> list[Path]:
    return sorted((root / "segments").glob("*.seg"))


def _frame_offsets(data: bytes) -> list[tuple[int, int]]:
    """(offset, payload_len) of each frame, walking the layout in docs/FORMAT.md."""
    pos = struct.unpack_from("<I", data, 12)[0]
    out = []
    while pos < len(data):
        plen = struct.unpack_from("<I", data, pos + 4)[0]
        out.append((pos, plen))
        pos += 80 + plen
    return out


# ---------------------------------------------------------------------------- tests


def test_verifier_imports_only_stdlib_msgpack_xxhash_zstandard():
    tree = ast.parse(VERIFIER.read_text())
    mods = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            mods.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, "relative import in the independent verifier"
            mods.add(node.module.split(".")[0])
    allowed = set(sys.stdlib_module_names) | {"msgpack", "xxhash", "zstandard"}
    assert mods <= allowed, f"verifier imports {mods - allowed}"


def test_intact_log_verifies(built):
    dd, node, total = built
    segs = _segments(dd.root)
    assert len(segs) >= 4, "the test log should span several segments"
    res = verify_data_dir(dd.root)
    assert res.problems == []
    assert res.entries_verified == total
    # the engine agrees on the same data
    report = verify_node(dd, node)
    assert report.ok and report.entries_checked == total


def test_signatures_equal_the_engine(built):
    dd, node, total = built
    res = verify_data_dir(dd.root)
    entries = list(NodeLog(dd, node).scan())
    assert len(entries) == total
    assert all(e.integrity == "ok" for e in entries)
    for e in entries:
        assert res.signatures[e.seq] == e.signature, f"seq {e.seq}"
    # 5.1: the writer stores (and signs) every map sorted, at any depth, even for
    # drafts handed over unsorted (like the engine's own bookkeeping entries)
    exported = [e for e in entries if e.action == "audit.export"]
    assert exported and list(exported[0].details) == ["aa", "zz"]
    assert list(exported[0].details["aa"]) == ["b", "y"]
    assert all(_sorted_maps(e.details) for e in entries)
    assert any(e.action == "custom.big_record" for e in entries)


def _sorted_maps(v) -> bool:
    if isinstance(v, dict):
        return list(v) == sorted(v) and all(_sorted_maps(x) for x in v.values())
    if isinstance(v, (list, tuple)):
        return all(_sorted_maps(x) for x in v)
    return True


def test_derived_files_match_section_7(built):
    """.idx: msgpack body + HMAC(K_idx, label || body), K_idx derived as documented."""
    import msgpack

    dd, _, _ = built
    k_idx = hmac.digest(dd.key_path.read_bytes(), b"auditlog derive:index", "sha256")
    segs = _segments(dd.root)
    idx_files = sorted((dd.root / "segments").glob("*.idx"))
    assert [p.stem for p in idx_files] == [s.stem for s in segs[:-1]], "one .idx per sealed segment"
    for p in idx_files:
        raw = p.read_bytes()
        body, mac = raw[:-32], raw[-32:]
        assert hmac.digest(k_idx, b"index" + body, "sha256") == mac
        d = msgpack.unpackb(body, raw=False, strict_map_key=False)
        seg = p.with_suffix(".seg").read_bytes()
        header_len = struct.unpack_from("<I", seg, 12)[0]
        assert d["v"] == 3 and d["name"] == p.with_suffix(".seg").name and d["size"] == len(seg)
        assert "terms" not in d  # term postings live in .terms files (section 7)
        assert d["header_mac"] == seg[header_len - 32 : header_len]
        assert [r[0] for r in d["frames"]] == [o for o, _ in _frame_offsets(seg)]
    assert not (dd.root / "segments" / "MANIFEST").exists(), "no MANIFEST is written (section 7)"


def test_flipped_payload_byte_is_reported(built, tmp_path):
    dd, _, _ = built
    root = _copy(dd, tmp_path / "data")
    seg = _segments(root)[1]
    data = bytearray(seg.read_bytes())
    off, plen = _frame_offsets(bytes(data))[0]
    data[off + 48 + plen // 2] ^= 0x01
    seg.write_bytes(bytes(data))
    res = verify_data_dir(root)
    assert any(p.kind == "checksum_mismatch" and p.segment == seg.name for p in res.problems), res.problems
    assert res.entries_verified < built[2]


def test_any_flipped_byte_of_a_sealed_segment_is_reported(built, tmp_path):
    """SPEC 4: every byte is covered by a checksum, a MAC or a structural check."""
    dd, _, _ = built
    root = _copy(dd, tmp_path / "data")
    seg = _segments(root)[1]
    original = seg.read_bytes()
    header_len = struct.unpack_from("<I", original, 12)[0]
    positions = set(range(header_len + 48))  # whole header + first frame header
    positions.update(range(0, len(original), 29))  # a sample of the rest
    for off, plen in _frame_offsets(original):
        positions.update((off + 48 + plen, off + 79 + plen))  # first and last MAC byte
    positions.add(len(original) - 1)
    for pos in sorted(positions):
        data = bytearray(original)
        data[pos] ^= 0x40
        seg.write_bytes(bytes(data))
        assert verify_data_dir(root).problems, f"flip at byte {pos} of {seg.name} not detected"
    seg.write_bytes(original)
    assert verify_data_dir(root).problems == []


def _flip(path: Path, pos: int) -> None:
    data = bytearray(path.read_bytes())
    data[pos] ^= 0x40
    path.write_bytes(bytes(data))


def _tamper(tamper: str, segs: list[Path], tmp_path: Path) -> None:
    if tamper == "payload_first_frame":
        off, _ = _frame_offsets(segs[1].read_bytes())[0]
        _flip(segs[1], off + 60)
    elif tamper == "frame_magic":
        off, _ = _frame_offsets(segs[1].read_bytes())[1]
        _flip(segs[1], off)
    elif tamper == "frame_count":
        off, _ = _frame_offsets(segs[1].read_bytes())[1]
        _flip(segs[1], off + 8)
    elif tamper == "last_frame_mac":
        off, plen = _frame_offsets(segs[1].read_bytes())[-1]
        _flip(segs[1], off + 79 + plen)
    elif tamper == "segment_header":
        _flip(segs[1], 30)
    elif tamper == "first_segment_header":
        _flip(segs[0], 30)
    elif tamper == "delete_middle":
        segs[1].unlink()
    elif tamper == "delete_first":
        segs[0].unlink()
    elif tamper == "truncate_sealed":
        segs[1].write_bytes(segs[1].read_bytes()[:-10])
    elif tamper == "torn_tail":
        data = segs[-1].read_bytes()
        assert len(data) > 200
        segs[-1].write_bytes(data[:-10])
    elif tamper == "garbage_tail":
        segs[-1].write_bytes(segs[-1].read_bytes() + bytes(100))
    elif tamper == "duplicate_segment":
        shutil.copy(segs[1], segs[1].with_name(f"{int(segs[1].stem) + 1:020d}.seg"))
    elif tamper == "swap_names":
        a, b = segs[1], segs[2]
        tmp = a.with_name("x.tmp")
        a.rename(tmp)
        b.rename(a)
        tmp.rename(b)
    elif tamper == "foreign_key":
        other = DataDir(tmp_path / "other")
        other_node = other.init(NODE)
        with LogWriter(other, other_node, SETTINGS) as w:
            w.append_batch(_drafts(1))
        shutil.copy(_segments(other.root)[0], segs[0])
    else:  # pragma: no cover
        raise AssertionError(tamper)


@pytest.mark.parametrize(
    "tamper, kind",
    [
        ("payload_first_frame", "checksum_mismatch"),
        ("frame_magic", "frame_corrupt"),
        ("frame_count", "mac_mismatch"),
        ("last_frame_mac", "mac_mismatch"),
        ("segment_header", "header_corrupt"),
        ("first_segment_header", "header_corrupt"),
        ("delete_middle", "segment_missing"),
        ("delete_first", "segment_missing"),
        ("truncate_sealed", "truncated"),
        ("torn_tail", "torn_tail"),
        ("garbage_tail", "frame_corrupt"),
        ("duplicate_segment", "segment_duplicate"),
        ("swap_names", "segment_misnamed"),
        ("foreign_key", "foreign_segment"),
    ],
)
def test_tampering_is_reported_like_the_engine(built, tmp_path, tamper, kind):
    """The document's checks find what the engine finds: the same violation kinds."""
    dd, _, _ = built
    root = _copy(dd, tmp_path / "data")
    _tamper(tamper, _segments(root), tmp_path)
    for p in (root / "segments").glob("*.idx"):
        p.unlink()
    kinds = {p.kind for p in verify_data_dir(root).problems}
    assert kind in kinds, kinds
    engine_kinds = {v.kind for v in verify_node(DataDir(root), DataDir(root).open()).violations}
    assert kinds == engine_kinds


def test_retention_anchor_is_accepted(tmp_path):
    dd, node, total = _build(tmp_path / "data", batches=8)
    with LogWriter(dd, node, SETTINGS) as w:
        report = run_retention(w, as_of_us=clock.now_us() + 400 * DAY_US)
        assert report.dropped_entries > 0
        w.append_batch(_drafts(1))
    first = _segments(dd.root)[0]
    assert not first.name.endswith("00001.seg"), "retention should have dropped the first segment"
    res = verify_data_dir(dd.root)
    assert res.problems == []
    entries = list(NodeLog(dd, node).scan())
    assert res.entries_verified == len(entries)
    purge = [e for e in entries if e.action == "audit.retention_purge"]
    assert len(purge) == 1 and purge[0].details["seq_from"] == 1
    assert res.signatures[purge[0].seq] == purge[0].signature


def test_missing_head_without_anchor_is_reported(built, tmp_path):
    dd, _, _ = built
    root = _copy(dd, tmp_path / "data")
    _segments(root)[0].unlink()
    problems = verify_data_dir(root).problems
    assert [(p.kind, p.seq_from) for p in problems] == [("segment_missing", 1)]


def _doc_block(tag: str) -> str:
    m = re.search(rf"```{tag}\n(.*?)```", DOC.read_text(), re.S)
    assert m, f"no ```{tag} block in {DOC}"
    return m.group(1)


def _vector_dir(tmp_path, seg_bytes: bytes) -> Path:
    key = bytes(range(32))
    root = tmp_path / "data"
    (root / "segments").mkdir(parents=True)
    (root / "node.id").write_text("node-1\n")
    fd = os.open(root / "node.key", os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, key)
    os.close(fd)
    (root / "segments" / "00000000000000000001.seg").write_bytes(seg_bytes)
    return root


def test_doc_test_vector(tmp_path):
    """Section 11.1: the published version 1 bytes verify, and the engine produces exactly them."""
    seg_bytes = bytes.fromhex("".join(_doc_block("hex-segment").split()))
    values = dict(line.split() for line in _doc_block("test-vector").strip().splitlines())
    key = bytes(range(32))
    root = _vector_dir(tmp_path, seg_bytes)

    res = verify_data_dir(root)
    assert res.problems == [] and res.entries_verified == 1
    assert res.signatures[1].hex() == values["signature"]

    # the engine writes byte-identical output for the documented inputs (format 1)
    nk = NodeKey(key)
    assert nk.key_id.hex() == values["key_id"]
    assert hmac.digest(key, b"auditlog derive:index", "sha256").hex() == values["index_key"]
    ts = 1773479553123456
    hdr, h = SegmentHeader.build(nk, "node-1", 1, ts, bytes(32), bytes(32), version=1)
    draft = EntryDraft(
        "alice",
        "config.dkim_rotate",
        "example.com",
        "example.com",
        "2001:db8::1",
        None,
        True,
        {"new": "k2", "old": "k1"},
    )
    canon = canonical_bytes("node-1", 1, ts, draft)
    assert canon.hex() == values["canonical"]
    sig = nk.mac(bytes(32), canon)
    frame, _ = build_frame([record_from_canonical(packed_len("node-1"), canon, sig)], 1, ts, ts, nk, h.mac, version=1)
    assert hdr + frame == seg_bytes
    dd = DataDir(root)
    assert verify_node(dd, dd.open()).ok


def test_doc_test_vector_version_2(tmp_path):
    """Section 11.2: the published version 2 bytes (one commit in two frames, the first
    saying that it continues) verify, and the engine's writer produces exactly them."""
    seg_bytes = bytes.fromhex("".join(_doc_block("hex-segment-2").split()))
    values = dict(line.split() for line in _doc_block("test-vector-2").strip().splitlines())
    root = _vector_dir(tmp_path, seg_bytes)
    res = verify_data_dir(root)
    assert res.problems == [] and res.entries_verified == 2
    assert [res.signatures[1].hex(), res.signatures[2].hex()] == [values["signature1"], values["signature2"]]
    assert seg_bytes[8:10] == b"\x02\x00" and seg_bytes[143:147] == b"ALF2"
    assert seg_bytes[143 + 12] == 1 and seg_bytes[347 + 12] == 0  # flags: continues, then ends
    dd = DataDir(root)
    assert verify_node(dd, dd.open()).ok
    entries = list(NodeLog(dd, dd.open()).scan())
    assert [(e.seq, e.user, e.integrity) for e in entries] == [(1, "alice", "ok"), (2, "bob", "ok")]

    # the engine's frame builder gives exactly these bytes
    nk = NodeKey(bytes(range(32)))
    ts = 1773479553123456
    hdr, h = SegmentHeader.build(nk, "node-1", 1, ts, bytes(32), bytes(32), version=2)
    assert h.mac.hex() == values["header_mac"]
    d1 = EntryDraft(
        "alice",
        "config.dkim_rotate",
        "example.com",
        "example.com",
        "2001:db8::1",
        None,
        True,
        {"new": "k2", "old": "k1"},
    )
    d2 = EntryDraft(
        "bob", "config.dkim_rotate_confirm", "example.com", "example.com", None, None, True, {"confirms": "node-1:1"}
    )
    c1, c2 = canonical_bytes("node-1", 1, ts, d1), canonical_bytes("node-1", 2, ts, d2)
    assert c2.hex() == values["canonical2"]
    s1 = nk.mac(bytes(32), c1)
    s2 = nk.mac(s1, c2)
    f1, m1 = build_frame(
        [record_from_canonical(packed_len("node-1"), c1, s1)], 1, ts, ts, nk, h.mac, continues=True, version=2
    )
    f2, _ = build_frame([record_from_canonical(packed_len("node-1"), c2, s2)], 2, ts, ts, nk, m1, version=2)
    assert hdr + f1 + f2 == seg_bytes


def test_doc_test_vector_version_3(tmp_path):
    """Section 11.3: the published version 3 bytes (compressed payloads) verify, the first
    payload decompresses to the published plain array, and the writer produces exactly them."""
    import zstandard

    seg_bytes = bytes.fromhex("".join(_doc_block("hex-segment-3").split()))
    values = dict(line.split() for line in _doc_block("test-vector-3").strip().splitlines())
    root = _vector_dir(tmp_path, seg_bytes)
    res = verify_data_dir(root)
    assert res.problems == [] and res.entries_verified == 2
    assert [res.signatures[1].hex(), res.signatures[2].hex()] == [values["signature1"], values["signature2"]]
    assert seg_bytes[8:10] == b"\x03\x00" and seg_bytes[143:147] == b"ALF3" and seg_bytes[351:355] == b"ALF3"
    assert seg_bytes[143 + 12] == 1 and seg_bytes[351 + 12] == 0
    plen = int.from_bytes(seg_bytes[147:151], "little")
    payload = seg_bytes[191 : 191 + plen]
    assert zstandard.ZstdDecompressor().decompress(payload).hex() == values["plain1"]
    assert seg_bytes[-32:].hex() == values["frame_mac2"]
    dd = DataDir(root)
    assert verify_node(dd, dd.open()).ok
    entries = list(NodeLog(dd, dd.open()).scan())
    assert [(e.seq, e.user, e.integrity) for e in entries] == [(1, "alice", "ok"), (2, "bob", "ok")]

    nk = NodeKey(bytes(range(32)))
    ts = 1773479553123456
    hdr, h = SegmentHeader.build(nk, "node-1", 1, ts, bytes(32), bytes(32), version=3)
    assert h.mac.hex() == values["header_mac"]
    plain = bytes.fromhex(values["plain1"])
    assert plain[0] == 0x91  # a one-element array holding the record of 11.1
    c1 = canonical_bytes(
        "node-1",
        1,
        ts,
        EntryDraft(
            "alice",
            "config.dkim_rotate",
            "example.com",
            "example.com",
            "2001:db8::1",
            None,
            True,
            {"new": "k2", "old": "k1"},
        ),
    )
    c2 = bytes.fromhex(dict(line.split() for line in _doc_block("test-vector-2").strip().splitlines())["canonical2"])
    s1 = nk.mac(bytes(32), c1)
    s2 = nk.mac(s1, c2)
    f1, m1 = build_frame(
        [record_from_canonical(packed_len("node-1"), c1, s1)], 1, ts, ts, nk, h.mac, continues=True, version=3
    )
    f2, _ = build_frame([record_from_canonical(packed_len("node-1"), c2, s2)], 2, ts, ts, nk, m1, version=3)
    assert hdr + f1 + f2 == seg_bytes


def test_writer_marks_every_frame_of_a_commit_but_the_last(tmp_path):
    """A batch bigger than a frame: its frames say "continues" except the last (4.1)."""
    dd = DataDir(tmp_path / "data")
    node = dd.init("gw1")
    with LogWriter(dd, node, StoreSettings(segment_max_bytes=1 << 20, fsync="none")) as w:
        w.append_batch([EntryDraft("a", "auth.login")])
        w.append_batch(
            [EntryDraft("a", "config.filter_update", details={"pad": "x" * 900, "n": i}) for i in range(200)]
        )
        w.append_batch([EntryDraft("b", "auth.login")])
    data = (dd.segments / "00000000000000000001.seg").read_bytes()
    flags = []
    pos = 105 + 3 + 32
    while pos < len(data):
        (_m, plen, _c, fl, *_rest) = struct.unpack_from("<4sIIIQqqQ", data, pos)
        flags.append(fl)
        pos += 80 + plen
    assert len(flags) > 4
    assert flags[0] == 0 and flags[-1] == 0 and flags[-2] == 0  # single-frame commits end at once
    assert flags[1:-2] == [1] * (len(flags) - 3)  # the big one: continues, then (flags[-2]) ends
