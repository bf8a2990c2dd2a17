"""Unit and property tests of the engine's building blocks: frames, the canonical
entry encoding, the HMAC chain and the node key, the segment index; and one
integration check that derived files (``*.idx``) are never trusted: damaging or deleting them does not change what a scan returns.
"""

from __future__ import annotations

import copy
import hashlib
import hmac
import os
import pickle
import random
import shutil
from pathlib import Path

import msgpack
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from auditlog.engine.chain import GENESIS, KEY_BYTES, NodeKey, create_key_file, load_key_file, sign_entry
from auditlog.engine.datadir import DataDir, Node
from auditlog.engine.entry import (
    R_SIG,
    RECORD_FIELDS,
    EntryDraft,
    canonical_bytes,
    packed_len,
    record_from_canonical,
    sort_details,
)
from auditlog.engine.errors import KeyFileError
from auditlog.engine.frame import (
    FRAME_MAGIC,
    FRAME_MAGICS,
    HEADER,
    HEADER_SIZE,
    MAC_SIZE,
    OVERHEAD,
    FrameError,
    build_frame,
    check_frame,
    parse_header,
    plain_payload,
)
from auditlog.engine.index import INDEX_VERSION, FrameRow, SegmentIndex, index_path
from auditlog.engine.log import NodeLog
from auditlog.engine.segment import FORMAT_VERSION, list_segments
from auditlog.engine.settings import StoreSettings
from auditlog.engine.verify import verify_node
from auditlog.engine.writer import LogWriter
from auditlog.query.filters import Filter
from auditlog.query.scan import scan_node

PROPS = settings(
    max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
)
#: for the properties whose examples are expensive to draw (lists of whole entries)
HEAVY = settings(PROPS, max_examples=25)
KEY = NodeKey(bytes(range(32)))
OTHER_KEY = NodeKey(bytes(range(1, 33)))


# ----------------------------------------------------------------------------- strategies

text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=20)
scalars = (
    st.none() | st.booleans() | st.integers(min_value=-(2**63), max_value=2**64 - 1) | st.floats(allow_nan=False) | text
)
detail_values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(text, inner, max_size=4), max_leaves=12
)
details_st = st.dictionaries(text, detail_values, max_size=6)
actions = st.sampled_from(["auth.login", "auth.logout", "config.filter_update", "quarantine.release", "custom.x"])
opt_text = st.none() | text


@st.composite
def drafts(draw) -> EntryDraft:
    return EntryDraft(
        draw(text),
        draw(actions),
        draw(opt_text),
        draw(opt_text),
        draw(st.none() | st.sampled_from(["192.0.2.1", "2001:db8::1"])),
        draw(opt_text),
        draw(st.booleans()),
        sort_details(draw(details_st)),
    )


nodes = st.from_regex(r"[a-z0-9][a-z0-9-]{0,20}", fullmatch=True)
seqs = st.integers(min_value=1, max_value=2**63 - 1)
tss = st.integers(min_value=0, max_value=2**62)


def stored_records(
    node: str, first_seq: int, ts: int, ds: list[EntryDraft], key: NodeKey = KEY, prev: bytes = GENESIS
) -> tuple[list[bytes], list[bytes]]:
    """Signed stored-record bytes for drafts, as the writer makes them; and the signatures."""
    sign = key.signer()
    out, sigs = [], []
    for i, d in enumerate(ds):
        canon = canonical_bytes(node, first_seq + i, ts, d)
        prev = sign(prev, canon)
        out.append(record_from_canonical(packed_len(node), canon, prev))
        sigs.append(prev)
    return out, sigs


# ----------------------------------------------------------------------------- framing


def split_frame(buf: bytes):
    version = {m: v for v, m in FRAME_MAGICS.items()}.get(bytes(buf[:4]), FORMAT_VERSION)
    hdr = parse_header(buf[:HEADER_SIZE], version)
    payload = buf[HEADER_SIZE : HEADER_SIZE + hdr.payload_len]
    mac = buf[HEADER_SIZE + hdr.payload_len : HEADER_SIZE + hdr.payload_len + MAC_SIZE]
    return hdr, payload, mac


