"""Legal holds: time ranges of the log that retention never drops.

A hold is set by an ``audit.legal_hold_set`` entry and lifted by an
``audit.legal_hold_release`` entry naming it; both are written by the node
itself (ingest refuses ``audit.*`` from clients).  The holds in force are a
projection of the log: every intact set entry whose id no intact release
entry names.  A hold's id is its set entry's id.

Retention keeps every segment whose entries' times overlap a hold in force
(``held_segment``), locally and, through the archive's S3 legal holds, in the
archive (``export.archive``).

Damage anywhere in the log may hide a set entry (a compressed frame that fails
its MAC is never opened).  The holds are then *uncertain* (``Holds.uncertain``
says where): retention drops nothing and the archive lets nothing go and lifts
no S3 legal hold until the damage is dealt with, so breaking a hold's entry
never releases the hold.
"""

from __future__ import annotations

from dataclasses import dataclass

from auditlog.engine.catalog import SegmentInfo
from auditlog.engine.entry import EntryDraft, format_ts
from auditlog.engine.errors import EngineError
from auditlog.engine.log import NodeLog

SET = "audit.legal_hold_set"
RELEASE = "audit.legal_hold_release"
MAX_REASON = 1000


class HoldError(EngineError):
    """A hold that cannot be set or released as asked."""

    http_status = 400


class HoldNotFound(HoldError):
    http_status = 404


@dataclass(frozen=True)
class Hold:
    id: str
    from_us: int
    to_us: int
    reason: str
    by: str
    set_at: int  # µs, the set entry's ts

    def overlaps(self, lo: int | None, hi: int | None) -> bool:
        """Does ``[lo, hi]`` (a segment's oldest and newest entry) meet ``[from, to)``?"""
        if lo is None or hi is None:
            return False
        return lo < self.to_us and hi >= self.from_us

    def to_dict(self) -> dict:
        return {
            "id": self.id,
            "from": format_ts(self.from_us),
            "to": format_ts(self.to_us),
            "reason": self.reason,
            "by": self.by,
            "set_at": format_ts(self.set_at),
        }


def set_draft(from_us: int, to_us: int, reason: str, by: str) -> EntryDraft:
    """The entry that sets a hold (HoldError for a range or reason that cannot be one)."""
    if not isinstance(reason, str) or not reason.strip():
        raise HoldError("a legal hold needs a reason")
    if len(reason) > MAX_REASON:
        raise HoldError(f"the reason is longer than {MAX_REASON} characters")
    if to_us <= from_us:
        raise HoldError("a legal hold's 'to' must be after its 'from'")
    return EntryDraft(
        by,
        SET,
        details={
            "from": format_ts(from_us),
            "from_us": from_us,
            "reason": reason,
            "to": format_ts(to_us),
            "to_us": to_us,
        },
    )


def release_draft(hold: Hold, by: str, reason: str | None = None) -> EntryDraft:
    details = {"hold_id": hold.id}
    if reason:
        details["reason"] = reason[:MAX_REASON]
    return EntryDraft(by, RELEASE, target=hold.id, details=details)


class Holds(list):
    """The holds in force (a list of :class:`Hold`); ``uncertain``: why there may be more
    (damage a set entry may hide), or None."""

    uncertain: str | None = None


def holds_in_force(log: NodeLog) -> Holds:
    """The holds set and not released, oldest first."""
    holds: dict[str, Hold] = {}
    released: set[str] = set()
    uncertain = None
    for e in log.scan(terms={"action": frozenset([SET, RELEASE])}, predicate=lambda e: e.action in (SET, RELEASE)):
        if e.integrity != "ok" or not isinstance(e.details, dict):
            uncertain = uncertain or f"entries of the log cannot be read ({e.id}: {e.violation or e.integrity})"
            continue
        d = e.details
        if e.action == SET and type(d.get("from_us")) is int and type(d.get("to_us")) is int:
            holds[e.id] = Hold(e.id, d["from_us"], d["to_us"], str(d.get("reason", "")), e.user, e.ts)
        elif e.action == RELEASE and isinstance(d.get("hold_id"), str):
            released.add(d["hold_id"])
    out = Holds(h for k, h in holds.items() if k not in released)
    out.uncertain = uncertain
    return out


def find(log: NodeLog, hold_id: str) -> Hold:
    for h in holds_in_force(log):
        if h.id == hold_id:
            return h
    raise HoldNotFound(f"no legal hold {hold_id!r} in force")


def held_segment(holds: Holds):
    """For retention: the id of a hold in force over a segment's entries, or None; with
    uncertain holds, every segment is held (the reason stands for the id)."""

    def check(info: SegmentInfo) -> str | None:
        if holds.uncertain:
            return f"any (holds uncertain: {holds.uncertain})"
        idx = info.index
        if idx is None or not idx.frames:
            return None
        for h in holds:
            if h.overlaps(idx.min_ts, idx.max_ts):
                return h.id
        return None

    return check
