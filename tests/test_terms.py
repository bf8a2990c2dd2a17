"""Term postings as packed tables (engine.terms) and their cache (engine.postings):
lookups give every match (and, once each record is confirmed, exactly the
matches) for random frames and queries, with hashes cut short enough to collide;
sidecars round-trip, are refused when forged or damaged and built again; the
caches stay within their byte budgets."""

from __future__ import annotations

import random

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from auditlog.engine.bytecache import ByteLRU
from auditlog.engine.chain import NodeKey
from auditlog.engine.datadir import DataDir
from auditlog.engine.entry import EntryDraft
from auditlog.engine.log import NodeLog
from auditlog.engine.postings import Postings
from auditlog.engine.settings import StoreSettings
from auditlog.engine.terms import (
    FIELD_NO,
    TERM_FIELDS,
    BlockReader,
    TermBuilder,
    TermFile,
    TermHash,
    TermsDamaged,
    lookup,
    record_matches,
    terms_path,
    wanted_fields,
)
from auditlog.engine.writer import LogWriter

PROPS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
KEY = NodeKey(bytes(range(32))).derive(b"index")
OTHER_KEY = NodeKey(bytes(range(1, 33))).derive(b"index")
MAC = b"\x07" * 32

USERS = ["alice", "bob", "carol", "zoë", "a\u0301"]
VALUES = ["alice", "bob", "auth.login", "custom.x", "t1", "example.org", "192.0.2.1", "x@example.org", "zzz"]


def rec(seq: int, user, action, target, domain, ip, rcpt=None) -> tuple:
    return (seq, 1, user, action, target, domain, ip, None, True, {} if rcpt is None else {"recipient": rcpt}, b"")


@st.composite
def frames_of_records(draw, first_seq: int = 1) -> list[list[tuple]]:
    """Frames (lists of stored records, seqs from ``first_seq`` on), some empty: damaged."""
    seq = first_seq
    out = []
    for _ in range(draw(st.integers(0, 9))):
        if draw(st.integers(0, 5)) == 0:
            out.append(None)  # a frame that does not verify
            seq += draw(st.integers(1, 3))
            continue
        recs = []
        for _ in range(draw(st.integers(1, 5))):
            recs.append(
                rec(
                    seq,
                    draw(st.sampled_from(USERS + [None, 7])),
                    draw(st.sampled_from(["auth.login", "custom.x", "config.filter_update"])),
                    draw(st.none() | st.sampled_from(["t1", "t2", "alice"])),
                    draw(st.none() | st.sampled_from(["example.org", "example.com"])),
                    draw(st.none() | st.sampled_from(["192.0.2.1", "2001:db8::1"])),
                    draw(
                        st.none()
                        | st.sampled_from(["x@example.org", "y@example.org"])
                        | st.lists(st.sampled_from(["x@example.org", "y@example.org", "z@x"]), max_size=3)
                    ),
                )
            )
            seq += 1
        out.append(recs)
    return out


terms_st = st.dictionaries(
    st.sampled_from(list(TERM_FIELDS) + ["bogus"]),
    st.frozensets(st.sampled_from(VALUES + USERS), min_size=1, max_size=3),
    max_size=3,
)


def brute_force(frames, terms) -> list[int] | None:
    """Seqs whose record carries, for every indexed field asked for, one of the values."""
    wanted = wanted_fields(terms)
    if not wanted:
        return None
    field_pos = {"user": 2, "action": 3, "target": 4, "domain": 5, "ip": 6}

    def values(r, f):
        if f == "recipient":
            v = r[9].get("recipient")
            vs = v if isinstance(v, (list, tuple)) else [v]
            return {x for x in vs if isinstance(x, str)}
        v = r[field_pos[f]]
        return {v} if isinstance(v, str) else set()

    known = {f: v for f, v in terms.items() if f in FIELD_NO}
    return [r[0] for recs in frames if recs for r in recs if all(values(r, f) & set(vs) for f, vs in known.items())]


