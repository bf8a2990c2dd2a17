"""The term postings of one node's segments, cached: which records a selective read
can match, and which frames the postings cannot speak for.

``.terms`` sidecars (``engine.terms``) hold them per segment; this keeps them in
memory within a budget (least recently used first out), loads a sidecar when
it is bound to the very segment it describes, and otherwise builds the
postings from the segment's frames, checking each frame first: a frame that
does not verify is not indexed but listed as damaged, and every selective read
whose window reaches it visits it.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

import msgpack

from engine.catalog import SegmentInfo
from engine.chain import NodeKey
from engine.datadir import write_atomic
from engine.frame import COMPRESSED_FROM, HEADER_SIZE, FrameError, check_frame_at, plain_payload
from engine.segment import SegmentData
from engine.terms import TERM_FIELDS, TermIndex, terms_path

#: postings kept decoded in memory, all segments together (least recently used go first)
TERMS_CACHE_BYTES = 256 * 1024 * 1024


class Postings:
    """The postings cache of one node's log (thread-safe)."""

    def __init__(self, node_key: NodeKey):
        self._key = node_key
        self._index_key = node_key.derive(b"index")
        self._cache: OrderedDict[str, TermIndex] = OrderedDict()
        self._lock = threading.Lock()

    def hits(self, info: SegmentInfo, data, terms, nframes: int, sealed: bool):
        """Postings matching ``terms`` and the frames they cannot speak for:
        ``(hits, suspect)`` with hits a list of (seq, file offset), or a set of frame
        ordinals when so many match that whole frames are cheaper; None when the
        postings cannot answer."""
        ti = self._for(info, data, nframes, sealed, tuple(terms))
        if ti is None:
            return None
        found = ti.lookup(terms)
        if found is None:
            return None
        suspect = set(ti.damaged)
        total = sum(f.count for f in info.index.frames[:nframes])
        first = info.header.first_seq
        if len(found) > max(256, total // 16):
            return {info.index.frame_of_seq(first + so) for so, _ in found}, suspect
        return [(first + so, off) for so, off in found], suspect

    def _for(self, info: SegmentInfo, data, nframes: int, sealed: bool, fields=()) -> TermIndex | None:
        """Postings of a segment covering its first ``nframes`` frames.

        Sealed segments are kept in memory as lean copies holding only the
        fields queries asked for (the rest is reloaded from the sidecar when
        needed), within a cache budget; the active segment is kept whole and
        extended as the writer adds frames.
        """
        with self._lock:
            ti = self._cache.get(info.name)
            if ti is not None and (
                ti.header_mac != info.header.mac
                or ti.frames > nframes
                or (sealed and not all(ti.has(f) for f in fields))
            ):
                ti = None
            if ti is not None and ti.frames == nframes:
                self._cache.move_to_end(info.name)
                return ti
            if ti is None and sealed:
                ti = self._load(info)
            if ti is None:
                ti = TermIndex(info.name, info.header.mac, info.header.first_seq)
            if ti.frames < nframes:
                self._extend(ti, info, data, nframes)
                if sealed:
                    try:
                        write_atomic(terms_path(info.path), ti.to_bytes(self._index_key, ti.size), sync=False)
                    except OSError:
                        pass  # derived data: rebuilt next time
            if sealed:
                cached = self._cache.get(info.name)
                keep = set(fields) | (
                    {f for f in TERM_FIELDS if cached.has(f)}
                    if cached is not None and cached.header_mac == ti.header_mac
                    else set()
                )
                ti = ti.lean(keep)
            self._cache[info.name] = ti
            self._cache.move_to_end(info.name)
            used = 0
            for name in reversed(list(self._cache)):
                used += self._cache[name].approx_bytes()
                if used > TERMS_CACHE_BYTES and name != info.name:
                    del self._cache[name]
            return ti

    def build_missing(self, sealed: list[SegmentInfo], limit: int = 4) -> int:
        """Write ``.terms`` sidecars for up to ``limit`` of the ``sealed`` segments that
        lack one, so the first selective query after a roll or a restart need not
        build them.  Returns how many were built."""
        built = 0
        for info in sealed:
            if built >= limit:
                break
            if not info.usable or terms_path(info.path).exists():
                continue
            try:
                with SegmentData(info.path) as sd:
                    self._for(info, sd.data, len(info.index.frames), True)
            except FileNotFoundError:
                continue  # dropped by retention meanwhile
            built += 1
        return built

    def _load(self, info: SegmentInfo) -> TermIndex | None:
        try:
            raw = terms_path(info.path).read_bytes()
        except OSError:
            return None
        ti = TermIndex.from_bytes(raw, self._index_key)
        if (
            ti is None
            or ti.name != info.name
            or ti.header_mac != info.header.mac
            or ti.frames != len(info.index.frames)
            or ti.size != info.index.size
        ):
            return None
        return ti

    def _extend(self, ti: TermIndex, info: SegmentInfo, data, nframes: int) -> None:
        """Index frames ``ti.frames .. nframes-1``.  Only frames that verify are indexed;
        every other one is listed as damaged, and selective reads visit it."""
        frames = info.index.frames
        for o in range(ti.frames, nframes):
            if o in info.index.damaged:
                continue
            off = frames[o].offset
            try:
                hdr, payload, _, problem = check_frame_at(data, off, info.version, self._key)
                if problem is None and hdr.first_seq == frames[o].first_seq:
                    if info.version >= COMPRESSED_FROM:
                        # a posting points into the frame's plain payload
                        ti.add_frame(plain_payload(payload, info.version), 0)
                    else:
                        ti.add_frame(payload, off + HEADER_SIZE)
                    continue
            except (FrameError, ValueError, TypeError, msgpack.UnpackException):
                pass
            ti.damaged.add(o)
        ti.frames = nframes
        ti.size = info.index.size if nframes == len(frames) else frames[nframes].offset
