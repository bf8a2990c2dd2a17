"""Tests of ingest.event.validate_event / validate_batch, the taxonomy, limits and errors."""

from __future__ import annotations

import ipaddress
import json

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from auditlog.engine.entry import EntryDraft
from auditlog.engine.errors import AuditLogError
from auditlog.ingest.errors import BatchTooLargeError, IngestError, InvalidEventError
from auditlog.ingest.event import parse_detail_args, validate_batch, validate_event
from auditlog.ingest.limits import Limits
from auditlog.ingest.taxonomy import (
    ACTION_RE,
    AUDIT_ACTIONS,
    NODE_ACTIONS,
    RESERVED_ACTIONS,
    TAXONOMY,
    is_known_action,
    says_failure,
)

GOOD = {"user": "admin", "action": "auth.login"}


def ev(**kw):
    d = dict(GOOD)
    d.update(kw)
    return d


def problems_of(obj, index=0, limits=Limits()):
    with pytest.raises(InvalidEventError) as ei:
        validate_event(obj, index, limits)
    return ei.value


def only_problem(obj, field, index=0, limits=Limits()):
    """The single problem an event has; asserts it is about ``field``."""
    err = problems_of(obj, index, limits)
    assert len(err.problems) == 1, err.problems
    p = err.problems[0]
    assert p["field"] == field
    assert p["index"] == index
    assert f"event {index}: " in str(err)
    return p["message"], str(err)


# ------------------------------------------------------------------ good events


def test_minimal_event_gets_defaults():
    d = validate_event(GOOD)
    assert d == EntryDraft("admin", "auth.login", None, None, None, None, True, {})
    assert type(d) is EntryDraft


def test_full_event_round_trips():
    obj = {
        "user": "alice",
        "action": "quarantine.release",
        "target": "mail-42",
        "domain": "example.com",
        "ip": "192.0.2.7",
        "user_agent": "curl/8.0",
        "success": False,
        "details": {"mail_id": "42", "subject": "hi", "sender": "a@b.c", "recipient": "d@e.f"},
    }
    d = validate_event(obj)
    assert d.user == "alice" and d.action == "quarantine.release"
    assert d.target == "mail-42" and d.domain == "example.com" and d.ip == "192.0.2.7"
    assert d.user_agent == "curl/8.0" and d.success is False
    assert d.details == obj["details"]


def test_nulls_equal_absent():
    d = validate_event(ev(target=None, domain=None, ip=None, user_agent=None, details=None))
    assert d == validate_event(GOOD)


def test_details_sorted_recursively_and_copied():
    details = {"b": 1, "a": {"z": [1, {"y": 2, "x": 1}], "c": None}}
    d = validate_event(ev(details=details))
    assert list(d.details) == ["a", "b"]
    assert list(d.details["a"]) == ["c", "z"]
    assert list(d.details["a"]["z"][1]) == ["x", "y"]
    assert d.details == details
    details["b"] = 2  # the draft must not alias the caller's dict
    assert d.details["b"] == 1


def test_details_flat_sorted():
    d = validate_event(ev(details={"z": 1, "m": "x", "a": True}))
    assert list(d.details) == ["a", "m", "z"]


def test_msgpack_tuples_become_lists():
    raw = msgpack.packb(ev(details={"l": [1, [2, 3]]}))
    obj = msgpack.unpackb(raw, use_list=False)
    d = validate_event(obj)
    assert d.details == {"l": [1, [2, 3]]}
    assert type(d.details["l"]) is list


def test_custom_action_accepted():
    assert validate_event(ev(action="custom.my_plugin.did_thing")).action == "custom.my_plugin.did_thing"


@pytest.mark.parametrize("action", sorted(TAXONOMY - RESERVED_ACTIONS))
def test_every_client_taxonomy_action_accepted(action):
    assert validate_event(ev(action=action)).action == action


@pytest.mark.parametrize("action", sorted(RESERVED_ACTIONS))
def test_log_own_actions_refused_from_clients(action):
    # a client-made audit.retention_purge could otherwise excuse deleted segments,
    # a cluster.node_join pass for the node's own membership record
    with pytest.raises(InvalidEventError) as exc:
        validate_event(ev(action=action))
    assert [(q["index"], q["field"]) for q in exc.value.problems] == [(0, "action")]
    assert "reserved" in str(exc.value) and "'action'" in str(exc.value) and action in str(exc.value)


