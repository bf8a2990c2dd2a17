"""query.filters: every field, OR within a field, AND across, markers, round trips, refusals."""

from __future__ import annotations

import pickle

import pytest
from hypothesis import given
from hypothesis import strategies as st

from auditlog.engine.entry import Entry
from auditlog.query.errors import InvalidFilterError
from auditlog.query.filters import MARKER_ACTION, PARAM_NAMES, Filter
from auditlog.query.timeparse import parse_time

T0 = parse_time("2026-03-14T09:00:00Z")
HOUR = 3600 * 10**6
SIG = b"\x00" * 32


def entry(
    user: str = "alice",
    action: str = "auth.login",
    *,
    node: str = "node-a",
    seq: int = 1,
    ts: int = T0,
    target: str | None = None,
    domain: str | None = None,
    ip: str | None = "192.0.2.1",
    success: bool = True,
    details: dict | None = None,
    integrity: str = "ok",
) -> Entry:
    return Entry.of(node, seq, ts, user, action, target, domain, ip, None, success, details or {}, SIG, integrity)


def marker(node: str = "node-a", ts: int = T0) -> Entry:
    return Entry.marker(node, 7, ts, "frame checksum mismatch, seq 7-9")


def f(**params: str | list[str]) -> Filter:
    return Filter.from_params(params, now_us=T0 + 24 * HOUR)


# -- each field ----------------------------------------------------------------


def test_empty_filter_matches_everything() -> None:
    assert Filter().matches(entry())
    assert f().matches(entry(user="anyone", action="config.rbl_enable", ip=None))
    assert f().describe() == "all entries"


def test_time_range_from_inclusive_to_exclusive() -> None:
    flt = f(**{"from": "2026-03-14T09:00:00Z", "to": "2026-03-14T10:00:00Z"})
    assert flt.from_us == T0 and flt.to_us == T0 + HOUR
    assert flt.matches(entry(ts=T0))
    assert flt.matches(entry(ts=T0 + HOUR - 1))
    assert not flt.matches(entry(ts=T0 + HOUR))
    assert not flt.matches(entry(ts=T0 - 1))


def test_relative_from_uses_the_given_now() -> None:
    flt = Filter.from_params({"from": "-1h"}, now_us=T0)
    assert flt.from_us == T0 - HOUR and flt.to_us is None
    assert flt.matches(entry(ts=T0 - HOUR)) and not flt.matches(entry(ts=T0 - HOUR - 1))


def test_user_multi_value_is_or() -> None:
    flt = f(user="alice,bob")
    assert flt.matches(entry("alice")) and flt.matches(entry("bob"))
    assert not flt.matches(entry("carol"))
    assert not flt.matches(entry("Alice"))  # users are exact


def test_repeated_params_accumulate_and_blanks_are_dropped() -> None:
    flt = f(user=["alice", "bob, carol", " ", ","])
    assert flt.users == ("alice", "bob", "carol")


def test_fields_are_anded() -> None:
    flt = f(user="alice", ip="192.0.2.1")
    assert flt.matches(entry("alice", ip="192.0.2.1"))
    assert not flt.matches(entry("alice", ip="192.0.2.2"))
    assert not flt.matches(entry("bob", ip="192.0.2.1"))


def test_action_exact_and_prefix() -> None:
    flt = f(action="config.*,auth.login")
    assert flt.matches(entry(action="config.dkim_rotate"))
    assert flt.matches(entry(action="config.domain_add"))
    assert flt.matches(entry(action="auth.login"))
    assert not flt.matches(entry(action="auth.login_failed"))  # exact, not a prefix
    assert not flt.matches(entry(action="configx.thing"))  # prefix ends at the dot
    assert not flt.matches(entry(action="quarantine.release"))


def test_action_deeper_prefix_and_case() -> None:
    flt = f(action="Config.DKIM_rotate.*")
    assert flt.actions == ("config.dkim_rotate.*",)
    assert not flt.matches(entry(action="config.dkim_rotate"))
    assert not flt.matches(entry(action="config.dkim_rotate_confirm"))
    assert flt.matches(entry(action="config.dkim_rotate.extra"))


def test_action_star_alone_means_all() -> None:
    flt = f(action="*,config.*")
    assert flt.actions == ()
    assert flt.matches(entry(action="quarantine.release"))


