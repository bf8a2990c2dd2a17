"""The catalogue of one node's segment files: what each holds, indexed and checked.

``Catalog.infos()`` lists ``segments/*.seg`` in name (log) order and returns a
:class:`SegmentInfo` per file: its verified header (or the problem with it),
its time index (``engine.index``: one row per frame, damaged frames marked)
and any incomplete tail.  Indexing a segment walks its frames and checks each
one (checksum, chained MAC, records decode).

A segment's index is cached in memory and, for sealed segments, in a MAC'd
``.idx`` sidecar (bound to the segment's name, size and header MAC).  The
in-memory cache is keyed by the file's identity: inode, size, modification
and change time.  Writing to a file or renaming one changes its change time
(``ctime``), which only the kernel sets: whoever could fake it could read the
node key as well.  So a file edited or swapped under a running reader is
indexed again, never served from a stale entry.  Indexes only say where to
look: every frame a read returns is checked again when it is read.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import msgpack

from auditlog.engine.chain import NodeKey
from auditlog.engine.datadir import DataDir, Node, write_atomic
from auditlog.engine.entry import R_SIG
from auditlog.engine.frame import COMPRESSED_FROM, FrameError
from auditlog.engine.index import FrameRow, SegmentIndex, index_path
from auditlog.engine.segment import (
    MAX_HEADER,
    SegmentData,
    SegmentHeader,
    SegmentHeaderError,
    insert_successor,
    list_segments,
    parse_segment_header,
    seq_from_name,
    walk_frames,
    with_head,
)

#: an active segment's index goes to its ``.idx`` once this many frames (and a
#: quarter more than last time) are new, so the next process need not walk them
PREFIX_FRAMES = 64


def unpack_records(payload: bytes):
    return msgpack.unpackb(payload, use_list=False, raw=False, strict_map_key=True)


@dataclass
class Problem:
    """Something wrong with a segment file as a whole (data, not an exception)."""

    kind: str
    seq_from: int | None
    seq_to: int | None
    segment: str
    detail: str


@dataclass
class SegmentInfo:
    path: Path
    header: SegmentHeader | None
    index: SegmentIndex | None
    problem: Problem | None = None  # header unreadable / foreign / misnamed
    tail: tuple[int, str] | None = None  # (offset, detail) of an incomplete last frame
    file_size: int = 0  # size of the file when it was indexed
    ident: tuple | None = None  # (inode, size, mtime, ctime) when it was indexed

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def usable(self) -> bool:
        """A header of ours, for this node, under its own name: its frames are in log order."""
        return self.header is not None and self.problem is None and self.index is not None

    @property
    def version(self) -> int:
        return self.header.version if self.header is not None else 0

    @property
    def first_seq(self) -> int:
        if self.header is not None:
            return self.header.first_seq
        return seq_from_name(self.path.name) or 0

    @property
    def last_seq(self) -> int:
        if self.index is not None and self.index.frames:
            row = self.index.frames[-1]
            return row.first_seq + max(row.count, 1) - 1
        return self.first_seq - 1

    @property
    def last_sig(self) -> bytes:
        """Signature of the last entry (b"" when the last frame is damaged: unknown);
        the header's ``prev_sig`` for a segment without frames."""
        if self.index is not None and self.index.frames:
            return self.index.last_sig
        return self.header.prev_sig if self.header else b""

    @property
    def last_mac(self) -> bytes:
        """MAC of the last frame (b"" after bytes that are no frame: unknown); the
        header MAC for a segment without frames."""
        if self.index is not None and self.index.frames:
            return self.index.last_mac
        return self.header.mac if self.header else b""


