"""The log's layout as one read sees it: segments in order, the damage between them.

:func:`layout` turns the catalogue (``engine.catalog``) into a list of items
in log order: a :class:`Slot` per segment file whose frames can be read, and a
:class:`~engine.items.Damage` for everything about the *sequence* of files
that is wrong (docs/FORMAT.md section 9, step 5): a file whose header cannot
be read or is not ours, seqs missing between segments or before the first one
(unless a retention purge accounts for them), a segment that overlaps seqs
already seen, a header that does not link to its predecessor's end, a file
misnamed or of another node, a sealed segment that ends inside a frame, and
a torn tail when no writer is running.

Every damage item gets the time coverage a read needs to decide whether it
concerns its window: the largest verified timestamp before it and the smallest
after it, taken from segments whose place in the log is sound (a node's
timestamps never go back).  Each slot gets the same two bounds, for the
damaged frames inside it that sit at its edges.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from auditlog.engine.catalog import SegmentInfo
from auditlog.engine.items import Damage


@dataclass
class Slot:
    """A segment whose frames a read may visit, with the verified times around it."""

    info: SegmentInfo
    ts_before: int | None = None
    ts_after: int | None = None
    #: False for a segment out of its place (misnamed, another node's, a duplicate): its
    #: entries are authentic but not where the log has them, so a read reports the
    #: segment (its damage, covering its own seqs and times) instead of returning them
    #: out of order, and its times bound nothing around it
    sound: bool = True
    #: damage about this file itself, reported before its frames
    damage: list[Damage] = field(default_factory=list)


def layout(
    node: str,
    infos: list[SegmentInfo],
    anchored: Callable[[SegmentInfo], bool],
    writer_running: Callable[[], bool],
    covered: Callable[[int, int], bool] | None = None,
) -> list[Slot | Damage]:
    """The items of the log in order (see the module docstring).  ``covered(a, b)``:
    seqs ``a..b`` are held by the node's archive (``engine.archived``), so their
    absence here is no gap."""
    items: list[Slot | Damage] = []
    prev: SegmentInfo | None = None  # the last segment with a readable header
    gap: list[Damage] = []  # header-less files since ``prev``
    gap_named = False  # one of them is named after the next expected seq
    last = infos[-1] if infos else None

    for info in infos:
        expected = 1 if prev is None else prev.last_seq + 1
        if info.header is None:
            p = info.problem
            d = Damage(node, p.kind, info.name, p.detail, expected, None, None, None, named_seq=p.seq_from)
            gap.append(d)
            items.append(d)
            gap_named = gap_named or p.seq_from == expected
            continue
        h = info.header
        slot = Slot(info)
        if info.problem is not None:
            p = info.problem
            slot.sound = False
            slot.damage.append(
                Damage(node, p.kind, info.name, p.detail, h.first_seq, max(info.last_seq, h.first_seq), None, None)
            )
        for d in gap:  # the unreadable files before this one stand for the seqs in between
            d.seq_to = max(h.first_seq - 1, d.seq_from - 1)  # (an empty range: it holds none)
        if prev is None:
            if (
                h.first_seq != 1
                and not gap_named
                and not (covered is not None and covered(1, h.first_seq - 1))
                and not anchored(info)
            ):
                slot.damage.insert(
                    0,
                    Damage(
                        node,
                        "segment_missing",
                        info.name,
                        f"log starts at seq {h.first_seq} and no retention purge accounts for seq 1..{h.first_seq - 1}",
                        1,
                        h.first_seq - 1,
                        None,
                        None,
                    ),
                )
        elif h.first_seq > expected:
            if not gap_named and not (covered is not None and covered(expected, h.first_seq - 1)):
                slot.damage.insert(
                    0,
                    Damage(
                        node,
                        "segment_missing",
                        info.name,
                        f"seq {expected}..{h.first_seq - 1} missing before this segment",
                        expected,
                        h.first_seq - 1,
                        None,
                        None,
                    ),
                )
        elif h.first_seq < expected:
            slot.sound = False
            slot.damage.insert(
                0,
                Damage(
                    node,
                    "segment_duplicate",
                    info.name,
                    f"segment starts at seq {h.first_seq}, but seq up to {expected - 1} came before it",
                    h.first_seq,
                    min(expected - 1, max(info.last_seq, h.first_seq)),
                    None,
                    None,
                ),
            )
        elif not links(prev, info):
            slot.damage.insert(0, broken_link(node, prev, info))
        gap, gap_named = [], False
        items.append(slot)
        if info.tail is not None and info.index is not None and slot.sound:
            off, detail = info.tail
            if info is not last:
                items.append(Damage(node, "truncated", info.name, detail, info.last_seq + 1, None, None, None))
            elif not writer_running():
                items.append(
                    Damage(
                        node,
                        "torn_tail",
                        info.name,
                        f"{detail}; no writer is running: the next writer start cuts it back "
                        "(unless it holds a whole frame) and records audit.recovery",
                        info.last_seq + 1,
                        None,
                        None,
                        None,
                    )
                )
        prev = info
    _settle(node, items)
    return items


def links(prev: SegmentInfo, info: SegmentInfo) -> bool:
    """Does ``info``'s header link to the end of ``prev`` (the segment before it), as far
    as ``prev``'s end is known?"""
    h = info.header
    return prev.header is None or not (
        (prev.last_mac and h.prev_mac != prev.last_mac) or (prev.last_sig and h.prev_sig != prev.last_sig)
    )