def test_node_actions_are_the_membership_and_key_use_records():
    assert NODE_ACTIONS == {"cluster.node_join", "cluster.node_leave", "auth.api_key_used"}
    assert RESERVED_ACTIONS == AUDIT_ACTIONS | NODE_ACTIONS and RESERVED_ACTIONS <= TAXONOMY


# ------------------------------------------------------------------ taxonomy


def test_taxonomy_entries_match_regex():
    assert len(TAXONOMY) == 46
    assert all(ACTION_RE.fullmatch(a) for a in TAXONOMY)
    assert AUDIT_ACTIONS <= TAXONOMY
    assert "audit.checkpoint" in TAXONOMY and "audit.tree_head" in TAXONOMY and "auth.login" in TAXONOMY


@pytest.mark.parametrize(
    "a,ok",
    [
        ("auth.login", True),
        ("custom.x", True),
        ("custom.a.b_c", True),
        ("custom.", False),
        ("custom", False),
        ("auth.unknown", False),
        ("Custom.x", False),
        ("custom.X", False),
        ("custom.x\n", False),
        (None, False),
        (3, False),
    ],
)
def test_is_known_action(a, ok):
    assert is_known_action(a) is ok


# ------------------------------------------------------------------ user


@pytest.mark.parametrize(
    "obj,needle",
    [
        ({"action": "auth.login"}, "required"),
        (ev(user=None), "required"),
        (ev(user=""), "empty"),
        (ev(user="   "), "empty"),
        (ev(user=5), "must be a string, got integer"),
        (ev(user=["a"]), "got array"),
        (ev(user="ad\x00min"), "control character U+0000"),
        (ev(user="a\nb"), "control character U+000A"),
        (ev(user="a\x85b"), "control character U+0085"),
        (ev(user="a\ud800"), "lone surrogate U+D800"),
        (ev(user="x" * 1025), "too long: 1025 characters (limit 1024)"),
    ],
)
def test_bad_user(obj, needle):
    msg, text = only_problem(obj, "user", index=4)
    assert needle in msg
    assert "field 'user'" in text


def test_user_at_limit_and_unicode_ok():
    assert validate_event(ev(user="x" * 1024)).user == "x" * 1024
    assert validate_event(ev(user="Zoë 管理者")).user == "Zoë 管理者"


# ------------------------------------------------------------------ action


@pytest.mark.parametrize(
    "action,needle",
    [
        ("auth", "not a valid action name"),
        ("Auth.Login", "not a valid action name"),
        ("auth.login\n", "not a valid action name"),
        ("auth..login", "not a valid action name"),
        ("1auth.login", "not a valid action name"),
        ("auth.login_typo", "unknown action 'auth.login_typo'"),
        ("customx.thing", "unknown action"),
        ("custom." + "a" * 2000, "too long"),
    ],
)
def test_bad_action(action, needle):
    msg, text = only_problem(ev(action=action), "action", index=2)
    assert needle in msg
    assert text.startswith("event 2: field 'action'")


def test_action_missing_and_wrong_type():
    assert only_problem({"user": "u"}, "action")[0] == "required"
    assert "got boolean" in only_problem(ev(action=True), "action")[0]


# ------------------------------------------------------------------ target / user_agent


@pytest.mark.parametrize("field", ["target", "user_agent"])
def test_optional_text_fields(field):
    assert getattr(validate_event(ev(**{field: "x"})), field) == "x"
    assert "got integer" in only_problem(ev(**{field: 1}), field)[0]
    assert "got object" in only_problem(ev(**{field: {}}), field)[0]
    assert "control character" in only_problem(ev(**{field: "a\x1bb"}), field)[0]
    assert "surrogate" in only_problem(ev(**{field: "\udc80"}), field)[0]


