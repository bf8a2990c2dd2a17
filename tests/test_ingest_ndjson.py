"""Tests of ingest.event.parse_ndjson: line handling, error reporting, hostile input."""

from __future__ import annotations

import io
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from auditlog.engine.entry import EntryDraft
from auditlog.ingest.errors import BatchTooLargeError, InvalidEventError
from auditlog.ingest.event import parse_ndjson, reject_duplicate_keys
from auditlog.ingest.limits import Limits

GOOD = {"user": "admin", "action": "auth.login"}
GOOD_LINE = json.dumps(GOOD)


def line(**kw) -> str:
    return json.dumps({**GOOD, **kw})


def ndjson_error(data, limits=Limits()) -> InvalidEventError:
    with pytest.raises(InvalidEventError) as ei:
        parse_ndjson(data, limits)
    assert ei.value.label == "line"
    return ei.value


# ------------------------------------------------------------------ good input


@pytest.mark.parametrize("form", ["str", "bytes", "bytearray", "list_str", "list_bytes", "text_file", "binary_file"])
def test_input_forms(form):
    text = "\n".join([line(user="a"), line(user="b", ip="::ffff:10.0.0.1")]) + "\n"
    data = {
        "str": text,
        "bytes": text.encode(),
        "bytearray": bytearray(text.encode()),
        "list_str": text.splitlines(),
        "list_bytes": text.encode().splitlines(),
        "text_file": io.StringIO(text),
        "binary_file": io.BytesIO(text.encode()),
    }[form]
    drafts = parse_ndjson(data)
    assert [d.user for d in drafts] == ["a", "b"]
    assert drafts[1].ip == "10.0.0.1"
    assert all(type(d) is EntryDraft for d in drafts)


def test_blank_lines_crlf_and_whitespace_skipped():
    data = f"\n  \n{GOOD_LINE}\r\n\t\n{line(user='z')}\r\n\r\n"
    assert [d.user for d in parse_ndjson(data)] == ["admin", "z"]


def test_bom_on_first_line_ignored():
    assert parse_ndjson(b"\xef\xbb\xbf" + GOOD_LINE.encode())[0].user == "admin"


def test_unicode_line_separator_inside_string_is_not_a_line_break():
    data = json.dumps({**GOOD, "target": "a\u2028b"}, ensure_ascii=False)
    assert parse_ndjson(data)[0].target == "a\u2028b"
    assert parse_ndjson(data.encode())[0].target == "a\u2028b"


def test_details_sorted():
    d = parse_ndjson(line(details={"b": {"d": 1, "c": 2}, "a": 0}))[0]
    assert list(d.details) == ["a", "b"] and list(d.details["b"]) == ["c", "d"]


# ------------------------------------------------------------------ errors name the line


def test_bad_event_names_line_and_field():
    data = "\n".join([GOOD_LINE, "", line(ip="abc")])
    err = ndjson_error(data)
    assert err.problems == [{"index": 3, "field": "ip", "message": "not a valid IPv4/IPv6 address 'abc'"}]
    assert str(err) == "line 3: field 'ip': not a valid IPv4/IPv6 address 'abc'"


def test_all_or_nothing_collects_every_line():
    data = "\n".join([GOOD_LINE, line(success=1), "{nope", GOOD_LINE, "[1, 2]", line(action="auth.nope")])
    err = ndjson_error(data)
    assert [(p["index"], p["field"]) for p in err.problems] == [
        (2, "success"),
        (3, "(event)"),
        (5, "(event)"),
        (6, "action"),
    ]
    text = str(err)
    assert "line 2: field 'success'" in text
    assert "line 3: invalid JSON: " in text
    assert "line 5: expected an object, got array" in text
    assert "line 6: field 'action': unknown action" in text


@pytest.mark.parametrize(
    "bad,needle",
    [
        ("{nope", "invalid JSON: Expecting property name enclosed in double quotes (column 2)"),
        ('{"user": "a",}', "invalid JSON"),
        ("{} {}", "invalid JSON: Extra data"),
        ("'single'", "invalid JSON"),
        ('{"user": "a", "user": "b", "action": "auth.login"}', "invalid JSON: duplicate key 'user'"),
        ('{"details": {"k": 1, "k": 2}}', "duplicate key 'k'"),
        ('{"n": ' + "1" * 5000 + "}", "invalid JSON: number has too many digits"),
        ("[" * 100_000 + "]" * 100_000, "invalid JSON"),
    ],
)
def test_invalid_json_names_line(bad, needle):
    err = ndjson_error(f"{GOOD_LINE}\n{bad}\n")
    assert len(err.problems) == 1
    p = err.problems[0]
    assert p["index"] == 2 and p["field"] == "(event)"
    assert needle in p["message"]
    assert str(err).startswith("line 2: invalid JSON")
    assert len(str(err)) < 400


@pytest.mark.parametrize("raw", [b"\xff\xfe{}", b'{"user": "\xc3\x28"}', b"\xed\xa0\x80", b'{"user":"a\x80"}'])
def test_invalid_utf8_names_line(raw):
    err = ndjson_error(GOOD_LINE.encode() + b"\n\n" + raw + b"\n")
    assert len(err.problems) == 1
    assert err.problems[0]["index"] == 3
    assert err.problems[0]["message"].startswith("not valid UTF-8")
    assert str(err).startswith("line 3: not valid UTF-8")


