"""Validation of client-supplied events into ``EntryDraft`` values.

This module owns the rules of SPEC section 3 for what a client may send:
required and optional fields, their types and normalisation (ip, domain),
the bounds on ``details``, and the parsing of NDJSON input and of the CLI's
``--detail KEY=VALUE`` arguments.  Every problem of an event is collected
(not just the first) and batches are all-or-nothing: one bad event rejects
the whole batch with an ``InvalidEventError`` listing every problem.

Validation runs on every ingested event, so the hot path uses exact type
checks, precompiled regexes and few function calls.
"""

from __future__ import annotations

import functools
import ipaddress
import json
import math
import re
from collections.abc import Iterable
from typing import Any

import msgpack

from auditlog.engine.entry import EntryDraft, sort_details
from auditlog.ingest.errors import BatchTooLargeError, InvalidEventError
from auditlog.ingest.limits import DEFAULT_LIMITS, Limits
from auditlog.ingest.taxonomy import ACTION_RE, CUSTOM_PREFIX, RESERVED_ACTIONS, TAXONOMY, says_failure

__all__ = [
    "validate_event",
    "validate_batch",
    "parse_ndjson",
    "parse_detail_args",
    "reject_duplicate_keys",
    "DuplicateKeyError",
]

_FIELDS = frozenset(
    {
        "user",
        "action",
        "target",
        "domain",
        "ip",
        "user_agent",
        "success",
        "details",
    }
)
_ASSIGNED = frozenset({"id", "node", "seq", "ts", "signature", "integrity"})

# Control characters (C0, DEL, C1) would let a value forge extra lines in text
# output; lone surrogates cannot be encoded as UTF-8 (msgpack would fail later).
_BAD_CHAR = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
_DNS_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

_I64_MIN = -(2**63)
_I64_MAX = 2**63 - 1
# The details walk stores at most this many problems per event (and counts the rest).
_MAX_DETAIL_PROBLEMS = 10
_SHOW_CHARS = 60

_packb = msgpack.Packer(use_bin_type=True).pack


# --------------------------------------------------------------------------- helpers

_TYPE_NAMES = {
    dict: "object",
    list: "array",
    tuple: "array",
    str: "string",
    bool: "boolean",
    int: "integer",
    float: "number",
    type(None): "null",
    bytes: "bytes",
}


def _tname(v: Any) -> str:
    """JSON-ish name of a value's type, for messages."""
    return _TYPE_NAMES.get(type(v)) or type(v).__name__


def _show(v: str) -> str:
    """A string quoted for a message, cut short (values may be megabytes long)."""
    if len(v) > _SHOW_CHARS:
        return repr(v[:_SHOW_CHARS]) + "..."
    return repr(v)


def _problem(index: int, field: str, message: str) -> dict:
    return {"index": index, "field": field, "message": message}


def _text_problem(v: str, max_len: int) -> str | None:
    """Shared checks of the short string fields: length, control chars, surrogates."""
    if len(v) > max_len:
        return f"too long: {len(v)} characters (limit {max_len})"
    m = _BAD_CHAR.search(v)
    if m is not None:
        c = ord(m.group())
        if 0xD800 <= c <= 0xDFFF:
            return f"not valid UTF-8: lone surrogate U+{c:04X}"
        return f"contains a control character U+{c:04X}"
    return None