@HEAVY
@given(ds=st.lists(drafts(), min_size=1, max_size=8), first=seqs, ts=tss, prev_mac=st.binary(min_size=32, max_size=32))
def test_frame_round_trip(ds, first, ts, prev_mac):
    assume(first + len(ds) < 2**64)
    records, sigs = stored_records("gw1", first, ts, ds)
    frame, mac = build_frame(records, first, ts, ts + 5, KEY, prev_mac)
    hdr, payload, got_mac = split_frame(frame)
    assert (hdr.count, hdr.first_seq, hdr.min_ts, hdr.max_ts, hdr.flags) == (len(ds), first, ts, ts + 5, 0)
    assert hdr.last_seq == first + len(ds) - 1
    assert hdr.total_size == len(frame) == OVERHEAD + hdr.payload_len
    assert got_mac == mac and len(mac) == MAC_SIZE
    assert check_frame(frame[:HEADER_SIZE], hdr, payload, got_mac, KEY, prev_mac) is None
    decoded = msgpack.unpackb(plain_payload(payload, FORMAT_VERSION), raw=False)
    assert [msgpack.packb(r, use_bin_type=True) for r in decoded] == records
    assert [r[R_SIG] for r in decoded] == sigs
    # the chain: the same frame after another frame has another MAC
    assert build_frame(records, first, ts, ts + 5, KEY, bytes(32) if prev_mac != bytes(32) else b"\1" * 32)[1] != mac


@PROPS
@given(ds=st.lists(drafts(), min_size=1, max_size=5), data=st.data())
def test_any_single_bit_flip_in_a_frame_is_detected(ds, data):
    records, _ = stored_records("gw1", 10, 1_700_000_000_000_000, ds)
    prev_mac = b"\x5a" * 32
    frame, _ = build_frame(records, 10, 1_700_000_000_000_000, 1_700_000_000_000_001, KEY, prev_mac)
    pos = data.draw(st.integers(0, len(frame) - 1), label="pos")
    bit = data.draw(st.integers(0, 7), label="bit")
    bad = bytearray(frame)
    bad[pos] ^= 1 << bit
    bad = bytes(bad)
    try:
        hdr, payload, mac = split_frame(bad)
    except FrameError:
        return  # the header no longer parses: detected
    if len(mac) != MAC_SIZE or len(payload) != hdr.payload_len:
        return  # claims more bytes than there are: detected
    assert check_frame(bad[:HEADER_SIZE], hdr, payload, mac, KEY, prev_mac) is not None, pos


@HEAVY
@given(ds=st.lists(drafts(), min_size=1, max_size=4))
def test_frame_fails_under_other_key_or_other_predecessor(ds):
    records, _ = stored_records("gw1", 1, 5, ds)
    frame, _ = build_frame(records, 1, 5, 5, KEY, GENESIS)
    hdr, payload, mac = split_frame(frame)
    assert check_frame(frame[:HEADER_SIZE], hdr, payload, mac, OTHER_KEY, GENESIS) == "mac_mismatch"
    assert check_frame(frame[:HEADER_SIZE], hdr, payload, mac, KEY, b"\1" * 32) == "mac_mismatch"


def test_payload_change_reported_as_checksum_mismatch():
    records, _ = stored_records("gw1", 1, 5, [EntryDraft("a", "auth.login")])
    frame, _ = build_frame(records, 1, 5, 5, KEY, GENESIS)
    hdr, payload, mac = split_frame(frame)
    bad = bytearray(payload)
    bad[-1] ^= 0xFF
    assert check_frame(frame[:HEADER_SIZE], hdr, bytes(bad), mac, KEY, GENESIS) == "checksum_mismatch"
    # a header field changed (checksum still right): the MAC catches it
    h2 = HEADER.pack(FRAME_MAGIC, hdr.payload_len, hdr.count, 0, hdr.first_seq + 1, 5, 5, hdr.checksum)
    assert check_frame(h2, parse_header(h2), payload, mac, KEY, GENESIS) == "mac_mismatch"


@pytest.mark.parametrize(
    "fields, kind",
    [
        ((b"ALF9", 10, 1, 0, 1, 0, 0, 0), "frame_corrupt"),  # magic
        ((FRAME_MAGIC, 0, 1, 0, 1, 0, 0, 0), "frame_corrupt"),  # empty payload
        ((FRAME_MAGIC, 10, 0, 0, 1, 0, 0, 0), "frame_corrupt"),  # no records
        ((FRAME_MAGIC, 10, 16 * 1024 * 1024, 0, 1, 0, 0, 0), "frame_corrupt"),  # more records than 16 MiB holds
        ((FRAME_MAGIC, 10, 1, 2, 1, 0, 0, 0), "frame_corrupt"),  # unknown flags
        ((FRAME_MAGIC, 10, 1, 0, 0, 0, 0, 0), "frame_corrupt"),  # seq 0
        ((FRAME_MAGIC, 10, 1, 0, 1, 9, 8, 0), "frame_corrupt"),  # min_ts > max_ts
        ((FRAME_MAGIC, 2**31, 1, 0, 1, 0, 0, 0), "frame_corrupt"),  # absurd length
    ],
)
def test_parse_header_rejects_implausible_headers(fields, kind):
    with pytest.raises(FrameError) as ei:
        parse_header(HEADER.pack(*fields))
    assert ei.value.kind == kind


