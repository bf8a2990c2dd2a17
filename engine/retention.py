"""Retention: drop whole segments whose newest entry is older than the window.

Only a prefix of sealed, intact segments is ever dropped, and only after an
``audit.retention_purge`` entry naming what goes (seq and time range, count,
and each dropped segment's last signature) is durable.  Verification then
accepts the new first segment because that entry anchors its header link.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field

from engine.datadir import fsync_dir, write_atomic
from engine.entry import EntryDraft, format_ts
from engine.index import index_path
from engine.lines import lines_path
from engine.terms import terms_path
from engine.writer import LogWriter

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

    def to_dict(self) -> dict:
        return asdict(self)


def run_retention(writer: LogWriter, as_of_us: int | None = None, dry_run: bool = False) -> RetentionReport:
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
            active.max_ts < cutoff or writer.active_age() >= writer.settings.segment_max_age)
        if would_roll and not dry_run:
            writer.roll()
        infos = writer.log.segment_infos()
        structural = {p.segment for p in writer.log.structure_problems(infos)}
        victims = []
        candidates = infos if (would_roll and dry_run) else infos[:-1]   # never the active segment
        for info in candidates:
            idx = info.index
            if (info.header is None or info.problem or idx is None or idx.damaged or info.tail
                    or info.name in structural):
                break
            if idx.frames and idx.max_ts >= cutoff:
                break
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
                writer.append_batch([EntryDraft("system", "audit.retention_purge", details={
                    "seq_from": report.seq_from, "seq_to": report.seq_to,
                    "ts_from": report.ts_from, "ts_to": report.ts_to,
                    "count": report.dropped_entries, "retention_days": days,
                    "as_of": report.as_of,
                    "last_signature": victims[-1].last_sig.hex(),
                    "segments": [[v.name, v.first_seq, v.last_seq, v.last_sig.hex()] for v in victims],
                })])
                # oldest first: a crash part-way leaves a prefix dropped, which the
                # purge entry above still accounts for segment by segment
                for v in victims:
                    for p in (v.path, index_path(v.path), terms_path(v.path), lines_path(v.path)):
                        try:
                            os.unlink(p)
                        except FileNotFoundError:
                            pass
                fsync_dir(writer.data_dir.segments)
    if not dry_run:
        save_last_run(writer, report)
    return report


def save_last_run(writer: LogWriter, report: RetentionReport) -> None:
    state = writer.data_dir.state
    state.mkdir(exist_ok=True)
    write_atomic(state / STATE_FILE, json.dumps(report.to_dict(), indent=1).encode())


def load_last_run(data_dir) -> dict | None:
    try:
        return json.loads((data_dir.state / STATE_FILE).read_text())
    except (OSError, ValueError):
        return None
