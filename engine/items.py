"""What the reader yields: verified frames, and damage with what it could not vouch for.

The reader (``engine.log``) yields, in log order, either a
:class:`VerifiedFrame` (a frame whose checksum and chained MAC verified, whole
or the part of it a read wants) or a :class:`Damage`: a stretch of the log it
could not verify, with

* its **seq coverage**: ``seq_from`` (where it sits in the log) to ``seq_to``
  (None when the end is unknown), and
* its **time coverage**: ``ts_lo``..``ts_hi``, the times the missing or damaged
  entries can have.  A node's timestamps never go back, so they lie between
  the last verified entry before the damage and the first verified one after
  it; None means unbounded (nothing verified on that side).

A read whose time window overlaps a damage's time coverage returns it, whatever
its other filters say: data that could have matched and cannot be vouched for
is reported, never filtered away.  A damaged frame whose records still decode
comes back as those entries, each flagged ``integrity="violation"`` and
rebuilt with well-typed fields (a tampered record may hold a string seq, a
float ts, a list where a map belongs: renderers never see those); a stretch
that does not decode comes back as one marker entry.

Positions: every item has a position ``(seq, sub)`` in its node's log, used to
continue a read after a cursor.  Entries (intact or flagged) are ``(seq,
ENTRY_SUB)``; a marker sits before the entry with the same seq, so a marker
and an entry never share a position.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import msgpack

from auditlog.engine.entry import Entry, decode_entries

#: ``sub`` of a marker for a damaged frame
FRAME_SUB = 50
#: (largest value first) stand-ins for "unknown" in stored coverage bounds
TS_UNKNOWN_LO = -(1 << 63)
TS_UNKNOWN_HI = (1 << 63) - 1


class VerifiedFrame:
    """A frame that verified (checksum and chained MAC), or the part of it a read wants.

    A whole frame keeps its verified plain payload and decodes it only when
    asked (:meth:`entries`, straight into entries: ``engine.entry.decode_entries``);
    ``path``, ``ordinal``, ``offset``, ``end`` and ``mac`` say which frame it is.
    A part of a frame (cut by the time window, a cursor or a filter) holds its
    entries.  ``desc``: entries come newest first.
    """

    __slots__ = ("node", "path", "ordinal", "offset", "end", "mac", "payload", "desc", "_entries")

    def __init__(
        self,
        node: str,
        path,
        ordinal: int,
        offset: int,
        end: int,
        mac: bytes,
        payload: bytes | None = None,
        desc: bool = False,
        entries: list[Entry] | None = None,
    ):
        self.node = node
        self.path = path
        self.ordinal = ordinal
        self.offset = offset
        self.end = end
        self.mac = mac
        self.payload = payload
        self.desc = desc
        self._entries = entries

    @property
    def whole(self) -> bool:
        """Every entry of the frame, in scan order (not a part of it)."""
        return self._entries is None

    def entries(self) -> list[Entry]:
        """The entries, in scan order (a whole frame's decoded anew on each call)."""
        if self._entries is not None:
            return self._entries
        try:
            out = decode_entries(self.node, self.payload)
        except ValueError:
            # not the arrays decode_entries expects; the catalogue checked it is a
            # sequence of 11-element records, which is all from_records needs
            out = Entry.from_records(
                self.node, msgpack.unpackb(self.payload, use_list=False, raw=False, strict_map_key=True)
            )
        if self.desc:
            out.reverse()
        return out

    def __len__(self) -> int:
        return len(self.entries())

    def __repr__(self) -> str:
        return (
            f"VerifiedFrame({self.node} {getattr(self.path, 'name', self.path)}@{self.offset}, "
            f"{'whole' if self.whole else f'{len(self._entries)} entries'})"
        )


@dataclass
class Damage:
    """A stretch of one node's log that a read cannot vouch for."""

    node: str
    kind: str
    segment: str
    detail: str
    seq_from: int
    seq_to: int | None
    ts_lo: int | None
    ts_hi: int | None
    sub: int = 0
    #: the flagged entries of a damaged frame whose records decode (else a marker)
    entries: list[Entry] = field(default_factory=list)
    #: for a file whose header cannot be read: the seq its name claims (None otherwise)
    named_seq: int | None = None
    #: where it sits in the read when that is not ``seq_from`` (a segment out of its
    #: place: its own seqs came before)
    pos_seq: int | None = None
    #: where it sorts in time when that is not ``ts_lo`` (a segment out of its place:
    #: its own times are not where it sits)
    sort_ts: int | None = None

    @property
    def position(self) -> tuple[int, int]:
        return (self.seq_from if self.pos_seq is None else self.pos_seq, self.sub)

    def overlaps(self, lo: int, hi: int) -> bool:
        """Can entries of this stretch have a ts in ``[lo, hi)``?"""
        return (self.ts_hi is None or self.ts_hi >= lo) and (self.ts_lo is None or self.ts_lo < hi)

    def describe(self) -> str:
        if self.seq_to is None:
            rng = f"from seq {self.seq_from}"
        elif self.seq_to < self.seq_from:
            rng = f"before seq {self.seq_from}"  # a file that holds no seq of this log
        else:
            rng = f"seq {self.seq_from}..{self.seq_to}"
        return f"{self.kind}: {rng} in {self.segment}: {self.detail}"

    def marker_ts(self, lo: int | None = None, hi: int | None = None) -> int:
        """Where a marker for this stretch sorts: its earliest possible time, inside the
        read's window (so a node's stream stays in time order)."""
        ts = self.sort_ts if self.sort_ts is not None else self.ts_lo
        if ts is None:
            ts = self.ts_hi if self.ts_hi is not None else 0
        if lo is not None and ts < lo:
            ts = lo
        if ts < 0:
            ts = 0
        if hi is not None and ts >= hi:
            ts = hi - 1
        return ts

    def as_entries(
        self, lo: int | None = None, hi: int | None = None, last_ts: int | None = None, desc: bool = False
    ) -> list[Entry]:
        """The entries a read of ``[lo, hi)`` returns for this stretch, in scan order:
        its flagged entries, or a marker.

        Their timestamps are where they sort, not what could be verified: inside the
        read's window, and never back from ``last_ts`` (the time of what the read
        returned just before, forward or, with ``desc``, backward), so the node's
        stream stays in time order for a merge."""
        if self.entries:
            out = self.entries
        else:
            m = Entry.marker(self.node, self.seq_from, self.marker_ts(lo, hi), self.describe())
            m.pos_seq, m.sub = self.position
            out = [m]
        for e in out:
            ts = e.ts
            if lo is not None and ts < lo:
                ts = lo
            if hi is not None and ts >= hi:
                ts = hi - 1
            if last_ts is not None and (ts > last_ts if desc else ts < last_ts):
                ts = last_ts
            e.ts = last_ts = ts
        return out


def salvage(
    node: str, records: Any, first_seq: int, count: int, ts_lo: int | None, ts_hi: int | None, violation: str
) -> list[Entry]:
    """Flagged, well-typed entries of a damaged frame's decoded ``records``.

    Seqs come from the frame's place in the log (``first_seq``..), not from the
    records; a timestamp is kept when it is an integer inside the frame's time
    coverage and otherwise pulled into it, and never goes back within the frame,
    so the node's stream stays in order.  What was changed to make a field
    usable is named in the entry's ``violation`` text.  Returns [] when the
    records are not a sequence of ``count`` arrays at all (a marker then stands
    for the frame).
    """
    if not isinstance(records, (list, tuple)) or not records or len(records) != count:
        return []
    out = []
    last_ts = ts_lo
    for i, rec in enumerate(records):
        if not isinstance(rec, (list, tuple)) or len(rec) != 11:
            return []
        seq = first_seq + i
        notes = []
        if rec[0] != seq or type(rec[0]) is not int:
            notes.append(f"stored seq {_short(rec[0])}")
        ts = rec[1]
        if type(ts) is not int:
            notes.append(f"stored ts {_short(ts)} is not a number")
            ts = last_ts if last_ts is not None else (ts_hi if ts_hi is not None else 0)
        lo = last_ts if last_ts is not None else ts_lo
        if lo is not None and ts < lo:
            ts = lo
        if ts_hi is not None and ts > ts_hi:
            ts = ts_hi
        last_ts = ts
        if type(rec[8]) is not bool:
            notes.append(f"stored success {_short(rec[8])}")
        sig = rec[10] if type(rec[10]) is bytes and len(rec[10]) == 32 else b""
        if not sig:
            notes.append("stored signature unusable")
        e = Entry.of(
            node,
            seq,
            ts,
            _text(rec[2]) or "",
            _text(rec[3]) or "",
            _text(rec[4]),
            _text(rec[5]),
            _text(rec[6]),
            _text(rec[7]),
            rec[8] is True,
            _details(rec[9]),
            sig,
            "violation",
            violation + (f" ({'; '.join(notes)})" if notes else ""),
        )
        out.append(e)
    return out


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _text(value: Any) -> str | None:
    """A text field of a damaged record: text, None, or the stored value shown as text."""
    if value is None or type(value) is str:
        return value
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).hex()
    return repr(value)


def _details(value: Any) -> dict:
    """A damaged record's details as a JSON-safe map (anything else under ``stored``)."""
    plain = _plain(value)
    return plain if isinstance(plain, dict) else {"stored": plain}


def _plain(value: Any, depth: int = 0) -> Any:
    if depth > 64:
        return "..."
    if value is None or type(value) in (str, bool, float) or (type(value) is int and -(1 << 63) <= value < (1 << 64)):
        return value
    if type(value) is int:
        return str(value)
    if isinstance(value, dict):
        return {(k if type(k) is str else _text(k)): _plain(v, depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v, depth + 1) for v in value]
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).hex()
    return repr(value)
