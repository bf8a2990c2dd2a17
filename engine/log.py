"""NodeLog: one node's log read in order, everything returned verified or reported.

:meth:`NodeLog.read` is the one reader every read path goes through.  It
yields, in log order (or reversed), :class:`~engine.items.VerifiedFrame`
items (a frame whose checksum and chained MAC verified when it was read, whole
or the part the read wants) and :class:`~engine.items.Damage` items (what it
could not verify, with the seqs and times that covers).  Nothing that could
hold an entry the read asks for is skipped without being verified or reported:

* the catalogue's time index (``engine.catalog``, ``engine.index``) only says
  which frames can hold the window; a damaged frame's row carries the times
  its entries can have, so a read of any window that overlaps it visits it;
* every frame is checked again as it is read (``engine.recheck``);
* term postings (``engine.postings``) only say which records can match; each
  is vouched for when read (``engine.selective``: its frame verified, the
  record's seq and values confirmed), a failure sends the read to the whole
  frame, and frames that did not verify when the postings were built are
  visited by every selective read of their window;
* structure problems (gaps, unreadable or foreign files, broken links, cut
  tails: ``engine.layout``) are placed in the stream with their time coverage,
  so a read whose window falls into a gap is told so.

This module puts those together: which segments and frames a read visits, in
which order, and what it keeps of each.

The reader never needs the writer's lock.  It reads each segment at the size it
had when opened, so it sees a consistent, committed prefix while a writer
appends.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from itertools import chain

from auditlog.engine.archived import ArchivedRef, ArchivedSegments, before_disk, covered, open_archived
from auditlog.engine.catalog import Catalog, SegmentInfo
from auditlog.engine.datadir import DataDir, Node
from auditlog.engine.entry import ENTRY_SUB, Entry
from auditlog.engine.items import Damage, VerifiedFrame
from auditlog.engine.layout import Slot, broken_link, layout, links
from auditlog.engine.postings import Postings
from auditlog.engine.recheck import FrameChecks
from auditlog.engine.segment import SegmentData
from auditlog.engine.selective import SelectiveReads

FAR_FUTURE = 2**62

Item = VerifiedFrame | Damage


class NodeLog:
    """Read access to one node's log (no lock needed)."""

    def __init__(self, data_dir: DataDir, node: Node):
        self.data_dir = data_dir
        self.node = node.node_id
        self.key = node.key
        self.catalog = Catalog(data_dir, node)
        self.postings = Postings(node.key)
        self._checks = FrameChecks(node.node_id, node.key)
        self._selective = SelectiveReads(node.node_id, self._checks, self._read_frames)
        self._anchor: tuple | None = None
        #: the node's archive (``engine.archived.ArchivedSegments``), when it has one: reads
        #: whose window reaches before the first segment on disk take it from there
        self.archive: ArchivedSegments | None = None

    @property
    def live_active(self) -> Callable[[], SegmentInfo | None] | None:
        return self.catalog.live_active

    @live_active.setter
    def live_active(self, fn: Callable[[], SegmentInfo | None] | None) -> None:
        """Set by an in-process writer: returns its live SegmentInfo for the active segment."""
        self.catalog.live_active = fn

    # -- the segments ----------------------------------------------------------------

    def segment_infos(self) -> list[SegmentInfo]:
        """Every segment file, indexed, in log order; the last is the active one."""
        return self.catalog.infos()

    def layout(self, infos: list[SegmentInfo], covered=None) -> list[Slot | Damage]:
        """The segments and the structural damage between them (``engine.layout``);
        ``covered``: the seqs the archive holds (``engine.archived.covered``)."""
        return layout(self.node, infos, lambda info: self._anchored(infos, info), self._writer_running, covered)

    def structure_problems(self, infos: list[SegmentInfo]) -> list[Damage]:
        """The structural damage of the log: gaps, overlaps, broken links, unreadable
        files, cut tails (each with its seq and time coverage)."""
        out: list[Damage] = []
        for it in self.layout(infos):
            out.extend(it.damage if isinstance(it, Slot) else [it])
        return out

    def _writer_running(self) -> bool:
        if self.catalog.live_active is not None:
            return True
        from auditlog.engine.writer import WriterLock

        return WriterLock.is_held(self.data_dir.lock_path)

    def _anchored(self, infos: list[SegmentInfo], head: SegmentInfo) -> bool:
        """Is the log's first seq accounted for by an intact ``audit.retention_purge`` entry?"""
        key = (head.name, head.ident, head.header.mac)
        if self._anchor is not None and self._anchor[0] == key:
            # the same first segment as last time: not anchored then (a purge entry is
            # written before its segments go, never after), or anchored by an entry
            # that must still verify
            seq = self._anchor[1]
            if not seq:
                return False
            e = self.get(seq)
            if e is not None and self._anchors(e, head):
                return True
        want = head.first_seq - 1
        for e in self.scan(terms={"action": frozenset(["audit.retention_purge"])}, check_structure=False, infos=infos):
            if self._anchors(e, head):
                self._anchor = (key, e.seq)
                return True
        self._anchor = (key, 0) if want else None
        return False

    @staticmethod
    def _anchors(e: Entry, head: SegmentInfo) -> bool:
        # only the node's own, intact purge entries count (clients cannot write audit.*)
        if (
            e.integrity != "ok"
            or e.action != "audit.retention_purge"
            or e.user != "system"
            or not isinstance(e.details, dict)
        ):
            return False
        for row in e.details.get("segments", ()):
            # [name, first_seq, last_seq, last_signature hex]
            if (
                isinstance(row, (list, tuple))
                and len(row) == 4
                and row[2] == head.first_seq - 1
                and row[3] == head.header.prev_sig.hex()
            ):
                return True
        return False

    # -- reading -----------------------------------------------------------------------

    def read(
        self,
        from_us: int | None = None,
        to_us: int | None = None,
        *,
        terms: dict[str, frozenset[str]] | None = None,
        order: str = "asc",
        after: tuple[int, int] | None = None,
        predicate: Callable[[Entry], bool] | None = None,
        check_structure: bool = True,
        infos: list[SegmentInfo] | None = None,
    ) -> Iterator[Item]:
        """Verified frames and damage for entries with ``from_us <= ts < to_us``, in log
        order (``order="desc"``: reversed).

        ``after``: continue a previous read strictly after this position ``(seq, sub)``
        in read order (``Entry.position``).  ``terms`` narrows the records read
        through the term postings (a hint: every entry still goes through
        ``predicate``).  Damage is returned whatever the predicate says, when its
        time coverage overlaps the window.
        """
        lo = -FAR_FUTURE if from_us is None else from_us
        hi = FAR_FUTURE if to_us is None else to_us
        desc = order == "desc"
        refs: list[ArchivedRef] = []
        if infos is None:
            infos = self.segment_infos()
            if self.archive is not None and check_structure:
                # what the window needs from before the first segment on disk comes
                # from the archive (engine.archived), fetched as the read reaches it
                refs = before_disk(self.archive.refs(), infos)
        if check_structure:
            items = self.layout(infos, covered(refs) if refs else None)
        else:
            items = [Slot(i) for i in infos if i.header is not None and i.index is not None]
        if after is None:
            pos_ok = None
        elif desc:

            def pos_ok(p, _a=after):
                return p < _a
        else:

            def pos_ok(p, _a=after):
                return p > _a

        active = infos[-1] if infos else None
        args = (lo, hi, terms, desc, after, pos_ok, predicate)
        if refs and not desc:
            yield from self._archived_items(refs, *args)
        for it in reversed(items) if desc else items:
            yield from self._visit(it, *args, sealed=type(it) is Damage or it.info is not active)
        if refs and desc:
            yield from self._archived_items(refs, *args)

    def _visit(self, it, lo, hi, terms, desc, after, pos_ok, predicate, sealed: bool) -> Iterator[Item]:
        """One item of a layout: damage that concerns the window, a segment's frames."""
        if type(it) is Damage:
            if it.overlaps(lo, hi) and (pos_ok is None or pos_ok(it.position)):
                yield it
            return
        marks = [d for d in it.damage if d.overlaps(lo, hi) and (pos_ok is None or pos_ok(d.position))]
        if marks and not desc:
            yield from marks
        if it.sound and self._may_hold(it, lo, hi, after, desc):
            yield from self._read_slot(it, lo, hi, terms, desc, after, pos_ok, predicate, sealed=sealed)
        if marks and desc:
            yield from reversed(marks)

    def _archived_items(self, refs: list[ArchivedRef], lo, hi, terms, desc, after, pos_ok, predicate):
        """The archived segments the window overlaps, each fetched when the read reaches
        it, indexed and laid out on its own (its place in the log is its record's);
        consecutive ones must link, as on disk."""
        want = [r for r in refs if r.overlaps(lo, hi)]
        prev: SegmentInfo | None = None
        for r in reversed(want) if desc else want:
            got = open_archived(self.archive, r, self.node, self.catalog.open_sealed)
            if type(got) is Damage:
                if got.overlaps(lo, hi) and (pos_ok is None or pos_ok(got.position)):
                    yield got
                continue
            items = layout(self.node, [got], lambda _i: True, lambda: False)
            nxt, before = (prev, got) if desc else (got, prev)
            if (
                before is not None
                and nxt is not None
                and nxt.header is not None
                and nxt.first_seq == before.last_seq + 1
                and not links(before, nxt)
                and isinstance(items[0], Slot)
            ):
                items[0].damage.insert(0, broken_link(self.node, before, nxt))
            for it in reversed(items) if desc else items:
                yield from self._visit(it, lo, hi, terms, desc, after, pos_ok, predicate, sealed=True)
            prev = got

    def scan(
        self,
        from_us: int | None = None,
        to_us: int | None = None,
        *,
        terms: dict[str, frozenset[str]] | None = None,
        order: str = "asc",
        after_seq: int | None = None,
        after: tuple[int, int] | None = None,
        predicate: Callable[[Entry], bool] | None = None,
        check_structure: bool = True,
        infos: list[SegmentInfo] | None = None,
    ) -> Iterator[Entry]:
        """:meth:`read` as entries: verified ones, flagged ones and markers, in order.

        ``after_seq`` is ``after=(after_seq, ENTRY_SUB)``: strictly after that entry.
        """
        if after is None and after_seq is not None:
            after = (after_seq, ENTRY_SUB)
        items = self.read(
            from_us,
            to_us,
            terms=terms,
            order=order,
            after=after,
            predicate=predicate,
            check_structure=check_structure,
            infos=infos,
        )
        return chain.from_iterable(entry_batches(items, from_us, to_us, order == "desc"))

    @staticmethod
    def _may_hold(slot: Slot, lo: int, hi: int, after: tuple[int, int] | None, desc: bool) -> bool:
        """Can this segment hold anything the read wants?  (Damage inside is always visited.)"""
        info, idx = slot.info, slot.info.index
        if not idx.frames:
            return False
        if idx.damaged:
            return True
        if idx.verified_hi is None or idx.verified_hi < lo or idx.verified_lo >= hi:
            return False
        if after is not None:
            return (info.first_seq, ENTRY_SUB) < after if desc else (info.last_seq, ENTRY_SUB) > after
        return True

    def _read_slot(
        self, slot: Slot, lo: int, hi: int, terms, desc: bool, after, pos_ok, predicate, sealed: bool
    ) -> Iterator[Item]:
        info, idx = slot.info, slot.info.index
        frames = idx.frames
        nframes = len(frames)
        start = idx.first_frame_at(lo)
        stop = start
        while stop < nframes and frames[stop].min_ts < hi:
            stop += 1
        if start >= stop:
            return
        try:
            sd = SegmentData(info.path)
        except FileNotFoundError:
            if self.archive is not None and self.archive.owns(info.path):
                # an archived copy the cache let go since it was fetched: fetched again
                # (checked against its record, as the first time)
                sd = SegmentData(self.archive.fetch(info.name))
            else:
                # dropped by retention while we read (never a file under the read's window:
                # retention only drops segments older than every window it would not report)
                return
        with sd:
            data = sd.data
            if terms:
                found = self.postings.hits(info, data, terms, nframes, sealed)
                if found is not None:
                    hits, suspect = found
                    if isinstance(hits, list):
                        yield from self._selective.read_hits(
                            slot, data, hits, suspect, start, stop, lo, hi, desc, pos_ok, predicate, terms
                        )
                        return
                    # many hits: read whole frames, fewer of them
                    wanted = hits | suspect | set(idx.damaged)
                    order = [o for o in range(start, stop) if o in wanted]
                    yield from self._read_frames(
                        slot, data, order[::-1] if desc else order, lo, hi, desc, after, pos_ok, predicate
                    )
                    return
            order = range(stop - 1, start - 1, -1) if desc else range(start, stop)
            yield from self._read_frames(slot, data, order, lo, hi, desc, after, pos_ok, predicate)

    def _read_frames(
        self, slot: Slot, data, ordinals, lo: int, hi: int, desc: bool, after, pos_ok, predicate
    ) -> Iterator[Item]:
        idx = slot.info.index
        frames = idx.frames
        damaged = idx.damaged
        for o in ordinals:
            row = frames[o]
            if o in damaged:
                d = self._checks.known_damage(slot, data, o, row)
                d = _keep(d, lo, hi, pos_ok, desc)
                if d is not None:
                    yield d
                continue
            last = row.first_seq + row.count - 1
            if after is not None:
                if desc and (row.first_seq, ENTRY_SUB) >= after:
                    continue
                if not desc and (last, ENTRY_SUB) <= after:
                    continue
            got = self._checks.verified(slot, data, o, row, desc)
            if type(got) is Damage:
                d = _keep(got, lo, hi, pos_ok, desc)
                if d is not None:
                    yield d
                continue
            whole = (
                lo <= row.min_ts
                and row.max_ts < hi
                and predicate is None
                and (after is None or ((last, ENTRY_SUB) < after if desc else (row.first_seq, ENTRY_SUB) > after))
            )
            if whole:
                yield got
                continue
            keep = [
                e
                for e in got.entries()
                if lo <= e.ts < hi and (pos_ok is None or pos_ok(e.position)) and (predicate is None or predicate(e))
            ]
            if keep:
                yield VerifiedFrame(self.node, got.path, o, got.offset, got.end, got.mac, desc=desc, entries=keep)

    # -- selective reads through term postings -----------------------------------

    def build_missing_terms(self, limit: int = 4) -> int:
        """Write ``.terms`` sidecars for up to ``limit`` sealed segments that lack one
        (or hold several runs), and the active segment's postings once enough are new
        (``engine.postings``); returns how many sealed segments' sidecars were written."""
        return self.postings.build_missing(self.segment_infos(), limit)

    # -- small queries -----------------------------------------------------------

    def head(self) -> tuple[int, int | None]:
        """(last seq, last verified ts) of the committed log; (0, None) when empty."""
        infos = self.segment_infos()
        for info in reversed(infos):
            if info.index is not None and info.index.frames:
                return info.last_seq, info.index.verified_hi
            if info.header is not None:
                return info.header.first_seq - 1, None
        return 0, None

    def get(self, seq: int) -> Entry | None:
        for e in self.scan(after=(seq - 1, ENTRY_SUB), check_structure=False):
            return e if e.seq == seq else None
        return None


