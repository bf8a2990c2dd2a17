"""query.timeparse: every accepted form, the refusals, and the round trip with format_ts."""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given
from hypothesis import strategies as st

from auditlog.engine.entry import format_ts
from auditlog.query.errors import InvalidFilterError, QueryError
from auditlog.query.timeparse import MAX_TS_US, parse_time

NOW = 1_773_479_553_123_456  # 2026-03-14T09:12:33.123456Z


def us(*args: int) -> int:
    moment = dt.datetime(*args, tzinfo=dt.UTC)
    return int((moment - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)).total_seconds()) * 1_000_000


@pytest.mark.parametrize(
    "text, expected",
    [
        ("2026-03-14T09:12:33.123456Z", NOW),
        ("2026-03-14T09:12:33Z", us(2026, 3, 14, 9, 12, 33)),
        ("2026-03-14T09:12:33.1Z", us(2026, 3, 14, 9, 12, 33) + 100_000),
        ("2026-03-14T09:12:33.000001Z", us(2026, 3, 14, 9, 12, 33) + 1),
        ("2026-03-14t09:12:33z", us(2026, 3, 14, 9, 12, 33)),
        ("2026-03-14 09:12:33Z", us(2026, 3, 14, 9, 12, 33)),
        ("2026-03-14T09:12Z", us(2026, 3, 14, 9, 12)),
        ("2026-03-14T10:12:33+01:00", us(2026, 3, 14, 9, 12, 33)),
        ("2026-03-14T04:12:33.5-05:00", us(2026, 3, 14, 9, 12, 33) + 500_000),
        ("2026-03-14T09:12:33+00:00", us(2026, 3, 14, 9, 12, 33)),
        ("2026-03-14T09:12:33", us(2026, 3, 14, 9, 12, 33)),  # naive = UTC
        ("2026-03-14", us(2026, 3, 14)),
        ("  2026-03-14  ", us(2026, 3, 14)),
        ("1970-01-01T00:00:00Z", 0),
        ("2024-02-29", us(2024, 2, 29)),
        ("9999-12-31T23:59:59.999999Z", MAX_TS_US - 1),
    ],
)
def test_absolute_forms(text: str, expected: int) -> None:
    assert parse_time(text) == expected


@pytest.mark.parametrize(
    "text, delta_us",
    [
        ("-30d", 30 * 86400 * 10**6),
        ("-12h", 12 * 3600 * 10**6),
        ("-15m", 15 * 60 * 10**6),
        ("-45s", 45 * 10**6),
        ("-2w", 14 * 86400 * 10**6),
        ("-0s", 0),
        ("now", 0),
        ("NOW", 0),
    ],
)
def test_relative_forms_use_the_given_now(text: str, delta_us: int) -> None:
    assert parse_time(text, now_us=NOW) == NOW - delta_us


def test_relative_without_given_now_uses_the_clock(frozen_clock) -> None:
    """With no ``now`` given, relative times count back from the node's clock (engine.clock)."""
    frozen_clock.advance(86_400_000_000)
    before = frozen_clock.now
    got = parse_time("-1h")
    assert before - 3600_000_000 <= got <= frozen_clock.now - 3600_000_000


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        "yesterday",
        "14/03/2026",
        "2026-3-14",
        "2026-03-14T9:12:33Z",
        "2026-02-30",
        "2025-02-29",
        "2026-13-01",
        "2026-03-14T24:00:00Z",
        "2026-03-14T09:60:00Z",
        "2026-03-14T09:12:60Z",  # no leap seconds
        "2026-03-14T09:12:33.1234567Z",  # more than 6 fractional digits
        "2026-03-14T09:12:33.Z",
        "2026-03-14T09:12:33+1:00",
        "2026-03-14T09:12:33+24:00",
        "2026-03-14Z",
        "1969-12-31",
        "0000-01-01",
        "10000-01-01",
        "1970-01-01T00:30:00+01:00",  # before the epoch once the offset is applied
        "9999-12-31T23:00:00-05:00",  # after year 9999 in UTC
        "-30",
        "30d",
        "+30d",
        "-30D",
        "-1y",
        "-1M",
        "- 3d",
        "-9999999999999d",
        "-100000w",  # before 1970
        "２０２６-03-14",  # full-width digits
        "2026-03-14\n2026-03-15",
        "now\x00",
        "'; DROP TABLE log; --",
        "x" * 10_000,
    ],
)
def test_refused_with_the_text_named(text: str) -> None:
    with pytest.raises(InvalidFilterError) as info:
        parse_time(text, now_us=NOW, param="from")
    err = info.value
    assert err.param == "from"
    assert err.value == text
    assert str(err).startswith("invalid from ")
    assert "\n" not in str(err)  # the value is shown escaped, never as raw lines
    assert len(str(err)) < 400  # a huge value is cut short in the message


def test_error_is_an_input_error() -> None:
    with pytest.raises(QueryError) as info:
        parse_time("nope")
    assert info.value.http_status == 400
    assert info.value.exit_code == 2
    assert info.value.param == "time"


def test_not_a_string() -> None:
    with pytest.raises(InvalidFilterError):
        parse_time(12345)  # type: ignore[arg-type]


@given(st.integers(min_value=0, max_value=MAX_TS_US - 1))
def test_round_trip_with_format_ts(ts: int) -> None:
    assert parse_time(format_ts(ts)) == ts


@given(
    st.datetimes(min_value=dt.datetime(1971, 1, 1), max_value=dt.datetime(9998, 12, 31)),
    st.integers(min_value=-23 * 60 - 59, max_value=23 * 60 + 59),
)
def test_offsets_agree_with_datetime(moment: dt.datetime, offset_min: int) -> None:
    zone = dt.timezone(dt.timedelta(minutes=offset_min))
    aware = moment.replace(tzinfo=zone)
    expected = (aware - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)) // dt.timedelta(microseconds=1)
    assert parse_time(aware.isoformat(timespec="microseconds")) == expected