@pytest.mark.parametrize(
    "bad",
    ["config*", "config", "*.login", "config.**", "Config .x", "config.*.x", ".config.*", "1config.x", "config.a-b"],
)
def test_bad_action_refused(bad: str) -> None:
    with pytest.raises(InvalidFilterError) as info:
        f(action=bad)
    assert info.value.param == "action"
    assert "action" in str(info.value)


def test_target() -> None:
    flt = f(target="example.org,filter-17")
    assert flt.matches(entry(target="filter-17"))
    assert not flt.matches(entry(target=None))
    assert not flt.matches(entry(target="filter-18"))


def test_domain_is_normalised_like_ingest() -> None:
    flt = f(domain="Example.COM., bücher.de")
    assert flt.domains == ("example.com", "xn--bcher-kva.de")
    assert flt.matches(entry(domain="example.com"))
    assert flt.matches(entry(domain="xn--bcher-kva.de"))
    assert not flt.matches(entry(domain=None))
    with pytest.raises(InvalidFilterError) as info:
        f(domain="exa mple.com")
    assert info.value.param == "domain"


@pytest.mark.parametrize(
    "given_ip, stored",
    [
        ("2001:DB8:0:0:0:0:0:1", "2001:db8::1"),
        ("2001:0db8::0001", "2001:db8::1"),
        ("::ffff:192.0.2.1", "192.0.2.1"),  # IPv4-mapped IPv6 is stored as IPv4
        ("::FFFF:c000:0201", "192.0.2.1"),
        (" 192.0.2.1 ", "192.0.2.1"),
    ],
)
def test_ip_normalised(given_ip: str, stored: str) -> None:
    flt = f(ip=given_ip)
    assert flt.ips == (stored,)
    assert flt.matches(entry(ip=stored))
    assert not flt.matches(entry(ip="192.0.2.99"))
    assert not flt.matches(entry(ip=None))


@pytest.mark.parametrize(
    "bad", ["192.0.2.256", "1.2.3", "2001:db8:::1", "example.com", "192.0.2.0/24", "::ffff:999.0.0.1"]
)
def test_bad_ip_refused_naming_ip(bad: str) -> None:
    with pytest.raises(InvalidFilterError) as info:
        f(ip=f"192.0.2.1,{bad}")
    assert info.value.param == "ip"
    assert info.value.value == bad
    assert str(info.value).startswith("invalid ip ")


def test_recipient_matches_details_recipient() -> None:
    flt = f(recipient="bob@example.com", action="quarantine.release")
    assert flt.matches(entry(action="quarantine.release", details={"mail_id": "m1", "recipient": "bob@example.com"}))
    assert not flt.matches(entry(action="quarantine.release", details={"recipient": "carol@example.com"}))
    assert not flt.matches(entry(action="quarantine.release", details={}))
    assert not flt.matches(entry(action="quarantine.release", details={"recipient": 5}))
    # A mail to several recipients (msgpack arrays decode as tuples).
    assert flt.matches(entry(action="quarantine.release", details={"recipient": ("x@example.com", "bob@example.com")}))
    assert not flt.matches(entry(action="quarantine.discard", details={"recipient": "bob@example.com"}))


@pytest.mark.parametrize(
    "word, want",
    [
        ("true", True),
        ("1", True),
        ("yes", True),
        ("TRUE", True),
        ("false", False),
        ("0", False),
        ("no", False),
        ("No", False),
    ],
)
def test_success_words(word: str, want: bool) -> None:
    flt = f(success=word)
    assert flt.success is want
    assert flt.matches(entry(success=want))
    assert not flt.matches(entry(success=not want))


def test_success_true_or_false_is_no_constraint() -> None:
    assert f(success="true,false").success is None
    assert f(success=["yes", "yes"]).success is True


@pytest.mark.parametrize("bad", ["maybe", "2", "tru", "on"])
def test_bad_success_refused(bad: str) -> None:
    with pytest.raises(InvalidFilterError) as info:
        f(success=bad)
    assert info.value.param == "success"
    assert repr(bad) in str(info.value)


def test_node() -> None:
    flt = f(node="node-a,Node-C")
    assert flt.nodes == ("node-a", "node-c")
    assert flt.matches(entry(node="node-a")) and flt.matches(entry(node="node-c"))
    assert not flt.matches(entry(node="node-b"))
    assert flt.admits_node("node-a") and not flt.admits_node("node-b")
    assert Filter().admits_node("node-b")
    with pytest.raises(InvalidFilterError) as info:
        f(node="-bad")
    assert info.value.param == "node"