def _keep(d: Damage, lo: int, hi: int, pos_ok, desc: bool) -> Damage | None:
    """``d`` as a read of ``[lo, hi)`` after a cursor returns it, or None."""
    if not d.overlaps(lo, hi):
        return None
    if d.entries:
        if desc:
            d.entries.reverse()
        if pos_ok is not None:
            d.entries = [e for e in d.entries if pos_ok(e.position)]
        return d if d.entries else None
    return d if pos_ok is None or pos_ok(d.position) else None


def entry_batches(
    items, from_us: int | None = None, to_us: int | None = None, desc: bool = False
) -> Iterator[list[Entry]]:
    """The entries of :meth:`NodeLog.read` items, a list per item (damage placed in
    the read's window and in time order: ``Damage.as_entries``)."""
    return (batch for batch, _ in checked_batches(items, from_us, to_us, desc))


def checked_batches(
    items, from_us: int | None = None, to_us: int | None = None, desc: bool = False
) -> Iterator[tuple[list[Entry], bool]]:
    """:func:`entry_batches`, each batch with whether it is verified (a verified frame's
    entries, all ``integrity="ok"``) or damage (all flagged)."""
    last = None
    for it in items:
        verified = type(it) is VerifiedFrame
        batch = it.entries() if verified else it.as_entries(from_us, to_us, last, desc)
        if batch:
            last = batch[-1].ts
        yield batch, verified