@pytest.mark.parametrize("n", [0, 1, 47])
def test_parse_header_truncated(n):
    with pytest.raises(FrameError) as ei:
        parse_header(b"A" * n)
    assert ei.value.kind == "truncated"


def test_large_record_counts_use_wider_array_headers():
    ds = [EntryDraft(f"u{i}", "auth.login") for i in range(70_000)]
    records, _ = stored_records("n", 1, 1, ds)
    frame, _ = build_frame(records, 1, 1, 1, KEY, GENESIS)
    hdr, payload, _ = split_frame(frame)
    decoded = msgpack.unpackb(plain_payload(payload, FORMAT_VERSION), raw=False)
    assert len(decoded) == hdr.count == 70_000 and decoded[-1][2] == "u69999"
    # format 2 frames (not compressed) carry the plain array
    frame, _ = build_frame(records, 1, 1, 1, KEY, GENESIS, version=2)
    hdr, payload, _ = split_frame(frame)
    assert payload[:5] == b"\xdd" + (70_000).to_bytes(4, "big")


# ----------------------------------------------------------------------------- canonical encoding


def shuffled(value, rnd: random.Random):
    """The same value with every map's insertion order shuffled, recursively."""
    if isinstance(value, dict):
        keys = list(value)
        rnd.shuffle(keys)
        return {k: shuffled(value[k], rnd) for k in keys}
    if isinstance(value, list):
        return [shuffled(v, rnd) for v in value]
    return value


def all_maps_sorted(value) -> bool:
    if isinstance(value, dict):
        return list(value) == sorted(value) and all(all_maps_sorted(v) for v in value.values())
    if isinstance(value, list):
        return all(all_maps_sorted(v) for v in value)
    return True


@PROPS
@given(details=details_st, rnd=st.randoms(use_true_random=False), node=nodes, seq=seqs, ts=tss)
def test_canonical_bytes_independent_of_insertion_order(details, rnd, node, seq, ts):
    a = sort_details(details)
    b = sort_details(shuffled(details, rnd))
    assert all_maps_sorted(a) and a == details
    base = EntryDraft("u", "auth.login")
    ca = canonical_bytes(node, seq, ts, base._replace(details=a))
    cb = canonical_bytes(node, seq, ts, base._replace(details=b))
    assert ca == cb
    assert canonical_bytes(node, seq, ts, base._replace(details=a)) == ca  # deterministic


@PROPS
@given(d=drafts(), node=nodes, seq=seqs, ts=tss, sig=st.binary(min_size=32, max_size=32))
def test_record_from_canonical_decodes_to_the_same_fields(d, node, seq, ts, sig):
    canon = canonical_bytes(node, seq, ts, d)
    assert msgpack.unpackb(canon, raw=False) == [node, seq, ts, *d]
    rec = record_from_canonical(packed_len(node), canon, sig)
    fields = msgpack.unpackb(rec, raw=False)
    assert len(fields) == RECORD_FIELDS
    assert fields == [seq, ts, *d, sig]
    # the stored record shares every byte of the signed encoding after the node
    assert canon[1 + packed_len(node) :] in rec
    # and re-encoding the decoded record gives the very same bytes
    assert msgpack.packb(fields, use_bin_type=True) == rec
    assert msgpack.packb(msgpack.unpackb(rec, raw=False, use_list=False), use_bin_type=True) == rec


@HEAVY
@given(d1=drafts(), d2=drafts())
def test_different_entries_have_different_canonical_bytes(d1, d2):
    c1 = canonical_bytes("gw1", 1, 1, d1)
    c2 = canonical_bytes("gw1", 1, 1, d2)
    if c1 == c2:
        assert msgpack.unpackb(c1) == msgpack.unpackb(c2)
    assert canonical_bytes("gw1", 2, 1, d1) != c1 and canonical_bytes("gw2", 1, 1, d1) != c1
    assert canonical_bytes("gw1", 1, 2, d1) != c1


def test_sort_details_sorts_maps_inside_lists():
    v = {"b": [{"z": 1, "a": 2}], "a": {"y": {"d": 1, "c": 2}}}
    s = sort_details(v)
    assert list(s) == ["a", "b"]
    assert list(s["b"][0]) == ["a", "z"]
    assert list(s["a"]["y"]) == ["c", "d"]


# ----------------------------------------------------------------------------- chain


def sign_chain(key: NodeKey, canons: list[bytes]) -> list[bytes]:
    prev, out = GENESIS, []
    for c in canons:
        prev = sign_entry(key, prev, c)
        out.append(prev)
    return out


