"""The fast ingest paths (orjson body decoding, the plain-event validation
shortcut, packed drafts) give exactly what the reference paths give."""

from __future__ import annotations

import json
import math
import struct

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from auditlog.engine.entry import EntryDraft, canonical_bytes, pack_draft
from auditlog.ingest import event as ev
from auditlog.ingest.body import BodyError, _loads_reference, decode_body, loads_json, loads_msgpack
from auditlog.ingest.limits import Limits

LIMITS = Limits()


def reference(raw: bytes):
    """('ok', value) or ('error', message) from the standard-library decoder."""
    try:
        return ("ok", _loads_reference(raw))
    except BodyError as e:
        return ("error", str(e))


def fast(raw: bytes):
    try:
        return ("ok", loads_json(raw))
    except BodyError as e:
        return ("error", str(e))


def same_value(a, b) -> bool:
    """Equal, with float and int kept apart (1.0 == 1 in Python, not here).  Walked
    with a stack, not by recursion: Python 3.13's json decodes the 5000-deep case."""
    todo = [(a, b)]
    while todo:
        a, b = todo.pop()
        if type(a) is not type(b):
            return False
        if isinstance(a, dict):
            if list(a) != list(b):
                return False
            todo += [(a[k], b[k]) for k in a]
        elif isinstance(a, list):
            if len(a) != len(b):
                return False
            todo += list(zip(a, b))
        elif isinstance(a, float) and math.isnan(a):
            if not math.isnan(b):
                return False
        elif a != b:
            return False
    return True


# ------------------------------------------------------------------ decoding

DECODE_CASES = [
    b'[{"user": "u", "action": "auth.login"}]',
    b'{"events": [{"user": "u", "action": "auth.login", "details": {"a": 1, "b": [1, 2.5, null]}}]}',
    # repeated keys, at every level, and hidden behind escapes
    b'[{"user": "a", "user": "b", "action": "auth.login"}]',
    b'[{"user": "a", "action": "auth.login", "details": {"x": 1, "x": 2}}]',
    b'[{"user": "a", "action": "auth.login", "details": {"n": {"k": "a:b", "k": ":"}}}]',
    b'{"events": [], "events": [{"user": "u", "action": "auth.login"}]}',
    b'[{"user": "a", "\\u0075ser": "b", "action": "auth.login"}]',
    b'[{"user": "a", "action": "auth.login", "details": {"a\\u003ab": 1, "a:b": 2}}]',
    b'[{"user": "a", "action": "auth.login", "details": {"a\\u003Ab": 1, "c": 2}}]',
    b'[{"user": "a:b:c", "action": "auth.login", "details": {"t": "12:00:01", "u": "x\\"y:z"}}]',
    # integers at and beyond 64 bits, floats at the edges
    b'[{"details": {"x": 9223372036854775807, "y": -9223372036854775808}}]',
    b'[{"details": {"x": 9223372036854775808}}]',
    b'[{"details": {"x": 18446744073709551615}}]',
    b'[{"details": {"x": 18446744073709551616}}]',
    b'[{"details": {"x": -18446744073709551617}}]',
    b'[{"details": {"x": 1e400}}]',
    b'[{"details": {"x": 1.7976931348623157e308, "y": 5e-324, "z": -0.0}}]',
    b'[{"details": {"x": 0.1000000000000000000001}}]',
    b"[NaN]",
    b"[Infinity]",
    b"[-Infinity]",
    # strings: surrogates, escapes, non-ASCII, control characters raw and escaped
    b'["\\ud800"]',
    b'["\\udc00\\ud800"]',
    b'["\\ud83d\\ude00"]',
    '["Grüße ✓"]'.encode(),
    b'["a\\u0000b", "\\n\\t\\\\/\\/"]',
    b'["a\nb"]',
    # not JSON / not UTF-8 / odd framing
    b"",
    b" ",
    b"[",
    b"[1,]",
    b"[1] x",
    b"\xef\xbb\xbf[1]",
    b"\xff\xfe",
    b'"text"',
    b"null",
    b"[" * 5000 + b"]" * 5000,
    b'{"a": 1',
    b"[1 2]",
    b"['a']",
    b"[01]",
    b"[1.]",
    b"[.5]",
]


