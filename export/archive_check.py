"""``auditlog verify --archive``: the archive's copy of the whole chain, checked.

What the archive must hold comes from two places an attacker with write access
to the bucket cannot change: the node's sealed ``state/archive.json`` and,
for segments retention already dropped, the ``audit.retention_purge`` entries
of the log (signed), which name each object's version and SHA-256.

1. Every object that must be there is fetched at its recorded version: gone
   is ``archive_missing``, different bytes are ``archive_altered``, and a
   newer version stored over it (what a reader that does not pin versions
   would get) is ``archive_overwritten``.
2. The chain is then verified as ``auditlog verify`` verifies a data dir
   (``engine.verify.verify_node``): the archived segments (at their recorded
   versions, or the newest one for an object nobody recorded) followed by
   the local segments not archived yet, in a scratch directory beside the data
   dir.  Seqs missing between them, broken links, frames that fail their MACs
   and entries whose signatures fail are reported as for a local log.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass

from auditlog.engine.datadir import DataDir, Node
from auditlog.engine.log import NodeLog
from auditlog.engine.segment import seq_from_name
from auditlog.engine.verify import VerifyReport, Violation, verify_node
from auditlog.export.archive import ARCHIVE_PURGE, Manifest, object_name
from auditlog.export.s3 import S3Store, StoreMissing


@dataclass
class Expected:
    """An object the archive must hold."""

    name: str  # segment file name
    version_id: str | None
    sha256: str
    seq_from: int | None
    seq_to: int | None
    source: str  # "state/archive.json" or the purge entry's id


def expected_objects(reader: NodeLog, manifest: Manifest) -> dict[str, Expected]:
    """{segment name: what the archive must hold}: the retention purge entries' objects,
    less those the archive's own retention let go (``audit.archive_purge``), then the
    sealed record of what was archived (which knows the newer ones)."""
    out: dict[str, Expected] = {}
    expired: set[str] = set()
    for e in reader.scan(terms={"action": frozenset(["audit.retention_purge", ARCHIVE_PURGE])}):
        d = e.details
        if e.integrity != "ok" or e.user != "system" or not isinstance(d, dict):
            continue
        if e.action == ARCHIVE_PURGE and d.get("url") == manifest.url:
            expired.update(row[0] for row in d.get("objects", ()) if isinstance(row, (list, tuple)) and row)
            continue
        if e.action != "audit.retention_purge":
            continue
        arch = d.get("archive")
        if not isinstance(arch, dict) or arch.get("url") != manifest.url:
            continue
        seqs = {
            row[0]: (row[1], row[2])
            for row in d.get("segments", ())
            if isinstance(row, (list, tuple)) and len(row) == 4
        }
        for row in arch.get("objects", ()):
            if isinstance(row, (list, tuple)) and len(row) == 4 and isinstance(row[0], str):
                lo, hi = seqs.get(row[0], (seq_from_name(row[0]), None))
                out[row[0]] = Expected(row[0], row[2], row[3], lo, hi, f"purge entry {e.id}")
    for name in expired:
        out.pop(name, None)
    for a in manifest.all():
        out[a.name] = Expected(a.name, a.version_id, a.sha256, a.first_seq, a.last_seq, "state/archive.json")
    return out


def verify_archive(
    store: S3Store,
    data_dir: DataDir,
    node: Node,
    manifest: Manifest,
    progress: Callable[[int, int], None] | None = None,
) -> VerifyReport:
    """Check the archive of ``node`` (see the module docstring)."""
    reader = NodeLog(data_dir, node)
    nid = node.node_id
    report = VerifyReport(nid)
    expected = expected_objects(reader, manifest)
    listed = {n.rsplit("/", 1)[-1] for n in store.names(f"{nid}/") if n.endswith(".seg")}
    scratch = data_dir.root / "archive-check" / f"verify-{os.getpid()}"
    shutil.rmtree(scratch, ignore_errors=True)
    seg_dir = scratch / "segments"
    seg_dir.mkdir(parents=True, mode=0o700)
    try:
        names = sorted(set(expected) | listed)
        for i, name in enumerate(names):
            if progress:
                progress(i, len(names))
            exp = expected.get(name)
            key = object_name(nid, name)
            data = None
            if exp is None:
                data = store.get(key)  # in the bucket, recorded nowhere: checked by the chain
            else:
                try:
                    data = store.get(key, exp.version_id)
                except StoreMissing:
                    report.violations.append(
                        Violation(
                            "archive_missing",
                            nid,
                            exp.seq_from,
                            exp.seq_to,
                            name,
                            f"the archived copy ({key}, version {exp.version_id}, recorded in {exp.source}) is gone",
                        )
                    )
                if data is not None and hashlib.sha256(data).hexdigest() != exp.sha256:
                    report.violations.append(
                        Violation(
                            "archive_altered",
                            nid,
                            exp.seq_from,
                            exp.seq_to,
                            name,
                            f"{key} version {exp.version_id} is not the copy recorded in {exp.source} "
                            "(its SHA-256 differs)",
                        )
                    )
                if exp.version_id is not None and name in listed:
                    newest = store.head(key).version_id
                    if newest is not None and newest != exp.version_id:
                        report.violations.append(
                            Violation(
                                "archive_overwritten",
                                nid,
                                exp.seq_from,
                                exp.seq_to,
                                name,
                                f"a newer version ({newest}) was stored over the archived one "
                                f"({exp.version_id}); readers of the archive use the recorded version",
                            )
                        )
            if data is not None:
                (seg_dir / name).write_bytes(data)
        # then what is local and not archived (yet): the chain goes on into it
        for p in sorted(data_dir.segments.glob("*.seg")):
            if not (seg_dir / p.name).exists():
                os.link(p, seg_dir / p.name)
        chain = verify_node(DataDir(scratch), node)
        report.entries_checked = chain.entries_checked
        for v in chain.violations:
            v.detail = f"in the archive's chain: {v.detail}"
            report.violations.append(v)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    report.violations.sort(key=lambda v: (v.seq_from or 0, v.segment, v.kind))
    return report
