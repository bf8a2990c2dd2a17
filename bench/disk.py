"""The ``disk_bytes_per_event`` job: what a node keeps on disk per event.

A real ``auditlog serve`` (fsync ``always``) takes the gateway mix of
:class:`bench.scenarios.EventGenerator` as JSON batches over HTTP; then a
reader asks for the whole log as NDJSON twice and for one selective query
(one user and one IP), and the job waits until the server's background job
has run after those reads (it writes the term postings of sealed segments,
and of the active one once enough are new), then stops the server.  The
whole data directory is counted: segments, every derived file beside them,
node state and keys.  The SQLite baseline holds the same events with its
query indexes (``bench.baseline_sqlite``).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import time
import urllib.parse
import urllib.request
from collections import Counter
from pathlib import Path


def dir_bytes(root: Path) -> tuple[int, int, Counter]:
    """``(file bytes, allocated bytes, file bytes by kind)`` of everything under ``root``;
    a segment-dir file's kind is its suffix, any other file's ``other``."""
    size = alloc = 0
    kinds: Counter = Counter()
    for dirpath, _, files in os.walk(root):
        for name in files:
            st = os.lstat(os.path.join(dirpath, name))
            size += st.st_size
            alloc += st.st_blocks * 512
            kind = Path(name).suffix if Path(dirpath).name == "segments" and Path(name).suffix else "other"
            kinds[kind] += st.st_size
    return size, alloc, kinds


def _read_lines(base: str, token: str, params: dict[str, str]) -> tuple[int, int]:
    """Lines and bytes of one NDJSON read."""
    req = urllib.request.Request(
        f"{base}/api/v1/audit-log?{urllib.parse.urlencode(params)}", headers={"Authorization": f"Bearer {token}"}
    )
    n = size = 0
    with urllib.request.urlopen(req, timeout=600) as r:
        if r.status != 200:
            raise RuntimeError(f"GET /api/v1/audit-log: HTTP {r.status}")
        while chunk := r.read(1 << 20):
            n += chunk.count(b"\n")
            size += len(chunk)
    return n, size


def job_disk_bytes(events: int, batch: int, wait: float, seed: int, workdir: str, conns: int = 4) -> dict:
    """Ingest, two full reads and a selective query through a real server, ``wait``
    seconds for its background job, then the data dir counted."""
    from auditlog.bench import servers
    from auditlog.bench.scenarios import (
        _CTYPE,
        EventGenerator,
        _encode_bodies,
        _post_all,
        validated,
    )

    gen = EventGenerator(seed)
    drafts = validated(gen.batch(events))
    batches = [drafts[i : i + batch] for i in range(0, len(drafts), batch)]
    bodies = _encode_bodies(batches, "json")
    root = Path(tempfile.mkdtemp(prefix="disk-", dir=workdir))
    (port,) = servers.free_ports(1)
    srv = servers.Server(root, "bench-disk", port)
    try:
        srv.launch("writer", "reader")
        out = asyncio.run(_post_all(srv.base, srv.keys["writer"], bodies, _CTYPE["json"], conns, srv))
        if out["appended"] != events:
            raise RuntimeError(f"appended {out['appended']} of {events} events")
        after_ingest = dir_bytes(srv.data_dir)
        token = srv.keys["reader"]
        reads = [_read_lines(srv.base, token, {"format": "ndjson"}) for _ in range(2)]
        if any(n < events for n, _ in reads):
            raise RuntimeError(f"a full NDJSON read returned {reads} lines for {events} events")
        selective, _ = _read_lines(srv.base, token, {"user": gen.query_user, "ip": gen.query_ip, "format": "ndjson"})
        if selective != gen.matches:
            raise RuntimeError(f"the selective query returned {selective} lines, {gen.matches} expected")
        time.sleep(wait)
        srv.stop()
        size, alloc, kinds = dir_bytes(srv.data_dir)
    finally:
        srv.kill()
        shutil.rmtree(root, ignore_errors=True)
    return {
        "bytes": size,
        "allocated": alloc,
        "kinds": dict(kinds),
        "after_ingest_bytes": after_ingest[0],
        "read_lines": [n for n, _ in reads],
        "ndjson_bytes": reads[0][1],
        "selective_rows": selective,
        "selective_expected": gen.matches,
        "posts": len(bodies),
        "server_peak_rss_mb": srv.peak_rss_mb,
    }


def job_sqlite_disk_bytes(events: int, batch: int, seed: int, workdir: str) -> dict:
    """The same events in the SQLite baseline (synchronous=FULL, WAL checkpointed), with
    the indexes its selective and range queries use."""
    from auditlog.bench.baseline_sqlite import SqliteBaseline
    from auditlog.bench.scenarios import NODE_ID, EventGenerator, _bench_key, validated

    d = Path(tempfile.mkdtemp(prefix="disk-sqlite-", dir=workdir))
    try:
        path = d / "baseline.sqlite"
        gen = EventGenerator(seed)
        drafts = validated(gen.batch(events))
        db = SqliteBaseline(str(path), NODE_ID, _bench_key(), synchronous="FULL")
        for i in range(0, len(drafts), batch):
            db.append_batch(drafts[i : i + batch])
        db.create_query_indexes()
        db.close()
        size, alloc, _ = dir_bytes(d)
    finally:
        shutil.rmtree(d, ignore_errors=True)
    return {"bytes": size, "allocated": alloc}
