"""k-way merge of per-node ordered streams by (ts, node, seq)."""

from __future__ import annotations

import heapq
from typing import Iterable, Iterator

from engine.entry import Entry


def merge_streams(streams: Iterable[Iterator[Entry]], order: str = "asc") -> Iterator[Entry]:
    """Merge streams each already ordered by (ts, seq) within one node."""
    streams = list(streams)
    if len(streams) == 1:
        return iter(streams[0])
    return heapq.merge(*streams, key=lambda e: (e.ts, e.node, e.seq), reverse=(order == "desc"))