# Both normalisers are pure and slow-ish (ipaddress parses in Python); the same
# addresses and domains recur across events, so a bounded cache pays off.
@functools.lru_cache(maxsize=65536)
def _normalise_domain(v: str) -> tuple[str | None, str | None]:
    """``(normalised, None)`` or ``(None, reason)`` for a mail domain."""
    d = v
    if not d.isascii():
        # An IDN in Unicode is stored in its ASCII (punycode) form, so that one
        # domain has one spelling in the log.  The codec also lower-cases.
        try:
            d = d.encode("idna").decode("ascii")
        except UnicodeError:
            return None, f"not a valid internationalised domain name {_show(v)}"
    d = d.lower()
    if d.endswith("."):
        d = d[:-1]  # fully-qualified form names the same domain
    if not d:
        return None, "must not be empty"
    if len(d) > 253:
        return None, "not a valid domain name: longer than 253 characters"
    for label in d.split("."):
        if _DNS_LABEL.fullmatch(label) is None:
            if not label:
                why = "empty label"
            elif len(label) > 63:
                why = "label longer than 63 characters"
            elif label[0] == "-" or label[-1] == "-":
                why = f"label {_show(label)} starts or ends with '-'"
            else:
                why = f"label {_show(label)} has characters other than a-z, 0-9 and '-'"
            return None, f"not a valid domain name {_show(v)} ({why})"
    return d, None


@functools.lru_cache(maxsize=65536)
def _normalise_ip(v: str) -> str | None:
    try:
        a = ipaddress.ip_address(v)
    except ValueError:
        return None
    if a.version == 6 and a.ipv4_mapped is not None:
        # ::ffff:1.2.3.4 is how dual-stack sockets report IPv4 clients.
        a = a.ipv4_mapped
    return str(a)


# --------------------------------------------------------------------------- details


class _DetailsTooLarge(Exception):
    """Internal: the walk proved details exceed the size limit; stop walking."""


class _Walk:
    __slots__ = ("messages", "dropped", "budget", "max_depth", "nested")

    def __init__(self, budget: int, max_depth: int) -> None:
        self.messages: list[str] = []
        self.dropped = 0
        # Lower bound on the encoded size: every value costs >= 1 byte and a
        # string >= 1 byte per character.  Lets the walk stop early on huge input.
        self.budget = budget
        self.max_depth = max_depth
        # Whether any map/list sits below the top-level map (else a flat sort will do).
        self.nested = False

    def problem(self, path: tuple | None, message: str) -> None:
        if len(self.messages) < _MAX_DETAIL_PROBLEMS:
            self.messages.append(f"at {_path_str(path)}: {message}")
        else:
            self.dropped += 1


def _path_str(path: tuple | None) -> str:
    """Render a (parent, key) chain as ``details.a['b c'][2]``."""
    keys = []
    while path is not None:
        path, k = path
        keys.append(k)
    out = ["details"]
    for k in reversed(keys):
        if type(k) is int:
            out.append(f"[{k}]")
        elif _IDENT.fullmatch(k):
            out.append(f".{k}")
        else:
            out.append(f"[{_show(k)}]")
    return "".join(out)


def _walk(container: dict | list | tuple, path: tuple | None, depth: int, st: _Walk) -> None:
    """Check the members of one map or list at nesting level ``depth``.

    Scalars are checked inline (no call per value); only nested containers
    recurse, and never deeper than ``max_depth``, so hostile nesting cannot
    exhaust the stack.
    """
    is_map = isinstance(container, dict)
    items: Iterable[tuple[Any, Any]] = container.items() if is_map else enumerate(container)
    budget = st.budget
    for k, v in items:
        if is_map:
            if type(k) is not str:
                st.problem(path, f"keys must be strings, got {_tname(k)}")
                continue
            budget -= len(k)
            if not k.isascii():
                try:
                    k.encode("utf-8")
                except UnicodeEncodeError:
                    st.problem(path, f"key {_show(k)} is not valid UTF-8 (lone surrogate)")
                    continue
        t = type(v)
        if t is str:
            budget -= len(v) + 1
            if budget < 0:
                raise _DetailsTooLarge
            if not v.isascii():
                try:
                    v.encode("utf-8")
                except UnicodeEncodeError:
                    st.problem((path, k), "string is not valid UTF-8 (lone surrogate)")
            continue
        budget -= 1
        if budget < 0:
            raise _DetailsTooLarge
        if t is bool or v is None:
            continue
        if t is int:
            if not _I64_MIN <= v <= _I64_MAX:
                st.problem((path, k), "integer outside the signed 64-bit range")
        elif t is float:
            if not math.isfinite(v):
                st.problem((path, k), f"number must be finite, got {v!r}")
        elif t is list or t is tuple or isinstance(v, dict):  # msgpack may give tuples
            st.nested = True
            if depth >= st.max_depth:
                st.problem((path, k), f"nested deeper than {st.max_depth} levels")
                continue
            st.budget = budget
            _walk(v, (path, k), depth + 1, st)
            budget = st.budget
        else:
            st.problem((path, k), f"unsupported value type {_tname(v)}")
    st.budget = budget