def test_field_length_limits():
    assert validate_event(ev(target="t" * 1024)).target == "t" * 1024
    assert "limit 1024" in only_problem(ev(target="t" * 1025), "target")[0]
    assert validate_event(ev(user_agent="u" * 2048)).user_agent == "u" * 2048
    assert "limit 2048" in only_problem(ev(user_agent="u" * 2049), "user_agent")[0]
    small = Limits(max_field_len=10, max_user_agent_len=12)
    assert "limit 10" in only_problem(ev(target="t" * 11), "target", limits=small)[0]
    assert "limit 12" in only_problem(ev(user_agent="u" * 13), "user_agent", limits=small)[0]


def test_huge_string_rejected_quickly_and_message_short():
    msg, text = only_problem(ev(target="x" * 10_000_000), "target")
    assert "10000000 characters" in msg
    assert len(text) < 300


# ------------------------------------------------------------------ domain


@pytest.mark.parametrize(
    "given_,stored",
    [
        ("example.com", "example.com"),
        ("Mail.EXAMPLE.com", "mail.example.com"),
        ("example.com.", "example.com"),
        ("localhost", "localhost"),
        ("a-b.c0.xn--p1ai", "a-b.c0.xn--p1ai"),
        ("bücher.example", "xn--bcher-kva.example"),
        ("BÜCHER.example", "xn--bcher-kva.example"),
        ("a" * 63 + ".com", "a" * 63 + ".com"),
    ],
)
def test_good_domain(given_, stored):
    assert validate_event(ev(domain=given_)).domain == stored


@pytest.mark.parametrize(
    "domain,needle",
    [
        ("", "empty"),
        (".", "empty"),
        ("a..b", "empty label"),
        (".a", "empty label"),
        ("a" * 64 + ".com", "longer than 63"),
        (".".join(["a" * 60] * 5), "longer than 253"),
        ("-a.com", "starts or ends with '-'"),
        ("a-.com", "starts or ends with '-'"),
        ("a_b.com", "characters other than"),
        ("a b.com", "characters other than"),
        ("exa\x00mple.com", "characters other than"),
        ("user@example.com", "characters other than"),
        ("ü" * 70 + ".com", "internationalised"),
        ("\ud800.com", "internationalised"),
    ],
)
def test_bad_domain(domain, needle):
    msg, text = only_problem(ev(domain=domain), "domain", index=1)
    assert needle in msg
    assert "event 1: field 'domain'" in text


def test_domain_wrong_type_and_too_long():
    assert "got integer" in only_problem(ev(domain=3), "domain")[0]
    assert "too long" in only_problem(ev(domain="a." * 600), "domain")[0]


# ------------------------------------------------------------------ ip


@pytest.mark.parametrize(
    "given_,stored",
    [
        ("192.0.2.1", "192.0.2.1"),
        ("2001:DB8:0:0:0:0:0:1", "2001:db8::1"),
        ("2001:db8::0001", "2001:db8::1"),
        ("::1", "::1"),
        ("::ffff:1.2.3.4", "1.2.3.4"),
        ("::FFFF:0102:0304", "1.2.3.4"),
        ("fe80::1%eth0", "fe80::1%eth0"),
    ],
)
def test_good_ip_normalised(given_, stored):
    assert validate_event(ev(ip=given_)).ip == stored


@pytest.mark.parametrize(
    "ip",
    [
        "abc",
        "",
        "1.2.3",
        "256.1.1.1",
        "01.2.3.4",
        "1.2.3.4 ",
        "::g",
        "1.2.3.4/24",
        "fe80::1%\n",
        "1" * 5000,
    ],
)
def test_bad_ip(ip):
    msg, text = only_problem(ev(ip=ip), "ip", index=3)
    assert msg.startswith("not a valid IPv4/IPv6 address")
    assert "event 3: field 'ip': not a valid IPv4/IPv6 address" in text


def test_brief_example_message():
    err = problems_of(ev(ip="abc"), 3)
    assert str(err) == "event 3: field 'ip': not a valid IPv4/IPv6 address 'abc'"


def test_ip_wrong_type():
    assert "got integer" in only_problem(ev(ip=3232235777), "ip")[0]


# ------------------------------------------------------------------ success


@pytest.mark.parametrize(
    "value,tname",
    [
        (1, "integer"),
        (0, "integer"),
        ("true", "string"),
        (None, "null"),
        (1.0, "number"),
    ],
)
def test_success_must_be_bool(value, tname):
    msg, _ = only_problem(ev(success=value), "success")
    assert msg == f"must be true or false, got {tname}"


