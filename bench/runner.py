"""``auditlog bench``: run the scenarios, print the table, write the JSON.

Each measurement runs in a fresh interpreter (see :mod:`bench.scenarios`), ours
and the SQLite baseline's in separate ones, so every peak RSS belongs to one
scenario of one engine.  Values are medians over several repetitions: the
machines this runs on are shared and noisy.

JSON (``--json FILE``)::

    {"results": [{"name", "value", "unit", "baseline", "ratio", "params",
                  "peak_rss_mb", "target", "status"}],
     "machine": {...}, "quick": bool, "errors": [...]}

``http_ingest`` and ``merge`` run real ``auditlog serve`` processes (one node,
or a 3-node mTLS cluster) on free loopback ports, started and stopped by their
job (:mod:`bench.servers`); their ``peak_rss_mb`` is the server's (VmHWM).
``AUDITLOG_BENCH_PROFILE=DIR auditlog bench ...`` runs those servers under
cProfile and leaves ``DIR/*.pstats`` and ``*.txt`` (the numbers of such a run
are slower and say so in ``params.profiled``).

``ratio`` is oriented so that > 1 always means "better than SQLite":
value / baseline for throughputs, baseline / value for durations and sizes.
A missed target prints MISS; it never fails the process.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from auditlog.bench import scenarios as sc
from auditlog.bench.baseline_sqlite import DESCRIPTION as SQLITE_DESCRIPTION
from auditlog.bench.servers import PROFILE_ENV
from auditlog.engine.errors import AuditLogError

SCENARIOS = (
    "append",
    "scan",
    "selective_query",
    "csv_export",
    "http_ingest",
    "merge",
    "scan_rss",
    "soak_rss",
    "disk_bytes_per_event",
    "bundle",
    "archive",
)
#: result names that select their scenario in ``--only``
_ALIASES = {
    "append_4threads": "append",
    "selective_query_cold": "selective_query",
    "csv": "csv_export",
    "selective": "selective_query",
    "http": "http_ingest",
    "http_ingest_msgpack": "http_ingest",
    "http_append_p99_ms": "http_ingest",
    "merge_first_byte_ms": "merge",
    "unreachable_peer_cost_s": "merge",
    "soak": "soak_rss",
    "disk": "disk_bytes_per_event",
    "bundle_export": "bundle",
    "bundle_verify": "bundle",
    "cosign_round_ms": "bundle",
    "archive_upload": "archive",
    "archive_first_row_ms": "archive",
    "archive_read": "archive",
}
_ROOT = Path(__file__).resolve().parents[1]
#: each data-set segment mmap is at most this big; a scan maps one segment at a time
_SEGMENT_MB = 64


class BenchError(AuditLogError):
    """A usage problem with ``auditlog bench`` (exit 2, one line)."""


class JobFailed(Exception):
    pass


@dataclass(frozen=True)
class Plan:
    """Sizes of one run (``--quick`` and the full run differ only here)."""

    n: int  # events in the shared read data set
    append_events: int  # events per append run
    append_reps: int
    reps: int  # repetitions of the read scenarios
    cold_reps: int
    warm_reps: int
    csv_rows: int
    http_events: int  # events per HTTP ingest run (batches of http_batch)
    http_reps: int
    latency_seconds: float  # measured window of the paced single-event POSTs
    merge_events: int  # events over the 3 cluster nodes (N/3 each)
    merge_reps: int
    soak_events: int  # events POSTed to one server in the soak
    soak_reader_interval: float  # seconds between the soak reader's rounds
    disk_events: int = 200_000  # events in the disk-usage run
    bundle_events: int = 100_000  # entries in the evidence bundle
    bundle_reps: int = 3
    archive_events: int = 1_000_000  # events archived (in 16 MiB segments) and read back
    archive_reps: int = 3
    disk_wait: float = 36.0  # seconds after the reads for the server's background job (first at 5 s, every 30 s)
    soak_rate: float = 13_000.0  # events/s, both writers together
    soak_batch: int = 200
    batch: int = sc.BUILD_BATCH
    seed: int = sc.SEED
    http_batch: int = 1000
    http_conns: int = 16  # enough requests in flight to cover one commit's fsync and validation latency
    latency_rate: float = 5000.0
    latency_conns: int = 32
    ttfb_reps: int = 7
    query_reps: int = 5
    peer_timeout: float = 2.0

    @classmethod
    def make(cls, quick: bool, events: int | None) -> Plan:
        if events is not None:  # tiny runs (tests): a few thousand events
            return cls(
                n=events,
                append_events=events,
                append_reps=2,
                reps=2,
                cold_reps=2,
                warm_reps=3,
                csv_rows=events,
                batch=max(10, min(sc.BUILD_BATCH, events // 20)),
                http_events=events,
                http_reps=1,
                latency_seconds=0.5,
                merge_events=events,
                merge_reps=1,
                soak_events=events,
                soak_reader_interval=0.5,
                soak_rate=5000.0,
                soak_batch=100,
                disk_events=events,
                disk_wait=6.0,
                bundle_events=events,
                bundle_reps=1,
                archive_events=events,
                archive_reps=1,
                http_batch=min(1000, max(10, events // 6)),
                http_conns=4,
                latency_rate=500.0,
                latency_conns=8,
                ttfb_reps=3,
                query_reps=3,
            )
        if quick:
            return cls(
                n=1_000_000,
                append_events=100_000,
                append_reps=3,
                reps=3,
                cold_reps=3,
                warm_reps=7,
                csv_rows=200_000,
                http_events=200_000,
                http_reps=3,
                latency_seconds=2.0,
                merge_events=300_000,
                merge_reps=3,
                soak_events=1_000_000,
                soak_reader_interval=10.0,
            )
        return cls(
            n=10_000_000,
            append_events=200_000,
            append_reps=3,
            reps=5,
            cold_reps=5,
            warm_reps=11,
            csv_rows=200_000,
            http_events=200_000,
            http_reps=3,
            latency_seconds=5.0,
            merge_events=1_500_000,
            merge_reps=3,
            soak_events=5_200_000,
            soak_reader_interval=30.0,
            disk_events=1_000_000,
        )


@dataclass
class Result:
    name: str
    value: float | None
    unit: str
    baseline: float | None
    higher_is_better: bool
    params: dict[str, Any]
    peak_rss_mb: float | None
    targets: list[tuple[str, Callable[[Result], bool]]] = field(default_factory=list)

    @property
    def ratio(self) -> float | None:
        if not self.value or not self.baseline:
            return None
        return self.value / self.baseline if self.higher_is_better else self.baseline / self.value

    def checks(self) -> list[tuple[str, bool]]:
        return [(text, bool(ok(self))) for text, ok in self.targets]

    @property
    def status(self) -> str | None:
        c = self.checks()
        if not c:
            return None
        return "PASS" if all(ok for _, ok in c) else "MISS"

    def to_json(self) -> dict:
        return {
            "name": self.name,
            "value": self.value,
            "unit": self.unit,
            "baseline": self.baseline,
            "ratio": self.ratio,
            "params": self.params,
            "peak_rss_mb": self.peak_rss_mb,
            "target": "; ".join(t for t, _ in self.targets) or None,
            "status": self.status,
            "checks": [{"target": t, "pass": ok} for t, ok in self.checks()],
        }


# --------------------------------------------------------------------------- jobs


def _run_job(job: str, **kwargs: Any) -> dict:
    """Run one job in a fresh interpreter; its result dict (with peak_rss_mb)."""
    with tempfile.TemporaryDirectory(prefix="auditlog-bench-job-") as t:
        out = os.path.join(t, "result.json")
        env = dict(os.environ)
        env["PYTHONPATH"] = str(_ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        proc = subprocess.run(
            [sys.executable, "-m", "auditlog.bench.scenarios", json.dumps({"job": job, "kwargs": kwargs}), out],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE if not sc.on_terminal() else None,
            text=True,
        )
        if proc.returncode != 0 or not os.path.exists(out):
            tail = (proc.stderr or "").strip().splitlines()[-3:] if proc.stderr else []
            raise JobFailed(f"job {job} failed (exit {proc.returncode})" + (": " + " | ".join(tail) if tail else ""))
        with open(out) as f:
            return json.load(f)


def _run_parallel(jobs: list[tuple[str, dict]], labels: list[str]) -> list[dict | BaseException]:
    """Run jobs side by side (each in its own process), showing their progress files."""
    results: list[dict | BaseException | None] = [None] * len(jobs)
    with tempfile.TemporaryDirectory(prefix="auditlog-bench-progress-") as t:
        files = [os.path.join(t, f"p{i}") for i in range(len(jobs))]

        def run(i: int) -> None:
            name, kw = jobs[i]
            try:
                results[i] = _run_job(name, progress_file=files[i], **kw)
            except BaseException as e:  # reported by the caller
                results[i] = e

        threads = [threading.Thread(target=run, args=(i,)) for i in range(len(jobs))]
        for th in threads:
            th.start()
        t0 = time.perf_counter()
        while any(th.is_alive() for th in threads):
            time.sleep(0.5)
            if sc.on_terminal():
                parts = []
                for label, path in zip(labels, files):
                    try:
                        done, total = map(int, Path(path).read_text().split())
                        parts.append(f"{label} {done / 1e6:.2f}M/{total / 1e6:.2f}M")
                    except (OSError, ValueError):
                        parts.append(f"{label} starting")
                sys.stderr.write(
                    f"\r  building data ({time.perf_counter() - t0:5.0f} s): " + ", ".join(parts) + "\x1b[K"
                )
                sys.stderr.flush()
        for th in threads:
            th.join()
        if sc.on_terminal():
            sys.stderr.write("\r\x1b[K")
            sys.stderr.flush()
    return results  # type: ignore[return-value]


# --------------------------------------------------------------------------- data set


def _cache_dir(plan: Plan, cache_root: str) -> Path:
    from auditlog.engine.frame import FRAME_MAGIC
    from auditlog.engine.segment import FORMAT_VERSION
    from auditlog.engine.settings import StoreSettings

    key = json.dumps(
        {
            "gen": sc.GEN_VERSION,
            "n": plan.n,
            "seed": plan.seed,
            "batch": plan.batch,
            "format": FORMAT_VERSION,
            "frame": FRAME_MAGIC.decode(),
            "segment_max_bytes": StoreSettings().segment_max_bytes,
            "node": sc.NODE_ID,
        },
        sort_keys=True,
    )
    return Path(cache_root) / f"auditlog-bench-cache-{hashlib.sha256(key.encode()).hexdigest()[:12]}"


def _log_ok(cache: Path, plan: Plan) -> bool:
    """Is the cached log there, ours (node.id) and complete (head seq = N)?"""
    try:
        meta = json.loads((cache / "meta_log.json").read_text())
        if meta.get("n") != plan.n or len(meta.get("batch_ts", ())) * plan.batch < plan.n:
            return False
        if (cache / "log" / "node.id").read_text().strip() != sc.NODE_ID:
            return False
        from auditlog.engine.datadir import DataDir
        from auditlog.engine.log import NodeLog

        dd = DataDir(cache / "log")
        seq, _ = NodeLog(dd, dd.open()).head()
        return seq == plan.n
    except (OSError, ValueError, KeyError, AuditLogError):
        return False


def _sqlite_ok(cache: Path, plan: Plan) -> bool:
    try:
        meta = json.loads((cache / "meta_sqlite.json").read_text())
        if meta.get("n") != plan.n:
            return False
        conn = sqlite3.connect(f"file:{cache / 'baseline.sqlite'}?mode=ro", uri=True)
        try:
            (top,) = conn.execute("SELECT max(seq) FROM events").fetchone()
            names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='index'")}
        finally:
            conn.close()
        return top == plan.n and {"events_ts", "events_user", "events_ip"} <= names
    except (OSError, ValueError, KeyError, sqlite3.Error):
        return False


def ensure_dataset(plan: Plan, cache_root: str, say: Callable[[str], None]) -> Path:
    """The cached read data set for ``plan`` (built, both engines side by side, if missing)."""
    cache = _cache_dir(plan, cache_root)
    cache.mkdir(parents=True, exist_ok=True)
    need = []
    if not _log_ok(cache, plan):
        need.append(("build_log", "log"))
    if not _sqlite_ok(cache, plan):
        need.append(("build_sqlite", "sqlite"))
    if need:
        say(
            f"# building the data set: {plan.n:,} events into {cache} "
            f"({', '.join(label for _, label in need)}; ours with fsync=none, SQLite with "
            "synchronous=OFF: data preparation, not measured)"
        )
        (cache / "meta.json").unlink(missing_ok=True)
        kw = {"cache_dir": str(cache), "n": plan.n, "seed": plan.seed, "batch": plan.batch}
        t0 = time.perf_counter()
        outs = _run_parallel([(job, kw) for job, _ in need], [label for _, label in need])
        for (_job, label), out in zip(need, outs):
            if isinstance(out, BaseException):
                raise JobFailed(f"building the {label} data set failed: {out}")
            out["n"] = plan.n
            (cache / f"meta_{label}.json").write_text(json.dumps(out))
        say(f"# data set built in {time.perf_counter() - t0:.0f} s")
    else:
        say(f"# reusing the cached data set {cache} ({plan.n:,} events; node.id and head verified)")
    mlog = json.loads((cache / "meta_log.json").read_text())
    msql = json.loads((cache / "meta_sqlite.json").read_text())
    if mlog["matches"] != msql["matches"]:
        raise JobFailed("the two data sets differ (generator not deterministic?)")
    meta = {
        "n": plan.n,
        "batch": plan.batch,
        "seed": plan.seed,
        "log_batch_ts": mlog["batch_ts"],
        "sqlite_batch_ts": msql["batch_ts"],
        "matches": mlog["matches"],
        "query_user": mlog["query_user"],
        "query_ip": mlog["query_ip"],
        "log_bytes": mlog.get("bytes"),
        "sqlite_bytes": msql.get("bytes"),
    }
    (cache / "meta.json").write_text(json.dumps(meta))
    return cache


# --------------------------------------------------------------------------- scenarios


def _at_least(x: float) -> Callable[[Result], bool]:
    return lambda r: r.value is not None and r.value >= x


def _at_most(x: float) -> Callable[[Result], bool]:
    return lambda r: r.value is not None and r.value <= x


def _ratio_at_least(x: float) -> Callable[[Result], bool]:
    return lambda r: r.ratio is not None and r.ratio >= x


def _rnd(xs: list[float], nd: int = 0) -> list[float]:
    return [round(x, nd) if nd else round(x) for x in xs]


def _cpu(
    ours: dict, base: dict, key: str = "cpu_value", higher_is_better: bool = True, scale: float = 1.0, unit: str = ""
) -> dict:
    """The same measurement in CPU time (steadier than wall time on a busy machine)."""
    a, b = ours.get(key), base.get(key)
    if not a or not b:
        return {}
    return {
        f"cpu_value{unit}": (round(a * scale, 2) if scale != 1 else round(a)),
        f"baseline_cpu_value{unit}": (round(b * scale, 2) if scale != 1 else round(b)),
        "cpu_ratio": round(a / b if higher_is_better else b / a, 3),
    }


def scenario_append(plan: Plan, ctx: dict) -> list[Result]:
    out = []
    for name, threads, batch in (("append", 1, 1000), ("append_4threads", 4, 250)):
        if ctx["tiny"]:
            batch = min(batch, plan.batch)
        kw = dict(
            events=plan.append_events,
            batch=batch,
            threads=threads,
            reps=plan.append_reps,
            seed=plan.seed,
            workdir=ctx["workdir"],
        )
        ours = _run_job("append", **kw)
        base = _run_job("sqlite_append", **kw)
        commits = ours["commits"]
        params = {
            "N": plan.append_events,
            "batch": batch,
            "threads": threads,
            "fsync": "always",
            "runs": plan.append_reps,
            "data_dir": "fresh per run",
            "input": "pre-validated EntryDraft lists (ingest.validate_batch, untimed)",
            "events_per_fsync": round(plan.append_events / (sum(commits) / len(commits)), 1),
            "ours_runs": _rnd(ours["runs"]),
            "baseline_runs": _rnd(base["runs"]),
            "baseline": f"{SQLITE_DESCRIPTION}; synchronous=FULL; same batches"
            + ("; 4 threads share one connection under a lock" if threads > 1 else ""),
            "baseline_peak_rss_mb": round(base["peak_rss_mb"], 1),
            **_cpu(ours, base),
        }
        targets = [("≥ 250k events/s", _at_least(250_000))]
        if threads == 1:
            targets.append(("≥ 3× SQLite", _ratio_at_least(3.0)))
        out.append(Result(name, ours["value"], "events/s", base["value"], True, params, ours["peak_rss_mb"], targets))
        ctx["emit"](out[-1])
    return out


def scenario_scan(plan: Plan, ctx: dict) -> list[Result]:
    cache = ctx["cache"]()
    ours = _run_job("scan", cache_dir=str(cache), reps=plan.reps)
    base = _run_job("sqlite_scan", cache_dir=str(cache), reps=plan.reps)
    params = {
        "N": plan.n,
        "range_entries": ours["count"],
        "slice": "middle of the log",
        "reps": plan.reps,
        "api": "NodeLog.scan(from_us, to_us), counting entries",
        "verified": "xxhash + chained frame MAC of every frame read",
        "violations": ours["violations"],
        "ours_runs": _rnd(ours["runs"]),
        "baseline_runs": _rnd(base["runs"]),
        "baseline": "SQLite SELECT all columns WHERE ts >= ? AND ts < ? (index on ts), "
        "iterating row tuples; details not decoded, HMAC chain NOT re-verified",
        "baseline_rows": base["count"],
        "baseline_with_chain_verify_events_per_s": round(base["verified_value"]),
        "baseline_peak_rss_mb": round(base["peak_rss_mb"], 1),
        **_cpu(ours, base),
    }
    if ours["count"] != ours["expected"] or base["count"] != ours["expected"]:
        params["warning"] = f"expected {ours['expected']} entries"
    r = Result(
        "scan",
        ours["value"],
        "events/s",
        base["value"],
        True,
        params,
        ours["peak_rss_mb"],
        [("≥ 1M events/s", _at_least(1_000_000))],
    )
    ctx["emit"](r)
    return [r]


def scenario_selective(plan: Plan, ctx: dict) -> list[Result]:
    cache = ctx["cache"]()
    meta = json.loads((cache / "meta.json").read_text())
    ours = _run_job("selective", cache_dir=str(cache), cold_reps=plan.cold_reps, warm_reps=plan.warm_reps)
    base = _run_job("sqlite_selective", cache_dir=str(cache), cold_reps=plan.cold_reps, warm_reps=plan.warm_reps)
    common = {
        "N": plan.n,
        "user": meta["query_user"],
        "ip": meta["query_ip"],
        "matches": ours["count"],
        "expected_matches": meta["matches"],
        "frames_read": ours["frames_read"],
        "frames_total": ours["frames_total"],
        "entries_decoded": ours["entries_decoded"],
        "pick": "median-activity user and its first home IP",
        "api": "query.scan.scan_node(log, Filter(users=(u,), ips=(ip,))), list()",
        "violations": ours["violations"],
        "baseline": "SQLite WHERE user = ? AND ip = ? ORDER BY seq, indexes on user and ip "
        f"(+ts), ANALYZE; plan: {base['plan']}",
        "baseline_matches": base["count"],
        "baseline_peak_rss_mb": round(base["peak_rss_mb"], 1),
    }
    if ours["count"] != meta["matches"] or base["count"] != meta["matches"]:
        common["warning"] = "match count differs from what the generator produced"
    target = f"≤ 50 ms over {plan.n / 1e6:g}M events"
    warm = Result(
        "selective_query",
        ours["warm"],
        "s",
        base["warm"],
        False,
        {
            **common,
            "mode": "warm (same NodeLog, indexes cached)",
            "reps": plan.warm_reps,
            "runs_ms": _rnd([x * 1e3 for x in ours["warm_runs"]], 2),
            **_cpu(ours, base, "warm_cpu", False, 1e3, "_ms"),
        },
        ours["peak_rss_mb"],
        [(target, _at_most(0.050))],
    )
    cold = Result(
        "selective_query_cold",
        ours["cold"],
        "s",
        base["cold"],
        False,
        {
            **common,
            "mode": "cold (first query after opening a fresh NodeLog / SQLite connection; OS page cache warm)",
            "reps": plan.cold_reps,
            "runs_ms": _rnd([x * 1e3 for x in ours["cold_runs"]], 2),
            **_cpu(ours, base, "cold_cpu", False, 1e3, "_ms"),
        },
        ours["peak_rss_mb"],
    )
    ctx["emit"](warm)
    ctx["emit"](cold)
    return [warm, cold]


def scenario_csv(plan: Plan, ctx: dict) -> list[Result]:
    cache = ctx["cache"]()
    ours = _run_job("csv", cache_dir=str(cache), reps=plan.reps, rows=plan.csv_rows)
    base = _run_job("sqlite_csv", cache_dir=str(cache), reps=plan.reps, rows=plan.csv_rows)
    params = {
        "N": plan.n,
        "rows": ours["count"],
        "reps": plan.reps,
        "output": "/dev/null (UTF-8)",
        "csv_bytes": ours["bytes"],
        "api": "export.csv.iter_csv(scan_node(log, Filter(from_us, to_us)))",
        "ours_runs": _rnd(ours["runs"]),
        "baseline_runs": _rnd(base["runs"]),
        "baseline": "SQLite range SELECT -> stdlib csv.writer, same 13 columns, details "
        "msgpack -> sorted JSON, no formula neutralising, no chain verification",
        "baseline_rows": base["count"],
        "baseline_peak_rss_mb": round(base["peak_rss_mb"], 1),
        **_cpu(ours, base),
    }
    r = Result(
        "csv_export",
        ours["value"],
        "rows/s",
        base["value"],
        True,
        params,
        ours["peak_rss_mb"],
        [("≥ 200k rows/s", _at_least(200_000))],
    )
    ctx["emit"](r)
    return [r]


def scenario_scan_rss(plan: Plan, ctx: dict) -> list[Result]:
    cache = ctx["cache"]()
    small = _run_job("scan_rss", cache_dir=str(cache), which="small")
    full = _run_job("scan_rss", cache_dir=str(cache), which="full")
    params = {
        "N": plan.n,
        "small_range_entries": small["count"],
        "full_entries": full["count"],
        "value": "peak RSS scanning the whole log",
        "baseline": "peak RSS scanning a small range",
        "small_peak_rss_mb": round(small["peak_rss_mb"], 1),
        "full_peak_rss_mb": round(full["peak_rss_mb"], 1),
        "small_peak_heap_mb": round(small["peak_anon_mb"], 1),
        "full_peak_heap_mb": round(full["peak_anon_mb"], 1),
        "index_heap_mb": round(full["index_anon_mb"], 1),
        "full_scan_events_per_s": round(full["count"] / full["seconds"]) if full["seconds"] else None,
        "note": f"RSS includes mmap'd segment pages (one segment, ≤ {_SEGMENT_MB} MiB, "
        "mapped at a time); heap = RssAnon sampled during the scan",
    }

    def flat(r: Result) -> bool:
        return (
            full["peak_anon_mb"] - small["peak_anon_mb"] <= 32
            and full["peak_rss_mb"] - small["peak_rss_mb"] <= _SEGMENT_MB + 32
        )

    r = Result(
        "scan_rss",
        full["peak_rss_mb"],
        "MB",
        small["peak_rss_mb"],
        False,
        params,
        full["peak_rss_mb"],
        [(f"flat: full − small ≤ {_SEGMENT_MB}+32 MB RSS and ≤ 32 MB heap", flat)],
    )
    ctx["emit"](r)
    return [r]


def _profiled_note(*outs: dict) -> dict:
    if any(o.get("profiled") for o in outs):
        return {"profiled": f"servers ran under cProfile ({PROFILE_ENV}): slower than normal"}
    return {}


def scenario_http_ingest(plan: Plan, ctx: dict) -> list[Result]:
    out = []
    kw = dict(
        events=plan.http_events, batch=plan.http_batch, reps=plan.http_reps, seed=plan.seed, workdir=ctx["workdir"]
    )
    base = _run_job("sqlite_append", threads=1, **kw)
    server = (
        "a real `auditlog serve` subprocess, fsync=always, fresh data dir per run "
        "(init + `apikey create --role writer` first), free loopback port"
    )
    for name, fmt in (("http_ingest", "json"), ("http_ingest_msgpack", "msgpack")):
        ours = _run_job("http_ingest", conns=plan.http_conns, fmt=fmt, **kw)
        params = {
            "N": plan.http_events,
            "batch": plan.http_batch,
            "conns": plan.http_conns,
            "body": f"{'JSON array' if fmt == 'json' else 'msgpack array'} "
            f"(Content-Type: {sc._CTYPE[fmt]}), ~{ours['body_bytes'] // 1024} KiB per batch",
            "fsync": "always",
            "runs": plan.http_reps,
            "server": server,
            "client": f"aiohttp in the bench process, {plan.http_conns} keep-alive connections "
            "(opened before timing), bodies pre-encoded, each answer checked (201, appended)",
            "ours_runs": _rnd(ours["runs"]),
            "baseline_runs": _rnd(base["runs"]),
            "server_cpu_value": round(ours["cpu_value"]),
            "cpu_note": "server_cpu_value = events / CPU seconds (utime+stime, /proc) of the "
            "server process in the timed window; client_cpu_s = the bench process's",
            "client_cpu_s": round(ours["client_cpu_s"], 2),
            "baseline": f"the append baseline: {SQLITE_DESCRIPTION}; synchronous=FULL; the same "
            f"{plan.http_batch}-event batches appended in-process (no HTTP, no parsing)",
            "baseline_peak_rss_mb": round(base["peak_rss_mb"], 1),
            "client_peak_rss_mb": round(ours["peak_rss_mb"], 1),
            "peak_rss": "of the server process (VmHWM)",
            **_profiled_note(ours),
        }
        r = Result(
            name,
            ours["value"],
            "events/s",
            base["value"],
            True,
            params,
            ours["server_peak_rss_mb"],
            [("≥ 80k events/s", _at_least(80_000))],
        )
        ctx["emit"](r)
        out.append(r)
    lat = _run_job(
        "http_latency",
        rate=plan.latency_rate,
        seconds=plan.latency_seconds,
        conns=plan.latency_conns,
        seed=plan.seed,
        workdir=ctx["workdir"],
    )
    params = {
        "N": lat["requests"],
        "rate": plan.latency_rate,
        "seconds": plan.latency_seconds,
        "conns": plan.latency_conns,
        "fsync": "always",
        "p50_ms": round(lat["p50_ms"], 2),
        "p90_ms": round(lat["p90_ms"], 2),
        "p99_ms": round(lat["p99_ms"], 2),
        "max_ms": round(lat["max_ms"], 2),
        "achieved_rate": round(lat["achieved_rate"]),
        "p99_from_due_ms": round(lat["p99_from_due_ms"], 2),
        "warmup_requests": lat["warmup_requests"],
        "server_cpu_s": round(lat["server_cpu_s"], 2),
        "client_cpu_s": round(lat["client_cpu_s"], 2),
        "method": f"single-event POST /api/v1/events (JSON), request i due at i/{plan.latency_rate:g} s; "
        f"{plan.latency_conns} workers with a keep-alive connection each take every "
        f"{plan.latency_conns}th request; latency from send to answer (p99_from_due_ms: "
        "from the due time, which includes the wait of a worker that fell behind)",
        "server": server,
        "peak_rss": "of the server process (VmHWM)",
        **_profiled_note(lat),
    }
    if lat["achieved_rate"] < 0.9 * plan.latency_rate:
        params["warning"] = (
            f"offered {plan.latency_rate:g}/s, achieved {lat['achieved_rate']:.0f}/s "
            f"(server CPU {lat['server_cpu_s']:.2f} s in {lat['seconds']:.2f} s): "
            "the server was saturated; these are a saturated server's latencies"
        )
    r = Result("http_append_p99_ms", lat["p99_ms"], "ms", None, False, params, lat["server_peak_rss_mb"])
    ctx["emit"](r)
    out.append(r)
    return out


def scenario_merge(plan: Plan, ctx: dict) -> list[Result]:
    kw = dict(events=plan.merge_events, reps=plan.merge_reps, seed=plan.seed, workdir=ctx["workdir"])
    ours = _run_job("merge", ttfb_reps=plan.ttfb_reps, query_reps=plan.query_reps, peer_timeout=plan.peer_timeout, **kw)
    base = _run_job("sqlite_merge", **kw)
    per_node = ours["per_node"]
    cluster = (
        f"3 real `auditlog serve` nodes ({', '.join(sc.MERGE_NODES)}), mTLS peer listeners "
        f"(`cluster ca-init`/`issue-cert`), peer_timeout={plan.peer_timeout:g} s, "
        "checkpoint_interval=3600 s (no checkpoint rounds during the run)"
    )
    load = (
        f"{per_node:,} generated events per node (its own seed) written before the servers "
        f"start by each node's LogWriter in commits of {sc.MERGE_COMMIT} events (fsync off: "
        "an untimed fixture), the 3 nodes' commits taking turns 1 ms apart, so the merged "
        f"stream switches node every {sc.MERGE_COMMIT} entries; the SQLite data sets get the "
        "same commits and timestamps; plus each node's bookkeeping entries (node_join, "
        "api_key_create)"
    )
    common = {
        "N": ours["expected"],
        "nodes": 3,
        "per_node": per_node,
        "heads": ours["heads"],
        "cluster": cluster,
        "load": load,
        "build_seconds": round(ours["build_seconds"], 1),
        **_profiled_note(ours),
    }
    sc_cpu = [round(sum(x), 2) for x in ours["server_cpu"]]
    params = {
        **common,
        "reps": plan.merge_reps,
        "request": "GET /api/v1/audit-log?format=ndjson on node 1 (reader key), no limit, "
        "read to the end by aiohttp in the bench process, lines counted "
        "(= sum of head_seq checked, no node_status lines); one untimed warm-up stream",
        "ours_runs": _rnd(ours["runs"]),
        "baseline_runs": _rnd(base["runs"]),
        "first_read_events_per_s": round(ours["first_read"]),
        "first_read": "the untimed warm-up stream, the first read after the servers started "
        "(nothing rendered is kept: every read renders its frames)",
        "segment_bytes": ours["disk"][".seg"],
        "derived_file_bytes": ours["disk"][".idx"] + ours["disk"][".terms"],
        "ndjson_bytes": ours["bytes"],
        "server_cpu_s": sc_cpu,
        "serving_node_cpu_s": [round(x[0], 2) for x in ours["server_cpu"]],
        "cpu_value": round(ours["cpu_value"]),
        "baseline_cpu_value": round(base["cpu_value"]),
        "cpu_ratio": round(ours["cpu_value"] / base["cpu_value"], 3),
        "cpu_note": "cpu_value = entries / CPU seconds of all 3 servers; baseline: of its one process",
        "serving_node_cpu_value": round(ours["serving_cpu_value"]),
        "baseline": "SQLite: the same 3 data sets (same generator seeds) in 3 SQLite DBs (WAL, "
        "index on ts, built with synchronous=OFF, untimed), merged in ONE process "
        "with heapq.merge over 3 ordered cursors (SELECT all columns ORDER BY ts, seq), "
        "key (ts, node, seq), each row rendered as the same NDJSON line "
        "(export.ndjson) to /dev/null; no HTTP, no TLS, no chain verification",
        "baseline_rows": base["count"],
        "baseline_merge_only_events_per_s": round(base["merge_only_value"]),
        "merge_stage_events_per_s": round(sc.median(ours["merge_stage"])),
        "merge_stage": "the serving node's ordering stage alone: query.linemerge.merge_lines over "
        "the 3 nodes' lines, rendered beforehand (untimed) in the 2000-entry chunks "
        "a peer sends, in the bench process; no scans, TLS or HTTP",
        "baseline_peak_rss_mb": round(base["peak_rss_mb"], 1),
        "peer_peak_rss_mb": [round(x, 1) for x in ours["peer_peak_rss_mb"] if x],
        "client_peak_rss_mb": round(ours["peak_rss_mb"], 1),
        "peak_rss": "of the serving node's process (VmHWM)",
    }
    if base["count"] != plan.merge_events - plan.merge_events % 3:
        params["warning"] = f"baseline merged {base['count']} rows"
    merge = Result(
        "merge",
        ours["value"],
        "events/s",
        base["value"],
        True,
        params,
        ours["serving_peak_rss_mb"],
        [("≥ 500k events/s", _at_least(500_000))],
    )
    ctx["emit"](merge)
    fb = Result(
        "merge_first_byte_ms",
        ours["ttfb_ms"],
        "ms",
        None,
        False,
        {
            **common,
            "reps": plan.ttfb_reps,
            "runs_ms": _rnd([x * 1e3 for x in ours["ttfb"]], 2),
            "request": "GET /api/v1/audit-log?format=ndjson on node 1, no limit, a fresh connection "
            "each; time from sending to the first body byte, then hang up; 0.3 s apart",
            "full_stream_ttfb_ms": _rnd([x * 1e3 for x in ours["stream_ttfb"]], 2),
            "baseline_first_line_ms": round(base["first_line_ms"], 2),
            "peak_rss": "of the serving node's process (VmHWM)",
        },
        ours["serving_peak_rss_mb"],
        [("≤ 100 ms", _at_most(100.0))],
    )
    ctx["emit"](fb)
    added = ours["added_s"]
    st = ours.get("victim_status") or {}
    un = Result(
        "unreachable_peer_cost_s",
        max(added),
        "s",
        None,
        False,
        {
            **common,
            "reps": plan.query_reps,
            "peer_timeout_s": plan.peer_timeout,
            "request": "GET /api/v1/audit-log?limit=100 (JSON) on node 1",
            "healthy_ms": _rnd([x * 1e3 for x in ours["healthy_query"]], 2),
            "degraded_ms": _rnd([x * 1e3 for x in ours["degraded_query"]], 2),
            "added_ms": _rnd([x * 1e3 for x in added], 2),
            "value": "the largest added time over the queries after the SIGKILL (the first one "
            "included) minus the healthy median",
            "victim": ours["victim"],
            "victim_status": st.get("status"),
            "victim_error": st.get("error"),
            "events_returned": ours.get("degraded_events"),
            "note": "a SIGKILLed node on loopback refuses connections at once (RST); a peer that "
            "accepts and never answers is what costs up to peer_timeout",
            "peak_rss": "of the serving node's process (VmHWM)",
        },
        ours["serving_peak_rss_mb"],
        [(f"≤ peer_timeout ({plan.peer_timeout:g} s)", _at_most(plan.peer_timeout))],
    )
    if st.get("status") != "unreachable":
        un.params["warning"] = f"node 1 reported the killed node as {st!r}"
    ctx["emit"](un)
    return [merge, fb, un]


def scenario_soak_rss(plan: Plan, ctx: dict) -> list[Result]:
    from auditlog.bench.soak import least_squares_slope

    out = _run_job(
        "soak_rss",
        events=plan.soak_events,
        rate=plan.soak_rate,
        batch=plan.soak_batch,
        reader_interval=plan.soak_reader_interval,
        seed=plan.seed,
        workdir=ctx["workdir"],
    )
    samples = out["samples"]
    t_end = out["ingest_seconds"]
    appended = sum(w["appended"] for w in out["writers"])
    during = [s for s in samples if s[0] <= t_end] or samples
    half = [s for s in during if s[0] >= t_end / 2]
    mb = 1024 * 1024

    def slope(col: int) -> float | None:
        k = least_squares_slope([s[1] for s in half], [s[col] * mb for s in half])
        return round(k, 1) if k is not None else None

    peak = max(s[2] for s in samples)
    rounds = out["rounds"]
    step = max(1, len(samples) // 10)
    params = {
        "N": appended,
        "rate": plan.soak_rate,
        "achieved_rate": round(appended / max(w["seconds"] for w in out["writers"])),
        "batch": plan.soak_batch,
        "writers": len(out["writers"]),
        "fsync": "always (the default)",
        "server": "a real `auditlog serve` subprocess, default config (one validation worker with 2+ CPUs), "
        "fresh data dir (init + a writer and a reader key)",
        "load": f"{len(out['writers'])} writer processes, each POSTing JSON batches of {plan.soak_batch} "
        "generated gateway-mix events (their own seeds) over one keep-alive connection, batch i due at "
        f"t0 + i·batch/rate, {plan.soak_rate / len(out['writers']):g} events/s each",
        "reader": f"every {plan.soak_reader_interval:g} s: GET /api/v1/audit-log?user=U&ip=IP&format=ndjson "
        "(the whole log), a JSON page of the last minute (limit=1000), GET export.csv of everything "
        "since its previous round; one more round after the writers finish",
        "sampling": "VmRSS and RssAnon of the server process from /proc/PID/status every second, with the "
        "number of events acknowledged so far",
        "peak_rss_mb": round(peak, 1),
        "server_vmhwm_mb": round(out["server_hwm_mb"] or 0, 1),
        "final_rss_mb": round(samples[-1][2], 1),
        "final_anon_mb": round(samples[-1][3], 1),
        "peak_anon_mb": round(max(s[3] for s in samples), 1),
        "slope_bytes_per_event": slope(2),
        "anon_slope_bytes_per_event": slope(3),
        "slope": "least squares of RSS (bytes) on events acknowledged, over the samples of the second "
        "half of the ingest time",
        "rss_by_events": [[int(s[1]), round(s[2], 1)] for s in samples[::step]],
        "validation_worker_rss_mb": round(max(s[4] for s in samples), 1),
        "reader_rounds": len(rounds),
        "selective_ms": _rnd([r["selective_s"] * 1e3 for r in rounds]),
        "selective_rows": [r["selective_rows"] for r in rounds][-1:],
        "range_ms": _rnd([r["range_s"] * 1e3 for r in rounds]),
        "csv_ms": _rnd([r["csv_s"] * 1e3 for r in rounds]),
        "csv_rows": [r["csv_rows"] for r in rounds],
        "writer_errors": sum(len(w["errors"]) for w in out["writers"]),
        "late_batches": sum(w["late_batches"] for w in out["writers"]),
        "worst_lag_s": round(max(w["worst_lag_s"] for w in out["writers"]), 2),
        "post_p99_ms": [round(w["post_p99_ms"], 1) for w in out["writers"] if w["post_p99_ms"] is not None],
        "head_seq": out["head_seq"],
        "baseline": "none: SQLite has no server of its own under this load; the target is absolute",
    }
    errors = [e for w in out["writers"] for e in w["errors"]]
    if errors or appended != plan.soak_events:
        params["warning"] = f"{appended} of {plan.soak_events} events acknowledged; errors: {errors[:3]}"
    elif params["achieved_rate"] < 0.9 * plan.soak_rate:
        params["warning"] = f"offered {plan.soak_rate:g} events/s, achieved {params['achieved_rate']}"
    r = Result(
        "soak_rss",
        peak,
        "MB",
        None,
        False,
        params,
        out["server_hwm_mb"],
        [("server RSS ≤ 256 MB", _at_most(256.0))],
    )
    ctx["emit"](r)
    return [r]


def scenario_disk_bytes(plan: Plan, ctx: dict) -> list[Result]:
    batch = 1000
    ours = _run_job(
        "disk_bytes", events=plan.disk_events, batch=batch, wait=plan.disk_wait, seed=plan.seed, workdir=ctx["workdir"]
    )
    base = _run_job("sqlite_disk_bytes", events=plan.disk_events, batch=batch, seed=plan.seed, workdir=ctx["workdir"])
    n = plan.disk_events
    per = {k: round(v / n, 2) for k, v in sorted(ours["kinds"].items())}
    params = {
        "N": n,
        "method": f"a real `auditlog serve` (fsync=always) takes N gateway-mix events as {ours['posts']} JSON "
        f"POSTs of {batch}; then GET /api/v1/audit-log?format=ndjson twice (the whole log), one selective "
        f"query (user and ip, NDJSON), {plan.disk_wait:g} s for the server's background job (term "
        "postings), SIGTERM; then every file under the data dir counted (st_size)",
        "bytes_by_kind_per_event": per,
        "after_ingest_bytes_per_event": round(ours["after_ingest_bytes"] / n, 2),
        "allocated_bytes_per_event": round(ours["allocated"] / n, 2),
        "ndjson_bytes_per_event": round(ours["ndjson_bytes"] / n, 1),
        "read_lines": ours["read_lines"],
        "selective_rows": ours["selective_rows"],
        "selective_expected": ours["selective_expected"],
        "baseline": "the SQLite baseline (bench/baseline_sqlite.py: one table, chained signatures, the "
        "indexes its selective and range queries use), the same N events in batches of "
        f"{batch}, synchronous=FULL, WAL checkpointed on close; file bytes",
        "baseline_allocated_bytes_per_event": round(base["allocated"] / n, 2),
    }
    r = Result(
        "disk_bytes_per_event",
        ours["bytes"] / n,
        "B/event",
        base["bytes"] / n,
        False,
        params,
        ours["server_peak_rss_mb"],
        [("≤ 70 B/event (whole data dir)", _at_most(70.0))],
    )
    ctx["emit"](r)
    return [r]


def scenario_bundle(plan: Plan, ctx: dict) -> list[Result]:
    out = _run_job("bundle", events=plan.bundle_events, reps=plan.bundle_reps, seed=plan.seed, workdir=ctx["workdir"])
    n = out["entries"]
    common = {
        "N": n,
        "reps": plan.bundle_reps,
        "bundle_bytes": out["bundle_bytes"],
        "bundle_bytes_per_entry": round(out["bundle_bytes"] / n, 1),
        "method": "a fresh data dir of N gateway-mix events and its first signed checkpoint (untimed); "
        "`auditlog export bundle -o FILE` of the whole log (a time range: complete, boundaries included) "
        "and `auditlog verify-bundle FILE --key node.pub`, each a real CLI process, wall time and its own "
        "peak RSS",
        "baseline": "none: SQLite has no counterpart; the targets are absolute",
    }
    results = []
    cos = Result(
        "cosign_round_ms",
        sc.median(out["cosign_runs"]) * 1000,
        "ms",
        None,
        False,
        {
            "N": n,
            "reps": len(out["cosign_runs"]),
            "steps_median_ms": out["cosign_parts"],
            "share_of_default_interval": f"{sc.median(out['cosign_runs']) / 60:.2e}",
            "method": "on the bundle's log, in one process: the log signs a checkpoint of its N entries "
            "and proves (RFC 9162) that its tree extends the tree of N/2 a witness cosigned last, from a "
            "fresh tree reader; the witness opens the note, judges it and makes its cosignature/v1. The "
            "mTLS request between two nodes is not included",
            "baseline": "none: the target is absolute (the default checkpoint_interval is 60 s)",
        },
        out["job_peak_rss_mb"],
        [("one cosigning round ≤ 60 ms (0.1 % of the default 60 s interval)", _at_most(60.0))],
    )
    ctx["emit"](cos)
    results.append(cos)
    for name, runs, rss, target in (
        ("bundle_export", out["export_runs"], out["export_peak_rss_mb"], "written in ≤ 5 s"),
        ("bundle_verify", out["verify_runs"], out["verify_peak_rss_mb"], "verified in ≤ 5 s"),
    ):
        r = Result(
            name,
            sc.median(runs),
            "s",
            None,
            False,
            {**common, "runs_s": _rnd(runs, 2)},
            rss,
            [(f"{n:,} entries {target}", _at_most(5.0))],
        )
        ctx["emit"](r)
        results.append(r)
    return results


def scenario_archive(plan: Plan, ctx: dict) -> list[Result]:
    out = _run_job(
        "archive", events=plan.archive_events, reps=plan.archive_reps, seed=plan.seed, workdir=ctx["workdir"]
    )
    common = {
        "N": out["events"],
        "reps": plan.archive_reps,
        "segments": out["segments_archived"],
        "archived_events": out["archived_events"],
        "archived_bytes": out["archived_bytes"],
        "baseline": "none: SQLite has no archive tier; the targets are absolute",
    }
    up = Result(
        "archive_upload",
        out["archived_events"] / sc.median(out["upload_runs"]),
        "events/s",
        None,
        True,
        {
            **common,
            "runs_s": _rnd(out["upload_runs"], 2),
            "method": "a fresh data dir of N gateway-mix events in 16 MiB segments; one archiver pass "
            "over every sealed segment into a local SeaweedFS S3 gateway (COMPLIANCE Object Lock, SHA-256 "
            "checked by the store), each copy read back, compared and indexed before it counts; events "
            "archived per second of the pass",
        },
        out["upload_peak_rss_mb"],
        [("archiving keeps up with ≥ 250k events/s of appends", _at_least(250_000))],
    )
    read_common = {
        **common,
        "day_entries": out["day_entries"],
        "dropped_locally": out["dropped_segments"],
        "anon_growth_mb": _rnd(out["read_anon_growth_mb"], 1),
        "method": "retention dropped every archived segment locally; a fresh reader with an empty "
        "archive cache scans the middle day of the two the events span (every segment fetched at its "
        "recorded version, its SHA-256 checked, indexed, every frame checked again when read)",
    }
    first = Result(
        "archive_first_row_ms",
        sc.median(out["first_row_runs"]) * 1000,
        "ms",
        None,
        False,
        {**read_common, "runs_ms": _rnd([x * 1000 for x in out["first_row_runs"]])},
        out["job_peak_rss_mb"],
        [("first row of a query over an archived day ≤ 1 s", _at_most(1000.0))],
    )
    rate = Result(
        "archive_read",
        sc.median(out["read_rate_runs"]),
        "events/s",
        None,
        True,
        {**read_common, "runs": _rnd(out["read_rate_runs"])},
        out["job_peak_rss_mb"],
        [
            ("an archived day streams at ≥ 100k events/s", _at_least(100_000)),
            (
                "memory flat: anonymous memory grows < 64 MB over the day",
                lambda r: max(out["read_anon_growth_mb"]) < 64,
            ),
        ],
    )
    for r in (up, first, rate):
        ctx["emit"](r)
    return [up, first, rate]


_RUNNERS: dict[str, Callable[[Plan, dict], list[Result]]] = {
    "append": scenario_append,
    "scan": scenario_scan,
    "selective_query": scenario_selective,
    "csv_export": scenario_csv,
    "http_ingest": scenario_http_ingest,
    "merge": scenario_merge,
    "scan_rss": scenario_scan_rss,
    "soak_rss": scenario_soak_rss,
    "disk_bytes_per_event": scenario_disk_bytes,
    "bundle": scenario_bundle,
    "archive": scenario_archive,
}


# --------------------------------------------------------------------------- output


def _fmt_num(v: float | None, unit: str = "") -> str:
    if v is None:
        return "-"
    if unit == "s":
        return f"{v * 1e3:.2f} ms" if v < 10 else f"{v:.1f} s"
    if unit == "MB":
        return f"{v:.1f} MB"
    if abs(v) >= 1e6:
        return f"{v / 1e6:.2f}M"
    if abs(v) >= 1e4:
        return f"{v / 1e3:.1f}k"
    return f"{v:.3g}"


_SHOWN_PARAMS = (
    "N",
    "batch",
    "threads",
    "fsync",
    "events_per_fsync",
    "range_entries",
    "rows",
    "matches",
    "frames_read",
    "entries_decoded",
    "mode",
    "reps",
    "runs",
    "small_range_entries",
    "full_entries",
    "small_peak_heap_mb",
    "full_peak_heap_mb",
    "index_heap_mb",
    "baseline_with_chain_verify_events_per_s",
    "cpu_value",
    "baseline_cpu_value",
    "cpu_value_ms",
    "baseline_cpu_value_ms",
    "cpu_ratio",
    "conns",
    "server_cpu_value",
    "client_cpu_s",
    "rate",
    "achieved_rate",
    "p50_ms",
    "p99_ms",
    "p99_from_due_ms",
    "max_ms",
    "nodes",
    "per_node",
    "serving_node_cpu_value",
    "baseline_merge_only_events_per_s",
    "merge_stage_events_per_s",
    "first_read_events_per_s",
    "segment_bytes",
    "derived_file_bytes",
    "runs_ms",
    "full_stream_ttfb_ms",
    "baseline_first_line_ms",
    "peer_timeout_s",
    "healthy_ms",
    "added_ms",
    "victim_status",
    "final_rss_mb",
    "final_anon_mb",
    "slope_bytes_per_event",
    "anon_slope_bytes_per_event",
    "selective_ms",
    "range_ms",
    "csv_ms",
    "profiled",
    "warning",
)
_COLS = ("name", "value", "unit", "baseline", "ratio", "peak RSS", "target", "status")
_WIDTHS = (22, 10, 9, 10, 7, 9, 34, 6)


def _row(cells: tuple[str, ...]) -> str:
    return "  ".join(c.ljust(w) for c, w in zip(cells, _WIDTHS)).rstrip()


def _print_row(r: Result) -> None:
    unit_shown = "ms" if r.unit == "s" else r.unit
    value = _fmt_num(r.value, r.unit)
    base = _fmt_num(r.baseline, r.unit)
    if r.unit == "s":
        value, base = value.replace(" ms", ""), base.replace(" ms", "")
    if r.unit == "MB":
        value, base = value.replace(" MB", ""), base.replace(" MB", "")
    ratio = f"{r.ratio:.3g}x" if r.ratio is not None else "-"
    rss = f"{r.peak_rss_mb:.0f} MB" if r.peak_rss_mb is not None else "-"
    checks = r.checks()
    target = "; ".join(t for t, _ in checks) or "(info)"
    status = (
        (
            "PASS"
            if all(ok for _, ok in checks)
            else "MISS " + ",".join(str(i + 1) for i, (_, ok) in enumerate(checks) if not ok)
            if len(checks) > 1
            else "MISS"
        )
        if checks
        else "-"
    )
    print(_row((r.name, value, unit_shown, base, ratio, rss, target, status)))
    shown = {k: r.params[k] for k in _SHOWN_PARAMS if k in r.params}
    print("    params: " + ", ".join(f"{k}={v}" for k, v in shown.items()))
    if r.params.get("baseline"):
        print(f"    baseline: {r.params['baseline']}")
    sys.stdout.flush()


def machine_info() -> dict:
    info: dict[str, Any] = {
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "sqlite": sqlite3.sqlite_version,
        "loadavg_start": _loadavg(),
    }
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu_model"] = line.split(":", 1)[1].strip()
                    break
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    info["mem_total_mb"] = int(line.split()[1]) // 1024
                    break
    except OSError:
        pass
    try:
        import msgpack
        import xxhash

        info["msgpack"] = ".".join(map(str, msgpack.version))
        info["xxhash"] = xxhash.VERSION
    except Exception:  # pragma: no cover - informational only
        pass
    return info


def _loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def _write_json(path: str, doc: dict) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(doc, f, indent=2, ensure_ascii=False)
        f.write("\n")
    os.replace(tmp, path)


# --------------------------------------------------------------------------- entry point


def run_bench(
    quick: bool = False,
    json_path: str | None = None,
    only: tuple[str, ...] = (),
    *,
    events: int | None = None,
    cache_root: str | None = None,
) -> dict:
    """Run the benchmarks; print the table; write ``json_path``; return the JSON document.

    ``events`` overrides every size with a tiny one (a few thousand events, for
    tests); ``cache_root`` is where the data-set cache and scratch dirs go
    (default ``/tmp``).
    """
    wanted: list[str] = []
    for name in only:
        for part in name.split(","):
            part = part.strip()
            if not part:
                continue
            s = _ALIASES.get(part, part)
            if s not in SCENARIOS:
                raise BenchError(f"unknown bench scenario {part!r} (choose from {', '.join(SCENARIOS)})")
            if s not in wanted:
                wanted.append(s)
    selected = [s for s in SCENARIOS if not wanted or s in wanted]
    plan = Plan.make(quick, events)
    root = cache_root or tempfile.gettempdir()
    Path(root).mkdir(parents=True, exist_ok=True)
    workdir = tempfile.mkdtemp(prefix="auditlog-bench-work-", dir=root)
    doc: dict[str, Any] = {
        "results": [],
        "machine": machine_info(),
        "quick": bool(quick),
        "events": plan.n,
        "errors": [],
    }

    def say(msg: str) -> None:
        print(msg)
        sys.stdout.flush()

    header_done = [False]

    def emit(r: Result) -> None:
        if not header_done[0]:
            print(_row(_COLS))
            print(_row(tuple("-" * w for w in _WIDTHS)))
            header_done[0] = True
        _print_row(r)
        doc["results"].append(r.to_json())
        if json_path:
            _write_json(json_path, doc)

    cache_holder: list[Path] = []

    def cache() -> Path:
        if not cache_holder:
            cache_holder.append(ensure_dataset(plan, root, say))
        return cache_holder[0]

    ctx = {"emit": emit, "cache": cache, "workdir": workdir, "tiny": events is not None}
    mode = "tiny" if events is not None else ("quick" if quick else "full")
    say(
        f"# auditlog bench ({mode}): {plan.n:,} events in the read data set, "
        f"appends {plan.append_reps} x {plan.append_events:,} events with fsync=always; "
        f"medians over repetitions; {doc['machine'].get('cpus_usable')} CPUs, "
        f"Python {doc['machine']['python']}, SQLite {sqlite3.sqlite_version}, "
        f"load average {doc['machine']['loadavg_start']}"
    )
    if (doc["machine"]["loadavg_start"] or [0])[0] > 0.5 * (doc["machine"]["cpus_usable"] or 1):
        say("# note: the machine is busy (load average above half the CPUs): expect noisy numbers")
    t0 = time.perf_counter()
    results: list[Result] = []
    try:
        for s in selected:
            try:
                results.extend(_RUNNERS[s](plan, ctx))
            except JobFailed as e:
                doc["errors"].append({"scenario": s, "error": str(e)})
                print(f"!! {s}: {e}", file=sys.stderr)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    elapsed = time.perf_counter() - t0
    doc["seconds"] = round(elapsed, 1)
    doc["machine"]["loadavg_end"] = _loadavg()
    say("")
    say("# targets (SPEC section 10):")
    for r in results:
        for text, ok in r.checks():
            say(
                f"  {'PASS' if ok else 'MISS'}  {r.name}: {text} "
                f"(measured {_fmt_num(r.value, r.unit)}{'' if r.unit in ('s', 'MB') else ' ' + r.unit}"
                + (f", {r.ratio:.3g}x SQLite" if r.ratio is not None and r.name != "scan_rss" else "")
                + ")"
            )
    if doc["errors"]:
        say(f"# {len(doc['errors'])} scenario(s) failed to run: " + "; ".join(e["scenario"] for e in doc["errors"]))
    say(f"# done in {elapsed:.0f} s" + (f"; JSON written to {json_path}" if json_path else ""))
    if json_path:
        _write_json(json_path, doc)
    return doc
