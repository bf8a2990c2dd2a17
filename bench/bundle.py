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


def _cosign_costs(dd, node, reps: int) -> tuple[list[float], dict]:
    """The work of one checkpoint handed to one witness, in this process, on the bundle's
    log: the log signs a checkpoint and proves its tree extends the one the witness
    last cosigned (half the size), the witness opens the note, judges it and cosigns
    it.  Seconds per round, and the median of each step (ms)."""
    import os as _os

    from auditlog.engine.cosign import cosign, judge, witness_name
    from auditlog.engine.log import NodeLog
    from auditlog.engine.merkle import range_hash
    from auditlog.engine.note import Checkpoint, Verifier, open_note
    from auditlog.engine.signing import SigningKey, load_signing_key
    from auditlog.engine.tree import LogTree, origin, signed_checkpoint

    key = load_signing_key(dd.sign_key_path)
    witness = SigningKey(_os.urandom(32))
    vkey = Verifier.of(origin(node.node_id), key.public_raw)
    runs: list[float] = []
    steps: dict[str, list[float]] = {"sign": [], "prove": [], "witness": []}
    log = NodeLog(dd, node)
    for _ in range(reps):
        with LogTree(log, node.key, dd) as t:
            tree = t.load()
            old = tree.size // 2
            old_root = range_hash(0, old, t.getter(old))
            t0 = time.perf_counter()
            note = signed_checkpoint(node.node_id, key, tree)
            t1 = time.perf_counter()
            proof = t.consistency(old, tree.size)
            t2 = time.perf_counter()
            text, _ = open_note(note, [vkey])
            cp = Checkpoint.parse(text)
            if judge((old, old_root), old, cp, proof) is not None:
                raise RuntimeError("the witness refused an honest checkpoint")
            cosign(text, witness_name("w"), witness, 1_700_000_000)
            t3 = time.perf_counter()
        runs.append(t3 - t0)
        steps["sign"].append(t1 - t0)
        steps["prove"].append(t2 - t1)
        steps["witness"].append(t3 - t2)
    return runs, {k: round(sorted(v)[len(v) // 2] * 1000, 3) for k, v in steps.items()}


def job_bundle(events: int, reps: int, seed: int, workdir: str, batch: int = 1000) -> dict:
    from auditlog.bench import servers
    from auditlog.bench.scenarios import NODE_ID, EventGenerator
    from auditlog.engine.datadir import DataDir
    from auditlog.engine.settings import StoreSettings
    from auditlog.engine.writer import LogWriter

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
        cosign_runs, cosign_parts = _cosign_costs(dd, node, reps * 5)
        import resource

        return {
            "cosign_runs": cosign_runs,
            "job_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "cosign_parts": cosign_parts,
            "export_runs": export_runs,
            "verify_runs": verify_runs,
            "bundle_bytes": sizes[-1],
            "export_peak_rss_mb": export_rss,
            "verify_peak_rss_mb": verify_rss,
            "entries": events,
        }
    finally:
        shutil.rmtree(root, ignore_errors=True)
