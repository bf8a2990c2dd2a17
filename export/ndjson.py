"""NDJSON rendering of an entry stream: one compact JSON object per line (SPEC section 3 shape).

Each line is the JSON of :meth:`engine.entry.Entry.to_wire` (same keys, same
order, ``ts`` as RFC 3339, the signature as hex).  A batch of entries becomes
one list of wire structs (``WireLine``, declared from ``engine.entry.WIRE_FIELDS``)
encoded by msgspec in one call, lines and all: no dict per entry.  Strings are
escaped as the json module escapes them with ``ensure_ascii=False`` (quotes,
backslashes, control characters); numbers use the shortest form that reads
back as the same value; ``violation`` follows only when set.  Flagged
entries go one by one through their wire dict (orjson), where values JSON
cannot take as they are (a damaged record's bytes, non-text keys) are shown
with :func:`export.csv.json_default` or the json module.  The tests pin the
equality with ``to_wire`` (including by Hypothesis).

Lines are ``\\n``-terminated.  :func:`render` gives a batch as one blob (what
a read hands to the merge, with the line lengths), :func:`ndjson_lines` each
line as bytes, :func:`iter_ndjson` text in chunks of about
:data:`CHUNK_CHARS` characters.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

import msgspec
import orjson

from auditlog.engine.entry import WIRE_FIELDS, WIRE_OPTIONAL, Entry
from auditlog.export.csv import CHUNK_CHARS, TimestampFormatter, json_default, make_json_encoder

# Maps in stored order (ingest stores details canonically sorted), as to_wire does.
_json = make_json_encoder(sort_keys=False)

#: the wire shape as a struct: WIRE_FIELDS in order, then ``violation``, left out
#: when None (the only field with a default, so the only one ever left out)
WireLine = msgspec.defstruct(
    "WireLine",
    [(f, Any) for f in WIRE_FIELDS] + [(WIRE_OPTIONAL, Any, None)],
    omit_defaults=True,
    gc=False,
)
_encoder = msgspec.json.Encoder()
_encode_lines = _encoder.encode_lines


def render(entries: list[Entry], timestamps: Callable[[int], str], verified: bool = False) -> bytes:
    """The entries as NDJSON lines, one blob (empty for no entries).

    Verified entries hold what ingest validated (JSON types), so a batch of them
    is encoded in one call; a flagged entry (a damaged record's, rebuilt by
    ``engine.items.salvage``, or a marker) goes line by line through its wire
    dict, where any value JSON has no type for is shown safely.  ``verified``: the
    caller knows every entry is a verified one (a verified frame's)."""
    if verified or all(e.integrity == "ok" for e in entries):
        try:
            # WireLine's fields in WIRE_FIELDS order (tests pin the lines to to_wire)
            return _encode_lines(
                [
                    WireLine(
                        f"{e.node}:{e.seq}",
                        e.node,
                        e.seq,
                        timestamps(e.ts),
                        e.user,
                        e.action,
                        e.target,
                        e.domain,
                        e.ip,
                        e.user_agent,
                        e.success,
                        e.details,
                        e.signature.hex(),
                        "ok",
                        e.violation,
                    )
                    for e in entries
                ]
            )
        except (TypeError, ValueError, AttributeError, msgspec.EncodeError):
            pass
    return b"".join(_checked_line(e) for e in entries)


def _checked_line(e: Entry) -> bytes:
    try:
        return orjson.dumps(e.to_wire(), json_default, orjson.OPT_APPEND_NEWLINE)
    except (TypeError, ValueError, AttributeError, orjson.JSONEncodeError):
        return _odd_line(e)


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


def ndjson_lines(entries: Iterable[Entry], timestamps: Callable[[int], str] | None = None) -> list[bytes]:
    """Each entry as one UTF-8 line ending in ``\\n`` (the wire shape, ``Entry.to_wire``)."""
    blob = render(list(entries), timestamps or TimestampFormatter().format)
    return blob.splitlines(keepends=True)


def render_json_entry(entry: Entry) -> str:
    """One entry as compact JSON (no newline)."""
    return ndjson_lines([entry])[0][:-1].decode("utf-8")


def iter_ndjson(entries: Iterable[Entry]) -> Iterator[str]:
    """Yield the entries as NDJSON text in chunks of about :data:`CHUNK_CHARS`, each
    ending at the end of a line."""
    timestamps = TimestampFormatter().format
    batch: list[Entry] = []
    buf = bytearray()
    for entry in entries:
        batch.append(entry)
        if len(batch) >= 64:
            buf += render(batch, timestamps)
            batch.clear()
            while len(buf) >= CHUNK_CHARS:
                cut = buf.rfind(b"\n", 0, CHUNK_CHARS) + 1 or buf.find(b"\n") + 1
                yield buf[:cut].decode("utf-8")
                del buf[:cut]
    if batch:
        buf += render(batch, timestamps)
    if buf:
        yield buf.decode("utf-8")