def file_ident(st: os.stat_result) -> tuple:
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def index_segment(
    path: Path, key: NodeKey, node: str, upto: int | None = None, resume: SegmentIndex | None = None
) -> SegmentInfo:
    """Walk a segment's frames (from where ``resume`` stopped) and index them."""
    with SegmentData(path) as sd:
        data = sd.data
        size = sd.size if upto is None else min(upto, sd.size)
        try:
            header = parse_segment_header(data[:MAX_HEADER], key)
        except SegmentHeaderError as e:
            return SegmentInfo(
                path,
                None,
                None,
                Problem(e.kind, seq_from_name(path.name), None, path.name, e.detail),
                file_size=sd.size,
            )
        problem = None
        if header.node != node:
            problem = Problem(
                "foreign_segment",
                header.first_seq,
                None,
                path.name,
                f"segment belongs to node {header.node!r}, not {node!r}",
            )
        elif seq_from_name(path.name) != header.first_seq:
            problem = Problem(
                "segment_misnamed",
                header.first_seq,
                None,
                path.name,
                f"file name does not match the first seq {header.first_seq} in its header",
            )
        if resume is not None and resume.header_mac == header.mac and resume.size <= size and not resume.damaged:
            idx = resume
            start = idx.size
            prev_mac = idx.last_mac or header.mac
        else:
            idx = SegmentIndex(path.name, header.mac, header.size)
            start = header.size
            prev_mac = header.mac
        tail = None
        fallback: dict[int, int | None] = {}  # damaged row -> its header's seq_to, if no frame after closes it
        last_good_ts = idx.verified_hi if idx.verified_hi is not None else header.created_us
        for fr in walk_frames(data, start, prev_mac, key, size, version=header.version):
            if fr.problem == "truncated":
                tail = (fr.offset, fr.detail)
                break
            if fr.problem is None:
                try:
                    recs = unpack_records(fr.plain())
                    ok = (
                        isinstance(recs, tuple)
                        and len(recs) == fr.header.count
                        and all(isinstance(r, tuple) and len(r) == 11 for r in recs)
                    )
                except (FrameError, ValueError, TypeError, msgpack.UnpackException):
                    ok = False
                if ok:
                    h = fr.header
                    idx.add_frame(FrameRow(fr.offset, h.first_seq, h.count, h.min_ts, h.max_ts))
                    idx.last_sig = recs[-1][R_SIG]
                    idx.last_mac = fr.mac
                    last_good_ts = max(last_good_ts, h.max_ts)
                    idx.size = fr.end
                    continue
                fr.problem, fr.detail = "undecodable", f"frame at offset {fr.offset} does not decode"
            h = fr.header
            expected = (idx.frames[-1].first_seq + max(idx.frames[-1].count, 1)) if idx.frames else header.first_seq
            if h is not None:
                first, count = h.first_seq, h.count
                seq_to = first + count - 1
                if fr.problem == "mac_mismatch":
                    # the payload still matches the checksum in the header, so the header
                    # (which only the MAC covers) is the suspect: the records say which
                    # seqs the damage concerns, or (a compressed payload is not opened
                    # unverified) the frames around it do
                    found = record_seq_range(fr.payload, fr.version)
                    if found is not None:
                        first, count = found
                        seq_to = first + count - 1
                    else:
                        if first != expected:
                            seq_to = None
                        fallback[len(idx.frames)] = seq_to
                        first, seq_to = expected, None
                idx.last_mac = fr.mac or idx.last_mac
            else:
                first, count, seq_to = expected, 0, None
            idx.add_damaged(
                FrameRow(fr.offset, first, count, last_good_ts, last_good_ts), fr.problem, fr.detail, first, seq_to
            )
            idx.size = fr.end
            # signatures of what follows cannot be chained from a damaged frame
            idx.last_sig = b""
        idx.settle_damage()
        _close_stretches(idx, fallback)
        return SegmentInfo(path, header, idx, problem, tail, sd.size)


def _close_stretches(idx: SegmentIndex, fallback: dict[int, int | None]) -> None:
    """A stretch whose end is unknown (no frame at all, or a header that did not verify)
    holds what lies between the frames around it; with no frame after it, the end its
    header claims (``fallback``) when that header starts where the stretch does."""
    for o, dmg in idx.damaged.items():
        if dmg[3] is None and o + 1 < len(idx.frames):
            nxt = idx.frames[o + 1].first_seq
            if nxt - 1 >= dmg[2]:
                dmg[3] = nxt - 1
        if o in fallback:
            if dmg[3] is None:
                dmg[3] = fallback[o]
            row = idx.frames[o]
            row.count = 0 if dmg[3] is None else dmg[3] - dmg[2] + 1


def record_seq_range(payload: bytes, version: int) -> tuple[int, int] | None:
    """(first seq, count) the records of a payload that matches its checksum carry, if
    they decode and are contiguous.  A compressed payload whose MAC did not verify is
    never decompressed: None."""
    if version >= COMPRESSED_FROM:
        return None
    try:
        recs = unpack_records(payload)
    except (ValueError, TypeError, msgpack.UnpackException):
        return None
    if not (
        isinstance(recs, tuple)
        and recs
        and all(isinstance(r, tuple) and len(r) == 11 and type(r[0]) is int for r in recs)
    ):
        return None
    first = recs[0][0]
    if first < 1 or any(r[0] != first + i for i, r in enumerate(recs)):
        return None
    return first, len(recs)


