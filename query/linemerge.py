"""Merging nodes' NDJSON streams as rendered lines (the fast path for NDJSON reads).

An NDJSON answer needs no entry objects at the serving node: every node
(this one in a thread, each peer in its own process) renders its matching
entries to lines and sends them with their timestamps, and the serving node
only orders lines.  The order is by ``(ts, node)`` (each node's own lines
keep their stream order, which is seq order), or its reverse for ``desc``.

Merging runs in rounds.  Every source still streaming has lines buffered;
the least of their last buffered ``(ts, node rank)`` is a bound below which
nothing is still to come from anyone, so every buffered line up to the bound
(found by bisecting each source's timestamps) is sent, and the sources whose
buffers ran dry are refilled, concurrently.  Lines travel as a blob per chunk
with *marks* (where each line ends), so a run of one node's lines is sent as
one slice of its blob; when several nodes' lines meet in a round, runs are
taken in turn, and where runs are short one stable sort of the timestamps
(node order laid out first) does the round.  No per-line key is ever built.
A source that fails stops contributing and reports why in its status, as in
:mod:`query.merge`.
"""

from __future__ import annotations

import asyncio
from bisect import bisect_left, bisect_right
from collections.abc import AsyncIterator
from operator import neg

from auditlog.query.lines import cut_lines
from auditlog.query.merge import Source


class LineSource(Source):
    """One node's ordered stream of rendered lines, pulled chunk by chunk."""

    def __init__(self, node: str):
        super().__init__(node)
        #: entries with integrity other than "ok" seen in this stream
        self.violations = 0

    async def next_lines(self) -> tuple[list[int], list[int], bytes] | None:  # pragma: no cover
        """``(timestamps, marks, blob)`` of the next chunk, or None at the end:
        ``marks`` (:func:`query.lines.line_marks`) say where each line ends."""
        raise NotImplementedError


def node_ranks(nodes) -> dict[str, int]:
    return {n: i for i, n in enumerate(sorted(set(nodes)))}


async def merge_lines(
    sources: list[LineSource], order: str, ranks: dict[str, int]
) -> AsyncIterator[tuple[int, list[bytes | memoryview]]]:
    """``(n, parts)`` in merged order, about a chunk per source at a time: ``parts``
    are bytes-like objects of whole lines, ``n`` lines in all."""
    desc = order == "desc"
    k = len(sources)
    rank = [ranks[s.node] for s in sources]
    # ties go to the lower node rank first (asc), the higher first (desc)
    by_rank = sorted(range(k), key=rank.__getitem__, reverse=desc)
    stamps: list[list[int]] = [[] for _ in range(k)]
    marks: list[list[int]] = [[-1] for _ in range(k)]
    blobs: list[bytes] = [b""] * k
    pos = [0] * k
    done = [False] * k

    def stop(i: int) -> None:
        done[i] = True
        stamps[i], marks[i], blobs[i], pos[i] = [], [-1], b"", 0

    async def refill(i: int) -> None:
        src = sources[i]
        while True:
            got = await src.next_lines()
            if got is None:
                stop(i)
                return
            ts, es, blob = got
            if ts:
                break
        # a stream out of order (a faulty peer) would stall the rounds: refuse it
        last = stamps[i][-1] if stamps[i] else None
        if desc:
            ok = ts == sorted(ts, reverse=True) and (last is None or ts[0] <= last)
        else:
            ok = ts == sorted(ts) and (last is None or ts[0] >= last)
        if not ok or len(ts) + 1 != len(es):
            src.fail("sent entries out of order")
            stop(i)
            return
        stamps[i], marks[i], blobs[i], pos[i] = ts, es, blob, 0

    while True:
        need = [i for i in range(k) if not done[i] and pos[i] >= len(stamps[i])]
        if need:
            await asyncio.gather(*(refill(i) for i in need))
        live = [i for i in by_rank if pos[i] < len(stamps[i])]
        if not live:
            return
        # every source that may still send has lines buffered: nothing to come
        # from any of them sorts before the least of their last (ts, rank)
        open_ends = [(stamps[i][-1], rank[i]) for i in range(k) if not done[i]]
        if not open_ends:
            bound = None
        elif desc:
            bound = max(open_ends)  # the least in descending order
        else:
            bound = min(open_ends)
        # each live source's window of lines up to the bound, in tie order
        wins: list[list[int]] = []
        for i in live:
            ts, p = stamps[i], pos[i]
            if bound is None:
                j = len(ts)
            else:
                j = _upto(ts, p, len(ts), bound[0], bound[1], rank[i], desc)
            if j > p:
                wins.append([i, p, j])
                pos[i] = j
                sources[i].consumed += j - p
        if len(wins) == 1:
            i, p, j = wins[0]
            yield j - p, [_span(blobs[i], marks[i], p, j)]
        elif wins:
            yield sum(j - p for _, p, j in wins), _merge_windows(wins, stamps, marks, blobs, rank, desc)


