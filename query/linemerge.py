"""Merging nodes' NDJSON streams as rendered lines (the fast path for NDJSON reads).

An NDJSON answer needs no entry objects at the serving node: every node
(this one in a thread, each peer in its own process) renders its matching
entries to lines and sends them with their timestamps, and the serving node
only orders lines.  Each line gets one integer sort key, ``ts * R + rank``
(``rank``: the node's place among the cluster's node ids, ``R`` above any
rank), so ordering by key is ordering by ``(ts, node)``; a node's own lines
with equal keys keep their stream order, which is seq order, because the
sort is stable.  For ``desc`` the key is ``(R - 1 - rank) - ts * R``.

Merging runs in rounds.  Every source still streaming has lines buffered;
the smallest of their last buffered keys is a bound below which nothing is
still to come from anyone, so every buffered line up to the bound is sorted
(one C-level sort of whole runs) and sent, and the sources whose buffers ran
dry are refilled, concurrently.  A source that fails stops contributing and
reports why in its status, as in :mod:`query.merge`.
"""

from __future__ import annotations

import asyncio
from bisect import bisect_right
from typing import AsyncIterator

from query.merge import Source

#: Above any node rank (a cluster has far fewer nodes).
RANK_SPACE = 1 << 16


class LineSource(Source):
    """One node's ordered stream of rendered lines, pulled chunk by chunk."""

    def __init__(self, node: str):
        super().__init__(node)
        #: entries with integrity other than "ok" seen in this stream
        self.violations = 0

    async def next_lines(self) -> tuple[list[int], list[bytes]] | None:   # pragma: no cover
        """``(timestamps, lines)`` of the next chunk, or None at the end."""
        raise NotImplementedError


def node_ranks(nodes) -> dict[str, int]:
    return {n: i for i, n in enumerate(sorted(set(nodes)))}


async def merge_lines(sources: list[LineSource], order: str,
                      ranks: dict[str, int]) -> AsyncIterator[list[bytes]]:
    """Lists of lines in merged order, about a chunk per source at a time."""
    desc = order == "desc"
    k = len(sources)
    keys: list[list[int]] = [[] for _ in range(k)]
    lines: list[list[bytes]] = [[] for _ in range(k)]
    pos = [0] * k
    done = [False] * k
    R = RANK_SPACE

    async def refill(i: int) -> None:
        src = sources[i]
        while True:
            got = await src.next_lines()
            if got is None:
                done[i] = True
                keys[i], lines[i], pos[i] = [], [], 0
                return
            ts, ls = got
            if ls:
                break
        r = ranks[src.node]
        if desc:
            base = R - 1 - r
            ks = [base - t * R for t in ts]
        else:
            ks = [t * R + r for t in ts]
        # a stream out of order (a faulty peer) would stall the rounds: refuse it
        last = keys[i][-1] if keys[i] else None
        if ks != sorted(ks) or (last is not None and ks[0] < last):
            src.fail("sent entries out of order")
            done[i] = True
            keys[i], lines[i], pos[i] = [], [], 0
            return
        keys[i], lines[i], pos[i] = ks, ls, 0

    while True:
        need = [i for i in range(k) if not done[i] and pos[i] >= len(keys[i])]
        if need:
            await asyncio.gather(*(refill(i) for i in need))
        live = [i for i in range(k) if pos[i] < len(keys[i])]
        if not live:
            return
        # every source that may still send has lines buffered: nothing to come
        # from any of them sorts before the smallest of their last keys
        open_ends = [keys[i][-1] for i in range(k) if not done[i]]
        bound = min(open_ends) if open_ends else None
        parts_k: list[int] = []
        parts_l: list[bytes] = []
        contributors = 0
        for i in live:
            ks, p = keys[i], pos[i]
            j = len(ks) if bound is None else bisect_right(ks, bound, p)
            if j > p:
                contributors += 1
                if j - p == len(ks):
                    parts_k += ks
                    parts_l += lines[i]
                else:
                    parts_k += ks[p:j]
                    parts_l += lines[i][p:j]
                pos[i] = j
                sources[i].consumed += j - p
        if contributors > 1:
            idx = sorted(range(len(parts_k)), key=parts_k.__getitem__)
            parts_l = [parts_l[x] for x in idx]
        yield parts_l
