"""A commit's bytes, planned before any of them is written.

:func:`plan_commit` is pure: given the drafts of one commit and where the log
stands (next seq, last signature and frame MAC, the active segment's size), it
signs the entries in their chain, cuts the records into frames (at most
``frame_max_payload`` of records each, a record larger than that alone in its
own), compresses each (format 3), marks every frame but the last as continuing
the commit, and cuts the frames into the segments they fit in (a segment that already holds a frame is
never grown past ``segment_max_bytes``: the commit rolls into a new segment,
whose header the plan builds too).  The writer (``engine.writer``) only
carries the plan out: writes, syncs, creates segments, in that order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from auditlog.engine.chain import NodeKey
from auditlog.engine.entry import RECORD_HEADER, EntryDraft, pack_draft, pack_value, packed_len, record_from_canonical
from auditlog.engine.frame import OVERHEAD, encode_payload, seal_frame
from auditlog.engine.segment import FORMAT_VERSION, SegmentHeader


@dataclass
class PlannedFrame:
    offset: int  # in its segment file
    first_seq: int
    count: int
    mac: bytes
    last_sig: bytes  # signature of its last entry
    data: bytes


@dataclass
class Piece:
    """Frames that go to one segment: the active one, or a new one (``header``) created first."""

    header: SegmentHeader | None = None
    header_bytes: bytes = b""
    frames: list[PlannedFrame] = field(default_factory=list)

    @property
    def data(self) -> bytes:
        return b"".join(f.data for f in self.frames)


@dataclass
class Plan:
    pieces: list[Piece]
    next_seq: int
    last_sig: bytes
    last_mac: bytes


def plan_commit(
    drafts: Sequence[EntryDraft | bytes],
    *,
    key: NodeKey,
    node: str,
    seq: int,
    ts: int,
    prev_sig: bytes,
    prev_mac: bytes,
    segment_size: int,
    segment_has_frames: bool,
    segment_max_bytes: int,
    frame_max_payload: int,
    version: int = FORMAT_VERSION,
) -> Plan:
    """The frames and segment rolls of one commit whose entries all get ``ts``.

    ``drafts`` are validated drafts (``details`` in canonical order) or packed
    drafts (``engine.entry.pack_draft``).  ``segment_size`` is the active
    segment's size and ``segment_has_frames`` whether it holds a frame yet.
    """
    sign = key.signer()
    nlen = packed_len(node)
    head = RECORD_HEADER + pack_value(node)
    ts_packed = pack_value(ts)
    pieces = [Piece()]
    size, has_frames = segment_size, segment_has_frames
    records: list[bytes] = []
    rsize = 0
    first = seq
    sig_before_frame = prev_sig  # signature before the frame being filled

    def emit(continues: bool) -> None:
        nonlocal size, has_frames, records, rsize, first, prev_mac, sig_before_frame
        stored = encode_payload(records, version)
        if has_frames and size + OVERHEAD + len(stored) > segment_max_bytes:
            raw, hdr = SegmentHeader.build(key, node, first, ts, sig_before_frame, prev_mac, version)
            pieces.append(Piece(hdr, raw))
            size, prev_mac = hdr.size, hdr.mac
        data, mac = seal_frame(stored, len(records), first, ts, ts, key, prev_mac, continues=continues, version=version)
        pieces[-1].frames.append(PlannedFrame(size, first, len(records), mac, last_sig, data))
        size += len(data)
        has_frames = True
        prev_mac = mac
        first += len(records)
        sig_before_frame = last_sig
        records, rsize = [], 0

    last_sig = prev_sig
    for d in drafts:
        canon = head + pack_value(seq) + ts_packed + (d if type(d) is bytes else pack_draft(d))
        sig = sign(last_sig, canon)
        rec = record_from_canonical(nlen, canon, sig)
        if records and rsize + len(rec) > frame_max_payload:
            emit(True)
        records.append(rec)
        rsize += len(rec)
        last_sig = sig
        seq += 1
    if records:
        emit(False)
    if not pieces[0].frames and len(pieces) > 1:
        del pieces[0]
    return Plan(pieces, seq, last_sig, prev_mac)
