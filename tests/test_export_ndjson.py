"""export.ndjson: one JSON object per line, exactly Entry.to_wire() with the SPEC field names."""

from __future__ import annotations

import json

from helpers_engine import SAMPLE_SIG as SIG
from helpers_engine import SAMPLE_TS as TS
from helpers_engine import sample_entry as entry
from hypothesis import given, settings
from hypothesis import strategies as st

from auditlog.engine.entry import WIRE_FIELDS, Entry
from auditlog.export.csv import CHUNK_CHARS
from auditlog.export.ndjson import iter_ndjson, render_json_entry

SPEC_FIELDS = [
    "id",
    "node",
    "seq",
    "ts",
    "user",
    "action",
    "target",
    "domain",
    "ip",
    "user_agent",
    "success",
    "details",
    "signature",
    "integrity",
]


def lines(entries) -> list[str]:
    text = "".join(iter_ndjson(entries))
    assert text == "" or text.endswith("\n")
    return text.split("\n")[:-1]


def test_one_object_per_line_with_spec_fields() -> None:
    out = lines([entry(1), entry(2, user="bob", success=False, target="t", domain="example.com")])
    assert len(out) == 2
    first, second = (json.loads(line) for line in out)
    assert list(first) == SPEC_FIELDS == list(WIRE_FIELDS)
    assert first == {
        "id": "node-a:1",
        "node": "node-a",
        "seq": 1,
        "ts": "2026-03-14T09:12:33.123457Z",
        "user": "alice",
        "action": "auth.login",
        "target": None,
        "domain": None,
        "ip": "192.0.2.1",
        "user_agent": None,
        "success": True,
        "details": {},
        "signature": SIG.hex(),
        "integrity": "ok",
    }
    assert second["success"] is False and second["domain"] == "example.com"
    assert len(second["signature"]) == 64


def test_compact_and_no_raw_newlines_inside_a_line() -> None:
    (line,) = lines([entry(user="a\nb", user_agent="x\u2028y", details={"s": "l1\r\nl2"})])
    assert ": " not in line and ", " not in line
    assert json.loads(line)["user"] == "a\nb"
    assert json.loads(line)["details"] == {"s": "l1\r\nl2"}


def test_unicode_kept_readable() -> None:
    (line,) = lines([entry(user="Jürgen 東京")])
    assert "Jürgen 東京" in line


def test_marker_has_violation_field() -> None:
    marker = Entry.marker("node-b", 7, TS, "frame checksum mismatch, seq 7-9")
    (line,) = lines([marker])
    obj = json.loads(line)
    assert obj == marker.to_wire()
    assert obj["integrity"] == "violation" and obj["violation"] == "frame checksum mismatch, seq 7-9"
    assert list(obj)[-1] == "violation"


def test_render_json_entry_is_one_line_without_newline() -> None:
    e = entry(details={"mail_id": "m1", "recipient": "bob@example.com", "n": (1, 2)})
    text = render_json_entry(e)
    assert "\n" not in text
    assert json.loads(text) == e.to_wire()


def test_empty_stream_yields_nothing() -> None:
    assert list(iter_ndjson([])) == []


def test_chunks_end_on_line_boundaries() -> None:
    entries = [entry(i, details={"n": i}) for i in range(1, 3001)]
    chunks = list(iter_ndjson(entries))
    assert len(chunks) > 3
    assert all(c.endswith("\n") and len(c) < CHUNK_CHARS + 2000 for c in chunks)
    assert [json.loads(x)["seq"] for x in "".join(chunks).splitlines()] == list(range(1, 3001))


def test_damaged_record_with_odd_types_does_not_crash() -> None:
    e = entry(user=12, details={b"k": b"\x01"}, integrity="violation", violation="mac_mismatch")  # type: ignore[arg-type]
    obj = json.loads(render_json_entry(e))
    assert obj["user"] == 12 and obj["details"] == {"b'k'": "01"} and obj["violation"] == "mac_mismatch"
    e = entry(details={"k": b"\x01", "n": [1, b"\x02"]}, integrity="violation", violation="x")
    assert json.loads(render_json_entry(e))["details"] == {"k": "01", "n": [1, "02"]}


def test_a_batch_with_flagged_entries_renders_each_as_its_wire_dict() -> None:
    """Verified entries go in one call, flagged ones one by one: the lines are the same
    as rendering each on its own, in order, whatever the mix."""
    es = [entry(1), entry(2, details={"k": b"\x07"}, integrity="violation", violation="v"), entry(3)]
    es.append(Entry.marker("node-a", 4, TS, "mac_mismatch: seq 4..9"))
    text = "".join(iter_ndjson(es))
    assert text.splitlines() == [render_json_entry(e) for e in es]
    assert [json.loads(x) for x in text.splitlines()][1]["details"] == {"k": "07"}


_json_scalar = st.one_of(st.none(), st.booleans(), st.integers(-(2**63), 2**63 - 1), st.text(max_size=20))
_details = st.dictionaries(
    st.text(max_size=8),
    st.one_of(
        _json_scalar,
        st.lists(_json_scalar, max_size=3).map(tuple),
        st.dictionaries(st.text(max_size=5), _json_scalar, max_size=3),
    ),
    max_size=5,
)


@settings(max_examples=300)
@given(
    node=st.from_regex(r"[a-z0-9][a-z0-9-]{0,10}", fullmatch=True),
    seq=st.integers(1, 2**40),
    ts=st.integers(0, 253402300799999999),
    user=st.text(max_size=20),
    target=st.one_of(st.none(), st.text(max_size=20)),
    user_agent=st.one_of(st.none(), st.text(max_size=20)),
    success=st.booleans(),
    details=_details,
    integrity=st.sampled_from(["ok", "violation"]),
    violation=st.one_of(st.none(), st.text(max_size=20)),
)
def test_equals_to_wire(
    node: str,
    seq: int,
    ts: int,
    user: str,
    target: str | None,
    user_agent: str | None,
    success: bool,
    details: dict,
    integrity: str,
    violation: str | None,
) -> None:
    e = Entry.of(
        node, seq, ts, user, "custom.x", target, None, None, user_agent, success, details, SIG, integrity, violation
    )
    (line,) = lines([e])
    wire = e.to_wire()
    obj = json.loads(line)
    assert obj == wire
    assert list(obj) == list(wire)  # same keys in the same order
    assert line == json.dumps(wire, ensure_ascii=False, separators=(",", ":"))
