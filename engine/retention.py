"""Retention: drop whole segments whose newest entry is older than the window.

Only a prefix of sealed, intact segments is ever dropped, and only after an
``audit.retention_purge`` entry naming what goes (seq and time range, count,
and each dropped segment's last signature) is durable.  Verification then
accepts the new first segment because that entry anchors its header link.

The last run is derived from the log, not kept beside it: the newest intact
``audit.retention_purge`` entry is the last purge (its ts is when it ran).  A
run that dropped nothing writes nothing to the log, so only that is kept, in
the sealed ``state/retention.json`` (engine/state.py), and shown when it is
newer than the last purge entry.  A sealed file replaced by an older copy of
itself can only make the last run look older, never invent a purge.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from auditlog.engine.catalog import SegmentInfo
from auditlog.engine.datadir import fsync_dir, side_files
from auditlog.engine.entry import EntryDraft, format_ts
from auditlog.engine.log import NodeLog
from auditlog.engine.state import StateSeal, StateTampered
from auditlog.engine.tiles import TileError
from auditlog.engine.tree import LogTree, TreeError
from auditlog.engine.writer import LogWriter

DAY_US = 86_400 * 1_000_000
STATE_FILE = "retention.json"


@dataclass
class RetentionReport:
    ran_at: str
    as_of: str
    retention_days: int | None
    dry_run: bool
    dropped_segments: list[str] = field(default_factory=list)
    dropped_entries: int = 0
    seq_from: int | None = None
    seq_to: int | None = None
    ts_from: str | None = None
    ts_to: str | None = None
    kept_segments: int = 0
    #: the first segment old enough to go that stays because it is not archived yet
    waiting_for_archive: str | None = None
    #: the legal hold that kept the first segment old enough to go (and what follows)
    kept_for_hold: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def run_retention(
    writer: LogWriter,
    as_of_us: int | None = None,
    dry_run: bool = False,
    archived: Callable[[SegmentInfo], dict | None] | None = None,
    held: Callable[[SegmentInfo], str | None] | None = None,
) -> RetentionReport:
    """Drop the segments retention lets go.  ``archived``: when the node has an archive,
    the verified archived copy of a segment (``{"url", "key", "version_id", "sha256"}``)
    or None; a segment without one is kept, and so is everything after it.  ``held``:
    the id of a legal hold in force over a segment (``engine.holds``), which keeps it
    and everything after it."""
    days = writer.settings.retention_days
    now = writer.now()
    as_of = now if as_of_us is None else as_of_us
    report = RetentionReport(format_ts(now), format_ts(as_of), days, dry_run)
    if days is not None:
        cutoff = as_of - days * DAY_US
        active = writer._active.index
        # a quiet node's active segment must become droppable too: it is sealed
        # (rolled) first; a dry run reports what that roll would make droppable
        would_roll = bool(active.frames) and (
            active.max_ts < cutoff or writer.active_age() >= writer.settings.segment_max_age
        )
        if would_roll and not dry_run:
            writer.roll()
        infos = writer.log.segment_infos()
        structural = {p.segment for p in writer.log.structure_problems(infos)}
        victims = []
        copies: list[dict] = []
        candidates = infos if (would_roll and dry_run) else infos[:-1]  # never the active segment
        for info in candidates:
            idx = info.index
            if (
                info.header is None
                or info.problem
                or idx is None
                or idx.damaged
                or info.tail
                or info.name in structural
            ):
                break
            if idx.frames and idx.max_ts >= cutoff:
                break
            hold = held(info) if held is not None else None
            if hold is not None:
                report.kept_for_hold = hold
                break
            if archived is not None:
                copy = archived(info)
                if copy is None:
                    report.waiting_for_archive = info.name
                    break
                copies.append(copy)
            victims.append(info)
        report.kept_segments = len(infos) - len(victims)
        if victims:
            with_frames = [v for v in victims if v.index.frames]
            report.dropped_segments = [v.name for v in victims]
            report.dropped_entries = sum(v.index.count for v in victims)
            report.seq_from = victims[0].first_seq
            report.seq_to = victims[-1].last_seq
            if with_frames:
                report.ts_from = format_ts(with_frames[0].index.min_ts)
                report.ts_to = format_ts(with_frames[-1].index.max_ts)
            if not dry_run:
                # the Merkle tree takes in what goes before it goes (engine.tree); a tree
                # that cannot (damage before it, state lost) stays where it is, and
                # the next checkpoint says why it cannot go on
                try:
                    with LogTree(writer.log, writer.key, writer.data_dir) as tree:
                        tree.extend(through_seq=report.seq_to)
                        tree.keep_cut_tile(report.seq_to + 1)
                except (TreeError, TileError, OSError):
                    pass
                writer.append_batch(
                    [
                        EntryDraft(
                            "system",
                            "audit.retention_purge",
                            details={
                                "seq_from": report.seq_from,
                                "seq_to": report.seq_to,
                                "ts_from": report.ts_from,
                                "ts_to": report.ts_to,
                                "count": report.dropped_entries,
                                "retention_days": days,
                                "as_of": report.as_of,
                                "last_signature": victims[-1].last_sig.hex(),
                                "segments": [[v.name, v.first_seq, v.last_seq, v.last_sig.hex()] for v in victims],
                                **(
                                    {
                                        "archive": {
                                            "url": copies[0]["url"],
                                            "objects": [
                                                [v.name, c["key"], c["version_id"], c["sha256"]]
                                                for v, c in zip(victims, copies)
                                            ],
                                        }
                                    }
                                    if copies
                                    else {}
                                ),
                            },
                        )
                    ]
                )
                # oldest first: a crash part-way leaves a prefix dropped, which the
                # purge entry above still accounts for segment by segment
                for v in victims:
                    for p in (v.path, *side_files(v.path)):
                        try:
                            os.unlink(p)
                        except FileNotFoundError:
                            pass
                fsync_dir(writer.data_dir.segments)
    if not dry_run and not report.dropped_segments:
        save_last_run(writer, report)
    return report


def save_last_run(writer: LogWriter, report: RetentionReport) -> None:
    """Keep a run that dropped nothing (one that dropped something is its purge entry)."""
    StateSeal(writer.key, writer.node).write(writer.data_dir.state / STATE_FILE, report.to_dict())


_PURGE = frozenset({"audit.retention_purge"})


def _from_purge(e) -> dict | None:
    """The last-run report a purge entry stands for (None: not the node's own, intact one)."""
    d = e.details
    if e.integrity != "ok" or e.action != "audit.retention_purge" or e.user != "system" or not isinstance(d, dict):
        return None
    return {
        "ran_at": format_ts(e.ts),
        "as_of": d.get("as_of"),
        "retention_days": d.get("retention_days"),
        "dry_run": False,
        "dropped_segments": [row[0] for row in d.get("segments", ()) if isinstance(row, (list, tuple)) and row],
        "dropped_entries": d.get("count"),
        "seq_from": d.get("seq_from"),
        "seq_to": d.get("seq_to"),
        "ts_from": d.get("ts_from"),
        "ts_to": d.get("ts_to"),
        "kept_segments": None,
        "entry_id": e.id,
    }


def load_last_run(log: NodeLog, seal: StateSeal, state_dir) -> tuple[dict | None, str | None]:
    """(the last retention run, a problem with the state file or None).

    The newest intact purge entry, unless the sealed record of a run that
    dropped nothing is newer.  A state file that fails its seal is ignored.
    """
    purge = None
    for e in log.scan(terms={"action": _PURGE}, order="desc", predicate=lambda e: e.action == "audit.retention_purge"):
        purge = _from_purge(e)
        if purge is not None:
            break
    try:
        quiet = seal.read(state_dir / STATE_FILE)
        problem = None
    except StateTampered as e:
        quiet, problem = None, f"{STATE_FILE}: {str(e).split(': ', 1)[-1]}"
    if quiet is not None and not (
        isinstance(quiet, dict) and isinstance(quiet.get("ran_at"), str) and not quiet.get("dropped_segments")
    ):
        quiet, problem = None, f"{STATE_FILE}: sealed, but not a run that dropped nothing"
    if quiet is not None and (purge is None or quiet["ran_at"] > purge["ran_at"]):
        return {**quiet, "entry_id": None}, problem
    return purge, problem