def test_success_values():
    assert validate_event(ev(success=False)).success is False
    assert validate_event(ev(success=True)).success is True


# ------------------------------------------------------------------ details


def test_details_must_be_map():
    assert "got array" in only_problem(ev(details=[1]), "details")[0]
    assert "got string" in only_problem(ev(details="x"), "details")[0]


@pytest.mark.parametrize(
    "details,needle",
    [
        ({"a": float("nan")}, "at details.a: number must be finite, got nan"),
        ({"a": float("inf")}, "finite"),
        ({"a": [1, float("-inf")]}, "at details.a[1]: number must be finite"),
        ({"a": 2**70}, "signed 64-bit"),
        ({"a": 2**63}, "signed 64-bit"),
        ({"a": -(2**63) - 1}, "signed 64-bit"),
        ({"a": "\ud800"}, "lone surrogate"),
        ({"\udfff": 1}, "lone surrogate"),
        ({"a": b"bytes"}, "unsupported value type bytes"),
        ({"a": {1, 2}}, "unsupported value type set"),
        ({"a": object()}, "unsupported value type object"),
        ({1: "x"}, "keys must be strings, got integer"),
        ({"a": {b"k": 1}}, "at details.a: keys must be strings, got bytes"),
        ({"we ird": {"x": float("nan")}}, "at details['we ird'].x"),
    ],
)
def test_bad_details_values(details, needle):
    err = problems_of(ev(details=details), 5)
    assert [p["field"] for p in err.problems] == ["details"]
    assert needle in err.problems[0]["message"]
    assert str(err).startswith("event 5: field 'details': ")


def test_details_int_bounds_ok():
    d = validate_event(ev(details={"lo": -(2**63), "hi": 2**63 - 1, "f": 1.5, "n": None, "b": False, "s": "\x00ok\n"}))
    assert d.details["lo"] == -(2**63) and d.details["hi"] == 2**63 - 1
    assert d.details["s"] == "\x00ok\n"  # free-form text may hold control chars


def nest(depth):
    """A details value whose total container depth (the details map included) is ``depth``."""
    v = {}
    for _ in range(depth - 1):
        v = {"k": v}
    return v


def test_details_depth_limit():
    assert validate_event(ev(details=nest(8)))
    msg, _ = only_problem(ev(details=nest(9)), "details")
    assert "nested deeper than 8 levels" in msg
    msg, _ = only_problem(ev(details={"l": [[[[[[[[1]]]]]]]]}), "details")
    assert "nested deeper than 8 levels" in msg
    assert validate_event(ev(details={"l": [[[[[[[1]]]]]]]}))
    msg, _ = only_problem(ev(details=nest(3)), "details", limits=Limits(max_details_depth=2))
    assert "deeper than 2" in msg


def test_details_very_deep_nesting_no_recursion_error():
    v: list = []
    for _ in range(100_000):
        v = [v]
    msg, _ = only_problem(ev(details={"deep": v}), "details")
    assert "nested deeper" in msg


def test_details_size_limit_exact():
    # fixmap(1) + fixstr "s" + str16 header (3) + payload = 6 + n bytes
    n = 16384 - 6
    assert len(msgpack.packb({"s": "x" * n}, use_bin_type=True)) == 16384
    assert validate_event(ev(details={"s": "x" * n}))
    msg, _ = only_problem(ev(details={"s": "x" * (n + 1)}), "details")
    assert "too large" in msg and "16385 bytes" in msg


def test_details_size_counts_utf8_bytes():
    # 6000 chars of 3-byte UTF-8 = 18000 bytes: over the limit though under it in chars.
    msg, _ = only_problem(ev(details={"s": "€" * 6000}), "details")
    assert "too large" in msg


def test_details_huge_rejected_early():
    msg, _ = only_problem(ev(details={"s": "x" * 50_000_000}), "details")
    assert "too large" in msg
    many = {str(i): i for i in range(200_000)}
    msg, _ = only_problem(ev(details=many), "details")
    assert "too large" in msg


