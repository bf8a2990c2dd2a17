"""The ``soak_rss`` job: a real server's memory under sustained ingest and reads.

One ``auditlog serve`` (fsync as configured by default, ``always``) takes the
gateway mix of :class:`bench.scenarios.EventGenerator` from two writer
processes, each POSTing JSON batches over its own keep-alive connection, paced
together to a total rate (batch ``i`` of a writer is due at ``t0 + i / rate``;
a writer that falls behind sends at once and the lag is reported).  Beside
them, every ``reader_interval`` seconds, a reader asks for a selective query
(one user and one IP, the whole log, NDJSON), a time-range page (the last
minute, JSON, ``limit=1000``) and a CSV export of everything since its previous
export.  The server's ``VmRSS`` and ``RssAnon`` are read from
``/proc/PID/status`` every ``sample_interval`` seconds together with the
number of events acknowledged so far, so the growth can be given per event.
"""

from __future__ import annotations

import http.client
import json
import multiprocessing
import os
import shutil
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

#: the node id of the soak server
SOAK_NODE = "bench-soak"


def proc_memory(pid: int) -> dict[str, float]:
    """``VmRSS``, ``RssAnon``, ``RssFile`` and ``VmHWM`` of a live process, MB."""
    out: dict[str, float] = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key, _, rest = line.partition(":")
                if key in ("VmRSS", "RssAnon", "RssFile", "VmHWM"):
                    out[key] = int(rest.split()[0]) / 1024.0
    except (OSError, ValueError, IndexError):
        pass
    return out


def children_of(pid: int) -> list[int]:
    """The child processes of ``pid`` (its validation workers)."""
    kids: list[int] = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                kids.extend(int(x) for x in f.read().split())
    except (OSError, ValueError):
        pass
    return kids


def least_squares_slope(xs: list[float], ys: list[float]) -> float | None:
    """The slope of the least-squares line through (xs, ys); None with fewer than 2 distinct xs."""
    n = len(xs)
    if n < 2:
        return None
    mx, my = sum(xs) / n, sum(ys) / n
    var = sum((x - mx) ** 2 for x in xs)
    if var == 0:
        return None
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / var