def build(frames, hasher, chunk: int, first_seq: int = 1, base=None, start: int = 0) -> TermBuilder:
    b = TermBuilder("s.seg", MAC, first_seq, hasher, base=base, chunk_records=chunk)
    for k, recs in enumerate(frames[start:], start):
        mac = bytes([k % 256]) * 32
        if recs is None:
            b.skip_frame(mac)
        else:
            b.add_frame(msgpack.packb(recs, use_bin_type=True), mac)
    return b


def confirmed(frames, found, terms, first_seq: int = 1) -> list[int]:
    by_seq = {r[0]: r for recs in frames if recs for r in recs}
    wanted = wanted_fields(terms)
    return [first_seq + so for so in found if record_matches(by_seq[first_seq + so], wanted)]


def find(p, terms, cache=None):
    with BlockReader(cache if cache is not None else ByteLRU(1 << 20)) as rd:
        return lookup(p, wanted_fields(terms), rd)


@PROPS
@given(frames=frames_of_records(), terms=terms_st, bits=st.sampled_from([32, 3, 1]), chunk=st.integers(1, 8))
def test_lookup_finds_every_match_and_confirmed_exactly_the_matches(tmp_path_factory, frames, terms, bits, chunk):
    hasher = TermHash(12345, bits)
    b = build(frames, hasher, chunk)
    want = brute_force(frames, terms)
    found = find(b, terms)
    if want is None:
        assert found is None
        return
    assert set(want) <= {1 + so for so in found}  # nothing missed, whatever collides
    assert confirmed(frames, found, terms) == want
    if bits == 64:
        assert [1 + so for so in found] == want  # no collision among these few values
    assert b.damaged == {k for k, recs in enumerate(frames) if recs is None}
    if not frames:
        return
    # the same answers from the sidecar, written whole or as a base plus what follows
    path = tmp_path_factory.mktemp("t") / "s.terms"
    b.write(path, KEY, BlockReader(ByteLRU(1 << 20)), 999)
    tf = TermFile.open(path, KEY, hasher)
    assert tf is not None and tf.frames == len(frames) and tf.damaged == b.damaged and len(tf.runs) <= 1
    same_answer(find(tf, terms), found, frames, terms, want, bits)
    assert TermFile.open(path, OTHER_KEY, hasher) is None
    if len(frames) >= 2:
        half = len(frames) // 2
        first = build(frames[:half], hasher, chunk)
        first.write(path, KEY, BlockReader(ByteLRU(1 << 20)), 500)
        base = TermFile.open(path, KEY, hasher)
        more = build(frames, hasher, chunk, base=base, start=half)
        same_answer(find(more, terms), found, frames, terms, want, bits)  # the base and the new frames together
        with BlockReader(ByteLRU(1 << 20)) as rd:
            more.write(path, KEY, rd, 999)
        again = TermFile.open(path, KEY, hasher)
        assert again.frames == len(frames) and list(again.macs) == list(b.macs)
        same_answer(find(again, terms), found, frames, terms, want, bits)


def same_answer(got, found, frames, terms, want, bits: int) -> None:
    """The same matches: exactly the same postings with full hashes; with short ones
    (the open chunk answers by value, packed tables by hash) the same once confirmed."""
    assert set(want) <= {1 + so for so in got}
    assert confirmed(frames, got, terms) == want
    if bits == 64:
        assert got == found


def test_collisions_are_confirmed_on_the_record():
    """With a 1-bit hash half of all values share a key: lookups over-answer, the
    record check gives exactly the matches."""
    r = random.Random(5)
    frames = [
        [
            rec(1 + 10 * k + i, r.choice(USERS), "auth.login", None, None, r.choice(["192.0.2.1", "192.0.2.2"]))
            for i in range(10)
        ]
        for k in range(20)
    ]
    b = build(frames, TermHash(1, 1), 16)
    for user in USERS:
        terms = {"user": frozenset({user}), "ip": frozenset({"192.0.2.2"})}
        found = find(b, terms)
        assert confirmed(frames, found, terms) == brute_force(frames, terms)
    assert len(find(b, {"user": frozenset({"alice"})})) > len(brute_force(frames, {"user": frozenset({"alice"})}))