def test_details_size_limit_configurable():
    msg, _ = only_problem(ev(details={"s": "x" * 100}), "details", limits=Limits(max_details_bytes=64))
    assert "limit 64" in msg


def test_details_problem_count_capped():
    err = problems_of(ev(details={str(i): float("nan") for i in range(50)}))
    msgs = [p["message"] for p in err.problems]
    assert len(msgs) == 11
    assert msgs[-1] == "... and 40 more problems in details"


# ------------------------------------------------------------------ top-level fields


@pytest.mark.parametrize("field", ["id", "node", "seq", "ts", "signature", "integrity"])
def test_node_assigned_fields_rejected(field):
    msg, text = only_problem(ev(**{field: 1}), field, index=7)
    assert "assigned by the node" in msg
    assert f"event 7: field '{field}': assigned by the node" in text


def test_unknown_field_named():
    msg, text = only_problem(ev(colour="red"), "colour")
    assert msg == "unknown field"
    assert "field 'colour': unknown field" in text


def test_non_string_field_name():
    err = problems_of({**GOOD, 5: "x"})
    assert err.problems[0]["field"] == "5"
    assert "field names must be strings" in err.problems[0]["message"]


def test_bytes_fields_from_raw_msgpack_rejected():
    obj = msgpack.unpackb(msgpack.packb(GOOD), raw=True)
    err = problems_of(obj)
    fields = {p["field"] for p in err.problems}
    assert {"b'user'", "b'action'", "user", "action"} <= fields


@pytest.mark.parametrize(
    "obj,tname",
    [
        (None, "null"),
        ([GOOD], "array"),
        ("x", "string"),
        (3, "integer"),
        (b"x", "bytes"),
    ],
)
def test_non_dict_event(obj, tname):
    err = problems_of(obj, 6)
    assert err.problems == [{"index": 6, "field": "(event)", "message": f"expected an object, got {tname}"}]
    assert str(err) == f"event 6: expected an object, got {tname}"


def test_all_problems_collected():
    bad = {
        "user": "",
        "action": "nope",
        "ip": "x",
        "domain": "a..b",
        "success": "yes",
        "target": 1,
        "user_agent": 2,
        "details": {"a": float("nan")},
        "ts": 1,
        "what": 0,
    }
    err = problems_of(bad, 9)
    fields = [p["field"] for p in err.problems]
    assert sorted(fields) == sorted(
        ["user", "action", "ip", "domain", "success", "target", "user_agent", "details", "ts", "what"]
    )
    assert all(p["index"] == 9 for p in err.problems)
    assert str(err).count("event 9: ") == 10


# ------------------------------------------------------------------ batches


def test_batch_ok_in_order():
    drafts = validate_batch([ev(user="a"), ev(user="b"), ev(user="c")])
    assert [d.user for d in drafts] == ["a", "b", "c"]


def test_batch_all_or_nothing_with_indexes():
    with pytest.raises(InvalidEventError) as ei:
        validate_batch([GOOD, ev(ip="abc"), GOOD, "nope", ev(user=None)])
    err = ei.value
    assert [(p["index"], p["field"]) for p in err.problems] == [(1, "ip"), (3, "(event)"), (4, "user")]
    text = str(err)
    assert "event 1: field 'ip'" in text
    assert "event 3: expected an object, got string" in text
    assert "event 4: field 'user': required" in text
    assert text.count("; ") == 2


def test_empty_batch():
    with pytest.raises(InvalidEventError) as ei:
        validate_batch([])
    assert ei.value.problems[0]["field"] == "(batch)"
    assert "empty batch" in str(ei.value)


def test_batch_not_a_list():
    with pytest.raises(InvalidEventError) as ei:
        validate_batch({"user": "x"})  # type: ignore[arg-type]
    assert "expected an array of events, got object" in str(ei.value)


def test_batch_too_large():
    limits = Limits(max_batch=3)
    assert len(validate_batch([GOOD] * 3, limits)) == 3
    with pytest.raises(BatchTooLargeError) as ei:
        validate_batch([GOOD] * 4, limits)
    assert ei.value.http_status == 413
    assert ei.value.count == 4 and ei.value.limit == 3
    assert "4 events" in str(ei.value) and "limit 3" in str(ei.value)