def test_invalid_utf8_in_iterable_of_byte_lines():
    err = ndjson_error([GOOD_LINE.encode(), b"\x80"])
    assert str(err).startswith("line 2: not valid UTF-8")


def test_non_text_line_in_iterable():
    err = ndjson_error([GOOD_LINE, 5])  # type: ignore[list-item]
    assert err.problems[0]["index"] == 2
    assert "expected a line of text, got integer" in str(err)


@pytest.mark.parametrize("data", ["", "\n\n", b"", b"  \r\n", []])
def test_empty_input(data):
    err = ndjson_error(data)
    assert err.problems[0]["field"] == "(batch)"
    assert "empty batch" in str(err)
    assert not str(err).startswith("line")


def test_escaped_surrogate_and_nul_rejected():
    err = ndjson_error('{"user": "a\\u0000b", "action": "auth.login", "target": "\\ud800"}')
    assert [(p["index"], p["field"]) for p in err.problems] == [(1, "user"), (1, "target")]
    assert "control character U+0000" in str(err)
    assert "lone surrogate" in str(err)


def test_nan_and_infinity_literals_rejected_in_details():
    err = ndjson_error('{"user": "a", "action": "auth.login", "details": {"x": NaN, "y": -Infinity}}')
    msgs = [p["message"] for p in err.problems]
    assert msgs == ["at details.x: number must be finite, got nan", "at details.y: number must be finite, got -inf"]


def test_big_int_in_details_rejected():
    err = ndjson_error(json.dumps({**GOOD, "details": {"n": 2**70}}))
    assert "signed 64-bit" in str(err)


def test_huge_line_rejected_with_short_message():
    err = ndjson_error(line(user="x" * 1_000_000))
    assert "too long: 1000000 characters" in str(err)
    assert len(str(err)) < 300


# ------------------------------------------------------------------ batch size


def test_batch_limit_counts_non_blank_lines():
    limits = Limits(max_batch=2)
    assert len(parse_ndjson(f"{GOOD_LINE}\n\n\n{GOOD_LINE}\n", limits)) == 2
    with pytest.raises(BatchTooLargeError) as ei:
        parse_ndjson("\n".join([GOOD_LINE] * 3), limits)
    assert ei.value.http_status == 413
    assert ei.value.limit == 2
    assert "limit 2" in str(ei.value)


def test_batch_limit_stops_reading():
    consumed = []

    def lines():
        for i in range(1_000_000):
            consumed.append(i)
            yield GOOD_LINE

    with pytest.raises(BatchTooLargeError):
        parse_ndjson(lines(), Limits(max_batch=5))
    assert len(consumed) == 6


def test_batch_limit_counts_bad_lines_too():
    with pytest.raises(BatchTooLargeError):
        parse_ndjson(b"\xff\n\xff\n\xff\n", Limits(max_batch=2))


def test_message_capped():
    err = ndjson_error("\n".join(["{bad"] * 30))
    assert len(err.problems) == 30
    assert str(err).endswith("; ... and 10 more")


# ------------------------------------------------------------------ duplicate-key hook


def test_reject_duplicate_keys_hook():
    assert json.loads('{"a": 1, "b": 2}', object_pairs_hook=reject_duplicate_keys) == {"a": 1, "b": 2}
    with pytest.raises(ValueError, match="duplicate key 'a'"):
        json.loads('{"a": 1, "a": 2}', object_pairs_hook=reject_duplicate_keys)


# ------------------------------------------------------------------ properties


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300))
def test_arbitrary_bytes_only_raise_ingest_errors(data):
    try:
        drafts = parse_ndjson(data, Limits(max_batch=50))
    except (InvalidEventError, BatchTooLargeError):
        return
    assert all(isinstance(d, EntryDraft) for d in drafts)


json_text = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.sampled_from(["user", "action", "ip", "domain", "details", "x", "ts"]), inner, max_size=5)
    ),
    max_leaves=15,
).map(json.dumps)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(json_text | st.text(max_size=30), max_size=6))
def test_arbitrary_lines_only_raise_ingest_errors(lines):
    data = "\n".join(lines)
    try:
        drafts = parse_ndjson(data)
    except BatchTooLargeError:
        raise AssertionError("default limit cannot be reached here") from None
    except InvalidEventError as e:
        n_lines = data.count("\n") + 1
        assert all(p["index"] == -1 or 1 <= p["index"] <= n_lines for p in e.problems)
        return
    assert len(drafts) == sum(1 for ln in data.split("\n") if ln.strip())


valid_lines = st.lists(
    st.fixed_dictionaries(
        {
            "user": st.from_regex(r"[a-z]{1,8}", fullmatch=True),
            "action": st.sampled_from(["auth.login", "user.create", "custom.x.y"]),
        },
        optional={
            "details": st.dictionaries(st.text(max_size=5), st.integers(-5, 5), max_size=5),
            "success": st.booleans(),
        },
    ),
    min_size=1,
    max_size=10,
)


@given(valid_lines, st.sampled_from(["\n", "\r\n", "\n\n"]))
def test_valid_lines_parse_in_order(events, sep):
    drafts = parse_ndjson(sep.join(json.dumps(e) for e in events).encode())
    assert [d.user for d in drafts] == [e["user"] for e in events]
    for d, e in zip(drafts, events):
        assert d.details == e.get("details", {})
        assert list(d.details) == sorted(d.details)
        assert d.success is e.get("success", True)