def test_unknown_params_are_ignored() -> None:
    assert f(limit="10", order="desc", cursor="abc", user="alice") == f(user="alice")
    assert set(PARAM_NAMES) == {
        "from",
        "to",
        "user",
        "action",
        "target",
        "domain",
        "ip",
        "recipient",
        "success",
        "node",
    }


def test_multidict_getall_is_used() -> None:
    class MultiDict(dict):  # the shape of aiohttp's MultiDictProxy: [] gives the first only
        def getall(self, key: str, default: list) -> list:
            return {"user": ["alice", "bob"]}.get(key, default)

    assert Filter.from_params(MultiDict(user="alice")).users == ("alice", "bob")


# -- integrity markers ---------------------------------------------------------


def test_marker_matches_any_filter_its_node_and_time_allow() -> None:
    flt = f(
        user="alice",
        action="config.*",
        ip="2001:db8::1",
        target="t",
        domain="example.com",
        recipient="bob@example.com",
        success="true",
    )
    assert flt.matches(marker())
    assert not flt.matches(entry(integrity="violation"))  # a damaged, decoded entry is filtered


def test_marker_still_bound_by_node_and_time() -> None:
    assert not f(node="node-b", user="alice").matches(marker(node="node-a"))
    assert not f(**{"from": "2026-03-14T10:00:00Z"}).matches(marker(ts=T0))
    assert not f(to="2026-03-14T09:00:00Z").matches(marker(ts=T0))
    assert f(node="node-a", **{"from": "2026-03-14T09:00:00Z"}).matches(marker(ts=T0))


def test_marker_action_alone_is_not_enough() -> None:
    forged = entry(user="mallory", action=MARKER_ACTION)  # integrity "ok": not a marker
    assert not f(user="alice").matches(forged)


# -- invalid input -------------------------------------------------------------


@pytest.mark.parametrize(
    "params, param",
    [
        ({"from": "2026-03-14T10:00:00Z", "to": "2026-03-14T10:00:00Z"}, "from"),
        ({"from": "2026-03-14T11:00:00Z", "to": "2026-03-14T10:00:00Z"}, "from"),
        ({"from": "2026-02-30"}, "from"),
        ({"to": "tomorrow"}, "to"),
        ({"from": ["2026-03-14", "2026-03-15"]}, "from"),
        ({"user": "alice\nFORGED: admin logged in"}, "user"),
        ({"user": "a\x00b"}, "user"),
        ({"target": "x\x1b[31m"}, "target"),
        ({"recipient": "a\u0085b"}, "recipient"),  # C1 control (NEL)
        ({"user": "\ud800"}, "user"),
        ({"user": "x" * 1025}, "user"),
        ({"user": ",".join(f"u{i}" for i in range(1001))}, "user"),
        ({"user": 5}, "user"),
        ({"user": ["alice", None]}, "user"),
    ],
)
def test_invalid_input_names_the_parameter(params: dict, param: str) -> None:
    with pytest.raises(InvalidFilterError) as info:
        Filter.from_params(params, now_us=T0)
    err = info.value
    assert err.param == param
    assert str(err).startswith(f"invalid {param} ")
    assert "\n" not in str(err) and "\x1b" not in str(err) and len(str(err)) < 400
    assert err.http_status == 400 and err.exit_code == 2


def test_direct_construction_validates_too() -> None:
    with pytest.raises(InvalidFilterError):
        Filter(from_us=T0, to_us=T0)
    with pytest.raises(InvalidFilterError):
        Filter(ips=("nope",))
    with pytest.raises(InvalidFilterError):
        Filter(from_us=-1)
    with pytest.raises(InvalidFilterError):
        Filter(success="yes")  # type: ignore[arg-type]
    assert Filter(users="alice").users == ("alice",)  # type: ignore[arg-type]
    assert Filter(ips=["::ffff:192.0.2.1"]).ips == ("192.0.2.1",)  # type: ignore[arg-type]


# -- index terms, round trips, description ---------------------------------------