def test_default_batch_limit():
    validate_batch([GOOD] * 10_000)
    with pytest.raises(BatchTooLargeError):
        validate_batch([GOOD] * 10_001)


def test_message_capped_at_20_problems():
    with pytest.raises(InvalidEventError) as ei:
        validate_batch([ev(ip="x")] * 25)
    err = ei.value
    assert len(err.problems) == 25
    text = str(err)
    assert text.count("not a valid IPv4/IPv6") == 20
    assert text.endswith("; ... and 5 more")
    assert "event 19: " in text and "event 20: " not in text


# ------------------------------------------------------------------ errors and limits


def test_error_classes():
    assert issubclass(IngestError, AuditLogError)
    assert issubclass(InvalidEventError, IngestError)
    assert issubclass(BatchTooLargeError, IngestError)
    assert IngestError.http_status == 400 and IngestError.exit_code == 2
    assert InvalidEventError.http_status == 400
    assert BatchTooLargeError.http_status == 413 and BatchTooLargeError.exit_code == 2


def test_limits_defaults_and_frozen():
    lim = Limits()
    assert (lim.max_details_bytes, lim.max_batch, lim.max_field_len, lim.max_user_agent_len, lim.max_details_depth) == (
        16384,
        10000,
        1024,
        2048,
        8,
    )
    with pytest.raises(AttributeError):
        lim.max_batch = 5  # type: ignore[misc]
    with pytest.raises(ValueError):
        Limits(max_batch=0)


# ------------------------------------------------------------------ --detail parsing


def test_detail_args_json_values_and_strings():
    got = parse_detail_args(
        [
            "n=3",
            "f=1.5",
            "ok=true",
            "nil=null",
            'l=[1,"a"]',
            'm={"b":1}',
            "s=hello world",
            'q="quoted"',
            "e=",
            "eq=a=b",
            "nan=NaN",
            "inf=-Infinity",
            "big=" + "9" * 5000,
        ]
    )
    assert got == {
        "n": 3,
        "f": 1.5,
        "ok": True,
        "nil": None,
        "l": [1, "a"],
        "m": {"b": 1},
        "s": "hello world",
        "q": "quoted",
        "e": "",
        "eq": "a=b",
        "nan": "NaN",
        "inf": "-Infinity",
        "big": "9" * 5000,
    }


def test_detail_args_last_wins():
    assert parse_detail_args(["k=1", "k=2"]) == {"k": 2}
    assert parse_detail_args([]) == {}


def test_detail_args_missing_equals():
    with pytest.raises(InvalidEventError) as ei:
        parse_detail_args(["ok=1", "oops", "=x"])
    err = ei.value
    assert [p["field"] for p in err.problems] == ["details", "details"]
    assert "'oops' is not KEY=VALUE" in str(err)
    assert "empty key" in str(err)


def test_detail_args_feed_validate_event():
    d = validate_event(ev(details=parse_detail_args(["b=2", "a=x"])))
    assert d.details == {"a": "x", "b": 2} and list(d.details) == ["a", "b"]


# ------------------------------------------------------------------ properties

scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
detail_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)
# max_leaves bounds breadth, not depth; keep generated details within the depth limit.
details_maps = st.dictionaries(st.text(max_size=8), detail_values, max_size=6)

labels = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?", fullmatch=True)
domains = st.lists(labels, min_size=1, max_size=4).map(".".join)
ipv4 = st.ip_addresses(v=4).map(str)
ipv6 = st.ip_addresses(v=6).map(str)
text_fields = st.text(st.characters(blacklist_categories=("Cc", "Cs")), min_size=1, max_size=40).filter(
    lambda s: s.strip()
)
actions = st.sampled_from(sorted(TAXONOMY - RESERVED_ACTIONS)) | st.from_regex(
    r"custom(\.[a-z0-9_]{1,8}){1,3}", fullmatch=True
)


def depth(v) -> int:
    if isinstance(v, dict):
        return 1 + max((depth(x) for x in v.values()), default=0)
    if isinstance(v, list):
        return 1 + max((depth(x) for x in v), default=0)
    return 0