def test_values_that_are_not_strings_are_not_indexed():
    frames = [[rec(1, 7, "auth.login", None, None, None), rec(2, "7", "auth.login", None, None, None)]]
    b = build(frames, TermHash(1), 8)
    assert find(b, {"user": frozenset({"7"})}) == [1]


# ----------------------------------------------------------------------------- the sidecar


def sidecar(tmp_path, n_frames: int = 30) -> tuple:
    r = random.Random(3)
    frames = [
        [
            rec(1 + 50 * k + i, r.choice(USERS), "auth.login", f"mail-{k}-{i}", None, f"192.0.2.{r.randrange(40)}")
            for i in range(50)
        ]
        for k in range(n_frames)
    ]
    b = build(frames, TermHash(99), 200)
    path = tmp_path / "s.terms"
    b.write(path, KEY, BlockReader(ByteLRU(1 << 20)), 12345)
    return frames, path


def test_a_forged_or_damaged_header_is_refused(tmp_path):
    _, path = sidecar(tmp_path)
    raw = path.read_bytes()
    assert TermFile.open(path, KEY, TermHash(99)) is not None
    for at in (len(raw) - 10, len(raw) - 40, len(raw) - 100):  # trailer, MAC, header
        bad = bytearray(raw)
        bad[at] ^= 0x01
        path.write_bytes(bytes(bad))
        assert TermFile.open(path, KEY, TermHash(99)) is None, at
    for cut in (0, 7, len(raw) - 1):
        path.write_bytes(raw[:cut])
        assert TermFile.open(path, KEY, TermHash(99)) is None
    path.write_bytes(raw + b"\0")
    assert TermFile.open(path, KEY, TermHash(99)) is None


def test_a_header_of_the_wrong_shape_is_refused_even_with_a_valid_mac(tmp_path):
    from auditlog.engine.terms import _TRAILER, MAGIC

    for header in (
        msgpack.packb({"v": 3, "name": "x"}),
        msgpack.packb({"v": 4}),
        msgpack.packb([1, 2]),
        b"\xc1",
    ):
        path = tmp_path / "x.terms"
        path.write_bytes(header + KEY.mac(b"terms", header) + _TRAILER.pack(len(header), MAGIC))
        assert TermFile.open(path, KEY, TermHash(1)) is None


def test_a_damaged_block_is_noticed_when_read(tmp_path):
    frames, path = sidecar(tmp_path)
    tf = TermFile.open(path, KEY, TermHash(99))
    terms = {"user": frozenset({"alice"}), "ip": frozenset({"192.0.2.7"})}
    want = find(tf, terms)
    assert want and confirmed(frames, want, terms) == brute_force(frames, terms)
    raw = bytearray(path.read_bytes())
    raw[100] ^= 0x40  # inside the data area: the header still verifies
    path.write_bytes(bytes(raw))
    tf = TermFile.open(path, KEY, TermHash(99))
    assert tf is not None
    with pytest.raises(TermsDamaged):
        for user in USERS:  # every key block read at least once
            for ip in range(40):
                find(tf, {"user": frozenset({user}), "ip": frozenset({f"192.0.2.{ip}"})})


def test_a_sidecar_replaced_after_its_header_was_read_is_read_again(tmp_path):
    _, path = sidecar(tmp_path)
    tf = TermFile.open(path, KEY, TermHash(99))
    path.write_bytes(path.read_bytes())  # the same bytes, another file
    with pytest.raises(TermsDamaged):
        find(tf, {"user": frozenset({"alice"})}, ByteLRU(1 << 20))


# ----------------------------------------------------------------------------- the caches


def test_byte_lru_keeps_its_budget_and_the_newest_entry():
    c = ByteLRU(1000)
    for i in range(50):
        c.put(i, b"x" * 100, 150)
        assert c.nbytes <= 1000
    assert c.get(49) is not None and c.get(0) is None
    c.put("big", b"y", 5000)  # bigger than the budget: kept alone
    assert len(c) == 1 and c.get("big") == b"y" and c.nbytes == 5000


