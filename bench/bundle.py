"""The ``bundle_export`` and ``bundle_verify`` jobs: an evidence bundle of N entries
written by ``auditlog export bundle`` and checked by ``auditlog verify-bundle``.

A fresh data dir gets N gateway-mix events (fsync none: data preparation) and
its first signed checkpoint (``auditlog checkpoint``, untimed, so the export
times the bundle, not the first pass of the Merkle tree over the log); then
the export of the whole log (a time range: complete, with its boundaries) and
its verification with the public key alone are each timed as real CLI
processes, ``reps`` times, with their peak RSS.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path


def _timed(cmd: list[str], env: dict, workdir: Path) -> tuple[float, float]:
    """Wall seconds and peak RSS (MB, of that process alone) of one CLI run."""
    err_path = workdir / "stderr.txt"
    with open(err_path, "wb") as err:
        t0 = time.perf_counter()
        p = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=err)
        _, status, usage = os.wait4(p.pid, 0)
        wall = time.perf_counter() - t0
        p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[-4:])}: exit {p.returncode}: {err_path.read_text()[-400:]}")
    return wall, usage.ru_maxrss / 1024


def job_bundle(events: int, reps: int, seed: int, workdir: str, batch: int = 1000) -> dict:
    from bench import servers
    from bench.scenarios import NODE_ID, EventGenerator
    from engine.datadir import DataDir
    from engine.settings import StoreSettings
    from engine.writer import LogWriter

    root = Path(tempfile.mkdtemp(prefix="bundle-", dir=workdir))
    try:
        dd = DataDir(root / "data")
        node = dd.init(NODE_ID)
        gen = EventGenerator(seed)
        with LogWriter(dd, node, StoreSettings(fsync="none")) as w:
            done = 0
            while done < events:
                k = min(batch, events - done)
                w.append_batch(gen.batch(k), canonical=True)
                done += k
        env = servers.clean_env()
        cli = [*servers.auditlog_cmd(), "--data-dir", str(dd.root)]
        subprocess.run([*cli, "checkpoint"], env=env, capture_output=True, check=True, timeout=1800)
        export_runs, verify_runs, sizes = [], [], []
        export_rss = verify_rss = 0.0
        for i in range(reps):
            out = root / f"b{i}.bundle"
            wall, rss = _timed([*cli, "export", "bundle", "-o", str(out)], env, root)
            export_runs.append(wall)
            export_rss = max(export_rss, rss)
            sizes.append(out.stat().st_size)
            wall, rss = _timed(
                [*servers.auditlog_cmd(), "verify-bundle", str(out), "--key", str(dd.public_key_path)], env, root
            )
            verify_runs.append(wall)
            verify_rss = max(verify_rss, rss)
            os.unlink(out)
        return {
            "export_runs": export_runs,
            "verify_runs": verify_runs,
            "bundle_bytes": sizes[-1],
            "export_peak_rss_mb": export_rss,
            "verify_peak_rss_mb": verify_rss,
            "entries": events,
        }
    finally:
        shutil.rmtree(root, ignore_errors=True)