def _span(blob: bytes, marks: list[int], p: int, j: int) -> bytes | memoryview:
    """Lines ``p`` to ``j - 1`` of a chunk, as one bytes-like object (a view: not copied)."""
    if p == 0 and j == len(marks) - 1:
        return blob
    return memoryview(blob)[marks[p] + 1 : marks[j] + 1]


def _upto(ts: list[int], p: int, j: int, b_ts: int, b_rank: int, rank: int, desc: bool) -> int:
    """End of the stretch of ``ts[p:j]`` (a node of rank ``rank``) that sorts at or
    before ``(b_ts, b_rank)``: earlier timestamps, or the same from a node not after it."""
    if desc:
        return (bisect_right if rank >= b_rank else bisect_left)(ts, -b_ts, p, j, key=neg)
    return (bisect_right if rank <= b_rank else bisect_left)(ts, b_ts, p, j)


#: below this many lines per run on average, a round is merged by one sort instead
_SHORT_RUNS = 8


def _merge_windows(wins: list[list[int]], stamps, marks, blobs, rank, desc: bool) -> list[bytes | memoryview]:
    """The lines of several sources' windows ``[source, start, end]`` in merged order.

    Nodes' entries come in runs (a commit's entries are contiguous and share
    their ts), so the windows are merged run by run: the source whose next
    line sorts first gives every line up to the next line of any other source
    as one slice.  Where runs turn out short, the rest is merged by one
    stable sort of the timestamps instead.
    """
    out: list[bytes | memoryview] = []
    cur = wins  # in tie order
    runs = taken = 0
    while len(cur) > 1:
        if runs >= 16 and taken < runs * _SHORT_RUNS:
            return out + _sort_windows(cur, stamps, marks, blobs, desc)
        # the source whose next line sorts first (ties: the earlier in tie order)
        first = cur[0]
        f_ts = stamps[first[0]][first[1]]
        for w in cur[1:]:
            t = stamps[w[0]][w[1]]
            if (t > f_ts) if desc else (t < f_ts):
                first, f_ts = w, t
        # the next line of any other source bounds the run
        nxt = None
        for w in cur:
            if w is first:
                continue
            t, r = stamps[w[0]][w[1]], rank[w[0]]
            if nxt is None or ((t, r) > nxt if desc else (t, r) < nxt):
                nxt = (t, r)
        i, p, j = first
        q = max(p + 1, _upto(stamps[i], p, j, nxt[0], nxt[1], rank[i], desc))
        out.append(_span(blobs[i], marks[i], p, q))
        runs += 1
        taken += q - p
        if q >= j:
            cur.remove(first)
        else:
            first[1] = q
    i, p, j = cur[0]
    out.append(_span(blobs[i], marks[i], p, j))
    return out


def _sort_windows(cur, stamps, marks, blobs, desc: bool) -> list[bytes]:
    """Windows merged by one stable sort of their timestamps (laid out in tie order,
    so equal timestamps keep node order, then stream order)."""
    parts_t: list[int] = []
    parts_l: list[bytes] = []
    for i, p, j in cur:
        parts_t += stamps[i][p:j]
        parts_l += cut_lines(blobs[i], marks[i], p, j)
    idx = sorted(range(len(parts_t)), key=parts_t.__getitem__, reverse=desc)
    return [parts_l[x] for x in idx]