def first_break(key: NodeKey, canons: list[bytes], sigs: list[bytes]) -> int | None:
    """Index of the first entry whose stored signature does not verify, or None."""
    prev = GENESIS
    for i, (c, s) in enumerate(zip(canons, sigs)):
        if not hmac.compare_digest(sign_entry(key, prev, c), s):
            return i
        prev = s
    return None


@PROPS
@given(raw=st.binary(min_size=32, max_size=32), prev=st.binary(min_size=32, max_size=32), msg=st.binary(max_size=300))
def test_fast_hmac_equals_stdlib_hmac(raw, prev, msg):
    key = NodeKey(raw)
    ref = hmac.new(raw, prev + msg, hashlib.sha256).digest()
    assert key.mac(prev, msg) == ref
    assert key.signer()(prev, msg) == ref
    assert sign_entry(key, prev, msg) == ref


@HEAVY
@given(ds=st.lists(drafts(), min_size=2, max_size=8, unique_by=lambda d: repr(d)), data=st.data())
def test_chain_detects_modification_and_reordering(ds, data):
    canons = [canonical_bytes("gw1", i + 1, 100 + i, d) for i, d in enumerate(ds)]
    sigs = sign_chain(KEY, canons)
    assert first_break(KEY, canons, sigs) is None
    assert first_break(OTHER_KEY, canons, sigs) == 0

    # change one byte of one entry
    i = data.draw(st.integers(0, len(canons) - 1), label="entry")
    pos = data.draw(st.integers(0, len(canons[i]) - 1), label="pos")
    changed = list(canons)
    b = bytearray(changed[i])
    b[pos] ^= 0x01
    changed[i] = bytes(b)
    assert first_break(KEY, changed, sigs) == i

    # swap two entries, signatures and all (a reorder of the stored records)
    j = data.draw(st.integers(0, len(canons) - 1).filter(lambda x: x != i), label="other")
    lo, hi = min(i, j), max(i, j)
    order = list(range(len(canons)))
    order[lo], order[hi] = order[hi], order[lo]
    assert first_break(KEY, [canons[k] for k in order], [sigs[k] for k in order]) == lo

    # drop one entry from the middle or the start
    k = data.draw(st.integers(0, len(canons) - 2), label="dropped")
    assert first_break(KEY, canons[:k] + canons[k + 1 :], sigs[:k] + sigs[k + 1 :]) == k


def test_node_key_wrong_length():
    for n in (0, 16, 31, 33, 64):
        with pytest.raises(KeyFileError):
            NodeKey(b"k" * n)


def test_key_never_printed():
    raw = os.urandom(KEY_BYTES)
    key = NodeKey(raw)
    node = Node("gw1", key)
    for text in (repr(key), str(key), f"{key}", f"{key!r}", repr(node), str(node), repr([key])):
        assert raw.hex() not in text.lower()
        assert repr(raw) not in text and str(raw) not in text
        assert raw.hex()[:16] not in text.lower()  # not even a prefix
        assert "hidden" in text or text.startswith("Node(")
    assert key.key_id != raw[:8]
    assert not hasattr(key, "__dict__")


def test_key_cannot_be_pickled_or_copied():
    key = NodeKey(os.urandom(KEY_BYTES))
    for proto in range(pickle.HIGHEST_PROTOCOL + 1):
        with pytest.raises(TypeError, match="cannot be pickled"):
            pickle.dumps(key, protocol=proto)
    with pytest.raises(TypeError):
        pickle.dumps(Node("gw1", key))
    with pytest.raises(TypeError):
        copy.deepcopy(key)


def test_derived_keys_differ_and_are_deterministic():
    raw = os.urandom(KEY_BYTES)
    a, b = NodeKey(raw), NodeKey(raw)
    assert a.equals(b) and not a.equals(OTHER_KEY)
    ia, ma = a.derive(b"index"), a.derive(b"terms")
    assert ia.equals(b.derive(b"index"))
    assert not ia.equals(ma) and not ia.equals(a)
    assert ia.mac(b"x") != a.mac(b"x")


def test_key_file_created_private_and_never_overwritten(tmp_path):
    p = tmp_path / "node.key"
    key = create_key_file(p)
    assert (p.stat().st_mode & 0o777) == 0o600
    assert len(p.read_bytes()) == KEY_BYTES
    assert load_key_file(p).equals(key)
    with pytest.raises(FileExistsError):
        create_key_file(p)
    assert load_key_file(p).equals(key)


def test_key_file_problems_reported_without_the_key(tmp_path):
    p = tmp_path / "node.key"
    key_raw = os.urandom(KEY_BYTES)
    p.write_bytes(key_raw)
    p.chmod(0o644)
    with pytest.raises(KeyFileError) as ei:
        load_key_file(p)
    assert "chmod 600" in str(ei.value) and key_raw.hex() not in str(ei.value)
    p.chmod(0o600)
    p.write_bytes(key_raw[:20])
    with pytest.raises(KeyFileError, match="damaged"):
        load_key_file(p)
    with pytest.raises(KeyFileError, match="missing"):
        load_key_file(tmp_path / "absent.key")