@pytest.mark.parametrize("raw", DECODE_CASES)
def test_fast_decoding_matches_the_reference(raw):
    want, got = reference(raw), fast(raw)
    assert want[0] == got[0], (want, got)
    if want[0] == "ok":
        assert same_value(want[1], got[1]), (want, got)


def test_repeated_key_is_named():
    with pytest.raises(BodyError, match="duplicate key 'x'"):
        loads_json(b'[{"details": {"x": 1, "x": 2}}]')


def test_integer_beyond_64_bits_stays_an_integer():
    (obj,) = loads_json(b'[{"x": 18446744073709551616}]')
    assert obj["x"] == 2**64 and type(obj["x"]) is int


_json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=12),
)
_keys = st.sampled_from(["a", "b", "a:b", ":", "ü", "k"])


def _render(value, dup: bool, draw) -> str:
    """JSON text of ``value``; with ``dup`` some objects repeat a key."""
    if isinstance(value, dict):
        items = [(json.dumps(k, ensure_ascii=draw(st.booleans())), _render(v, dup, draw)) for k, v in value.items()]
        if dup and items and draw(st.booleans()):
            items.append(items[0])
        return "{" + ",".join(f"{k}:{v}" for k, v in items) + "}"
    if isinstance(value, list):
        return "[" + ",".join(_render(v, dup, draw) for v in value) + "]"
    return json.dumps(value, ensure_ascii=False)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_fast_decoding_matches_the_reference_on_generated_bodies(data):
    value = data.draw(
        st.recursive(
            _json_scalars,
            lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(_keys, inner, max_size=4)),
            max_leaves=12,
        )
    )
    raw = _render(value, data.draw(st.booleans()), data.draw).encode("utf-8")
    want, got = reference(raw), fast(raw)
    assert want[0] == got[0], (raw, want, got)
    if want[0] == "ok":
        assert same_value(want[1], got[1]), (raw, want, got)


# ------------------------------------------------------------------ msgpack: repeated keys

_mp_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(allow_nan=False),
    st.sampled_from([0.5, -2.25, 1e30, 3.0]),  # some fit a float32
    st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=40),
)


def _mp_header(fix: int, fixmax: int, c16: int, n: int, wide: bool) -> bytes:
    if wide:
        return bytes([c16 + 1]) + n.to_bytes(4, "big")  # the 32-bit form, whatever n is
    if n <= fixmax:
        return bytes([fix | n])
    return (bytes([c16]) + n.to_bytes(2, "big")) if n < 65536 else (bytes([c16 + 1]) + n.to_bytes(4, "big"))


def _mp_render(value, dup: bool, draw) -> tuple[bytes, set]:
    """msgpack of ``value`` with headers minimal or (drawn) wider than needed, floats
    as float32 where exact; with ``dup`` some maps repeat a key.  Returns the bytes
    and the keys repeated."""
    wide = draw(st.booleans())
    if isinstance(value, dict):
        pairs = [(k, _mp_render(v, dup, draw)) for k, v in value.items()]
        repeated = set().union(*(r for _, (_, r) in pairs))
        if dup and pairs and draw(st.booleans()):
            pairs.append((pairs[-1][0], (msgpack.packb(draw(_mp_scalars)), set())))
            repeated.add(pairs[-1][0])
        body = b"".join(_mp_render(k, False, draw)[0] + b for k, (b, _) in pairs)
        return _mp_header(0x80, 15, 0xDE, len(pairs), wide) + body, repeated
    if isinstance(value, list):
        parts = [_mp_render(v, dup, draw) for v in value]
        return (
            _mp_header(0x90, 15, 0xDC, len(parts), wide) + b"".join(b for b, _ in parts),
            set().union(*(r for _, r in parts)),
        )
    if isinstance(value, str) and wide:
        raw = value.encode("utf-8")
        return b"\xdb" + len(raw).to_bytes(4, "big") + raw, set()
    if type(value) is int and wide and -(2**63) <= value < 2**63:
        return b"\xd3" + value.to_bytes(8, "big", signed=True), set()
    if type(value) is float and wide and _fits_float32(value):
        return b"\xca" + struct.pack(">f", value), set()
    return msgpack.packb(value), set()


