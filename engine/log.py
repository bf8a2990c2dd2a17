"""NodeLog: one node's segments read in order, verified as they are read.

The reader never needs the writer's lock.  It lists the segment files once per
scan and reads each at the size it had when opened, so it sees a consistent,
committed prefix while a writer appends.  Every frame returned is checked
(xxhash + chained MAC); damage comes back as data: entries marked
``integrity="violation"`` or, for stretches that cannot be decoded, one marker
entry per stretch.  Indexes only say where to look; they are never trusted for
what is there.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from typing import Callable, Iterator

import msgpack

from engine.chain import NodeKey
from engine.datadir import DataDir, Node, write_atomic
from engine.entry import R_SIG, Entry, VerifiedRecords, canonical_bytes
from engine.frame import HEADER_SIZE, MAC_SIZE, FrameError, check_frame, parse_header
from engine.lines import LineFiles, RenderedFrame
from engine.index import FrameRow, SegmentIndex, index_path
from engine.terms import TERM_FIELDS, TermIndex, terms_path
from engine.segment import (SegmentData, SegmentHeader, SegmentHeaderError, list_segments,
                            parse_segment_header, seq_from_name, walk_frames, MAX_HEADER)

FAR_FUTURE = 2**62
#: postings kept decoded in memory, all segments together (least recently used go first)
TERMS_CACHE_BYTES = 256 * 1024 * 1024
#: no record is larger than this (details are bounded far below it)
MAX_RECORD_PEEK = 1024 * 1024


def _unpack(payload: bytes):
    return msgpack.unpackb(payload, use_list=False, raw=False, strict_map_key=True)


@dataclass
class Problem:
    """A structural finding about the segment sequence (data, not an exception)."""

    kind: str
    seq_from: int | None
    seq_to: int | None
    segment: str
    detail: str
    ts_hint: int = 0


@dataclass
class SegmentInfo:
    path: Path
    header: SegmentHeader | None
    index: SegmentIndex | None
    problem: Problem | None = None       # header unreadable / foreign / misnamed
    tail: tuple[int, str] | None = None   # (offset, detail) of an incomplete last frame
    file_size: int = 0                    # size of the file when it was indexed

    @property
    def name(self) -> str:
        return self.path.name

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
        if self.index is not None and self.index.last_sig:
            return self.index.last_sig
        return self.header.prev_sig if self.header else b""

    @property
    def last_mac(self) -> bytes:
        if self.index is not None and self.index.last_mac:
            return self.index.last_mac
        return self.header.mac if self.header else b""


def index_segment(path: Path, key: NodeKey, node: str, upto: int | None = None,
                  resume: SegmentIndex | None = None) -> SegmentInfo:
    """Walk a segment's frames (from where ``resume`` stopped) and index them."""
    try:
        sd = SegmentData(path)
    except FileNotFoundError:
        raise
    with sd:
        data = sd.data
        size = sd.size if upto is None else min(upto, sd.size)
        try:
            header = parse_segment_header(data[:MAX_HEADER], key)
        except SegmentHeaderError as e:
            return SegmentInfo(path, None, None, Problem(
                e.kind, seq_from_name(path.name), None, path.name, e.detail))
        problem = None
        if header.node != node:
            problem = Problem("foreign_segment", header.first_seq, None, path.name,
                              f"segment belongs to node {header.node!r}, not {node!r}")
        elif seq_from_name(path.name) != header.first_seq:
            problem = Problem("segment_misnamed", header.first_seq, None, path.name,
                              f"file name does not match the first seq {header.first_seq} in its header")
        if resume is not None and resume.header_mac == header.mac:
            idx = resume
            start = idx.size
            prev_mac = idx.last_mac or header.mac
        else:
            idx = SegmentIndex(path.name, header.mac, header.size)
            start = header.size
            prev_mac = header.mac
        if start > size:   # the file shrank under us: start again
            idx = SegmentIndex(path.name, header.mac, header.size)
            start, prev_mac = header.size, header.mac
        expected_seq = (idx.last_seq + 1) if idx.frames else header.first_seq
        last_ts = idx.max_ts if idx.frames else header.created_us
        tail = None
        stretch: list | None = None   # an open-ended damaged stretch (not a frame at all)

        def close_stretch(next_first: int) -> None:
            # the stretch held what lies between the frames around it
            if stretch is not None and next_first - 1 >= stretch[2]:
                stretch[3] = next_first - 1

        for fr in walk_frames(data, start, prev_mac, key, size):
            if fr.problem == "truncated":
                tail = (fr.offset, fr.detail)
                break
            if fr.header is not None:
                close_stretch(fr.header.first_seq)
                stretch = None
            if fr.problem is None:
                try:
                    recs = _unpack(fr.payload)
                    ok = (isinstance(recs, tuple) and len(recs) == fr.header.count
                          and all(isinstance(r, tuple) and len(r) == 11 for r in recs))
                except (ValueError, msgpack.UnpackException):
                    ok = False
                if ok:
                    h = fr.header
                    idx.add_frame(FrameRow(fr.offset, h.first_seq, h.count, h.min_ts, h.max_ts))
                    idx.last_sig = recs[-1][R_SIG]
                    idx.last_mac = fr.mac
                    expected_seq = h.first_seq + h.count
                    last_ts = max(last_ts, h.max_ts)
                    idx.size = fr.end
                    continue
                fr.problem, fr.detail = "undecodable", f"frame at offset {fr.offset} does not decode"
            h = fr.header
            if h is not None:
                first, count = h.first_seq, h.count
                if fr.problem == "mac_mismatch":
                    # the payload still matches the checksum in the header, so the header
                    # (which only the MAC covers) is the suspect: the records say which
                    # seqs the damage concerns
                    first, count = _record_seq_range(fr.payload) or (first, count)
                row = FrameRow(fr.offset, first, count, min(h.min_ts, last_ts), max(h.max_ts, last_ts))
                seq_to = first + count - 1
                idx.last_mac = fr.mac or idx.last_mac
                expected_seq = first + count
            else:
                row = FrameRow(fr.offset, expected_seq, 0, last_ts, last_ts)
                seq_to = None
            idx.add_damaged(row, fr.problem, fr.detail, row.first_seq, seq_to)
            if h is None:
                stretch = idx.damaged[len(idx.frames) - 1]
            idx.size = fr.end
            # signatures of what follows cannot be chained from a damaged frame
            idx.last_sig = b""
        return SegmentInfo(path, header, idx, problem, tail)


