"""NDJSON rendering of an entry stream: one compact JSON object per line (SPEC section 3 shape).

Each line is the JSON of :meth:`engine.entry.Entry.to_wire` (same keys, same
order, ``ts`` as RFC 3339, the signature as hex), encoded by orjson from a
dict built per entry: about a microsecond a line, where ``json.dumps`` of
``to_wire()`` costs several.  Strings are escaped as the json module escapes
them with ``ensure_ascii=False`` (quotes, backslashes, control characters);
numbers use the shortest form that reads back as the same value.  A damaged
record whose values JSON cannot take as they are (bytes, non-text keys)
goes through the json module with :func:`export.csv.json_default`.  The
tests pin the equality with ``to_wire`` (including by Hypothesis).

Lines are ``\n``-terminated.  :func:`ndjson_lines` gives each line as bytes
(what the cluster merge moves around); :func:`iter_ndjson` yields text in
chunks of about :data:`CHUNK_CHARS` characters.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

import orjson

from engine.entry import (
    R_DETAILS,
    R_SEQ,
    R_SIG,
    R_TS,
    RECORD_FIELDS,
    WIRE_CONVERSIONS,
    WIRE_FIELDS,
    WIRE_OPTIONAL,
    Entry,
)
from export.csv import CHUNK_CHARS, TimestampFormatter, make_json_encoder

# Maps in stored order (ingest stores details canonically sorted), as to_wire does.
_json = make_json_encoder(sort_keys=False)
_dumps = orjson.dumps
_NEWLINE = orjson.OPT_APPEND_NEWLINE


# The two line makers are built from the wire declaration (engine.entry.WIRE_FIELDS
# and WIRE_CONVERSIONS) with the dict written out inline in the loop, as a literal
# is the fastest way to build it: one definition of the shape, no cost per line.
# Each wire field's value, as Python source: in ``ndjson_lines`` from an entry ``e``
# (``node`` and ``seq`` are locals), in ``record_lines`` from a record unpacked
# into locals named as the fields.  ``details`` goes as stored: orjson writes the
# tuples msgpack decodes as arrays, as ``to_wire``'s lists.
_CONVERTED = {"ts": "timestamps({})", "signature": "{}.hex()", "details": "{}"}
if set(_CONVERTED) != set(WIRE_CONVERSIONS):  # a new conversion must be rendered here too
    raise ImportError(
        f"export.ndjson renders conversions {sorted(_CONVERTED)}, the wire declares {sorted(WIRE_CONVERSIONS)}"
    )
_ENTRY_SOURCE = {"id": 'f"{node}:{seq}"', "node": "node", "seq": "seq"}
#: a stored record's fields, in their order (engine.entry: the record array)
_RECORD = ("seq", "ts", "user", "action", "target", "domain", "ip", "user_agent", "success", "details", "signature")
if (_RECORD.index("seq"), _RECORD.index("ts"), _RECORD.index("details"), _RECORD.index("signature"), len(_RECORD)) != (
    R_SEQ,
    R_TS,
    R_DETAILS,
    R_SIG,
    RECORD_FIELDS,
):
    raise ImportError("export.ndjson: the stored record's fields moved (engine.entry)")
_RECORD_SOURCE = {"id": "prefix + str(seq)", "integrity": '"ok"'}


def _wire_dict(source: dict[str, str], value: str) -> str:
    """The wire dict as a literal, each field from ``source`` or else ``value``."""

    def one(f: str) -> str:
        expr = source.get(f, value.format(f))
        return _CONVERTED[f].format(expr) if f in _CONVERTED and f not in source else expr

    return "{" + ", ".join(f"{f!r}: {one(f)}" for f in WIRE_FIELDS) + "}"


_LINE_MAKERS = f"""
def ndjson_lines(entries, timestamps=None):
    timestamps = timestamps or TimestampFormatter().format
    out = []
    append = out.append
    for e in entries:
        node, seq = e.node, e.seq
        d = {_wire_dict(_ENTRY_SOURCE, "e.{}")}
        if e.{WIRE_OPTIONAL} is not None:
            d[{WIRE_OPTIONAL!r}] = e.{WIRE_OPTIONAL}
        try:
            append(_dumps(d, None, _NEWLINE))
        except (TypeError, orjson.JSONEncodeError):
            append(_odd_line(e))
    return out


def record_lines(node, recs, timestamps):
    out = []
    append = out.append
    prefix = node + ":"
    for {", ".join(_RECORD)} in recs:
        d = {_wire_dict(_RECORD_SOURCE, "{}")}
        try:
            append(_dumps(d, None, _NEWLINE))
        except (TypeError, orjson.JSONEncodeError):
            append(_odd_line(Entry(node, {", ".join(_RECORD)})))
    return out
"""


def _odd_line(e: Entry) -> bytes:
    """A damaged record's line: whatever its values are, never crash an export."""
    try:
        wire = e.to_wire()
    except (TypeError, ValueError, AttributeError):  # e.g. a signature that is not bytes
        wire = {
            "id": f"{e.node}:{e.seq}",
            "node": e.node,
            "seq": e.seq,
            "integrity": "violation",
            "violation": "record fields of unexpected types",
        }
    return (_json(wire) + "\n").encode("utf-8", "surrogatepass")


_made = {
    "TimestampFormatter": TimestampFormatter,
    "Entry": Entry,
    "orjson": orjson,
    "_dumps": _dumps,
    "_NEWLINE": _NEWLINE,
    "_odd_line": _odd_line,
}
exec(compile(_LINE_MAKERS, "<export.ndjson line makers>", "exec"), _made)
ndjson_lines: Callable[..., list[bytes]] = _made["ndjson_lines"]
record_lines: Callable[[str, Iterable[tuple], Callable[[int], str]], list[bytes]] = _made["record_lines"]
ndjson_lines.__doc__ = "Each entry as one UTF-8 line ending in ``\\n`` (the wire shape, ``Entry.to_wire``)."
record_lines.__doc__ = """:func:`ndjson_lines` for the records of a verified frame (``engine.items.VerifiedFrame``):
the same lines, without an ``Entry`` per record."""


#: names what :func:`record_lines` writes, for line files (``engine.lines``): change it
#: whenever a line would come out differently, so lines kept before are not used
LINES_TAG = "ndjson-1"


def line_renderer(node: str) -> Callable[[tuple], list[bytes]]:
    """``record_lines`` for one node's verified frames (the ``engine.lines`` callback)."""

    def render(recs: tuple) -> list[bytes]:
        return record_lines(node, recs, TimestampFormatter().format)

    return render


def render_json_entry(entry: Entry) -> str:
    """One entry as compact JSON (no newline)."""
    return ndjson_lines([entry])[0][:-1].decode("utf-8")


def iter_ndjson(entries: Iterable[Entry]) -> Iterator[str]:
    """Yield the entries as NDJSON text, several lines per chunk."""
    timestamps = TimestampFormatter().format
    batch: list[Entry] = []
    parts: list[bytes] = []
    size = 0
    for entry in entries:
        batch.append(entry)
        if len(batch) >= 64:
            for line in ndjson_lines(batch, timestamps):
                parts.append(line)
                size += len(line)
                if size >= CHUNK_CHARS:
                    yield b"".join(parts).decode("utf-8")
                    parts.clear()
                    size = 0
            batch.clear()
    parts.extend(ndjson_lines(batch, timestamps))
    if parts:
        yield b"".join(parts).decode("utf-8")
