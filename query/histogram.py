"""How many entries match a filter, and when: the total count and the histogram of a
filter over its whole range, counted where the entries are (each node over its own
verified entries, a peer over the peer listener) and summed, never rendered.

Entries that do not verify are not counted as matches: they are counted apart
(``violations``), so a count never hides what it could not vouch for.  Buckets
start at multiples of the interval since the Unix epoch (UTC).
"""

from __future__ import annotations

import re
from collections import Counter

from auditlog.engine.entry import format_ts
from auditlog.query.errors import InvalidFilterError
from auditlog.query.filters import Filter
from auditlog.query.scan import scan_node

#: buckets one histogram has at most
MAX_BUCKETS = 10_000
_INTERVAL = re.compile(r"([1-9][0-9]{0,5})(s|m|h|d)")
_UNIT_US = {"s": 1_000_000, "m": 60_000_000, "h": 3_600_000_000, "d": 86_400_000_000}


def parse_interval(text: str) -> int:
    """µs of an interval such as ``30s``, ``5m``, ``1h``, ``1d``."""
    m = _INTERVAL.fullmatch(text or "")
    if m is None:
        raise InvalidFilterError(f"interval must be a whole number and s, m, h or d (like 1h), got {text[:40]!r}")
    return int(m.group(1)) * _UNIT_US[m.group(2)]


def node_counts(log, flt: Filter, interval_us: int | None) -> dict:
    """This node's matches of ``flt``: ``{"count", "violations", "buckets": [[start µs,
    count, violations], ...]}`` (buckets only with an interval, the non-empty ones; what
    does not verify is in a bucket's violations when it has a time, else only in the
    total)."""
    count = violations = 0
    good: Counter[int] = Counter()
    bad: Counter[int] = Counter()
    for e in scan_node(log, flt):
        ok = e.integrity == "ok"
        if ok:
            count += 1
        else:
            violations += 1
        if interval_us is not None and (ok or isinstance(e.ts, int) and e.ts > 0):
            (good if ok else bad)[e.ts - e.ts % interval_us] += 1
            if len(good) + len(bad) > 2 * MAX_BUCKETS:
                raise InvalidFilterError(
                    f"more than {MAX_BUCKETS} buckets: use a longer interval or a shorter range (from/to)"
                )
    starts = sorted(set(good) | set(bad))
    return {"count": count, "violations": violations, "buckets": [[t, good[t], bad[t]] for t in starts]}


def merge(per_node: dict[str, dict], flt: Filter, interval_us: int | None, interval: str | None) -> dict:
    """One answer from every node's counts: the buckets dense over the filter's range (or
    from the first to the last non-empty one), each with its count per node."""
    total = sum(c["count"] for c in per_node.values())
    out: dict = {"count": total, "violations": sum(c["violations"] for c in per_node.values())}
    if interval_us is None:
        return out
    by_start: dict[int, dict[str, int]] = {}
    bad_at: dict[int, int] = {}
    for node, c in per_node.items():
        for start, n, *bad in c["buckets"]:
            if n:
                by_start.setdefault(start, {})[node] = n
            if bad and bad[0]:
                bad_at[start] = bad_at.get(start, 0) + bad[0]
                by_start.setdefault(start, {})
    if flt.from_us is not None:
        lo = flt.from_us - flt.from_us % interval_us
    else:
        lo = min(by_start, default=None)
    if flt.to_us is not None:
        hi = (flt.to_us - 1) - (flt.to_us - 1) % interval_us
    else:
        hi = max(by_start, default=None)
    buckets = []
    if lo is not None and hi is not None and hi >= lo:
        if (hi - lo) // interval_us + 1 > MAX_BUCKETS:
            raise InvalidFilterError(
                f"more than {MAX_BUCKETS} buckets: use a longer interval or a shorter range (from/to)"
            )
        for start in range(lo, hi + interval_us, interval_us):
            nodes = by_start.get(start, {})
            b = {"start": format_ts(start), "count": sum(nodes.values()), "nodes": nodes}
            if bad_at.get(start):
                b["violations"] = bad_at[start]
            buckets.append(b)
    out["interval"] = interval
    out["buckets"] = buckets
    return out


#: seconds a peer may take to count (it reads its matching entries first)
PEER_COUNT_WAIT = 120.0


async def gather(service, flt: Filter, interval_us: int | None) -> tuple[dict[str, dict], dict[str, dict]]:
    """Every admitted node's counts, and every node's status (a peer that does not answer
    is named, never silently left out)."""
    import asyncio
    import json

    per_node: dict[str, dict] = {}
    nodes: dict[str, dict] = {}
    me = service.node_id
    peers = service.cluster.peers if service.cluster is not None else {}

    async def local() -> None:
        if flt.admits_node(me):
            per_node[me] = await service.run(node_counts, service.log, flt, interval_us)
            nodes[me] = {"status": "ok"}
        else:
            nodes[me] = {"status": "ok", "skipped": "excluded by the node filter"}

    async def peer(node: str, client) -> None:
        from auditlog.query.cluster.peers import PeerError

        if not flt.admits_node(node):
            nodes[node] = {"status": "ok", "skipped": "excluded by the node filter"}
            return
        params = dict(flt.to_params())
        if interval_us is not None:
            params["interval_us"] = str(interval_us)
        try:
            raw, _ = await client.get_bytes("/counts", params, limit=4 * 1024 * 1024, wait=PEER_COUNT_WAIT)
            got = json.loads(raw)
            if not (isinstance(got, dict) and type(got.get("count")) is int and isinstance(got.get("buckets"), list)):
                raise PeerError("bad answer to /counts")
            per_node[node] = got
            nodes[node] = {"status": "ok"}
        except (PeerError, ValueError) as e:
            nodes[node] = {"status": "unreachable", "error": str(e)}

    await asyncio.gather(local(), *(peer(n, c) for n, c in peers.items()))
    return per_node, nodes