def _check_details(v: dict, limits: Limits) -> tuple[dict | None, list[str]]:
    """``(canonical details, [])`` or ``(None, messages)``."""
    st = _Walk(limits.max_details_bytes, limits.max_details_depth)
    try:
        _walk(v, None, 1, st)
    except _DetailsTooLarge:
        return None, st.messages + [
            f"too large: more than {limits.max_details_bytes} bytes encoded (limit {limits.max_details_bytes})"
        ]
    if st.messages:
        if st.dropped:
            st.messages.append(f"... and {st.dropped} more problems in details")
        return None, st.messages
    # A flat map (the common case) only needs its own keys sorted; the result
    # is the same as sort_details() without a call per value.
    canonical = sort_details(v) if st.nested else {k: v[k] for k in sorted(v)}
    size = len(_packb(canonical))
    if size > limits.max_details_bytes:
        return None, [f"too large: {size} bytes encoded (limit {limits.max_details_bytes})"]
    return canonical, []


# --------------------------------------------------------------------------- fast path

# Taxonomy actions a client may write (the node's own ones excluded).
_CLIENT_ACTIONS = TAXONOMY - RESERVED_ACTIONS


def _fast_details(d: dict, limits: Limits) -> dict | None:
    """Canonical form of a flat ``details`` map that is certainly valid, else None.

    Anything unusual (nesting, odd types, a size near the limit) returns None
    and goes through the full walk.  The size test uses an upper bound on the
    msgpack encoding: a map header is at most 5 bytes, a key or string value
    at most 5 + 4 per character, any other scalar at most 9.
    """
    chars = 0
    for k, v in d.items():
        if type(k) is not str:
            return None
        t = type(v)
        if t is str:
            chars += len(k) + len(v)
            if not v.isascii():
                try:
                    v.encode("utf-8")
                except UnicodeEncodeError:
                    return None
        elif t is int:
            if not _I64_MIN <= v <= _I64_MAX:
                return None
            chars += len(k)
        elif t is bool or v is None:
            chars += len(k)
        elif t is float:
            if not math.isfinite(v):
                return None
            chars += len(k)
        else:
            return None
        if not k.isascii():
            try:
                k.encode("utf-8")
            except UnicodeEncodeError:
                return None
    if 5 + 14 * len(d) + 4 * chars > limits.max_details_bytes:
        return None
    return dict(sorted(d.items()))


def _fast_check(obj: dict, limits: Limits) -> EntryDraft | None:
    """The draft of a plainly valid event, or None to run the full checks.

    Most events are plain: known fields, printable strings, a taxonomy action,
    a flat ``details``.  This path decides those with a few C-level calls and
    builds no messages; whatever it is unsure of goes to ``_check``'s full
    rules, which then name every problem.  It accepts nothing the full rules
    reject and returns the same draft (a test holds the two to that).
    ``isprintable()`` is false for every character ``_BAD_CHAR`` matches.
    """
    if not obj.keys() <= _FIELDS:
        return None
    get = obj.get
    max_len = limits.max_field_len
    user = get("user")
    if type(user) is not str or len(user) > max_len or not user.isprintable() or not user.strip():
        return None
    action = get("action")
    if type(action) is not str or action not in _CLIENT_ACTIONS:
        return None
    target = get("target")
    if target is not None and (type(target) is not str or len(target) > max_len or not target.isprintable()):
        return None
    ua = get("user_agent")
    if ua is not None and (type(ua) is not str or len(ua) > limits.max_user_agent_len or not ua.isprintable()):
        return None
    domain = get("domain")
    if domain is not None:
        if type(domain) is not str or len(domain) > max_len:
            return None
        domain, msg = _normalise_domain(domain)
        if msg is not None:
            return None
    ip = get("ip")
    if ip is not None:
        if type(ip) is not str or len(ip) > max_len:
            return None
        ip = _normalise_ip(ip)
        if ip is None or not ip.isprintable():
            return None
    failure = says_failure(action)
    success = get("success", not failure)
    if (success is not True and success is not False) or (success and failure):
        return None
    details = get("details")
    if details is None:
        details = {}
    elif type(details) is not dict:
        return None
    elif details:
        details = _fast_details(details, limits)
        if details is None:
            return None
    return EntryDraft(user, action, target, domain, ip, ua, success, details)