def is_sorted_everywhere(v) -> bool:
    if isinstance(v, dict):
        return list(v) == sorted(v) and all(is_sorted_everywhere(x) for x in v.values())
    if isinstance(v, list):
        return all(is_sorted_everywhere(x) for x in v)
    return True


valid_events = st.fixed_dictionaries(
    {"user": text_fields, "action": actions},
    optional={
        "target": st.none() | text_fields,
        "domain": st.none() | domains,
        "ip": st.none() | ipv4 | ipv6,
        "user_agent": st.none() | text_fields,
        "success": st.booleans(),
        "details": st.none() | details_maps,
    },
)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(valid_events)
def test_valid_generated_events_validate(obj):
    details = obj.get("details") or {}
    if depth(details) > 8 or len(msgpack.packb(details, use_bin_type=True)) > 16384:
        return
    failure = says_failure(obj["action"])
    if failure and obj.get("success") is True:
        with pytest.raises(InvalidEventError, match="records a failure"):
            validate_event(obj)
        return
    d = validate_event(obj)
    assert d.user == obj["user"] and d.action == obj["action"]
    assert d.success is obj.get("success", not failure)
    assert d.details == details
    assert is_sorted_everywhere(d.details)
    assert d.domain == obj.get("domain")
    if obj.get("ip") is not None:
        a = ipaddress.ip_address(obj["ip"])
        mapped = getattr(a, "ipv4_mapped", None)
        assert d.ip == str(mapped or a)
    # The draft must be encodable as the engine will sign it.
    msgpack.packb(list(d), use_bin_type=True)


json_like = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text() | st.binary(max_size=4),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.tuples(inner, inner)
        | st.dictionaries(st.text(max_size=6) | st.integers(), inner, max_size=4)
    ),
    max_leaves=25,
)
field_names = st.sampled_from(
    ["user", "action", "target", "domain", "ip", "user_agent", "success", "details", "seq", "junk"]
)
hostile_events = json_like | st.dictionaries(field_names, json_like, max_size=8)


@settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow])
@given(hostile_events)
def test_arbitrary_input_only_raises_invalid_event(obj):
    try:
        d = validate_event(obj)
    except InvalidEventError as e:
        assert e.problems and all(
            set(p) == {"index", "field", "message"} and isinstance(p["message"], str) for p in e.problems
        )
        str(e)
    else:
        assert isinstance(d, EntryDraft)
        msgpack.packb(list(d), use_bin_type=True)
        assert is_sorted_everywhere(d.details)


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(hostile_events, max_size=5))
def test_arbitrary_batches_only_raise_ingest_errors(objs):
    try:
        drafts = validate_batch(objs, Limits(max_batch=4))
    except BatchTooLargeError:
        assert len(objs) > 4
    except InvalidEventError as e:
        assert all(-1 <= p["index"] < max(len(objs), 1) for p in e.problems)
    else:
        assert len(drafts) == len(objs) >= 1


def _strict_json(text):
    def no_constants(name):
        raise ValueError(name)

    return json.loads(text, parse_constant=no_constants)


@given(st.text(max_size=30) | st.from_regex(r"-?[0-9]{1,5}(\.[0-9]+)?|true|false|null|NaN|\[1, ?2\]", fullmatch=True))
def test_detail_arg_value_is_json_or_the_raw_string(value):
    got = parse_detail_args([f"k={value}"])["k"]
    try:
        expected = _strict_json(value)
    except (ValueError, RecursionError):
        expected = value
    assert got == expected and type(got) is type(expected)


def test_a_failure_action_is_no_success():
    # left out: implied false; said false: false; said true: refused, naming the field
    for action in ("auth.login_failed", "custom.relay_denied", "custom.upload_rejected", "custom.sso.failed"):
        assert says_failure(action)
        assert validate_event({"user": "u", "action": action}).success is False
        assert validate_event({"user": "u", "action": action, "success": False}).success is False
        with pytest.raises(InvalidEventError, match=f"{action} records a failure: success must be false"):
            validate_event({"user": "u", "action": action, "success": True})
    for action in ("auth.login", "custom.failed_jobs_report", "security.brute_force_detected", "custom.failover"):
        assert not says_failure(action)
        assert validate_event({"user": "u", "action": action}).success is True
