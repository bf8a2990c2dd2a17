"""Node-local reads: a Filter pushed down onto one node's verified log."""

from __future__ import annotations

from collections.abc import Iterator

from auditlog.engine.entry import Entry
from auditlog.engine.log import Item, NodeLog
from auditlog.query.filters import Filter


def scan_node(
    log: NodeLog, flt: Filter, *, order: str = "asc", after: tuple[int, int] | None = None
) -> Iterator[Entry]:
    """Matching entries of one node in (ts, seq) order, violations included.

    The time range and exact-value terms narrow what is read (segments and
    frames); the filter's predicate then decides entry by entry.  Damaged
    entries and markers are always returned when their time coverage meets
    the window (damage is never filtered away).  ``after``: continue strictly
    after this position (``Entry.position``).
    """
    if not flt.admits_node(log.node):
        return iter(())
    return log.scan(
        flt.from_us,
        flt.to_us,
        terms=flt.index_terms() or None,
        order=order,
        after=after,
        predicate=flt.scan_predicate(),
    )


def read_node(log: NodeLog, flt: Filter, *, order: str = "asc", after: tuple[int, int] | None = None) -> Iterator[Item]:
    """The same read as :func:`scan_node`, as the engine's items: verified frames
    (``engine.items.VerifiedFrame``) and damage (``engine.items.Damage``), for
    renderers that handle a whole verified frame at once."""
    if not flt.admits_node(log.node):
        return iter(())
    return log.read(
        flt.from_us,
        flt.to_us,
        terms=flt.index_terms() or None,
        order=order,
        after=after,
        predicate=flt.scan_predicate(),
    )
