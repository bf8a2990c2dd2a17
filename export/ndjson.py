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

from engine.entry import Entry
from export.csv import CHUNK_CHARS, TimestampFormatter, make_json_encoder

# Maps in stored order (ingest stores details canonically sorted), as to_wire does.
_json = make_json_encoder(sort_keys=False)
_dumps = orjson.dumps
_NEWLINE = orjson.OPT_APPEND_NEWLINE


def ndjson_lines(entries: Iterable[Entry], timestamps: Callable[[int], str] | None = None) -> list[bytes]:
    """Each entry as one UTF-8 line ending in ``\n``."""
    tsf = timestamps or TimestampFormatter().format
    out = []
    append = out.append
    for e in entries:
        node, seq = e.node, e.seq
        d = {"id": f"{node}:{seq}", "node": node, "seq": seq, "ts": tsf(e.ts), "user": e.user,
             "action": e.action, "target": e.target, "domain": e.domain, "ip": e.ip,
             "user_agent": e.user_agent, "success": e.success, "details": e.details,
             "signature": e.signature.hex(), "integrity": e.integrity}
        if e.violation is not None:
            d["violation"] = e.violation
        try:
            append(_dumps(d, None, _NEWLINE))
        except (TypeError, orjson.JSONEncodeError):
            append(_odd_line(e))
    return out


def record_lines(node: str, recs, timestamps: Callable[[int], str]) -> list[bytes]:
    """:func:`ndjson_lines` for the records of a verified frame (``engine.items.VerifiedFrame``):
    the same lines, without an ``Entry`` per record."""
    out = []
    append = out.append
    prefix = node + ":"
    for seq, ts, user, action, target, domain, ip, ua, success, details, sig in recs:
        d = {"id": prefix + str(seq), "node": node, "seq": seq, "ts": timestamps(ts), "user": user,
             "action": action, "target": target, "domain": domain, "ip": ip, "user_agent": ua,
             "success": success, "details": details, "signature": sig.hex(), "integrity": "ok"}
        try:
            append(_dumps(d, None, _NEWLINE))
        except (TypeError, orjson.JSONEncodeError):
            append(_odd_line(Entry(node, seq, ts, user, action, target, domain, ip, ua, success,
                                   details, sig)))
    return out


#: names what :func:`record_lines` writes, for line files (``engine.lines``): change it
#: whenever a line would come out differently, so lines kept before are not used
LINES_TAG = "ndjson-1"


def line_renderer(node: str) -> Callable[[tuple], list[bytes]]:
    """``record_lines`` for one node's verified frames (the ``engine.lines`` callback)."""
    def render(recs: tuple) -> list[bytes]:
        return record_lines(node, recs, TimestampFormatter().format)
    return render


def _odd_line(e: Entry) -> bytes:
    """A damaged record's line: whatever its values are, never crash an export."""
    try:
        wire = e.to_wire()
    except (TypeError, ValueError, AttributeError):   # e.g. a signature that is not bytes
        wire = {"id": f"{e.node}:{e.seq}", "node": e.node, "seq": e.seq, "integrity": "violation",
                "violation": "record fields of unexpected types"}
    return (_json(wire) + "\n").encode("utf-8", "surrogatepass")


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
