"""The ``archive_upload`` and ``archive_read`` jobs: the archive against a real local S3 server.

A fresh data dir gets N gateway-mix events (fsync none: data preparation),
stamped by a clock that spreads them over two days, in segments of
``segment_mb``.  A SeaweedFS S3 gateway (``bench.s3server``) runs on
loopback with a bucket that has Object Lock.

* ``archive_upload``: the archiver copies every sealed segment (COMPLIANCE
  lock, SHA-256 checked by the store, read back, compared and indexed from the
  copy) in one pass; events archived per second, ``reps`` times, each into a
  prefix of its own.
* ``archive_read``: retention then drops every archived segment locally, and
  a fresh reader with an empty cache queries the middle day: the time to its
  first entry (the first segment fetched, checked and indexed) and the rate
  over the whole day, with the reader's anonymous memory sampled as it goes.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

DAY_US = 86_400 * 1_000_000
START_US = 1_773_478_800_000_000  # 2026-03-14T09:00:00Z


def job_archive(events: int, reps: int, seed: int, workdir: str, segment_mb: int = 16) -> dict:
    from auditlog.bench import scenarios as sc
    from auditlog.bench.s3server import SeaweedS3
    from auditlog.engine.clock import FrozenClock
    from auditlog.engine.datadir import DataDir
    from auditlog.engine.log import NodeLog
    from auditlog.engine.retention import run_retention
    from auditlog.engine.settings import StoreSettings
    from auditlog.engine.state import StateSeal
    from auditlog.engine.writer import LogWriter
    from auditlog.export.archive import Archiver, ArchiveSettings, attach_reads

    root = Path(tempfile.mkdtemp(prefix="auditlog-bench-archive-", dir=workdir))
    server = SeaweedS3(root / "s3").start()
    try:
        bucket = server.bucket("bench-archive")
        creds = server.credentials_file(root / "s3.toml")
        dd = DataDir(root / "data")
        node = dd.init(sc.NODE_ID)
        gen = sc.EventGenerator(seed)
        batch = sc.BUILD_BATCH
        commits = max(1, events // batch)
        # the events of one commit share a timestamp; commits spread over two days
        clock = FrozenClock(START_US, step_us=max(1, 2 * DAY_US // commits))
        store_settings = StoreSettings(fsync="none", segment_max_bytes=segment_mb << 20, retention_days=90)
        with LogWriter(dd, node, store_settings, clock=clock) as w:
            done = 0
            while done < events:
                k = min(batch, events - done)
                w.append_batch(gen.batch(k), canonical=True)
                done += k
            w.roll()
        seal = StateSeal(node.key, node.node_id)
        infos = NodeLog(dd, node).segment_infos()[:-1]
        archived_events = sum(i.index.count for i in infos)
        archived_bytes = sum(i.path.stat().st_size for i in infos)

        def settings(i: int) -> ArchiveSettings:
            return ArchiveSettings(url=f"s3://{bucket}/run-{i}", endpoint=server.endpoint, credentials_file=str(creds))

        upload_runs = []
        arch = None
        for i in range(reps):
            try:
                os.unlink(dd.state / "archive.json")
            except FileNotFoundError:
                pass
            arch = Archiver(
                settings(i),
                store=settings(i).store(),
                reader=NodeLog(dd, node),
                data_dir=dd,
                seal=seal,
                rejected=lambda f, p: None,
            )
            arch.check_bucket()
            t0 = time.perf_counter()
            n = arch.run_once()
            upload_runs.append(time.perf_counter() - t0)
            assert n == len(infos), (n, len(infos))
        upload_rss = sc.peak_rss_mb()
        # the archive of the last run is the node's: retention drops what it holds
        with LogWriter(dd, node, store_settings, clock=clock) as w:
            rep = run_retention(w, clock.now + 100 * DAY_US, archived=arch.archived)
        dropped = len(rep.dropped_segments)
        day_lo, day_hi = START_US + DAY_US // 2, START_US + 3 * DAY_US // 2
        first_runs, rate_runs, counts, anon = [], [], [], []
        for _ in range(reps):
            log = NodeLog(dd, node)
            reads = attach_reads(
                log, settings(reps - 1), data_dir=dd, seal=seal, rejected=lambda f, p: None, store=arch.store
            )
            shutil.rmtree(reads.dir, ignore_errors=True)  # nothing cached: every segment comes from the store
            base = sc.rss_anon_mb()
            t0 = time.perf_counter()
            it = log.scan(day_lo, day_hi)
            first = next(it)
            t_first = time.perf_counter() - t0
            n = 1
            peak = 0.0
            for _ in it:
                n += 1
                if n % 100_000 == 0:
                    peak = max(peak, sc.rss_anon_mb() - base)
            total = time.perf_counter() - t0
            assert first.integrity == "ok" and first.ts >= day_lo
            first_runs.append(t_first)
            rate_runs.append(n / total)
            counts.append(n)
            anon.append(peak)
        return {
            "events": events,
            "segments_archived": len(infos),
            "archived_events": archived_events,
            "archived_bytes": archived_bytes,
            "upload_runs": upload_runs,
            "upload_peak_rss_mb": upload_rss,
            "dropped_segments": dropped,
            "day_entries": counts[-1],
            "first_row_runs": first_runs,
            "read_rate_runs": rate_runs,
            "read_anon_growth_mb": anon,
            "job_peak_rss_mb": sc.peak_rss_mb(),
        }
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)