def drafts(n: int, seed: int) -> list[EntryDraft]:
    r = random.Random(seed)
    return [
        EntryDraft(
            r.choice(USERS),
            r.choice(["auth.login", "quarantine.release"]),
            f"mail-{seed}-{i}",
            None,
            f"192.0.2.{r.randrange(8)}",
            None,
            True,
            {"recipient": f"u{r.randrange(30)}@example.org"},
        )
        for i in range(n)
    ]


@pytest.fixture(scope="module")
def many(tmp_path_factory):
    dd = DataDir(tmp_path_factory.mktemp("many") / "d")
    node = dd.init("gw1")
    with LogWriter(dd, node, StoreSettings(segment_max_bytes=8192, fsync="none")) as w:
        for i in range(12):
            w.append_batch(drafts(150, i))
    return dd, node


def selective(log, user, ip):
    return [
        (e.seq, e.signature)
        for e in log.scan(
            terms={"user": frozenset({user}), "ip": frozenset({ip})},
            predicate=lambda e: e.user == user and e.ip == ip,
        )
    ]


def test_cache_budgets_are_kept_in_real_bytes(many):
    dd, node = many
    log = NodeLog(dd, node)
    full = [(e.seq, e.signature, e.user, e.ip) for e in log.scan()]
    budget, blocks = 20_000, 40_000
    log.postings = Postings(node.key, budget=budget, block_budget=blocks)
    log._selective.records.budget = 30_000
    largest = 0
    for user in USERS:
        for ip in ("192.0.2.1", "192.0.2.5"):
            got = selective(log, user, ip)
            assert got == [(s, g) for s, g, u, i in full if u == user and i == ip]
            sizes = log.postings._sizes
            largest = max([largest, *sizes.values()])
            assert sum(sizes.values()) <= budget + largest
            assert log.postings.blocks.nbytes <= blocks + 16384 + 400
            assert log._selective.records.nbytes <= 30_000 + 2000
    assert len(list(dd.segments.glob("*.seg"))) > 10


@pytest.mark.parametrize("bits", [1, 4])
def test_selective_reads_give_the_full_scan_answer_when_hashes_collide(many, bits):
    dd, node = many
    full = [(e.seq, e.signature, e.user, e.ip) for e in NodeLog(dd, node).scan()]
    for p in dd.segments.glob("*.terms"):
        p.unlink()
    log = NodeLog(dd, node)
    log.postings = Postings(node.key, hash_bits=bits)
    for user in USERS:
        for ip in ("192.0.2.0", "192.0.2.3"):
            assert selective(log, user, ip) == [(s, g) for s, g, u, i in full if u == user and i == ip]
    # sidecars written with short hashes are not used by a reader of full ones: rebuilt
    fresh = NodeLog(dd, node)
    assert selective(fresh, "alice", "192.0.2.3") == [
        (s, g) for s, g, u, i in full if u == "alice" and i == "192.0.2.3"
    ]
    assert fresh.postings.written >= 1


def test_the_active_segments_postings_go_to_a_sidecar_and_are_taken_up_again(tmp_path, monkeypatch):
    import auditlog.engine.postings

    monkeypatch.setattr(auditlog.engine.postings, "PERSIST_RECORDS", 100)
    dd = DataDir(tmp_path / "d")
    node = dd.init("gw1")
    w = LogWriter(dd, node, StoreSettings(fsync="none")).open()
    try:
        for i in range(4):
            w.append_batch(drafts(100, i))
        active = sorted(dd.segments.glob("*.seg"))[-1]
        log = NodeLog(dd, node)
        want = [(e.seq, e.signature) for e in log.scan() if e.user == "bob" and e.ip == "192.0.2.2"]
        assert selective(log, "bob", "192.0.2.2") == want
        assert terms_path(active).exists()  # a prefix of the active segment
        tf = TermFile.open(terms_path(active), node.key.derive(b"index"), TermHash.for_key(node.key.derive(b"index")))
        assert tf.frames == 4
        w.append_batch(drafts(100, 9))
        fresh = NodeLog(dd, node)
        want = [(e.seq, e.signature) for e in fresh.scan() if e.user == "bob" and e.ip == "192.0.2.2"]
        assert selective(fresh, "bob", "192.0.2.2") == want
        assert fresh.postings.written == 1  # went on from the sidecar, wrote it anew
        assert len(TermFile.open(terms_path(active), node.key.derive(b"index"), tf.hasher).runs) == 2
    finally:
        w.close()


