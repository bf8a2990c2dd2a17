"""Selective reads: the records term postings point at, each one vouched for.

The postings (``engine.postings``) say which records of a segment can match a
read's terms; they are hints.  A record read through one is used only when it
is authentic now: in a compressed segment (format 3) its whole frame verifies
(checksum and MAC over the stored bytes) and is decompressed once per read; in
formats 1 and 2 the record itself decodes to the expected seq and its chained
signature verifies against the 32 bytes in front of it.  Anything else sends
the read to the whole frame, checked, which reports what is wrong with it;
frames the postings cannot speak for (damaged when they were built) are
visited whole as well.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import msgpack

from engine.catalog import SegmentInfo
from engine.chain import NodeKey
from engine.entry import ENTRY_SUB, R_SIG, Entry
from engine.frame import COMPRESSED_FROM, HEADER_SIZE, MAC_SIZE, FrameError, parse_header
from engine.items import Damage, VerifiedFrame
from engine.layout import Slot
from engine.recheck import FrameChecks

#: no record is larger than this (details are bounded far below it)
MAX_RECORD_PEEK = 1024 * 1024

#: reads whole frames of a segment: (slot, data, ordinals, lo, hi, desc, after, pos_ok, predicate)
ReadFrames = Callable[..., Iterator[VerifiedFrame | Damage]]


class SelectiveReads:
    """Reads one node's records through postings (thread-safe: no state of its own)."""

    def __init__(self, node: str, key: NodeKey, checks: FrameChecks, read_frames: ReadFrames):
        self.node = node
        self._sign = key.signer()
        self._checks = checks
        self._read_frames = read_frames
        # signed bytes = 0x9b || msgpack(node) || stored record minus its array header and signature
        self._canon_prefix = b"\x9b" + msgpack.packb(node)

    def read_hits(
        self,
        slot: Slot,
        data,
        hits: list,
        suspect: set[int],
        start: int,
        stop: int,
        lo: int,
        hi: int,
        desc: bool,
        pos_ok,
        predicate,
    ) -> Iterator[VerifiedFrame | Damage]:
        """The records at ``hits`` ((seq, offset) pairs) of frames ``start..stop-1``, each
        vouched for; frames in ``suspect`` or damaged in the index visited whole."""
        info, idx = slot.info, slot.info.index
        visit = sorted({o for o in suspect | set(idx.damaged) if start <= o < stop}, reverse=desc)
        events = [(seq, off) for seq, off in hits] + [(idx.frames[o].first_seq, -1 - o) for o in visit]
        events.sort(reverse=desc)
        done: set[int] = set()
        batch: list[Entry] = []
        batch_frame = -1
        plain: dict[int, bytes | None] = {}  # compressed frames: decompressed once each
        for seq, off in events:
            o = -1 - off if off < 0 else idx.frame_of_seq(seq)
            if not start <= o < stop or o in done:
                continue
            if off < 0 or o in idx.damaged or o in suspect:
                done.add(o)
                if batch:
                    yield self._partial(info, batch_frame, batch, desc)
                    batch = []
                yield from self._read_frames(slot, data, [o], lo, hi, desc, None, pos_ok, predicate)
                continue
            if pos_ok is not None and not pos_ok((seq, ENTRY_SUB)):
                continue
            if info.version >= COMPRESSED_FROM:
                if o not in plain:
                    plain[o] = self._checks.plain_if_verified(slot, data, o)
                e = self._record_in(plain[o], seq, off)
            else:
                e = self._signed_record(info, data, seq, off, o)
            if e is None:
                # the record is not vouched for where the posting points: read the whole
                # frame, checked, and report what is wrong with it
                done.add(o)
                if batch:
                    yield self._partial(info, batch_frame, batch, desc)
                    batch = []
                yield from self._read_frames(slot, data, [o], lo, hi, desc, None, pos_ok, predicate)
                continue
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

    def _record_in(self, buf: bytes | None, seq: int, off: int) -> Entry | None:
        """The record at ``off`` in a verified frame's plain payload (authentic as the
        frame is), if it is the record of ``seq``."""
        if buf is None or not 0 < off < len(buf):
            return None
        try:
            up = msgpack.Unpacker(raw=False, use_list=False, strict_map_key=True)
            up.feed(buf[off : off + MAX_RECORD_PEEK])
            rec = up.unpack()
        except (ValueError, TypeError, msgpack.UnpackException):
            return None
        if not (isinstance(rec, tuple) and len(rec) == 11 and type(rec[0]) is int and rec[0] == seq):
            return None
        return Entry.of(self.node, *rec)

    def _signed_record(self, info: SegmentInfo, data, seq: int, off: int, o: int) -> Entry | None:
        """One record of a plain-payload segment read at its file offset, checked against
        its chained signature."""
        row = info.index.frames[o]
        try:
            hdr = parse_header(data[row.offset : row.offset + HEADER_SIZE], info.version)
            end = row.offset + HEADER_SIZE + hdr.payload_len
            if not row.offset + HEADER_SIZE < off < end:
                return None
            up = msgpack.Unpacker(raw=False, use_list=False, strict_map_key=True)
            up.feed(data[off : min(end, off + MAX_RECORD_PEEK)])
            rec = up.unpack()
            n = up.tell()
            if not (
                isinstance(rec, tuple)
                and len(rec) == 11
                and type(rec[0]) is int
                and rec[0] == seq
                and type(rec[R_SIG]) is bytes
            ):
                return None
            raw = data[off : off + n]
        except (FrameError, ValueError, TypeError, msgpack.UnpackException):
            return None
        if seq == row.first_seq:
            prev = info.header.prev_sig if o == 0 else data[row.offset - 2 * MAC_SIZE : row.offset - MAC_SIZE]
        else:
            prev = data[off - MAC_SIZE : off]
        if self._sign(prev, self._canon_prefix + raw[1 : n - 34]) != rec[R_SIG]:
            return None
        return Entry.of(self.node, *rec)
