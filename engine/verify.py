"""Whole-node verification and the violation kinds.

``verify_node`` re-reads every byte of every segment: segment headers and
their links, every frame's checksum and chained MAC, every entry's chained
signature, seq continuity, and the timestamps.  Findings are ``Violation``
records (data), never exceptions.

Violation kinds:

=====================  ==========================================================
header_corrupt         a segment header fails its MAC or does not parse
foreign_segment        a segment written under another node key or node id
segment_misnamed       file name and header first seq disagree (renamed/swapped)
segment_missing        seqs missing between segments or before the first one
                       (and no retention purge accounts for them)
segment_duplicate      a segment overlaps seqs already seen (copied/duplicated)
chain_broken           a segment header does not link to its predecessor's end
frame_corrupt          bytes that are not a frame where a frame should be
checksum_mismatch      a frame's xxhash does not match its payload
mac_mismatch           a frame's chained MAC does not match
undecodable            a frame verifies structurally but its records do not decode
truncated              a sealed segment ends inside a frame
torn_tail              the active segment ends inside a frame and no writer is
                       running (a crash; the next writer cuts it back)
signature_mismatch     an entry's chained signature does not match its content
seq_gap                entries missing or out of order inside a segment
timestamp_anomaly      a timestamp earlier than its predecessor (clock, not tampering)
set_aside              a file the writer moved out of segments/ into quarantine/
                       because it could not continue the log (kept for review)
state_corrupt          a file in state/ that fails its seal (edited, forged, another
                       node's), or one the node set aside as ``.rejected`` for that
=====================  ==========================================================
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import msgpack

from auditlog.engine.catalog import index_segment
from auditlog.engine.datadir import DataDir, Node
from auditlog.engine.entry import canonical_bytes
from auditlog.engine.frame import FrameError
from auditlog.engine.log import NodeLog
from auditlog.engine.recovery import quarantined
from auditlog.engine.segment import SegmentData, insert_successor, list_segments, walk_frames, with_head
from auditlog.engine.state import StateSeal, check_state_dir


@dataclass
class Violation:
    kind: str
    node: str
    seq_from: int | None
    seq_to: int | None
    segment: str
    detail: str

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class VerifyReport:
    node: str
    entries_checked: int = 0
    violations: list[Violation] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.violations

    def to_dict(self) -> dict:
        return {
            "ok": self.ok,
            "node": self.node,
            "entries_checked": self.entries_checked,
            "violations": [v.to_dict() for v in self.violations],
        }


def verify_node(data_dir: DataDir, node: Node, progress: Callable[[int, int], None] | None = None) -> VerifyReport:
    """Check everything of one node's log; ``progress(bytes_done, bytes_total)``."""
    log = NodeLog(data_dir, node)
    report = VerifyReport(node.node_id)
    seg_dir = data_dir.segments
    paths = with_head(seg_dir, list_segments(seg_dir))
    total = sum(_size(p) for p in paths)
    done = 0
    infos = []
    sign = node.key.signer()
    nid = node.node_id
    prev_ts = None
    i = 0
    while i < len(paths):
        path = paths[i]
        i += 1
        try:
            info = index_segment(path, node.key, nid)
        except FileNotFoundError:
            continue  # dropped by retention while we listed
        infos.append(info)
        if (
            i < len(paths)  # past the listing's end: the prefix it listed, never the writer's chase
            and info.header is not None
            and info.index is not None
            and insert_successor(seg_dir, paths, info.last_seq + 1, at=i)
        ):
            total += _size(paths[i])
        name = path.name
        if info.header is None:
            done += _size(path)
            continue  # reported by structure_problems
        for _, (kind, detail, sf, st) in sorted(info.index.damaged.items()):
            report.violations.append(Violation(kind, nid, sf, st, name, detail))
        # (an incomplete last frame is reported with the structure, below)
        # entry-level checks over the intact frames
        prev_sig = info.header.prev_sig
        expected = info.header.first_seq
        bad: list[int] = []
        back: dict[int, int] = {}  # seq -> µs its timestamp goes back
        rows = {r.offset: r for r in info.index.frames}
        with SegmentData(path) as sd:
            for fr in walk_frames(
                sd.data, info.header.size, info.header.mac, node.key, info.index.size, version=info.version
            ):
                if fr.problem is not None or fr.header is None:
                    # reported above; what follows continues from the seqs the index
                    # attributes to the damage (unknown after bytes that are no frame)
                    prev_sig = None
                    row = rows.get(fr.offset)
                    expected = row.first_seq + row.count if row is not None and row.count else None
                    continue
                try:
                    recs = fr.records()
                except (FrameError, ValueError, msgpack.UnpackException):
                    prev_sig = None
                    continue
                h = fr.header
                if recs and (recs[0][0] != h.first_seq or len(recs) != h.count):
                    report.violations.append(
                        Violation(
                            "frame_corrupt",
                            nid,
                            h.first_seq,
                            h.last_seq,
                            name,
                            f"frame at offset {fr.offset}: header does not describe its records",
                        )
                    )
                for r in recs:
                    seq, ts = r[0], r[1]
                    if expected is not None and seq != expected:
                        report.violations.append(
                            Violation(
                                "seq_gap",
                                nid,
                                min(seq, expected),
                                max(seq, expected) - 1 if seq > expected else expected,
                                name,
                                f"expected seq {expected}, found {seq}",
                            )
                        )
                    expected = seq + 1
                    if prev_ts is not None and ts < prev_ts:
                        back[seq] = prev_ts - ts
                    prev_ts = ts if prev_ts is None else max(prev_ts, ts)
                    if prev_sig is None or sign(prev_sig, canonical_bytes(nid, seq, ts, r[2:10])) != r[10]:
                        if prev_sig is not None:
                            bad.append(seq)
                    prev_sig = r[10]
                    report.entries_checked += 1
                if progress:
                    progress(done + fr.end, total)
        for a, b in _ranges(bad):
            report.violations.append(
                Violation("signature_mismatch", nid, a, b, name, "entry signature does not match its content")
            )
        for a, b in _ranges(sorted(back)):
            # one finding per run of entries, not one per entry
            worst = max(back[s] for s in range(a, b + 1) if s in back)
            report.violations.append(
                Violation(
                    "timestamp_anomaly",
                    nid,
                    a,
                    b,
                    name,
                    f"timestamp goes back {worst} µs from its predecessor"
                    if a == b
                    else f"{b - a + 1} timestamps earlier than an entry before them (up to {worst} µs)",
                )
            )
        done += _size(path)
        if progress:
            progress(done, total)
    for p in log.structure_problems(infos):
        seq_from, seq_to = p.seq_from, p.seq_to
        if p.named_seq is not None:
            # a file whose header cannot be read: named by the seq its name claims
            # (FORMAT.md section 9, step 5), its range open when it holds no seq of the log
            seq_from = p.named_seq
            if seq_to is not None and (seq_to < p.seq_from or seq_to < seq_from):
                seq_to = None
        report.violations.append(Violation(p.kind, nid, seq_from, seq_to, p.segment, p.detail))
    for name, problem in check_state_dir(data_dir.state, StateSeal(node.key, nid)):
        report.violations.append(Violation("state_corrupt", nid, None, None, f"state/{name}", problem))
    for q in sorted(data_dir.state.glob("*.rejected")) if data_dir.state.is_dir() else ():
        report.violations.append(
            Violation(
                "state_corrupt",
                nid,
                None,
                None,
                f"state/{q.name}",
                "failed its seal and was set aside by the node (see the audit.recovery entry naming it); "
                "review it, then remove it",
            )
        )
    for q in quarantined(data_dir):
        report.violations.append(
            Violation(
                "set_aside",
                nid,
                None,
                None,
                f"quarantine/{q.name}",
                "moved out of segments/ by the writer: it could not continue the log (see the "
                "audit.recovery entry); review it, then remove it",
            )
        )
    report.violations.sort(key=lambda v: (v.seq_from or 0, v.segment, v.kind))
    return report


def _size(path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _ranges(seqs: list[int]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for s in seqs:
        if out and s == out[-1][1] + 1:
            out[-1] = (out[-1][0], s)
        else:
            out.append((s, s))
    return out