# --------------------------------------------------------------------------- events


def _check(obj: Any, index: int, limits: Limits, problems: list[dict]) -> EntryDraft | None:
    """Validate one event, appending its problems; the draft if there were none."""
    if type(obj) is dict:
        draft = _fast_check(obj, limits)
        if draft is not None:
            return draft
    return _check_full(obj, index, limits, problems)


def _check_full(obj: Any, index: int, limits: Limits, problems: list[dict]) -> EntryDraft | None:
    """Every rule, with a message for each problem found."""
    if not isinstance(obj, dict):
        problems.append(_problem(index, "(event)", f"expected an object, got {_tname(obj)}"))
        return None
    start = len(problems)
    add = problems.append
    max_len = limits.max_field_len

    for k in obj:
        if k in _FIELDS:
            continue
        if type(k) is not str:
            add(_problem(index, repr(k)[:_SHOW_CHARS], "field names must be strings"))
        elif k in _ASSIGNED:
            add(_problem(index, k, "assigned by the node; must not be supplied"))
        else:
            add(_problem(index, k[:_SHOW_CHARS], "unknown field"))

    user = obj.get("user")
    if user is None:
        add(_problem(index, "user", "required"))
    elif type(user) is not str:
        add(_problem(index, "user", f"must be a string, got {_tname(user)}"))
    else:
        msg = _text_problem(user, max_len)
        if msg is None and not user.strip():
            msg = "must not be empty"
        if msg is not None:
            add(_problem(index, "user", msg))

    action = obj.get("action")
    if action is None:
        add(_problem(index, "action", "required"))
    elif type(action) is not str:
        add(_problem(index, "action", f"must be a string, got {_tname(action)}"))
    elif action in RESERVED_ACTIONS:
        # The log's own bookkeeping (purge anchors, recovery, exports, membership,
        # key use) is written only by the node itself, straight through the writer:
        # a client-made audit.retention_purge could otherwise pose as the anchor that
        # excuses deleted segments, a cluster.node_join as the node's own record.
        add(
            _problem(
                index,
                "action",
                f"{_show(action)} is reserved for the log's own entries (written by the node, not by clients)",
            )
        )
    elif action not in TAXONOMY:
        if len(action) > max_len:
            add(_problem(index, "action", f"too long: {len(action)} characters (limit {max_len})"))
        elif ACTION_RE.fullmatch(action) is None:
            add(
                _problem(
                    index, "action", f"not a valid action name {_show(action)} (dotted lower-case, e.g. 'auth.login')"
                )
            )
        elif not action.startswith(CUSTOM_PREFIX):
            add(
                _problem(
                    index,
                    "action",
                    f"unknown action {_show(action)} (not in the "
                    f"taxonomy; other actions must start with "
                    f"{CUSTOM_PREFIX!r})",
                )
            )

    target = obj.get("target")
    if target is not None:
        if type(target) is not str:
            add(_problem(index, "target", f"must be a string or null, got {_tname(target)}"))
        else:
            msg = _text_problem(target, max_len)
            if msg is not None:
                add(_problem(index, "target", msg))

    user_agent = obj.get("user_agent")
    if user_agent is not None:
        if type(user_agent) is not str:
            add(_problem(index, "user_agent", f"must be a string or null, got {_tname(user_agent)}"))
        else:
            msg = _text_problem(user_agent, limits.max_user_agent_len)
            if msg is not None:
                add(_problem(index, "user_agent", msg))

    domain = obj.get("domain")
    if domain is not None:
        if type(domain) is not str:
            add(_problem(index, "domain", f"must be a string or null, got {_tname(domain)}"))
        elif len(domain) > max_len:
            add(_problem(index, "domain", f"too long: {len(domain)} characters (limit {max_len})"))
        else:
            domain, msg = _normalise_domain(domain)
            if msg is not None:
                add(_problem(index, "domain", msg))

    ip = obj.get("ip")
    if ip is not None:
        if type(ip) is not str:
            add(_problem(index, "ip", f"must be a string or null, got {_tname(ip)}"))
        else:
            norm = _normalise_ip(ip) if len(ip) <= max_len else None
            if norm is None or _BAD_CHAR.search(norm) is not None:
                add(_problem(index, "ip", f"not a valid IPv4/IPv6 address {_show(ip)}"))
            ip = norm

    failure = type(action) is str and says_failure(action)
    success = obj.get("success", not failure)
    if success is not True and success is not False:
        add(_problem(index, "success", f"must be true or false, got {_tname(success)}"))
    elif success and failure:
        add(_problem(index, "success", f"{action} records a failure: success must be false or left out"))

    details = obj.get("details")
    if details is None:
        details = {}
    elif not isinstance(details, dict):
        add(_problem(index, "details", f"must be an object, got {_tname(details)}"))
    elif details:
        details, msgs = _check_details(details, limits)
        for msg in msgs:
            add(_problem(index, "details", msg))
    else:
        details = {}

    if len(problems) != start:
        return None
    return EntryDraft(user, action, target, domain, ip, user_agent, success, details)


