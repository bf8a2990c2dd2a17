"""The term postings of one node's segments, cached: which records a selective read
can match, and which frames the postings cannot speak for.

Per segment the cache holds either a sidecar's header (``engine.terms.TermFile``:
a sealed segment's postings are read from the ``.terms`` file block by block,
each block checked against its digest, the blocks kept in a cache of their
own) or a ``TermBuilder`` (the active segment's postings: a sidecar that
covers its first frames, packed runs and an open chunk for the frames since).
Both caches are budgeted in real bytes (the packed arrays' allocations and the
blocks' lengths), least recently used out first.

Postings are built only from frames that verify: a frame that does not is
listed as damaged and every selective read whose window reaches it visits it.
A sidecar is used only when it is bound to the segment as it is now (header
MAC, and the MAC of the last frame it covers, so a commit rolled back and
rewritten in place is noticed); one whose header fails its MAC, or a block
its digest, is deleted and built again.  The active segment's postings go to
its sidecar once :data:`PERSIST_RECORDS` records are new (so a new process
need not decode the whole active segment again), and a sealed segment's
sidecar is merged into one run by :meth:`Postings.build_missing`, off the
queries; that job also indexes the active segment's new frames, so a query
on a busy server finds little left to index.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict

import msgpack

from auditlog.engine.bytecache import ByteLRU
from auditlog.engine.catalog import SegmentInfo
from auditlog.engine.chain import NodeKey
from auditlog.engine.frame import HEADER_SIZE, MAC_SIZE, FrameError, check_frame_at, parse_header, plain_payload
from auditlog.engine.segment import SegmentData
from auditlog.engine.terms import (
    HASH_BITS,
    TERM_FIELDS,
    BlockReader,
    TermBuilder,
    TermFile,
    TermHash,
    TermsChanged,
    TermsDamaged,
    lookup,
    mac_prefix,
    merge_tables,
    terms_path,
    wanted_fields,
    write_terms,
)

#: builders (packed runs, open chunks) and sidecar headers, all segments together
TERMS_CACHE_BYTES = 32 * 1024 * 1024
#: checked blocks of sidecars
BLOCK_CACHE_BYTES = 16 * 1024 * 1024
#: the active segment's postings are written to its sidecar once this many records are new
PERSIST_RECORDS = 65536


def frame_mac(info: SegmentInfo, data, o: int) -> bytes | None:
    """The MAC stored at the end of frame ``o`` (None when its header does not parse
    or the data ends before its MAC)."""
    row = info.index.frames[o]
    try:
        hdr = parse_header(data[row.offset : row.offset + HEADER_SIZE], info.version)
    except FrameError:
        return None
    at = row.offset + HEADER_SIZE + hdr.payload_len
    mac = data[at : at + MAC_SIZE]
    return mac if len(mac) == MAC_SIZE else None


class Postings:
    """The postings cache of one node's log (thread-safe)."""

    def __init__(
        self,
        node_key: NodeKey,
        *,
        hash_bits: int = HASH_BITS,
        budget: int = TERMS_CACHE_BYTES,
        block_budget: int = BLOCK_CACHE_BYTES,
    ):
        self._key = node_key
        self._index_key = node_key.derive(b"index")
        self._hasher = TermHash.for_key(self._index_key, hash_bits)
        self.budget = budget
        #: checked blocks of sidecars, by (segment name, file identity, block number)
        self.blocks = ByteLRU(block_budget)
        self._segments: OrderedDict[str, TermFile | TermBuilder] = OrderedDict()
        self._sizes: dict[str, int] = {}
        #: sealed segments whose sidecar is known to be whole and of one run
        self._compact: set[tuple[str, bytes]] = set()
        self._lock = threading.Lock()
        #: write the active segment's postings to its sidecar as they grow (a server
        #: leaves that to :meth:`build_missing`, off the queries)
        self.persist_active = True
        #: sidecars written by this cache (for tests and diagnosis)
        self.written = 0

    def nbytes(self) -> int:
        """Memory held by the cache, in bytes (segments' postings and sidecar blocks)."""
        with self._lock:
            return sum(self._sizes.values()) + self.blocks.nbytes

    def hits(self, info: SegmentInfo, data, terms, nframes: int, sealed: bool):
        """Postings matching ``terms`` and the frames they cannot speak for:
        ``(hits, suspect)`` with hits a list of seqs that may match (ascending), or a
        set of frame ordinals when so many match that whole frames are cheaper; None
        when the postings cannot answer."""
        wanted = wanted_fields(terms)
        if not wanted or not nframes:
            return None
        with self._lock:
            for _ in range(2):
                try:
                    p = self._for(info, data, nframes, sealed)
                    if p is None:
                        return None
                    with BlockReader(self.blocks) as rd:
                        found = lookup(p, wanted, rd)
                    break
                except TermsChanged:
                    self._drop(info.name)  # replaced by another process: read it again
                except (TermsDamaged, OSError):
                    # a sidecar that no longer checks out: built again from the segment
                    self._discard(info)
            else:
                return None
            suspect = set(p.damaged)
        if found is None:
            return None
        frames = info.index.frames
        last = frames[nframes - 1]
        total = last.first_seq + last.count - frames[0].first_seq  # entries, about (damage aside)
        first = info.header.first_seq
        if len(found) > max(256, total // 16):
            return {info.index.frame_of_seq(first + so) for so in found}, suspect
        return [first + so for so in found], suspect

    # -- what the cache holds for a segment --------------------------------------------

    def _for(self, info: SegmentInfo, data, nframes: int, sealed: bool) -> TermFile | TermBuilder | None:
        """The postings of a segment covering (at least) its first ``nframes`` frames."""
        name = info.name
        have = self._segments.get(name)
        if have is not None and not self._bound(have, info, data, nframes, sealed):
            self._drop(name)
            have = None
        if isinstance(have, TermFile):
            if sealed:
                self._keep(name, have)
                return have
            # a segment that is the last one again (the newer ones removed): go on from it
            have = TermBuilder(name, info.header.mac, info.header.first_seq, self._hasher, have)
        if have is None:
            tf = self._load(info, data, nframes, sealed)
            if tf is not None and sealed and tf.frames == nframes and tf.size == info.index.size:
                self._keep(name, tf)
                return tf
            have = TermBuilder(name, info.header.mac, info.header.first_seq, self._hasher, tf)
        builder = have
        self._extend(builder, info, data, nframes)
        if not builder.usable:
            self._drop(name)
            return None
        if sealed:
            tf = self._write(builder, info, data) if not builder.unwritable else None
            if tf is not None:
                self._keep(name, tf)
                return tf
            builder.close_chunk()  # kept in memory: the sidecar could not be written
        elif self.persist_active and builder.new_records >= PERSIST_RECORDS and not builder.unwritable:
            self._write(builder, info, data)
        self._keep(name, builder)
        return builder

    def _bound(self, p: TermFile | TermBuilder, info: SegmentInfo, data, nframes: int, sealed: bool) -> bool:
        """Do these postings describe this segment as it is (up to ``nframes`` frames)?"""
        if p.header_mac != info.header.mac or p.first_seq != info.header.first_seq:
            return False
        if sealed and p.frames > len(info.index.frames):
            return False
        k = min(p.frames, nframes)
        return k == 0 or p.macs[k - 1] == mac_prefix(frame_mac(info, data, k - 1))

    def _load(self, info: SegmentInfo, data, nframes: int, sealed: bool) -> TermFile | None:
        """The segment's sidecar, when it is bound to the segment as it is now."""
        tf = TermFile.open(terms_path(info.path), self._index_key, self._hasher)
        if (
            tf is None
            or tf.name != info.name
            or tf.hasher.bits != self._hasher.bits
            or not tf.frames
            or tf.frames > len(info.index.frames)
            or not self._bound(tf, info, data, nframes, sealed)
        ):
            return None
        frames = info.index.frames
        end = frames[tf.frames].offset if tf.frames < len(frames) else info.index.size
        return tf if tf.size == end else None

    def _extend(self, b: TermBuilder, info: SegmentInfo, data, nframes: int) -> None:
        """Index frames ``b.frames .. nframes-1``.  Only frames that verify are indexed;
        every other one is listed as damaged, and selective reads visit it."""
        frames = info.index.frames
        for o in range(b.frames, nframes):
            row = frames[o]
            if o not in info.index.damaged:
                try:
                    hdr, payload, mac, problem = check_frame_at(data, row.offset, info.version, self._key)
                    if problem is None and hdr.first_seq == row.first_seq and hdr.count == row.count:
                        # a posting is a seq: the reader finds the record in its verified frame
                        b.add_frame(plain_payload(payload, info.version), bytes(mac))
                        continue
                except (FrameError, ValueError, TypeError, msgpack.UnpackException):
                    pass
            b.skip_frame(frame_mac(info, data, o))

    def _write(self, b: TermBuilder, info: SegmentInfo, data) -> TermFile | None:
        """Write the builder's sidecar and go on from it; the sidecar, or None when it
        could not be written (a read-only data dir: the builder stays in memory)."""
        frames = info.index.frames
        if b.frames < len(frames):
            end = frames[b.frames].offset
        else:
            end = info.index.size
        path = terms_path(info.path)
        try:
            with BlockReader(self.blocks) as rd:
                b.write(path, self._index_key, rd, end)
        except TermsDamaged:
            raise
        except OSError:
            b.unwritable = True  # a read-only data dir: kept in memory, not tried again
            return None
        self.written += 1
        tf = TermFile.open(path, self._index_key, self._hasher)
        if tf is None or tf.frames != b.frames or tf.header_mac != b.header_mac:
            return None
        b.rebase(tf)
        return tf

    def _keep(self, name: str, p: TermFile | TermBuilder) -> None:
        self._segments[name] = p
        self._segments.move_to_end(name)
        self._sizes[name] = p.nbytes()
        used = sum(self._sizes.values())
        for other in list(self._segments):
            if used <= self.budget:
                break
            if other != name:
                used -= self._sizes.pop(other)
                del self._segments[other]

    def _drop(self, name: str) -> None:
        self._segments.pop(name, None)
        self._sizes.pop(name, None)

    def _discard(self, info: SegmentInfo) -> None:
        """Forget a segment's postings and delete its sidecar (it failed a check)."""
        self._drop(info.name)
        self._compact = {c for c in self._compact if c[0] != info.name}
        try:
            os.unlink(terms_path(info.path))
        except OSError:
            pass

    # -- ahead of the queries -------------------------------------------------------------

    def build_missing(self, infos: list[SegmentInfo], limit: int = 4) -> int:
        """Work off the queries, for the segments ``infos`` (the last one active): give
        up to ``limit`` sealed segments a sidecar of one run (built, or merged from
        several), so the first selective query after a roll or a restart need not;
        write the active segment's postings out once :data:`PERSIST_RECORDS` records
        are new (the memory they held is then freed); forget segments no longer there.
        Returns how many sealed segments' sidecars were written."""
        names = {i.name for i in infos}
        with self._lock:
            for gone in [n for n in self._segments if n not in names]:
                self._drop(gone)
            self._compact = {c for c in self._compact if c[0] in names}
            before = self.written
        for info in infos[:-1]:
            if self.written - before >= limit:
                break
            if not info.usable or (info.name, info.header.mac) in self._compact:
                continue
            try:
                with SegmentData(info.path) as sd, self._lock:
                    self._compact_one(info, sd.data)
            except FileNotFoundError:
                continue  # dropped by retention meanwhile
        built = self.written - before
        if infos and infos[-1].usable:
            self._keep_up_with_active(infos[-1])
        return built

    def _keep_up_with_active(self, info: SegmentInfo) -> None:
        """Index the active segment's frames that are new since the last time (so a
        query finds little left to index) and write its postings to its sidecar if
        enough are new."""
        nframes = len(info.index.frames)
        if not nframes:
            return
        try:
            with SegmentData(info.path) as sd, self._lock:
                for _ in range(2):
                    try:
                        b = self._for(info, sd.data, nframes, False)
                        if (
                            isinstance(b, TermBuilder)
                            and b.new_records >= PERSIST_RECORDS
                            and not b.unwritable
                            and self._write(b, info, sd.data) is not None
                        ):
                            self._keep(info.name, b)
                        return
                    except TermsChanged:
                        self._drop(info.name)
                    except (TermsDamaged, OSError):
                        self._discard(info)
        except FileNotFoundError:
            pass  # rolled and dropped meanwhile

    def _compact_one(self, info: SegmentInfo, data) -> None:
        """Give a sealed segment a sidecar of one run (built, or merged from several)."""
        nframes = len(info.index.frames)
        for _ in range(2):
            try:
                p = self._for(info, data, nframes, True)
                if isinstance(p, TermFile) and len(p.runs) > 1:
                    self._merge_runs(p)
                    self._drop(info.name)
                    p = self._for(info, data, nframes, True)
                if isinstance(p, TermFile) and len(p.runs) == 1:
                    self._compact.add((info.name, info.header.mac))
                return
            except TermsChanged:
                self._drop(info.name)
            except (TermsDamaged, OSError):
                self._discard(info)

    def _merge_runs(self, tf: TermFile) -> None:
        """Rewrite a sidecar with its runs merged into one."""
        with BlockReader(self.blocks) as rd:
            parts = [tf.run_tables(r, rd) for r in range(len(tf.runs))]
        tables = [merge_tables([t[no] for t in parts]) for no in range(len(TERM_FIELDS))]
        del parts
        write_terms(
            tf.path,
            self._index_key,
            name=tf.name,
            header_mac=tf.header_mac,
            first_seq=tf.first_seq,
            frames=tf.frames,
            size=tf.size,
            macs=tf.macs,
            damaged=tf.damaged,
            hash_bits=tf.hasher.bits,
            runs=[(tf.frames, tables)],
        )
        self.written += 1
