"""Derived, rebuildable lookup data: the per-segment index and the manifest.

``<seg>.idx`` holds, for one sealed segment, the sparse time index (one row
per frame: offset, first seq, count, min ts, max ts) and a term index (for each
of user/action/target/domain/ip/recipient: value -> frame ordinals) used by
selective queries.  ``MANIFEST`` summarises every sealed segment (seq range,
time range, size) so a query opens only the segments it needs.

Both are MAC'd with a key derived from the node key and bound to the segment's
size and header MAC.  Anything missing, damaged or inconsistent is rebuilt from
the ``.seg`` file and never trusted: the signed record stream is the truth.
"""

from __future__ import annotations

import bisect
import os
from dataclasses import dataclass, field
from pathlib import Path

import msgpack

from engine.chain import NodeKey
from engine.entry import R_ACTION, R_DETAILS, R_DOMAIN, R_IP, R_TARGET, R_USER

INDEX_SUFFIX = ".idx"
MANIFEST_NAME = "MANIFEST"
INDEX_VERSION = 3   # 3: term postings packed per field (1: plain maps)
MANIFEST_VERSION = 1
TERM_FIELDS = ("user", "action", "target", "domain", "ip", "recipient")
_RECORD_TERMS = (("user", R_USER), ("action", R_ACTION), ("target", R_TARGET), ("domain", R_DOMAIN),
                 ("ip", R_IP))
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
    terms: dict[str, dict[str, list[int]]] = field(
        default_factory=lambda: {f: {} for f in TERM_FIELDS})
    last_sig: bytes = b""
    last_mac: bytes = b""
    #: frame ordinals whose bytes did not verify: ordinal -> [kind, detail, seq_from, seq_to].
    #: Every scan that reaches them visits them, whatever its term filters.
    damaged: dict[int, list] = field(default_factory=dict)
    # columns kept for bisect
    _max_ts: list[int] = field(default_factory=list)

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

    def add_frame(self, row: FrameRow, records: list | tuple) -> None:
        ordinal = len(self.frames)
        self.frames.append(row)
        # "largest ts so far": stays monotonic even if a frame's ts went backwards
        self._max_ts.append(max(row.max_ts, self._max_ts[-1]) if self._max_ts else row.max_ts)
        t = self.terms
        # per frame, each distinct value once: far cheaper than a call per entry
        for fname, pos in _RECORD_TERMS:
            idx = t[fname]
            if type(idx) is bytes:
                idx = self.field(fname)
            for v in {r[pos] for r in records}:
                if v is None:
                    continue
                lst = idx.get(v)
                if lst is None:
                    idx[v] = [ordinal]
                elif lst[-1] != ordinal:
                    lst.append(ordinal)
        tr = t["recipient"] if type(t["recipient"]) is not bytes else self.field("recipient")
        for rec in records:
            d = rec[R_DETAILS]
            if d:
                r = d.get("recipient") if isinstance(d, dict) else None
                if isinstance(r, str):
                    _note(tr, r, ordinal)
                elif isinstance(r, (list, tuple)):   # a multi-recipient mail (query.filters agrees)
                    for v in r:
                        if isinstance(v, str):
                            _note(tr, v, ordinal)

    def field(self, fname: str) -> dict:
        """The postings of one field, decoded on first use (stored indexes keep
        each field packed until a query needs it: a time-range scan never does)."""
        v = self.terms.get(fname)
        if type(v) is bytes:
            try:
                v = msgpack.unpackb(v, raw=False, use_list=True)
                if not isinstance(v, dict):
                    v = {}
            except (ValueError, TypeError, msgpack.UnpackException):
                v = {}
            self.terms[fname] = v
        return v if v is not None else {}

    def add_damaged(self, row: FrameRow, kind: str, detail: str, seq_from: int, seq_to: int | None) -> None:
        self.damaged[len(self.frames)] = [kind, detail, seq_from, seq_to]
        self.frames.append(row)
        self._max_ts.append(max(row.max_ts, self._max_ts[-1]) if self._max_ts else row.max_ts)

    def first_frame_at(self, ts: int) -> int:
        """Ordinal of the first frame that may hold an entry with ts >= ``ts``."""
        return bisect.bisect_left(self._max_ts, ts)

    def frames_matching(self, terms: dict[str, frozenset[str]]) -> list[int] | None:
        """Frame ordinals that may hold a match for every term constraint (None = all)."""
        result: set[int] | None = None
        for fname, values in terms.items():
            if fname not in self.terms:
                continue
            idx = self.field(fname)
            hits: set[int] = set()
            for v in values:
                hits.update(idx.get(v, ()))
            result = hits if result is None else (result & hits)
            if not result:
                result = set()
                break
        if result is None:
            return None
        return sorted(result | set(self.damaged))

    # -- persistence ---------------------------------------------------------

    def to_bytes(self, key: NodeKey) -> bytes:
        body = msgpack.packb({
            "v": INDEX_VERSION, "name": self.name, "header_mac": self.header_mac,
            "size": self.size, "last_sig": self.last_sig, "last_mac": self.last_mac,
            "frames": [[f.offset, f.first_seq, f.count, f.min_ts, f.max_ts] for f in self.frames],
            "terms": {f: (v if type(v) is bytes else msgpack.packb(v, use_bin_type=True))
                      for f, v in self.terms.items()},
            "damaged": self.damaged,
        }, use_bin_type=True)
        return body + key.mac(b"index", body)

    @classmethod
    def from_bytes(cls, raw: bytes, key: NodeKey) -> "SegmentIndex | None":
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
            idx = cls(d["name"], d["header_mac"], d["size"], last_sig=d["last_sig"],
                      last_mac=d["last_mac"])
            idx.frames = [FrameRow(*r) for r in d["frames"]]
            running = None
            for f in idx.frames:
                running = f.max_ts if running is None else max(running, f.max_ts)
                idx._max_ts.append(running)
            terms = d["terms"]
            idx.terms = {f: terms[f] if isinstance(terms.get(f), bytes) else {} for f in TERM_FIELDS}
            idx.damaged = {int(k): v for k, v in d.get("damaged", {}).items()}
            return idx
        except (ValueError, KeyError, TypeError, msgpack.UnpackException):
            return None