def broken_link(node: str, prev: SegmentInfo, info: SegmentInfo) -> Damage:
    s = info.header.first_seq
    return Damage(
        node, "chain_broken", info.name, f"segment header does not link to the end of {prev.name}", s, s, None, None
    )


def _settle(node: str, items: list[Slot | Damage]) -> None:
    """Time coverage of every item, and where each piece of damage sits in a read."""
    # a truncated segment's missing tail ends where the next segment starts
    nxt_first: int | None = None
    for it in reversed(items):
        if isinstance(it, Slot):
            nxt_first = it.info.first_seq
        elif it.kind == "truncated" and nxt_first is not None and nxt_first - 1 >= it.seq_from:
            it.seq_to = nxt_first - 1
    # Positions only go forward in a read (a cursor continues after the last one): damage
    # sits at or after everything before it, a segment out of its place where it is
    # found, and a segment in its place whose seqs the read has already passed is
    # reported as a duplicate instead of being read out of order.
    at_least = 1
    for it in items:
        if isinstance(it, Slot) and it.sound and it.info.first_seq < at_least:
            it.sound = False
            it.damage.append(
                Damage(
                    node,
                    "segment_duplicate",
                    it.info.name,
                    f"segment starts at seq {it.info.first_seq}, but the log has already reached seq {at_least - 1}",
                    it.info.first_seq,
                    max(it.info.last_seq, it.info.first_seq),
                    None,
                    None,
                )
            )
        for d in it.damage if isinstance(it, Slot) else [it]:
            if (isinstance(it, Slot) and not it.sound) or d.seq_from < at_least:
                d.pos_seq = at_least
            at_least = max(at_least, d.position[0])
        if isinstance(it, Slot) and it.sound:
            at_least = max(at_least, it.info.last_seq + 1)
    before: int | None = None
    for it in items:
        if isinstance(it, Slot):
            idx = it.info.index
            it.ts_before = before
            for d in it.damage:
                _own_or_around(d, it, before)
            if it.sound and idx.verified_hi is not None:
                before = idx.verified_hi if before is None else max(before, idx.verified_hi)
        else:
            it.ts_lo = it.sort_ts = before
    after: int | None = None
    for it in reversed(items):
        if isinstance(it, Slot):
            idx = it.info.index
            it.ts_after = after
            for d in it.damage:
                if d.ts_hi is None and not (d.kind in _OWN_KINDS and idx.verified_hi is not None):
                    d.ts_hi = idx.verified_lo if (it.sound and idx.verified_lo is not None) else after
            if it.sound and idx.verified_lo is not None:
                after = idx.verified_lo if after is None else min(after, idx.verified_lo)
        else:
            it.ts_hi = after
    subs: dict[int, int] = {}
    for it in items:
        for d in it.damage if isinstance(it, Slot) else [it]:
            at = d.position[0]
            d.sub = subs.get(at, 0)
            subs[at] = d.sub + 1


#: where damage sorts when nothing verified comes before it (a read puts it at its window's start)
_EARLIEST = -(1 << 62)

#: damage about a segment's own content: it covers that segment's own times
_OWN_KINDS = frozenset({"foreign_segment", "segment_misnamed", "segment_duplicate"})


def _own_or_around(d: Damage, slot: Slot, before: int | None) -> None:
    idx = slot.info.index
    d.sort_ts = before if before is not None else _EARLIEST  # after what came before it
    if d.kind in _OWN_KINDS and idx.verified_hi is not None:
        d.ts_lo, d.ts_hi = idx.verified_lo, idx.verified_hi
    else:
        d.ts_lo = before