# ----------------------------------------------------------------------------- segment index

users = st.sampled_from(["alice", "bob", "carol"])
ips = st.sampled_from([None, "192.0.2.1", "192.0.2.2"])
recipients = st.sampled_from([None, "x@example.org", "y@example.org"])


@st.composite
def index_records(draw, seq: int, ts: int):
    r = draw(recipients)
    details = {} if r is None else {"recipient": r}
    if draw(st.booleans()):
        details["other"] = 1
    return (
        seq,
        ts,
        draw(users),
        draw(actions),
        draw(st.none() | st.sampled_from(["t1", "t2"])),
        draw(st.none() | st.sampled_from(["example.org", "example.com"])),
        draw(ips),
        None,
        True,
        details,
        b"\0" * 32,
    )


@st.composite
def segment_indexes(draw) -> tuple[SegmentIndex, list[list[tuple]]]:
    idx = SegmentIndex(
        draw(st.sampled_from(["00000000000000000001.seg", "x.seg"])), draw(st.binary(min_size=32, max_size=32)), 60
    )
    n = draw(st.integers(0, 8))
    seq, off = 1, 60
    contents: list[list[tuple]] = []
    for _ in range(n):
        count = draw(st.integers(1, 4))
        min_ts = draw(st.integers(0, 1000))
        max_ts = min_ts + draw(st.integers(0, 50))
        row = FrameRow(off, seq, count, min_ts, max_ts)
        if draw(st.integers(0, 4)) == 0:
            idx.add_damaged(row, "checksum_mismatch", f"frame at offset {off}", seq, seq + count - 1)
            contents.append([])
        else:
            recs = [draw(index_records(seq + k, min_ts)) for k in range(count)]
            idx.add_frame(row)
            contents.append(recs)
        seq += count
        off += 200
    idx.size = off
    idx.last_sig = draw(st.binary(min_size=32, max_size=32))
    idx.last_mac = draw(st.binary(min_size=32, max_size=32))
    return idx, contents


INDEX_KEY = KEY.derive(b"index")


def same_index(a: SegmentIndex, b: SegmentIndex) -> None:
    assert (a.name, a.header_mac, a.size, a.last_sig, a.last_mac) == (
        b.name,
        b.header_mac,
        b.size,
        b.last_sig,
        b.last_mac,
    )
    assert a.frames == b.frames
    assert a.damaged == b.damaged
    assert a._max_ts == b._max_ts
    assert (a.first_seq, a.last_seq, a.count, a.min_ts, a.max_ts) == (
        b.first_seq,
        b.last_seq,
        b.count,
        b.min_ts,
        b.max_ts,
    )


@PROPS
@given(gen=segment_indexes())
def test_index_round_trip(gen):
    idx, _ = gen
    raw = idx.to_bytes(INDEX_KEY)
    back = SegmentIndex.from_bytes(raw, INDEX_KEY)
    assert back is not None
    same_index(idx, back)
    assert back.to_bytes(INDEX_KEY) == raw
    assert SegmentIndex.from_bytes(raw, OTHER_KEY) is None
    assert SegmentIndex.from_bytes(raw, KEY) is None  # the node key itself is not the index key


@PROPS
@given(gen=segment_indexes(), data=st.data())
def test_index_any_flipped_byte_is_refused(gen, data):
    raw = gen[0].to_bytes(INDEX_KEY)
    pos = data.draw(st.integers(0, len(raw) - 1), label="pos")
    bad = bytearray(raw)
    bad[pos] ^= data.draw(st.integers(1, 255), label="xor")
    assert SegmentIndex.from_bytes(bytes(bad), INDEX_KEY) is None
    cut = data.draw(st.integers(0, len(raw) - 1), label="cut")
    assert SegmentIndex.from_bytes(raw[:cut], INDEX_KEY) is None
    assert SegmentIndex.from_bytes(raw + b"\0", INDEX_KEY) is None


def test_index_with_valid_mac_but_wrong_shape_is_refused():
    for body in (
        msgpack.packb({"v": 99, "name": "x"}),
        msgpack.packb({"v": 1}),
        msgpack.packb(
            {
                "v": 1,
                "name": "x",
                "header_mac": b"",
                "size": 1,
                "last_sig": b"",
                "last_mac": b"",
                "frames": [[1, 2]],
                "terms": {},
            }
        ),
        b"\xc1garbage",
    ):
        assert SegmentIndex.from_bytes(body + INDEX_KEY.mac(b"index", body), INDEX_KEY) is None
    assert SegmentIndex.from_bytes(b"", INDEX_KEY) is None