def validate_event(obj: Any, index: int = 0, limits: Limits = DEFAULT_LIMITS) -> EntryDraft:
    """Validate one event (a dict decoded from JSON or msgpack) into a draft.

    Raises ``InvalidEventError`` listing every problem of the event.
    """
    problems: list[dict] = []
    draft = _check(obj, index, limits, problems)
    if draft is None:
        raise InvalidEventError(problems)
    return draft


def _empty_batch(label: str) -> InvalidEventError:
    return InvalidEventError([_problem(-1, "(batch)", "empty batch: at least one event is required")], label)


def validate_batch(objs: list, limits: Limits = DEFAULT_LIMITS) -> list[EntryDraft]:
    """Validate a batch, all-or-nothing.

    Raises ``BatchTooLargeError`` above ``limits.max_batch`` events, otherwise
    ``InvalidEventError`` with the problems of every bad event (by index).
    """
    if not isinstance(objs, (list, tuple)):
        raise InvalidEventError([_problem(-1, "(batch)", f"expected an array of events, got {_tname(objs)}")])
    if not objs:
        raise _empty_batch("event")
    if len(objs) > limits.max_batch:
        raise BatchTooLargeError(limits.max_batch, len(objs))
    problems: list[dict] = []
    drafts: list[EntryDraft] = []
    for i, obj in enumerate(objs):
        draft = _check(obj, i, limits, problems)
        if draft is not None:
            drafts.append(draft)
    if problems:
        raise InvalidEventError(problems)
    return drafts


# --------------------------------------------------------------------------- NDJSON


class DuplicateKeyError(ValueError):
    """A map (JSON object, msgpack map) holds the same key twice."""


def reject_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict:
    """``object_pairs_hook`` for ``json.loads`` and ``msgpack.unpackb`` that rejects
    repeated keys (raises ``DuplicateKeyError`` naming the key).

    Parsers disagree on which of two repeated keys wins; in an audit log that
    ambiguity could hide the real value, so such input is refused.
    """
    d = dict(pairs)
    if len(d) != len(pairs):
        seen: set[str] = set()
        for k, _ in pairs:
            if k in seen:
                raise DuplicateKeyError(f"duplicate key {_show(k)}")
            seen.add(k)
    return d


