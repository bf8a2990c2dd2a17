"""This node's part of a read, as a merge takes it: entries (``LocalSource``)
or rendered NDJSON lines (``LocalLineSource``, through ``LineTaker``), read in a
worker thread of the node's executor."""

from __future__ import annotations

import asyncio
from array import array

from auditlog.engine.entry import Entry
from auditlog.engine.log import checked_batches
from auditlog.export.csv import TimestampFormatter
from auditlog.export.ndjson import render
from auditlog.query.filters import Filter
from auditlog.query.linemerge import LineSource
from auditlog.query.lines import LEN_CODE, line_lengths, line_marks
from auditlog.query.merge import Source
from auditlog.query.scan import read_node, scan_node


class LocalSource(Source):
    def __init__(self, service, flt: Filter, order: str, after: tuple[int, int] | None, batch: int = 1000):
        super().__init__(service.node_id)
        self.service = service
        self.gen = scan_node(service.log, flt, order=order, after=after)
        self.batch = batch

    async def next_batch(self) -> list[Entry] | None:
        return await self.service.run(_take, self.gen, self.batch) or None


def _take(gen, n: int) -> list:
    out = []
    for e in gen:
        out.append(e)
        if len(out) >= n:
            break
    return out


class LocalLineSource(LineSource):
    """This node's part of an NDJSON answer, scanned and rendered in a worker thread,
    one chunk ahead: the next chunk is read while this one is merged and sent."""

    def __init__(self, service, flt: Filter, order: str, after: tuple[int, int] | None, batch: int = 2000):
        super().__init__(service.node_id)
        self.service = service
        self.taker = LineTaker(read_node(service.log, flt, order=order, after=after), flt.from_us, flt.to_us, order)
        self.batch = batch
        self._ahead: asyncio.Future | None = None

    def _read_ahead(self) -> None:
        self._ahead = asyncio.get_running_loop().run_in_executor(
            self.service.executor, _take_marked, self.taker, self.batch
        )

    async def next_lines(self):
        if self._ahead is None:
            self._read_ahead()
        got = await self._ahead
        self._ahead = None
        if got is None:
            return None
        self._read_ahead()
        ts, marks, blob, bad = got
        self.violations += bad
        return ts, marks, blob

    async def close(self) -> None:
        # the scan generator is busy in a worker until its chunk is done
        if self._ahead is not None:
            ahead, self._ahead = self._ahead, None
            try:
                await ahead
            except Exception:
                pass


def _take_marked(taker: LineTaker, n: int):
    got = taker.take(n)
    return None if got is None else (got[0], line_marks(got[1]), got[2], got[3])


class LineTaker:
    """One node's read (``query.scan.read_node``) as NDJSON lines, chunk by chunk.

    The one path from the reader's items to lines: every item is taken as
    entries (a verified frame's decoded, damage as flagged entries or markers
    placed in the read's window: ``engine.log.checked_batches``) and rendered a
    batch at a time (``export.ndjson.render``).
    """

    def __init__(self, items, from_us: int | None, to_us: int | None, order: str):
        self.batches = checked_batches(items, from_us, to_us, order == "desc")
        self.timestamps = TimestampFormatter().format

    def take(self, n: int, *, joined: bool = True) -> tuple[list[int], array, bytes | list[bytes], int] | None:
        """At least ``n`` entries (or the rest) as (timestamps, line lengths, the lines
        as one blob, non-ok count); ``joined=False``: the lines as a list of blobs."""
        ts: list[int] = []
        lens = array(LEN_CODE)
        parts: list[bytes] = []
        bad = 0
        timestamps = self.timestamps
        for entries, verified in self.batches:
            if not entries:
                continue
            blob = render(entries, timestamps, verified)
            ts += [e.ts for e in entries]
            lens += line_lengths(blob)
            parts.append(blob)
            if not verified:
                bad += len(entries)
            if len(ts) >= n:
                break
        if not ts:
            return None
        return ts, lens, b"".join(parts) if joined else parts, bad