def _note(index: dict, value, ordinal: int) -> None:
    lst = index.get(value)
    if lst is None:
        index[value] = [ordinal]
    elif lst[-1] != ordinal:
        lst.append(ordinal)


def index_path(seg_path: Path) -> Path:
    return seg_path.with_suffix(INDEX_SUFFIX)


def write_atomic(path: Path, data: bytes, sync: bool = True) -> None:
    """Write via a temp file and rename: a crash leaves the old or the new file, never half."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        if sync:
            f.flush()
            os.fsync(f.fileno())
    os.replace(tmp, path)


@dataclass
class ManifestRow:
    name: str
    first_seq: int
    last_seq: int
    count: int
    min_ts: int | None
    max_ts: int | None
    size: int
    header_mac: bytes


def manifest_row(idx: SegmentIndex, first_seq: int) -> ManifestRow:
    return ManifestRow(idx.name, first_seq, idx.last_seq if idx.last_seq is not None else first_seq - 1,
                       idx.count, idx.min_ts, idx.max_ts, idx.size, idx.header_mac)


def save_manifest(seg_dir: Path, rows: list[ManifestRow], key: NodeKey) -> None:
    body = msgpack.packb({"v": MANIFEST_VERSION, "segments": [
        [r.name, r.first_seq, r.last_seq, r.count, r.min_ts, r.max_ts, r.size, r.header_mac]
        for r in rows]}, use_bin_type=True)
    write_atomic(seg_dir / MANIFEST_NAME, body + key.mac(b"manifest", body))


def load_manifest(seg_dir: Path, key: NodeKey) -> dict[str, ManifestRow]:
    """Rows by segment name; empty when the manifest is missing or untrustworthy."""
    try:
        raw = (seg_dir / MANIFEST_NAME).read_bytes()
    except OSError:
        return {}
    if len(raw) < _MAC or key.mac(b"manifest", raw[:-_MAC]) != raw[-_MAC:]:
        return {}
    try:
        d = msgpack.unpackb(raw[:-_MAC], raw=False)
        if not isinstance(d, dict) or d.get("v") != MANIFEST_VERSION:
            return {}
        return {r[0]: ManifestRow(*r) for r in d["segments"]}
    except (ValueError, KeyError, TypeError, msgpack.UnpackException):
        return {}