def test_the_background_job_keeps_up_with_the_active_segment(tmp_path, monkeypatch):
    """``build_missing_terms`` (what ``serve`` runs every few seconds) indexes the active
    segment's new frames, so a query finds nothing left to index; it writes them out
    only once enough records are new."""
    import auditlog.engine.postings

    monkeypatch.setattr(auditlog.engine.postings, "PERSIST_RECORDS", 250)
    dd = DataDir(tmp_path / "d")
    node = dd.init("gw1")
    w = LogWriter(dd, node, StoreSettings(fsync="none")).open()
    try:
        log = NodeLog(dd, node)
        log.postings.persist_active = False  # as in serve
        active = sorted(dd.segments.glob("*.seg"))[-1]
        for i in range(3):
            w.append_batch(drafts(100, i))
            log.build_missing_terms()
            builder = log.postings._segments[active.name]
            assert isinstance(builder, TermBuilder) and builder.frames == i + 1
            assert terms_path(active).exists() == (i == 2)  # 300 records new: written
        want = [(e.seq, e.signature) for e in log.scan() if e.user == "bob" and e.ip == "192.0.2.2"]
        frames_before = builder.frames
        assert selective(log, "bob", "192.0.2.2") == want
        assert log.postings._segments[active.name].frames == frames_before  # nothing left to index
    finally:
        w.close()


def test_a_prefix_sidecar_of_frames_rewritten_since_is_not_used(tmp_path, monkeypatch):
    """The active segment cut back and written again in place (as a rolled-back commit
    is): the sidecar of its old frames is bound to their MACs and not used."""
    import auditlog.engine.postings

    monkeypatch.setattr(auditlog.engine.postings, "PERSIST_RECORDS", 50)
    dd = DataDir(tmp_path / "d")
    node = dd.init("gw1")
    with LogWriter(dd, node, StoreSettings(fsync="none")) as w:
        for i in range(4):
            w.append_batch(drafts(60, i))
    seg = sorted(dd.segments.glob("*.seg"))[-1]
    log = NodeLog(dd, node)
    infos = log.segment_infos()
    cut = infos[-1].index.frames[2].offset
    selective(log, "alice", "192.0.2.1")
    assert TermFile.open(terms_path(seg), node.key.derive(b"index"), TermHash(0)).frames == 4
    saved = terms_path(seg).read_bytes()
    with open(seg, "r+b") as f:
        f.truncate(cut)
    with LogWriter(dd, node, StoreSettings(fsync="none")) as w:
        for i in range(2):
            w.append_batch(drafts(60, 100 + i))  # other entries under the same seqs
    terms_path(seg).write_bytes(saved)
    fresh = NodeLog(dd, node)
    for user in USERS:
        want = [(e.seq, e.signature) for e in fresh.scan() if e.user == user and e.ip == "192.0.2.1"]
        assert selective(fresh, user, "192.0.2.1") == want


def test_postings_are_stored_as_deltas_and_decode_back():
    from auditlog.engine.terms import MAX_SEQ_OFFSET, Table, decode_postings, encode_postings

    t = Table()
    lists = [[0, 1, 2, 3], [5], [7, 130, 70_000, MAX_SEQ_OFFSET]]
    for k, p in enumerate(lists):
        t.keys.append(k)
        t.posts.extend(p)
        t.ends.append(len(t.posts))
    coded, ends = encode_postings(t)
    # a value that recurs costs about a byte per entry: 1 array byte + 4 one-byte deltas
    assert ends[0] == 5 and ends[-1] == len(coded)
    starts = [0, *ends[:-1]]
    assert [decode_postings(coded[a:b]).tolist() for a, b in zip(starts, ends)] == lists
    for bad in (b"\xc1", b"\x92\x01", b"\x91\xff", b"\x91\xcf" + (2**40).to_bytes(8, "big"), b"\xa1x"):
        with pytest.raises(TermsDamaged):
            decode_postings(bad)
