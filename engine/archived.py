"""Segments the node no longer holds on disk, read from its archive.

The archive itself (an object store) lives above the engine (``export.archive``);
the engine sees it through :class:`ArchivedSegments`: the list of segments
whose verified copies the archive holds (:class:`ArchivedRef`: name, seqs,
times), and ``fetch(name)``, which brings one into a local cache, checked
against the SHA-256 recorded when it was archived, and returns its path.

A read whose window reaches before the first segment on disk takes the
archived segments that window overlaps (:func:`open_archived`), indexes them
like local ones (from the MAC'd ``.idx`` archived beside a segment when it
holds for the file, as for a sealed segment on disk, else by walking it; every
frame is checked again when read either way), and puts them in front of the
local ones.  The seqs between them that the archive holds but the
window does not need are *covered* (:func:`covered`): the layout does not
report them as missing.  A copy that cannot be fetched or does not verify is
damage over its seqs and times, never a silent gap.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from auditlog.engine.catalog import SegmentInfo
from auditlog.engine.items import Damage


@dataclass(frozen=True)
class ArchivedRef:
    name: str
    first_seq: int
    last_seq: int
    min_ts: int | None
    max_ts: int | None

    def overlaps(self, lo: int, hi: int) -> bool:
        """Can its entries have a ts in ``[lo, hi)``?"""
        return not (self.max_ts is not None and self.max_ts < lo or self.min_ts is not None and self.min_ts >= hi)


class ArchiveUnavailable(Exception):
    """An archived segment could not be fetched or did not match its record."""


class ArchivedSegments(Protocol):
    def refs(self) -> list[ArchivedRef]:
        """The archived segments, in seq order."""

    def fetch(self, name: str) -> Path:
        """A local copy of an archived segment, checked (ArchiveUnavailable otherwise)."""

    def owns(self, path: Path) -> bool:
        """Is ``path`` a fetched copy (which the cache may let go and fetch again)?"""


def before_disk(refs: list[ArchivedRef], local: list[SegmentInfo]) -> list[ArchivedRef]:
    """The archived segments that lie before the first segment on disk."""
    head = next((i.first_seq for i in local if i.header is not None), None)
    return [r for r in refs if head is None or r.last_seq < head]


def covered(refs: list[ArchivedRef]) -> Callable[[int, int], bool]:
    """``covered(a, b)``: do archived segments hold seqs ``a..b`` without a gap?"""
    spans = sorted((r.first_seq, r.last_seq) for r in refs)

    def check(a: int, b: int) -> bool:
        at = a
        for lo, hi in spans:
            if hi < at:
                continue
            if lo > at:
                return False
            at = hi + 1
            if at > b:
                return True
        return at > b

    return check


def open_archived(
    archive: ArchivedSegments, ref: ArchivedRef, node: str, open_info: Callable[[Path], SegmentInfo]
) -> SegmentInfo | Damage:
    """An archived segment fetched and indexed (``open_info``: the catalogue's, which takes
    a fetched ``.idx`` that holds for the file, else walks it), or the damage over its
    seqs and times when it cannot be fetched."""
    try:
        return open_info(archive.fetch(ref.name))
    except (ArchiveUnavailable, OSError) as e:
        return Damage(
            node,
            "archive_unavailable",
            ref.name,
            f"the archived copy cannot be read: {e}",
            ref.first_seq,
            ref.last_seq,
            ref.min_ts,
            ref.max_ts,
        )