def test_index_terms() -> None:
    flt = f(
        user="alice,bob",
        action="auth.login",
        target="t1",
        domain="example.com",
        ip="::ffff:192.0.2.1",
        recipient="r@example.com",
        success="false",
        node="node-a",
    )
    assert flt.index_terms() == {
        "user": frozenset({"alice", "bob"}),
        "action": frozenset({"auth.login"}),
        "target": frozenset({"t1"}),
        "domain": frozenset({"example.com"}),
        "ip": frozenset({"192.0.2.1"}),
        "recipient": frozenset({"r@example.com"}),
    }
    assert "action" not in f(action="auth.login,config.*").index_terms()
    assert f().index_terms() == {}


def test_overlaps() -> None:
    flt = Filter(from_us=100, to_us=200)
    assert flt.overlaps(50, 100) and flt.overlaps(199, 300) and flt.overlaps(120, 130)
    assert not flt.overlaps(50, 99) and not flt.overlaps(200, 300)
    assert Filter().overlaps(0, 1)


def test_to_params_round_trip_and_describe() -> None:
    flt = f(
        user="bob,alice",
        action="config.*",
        ip="2001:DB8::1",
        success="no",
        recipient="odd\\,name@example.com",
        target="C:\\path",
        **{"from": "2026-03-14T09:00:00Z", "to": "-1h"},
    )
    params = flt.to_params()
    assert params["user"] == "alice,bob"
    assert params["from"] == "2026-03-14T09:00:00.000000Z"
    assert params["recipient"] == "odd\\,name@example.com"
    assert flt.recipients == ("odd,name@example.com",)
    assert flt.targets == ("C:\\path",)
    assert Filter.from_params(params) == flt
    assert hash(Filter.from_params(params)) == hash(flt)
    assert flt.describe() == (
        "user=alice,bob; action=config.*; target=C:\\\\path; ip=2001:db8::1; "
        "recipient=odd\\,name@example.com; success=false; from=2026-03-14T09:00:00.000000Z; "
        "to=2026-03-15T08:00:00.000000Z"
    )


def test_describe_example_from_the_brief() -> None:
    flt = f(user="alice", action="config.*", **{"from": "2026-03-14T09:00:00Z"})
    assert flt.describe() == "user=alice; action=config.*; from=2026-03-14T09:00:00.000000Z"


def test_pickles_and_equality_ignores_value_order() -> None:
    flt = f(user="bob,alice", action="config.*")
    clone = pickle.loads(pickle.dumps(flt))
    assert clone == flt and clone.matches(entry("alice", "config.rbl_enable"))
    assert f(user="alice,bob") == f(user="bob,alice")


_text = st.text(st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=20).filter(
    lambda s: s.strip() == s and s != "" and len(s) == len(s.strip())
)


@given(
    users=st.lists(_text, max_size=4),
    targets=st.lists(_text, max_size=4),
    recipients=st.lists(_text, max_size=3),
    success=st.sampled_from([None, True, False]),
    lo=st.one_of(st.none(), st.integers(0, 2 * 10**15)),
    span=st.integers(1, 10**12),
)
def test_round_trip_property(
    users: list[str], targets: list[str], recipients: list[str], success: bool | None, lo: int | None, span: int
) -> None:
    flt = Filter(
        from_us=lo,
        to_us=None if lo is None else lo + span,
        users=tuple(users),
        targets=tuple(targets),
        recipients=tuple(recipients),
        success=success,
    )
    assert Filter.from_params(flt.to_params()) == flt


def test_damaged_record_with_wrong_types_never_crashes_the_match() -> None:
    flt = f(user="alice", action="config.*")
    garbage = entry(user=["not", "hashable"], action=None)  # type: ignore[arg-type]
    assert flt.matches(entry(user="alice", action="config.x"))
    assert not flt.matches(garbage)
    garbage.integrity = "violation"
    assert flt.matches(garbage)  # flagged damage is shown, not filtered away


def test_error_forms_and_pickling() -> None:
    err = InvalidFilterError("ip", "1.2.3", "not an IPv4 or IPv6 address")
    assert str(err) == "invalid ip '1.2.3': not an IPv4 or IPv6 address"
    again = pickle.loads(pickle.dumps(err))
    assert (again.param, again.value, str(again)) == ("ip", "1.2.3", str(err))
    plain = InvalidFilterError("order must be asc or desc")  # request-level, no single value
    assert str(plain) == "order must be asc or desc" and plain.param is None
    assert str(pickle.loads(pickle.dumps(plain))) == str(plain)
