"""Node-local range scans: a Filter pushed down onto one node's verified log."""

from __future__ import annotations

from typing import Iterator

from engine.entry import Entry, VerifiedRecords
from engine.lines import RenderedFrame
from engine.log import NodeLog
from query.filters import Filter


def scan_node(log: NodeLog, flt: Filter, *, order: str = "asc",
              after_seq: int | None = None) -> Iterator[Entry]:
    """Matching entries of one node in (ts, seq) order, violations included.

    The time range and exact-value terms narrow what is read (segments and
    frames); the filter's predicate then decides entry by entry.  Damaged
    entries and markers are always returned (damage is never filtered away).
    """
    if not flt.admits_node(log.node):
        return iter(())
    return log.scan(flt.from_us, flt.to_us, terms=flt.index_terms() or None, order=order,
                    after_seq=after_seq, predicate=flt.scan_predicate())


def scan_node_batches(log: NodeLog, flt: Filter, *, order: str = "asc",
                      after_seq: int | None = None
                      ) -> Iterator[list[Entry] | VerifiedRecords | RenderedFrame]:
    """The same scan as :func:`scan_node` in batches: verified whole frames as
    rendered NDJSON lines when the log keeps line files (``RenderedFrame``),
    else as record tuples (``VerifiedRecords``); everything else as entries."""
    if not flt.admits_node(log.node):
        return iter(())
    return log.scan_batches(flt.from_us, flt.to_us, terms=flt.index_terms() or None, order=order,
                            after_seq=after_seq, predicate=flt.scan_predicate(), records=True,
                            lines=True)
