"""``auditlog archive restore``: a node rebuilt from scratch takes its log back from its archive.

The node's keys come back from the operator's backup (``node.id``,
``node.key``, ``node.sign``); the segments come from the archive.  Every
object under ``<prefix>/<node>/`` is downloaded (its newest version) into a
scratch directory beside the data dir, and the chain they make together with
whatever segments the data dir still holds is verified as ``auditlog
verify`` verifies a data dir (``engine.verify.verify_node``), with this node's
key: a segment of another key, an altered frame, a seq missing between two
segments or a link that does not hold refuses the restore, and nothing is
written.  Only then are the segments the data dir lacks moved into
``segments/`` and the record of what is archived (``state/archive.json``)
made again from the objects.

Continuity with what the node's witnesses saw is checked when it serves
again: each witness refuses a checkpoint smaller than the last one it
cosigned (``rollback``), and cluster verification reports it
(``witness_truncated``), so entries lost with the old disk after its last
archived segment do not go unnoticed.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass

from auditlog.engine.catalog import index_segment
from auditlog.engine.datadir import DataDir, Node, fsync_dir
from auditlog.engine.segment import list_segments
from auditlog.engine.verify import Violation, verify_node
from auditlog.export.archive import Archived, Manifest, object_name, sha256_file
from auditlog.export.errors import ExportError
from auditlog.export.s3 import S3Store


class RestoreRefused(ExportError):
    """The archive's segments do not make a sound chain with this node's key and disk."""

    exit_code = 1

    def __init__(self, message: str, violations: list[Violation]):
        super().__init__(message)
        self.violations = violations


@dataclass
class RestoreReport:
    objects: int = 0
    restored: list[str] | None = None
    seq_from: int | None = None
    seq_to: int | None = None
    entries_checked: int = 0


def restore(store: S3Store, data_dir: DataDir, node: Node, manifest: Manifest, progress=None) -> RestoreReport:
    """Take the node's segments back from the archive (see the module docstring)."""
    nid = node.node_id
    names = sorted(n.rsplit("/", 1)[-1] for n in store.names(f"{nid}/") if n.endswith(".seg"))
    if not names:
        raise ExportError(f"{store.url} holds no segment of node {nid}")
    scratch = data_dir.root / "archive-check" / f"restore-{os.getpid()}"
    shutil.rmtree(scratch, ignore_errors=True)
    seg_dir = scratch / "segments"
    seg_dir.mkdir(parents=True, mode=0o700)
    report = RestoreReport(objects=len(names), restored=[])
    try:
        local = {p.name: p for p in list_segments(data_dir.segments)}
        versions = {}
        for i, name in enumerate(names):
            if progress:
                progress(i, len(names))
            key = object_name(nid, name)
            versions[name] = store.head(key).version_id
            store.download(key, versions[name], seg_dir / name)
            if name in local and sha256_file(local[name]) != sha256_file(seg_dir / name):
                raise RestoreRefused(
                    f"{name} on disk differs from its copy in the archive; nothing restored",
                    [],
                )
        for name, p in local.items():
            if not (seg_dir / name).exists():
                os.link(p, seg_dir / name)
        chain = verify_node(DataDir(scratch), node)
        # a torn tail of the active segment on disk is the writer's to cut back, not the archive's
        problems = [v for v in chain.violations if v.kind not in ("torn_tail",)]
        if problems:
            raise RestoreRefused(
                f"the archive's segments and this data dir do not make a sound log with node {nid}'s key "
                f"({len(problems)} problem(s)); nothing restored",
                problems,
            )
        report.entries_checked = chain.entries_checked
        # move in what the data dir lacks, and record every archived object as archived
        data_dir.segments.mkdir(parents=True, exist_ok=True)
        rows = []
        for name in names:
            path = seg_dir / name
            info = index_segment(path, node.key, nid)
            data_sha = sha256_file(path)
            rows.append(
                Archived(
                    name,
                    store.key(object_name(nid, name)),
                    versions[name],
                    data_sha,
                    path.stat().st_size,
                    info.first_seq,
                    info.last_seq,
                    info.index.min_ts if info.index else None,
                    info.index.max_ts if info.index else None,
                )
            )
            if name not in local:
                os.replace(path, data_dir.segments / name)
                report.restored.append(name)
        fsync_dir(data_dir.segments)
        manifest.add_all(rows)
        report.seq_from, report.seq_to = rows[0].first_seq, rows[-1].last_seq
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return report
