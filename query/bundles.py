"""An evidence bundle of one node's entries (``export.bundle``), assembled from the
log: a new signed checkpoint, the matching entries under it and, for a filter by
time only, the entries just outside the window.  Used by ``auditlog export
bundle`` and ``GET /api/v1/audit-log/export.bundle``; the caller owns the writer
and records the export."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from auditlog.engine.note import Checkpoint, parse
from auditlog.engine.tree import LogTree, record_tree_head
from auditlog.export.bundle import write_bundle
from auditlog.export.ndjson import ndjson_lines
from auditlog.query.errors import QueryError
from auditlog.query.filters import Filter
from auditlog.query.scan import scan_node

#: entries one bundle holds at most (it is built in memory)
MAX_BUNDLE_ENTRIES = 200_000


class BundleRefused(QueryError):
    """No bundle can be made of this range (entries that do not verify, too many)."""

    http_status = 409


@dataclass
class BuiltBundle:
    data: bytes
    rows: int
    checkpoint_size: int
    complete: bool

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    def export_details(self, flt: Filter) -> dict:
        """What the ``audit.export`` entry of this bundle says."""
        return {
            "format": "bundle",
            "filters": flt.to_params(),
            "rows": self.rows,
            "integrity_violations": 0,
            "checkpoint_size": self.checkpoint_size,
            "claim": "complete" if self.complete else "authentic",
            "sha256": self.sha256,
        }


def _wire(entries) -> list[dict]:
    return [json.loads(line) for line in ndjson_lines(entries)]


def build_bundle(writer, log, data_dir, flt: Filter, cosign=None) -> BuiltBundle:
    """The bundle of ``flt``'s entries of this node (``writer`` must be open).
    ``cosign`` (in a cluster) takes the new signed checkpoint and returns it with the
    cosignature lines of the peers that cosigned it."""
    node_id = writer.node
    note, _ = record_tree_head(writer)
    if cosign is not None:
        note = cosign(note)
    cp = Checkpoint.parse(parse(note)[0])
    entries = []
    for e in scan_node(log, flt):
        if e.seq > cp.size:
            break
        if e.integrity != "ok":
            raise BundleRefused(
                "the range holds entries that do not verify: no bundle can vouch for them (run: auditlog verify)"
            )
        entries.append(e)
        if len(entries) > MAX_BUNDLE_ENTRIES:
            raise BundleRefused(f"more than {MAX_BUNDLE_ENTRIES} entries match: narrow the range")
    complete = not flt.index_terms() and flt.success is None and flt.admits_node(node_id)
    bounds: list[tuple[str, dict]] = []
    if complete:
        before = after = None
        if flt.from_us is not None:
            before = next(iter(scan_node(log, Filter(to_us=flt.from_us), order="desc")), None)
        if flt.to_us is not None:
            after = next(iter(scan_node(log, Filter(from_us=flt.to_us))), None)
        first = entries[0].seq if entries else (after.seq if after is not None else cp.size + 1)
        if first > 1 and (before is None or before.seq != first - 1 or before.integrity != "ok"):
            complete = False  # what lies before was dropped by retention: nothing proves it
        for side, e in (("before", before), ("after", after)):
            if complete and e is not None and e.integrity == "ok" and e.seq <= cp.size:
                bounds += [(side, x) for x in _wire([e])]
    rows = len(entries)
    lines = ndjson_lines(entries)  # the wire JSON of each entry, as the bundle holds it
    del entries
    with LogTree(writer.log, writer.key, data_dir) as tree:
        data = write_bundle(
            node_id,
            writer.signing_key,
            note,
            lines,
            tree,
            filters=flt.to_params(),
            time_only=complete,
            window=(flt.from_us, flt.to_us),
            boundaries=bounds,
        )
    return BuiltBundle(data, rows, cp.size, complete)