def _fits_float32(v: float) -> bool:
    try:
        return struct.unpack(">f", struct.pack(">f", v))[0] == v
    except OverflowError:
        return False


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_msgpack_repeated_keys_are_refused_at_any_depth_and_nothing_else_changes(data):
    value = data.draw(
        st.recursive(
            _mp_scalars,
            lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(_keys, inner, max_size=4)),
            max_leaves=12,
        )
    )
    raw, repeated = _mp_render(value, data.draw(st.booleans()), data.draw)
    if repeated:
        with pytest.raises(BodyError, match="not valid msgpack: duplicate key") as exc:
            loads_msgpack(raw)
        assert any(f"duplicate key {k!r}" in str(exc.value) for k in repeated), (exc.value, repeated)
    else:
        # minimal or not, a body without repeated keys decodes as msgpack itself decodes it
        assert same_value(loads_msgpack(raw), msgpack.unpackb(raw, raw=False)), raw


def test_msgpack_repeated_key_is_named():
    event = b"\x83\xa4user\xa1a\xa4user\xa1b\xa6action\xaaauth.login"  # {"user", "user", "action"}
    with pytest.raises(BodyError, match="duplicate key 'user'"):
        decode_body(b"\x91" + event, "application/msgpack")
    nested = (
        b"\x91\x83\xa4user\xa1u\xa6action\xaaauth.login\xa7details\x81\xa1a\x82\xa1x\x01\xa1x\x02"  # details.a.x twice
    )
    with pytest.raises(BodyError, match="duplicate key 'x'"):
        decode_body(nested, "application/msgpack")


def test_decode_body_shapes():
    assert decode_body(b'{"events": [1]}', "application/json") == [1]
    with pytest.raises(BodyError, match="nothing else"):
        decode_body(b'{"events": [], "x": 1}', "application/json")
    with pytest.raises(BodyError, match="array of events"):
        decode_body(b'"x"', "application/json")


# ------------------------------------------------------------------ validation shortcut

_text = st.one_of(
    st.sampled_from(
        [
            "alice",
            "  ",
            "",
            "Grüße",
            "a\u00a0b",
            "x\ny",
            "\x7f",
            "\x85",
            "\ud800",
            "\u2028",
            "a" * 1024,
            "a" * 1025,
            "b" * 2049,
            "😀",
            "\u200d",
        ]
    ),
    st.text(max_size=8),
)
_any = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**65), max_value=2**65),
    st.floats(),
    _text,
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)
_detail_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**65), max_value=2**65),
    st.floats(),
    _text,
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
    st.just(b"bytes"),
    st.just((1, 2)),
    st.just(2**63),
    st.just(-(2**63) - 1),
)
_detail_keys = st.one_of(st.text(max_size=6), st.just("\udc80"), st.just(3))
_ips = st.sampled_from(
    [
        "192.0.2.7",
        "::ffff:192.0.2.7",
        "2001:db8::1",
        "300.1.1.1",
        "fe80::1%eth0",
        "fe80::1%\n",
        "",
        " 1.2.3.4",
        "01.2.3.4",
        "::",
    ]
)
_domains = st.sampled_from(
    [
        "example.com",
        "EXAMPLE.com.",
        "bücher.example",
        "-x.com",
        "a..b",
        "",
        "x" * 64 + ".com",
        "xn--bcher-kva.example",
        "a_b.com",
    ]
)
_actions = st.sampled_from(
    ["auth.login", "quarantine.release", "audit.export", "custom.x.y", "Auth.Login", "nope", "auth.login\n"]
)


