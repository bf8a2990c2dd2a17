"""Derived, rebuildable lookup data: the per-segment index.

``<seg>.idx`` holds, for one sealed segment, the sparse time index (one row
per frame: offset, first seq, count, min ts, max ts) and the frames that did
not verify.  A damaged frame's row does not carry the times its (untrusted)
header claims but the times its entries can have: from the largest verified
time before it in the segment to the smallest one after it
(``engine.items.TS_UNKNOWN_LO``/``HI`` where the segment has none on that
side; the reader fills those from the neighbouring segments).  Term postings
for selective queries are in ``engine.terms``.

It is MAC'd with a key derived from the node key and bound to the segment's
size and header MAC.  Anything missing, damaged or inconsistent is rebuilt from
the ``.seg`` file and never trusted: the signed record stream is the truth.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from pathlib import Path

import msgpack

from auditlog.engine.chain import NodeKey
from auditlog.engine.items import TS_UNKNOWN_HI, TS_UNKNOWN_LO

INDEX_SUFFIX = ".idx"
# 3: damaged rows carry the times their entries can have (2: their headers' claims;
# 1 also held term postings, now in engine.terms)
INDEX_VERSION = 3
_MAC = 32


@dataclass
class FrameRow:
    offset: int
    first_seq: int
    count: int
    min_ts: int
    max_ts: int


@dataclass
class SegmentIndex:
    """Time index and term index of one segment (complete for a sealed one)."""

    name: str
    header_mac: bytes
    size: int = 0
    frames: list[FrameRow] = field(default_factory=list)
    last_sig: bytes = b""
    last_mac: bytes = b""
    #: frame ordinals whose bytes did not verify: ordinal -> [kind, detail, seq_from, seq_to].
    #: Every scan that reaches them visits them, whatever its term filters.
    damaged: dict[int, list] = field(default_factory=dict)
    #: smallest and largest ts of the frames that verified (None: none did)
    verified_lo: int | None = None
    verified_hi: int | None = None
    # columns kept for bisect
    _max_ts: list[int] = field(default_factory=list)
    _first_seqs: list[int] = field(default_factory=list)

    @property
    def first_seq(self) -> int | None:
        return self.frames[0].first_seq if self.frames else None

    @property
    def last_seq(self) -> int | None:
        f = self.frames[-1] if self.frames else None
        return f.first_seq + f.count - 1 if f else None

    @property
    def count(self) -> int:
        return sum(f.count for f in self.frames)

    @property
    def min_ts(self) -> int | None:
        return self.frames[0].min_ts if self.frames else None

    @property
    def max_ts(self) -> int | None:
        return self._max_ts[-1] if self._max_ts else None

    def add_frame(self, row: FrameRow) -> None:
        """Add one verified frame's row (term postings live in ``engine.terms``, built by readers)."""
        self.frames.append(row)
        # "largest ts so far": stays monotonic even if a frame's ts went backwards
        self._max_ts.append(max(row.max_ts, self._max_ts[-1]) if self._max_ts else row.max_ts)
        if self.verified_lo is None:
            self.verified_lo = row.min_ts
        if self.verified_hi is None or row.max_ts > self.verified_hi:
            self.verified_hi = row.max_ts

    def add_damaged(self, row: FrameRow, kind: str, detail: str, seq_from: int, seq_to: int | None) -> None:
        """Add a frame that did not verify; its row's times are settled by :meth:`settle_damage`."""
        self.damaged[len(self.frames)] = [kind, detail, seq_from, seq_to]
        self.frames.append(row)
        self._max_ts.append(max(row.max_ts, self._max_ts[-1]) if self._max_ts else row.max_ts)

    def settle_damage(self) -> None:
        """Give every damaged row the times its entries can have: from the largest
        verified ts before it to the smallest verified ts after it, in this segment."""
        if not self.damaged:
            return
        frames = self.frames
        hi = TS_UNKNOWN_HI
        after: dict[int, int] = {}
        for o in range(len(frames) - 1, -1, -1):
            if o in self.damaged:
                after[o] = hi
            else:
                hi = frames[o].min_ts
        lo = TS_UNKNOWN_LO
        for o, row in enumerate(frames):
            if o in self.damaged:
                row.min_ts, row.max_ts = lo, after[o]
            else:
                lo = max(lo, row.max_ts)
        self._recount()

    def _recount(self) -> None:
        running = None
        self._max_ts = []
        self.verified_lo = self.verified_hi = None
        for o, f in enumerate(self.frames):
            running = f.max_ts if running is None else max(running, f.max_ts)
            self._max_ts.append(running)
            if o not in self.damaged:
                if self.verified_lo is None:
                    self.verified_lo = f.min_ts
                if self.verified_hi is None or f.max_ts > self.verified_hi:
                    self.verified_hi = f.max_ts

    def truncate(self, nframes: int) -> None:
        """Forget the frames from ordinal ``nframes`` on (a cut-back tail, a rolled-back commit)."""
        for o in [o for o in self.damaged if o >= nframes]:
            del self.damaged[o]
        del self.frames[nframes:]
        self._first_seqs.clear()
        self._recount()

    def first_frame_at(self, ts: int) -> int:
        """Ordinal of the first frame that may hold an entry with ts >= ``ts``."""
        return bisect.bisect_left(self._max_ts, ts)

    def frame_of_seq(self, seq: int) -> int:
        """Ordinal of the frame holding ``seq`` (frames are in seq order)."""
        firsts = self._first_seqs
        if len(firsts) != len(self.frames):
            firsts[:] = [f.first_seq for f in self.frames]
        return bisect.bisect_right(firsts, seq) - 1

    # -- persistence ---------------------------------------------------------

    def to_bytes(self, key: NodeKey) -> bytes:
        body = msgpack.packb(
            {
                "v": INDEX_VERSION,
                "name": self.name,
                "header_mac": self.header_mac,
                "size": self.size,
                "last_sig": self.last_sig,
                "last_mac": self.last_mac,
                "frames": [[f.offset, f.first_seq, f.count, f.min_ts, f.max_ts] for f in self.frames],
                "damaged": self.damaged,
            },
            use_bin_type=True,
        )
        return body + key.mac(b"index", body)

    @classmethod
    def from_bytes(cls, raw: bytes, key: NodeKey) -> SegmentIndex | None:
        """Decode a stored index; None if it fails its MAC or does not parse."""
        if len(raw) < _MAC:
            return None
        body, mac = raw[:-_MAC], raw[-_MAC:]
        if key.mac(b"index", body) != mac:
            return None
        try:
            d = msgpack.unpackb(body, raw=False, strict_map_key=False)
            if not isinstance(d, dict) or d.get("v") != INDEX_VERSION:
                return None
            idx = cls(d["name"], d["header_mac"], d["size"], last_sig=d["last_sig"], last_mac=d["last_mac"])
            idx.frames = [FrameRow(*r) for r in d["frames"]]
            idx.damaged = {int(k): v for k, v in d.get("damaged", {}).items()}
            idx._recount()
            return idx
        except (ValueError, KeyError, TypeError, msgpack.UnpackException):
            return None


def index_path(seg_path: Path) -> Path:
    return seg_path.with_suffix(INDEX_SUFFIX)