NON_MAP_BODIES = [msgpack.packb([1, 2]), msgpack.packb(7), msgpack.packb("v")]


@pytest.mark.parametrize("body", NON_MAP_BODIES)
def test_index_with_valid_mac_but_non_map_body_is_refused(body):
    assert SegmentIndex.from_bytes(body + INDEX_KEY.mac(b"index", body), INDEX_KEY) is None


@PROPS
@given(max_ts=st.lists(st.integers(0, 100), max_size=12), probes=st.lists(st.integers(-5, 110), min_size=2))
def test_first_frame_at_is_a_monotonic_bisect_over_the_running_max(max_ts, probes):
    idx = SegmentIndex("s.seg", b"\0" * 32)
    for i, m in enumerate(max_ts):  # timestamps may go backwards between frames
        idx.add_frame(FrameRow(i * 100, i + 1, 1, max(0, m - 3), m))
    running = [max(max_ts[: i + 1]) for i in range(len(max_ts))]
    assert idx._max_ts == running
    for ts in probes:
        i = idx.first_frame_at(ts)
        assert 0 <= i <= len(max_ts)
        # nothing before i can hold an entry with ts >= probe ...
        assert all(m < ts for m in max_ts[:i])
        # ... and i is the first frame that may
        assert i == len(max_ts) or running[i] >= ts
    ordered = sorted(probes)
    got = [idx.first_frame_at(t) for t in ordered]
    assert got == sorted(got)


# ----------------------------------------------------------------------------- derived files are never trusted


@pytest.fixture(scope="module")
def many_segments(tmp_path_factory) -> Path:
    """A data dir of ~300 entries over many 4 KiB segments, writer closed."""
    root = tmp_path_factory.mktemp("segs") / "data"
    dd = DataDir(root)
    node = dd.init("gw1")
    with LogWriter(dd, node, StoreSettings(segment_max_bytes=4096, fsync="none")) as w:
        for b in range(10):
            w.append_batch(
                [
                    EntryDraft(
                        f"user{i % 7}",
                        ("auth.login", "config.filter_update", "quarantine.release")[i % 3],
                        target=f"t{i % 5}",
                        domain="example.org",
                        ip=f"192.0.2.{i % 4}",
                        details={"recipient": f"r{i % 6}@example.org", "i": i},
                    )
                    for i in range(b * 30, b * 30 + 30)
                ]
            )
    segs = list_segments(root / "segments")
    assert len(segs) >= 5
    NodeLog(dd, node).head()  # let the reader write any missing sidecar
    assert all(index_path(p).exists() for p in segs[:-1])
    return root


