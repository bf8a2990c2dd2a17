"""k-way merge of per-node ordered streams by (ts, node, seq).

Each node's stream is already ordered (a node's timestamps never go back), so
the merge keeps one head per node in a heap.  Sources are pulled in batches;
a source that fails (a peer lost mid-stream) stops contributing and says why
in its status, and the merge carries on with the others.
"""

from __future__ import annotations

import asyncio
import heapq
from collections import deque
from collections.abc import AsyncIterator

from auditlog.engine.entry import Entry


def _desc_node(node: str) -> tuple:
    # orders node ids backwards inside a min-heap ("ab" before "a" before "")
    return tuple(-ord(c) for c in node) + (1,)


class Source:
    """One node's ordered stream, pulled batch by batch."""

    node: str

    def __init__(self, node: str):
        self.node = node
        self.status: dict = {"status": "ok"}
        self.consumed = 0

    async def next_batch(self) -> list[Entry] | None:  # pragma: no cover - interface
        raise NotImplementedError

    def fail(self, reason: str) -> None:
        self.status = {"status": "unreachable", "error": reason}

    async def close(self) -> None:
        pass


async def merge_sources(sources: list[Source], order: str = "asc", batch: int = 1000) -> AsyncIterator[list[Entry]]:
    """Merged entries in batches (a batch per ``yield`` keeps the per-entry cost low)."""
    desc = order == "desc"
    if desc:

        def key(e: Entry):
            return (-e.ts, _desc_node(e.node), -e.seq)
    else:

        def key(e: Entry):
            return (e.ts, e.node, e.seq)

    bufs: list[deque] = [deque() for _ in sources]
    heap: list = []
    push, pop = heapq.heappush, heapq.heappop

    async def refill(i: int) -> None:
        got = await sources[i].next_batch()
        if got:
            bufs[i].extend(got)
            push(heap, (key(bufs[i][0]), i))

    await asyncio.gather(*(refill(i) for i in range(len(sources))))
    if len(sources) == 1:
        # one node: its stream is already in order
        src, buf = sources[0], bufs[0]
        while buf:
            out = list(buf)
            buf.clear()
            src.consumed += len(out)
            yield out
            await refill(0)
        return
    out: list[Entry] = []
    while heap:
        _, i = pop(heap)
        buf = bufs[i]
        e = buf.popleft()
        sources[i].consumed += 1
        out.append(e)
        if buf:
            push(heap, (key(buf[0]), i))
        else:
            if out:
                yield out
                out = []
            await refill(i)
            continue
        if len(out) >= batch:
            yield out
            out = []
    if out:
        yield out
