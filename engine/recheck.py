"""Frames checked again as a read reaches them: a verified frame, or what is wrong.

The catalogue (``engine.catalog``) says where a segment's frames are and which
did not verify when it was indexed; nothing it says is taken on trust.  Every
frame a read returns is checked here at the moment it is read (checksum and
chained MAC over its stored bytes, with the 32 bytes in front of it as the
previous MAC), its header compared with the index row, and only then
decompressed (format 3, never past the frame layer's cap).  What fails comes
back as :class:`~engine.items.Damage` with the seqs and times it covers; a
damaged frame of a plain-payload format (1, 2) also carries its records as
flagged entries when they decode, a compressed one is never opened.
"""

from __future__ import annotations

import msgpack

from auditlog.engine.catalog import unpack_records
from auditlog.engine.chain import NodeKey
from auditlog.engine.entry import R_SIG, Entry, canonical_bytes
from auditlog.engine.frame import COMPRESSED_FROM, HEADER_SIZE, MAC_SIZE, FrameError, check_frame_at, plain_payload
from auditlog.engine.index import FrameRow
from auditlog.engine.items import FRAME_SUB, TS_UNKNOWN_HI, TS_UNKNOWN_LO, Damage, VerifiedFrame, salvage
from auditlog.engine.layout import Slot


class FrameChecks:
    """Checks one node's frames when they are read (thread-safe: no state of its own)."""

    def __init__(self, node: str, key: NodeKey):
        self.node = node
        self._key = key
        self._sign = key.signer()

    def at(self, data, off: int, version: int):
        """``engine.frame.check_frame_at`` with this node's key: (header, stored payload,
        stored mac, problem or None); FrameError when no frame header parses there."""
        return check_frame_at(data, off, version, self._key)

    def verified(self, slot: Slot, data, o: int, row: FrameRow, desc: bool) -> VerifiedFrame | Damage:
        """The frame at row ``o``, checked now: verified, or what is wrong with it."""
        info = slot.info
        off = row.offset
        try:
            hdr, payload, mac, problem = self.at(data, off, info.version)
        except FrameError as e:
            return self.damage(slot, row, e.kind, f"frame at offset {off}: {e.detail}")
        if problem is None and (hdr.first_seq != row.first_seq or hdr.count != row.count):
            problem = "frame_corrupt"
        if problem is not None:
            d = self.damage(slot, row, problem, f"frame at offset {off}: {problem.replace('_', ' ')}")
            d.entries = self._salvage(payload, info.version, d, problem, info.name, off)
            return d
        try:
            # decompressed only now that the stored bytes verified, never past the cap
            plain = plain_payload(payload, info.version)
        except FrameError as e:
            return self.damage(slot, row, e.kind, f"frame at offset {off}: {e.detail}")
        return VerifiedFrame(
            self.node,
            info.path,
            o,
            off,
            off + HEADER_SIZE + hdr.payload_len + MAC_SIZE,
            bytes(mac),
            bytes(plain),
            desc,
        )

    def stored_if_verified(self, slot: Slot, data, o: int) -> tuple[bytes, bytes] | None:
        """``(mac, stored payload)`` of the frame at row ``o`` if it verifies now
        (checksum and chained MAC over its stored bytes) and matches its row, else None
        (the caller then reads the frame whole).  Not decompressed yet."""
        info = slot.info
        row = info.index.frames[o]
        try:
            hdr, payload, mac, problem = self.at(data, row.offset, info.version)
        except FrameError:
            return None
        if problem is None and hdr.first_seq == row.first_seq and hdr.count == row.count:
            return bytes(mac), payload
        return None

    def damage(self, slot: Slot, row: FrameRow, kind: str, detail: str) -> Damage:
        lo, hi = coverage(slot, row)
        return Damage(
            self.node,
            kind,
            slot.info.name,
            detail,
            row.first_seq,
            row.first_seq + row.count - 1 if row.count else None,
            lo,
            hi,
            FRAME_SUB,
        )

    def known_damage(self, slot: Slot, data, o: int, row: FrameRow) -> Damage:
        """A frame the index knows did not verify: its flagged entries, or a marker."""
        info = slot.info
        kind, detail, sf, st = info.index.damaged[o]
        lo, hi = coverage(slot, row)
        d = Damage(self.node, kind, info.name, detail, sf, st, lo, hi, FRAME_SUB)
        if row.count == 0 or kind in ("frame_corrupt", "undecodable"):
            return d
        try:
            _, payload, _, _ = self.at(data, row.offset, info.version)
        except FrameError:
            return d
        d.entries = self._salvage(payload, info.version, d, kind, info.name, row.offset)
        return d

    def _salvage(self, payload, version: int, d: Damage, problem: str, segment: str, off: int) -> list[Entry]:
        """Flagged entries of a damaged frame, when its records decode (else [] and a marker).
        A compressed payload that did not verify is never decompressed: a marker."""
        if payload is None or d.seq_to is None or version >= COMPRESSED_FROM:
            return []
        try:
            recs = unpack_records(payload)
        except (ValueError, TypeError, msgpack.UnpackException):
            return []
        text = f"{problem}: frame at offset {off} in {segment}"
        out = salvage(self.node, recs, d.seq_from, d.seq_to - d.seq_from + 1, d.ts_lo, d.ts_hi, text)
        if not out:
            return []
        # which entries still carry a signature that chains from the one before them
        # (the frame was altered around them; they stay flagged)
        prev = None
        for e, r in zip(out, recs):
            if prev is not None and e.signature and self._sig_ok(prev, r):
                e.violation += "; this entry's own signature verifies"
            prev = e.signature or None
        return out

    def _sig_ok(self, prev_sig: bytes, r: tuple) -> bool:
        try:
            return self._sign(prev_sig, canonical_bytes(self.node, r[0], r[1], r[2:10])) == r[R_SIG]
        except (TypeError, ValueError, OverflowError):
            return False


def coverage(slot: Slot, row: FrameRow) -> tuple[int | None, int | None]:
    """The times a frame's entries can have (a damaged row's own, settled in its
    segment; where the segment has none on a side, the neighbouring segments')."""
    lo = slot.ts_before if row.min_ts == TS_UNKNOWN_LO else row.min_ts
    hi = slot.ts_after if row.max_ts == TS_UNKNOWN_HI else row.max_ts
    return lo, hi