class Catalog:
    """The segment files of one node, indexed (no lock needed; thread-safe)."""

    def __init__(self, data_dir: DataDir, node: Node):
        self.data_dir = data_dir
        self.node = node.node_id
        self.key = node.key
        self._index_key = node.key.derive(b"index")
        self._cache: dict[str, SegmentInfo] = {}
        #: frames of the active segment's last written (or loaded) prefix index, by name
        self._saved: dict[str, int] = {}
        self._lock = threading.Lock()
        #: the first segment of the last listing that was checked for a missed head
        self._head: str | None = None
        #: set by an in-process writer: returns its live SegmentInfo for the active segment
        self.live_active: Callable[[], SegmentInfo | None] | None = None

    def infos(self) -> list[SegmentInfo]:
        """Every segment file, indexed, in name order; the last is the active one."""
        seg_dir = self.data_dir.segments
        paths = with_head(seg_dir, list_segments(seg_dir), self._head)
        self._head = paths[0].name if paths else None
        live = self.live_active() if self.live_active else None
        infos = []
        i = 0
        while i < len(paths):
            p = paths[i]
            i += 1
            if live is not None and live.path == p:
                info = live  # the writer's own, always current
            else:
                try:
                    info = self._info(p, sealed=i < len(paths))
                except FileNotFoundError:
                    continue  # dropped by retention while we listed
            infos.append(info)
            if i < len(paths) and info.header is not None and info.index is not None:
                # the listing may have missed the next segment: it is named after the seq
                # that follows this one's last (past the listing's end, a read sees the
                # prefix it listed and never chases the writer)
                insert_successor(seg_dir, paths, info.last_seq + 1, at=i)
        with self._lock:
            names = {p.name for p in paths}
            for n in [n for n in self._cache if n not in names]:
                del self._cache[n]
            for n in [n for n in self._saved if n not in names]:
                del self._saved[n]
        return infos

    def forget(self, name: str) -> None:
        with self._lock:
            self._cache.pop(name, None)

    def _info(self, path: Path, sealed: bool) -> SegmentInfo:
        st = path.stat()
        ident = file_ident(st)
        with self._lock:
            cached = self._cache.get(path.name)
        if cached is not None and cached.ident == ident:
            return cached
        prefix = None
        if (
            cached is not None
            and not sealed
            and cached.index is not None
            and cached.ident[0] == ident[0]
            and cached.tail is None
        ):
            # an active segment a writer elsewhere appends to: index only what is new
            resume = cached.index
        else:
            loaded = self._load_sidecar(path, st.st_size)
            if loaded is not None and loaded.index.size == st.st_size and sealed:
                loaded.file_size, loaded.ident = st.st_size, ident
                with self._lock:
                    self._cache[path.name] = loaded
                return loaded
            # the sidecar of the segment's first frames (written while it was active):
            # walk on from there
            prefix = loaded.index if loaded is not None and not loaded.index.damaged else None
            resume = prefix
        saved = len(prefix.frames) if prefix is not None else self._saved.get(path.name, 0)
        info = index_segment(path, self.key, self.node, resume=resume)
        if info.usable and info.tail is None:
            n = len(info.index.frames)
            if sealed:
                self._save_sidecar(path, info.index)
            elif not sealed and n - saved >= max(PREFIX_FRAMES, saved // 4) and not info.index.damaged:
                # the frames so far, for the next process that reads this segment
                self._save_sidecar(path, info.index)
                saved = n
        self._saved[path.name] = saved
        info.file_size = st.st_size
        info.ident = ident
        with self._lock:
            self._cache[path.name] = info
        return info

    def open_sealed(self, path: Path) -> SegmentInfo:
        """A sealed segment that is not in ``segments/`` (a copy fetched from the archive),
        indexed from its ``.idx`` when that describes the whole file, else by walking it."""
        size = path.stat().st_size
        loaded = self._load_sidecar(path, size)
        if loaded is not None and loaded.index.size == size:
            loaded.file_size = size
            return loaded
        return index_segment(path, self.key, self.node)

    def _load_sidecar(self, path: Path, size: int) -> SegmentInfo | None:
        """The segment's ``.idx`` when it describes the segment as it is: all of it, or
        (an index written while the segment was active) its first frames, whose last
        one ends with the very MAC the index says."""
        try:
            raw = index_path(path).read_bytes()
        except OSError:
            return None
        idx = SegmentIndex.from_bytes(raw, self._index_key)
        if idx is None or idx.size > size or idx.name != path.name:
            return None
        try:
            with SegmentData(path) as sd:
                header = parse_segment_header(sd.data[:MAX_HEADER], self.key)
                if idx.size < size and (
                    not idx.frames
                    or not idx.last_mac
                    or sd.data[idx.size - len(idx.last_mac) : idx.size] != idx.last_mac
                ):
                    return None
        except SegmentHeaderError:
            return None
        if header.mac != idx.header_mac or header.node != self.node or seq_from_name(path.name) != header.first_seq:
            return None
        return SegmentInfo(path, header, idx)

    def _save_sidecar(self, path: Path, idx: SegmentIndex) -> None:
        try:
            write_atomic(index_path(path), idx.to_bytes(self._index_key), sync=False)
        except OSError:
            pass  # derived data: a read-only dir just means indexing again next time
