"""Parsing the time bounds a person or a SIEM writes into µs since the epoch (UTC).

Accepted forms (SPEC section 6):

- RFC 3339: ``2026-03-14T09:12:33.123456Z``, an offset such as ``+01:00``,
  1 to 6 fractional digits or none, seconds optional; without an offset the
  time is taken as UTC (the log's own time zone);
- a date: ``2026-03-14`` (midnight UTC);
- relative to now: ``-30d``, ``-12h``, ``-15m``, ``-45s``, ``-2w``;
- ``now``.

Anything else is an :class:`InvalidFilterError` that names the text.  Only
years 1970..9999 are accepted, and the result must lie in that range too, so
every parsed bound can be printed back with :func:`engine.entry.format_ts`.
"""

from __future__ import annotations

import datetime as _dt
import re

from auditlog.engine import clock
from auditlog.query.errors import InvalidFilterError

# re.ASCII: \d must not accept other scripts' digits, which int() would.
_RFC3339 = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})"
    r"(?:[Tt ](\d{2}):(\d{2})(?::(\d{2})(?:\.(\d{1,6}))?)?"
    r"([Zz]|[+-]\d{2}:\d{2})?)?",
    re.ASCII,
)
# Units are case-sensitive on purpose: "-1M" could mean a month to some people.
_RELATIVE = re.compile(r"-(\d{1,12})([smhdw])", re.ASCII)
_UNIT_US = {
    "s": 1_000_000,
    "m": 60 * 1_000_000,
    "h": 3600 * 1_000_000,
    "d": 86400 * 1_000_000,
    "w": 7 * 86400 * 1_000_000,
}
_EPOCH_ORDINAL = _dt.date(1970, 1, 1).toordinal()
#: First µs after 9999-12-31T23:59:59.999999Z: the limit of format_ts.
MAX_TS_US = (_dt.date(9999, 12, 31).toordinal() + 1 - _EPOCH_ORDINAL) * 86400 * 1_000_000
# No legitimate time is longer than this; refusing early keeps errors short.
_MAX_TEXT = 64

_EXPECTED = (
    "expected RFC 3339 (2026-03-14T09:12:33Z), a date (2026-03-14), "
    "a relative time (-30d, -12h, -15m, -45s, -2w) or 'now'"
)


def now_us() -> int:
    """The current time in µs since the epoch (UTC): the node's clock (``engine.clock``)."""
    return clock.now_us()


def parse_time(text: str, now_us: int | None = None, *, param: str = "time") -> int:
    """Parse ``text`` into µs since the epoch UTC; ``param`` names it in errors."""
    if not isinstance(text, str):
        raise InvalidFilterError(param, text, "expected a string")
    stripped = text.strip()
    if not stripped or len(stripped) > _MAX_TEXT:
        raise InvalidFilterError(param, text, _EXPECTED)

    if stripped.lower() == "now":
        result = _now(now_us)
    elif (rel := _RELATIVE.fullmatch(stripped)) is not None:
        result = _now(now_us) - int(rel.group(1)) * _UNIT_US[rel.group(2)]
    elif (m := _RFC3339.fullmatch(stripped)) is not None:
        result = _absolute(m, text, param)
    else:
        raise InvalidFilterError(param, text, _EXPECTED)

    if result < 0:
        raise InvalidFilterError(param, text, "before 1970-01-01T00:00:00Z")
    if result >= MAX_TS_US:
        raise InvalidFilterError(param, text, "after 9999-12-31T23:59:59.999999Z")
    return result


def _now(now_us_value: int | None) -> int:
    return now_us() if now_us_value is None else now_us_value


def _absolute(m: re.Match[str], text: str, param: str) -> int:
    year, month, day = int(m.group(1)), int(m.group(2)), int(m.group(3))
    if not 1970 <= year <= 9999:
        raise InvalidFilterError(param, text, "year must be between 1970 and 9999")
    try:
        ordinal = _dt.date(year, month, day).toordinal()
    except ValueError as e:
        raise InvalidFilterError(param, text, f"not a calendar date ({e})") from e

    hour = int(m.group(4) or 0)
    minute = int(m.group(5) or 0)
    second = int(m.group(6) or 0)
    # Python has no leap seconds and neither does the log's clock, so 60 is refused.
    if hour > 23 or minute > 59 or second > 59:
        raise InvalidFilterError(param, text, "hour, minute or second out of range")
    fraction = m.group(7)
    micros = int(fraction.ljust(6, "0")) if fraction else 0

    offset_s = 0
    zone = m.group(8)
    if zone and zone not in "Zz":
        off_h, off_m = int(zone[1:3]), int(zone[4:6])
        if off_h > 23 or off_m > 59:
            raise InvalidFilterError(param, text, "UTC offset out of range")
        offset_s = (off_h * 3600 + off_m * 60) * (-1 if zone[0] == "-" else 1)

    seconds = (ordinal - _EPOCH_ORDINAL) * 86400 + hour * 3600 + minute * 60 + second - offset_s
    return seconds * 1_000_000 + micros