_FIELD_VALUES = {
    "user": st.one_of(_text, _any),
    "action": st.one_of(_actions, _any),
    "target": st.one_of(st.none(), _text, _any),
    "user_agent": st.one_of(st.none(), _text, _any),
    "domain": st.one_of(st.none(), _domains, _any),
    "ip": st.one_of(st.none(), _ips, _any),
    "success": st.one_of(st.booleans(), _any),
    "details": st.one_of(
        st.dictionaries(_detail_keys, _detail_values, max_size=5),
        st.just({"big": "x" * 20000}),
        st.just({"k": "é" * 1400}),
        st.just({"k": "é" * 5000}),
        _any,
    ),
}
_BASE = {
    "user": "alice",
    "action": "quarantine.release",
    "target": "Q1",
    "domain": "example.com",
    "ip": "192.0.2.7",
    "user_agent": "curl/8",
    "success": True,
    "details": {"b": 1, "a": "x"},
}


@st.composite
def events(draw):
    """A valid event with one to three fields replaced, dropped or added: every
    rule gets exercised next to an otherwise valid event."""
    obj = dict(_BASE)
    for field in draw(st.lists(st.sampled_from(sorted(_FIELD_VALUES) + ["(drop)", "(extra)"]), min_size=1, max_size=3)):
        if field == "(drop)":
            obj.pop(draw(st.sampled_from(sorted(_BASE))), None)
        elif field == "(extra)":
            obj[draw(st.sampled_from(["seq", "extra", 7]))] = 1
        else:
            obj[field] = draw(_FIELD_VALUES[field])
    return obj


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(events(), st.sampled_from([LIMITS, Limits(max_details_bytes=64, max_field_len=8, max_user_agent_len=8)]))
def test_shortcut_accepts_only_what_the_full_rules_accept_and_agrees(obj, limits):
    problems: list = []
    full = ev._check_full(obj, 0, limits, problems)
    quick = ev._fast_check(obj, limits)
    if quick is not None:
        assert full is not None, (obj, problems)
        assert tuple(quick) == tuple(full)
        assert list(quick.details) == list(full.details)  # the same (sorted) key order


_EDGE_CASES = [
    {"details": {"x": 2**63}},
    {"details": {"x": -(2**63) - 1}},
    {"details": {"x": 2**63 - 1}},
    {"details": {"x": float("nan")}},
    {"details": {"x": float("inf")}},
    {"details": {"x": 1e308}},
    {"details": {"x": "\ud800"}},
    {"details": {"\udc80": 1}},
    {"details": {3: 1}},
    {"details": {"x": b"b"}},
    {"details": {"x": (1,)}},
    {"details": {"x": [1]}},
    {"details": []},
    {"details": {"k": "é" * 4095}},
    {"details": {"k": "x" * 16380}},
    {"details": {"k": "x" * 16390}},
    {"user": " "},
    {"user": "a\nb"},
    {"user": "a\u0085"},
    {"user": "\ud800"},
    {"user": "x" * 1025},
    {"target": "x\x7f"},
    {"user_agent": "u" * 2049},
    {"user_agent": "ok\t"},
    {"ip": "fe80::1%eth0"},
    {"ip": "fe80::1%\n"},
    {"ip": "::ffff:192.0.2.7"},
    {"ip": "1.2.3.256"},
    {"domain": "EXAMPLE.com."},
    {"domain": "a..b"},
    {"domain": "bücher.example"},
    {"action": "audit.export"},
    {"action": "custom.x.y"},
    {"success": 1},
    {"success": None},
    {"seq": 1},
    {"extra": 1},
]