def _writer_main(
    base: str, token: str, events: int, batch: int, rate: float, seed: int, counter, result_path: str
) -> None:
    """One writer client (its own process): ``events`` generated events in JSON batches of
    ``batch``, batch ``i`` due at ``t0 + i * batch / rate``; the acknowledged count kept in
    ``counter``; what happened written to ``result_path``."""
    from auditlog.bench.scenarios import EventGenerator, draft_to_event

    gen = EventGenerator(seed)
    url = urllib.parse.urlsplit(base)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=120)
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
    sent = appended = late = 0
    worst_lag = 0.0
    latencies: list[float] = []
    errors: list[str] = []
    t0 = time.monotonic()
    i = 0
    while sent < events:
        k = min(batch, events - sent)
        body = dumps([draft_to_event(d) for d in gen.batch(k)]).encode("utf-8")
        due = t0 + i * batch / rate
        wait = due - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        else:
            late += 1
            worst_lag = max(worst_lag, -wait)
        ts = time.monotonic()
        try:
            conn.request("POST", "/api/v1/events", body=body, headers=headers)
            r = conn.getresponse()
            raw = r.read()
            if r.status != 201:
                errors.append(f"HTTP {r.status}: {raw[:200]!r}")
            else:
                n = json.loads(raw)["appended"]
                appended += n
                with counter.get_lock():
                    counter.value += n
        except (OSError, http.client.HTTPException) as e:
            errors.append(f"{type(e).__name__}: {e}")
            conn.close()
            conn = http.client.HTTPConnection(url.hostname, url.port, timeout=120)
        latencies.append(time.monotonic() - ts)
        sent += k
        i += 1
        if len(errors) > 20:
            break
    conn.close()
    latencies.sort()
    out = {
        "sent": sent,
        "appended": appended,
        "seconds": time.monotonic() - t0,
        "late_batches": late,
        "worst_lag_s": worst_lag,
        "post_p50_ms": latencies[len(latencies) // 2] * 1e3 if latencies else None,
        "post_p99_ms": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1e3 if latencies else None,
        "errors": errors,
    }
    tmp = result_path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(out, f)
    os.replace(tmp, result_path)


def _get(base: str, path: str, params: dict[str, str], token: str, timeout: float = 300) -> tuple[float, bytes]:
    req = urllib.request.Request(
        f"{base}{path}?{urllib.parse.urlencode(params)}", headers={"Authorization": f"Bearer {token}"}
    )
    t0 = time.perf_counter()
    with urllib.request.urlopen(req, timeout=timeout) as r:
        raw = r.read()
        if r.status != 200:
            raise RuntimeError(f"GET {path}: HTTP {r.status}")
    return time.perf_counter() - t0, raw


def _reader_round(base: str, token: str, user: str, ip: str, since_us: int, now_us: int) -> dict[str, Any]:
    """One round of the reader: selective (NDJSON), time range (JSON page), CSV since the last round."""
    from auditlog.engine.entry import format_ts

    sel_s, sel = _get(base, "/api/v1/audit-log", {"user": user, "ip": ip, "format": "ndjson"}, token)
    rng_s, rng = _get(
        base,
        "/api/v1/audit-log",
        {"from": format_ts(now_us - 60_000_000), "to": format_ts(now_us), "limit": "1000"},
        token,
    )
    csv_s, csv = _get(
        base, "/api/v1/audit-log/export.csv", {"from": format_ts(since_us), "to": format_ts(now_us)}, token
    )
    return {
        "selective_s": sel_s,
        "selective_rows": sel.count(b"\n"),
        "range_s": rng_s,
        "range_rows": len(json.loads(rng)["events"]),
        "csv_s": csv_s,
        "csv_rows": max(0, csv.count(b"\n") - 1),  # the header line
    }


def job_soak_rss(
    events: int,
    rate: float,
    batch: int,
    reader_interval: float,
    seed: int,
    workdir: str,
    sample_interval: float = 1.0,
    writers: int = 2,
) -> dict:
    """A real server under paced ingest from ``writers`` processes and a periodic reader;
    its memory sampled throughout (see the module docstring)."""
    from auditlog.bench import servers
    from auditlog.bench.scenarios import EventGenerator

    root = Path(tempfile.mkdtemp(prefix="soak-", dir=workdir))
    (port,) = servers.free_ports(1)
    srv = servers.Server(root, SOAK_NODE, port)
    ctx = multiprocessing.get_context("spawn")
    procs: list = []
    samples: list[list[float]] = []  # [t, events, rss MB, anon MB, workers' rss MB]
    rounds: list[dict] = []
    stop = threading.Event()
    try:
        srv.launch("writer", "reader")
        pid = srv.pid
        counters = [ctx.Value("q", 0) for _ in range(writers)]
        result_paths = [str(root / f"writer{i}.json") for i in range(writers)]
        per = [events // writers + (1 if i < events % writers else 0) for i in range(writers)]
        seeds = [seed + 10 + i for i in range(writers)]
        t0 = time.monotonic()

        def sample() -> None:
            while True:
                mem = proc_memory(pid)
                if mem:
                    kids = sum(proc_memory(c).get("VmRSS", 0.0) for c in children_of(pid))
                    samples.append(
                        [
                            time.monotonic() - t0,
                            float(sum(c.value for c in counters)),
                            mem.get("VmRSS", 0.0),
                            mem.get("RssAnon", 0.0),
                            kids,
                        ]
                    )
                if stop.wait(sample_interval):
                    return

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        for i in range(writers):
            p = ctx.Process(
                target=_writer_main,
                args=(
                    srv.base,
                    srv.keys["writer"],
                    per[i],
                    batch,
                    rate / writers,
                    seeds[i],
                    counters[i],
                    result_paths[i],
                ),
            )
            p.start()
            procs.append(p)
        # the selective query: the first writer's median-activity user and its first home IP
        pick = EventGenerator(seeds[0])
        user, ip = pick.query_user, pick.query_ip
        from auditlog.engine.clock import now_us

        since = now_us()
        next_round = time.monotonic() + reader_interval
        while any(p.is_alive() for p in procs):
            if time.monotonic() >= next_round:
                now = now_us()
                r = _reader_round(srv.base, srv.keys["reader"], user, ip, since, now)
                r["at_s"] = time.monotonic() - t0
                r["events"] = sum(c.value for c in counters)
                rounds.append(r)
                since = now
                next_round += reader_interval
            time.sleep(0.05)
        ingest_seconds = time.monotonic() - t0
        for p in procs:
            p.join(30)
        # one last round over the whole ingested log, then the memory as it stays
        now = now_us()
        r = _reader_round(srv.base, srv.keys["reader"], user, ip, since, now)
        r["at_s"] = time.monotonic() - t0
        r["events"] = sum(c.value for c in counters)
        rounds.append(r)
        time.sleep(sample_interval * 2)
        stop.set()
        sampler.join()
        hwm = proc_memory(pid).get("VmHWM")
        head = srv.get_json("/api/v1/cluster")["nodes"][0]["head_seq"]
        srv.stop()
        writer_out = []
        for path in result_paths:
            with open(path) as f:
                writer_out.append(json.load(f))
    finally:
        stop.set()
        for p in procs:
            if p.is_alive():
                p.kill()
        srv.kill()
        shutil.rmtree(root, ignore_errors=True)
    return {
        "samples": samples,
        "rounds": rounds,
        "writers": writer_out,
        "ingest_seconds": ingest_seconds,
        "server_hwm_mb": hwm,
        "head_seq": head,
        "user": user,
        "ip": ip,
    }