def _loads_line(line: str) -> tuple[Any, str | None]:
    try:
        return json.loads(line, object_pairs_hook=reject_duplicate_keys), None
    except json.JSONDecodeError as e:
        return None, f"invalid JSON: {e.msg} (column {e.colno})"
    except DuplicateKeyError as e:
        return None, f"invalid JSON: {e}"
    except RecursionError:
        return None, "invalid JSON: nested too deeply"
    except ValueError as e:
        # In practice: an integer literal with more digits than Python converts.
        msg = "number has too many digits" if "digits" in str(e) else str(e)[:200]
        return None, f"invalid JSON: {msg}"


def parse_ndjson(data: bytes | str | Iterable[bytes | str], limits: Limits = DEFAULT_LIMITS) -> list[EntryDraft]:
    """Parse and validate NDJSON (one event object per line), all-or-nothing.

    Blank lines are skipped; problems name the 1-based line number
    (``InvalidEventError.label == "line"``).  A UTF-8 byte order mark at the
    start of the first line is ignored.
    """
    if isinstance(data, (bytes, bytearray, memoryview)):
        lines: Iterable[bytes | str] = bytes(data).split(b"\n")
    elif isinstance(data, str):
        # Split on "\n" only: str.splitlines() would also split on U+2028 and
        # friends, which JSON allows raw inside strings.
        lines = data.split("\n")
    else:
        lines = data
    problems: list[dict] = []
    drafts: list[EntryDraft] = []
    count = 0
    max_batch = limits.max_batch
    for lineno, raw in enumerate(lines, 1):
        if type(raw) is str:
            line = raw
        elif isinstance(raw, (bytes, bytearray)):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                if not raw.strip():
                    continue
                count += 1
                if count > max_batch:
                    raise BatchTooLargeError(max_batch) from None
                problems.append(_problem(lineno, "(event)", f"not valid UTF-8 (bad byte at offset {e.start})"))
                continue
        else:
            count += 1
            problems.append(_problem(lineno, "(event)", f"expected a line of text, got {_tname(raw)}"))
            continue
        if lineno == 1 and line.startswith("\ufeff"):
            line = line[1:]
        if not line.strip():
            continue
        count += 1
        if count > max_batch:
            raise BatchTooLargeError(max_batch)
        obj, err = _loads_line(line)
        if err is not None:
            problems.append(_problem(lineno, "(event)", err))
            continue
        draft = _check(obj, lineno, limits, problems)
        if draft is not None:
            drafts.append(draft)
    if problems:
        raise InvalidEventError(problems, "line")
    if not count:
        raise _empty_batch("line")
    return drafts


# --------------------------------------------------------------------------- CLI


def _no_constants(name: str) -> Any:
    # NaN/Infinity are not JSON; "--detail x=NaN" keeps the string "NaN".
    raise ValueError(name)


def parse_detail_args(pairs: Iterable[str]) -> dict:
    """``["k=v", ...]`` from ``--detail`` into a details dict (last key wins).

    A value that parses as JSON is used as such (``n=3`` -> 3, ``ok=true`` ->
    True, ``l=[1,2]`` -> list); anything else is kept as a string.  The result
    is not validated here: it goes through ``validate_event`` with the event.
    """
    out: dict[str, Any] = {}
    problems: list[dict] = []
    for arg in pairs:
        key, sep, raw = arg.partition("=")
        if not sep:
            problems.append(_problem(0, "details", f"--detail {_show(arg)} is not KEY=VALUE"))
            continue
        if not key:
            problems.append(_problem(0, "details", f"--detail {_show(arg)} has an empty key"))
            continue
        try:
            value: Any = json.loads(raw, parse_constant=_no_constants)
        except (ValueError, RecursionError):
            value = raw
        out[key] = value
    if problems:
        raise InvalidEventError(problems)
    return out
