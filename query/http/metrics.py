"""Prometheus text metrics (counters, gauges, histograms), hand-rolled and small.

Values are written exactly (whole numbers as integers, others in Python's
shortest round-trip form): a counter past a million or a Unix timestamp must not
lose digits, or ``rate()`` and time arithmetic go wrong.  Counters end in
``_total``."""

from __future__ import annotations

import bisect
import math
import threading


def number(v) -> str:
    """A sample value in the Prometheus text format, exact."""
    if isinstance(v, bool):
        return "1" if v else "0"
    if isinstance(v, int):
        return str(v)
    v = float(v)
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    if v.is_integer() and abs(v) < 2**63:
        return str(int(v))
    return repr(v)


class Histogram:
    def __init__(self, name: str, help: str, buckets: tuple[float, ...]):
        self.name, self.help, self.buckets = name, help, buckets
        self.counts = [0] * (len(buckets) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, v: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, v)] += 1
        self.sum += v
        self.count += 1

    def render(self) -> list[str]:
        out = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} histogram"]
        acc = 0
        for b, c in zip(self.buckets, self.counts):
            acc += c
            out.append(f'{self.name}_bucket{{le="{number(b)}"}} {acc}')
        out.append(f'{self.name}_bucket{{le="+Inf"}} {self.count}')
        out.append(f"{self.name}_sum {number(self.sum)}")
        out.append(f"{self.name}_count {self.count}")
        return out


class Metrics:
    """The service's metrics; thread-safe enough for counters updated under the GIL."""

    def __init__(self):
        self._lock = threading.Lock()
        self.counters: dict[tuple[str, tuple], float] = {}
        self.help: dict[str, tuple[str, str]] = {}
        self.gauges: dict[str, callable] = {}
        self.fsync_seconds = Histogram(
            "auditlog_fsync_seconds",
            "Write+fsync latency of one commit",
            (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
        )
        self.batch_size = Histogram(
            "auditlog_commit_batch_entries", "Entries per group commit", (1, 10, 100, 1000, 10000, 100000)
        )
        self.declare("auditlog_appended_entries_total", "counter", "Entries appended to this node's log")
        self.declare("auditlog_http_requests_total", "counter", "HTTP requests by route and status")
        self.declare("auditlog_queries_total", "counter", "Queries served by format")
        self.declare(
            "auditlog_integrity_violations_total",
            "counter",
            "Entries or ranges returned marked as integrity violations",
        )
        self.declare("auditlog_ingest_rejected_total", "counter", "Ingest batches rejected by reason")
        self.declare("auditlog_tree_heads_total", "counter", "Signed checkpoints (audit.tree_head) this process made")
        self.declare(
            "auditlog_state_rejected_total",
            "counter",
            "Lines of node state files that failed their seal (forged, edited or foreign) and were ignored, by file",
        )

    def declare(self, name: str, kind: str, help: str) -> None:
        self.help[name] = (kind, help)

    def inc(self, name: str, value: float = 1, **labels) -> None:
        key = (name, tuple(sorted(labels.items())))
        with self._lock:
            self.counters[key] = self.counters.get(key, 0) + value

    def gauge(self, name: str, help: str, fn, kind: str = "gauge") -> None:
        """A value read at each scrape (``kind`` "counter" for a count kept elsewhere,
        named ``*_total``)."""
        if kind == "counter" and not name.endswith("_total"):
            raise ValueError(f"a counter's name ends in _total: {name}")
        self.declare(name, kind, help)
        self.gauges[name] = fn

    def render(self) -> str:
        lines: list[str] = []
        with self._lock:
            items = sorted(self.counters.items())
        seen = set()
        for (name, labels), v in items:
            if name not in seen:
                kind, help = self.help.get(name, ("counter", name))
                lines += [f"# HELP {name} {help}", f"# TYPE {name} {kind}"]
                seen.add(name)
            lab = ",".join(f'{k}="{_esc(str(val))}"' for k, val in labels)
            lines.append(f"{name}{{{lab}}} {number(v)}" if lab else f"{name} {number(v)}")
        for name, fn in sorted(self.gauges.items()):
            kind, help = self.help[name]
            try:
                v = fn()
            except Exception:  # a gauge must never break the scrape
                continue
            if v is None:
                continue
            lines += [f"# HELP {name} {help}", f"# TYPE {name} {kind}", f"{name} {number(v)}"]
        lines += self.fsync_seconds.render() + self.batch_size.render()
        return "\n".join(lines) + "\n"


def _esc(s: str) -> str:
    return s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
