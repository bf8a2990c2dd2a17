"""Selective reads: the records term postings point at, each one vouched for.

The postings (``engine.postings``) say which records of a segment can match a
read's terms, by seq; they are hints.  A record read through one is used only
when its whole frame verifies now (checksum and chained MAC over the stored
bytes, in every format) and matches its index row; the record is then taken
at its place in the frame's plain payload (decompressed once per read, only
after the check) and must be the record of the expected seq and carry the
values the read asks for (two values can share a posting's hash).  Anything
else sends the read to the whole frame, checked, which reports what is wrong
with it; frames the postings cannot speak for (damaged when they were built)
are visited whole as well.

Records once taken from a verified frame are kept, within a byte budget, by
that frame's MAC and their place in it (:data:`RECORD_CACHE_BYTES`): a later
read still checks the frame's stored bytes, and only when they verify with
the same MAC (so they are the same bytes) takes the record from the cache
instead of decompressing the frame again.
"""

from __future__ import annotations

import sys
from array import array
from collections.abc import Callable, Iterator

import msgpack

from auditlog.engine.bytecache import ENTRY_OVERHEAD, ByteLRU
from auditlog.engine.catalog import SegmentInfo
from auditlog.engine.entry import ENTRY_SUB, Entry
from auditlog.engine.frame import FrameError, plain_payload
from auditlog.engine.items import Damage, VerifiedFrame
from auditlog.engine.layout import Slot
from auditlog.engine.recheck import FrameChecks
from auditlog.engine.terms import record_matches, wanted_fields

#: records read through postings, kept by the MAC of their verified frame
RECORD_CACHE_BYTES = 4 * 1024 * 1024

#: reads whole frames of a segment: (slot, data, ordinals, lo, hi, desc, after, pos_ok, predicate)
ReadFrames = Callable[..., Iterator[VerifiedFrame | Damage]]


class _Frame:
    """A frame a selective read has verified: its MAC, stored payload, and (once
    needed) its plain payload and where its records start, found as far as needed."""

    __slots__ = ("mac", "stored", "plain", "starts", "_up", "_count")

    def __init__(self, mac: bytes, stored: bytes):
        self.mac = mac
        self.stored = stored
        self.plain: bytes | None = None
        self.starts = array("I")
        self._up: msgpack.Unpacker | None = None
        self._count = 0

    def record(self, version: int, k: int) -> bytes | None:
        """The bytes of record ``k`` of the plain payload (None past the last record)."""
        if self.plain is None:
            # decompressed only now that the stored bytes verified, never past the cap
            self.plain = plain_payload(self.stored, version)
            self._up = msgpack.Unpacker(raw=False, use_list=False, strict_map_key=True)
            self._up.feed(self.plain)
            self._count = self._up.read_array_header()
            self.starts.append(self._up.tell())
        if not 0 <= k < self._count:
            return None
        starts, up = self.starts, self._up
        while len(starts) <= k + 1:
            up.skip()
            starts.append(up.tell())
        return self.plain[starts[k] : starts[k + 1]]


class SelectiveReads:
    """Reads one node's records through postings (thread-safe)."""

    def __init__(
        self, node: str, checks: FrameChecks, read_frames: ReadFrames, record_budget: int = RECORD_CACHE_BYTES
    ):
        self.node = node
        self._checks = checks
        self._read_frames = read_frames
        #: records taken from verified frames, by (frame MAC, place in the frame)
        self.records = ByteLRU(record_budget)

    def read_hits(
        self,
        slot: Slot,
        data,
        hits: list[int],
        suspect: set[int],
        start: int,
        stop: int,
        lo: int,
        hi: int,
        desc: bool,
        pos_ok,
        predicate,
        terms: dict[str, frozenset[str]],
    ) -> Iterator[VerifiedFrame | Damage]:
        """The records of seqs ``hits`` in frames ``start..stop-1`` that carry ``terms``,
        each vouched for; frames in ``suspect`` or damaged in the index visited whole."""
        info, idx = slot.info, slot.info.index
        wanted = wanted_fields(terms)
        visit = sorted({o for o in suspect | set(idx.damaged) if start <= o < stop}, reverse=desc)
        # (seq, 0): a record; (first seq, -1 - o): frame o, visited whole (before a
        # record of the same seq in ascending order)
        events = [(seq, 0) for seq in hits] + [(idx.frames[o].first_seq, -1 - o) for o in visit]
        events.sort(reverse=desc)
        done: set[int] = set()
        batch: list[Entry] = []
        batch_frame = -1
        # the frame the hits are in now (hits come in seq order, so a frame's hits are
        # together: only one frame's payload is held at a time)
        cur, fr = -1, None
        for seq, tag in events:
            o = -1 - tag if tag < 0 else idx.frame_of_seq(seq)
            if not start <= o < stop or o in done:
                continue
            whole = tag < 0 or o in idx.damaged or o in suspect
            if not whole:
                if pos_ok is not None and not pos_ok((seq, ENTRY_SUB)):
                    continue
                if o != cur:
                    got = self._checks.stored_if_verified(slot, data, o)
                    cur, fr = o, (_Frame(*got) if got is not None else None)
                rec = self._record(info, fr, o, seq)
                # a record not vouched for where the posting points: the whole frame is
                # read, checked, and what is wrong with it reported
                whole = rec is None
            if whole:
                done.add(o)
                if batch:
                    yield self._partial(info, batch_frame, batch, desc)
                    batch = []
                yield from self._read_frames(slot, data, [o], lo, hi, desc, None, pos_ok, predicate)
                continue
            if not record_matches(rec, wanted):
                continue  # another value of the same hash
            e = Entry.of(self.node, *rec)
            if lo <= e.ts < hi and (predicate is None or predicate(e)):
                if batch and batch_frame != o:
                    yield self._partial(info, batch_frame, batch, desc)
                    batch = []
                batch.append(e)
                batch_frame = o
        if batch:
            yield self._partial(info, batch_frame, batch, desc)

    def _partial(self, info: SegmentInfo, o: int, entries: list[Entry], desc: bool) -> VerifiedFrame:
        row = info.index.frames[o]
        return VerifiedFrame(self.node, info.path, o, row.offset, 0, b"", desc=desc, entries=entries)

    def _record(self, info: SegmentInfo, fr: _Frame | None, o: int, seq: int) -> tuple | None:
        """The record of ``seq`` in frame ``o`` (verified by this read: ``fr``), or None."""
        if fr is None:
            return None
        k = seq - info.index.frames[o].first_seq
        key = (fr.mac, k)
        raw = self.records.get(key)
        if raw is None:
            try:
                raw = fr.record(info.version, k)
            except (FrameError, ValueError, TypeError, msgpack.UnpackException):
                return None
            if raw is None:
                return None
            self.records.put(key, raw, sys.getsizeof(raw) + len(fr.mac) + ENTRY_OVERHEAD)
        try:
            rec = msgpack.unpackb(raw, raw=False, use_list=False, strict_map_key=True)
        except (ValueError, TypeError, msgpack.UnpackException):
            return None
        if not (isinstance(rec, tuple) and len(rec) == 11 and type(rec[0]) is int and rec[0] == seq):
            return None
        return rec
