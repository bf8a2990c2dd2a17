"""The query filter (SPEC section 6): what it accepts, how it matches, how it round-trips.

A :class:`Filter` is built from query-string / CLI parameters with
:meth:`Filter.from_params`, or directly; either way the values are validated
and normalised the way ingest stores them (IPs through :mod:`ipaddress`,
domains lower-cased, IDNs as punycode), so comparisons are plain equality.

Semantics: several values of one field are OR, fields are AND; ``from`` is
inclusive, ``to`` exclusive.  ``action`` takes exact names or prefixes written
``config.*`` (``*`` alone means every action).  An integrity marker (an
undecodable range, action ``audit.integrity_violation``) matches every filter
that its node and time allow: damage is never filtered away.

Several values are written comma-separated; a value that itself contains a
comma or a backslash escapes it as ``\\,`` / ``\\\\`` (only these two escapes
exist; any other backslash is literal), which is what :meth:`Filter.to_params`
writes, so parameters round-trip exactly.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, fields
from typing import Any

from auditlog.engine.entry import Entry, format_ts

# The very normalisers ingest stores with, so a filter value compares equal to
# what is on disk (private there today; one spelling of each rule in the tree).
from auditlog.ingest.event import _normalise_domain as _ingest_domain
from auditlog.ingest.event import _normalise_ip as _ingest_ip
from auditlog.ingest.taxonomy import ACTION_RE
from auditlog.query.errors import InvalidFilterError
from auditlog.query.timeparse import MAX_TS_US, parse_time
from auditlog.query.timeparse import now_us as _current_us

#: The parameter names understood by :meth:`Filter.from_params`.
PARAM_NAMES = ("from", "to", "user", "action", "target", "domain", "ip", "recipient", "success", "node")

#: Action of the stand-in entry for an undecodable range (see ``Entry.marker``).
MARKER_ACTION = "audit.integrity_violation"

# (query parameter, dataclass field) for the multi-valued string fields, in the
# order describe() and to_params() list them.
_LIST_FIELDS = (
    ("user", "users"),
    ("action", "actions"),
    ("target", "targets"),
    ("domain", "domains"),
    ("ip", "ips"),
    ("recipient", "recipients"),
    ("node", "nodes"),
)

_ACTION_PREFIX = re.compile(r"[a-z][a-z0-9_]*(?:\.[a-z0-9_]+)*\.\*", re.ASCII)
_NODE = re.compile(r"[a-z0-9][a-z0-9-]{0,62}", re.ASCII)
# Control characters and lone surrogates: ingest stores none, and in a filter
# they are either a mistake or an attempt to forge log lines / report headers.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")

# Bounds on hostile input: no real filter comes near them.
MAX_VALUE_CHARS = 1024
MAX_VALUES_PER_FIELD = 1000

_SUCCESS_WORDS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}
_TS_BELOW_ALL = -(1 << 63)
_TS_ABOVE_ALL = 1 << 63


@dataclass(frozen=True)
class Filter:
    """An immutable, normalised set of constraints on entries."""

    from_us: int | None = None
    to_us: int | None = None
    users: tuple[str, ...] = ()
    actions: tuple[str, ...] = ()
    targets: tuple[str, ...] = ()
    domains: tuple[str, ...] = ()
    ips: tuple[str, ...] = ()
    recipients: tuple[str, ...] = ()
    nodes: tuple[str, ...] = ()
    success: bool | None = None

    def __post_init__(self) -> None:
        for param, name in ("from", "from_us"), ("to", "to_us"):
            value = getattr(self, name)
            if value is not None and (type(value) is not int or not 0 <= value < MAX_TS_US):
                raise InvalidFilterError(param, value, "expected µs since the epoch, years 1970..9999")
        if self.from_us is not None and self.to_us is not None and self.from_us >= self.to_us:
            raise InvalidFilterError("from", format_ts(self.from_us), f"must be before to ({format_ts(self.to_us)})")
        if self.success is not None and not isinstance(self.success, bool):
            raise InvalidFilterError("success", self.success, "expected true or false")
        for param, name in _LIST_FIELDS:
            object.__setattr__(self, name, _normalise_field(param, getattr(self, name)))
        # Not dataclass fields: derived once here, ignored by ==, hash and repr.
        object.__setattr__(self, "_match", self._compile())

    def __reduce__(self):  # the compiled predicate is not picklable; rebuild it
        return (type(self), tuple(getattr(self, f.name) for f in fields(self)))

    # -- building -----------------------------------------------------------

    @classmethod
    def from_params(cls, params: Mapping[str, Any], now_us: int | None = None) -> Filter:
        """Build from query-string / CLI parameters (unknown keys are ignored).

        Values may be a str or a list of str (repeated parameters accumulate);
        aiohttp's multidicts are read with ``getall`` so repeats are not lost.
        """
        now = _current_us() if now_us is None else now_us  # one "now" for from and to
        bounds: dict[str, int | None] = {}
        texts: dict[str, str] = {}
        for param in ("from", "to"):
            given = {v.strip() for v in _raw_values(params, param) if v.strip()}
            if len(given) > 1:
                raise InvalidFilterError(param, sorted(given), "given more than once")
            if given:
                texts[param] = given.pop()
                bounds[param] = parse_time(texts[param], now, param=param)
            else:
                bounds[param] = None
        lo, hi = bounds["from"], bounds["to"]
        if lo is not None and hi is not None and lo >= hi:
            raise InvalidFilterError("from", texts["from"], f"must be before to ({texts['to']!r})")

        lists = {name: _split_values(param, _raw_values(params, param)) for param, name in _LIST_FIELDS}
        return cls(from_us=bounds["from"], to_us=bounds["to"], success=_parse_success(params), **lists)

    # -- matching -----------------------------------------------------------

    def matches(self, entry: Entry) -> bool:
        """Whether ``entry`` passes the filter."""
        return self._match(entry)  # type: ignore[attr-defined]

    def scan_predicate(self) -> Callable[[Entry], bool] | None:
        """What a node scan must still check entry by entry, or None when nothing is
        left: the scan applies the time range itself and ``admits_node`` the node
        filter, so a filter of only those needs no per-entry call (and whole
        frames go out as they are)."""
        return self._match if self._per_entry else None  # type: ignore[attr-defined]

    def overlaps(self, min_ts: int, max_ts: int) -> bool:
        """Whether a frame/segment spanning ``min_ts..max_ts`` (inclusive) can hold matches."""
        return (self.from_us is None or max_ts >= self.from_us) and (self.to_us is None or min_ts < self.to_us)

    def admits_node(self, node: str) -> bool:
        """Whether entries of ``node`` can match: lets a merge skip whole peers."""
        return not self.nodes or node in self.nodes

    def index_terms(self) -> dict[str, frozenset[str]]:
        """Exact-value constraints for a per-segment inverted index.

        An entry can match only if, for every key returned, its field value is
        in the set (markers aside).  ``action`` is left out when any action is a
        prefix, since an index of exact values cannot answer a prefix.
        """
        terms: dict[str, frozenset[str]] = {}
        for key, values in (
            ("user", self.users),
            ("target", self.targets),
            ("domain", self.domains),
            ("ip", self.ips),
            ("recipient", self.recipients),
        ):
            if values:
                terms[key] = frozenset(values)
        if self.actions and not any(a.endswith("*") for a in self.actions):
            terms["action"] = frozenset(self.actions)
        return terms

    # -- writing back -------------------------------------------------------

    def to_params(self) -> dict[str, str]:
        """Parameters that :meth:`from_params` turns back into an equal Filter."""
        params: dict[str, str] = {}
        if self.from_us is not None:
            params["from"] = format_ts(self.from_us)
        if self.to_us is not None:
            params["to"] = format_ts(self.to_us)
        for param, name in _LIST_FIELDS:
            values = getattr(self, name)
            if values:
                params[param] = ",".join(_escape(v) for v in values)
        if self.success is not None:
            params["success"] = "true" if self.success else "false"
        return params

    def describe(self) -> str:
        """One human-readable line for report headers and audit records."""
        params = self.to_params()
        order = [p for p, _ in _LIST_FIELDS if p != "node"] + ["success", "node", "from", "to"]
        parts = [f"{p}={params[p]}" for p in order if p in params]
        return "; ".join(parts) if parts else "all entries"

    def _compile(self) -> Callable[[Entry], bool]:
        """Build the predicate once, with only the checks this filter needs."""
        lo = _TS_BELOW_ALL if self.from_us is None else self.from_us
        hi = _TS_ABOVE_ALL if self.to_us is None else self.to_us
        nodes = frozenset(self.nodes) or None
        # Most selective first: a user or an IP rules out most entries at once.
        checks: list[Callable[[Entry], bool]] = []
        if self.users:
            users = frozenset(self.users)
            checks.append(lambda e: e.user in users)
        if self.ips:
            ips = frozenset(self.ips)
            checks.append(lambda e: e.ip in ips)
        if self.targets:
            targets = frozenset(self.targets)
            checks.append(lambda e: e.target in targets)
        if self.recipients:
            recipients = frozenset(self.recipients)
            checks.append(lambda e: _recipient_in(e.details, recipients))
        if self.actions:
            exact = frozenset(a for a in self.actions if not a.endswith("*"))
            prefixes = tuple(a[:-1] for a in self.actions if a.endswith("*"))
            if prefixes:
                checks.append(lambda e: e.action in exact or e.action.startswith(prefixes))
            else:
                checks.append(lambda e: e.action in exact)
        if self.domains:
            domains = frozenset(self.domains)
            checks.append(lambda e: e.domain in domains)
        if self.success is not None:
            want = self.success
            checks.append(lambda e: e.success == want)
        checks_t = tuple(checks)
        object.__setattr__(self, "_per_entry", bool(checks_t))

        def match(entry: Entry) -> bool:
            try:
                ts = entry.ts
                if ts < lo or ts >= hi:
                    return False
                if nodes is not None and entry.node not in nodes:
                    return False
                for check in checks_t:
                    if not check(entry):
                        # Only on the rejecting path: markers are rare, scans are hot.
                        return entry.integrity == "violation" and entry.action == MARKER_ACTION
            except (TypeError, AttributeError):
                # A damaged record decoded with values of the wrong types: show
                # it when flagged (damage is never filtered away), never crash.
                return entry.integrity == "violation"
            return True

        return match


# -- helpers ----------------------------------------------------------------


def _raw_values(params: Mapping[str, Any], param: str) -> list[str]:
    getall = getattr(params, "getall", None)
    raw = getall(param, []) if getall is not None else params.get(param)
    if raw is None:
        return []
    if isinstance(raw, str):
        return [raw]
    if not isinstance(raw, (list, tuple)):
        raise InvalidFilterError(param, raw, "expected text")
    for value in raw:
        if not isinstance(value, str):
            raise InvalidFilterError(param, value, "expected text")
    return list(raw)


def _split_values(param: str, raw: Iterable[str]) -> tuple[str, ...]:
    """Comma-separated values, ``\\,`` and ``\\\\`` unescaped, blanks dropped."""
    out: list[str] = []
    for text in raw:
        if len(text) > MAX_VALUE_CHARS * 4:  # before splitting a huge string
            raise InvalidFilterError(param, text, "too long")
        for value in _split_escaped(text):
            value = value.strip()
            if value:
                out.append(value)
    return tuple(out)


def _split_escaped(text: str) -> list[str]:
    """Split at commas not escaped as ``\\,``; ``\\\\`` is one backslash."""
    if "\\" not in text:
        return text.split(",")
    values: list[str] = []
    current: list[str] = []
    i, n = 0, len(text)
    while i < n:
        char = text[i]
        if char == "\\" and i + 1 < n and text[i + 1] in ",\\":
            current.append(text[i + 1])
            i += 2
            continue
        if char == ",":
            values.append("".join(current))
            current = []
        else:
            current.append(char)
        i += 1
    values.append("".join(current))
    return values


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace(",", "\\,")


def _parse_success(params: Mapping[str, Any]) -> bool | None:
    wanted: set[bool] = set()
    for value in _split_values("success", _raw_values(params, "success")):
        try:
            wanted.add(_SUCCESS_WORDS[value.lower()])
        except KeyError:
            raise InvalidFilterError("success", value, "expected true/false, 1/0 or yes/no") from None
    # true OR false is every entry: no constraint.
    return wanted.pop() if len(wanted) == 1 else None


def _normalise_field(param: str, values: Any) -> tuple[str, ...]:
    if isinstance(values, str):  # a lone string would otherwise become its characters
        values = (values,)
    values = tuple(values)
    if len(values) > MAX_VALUES_PER_FIELD:
        raise InvalidFilterError(param, f"{len(values)} values", f"at most {MAX_VALUES_PER_FIELD} values per field")
    normal: set[str] = set()
    for value in values:
        if not isinstance(value, str):
            raise InvalidFilterError(param, value, "expected text")
        value = value.strip()  # as from_params does, so both routes agree
        if not value:
            raise InvalidFilterError(param, value, "empty value")
        if len(value) > MAX_VALUE_CHARS:
            raise InvalidFilterError(param, value, f"longer than {MAX_VALUE_CHARS} characters")
        if _CONTROL.search(value):
            raise InvalidFilterError(param, value, "control characters are not allowed")
        normal.add(_NORMALISERS.get(param, _same)(param, value))
    if param == "action" and "*" in normal:
        return ()  # '*' is every action: the other values add nothing
    # Sorted: equal constraints give equal filters, hashes and cursors.
    return tuple(sorted(normal))


def _same(param: str, value: str) -> str:
    return value


def _normalise_action(param: str, value: str) -> str:
    value = value.lower()
    if value == "*" or ACTION_RE.fullmatch(value) or _ACTION_PREFIX.fullmatch(value):
        return value
    raise InvalidFilterError(param, value, "expected an action name (config.dkim_rotate) or a prefix (config.*)")


def _normalise_ip(param: str, value: str) -> str:
    """ipaddress's normal form, IPv4-mapped IPv6 as IPv4 (as ingest stores it)."""
    normal = _ingest_ip(value)
    if normal is None:
        raise InvalidFilterError(param, value, "not an IPv4 or IPv6 address")
    return normal


def _normalise_node(param: str, value: str) -> str:
    value = value.lower()
    if not _NODE.fullmatch(value):
        raise InvalidFilterError(param, value, "expected a node id ([a-z0-9][a-z0-9-]{0,62})")
    return value


def _normalise_domain(param: str, value: str) -> str:
    """Lower case, punycode for IDNs, no trailing dot (as ingest stores it)."""
    normal, reason = _ingest_domain(value)
    if normal is None:
        raise InvalidFilterError(param, value, reason or "not a domain name")
    return normal


_NORMALISERS: dict[str, Callable[[str, str], str]] = {
    "action": _normalise_action,
    "ip": _normalise_ip,
    "node": _normalise_node,
    "domain": _normalise_domain,
}


def _recipient_in(details: Any, recipients: frozenset[str]) -> bool:
    """``details.recipient`` is one address, or a list of them for a multi-recipient mail."""
    if not isinstance(details, dict):
        return False
    value = details.get("recipient")
    if isinstance(value, str):
        return value in recipients
    if isinstance(value, (list, tuple)):
        return any(isinstance(v, str) and v in recipients for v in value)
    return False
