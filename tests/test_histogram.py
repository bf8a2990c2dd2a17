"""The total count and the histogram of a filter (``GET /api/v1/audit-log/count`` and
``/histogram``): on one node against what the query returns, entries that do not verify
counted apart, bad intervals refused; over a real 3-node cluster (mTLS) with the counts
per node, and a node that is down named, not silently left out."""

from __future__ import annotations

import time
from urllib.parse import urlencode

import pytest
from helpers_engine import flip_byte, frames_of, segment_paths
from helpers_http import KEY_ENTRIES, assert_error, bearer, ev, post_events, query_all


async def test_count_and_histogram_agree_with_the_query(client, keys, service):
    h = bearer(keys["reader"])
    assert (
        await post_events(client, keys["writer"], [ev(i, user="alice" if i % 3 else "bob") for i in range(30)])
    ).status == 201
    everything = await query_all(client, keys["reader"])
    alice = [e for e in everything if e["user"] == "alice"]
    body = await (await client.get("/api/v1/audit-log/count", headers=h, params={"user": "alice"})).json()
    assert body["count"] == len(alice) == 20 and body["violations"] == 0
    assert body["nodes"] == {service.node_id: {"status": "ok"}}
    body = await (await client.get("/api/v1/audit-log/count", headers=h)).json()
    assert body["count"] == len(everything) == 30 + KEY_ENTRIES
    # per second over a window: dense buckets, aligned to the epoch, summing to the matches
    lo = everything[0]["ts"][:19] + "Z"
    params = {"user": "alice", "interval": "1s", "from": lo, "to": "2026-03-14T10:00:00Z"}
    body = await (await client.get("/api/v1/audit-log/histogram", headers=h, params=params)).json()
    assert body["interval"] == "1s" and body["count"] == 20
    assert sum(b["count"] for b in body["buckets"]) == 20
    assert body["buckets"][0]["start"] == lo[:19] + ".000000Z"
    starts = [b["start"] for b in body["buckets"]]
    assert starts == sorted(starts) and len(set(starts)) == len(starts)
    by_second = {}
    for e in alice:
        by_second[e["ts"][:19]] = by_second.get(e["ts"][:19], 0) + 1
    assert {b["start"][:19]: b["count"] for b in body["buckets"] if b["count"]} == by_second
    assert all(b["nodes"] == ({service.node_id: b["count"]} if b["count"] else {}) for b in body["buckets"])
    # bad intervals and too many buckets: 400, JSON
    for bad in ("", "0h", "1w", "h", "1.5h", "9999999s"):
        await assert_error(
            await client.get("/api/v1/audit-log/histogram", headers=h, params={"interval": bad}), 400, "interval"
        )
    await assert_error(await client.get("/api/v1/audit-log/histogram", headers=h), 400, "interval is required")
    await assert_error(
        await client.get(
            "/api/v1/audit-log/histogram",
            headers=h,
            params={"interval": "1s", "from": "2000-01-01", "to": "2001-01-01"},
        ),
        400,
        "buckets",
    )
    await assert_error(await client.get("/api/v1/audit-log/count", headers=h, params={"bogus": "1"}), 400)


def test_entries_that_do_not_verify_are_counted_apart(make_service, tmp_path):

    from auditlog.query.filters import Filter
    from auditlog.query.histogram import merge, node_counts

    svc = make_service()
    for k in range(4):  # four commits: four frames
        svc.writer.append_batch([ev_draft(50 * k + i) for i in range(50)])
    before = node_counts(svc.log, Filter(), 3_600_000_000)
    assert before["violations"] == 0 and before["count"] >= 200
    # damage one frame's payload the way someone without the key would
    path = segment_paths(svc.data_dir)[0]
    f = frames_of(path, svc.node)[1]
    flip_byte(path, f.offset + 60)
    after = node_counts(svc.log, Filter(), 3_600_000_000)
    assert after["violations"] >= 1 and after["count"] < before["count"]
    body = merge({"n": after}, Filter(), 3_600_000_000, "1h")
    assert body["violations"] == after["violations"] and sum(b["count"] for b in body["buckets"]) == after["count"]
    # and where they lie: a bucket says how many of its entries do not verify
    assert sum(b.get("violations", 0) for b in body["buckets"]) == after["violations"]


def ev_draft(i: int):
    from auditlog.engine.entry import EntryDraft

    return EntryDraft("u", "auth.login", details={"i": i})


@pytest.mark.e2e
def test_histogram_over_a_cluster(tmp_path):
    from helpers_cluster import LocalCluster, make_events

    cl = LocalCluster(tmp_path / "cl", ("a", "b", "c"), peer_timeout=3.0)
    try:
        cl.build()
        cl.start()
        for i, n in enumerate("abc"):
            cl[n].post_events(make_events(20 * (i + 1), n))
        a = cl["a"]
        tag = {"action": "auth.login"}
        truth = {}
        for n in "abc":
            page = a.get_ok("/api/v1/audit-log?" + urlencode({**tag, "node": n, "limit": 10000}))
            truth[n] = len(page["events"])
        body = a.get_ok("/api/v1/audit-log/histogram?" + urlencode({**tag, "interval": "1d"}))
        assert body["count"] == sum(truth.values()) and body["violations"] == 0
        per_node = {}
        for b in body["buckets"]:
            for n, k in b["nodes"].items():
                per_node[n] = per_node.get(n, 0) + k
        assert per_node == {n: k for n, k in truth.items() if k}
        assert body["nodes"] == {n: {"status": "ok"} for n in "abc"}
        assert a.get_ok("/api/v1/audit-log/count?" + urlencode(tag))["count"] == sum(truth.values())
        # a node filter: the others are listed as skipped
        body = a.get_ok("/api/v1/audit-log/count?" + urlencode({**tag, "node": "b"}))
        assert body["count"] == truth["b"] and body["nodes"]["c"]["skipped"]
        # a node down: named, and the answer comes without it
        cl["c"].kill()
        t0 = time.monotonic()
        body = a.get_ok("/api/v1/audit-log/count?" + urlencode(tag))
        assert time.monotonic() - t0 < 15
        assert body["count"] == truth["a"] + truth["b"] and body["nodes"]["c"]["status"] == "unreachable"
    finally:
        cl.close()