def _record_seq_range(payload: bytes) -> tuple[int, int] | None:
    """(first seq, count) the records of a payload carry, if they decode and are contiguous."""
    try:
        recs = _unpack(payload)
    except (ValueError, msgpack.UnpackException):
        return None
    if not (isinstance(recs, tuple) and recs and all(
            isinstance(r, tuple) and len(r) == 11 and type(r[0]) is int for r in recs)):
        return None
    first = recs[0][0]
    if first < 1 or any(r[0] != first + i for i, r in enumerate(recs)):
        return None
    return first, len(recs)


class NodeLog:
    """Read access to one node's log (no lock needed)."""

    def __init__(self, data_dir: DataDir, node: Node):
        self.data_dir = data_dir
        self.node = node.node_id
        self.key = node.key
        self.sign = node.key.signer()
        self._index_key = node.key.derive(b"index")
        self._cache: dict[str, SegmentInfo] = {}
        self._lock = threading.Lock()
        self._terms: OrderedDict[str, TermIndex] = OrderedDict()
        self._terms_lock = threading.Lock()
        # signed bytes = 0x9b || msgpack(node) || stored record minus its array header and signature
        self._canon_prefix = b"\x9b" + msgpack.packb(node.node_id)
        #: rendered lines kept beside the segments (set by the server; see engine.lines)
        self.line_files: LineFiles | None = None
        #: set by an in-process writer: returns its live SegmentInfo for the active segment
        self.live_active: Callable[[], SegmentInfo | None] | None = None

    # -- segment discovery -----------------------------------------------------

    def segment_infos(self) -> list[SegmentInfo]:
        """Every segment, indexed; the last one is the active (growing) segment."""
        paths = list_segments(self.data_dir.segments)
        live = self.live_active() if self.live_active else None
        infos = []
        for i, p in enumerate(paths):
            last = i == len(paths) - 1
            if last and live is not None and live.path == p:
                infos.append(live)
                continue
            try:
                infos.append(self._info(p, sealed=not last))
            except FileNotFoundError:
                continue   # dropped by retention while we listed
        with self._lock:
            names = {p.name for p in paths}
            for n in list(self._cache):
                if n not in names:
                    del self._cache[n]
        if self.line_files is not None:
            self.line_files.forget(names)
        return infos

    def _info(self, path: Path, sealed: bool) -> SegmentInfo:
        st = path.stat()
        with self._lock:
            cached = self._cache.get(path.name)
        if cached is not None and cached.index is not None and cached.index.size == st.st_size \
                and cached.tail is None:
            return cached
        if cached is not None and cached.header is None and cached.file_size == st.st_size:
            return cached
        info = None
        if sealed and cached is None:
            info = self._load_sidecar(path, st.st_size)
        if info is None:
            resume = cached.index if (cached is not None and not sealed and cached.index) else None
            info = index_segment(path, self.key, self.node, resume=resume)
            if sealed and info.index is not None and info.problem is None and info.tail is None:
                self._save_sidecar(path, info.index)
        info.file_size = st.st_size
        with self._lock:
            self._cache[path.name] = info
        return info

    def _load_sidecar(self, path: Path, size: int) -> SegmentInfo | None:
        try:
            raw = index_path(path).read_bytes()
        except OSError:
            return None
        idx = SegmentIndex.from_bytes(raw, self._index_key)
        if idx is None or idx.size != size or idx.name != path.name:
            return None
        try:
            with SegmentData(path) as sd:
                header = parse_segment_header(sd.data[:MAX_HEADER], self.key)
        except SegmentHeaderError:
            return None
        if header.mac != idx.header_mac or header.node != self.node \
                or seq_from_name(path.name) != header.first_seq:
            return None
        return SegmentInfo(path, header, idx)

    def _save_sidecar(self, path: Path, idx: SegmentIndex) -> None:
        try:
            write_atomic(index_path(path), idx.to_bytes(self._index_key), sync=False)
        except OSError:
            pass   # derived data: a read-only dir just means rebuilding next time

    # -- structure ---------------------------------------------------------------

    def structure_problems(self, infos: list[SegmentInfo]) -> list[Problem]:
        """Findings about the sequence of segments: gaps, overlaps, broken links, head anchor."""
        problems: list[Problem] = []
        prev: SegmentInfo | None = None
        #: findings about segments whose header cannot be read, since ``prev``
        unreadable: list[Problem] = []
        for info in infos:
            if info.problem is not None:
                p = info.problem
                if p.seq_to is None and info.index is not None and info.index.frames:
                    p.seq_to = info.last_seq
                p.ts_hint = info.index.min_ts if (info.index and info.index.frames) else (
                    prev.index.max_ts if prev and prev.index and prev.index.frames else 0) or 0
                problems.append(p)
            if info.header is None:
                if info.problem is not None:
                    unreadable.append(info.problem)
                continue
            h = info.header
            # An unreadable segment whose name says it starts where the next readable
            # one's predecessor ends holds the seqs in between: name that range on it
            # instead of also calling those seqs missing.
            gap_from = 1 if prev is None else prev.last_seq + 1
            accounted = False
            if unreadable and h.first_seq > gap_from:
                for p in unreadable:
                    if p.seq_to is None:
                        p.seq_to = h.first_seq - 1
                accounted = unreadable[0].seq_from == gap_from
            unreadable = []
            if accounted:
                pass
            elif prev is None:
                if h.first_seq != 1 and not self._anchored(infos, h):
                    problems.append(Problem(
                        "segment_missing", 1, h.first_seq - 1, info.name,
                        f"log starts at seq {h.first_seq} and no retention purge accounts for seq 1..{h.first_seq - 1}",
                        info.index.min_ts if info.index and info.index.frames else h.created_us))
            else:
                expected = prev.last_seq + 1
                ts_hint = (prev.index.max_ts if prev.index and prev.index.frames else h.created_us) or 0
                if h.first_seq > expected:
                    problems.append(Problem(
                        "segment_missing", expected, h.first_seq - 1, info.name,
                        f"seq {expected}..{h.first_seq - 1} missing before this segment", ts_hint))
                elif h.first_seq < expected:
                    problems.append(Problem(
                        "segment_duplicate", h.first_seq, min(expected - 1, info.last_seq), info.name,
                        f"segment starts at seq {h.first_seq}, but seq up to {expected - 1} came before it",
                        ts_hint))
                elif prev.header is not None and (h.prev_mac != prev.last_mac or (
                        prev.last_sig and h.prev_sig != prev.last_sig)):
                    problems.append(Problem(
                        "chain_broken", h.first_seq, h.first_seq, info.name,
                        f"segment header does not link to the end of {prev.name}", ts_hint))
            prev = info
        return problems

    def _anchored(self, infos: list[SegmentInfo], head: SegmentHeader) -> bool:
        """Is the log's first seq accounted for by an ``audit.retention_purge`` entry?"""
        for e in self.scan(terms={"action": frozenset(["audit.retention_purge"])}, check_structure=False,
                           infos=infos):
            # only the node's own, intact purge entries count (clients cannot write audit.*)
            if e.integrity != "ok" or e.action != "audit.retention_purge" or e.user != "system":
                continue
            for row in e.details.get("segments", ()):
                # [name, first_seq, last_seq, last_signature hex]
                if len(row) == 4 and row[2] == head.first_seq - 1 and row[3] == head.prev_sig.hex():
                    return True
        return False

    # -- scanning ----------------------------------------------------------------

    def scan(self, from_us: int | None = None, to_us: int | None = None, *,
             terms: dict[str, frozenset[str]] | None = None, order: str = "asc",
             after_seq: int | None = None, predicate: Callable[[Entry], bool] | None = None,
             check_structure: bool = True, infos: list[SegmentInfo] | None = None) -> Iterator[Entry]:
        """Entries with ``from_us <= ts < to_us`` in seq order (``desc`` reverses it).

        ``after_seq`` continues a previous scan: strictly after it in scan order.
        ``terms`` narrows the frames read with the term index (a hint; every
        returned entry still goes through ``predicate``).  Violation markers and
        damaged entries are returned whatever the predicate says.
        """
        return chain.from_iterable(self._scan_batches(from_us, to_us, terms, order, after_seq, predicate,
                                                      check_structure, infos))

    def scan_batches(self, from_us: int | None = None, to_us: int | None = None, *,
                     terms: dict[str, frozenset[str]] | None = None, order: str = "asc",
                     after_seq: int | None = None, predicate: Callable[[Entry], bool] | None = None,
                     records: bool = False, lines: bool = False
                     ) -> Iterator[list[Entry] | VerifiedRecords | RenderedFrame]:
        """The same scan as :meth:`scan`, in batches (about a frame each).

        With ``records=True`` a frame wanted whole, whose MAC verified, comes
        as :class:`VerifiedRecords` (its record tuples, in scan order) instead
        of a list of entries; with ``lines=True`` (and :attr:`line_files` set)
        such a frame comes as a :class:`~engine.lines.RenderedFrame` instead.
        Everything else (damage, markers, frames cut by the range, the
        predicate or ``after_seq``) still comes as entries.
        """
        return self._scan_batches(from_us, to_us, terms, order, after_seq, predicate, True, None,
                                  records, lines and self.line_files is not None)

    def _scan_batches(self, from_us, to_us, terms, order, after_seq, predicate, check_structure,
                      infos, records: bool = False, lines: bool = False
                      ) -> Iterator[list[Entry] | VerifiedRecords | RenderedFrame]:
        """The scan as lists of entries (a frame's worth at a time: cheap per entry)."""
        lo = -FAR_FUTURE if from_us is None else from_us
        hi = FAR_FUTURE if to_us is None else to_us
        if infos is None:
            infos = self.segment_infos()
        desc = order == "desc"
        problems = self.structure_problems(infos) if check_structure else []
        by_segment: dict[str, list[Problem]] = {}
        for p in problems:
            by_segment.setdefault(p.segment, []).append(p)
        seq_ok = (lambda s: True) if after_seq is None else (
            (lambda s: s < after_seq) if desc else (lambda s: s > after_seq))
        ordered = reversed(infos) if desc else infos
        for info in ordered:
            markers = [self._marker(p) for p in by_segment.get(info.name, ())
                       if lo <= p.ts_hint < hi or p.ts_hint == 0]
            markers = [m for m in markers if seq_ok(m.seq)]
            if not desc and markers:
                yield markers
            if info.index is not None and info.header is not None and self._may_hold(
                    info, lo, hi, after_seq, desc):
                yield from self._scan_segment(info, lo, hi, terms, desc, seq_ok, predicate, after_seq,
                                              sealed=info is not infos[-1], records=records,
                                              lines=lines)
            if desc and markers:
                yield markers[::-1]

    @staticmethod
    def _may_hold(info: SegmentInfo, lo: int, hi: int, after_seq: int | None, desc: bool) -> bool:
        """Can this segment hold anything the scan wants?  (Damage is always visited.)"""
        idx = info.index
        if not idx.frames or idx.damaged:
            return bool(idx.frames)
        if idx.max_ts < lo or idx.min_ts >= hi:
            return False
        if after_seq is not None:
            return info.first_seq < after_seq if desc else info.last_seq > after_seq
        return True

    def _marker(self, p: Problem) -> Entry:
        rng = f"seq {p.seq_from}..{p.seq_to}" if p.seq_to is not None else f"from seq {p.seq_from}"
        return Entry.marker(self.node, p.seq_from or 0, p.ts_hint or 0,
                            f"{p.kind}: {rng} in {p.segment}: {p.detail}")

    def _scan_segment(self, info: SegmentInfo, lo: int, hi: int, terms, desc: bool,
                      seq_ok, predicate, after_seq: int | None = None,
                      sealed: bool = True, records: bool = False, lines: bool = False
                      ) -> Iterator[list[Entry] | VerifiedRecords | RenderedFrame]:
        idx = info.index
        nframes = len(idx.frames)
        if nframes == 0:
            return
        start = idx.first_frame_at(lo)
        stop = start
        frames = idx.frames
        while stop < nframes and frames[stop].min_ts < hi:
            stop += 1
        candidates = list(range(start, stop))
        for d in idx.damaged:
            if start - 1 <= d <= stop and d not in candidates and 0 <= d < nframes:
                candidates.append(d)
        candidates.sort(reverse=desc)
        if not candidates:
            return
        node = self.node
        try:
            sd = SegmentData(info.path)
        except FileNotFoundError:
            return
        with sd:
            data = sd.data
            if lines:
                self.line_files.begin(info.path)
            if terms:
                hits = self._term_hits(info, data, terms, nframes, sealed)
                if isinstance(hits, list):
                    yield from self._scan_hits(info, data, hits, candidates, lo, hi, desc, seq_ok, predicate)
                    return
                if isinstance(hits, set):   # many hits: read whole frames, fewer of them
                    candidates = [c for c in candidates if c in hits or c in idx.damaged]
            for o in candidates:
                row = frames[o]
                if o in idx.damaged:
                    kind, detail, sf, st = idx.damaged[o]
                    if row.count == 0 or kind in ("frame_corrupt", "undecodable"):
                        m = Entry.marker(node, sf, row.min_ts, f"{kind}: " + (
                            f"seq {sf}..{st}" if st is not None else f"from seq {sf}") +
                            f" in {info.name}: {detail}")
                        if seq_ok(m.seq):
                            yield [m]
                        continue
                if not desc and not seq_ok(row.first_seq + row.count - 1):
                    continue
                if desc and not seq_ok(row.first_seq):
                    continue
                whole = lo <= row.min_ts and row.max_ts < hi
                all_wanted = whole and predicate is None and (after_seq is None or (
                    row.first_seq + row.count - 1 < after_seq if desc else row.first_seq > after_seq))
                if lines and all_wanted:
                    rendered = self._frame_lines(info, data, o, row)
                    if rendered is not None:
                        yield rendered.reversed() if desc else rendered
                        continue
                entries = self._read_frame(info, data, o, row, records and all_wanted)
                if type(entries) is VerifiedRecords:
                    yield VerifiedRecords(entries[::-1]) if desc else entries
                    continue
                if desc:
                    entries.reverse()
                if all_wanted:
                    yield entries   # the whole frame is wanted: no per-entry checks
                    continue
                out = []
                for e in entries:
                    if not seq_ok(e.seq):
                        continue
                    if e.integrity == "ok":
                        if not whole and not (lo <= e.ts < hi):
                            continue
                        if predicate is not None and not predicate(e):
                            continue
                    out.append(e)
                if out:
                    yield out

    # -- selective reads through term postings -----------------------------------

    def _term_hits(self, info: SegmentInfo, data, terms, nframes: int, sealed: bool):
        """Postings matching ``terms``: a list of (seq, file offset), a set of frame
        ordinals when so many match that whole frames are cheaper, or None."""
        ti = self._terms_for(info, data, nframes, sealed, tuple(terms))
        if ti is None:
            return None
        found = ti.lookup(terms)
        if found is None:
            return None
        total = sum(f.count for f in info.index.frames[:nframes])
        first = info.header.first_seq
        if len(found) > max(256, total // 16):
            return {info.index.frame_of_seq(first + so) for so, _ in found}
        return [(first + so, off) for so, off in found]

    def _terms_for(self, info: SegmentInfo, data, nframes: int, sealed: bool,
                   fields=()) -> TermIndex | None:
        """Postings of a segment covering its first ``nframes`` frames.

        Sealed segments are kept in memory as lean copies holding only the
        fields queries asked for (the rest is reloaded from the sidecar when
        needed), within a cache budget; the active segment is kept whole and
        extended as the writer adds frames.
        """
        with self._terms_lock:
            ti = self._terms.get(info.name)
            if ti is not None and (ti.header_mac != info.header.mac
                                   or (sealed and not all(ti.has(f) for f in fields))):
                ti = None
            if ti is not None and (sealed or ti.frames >= nframes):
                self._terms.move_to_end(info.name)
                return ti
            if ti is None and sealed:
                ti = self._load_terms(info)
            if ti is None:
                ti = TermIndex(info.name, info.header.mac, info.header.first_seq)
            if ti.frames < nframes:
                self._extend_terms(ti, info, data, nframes)
                if sealed:
                    try:
                        write_atomic(terms_path(info.path), ti.to_bytes(self._index_key, ti.size), sync=False)
                    except OSError:
                        pass   # derived data: rebuilt next time
            if sealed:
                cached = self._terms.get(info.name)
                keep = set(fields) | ({f for f in TERM_FIELDS if cached.has(f)} if cached is not None
                                      and cached.header_mac == ti.header_mac else set())
                ti = ti.lean(keep)
            self._terms[info.name] = ti
            self._terms.move_to_end(info.name)
            used = 0
            for name in reversed(list(self._terms)):
                used += self._terms[name].approx_bytes()
                if used > TERMS_CACHE_BYTES and name != info.name:
                    del self._terms[name]
            return ti

    def build_missing_terms(self, limit: int = 4) -> int:
        """Write ``.terms`` sidecars for up to ``limit`` sealed segments that lack
        one, so the first selective query after a roll or a restart need not
        build them.  Returns how many were built."""
        built = 0
        infos = self.segment_infos()
        for info in infos[:-1]:
            if built >= limit:
                break
            if info.header is None or info.index is None or terms_path(info.path).exists():
                continue
            try:
                with SegmentData(info.path) as sd:
                    self._terms_for(info, sd.data, len(info.index.frames), True)
            except FileNotFoundError:
                continue   # dropped by retention meanwhile
            built += 1
        return built

    def _load_terms(self, info: SegmentInfo) -> TermIndex | None:
        try:
            raw = terms_path(info.path).read_bytes()
        except OSError:
            return None
        ti = TermIndex.from_bytes(raw, self._index_key)
        if ti is None or ti.name != info.name or ti.header_mac != info.header.mac \
                or ti.frames != len(info.index.frames) or ti.size != info.index.size:
            return None
        return ti

    def _extend_terms(self, ti: TermIndex, info: SegmentInfo, data, nframes: int) -> None:
        """Index frames ``ti.frames .. nframes-1``; only frames that verify are indexed."""
        frames = info.index.frames
        for o in range(ti.frames, nframes):
            if o in info.index.damaged:
                continue
            off = frames[o].offset
            try:
                hdr = parse_header(data[off: off + HEADER_SIZE])
                end = off + HEADER_SIZE + hdr.payload_len
                payload = data[off + HEADER_SIZE: end]
                if check_frame(data[off: off + HEADER_SIZE], hdr, payload, data[end: end + MAC_SIZE],
                               self.key, data[off - MAC_SIZE: off]) is None:
                    ti.add_frame(payload, off + HEADER_SIZE)
            except (FrameError, ValueError, TypeError, msgpack.UnpackException):
                pass   # not indexed: any read of this frame reports what is wrong
        ti.frames = nframes
        ti.size = info.index.size if nframes == len(frames) else frames[nframes].offset

    def _scan_hits(self, info: SegmentInfo, data, hits: list, candidates: list[int], lo: int, hi: int,
                   desc: bool, seq_ok, predicate) -> Iterator[list[Entry]]:
        idx = info.index
        cand = set(candidates)
        items = [(seq, off) for seq, off in hits]
        for o in cand:
            if o in idx.damaged:
                kind, detail, sf, st = idx.damaged[o]
                items.append((sf, -1 - o))   # a damaged frame: visited whatever the terms say
        items.sort(reverse=desc)
        done_frames: set[int] = set()
        for seq, off in items:
            if off < 0:
                o = -1 - off
                bad = [e for e in self._read_frame(info, data, o, idx.frames[o])
                       if e.integrity != "ok" and seq_ok(e.seq)]
                if bad:
                    yield bad
                continue
            o = idx.frame_of_seq(seq)
            if o not in cand or o in done_frames or not seq_ok(seq):
                continue
            e = self._read_record(info, data, seq, off, o)
            if e is None:
                # the record does not verify where the posting points: read the whole
                # frame, checked, and report what is wrong with it
                done_frames.add(o)
                entries = self._read_frame(info, data, o, idx.frames[o])
                if desc:
                    entries.reverse()
                keep = [e2 for e2 in entries if seq_ok(e2.seq) and (e2.integrity != "ok" or (
                    lo <= e2.ts < hi and (predicate is None or predicate(e2))))]
                if keep:
                    yield keep
                continue
            if lo <= e.ts < hi and (predicate is None or predicate(e)):
                yield [e]

    def _read_record(self, info: SegmentInfo, data, seq: int, off: int, o: int) -> Entry | None:
        """One record read through a posting, checked against its chained signature."""
        row = info.index.frames[o]
        try:
            hdr = parse_header(data[row.offset: row.offset + HEADER_SIZE])
            end = row.offset + HEADER_SIZE + hdr.payload_len
            if not row.offset + HEADER_SIZE < off < end:
                return None
            up = msgpack.Unpacker(raw=False, use_list=False, strict_map_key=True)
            up.feed(data[off: min(end, off + MAX_RECORD_PEEK)])
            rec = up.unpack()
            n = up.tell()
            if not (isinstance(rec, tuple) and len(rec) == 11 and rec[0] == seq
                    and isinstance(rec[R_SIG], bytes)):
                return None
            raw = data[off: off + n]
        except (FrameError, ValueError, TypeError, msgpack.UnpackException):
            return None
        if seq == row.first_seq:
            prev = info.header.prev_sig if o == 0 else data[row.offset - 2 * MAC_SIZE: row.offset - MAC_SIZE]
        else:
            prev = data[off - MAC_SIZE: off]
        if self.sign(prev, self._canon_prefix + raw[1: n - 34]) != rec[R_SIG]:
            return None
        return Entry(self.node, *rec)

    def _read_frame(self, info: SegmentInfo, data, o: int, row: FrameRow,
                    records: bool = False) -> list[Entry] | VerifiedRecords:
        """Decode one frame, checked; on a failed check, flag the entries that fail.
        ``records``: a frame that verifies comes back as its record tuples."""
        node = self.node
        off = row.offset
        try:
            _, payload, _, problem = self._check_frame_at(data, off)
        except FrameError as e:
            rng = (f"seq {row.first_seq}..{row.first_seq + row.count - 1}" if row.count
                   else f"from seq {row.first_seq}")
            return [Entry.marker(node, row.first_seq, row.min_ts,
                                 f"{e.kind}: {rng} in {info.name}: {e.detail}")]
        try:
            recs = _unpack(payload)
            if problem is None:
                # the MAC verified: these records are what the writer wrote
                return VerifiedRecords(recs) if records else Entry.from_records(node, recs)
            if not (isinstance(recs, tuple) and all(isinstance(r, tuple) and len(r) == 11 for r in recs)):
                raise ValueError("bad record shape")
        except (ValueError, TypeError, msgpack.UnpackException):
            return [Entry.marker(node, row.first_seq, row.min_ts,
                                 f"{problem or 'undecodable'}: seq {row.first_seq}..{row.first_seq + row.count - 1}"
                                 f" in {info.name}: frame at offset {off} does not decode")]
        # The frame failed its check: find out entry by entry what still verifies.
        prev_sig = self._prev_sig(info, data, o)
        out = []
        for r in recs:
            try:
                e = Entry(node, *r)
            except TypeError:
                continue
            good = prev_sig is not None and self._sig_ok(prev_sig, r)
            e.integrity = "violation"
            e.violation = (f"{problem}: frame at offset {off} in {info.name}"
                           + ("" if not good else "; this entry's own signature verifies"))
            out.append(e)
            prev_sig = r[R_SIG] if isinstance(r[R_SIG], bytes) else None
        # (when every entry's own signature verifies, the frame header or MAC was
        # altered: the entries still stay flagged, the frame is not what was written)
        return out

    def _check_frame_at(self, data, off: int):
        """``(header, payload, mac, problem)`` of the frame at ``off``: ``problem`` is
        None when its checksum and chained MAC verify.  FrameError: no header there."""
        hbytes = data[off: off + HEADER_SIZE]
        hdr = parse_header(hbytes)
        end = off + HEADER_SIZE + hdr.payload_len
        payload = data[off + HEADER_SIZE: end]
        mac = data[end: end + MAC_SIZE]
        if len(mac) != MAC_SIZE:
            return hdr, payload, mac, "truncated"
        return hdr, payload, mac, check_frame(hbytes, hdr, payload, mac, self.key,
                                              data[off - MAC_SIZE: off])

    def _frame_lines(self, info: SegmentInfo, data, o: int, row: FrameRow) -> RenderedFrame | None:
        """A frame's rendered lines (``line_files``) once the frame verifies; None
        when it does not (the entry path then says what is wrong with it)."""
        off = row.offset
        try:
            hdr, payload, mac, problem = self._check_frame_at(data, off)
        except FrameError:
            return None
        if problem is not None or hdr.count != row.count:
            return None
        try:
            return self.line_files.frame(info.path, o, off, off + HEADER_SIZE + hdr.payload_len
                                         + MAC_SIZE, bytes(mac), lambda: _unpack(payload))
        except (ValueError, TypeError, IndexError, msgpack.UnpackException):
            return None

    def _sig_ok(self, prev_sig: bytes, r: tuple) -> bool:
        try:
            return self.sign(prev_sig, canonical_bytes(self.node, r[0], r[1], r[2:10])) == r[R_SIG]
        except (TypeError, ValueError, OverflowError):
            return False

    def _prev_sig(self, info: SegmentInfo, data, o: int) -> bytes | None:
        if o == 0:
            return info.header.prev_sig
        prow = info.index.frames[o - 1]
        if (o - 1) in info.index.damaged:
            return None
        hdr = parse_header(data[prow.offset: prow.offset + HEADER_SIZE])
        recs = _unpack(data[prow.offset + HEADER_SIZE: prow.offset + HEADER_SIZE + hdr.payload_len])
        return recs[-1][R_SIG]

    # -- small queries -----------------------------------------------------------

    def head(self) -> tuple[int, int | None]:
        """(last seq, last ts) of the committed log; (0, None) when empty."""
        infos = self.segment_infos()
        for info in reversed(infos):
            if info.index is not None and info.index.frames:
                return info.last_seq, info.index.max_ts
            if info.header is not None:
                return info.header.first_seq - 1, None
        return 0, None

    def get(self, seq: int) -> Entry | None:
        for e in self.scan(after_seq=seq - 1, check_structure=False):
            return e if e.seq == seq else None
        return None
