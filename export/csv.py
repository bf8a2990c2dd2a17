"""CSV rendering of an entry stream (SPEC section 8): RFC 4180, UTF-8 BOM, formula-safe.

Columns are fixed (:data:`CSV_COLUMNS`).  ``details`` is compact JSON with
sorted keys; ``success`` is ``true``/``false``; the signature is hex; nulls are
empty cells; lines end in CRLF.  A cell is quoted exactly when RFC 4180 needs
it (it holds ``"``, ``,``, CR or LF), as ``csv.QUOTE_MINIMAL`` would.  Any
cell a spreadsheet would read as a formula (first character ``= + - @``, tab
or CR) is prefixed with ``'``, as OWASP recommends; this applies to every
stored text cell, since a tampered file can put anything in any field.

``details`` is encoded by orjson (the json module only for what orjson cannot
take: non-text keys, integers beyond 64 bits); both escape strings alike,
numbers take their shortest exact form.

An integrity marker (an undecodable range) has no details of its own; its
``violation`` text goes into the ``details`` cell as ``{"violation": ...}`` so
that an auditor reading only the CSV still sees what was damaged.

Why the lines are assembled by hand rather than by ``csv.writer``: the writer
costs ~3 µs a row here, more than everything else together.  Most rows need
no quoting in their first cells, which a few scans of their join prove; the
others, ``user_agent`` and ``details`` take a per-cell path.  Output is text in chunks of about
:data:`CHUNK_CHARS`; the caller encodes it as UTF-8.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import orjson

from auditlog.engine.entry import WIRE_FIELDS, Entry, format_ts

#: the CSV names of wire fields that SPEC section 8 names otherwise
_CSV_NAMES = {"ts": "timestamp", "node": "node_id", "ip": "ip_address"}
#: the timestamp first, then the other wire fields (engine.entry.WIRE_FIELDS) in their
#: order, without ``id`` (node_id and seq are there), by their CSV names; ``iter_csv``
#: writes its cells in this order
CSV_COLUMNS = tuple(_CSV_NAMES.get(f, f) for f in ("ts", *(f for f in WIRE_FIELDS if f not in ("id", "ts"))))

_orjson_dumps = orjson.dumps
_SORT_KEYS = orjson.OPT_SORT_KEYS

#: Target size of each yielded chunk, in characters.
CHUNK_CHARS = 64 * 1024
_BOM = "\ufeff"
_HEADER = ",".join(CSV_COLUMNS) + "\r\n"
# The first characters a spreadsheet treats as the start of a formula.
_FORMULA_START = frozenset("=+-@\t\r")


def iter_csv(entries: Iterable[Entry], bom: bool = True) -> Iterator[str]:
    """Yield the header line (after a BOM when ``bom``), then the rows in chunks."""
    yield (_BOM if bom else "") + _HEADER
    timestamps = TimestampFormatter().format
    lines: list[str] = []
    size = 0
    for e in entries:
        # The first eight cells (None becomes the empty cell), proven clean by
        # one scan of their join in the common case.  user_agent is left out:
        # browser strings usually hold a comma, so it always goes cell by cell.
        try:
            head = ",".join(
                (timestamps(e.ts), e.node, str(e.seq), e.user, e.action, e.target or "", e.domain or "", e.ip or "")
            )
        except TypeError:  # a non-text value in a damaged record: never crash an export
            head = ""
        if (
            not head
            or head.count(",") != 7
            or '"' in head
            or "\r" in head
            or "\n" in head
            or ",=" in head
            or ",+" in head
            or ",-" in head
            or ",@" in head
            or ",\t" in head
        ):
            head = _slow_head(e, timestamps)
        ua = e.user_agent
        if ua is None:
            ua = ""
        elif type(ua) is not str or not ua or ua[0] in _FORMULA_START or '"' in ua or "\r" in ua or "\n" in ua:
            ua = _cell(ua)
        elif "," in ua:
            ua = f'"{ua}"'
        line = (
            f"{head},{ua},{'true' if e.success else 'false'},{_details_cell(e)},{e.signature.hex()},{e.integrity}\r\n"
        )
        lines.append(line)
        size += len(line)
        if size >= CHUNK_CHARS:
            yield "".join(lines)
            lines.clear()
            size = 0
    if lines:
        yield "".join(lines)


def _slow_head(e: Entry, timestamps: Callable[[int], str]) -> str:
    """The first eight cells, one by one, for rows that need quoting or neutralising."""
    return ",".join(
        (
            timestamps(e.ts),
            _cell(e.node),
            str(e.seq),
            _cell(e.user),
            _cell(e.action),
            _cell(e.target),
            _cell(e.domain),
            _cell(e.ip),
        )
    )


def _cell(text: Any) -> str:
    """One text cell: neutralised if it looks like a formula, then quoted if RFC 4180 needs it."""
    if text is None or text == "":
        return ""
    if type(text) is not str:  # only a damaged record has one
        text = str(text)
    if text[0] in _FORMULA_START:
        text = "'" + text
    # Four substring scans beat one regex search several times over here.
    if '"' in text or "," in text or "\r" in text or "\n" in text:
        return '"' + text.replace('"', '""') + '"'
    return text


def _details_cell(e: Entry) -> str:
    details = e.details
    if details and type(details) is dict:
        try:
            text = _orjson_dumps(details, json_default, _SORT_KEYS).decode("utf-8")
        except (TypeError, orjson.JSONEncodeError):
            # non-text keys or integers beyond 64 bits (a damaged record): the json module
            text = sorted_json(details)
        else:
            # a map's JSON starts with "{" (no formula) and holds '"': always quoted
            return '"' + text.replace('"', '""') + '"'
    elif details:
        text = sorted_json(details)  # not a map: only a damaged record has one
    elif e.violation is not None:
        text = sorted_json({"violation": e.violation})
    else:
        return "{}"
    # A map's JSON always holds '"'; _cell also guards a non-map from a damaged record.
    return _cell(text)


class TimestampFormatter:
    """``format_ts`` with the seconds part cached: sorted entries share seconds,
    and the entries of one commit share their whole timestamp.

    ``format_ts`` builds a datetime per call (~3 µs here); this does so once
    per second of log time, and formats the microseconds once per timestamp.
    """

    __slots__ = ("_secs", "_prefix", "_last", "_text")

    def __init__(self) -> None:
        self._secs = -1
        self._prefix = ""
        self._last: int | None = None
        self._text = ""

    def format(self, ts_us: int) -> str:
        if ts_us == self._last:
            return self._text
        secs, micros = divmod(ts_us, 1_000_000)
        if secs != self._secs:
            self._secs = secs
            self._prefix = format_ts(secs * 1_000_000)[:-8]  # drop ".000000Z"
        self._last = ts_us
        self._text = text = f"{self._prefix}.{micros:06d}Z"
        return text


def json_default(value: Any) -> Any:
    """JSON stand-in for values JSON has no type for (also used by export.ndjson)."""
    # msgpack can hand back bytes (bin) or ext types; an export must never crash on them.
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).hex()
    return str(value)


def make_json_encoder(sort_keys: bool) -> Callable[[Any], str]:
    """A compact, non-ASCII-escaping JSON encoder (used for ``details`` here and in NDJSON).

    ``json.dumps`` and ``JSONEncoder.encode`` build a new C encoder on every
    call, which is half the cost for a small map; this builds it once.  Without
    the C accelerator it falls back to the pure-Python encoder.
    """
    encoder = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), sort_keys=sort_keys, default=json_default)
    make_c = getattr(json.encoder, "c_make_encoder", None)
    if make_c is None:
        plain: Callable[[Any], str] = encoder.encode
    else:
        # No circular-reference markers: decoded msgpack cannot be circular.
        c_encode = make_c(None, json_default, json.encoder.encode_basestring, None, ":", ",", sort_keys, False, True)

        def plain(value: Any) -> str:
            return "".join(c_encode(value, 0))

    def encode(value: Any) -> str:
        try:
            return plain(value)
        except TypeError:
            # Keys JSON cannot take or sort (msgpack allows bytes or mixed-type keys).
            return encoder.encode(str_keys(value))

    return encode


def str_keys(value: Any) -> Any:
    """``value`` with every map key turned into a string, recursively."""
    if isinstance(value, dict):
        return {str(k): str_keys(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [str_keys(v) for v in value]
    return value


#: ``details`` as the CSV shows it: compact JSON, keys sorted.
sorted_json = make_json_encoder(sort_keys=True)