def snapshot_queries(root: Path) -> dict:
    dd = DataDir(root)
    node = dd.open()
    log = NodeLog(dd, node)
    everything = [e.to_wire() for e in log.scan()]
    ts = [e["ts"] for e in everything]
    mid = [e.ts for e in log.scan()][len(everything) // 2]
    out = {
        "all": everything,
        "desc": [e.to_wire() for e in log.scan(order="desc")],
        "range": [e.to_wire() for e in log.scan(mid, mid + 1)],
        "after": [e.to_wire() for e in log.scan(after_seq=123)],
        "head": log.head(),
        "verify": verify_node(dd, node).to_dict(),
    }
    for params in (
        {"user": "user3"},
        {"ip": "192.0.2.1", "action": "config.*"},
        {"recipient": "r2@example.org,r5@example.org"},
        {"target": "t4", "user": "user1"},
        {"action": "quarantine.release", "domain": "example.org"},
    ):
        out[repr(params)] = [e.to_wire() for e in scan_node(log, Filter.from_params(params))]
    assert len(out["all"]) == 300 and ts == sorted(ts)
    return out


def _delete(p: Path, i: int) -> None:
    p.unlink()


def _flip(p: Path, i: int) -> None:
    raw = bytearray(p.read_bytes())
    raw[(i * 7919) % len(raw)] ^= 0x10
    p.write_bytes(bytes(raw))


def _truncate(p: Path, i: int) -> None:
    raw = p.read_bytes()
    p.write_bytes(raw[: len(raw) // 2])


def _empty(p: Path, i: int) -> None:
    p.write_bytes(b"")


def _garbage(p: Path, i: int) -> None:
    p.write_bytes(os.urandom(64 + i))


@pytest.mark.parametrize(
    "damage",
    [_delete, _flip, _truncate, _empty, _garbage, "swap"],
    ids=["delete", "flip", "truncate", "empty", "garbage", "swap"],
)
def test_damaged_or_missing_indexes_do_not_change_results(many_segments, tmp_path, damage):
    root = tmp_path / "data"
    shutil.copytree(many_segments, root)
    baseline = snapshot_queries(root)
    seg_dir = root / "segments"
    idx_files = sorted(seg_dir.glob("*.idx"))
    assert len(idx_files) >= 4
    if damage == "swap":
        # each index validly MAC'd, but for another segment
        contents = [p.read_bytes() for p in idx_files]
        for p, raw in zip(idx_files, contents[1:] + contents[:1]):
            p.write_bytes(raw)
    else:
        for i, p in enumerate(idx_files):
            damage(p, i)
    seg_bytes = {p.name: p.read_bytes() for p in list_segments(seg_dir)}
    assert snapshot_queries(root) == baseline
    # the segments were only read, and the indexes were rebuilt from them
    assert {p.name: p.read_bytes() for p in list_segments(seg_dir)} == seg_bytes
    dd = DataDir(root)
    key = dd.open().key.derive(b"index")
    for p in list_segments(seg_dir)[:-1]:
        idx = SegmentIndex.from_bytes(index_path(p).read_bytes(), key)
        assert idx is not None and idx.name == p.name and idx.size == p.stat().st_size
    # and a second read through the rebuilt files still agrees
    assert snapshot_queries(root) == baseline


def test_a_leftover_manifest_is_ignored_and_never_rewritten(many_segments, tmp_path):
    """Earlier versions wrote ``segments/MANIFEST`` on every seal; nothing reads it: reads
    and ``verify`` are the same with it there, and sealing a segment leaves it as it is."""
    root = tmp_path / "data"
    shutil.copytree(many_segments, root)
    baseline = snapshot_queries(root)
    leftover = root / "segments" / "MANIFEST"
    leftover.write_bytes(os.urandom(300))
    before = leftover.read_bytes()
    assert snapshot_queries(root) == baseline
    dd = DataDir(root)
    node = dd.open()
    with LogWriter(dd, node, StoreSettings(segment_max_bytes=4096, fsync="none")) as w:
        w.append_batch([EntryDraft("u", "email.receive", details={"i": i}) for i in range(40)])
        w.roll()
    assert leftover.read_bytes() == before
    assert verify_node(dd, node).ok


def test_index_of_another_segment_with_same_size_is_not_trusted(tmp_path):
    """Two sealed segments of the same size: a swapped index passes its MAC and the size
    check, and must still be refused (its name and header MAC do not match)."""
    dd = DataDir(tmp_path / "data")
    node = dd.init("gw1")
    by_size: dict[int, list[Path]] = {}
    with LogWriter(dd, node, StoreSettings(fsync="none")) as w:
        # one-entry segments of one shape, rolled until two come out the same size
        for i in range(200):
            w.append_batch([EntryDraft("u", "auth.login", target="t", details={"i": i % 10})])
            w.roll()
            p = list_segments(dd.segments)[-2]
            by_size.setdefault(p.stat().st_size, []).append(p)
            if len(by_size[p.stat().st_size]) == 2:
                break
    a, b = next(v for v in by_size.values() if len(v) == 2)
    log = NodeLog(dd, node)
    baseline = [e.to_wire() for e in log.scan()]
    assert index_path(a).exists() and index_path(b).exists()
    ra, rb = index_path(a).read_bytes(), index_path(b).read_bytes()
    assert ra != rb
    index_path(a).write_bytes(rb)
    index_path(b).write_bytes(ra)
    log = NodeLog(dd, node)
    assert [e.to_wire() for e in log.scan()] == baseline
    assert [e.to_wire() for e in log.scan(order="desc")] == baseline[::-1]
    assert verify_node(dd, node).ok


def test_index_files_of_an_older_version_are_rebuilt_not_trusted(tmp_path):
    """Index version 1 kept term postings inside .idx; such files are ignored and
    rebuilt, with the same answers (the on-disk log format itself is unchanged)."""
    from helpers_engine import build_log

    dd, node = build_log(tmp_path, n=300, segment_max_bytes=8192)
    log = NodeLog(dd, node)
    before = [(e.seq, e.signature) for e in log.scan()]
    selective = [
        (e.seq, e.target)
        for e in log.scan(terms={"target": frozenset({"filter-17"})}, predicate=lambda e: e.target == "filter-17")
    ]
    assert selective and all(t == "filter-17" for _, t in selective)
    key = node.key.derive(b"index")
    idx_files = sorted(dd.segments.glob("*.idx"))
    assert idx_files
    for p in idx_files:
        raw = p.read_bytes()
        d = msgpack.unpackb(raw[:-32], raw=False, strict_map_key=False)
        d["v"] = 1
        d["terms"] = {"target": {"filter-17": [0]}}  # the old layout, and a wrong hint
        d["frames"] = d["frames"][:1]  # an old file describing less
        body = msgpack.packb(d, use_bin_type=True)
        p.write_bytes(body + key.mac(b"index", body))
    fresh = NodeLog(dd, node)
    assert [(e.seq, e.signature) for e in fresh.scan()] == before
    assert [
        (e.seq, e.target)
        for e in fresh.scan(terms={"target": frozenset({"filter-17"})}, predicate=lambda e: e.target == "filter-17")
    ] == selective
    for p in idx_files:  # rewritten in the current version
        d = msgpack.unpackb(p.read_bytes()[:-32], raw=False, strict_map_key=False)
        assert d["v"] == INDEX_VERSION and "terms" not in d


def test_clock_going_back_is_recorded_once_and_time_order_holds(tmp_path):
    """The system clock stepping back: entries keep the last ts (never go back), one
    audit.clock_skew entry says by how much (details in canonical order), verify is clean."""
    dd = DataDir(tmp_path / "data")
    node = dd.init("gw1")
    clock = [1_800_000_000_000_000]
    with LogWriter(dd, node, StoreSettings(fsync="none"), clock=lambda: clock[0]) as w:
        w.append_batch([EntryDraft("a", "auth.login")])
        clock[0] -= 5_000_000  # the clock steps back 5 s
        w.append_batch([EntryDraft("b", "auth.login")])
        w.append_batch([EntryDraft("c", "auth.login")])
        clock[0] += 10_000_000  # and recovers
        w.append_batch([EntryDraft("d", "auth.login")])
    entries = list(NodeLog(dd, node).scan())
    skews = [e for e in entries if e.action == "audit.clock_skew"]
    assert len(skews) == 1
    assert list(skews[0].details) == sorted(skews[0].details)
    assert skews[0].details["behind_us"] == 5_000_000
    assert [e.user for e in entries if e.action == "auth.login"] == ["a", "b", "c", "d"]
    ts = [e.ts for e in entries]
    assert ts == sorted(ts) and ts[-1] == 1_800_000_005_000_000
    assert verify_node(dd, node).ok


def test_write_atomic_mode_from_creation_and_leftover_temp(tmp_path):
    """The one temp-file-and-rename writer: a secret file is 0600 whatever a
    leftover temp file looked like, and the old content is replaced whole."""
    from auditlog.engine.datadir import write_atomic

    target = tmp_path / "api_keys.json"
    target.write_bytes(b"old")
    leftover = tmp_path / "api_keys.json.tmp"
    leftover.write_bytes(b"half-written by a crashed run" * 100)
    leftover.chmod(0o644)
    write_atomic(target, b'{"keys": []}', mode=0o600, sync_dir=True)
    assert target.read_bytes() == b'{"keys": []}'
    assert (target.stat().st_mode & 0o777) == 0o600
    assert not leftover.exists()
    write_atomic(target, b"x" * 200_000, sync=False)
    assert target.read_bytes() == b"x" * 200_000


def test_api_key_snapshot_is_0600(tmp_path):
    from auditlog.engine.writer import LogWriter
    from auditlog.query.http.auth import KeyStore

    dd = DataDir(tmp_path / "d")
    node = dd.init("n1")
    with LogWriter(dd, node) as w:
        KeyStore(node, dd.state, w.log, w).load().create("soc", "reader")
    (path,) = [p for p in dd.state.iterdir()]
    assert path.name == "api_keys.json" and (path.stat().st_mode & 0o777) == 0o600


def test_the_writer_deletes_line_files_earlier_versions_left(tmp_path):
    """``.lines`` files (a read cache of earlier versions) are derived data nothing reads:
    the writer deletes them when it starts, and touches nothing else."""
    dd = DataDir(tmp_path / "data")
    node = dd.init("gw1")
    with LogWriter(dd, node, StoreSettings(segment_max_bytes=4096, fsync="none")) as w:
        for i in range(30):
            w.append_batch([EntryDraft("u", "auth.login", details={"i": i, "pad": os.urandom(40).hex()})])
    segs = list_segments(dd.segments)
    assert len(segs) >= 2
    before = {p.name: p.read_bytes() for p in segs}
    for p in segs:
        p.with_suffix(".lines").write_bytes(b"AULN\x01\x00" + os.urandom(100))
    (dd.segments / "notes.lines.txt").write_text("not a line file")
    entries = [e.to_wire() for e in NodeLog(dd, node).scan()]
    with LogWriter(dd, node, StoreSettings(segment_max_bytes=4096, fsync="none")):
        pass
    assert not list(dd.segments.glob("*.lines"))
    assert (dd.segments / "notes.lines.txt").exists()
    assert {p.name: p.read_bytes() for p in segs} == before
    assert [e.to_wire() for e in NodeLog(dd, node).scan()] == entries
    assert verify_node(dd, node).ok