@pytest.mark.parametrize("change", _EDGE_CASES, ids=[repr(c)[:40] for c in _EDGE_CASES])
def test_shortcut_on_edge_cases(change):
    obj = {**_BASE, **change}
    problems: list = []
    full = ev._check_full(obj, 0, LIMITS, problems)
    quick = ev._fast_check(obj, LIMITS)
    if quick is not None:
        assert full is not None, problems
        assert tuple(quick) == tuple(full)


def test_shortcut_takes_the_common_event():
    obj = {
        "user": "alice",
        "action": "quarantine.release",
        "target": "Q1",
        "domain": "Example.COM",
        "ip": "::ffff:192.0.2.7",
        "user_agent": "Mozilla/5.0",
        "success": True,
        "details": {"subject": "Grüße", "recipient": "a@example.com", "n": 3, "f": 1.5, "z": None},
    }
    quick = ev._fast_check(obj, LIMITS)
    assert quick is not None  # the path exists for the everyday event
    assert quick == ev._check_full(obj, 0, LIMITS, [])
    assert list(quick.details) == ["f", "n", "recipient", "subject", "z"]


# ------------------------------------------------------------------ packed drafts


@pytest.mark.parametrize(
    "draft",
    [
        EntryDraft("alice", "auth.login"),
        EntryDraft(
            "bob",
            "quarantine.release",
            "Q1",
            "example.com",
            "192.0.2.7",
            "ua",
            False,
            {"a": [1, {"b": None}], "s": "Grüße", "n": -(2**63), "f": 0.5},
        ),
    ],
)
def test_packed_draft_is_the_tail_of_the_canonical_encoding(draft):
    canon = canonical_bytes("node-1", 12345, 1_700_000_000_000_000, draft)
    assert canon.endswith(pack_draft(draft))
    assert len(canon) - len(pack_draft(draft)) == len(canonical_bytes("node-1", 12345, 1_700_000_000_000_000, ()))


def test_writer_stores_packed_drafts_as_it_stores_drafts(tmp_path):
    """Packed drafts, drafts and both mixed in one commit give identical entries,
    valid signatures and a clean verify."""
    from auditlog.engine.datadir import DataDir
    from auditlog.engine.log import NodeLog
    from auditlog.engine.settings import StoreSettings
    from auditlog.engine.verify import verify_node
    from auditlog.engine.writer import LogWriter

    drafts = [
        EntryDraft(
            f"user{i}",
            "config.filter_update",
            f"t{i}",
            "example.org",
            "192.0.2.1",
            None,
            i % 2 == 0,
            {"i": i, "nested": {"a": [i, "x"]}, "s": "Grüße"},
        )
        for i in range(40)
    ]
    stored = {}
    for kind in ("drafts", "packed", "mixed"):
        dd = DataDir(tmp_path / kind)
        node = dd.init("gw1")
        with LogWriter(dd, node, StoreSettings(segment_max_bytes=4096, fsync="none")) as w:
            for b in range(0, 40, 10):
                batch = drafts[b : b + 10]
                if kind == "packed":
                    batch = [pack_draft(d) for d in batch]
                elif kind == "mixed":
                    batch = [pack_draft(d) if i % 2 else d for i, d in enumerate(batch)]
                res = w.append_batch(batch, canonical=(kind != "mixed" or b % 20 == 0))
                assert res.last_seq - res.first_seq + 1 == 10
        report = verify_node(dd, node)
        assert report.ok, report.to_dict()
        entries = list(NodeLog(dd, node).scan())
        assert all(e.integrity == "ok" for e in entries)
        stored[kind] = [(e.seq, e.user, e.target, e.success, e.details) for e in entries]
    assert stored["drafts"] == stored["packed"] == stored["mixed"]
    assert [json.dumps(s[4]) for s in stored["packed"]] == [json.dumps(d.details) for d in drafts]
