"""Many writers and readers at once over HTTP: group commit under load loses nothing,
seqs stay contiguous, readers always see a committed prefix, and the log verifies."""

from __future__ import annotations

import asyncio
import json

from helpers_http import KEY_ENTRIES, bearer, head_seq, make_keys, query_all

from auditlog.engine.settings import StoreSettings
from auditlog.engine.verify import verify_node

WRITERS = 8
BATCHES = 12
PER_BATCH = 40


async def test_concurrent_writers_and_readers(make_service, make_client):
    svc = make_service(StoreSettings(fsync="always", segment_max_bytes=256 * 1024), name="conc")
    keys = make_keys(svc)
    client = await make_client(svc)
    statuses: list[int] = []
    acks: list[tuple[int, int, int, int]] = []  # (writer, batch, first seq, last seq)
    reads: list[list[int]] = []
    writers_done = asyncio.Event()

    async def writer(w: int):
        token = keys["writer"]
        for b in range(BATCHES):
            batch = [
                {
                    "user": f"writer-{w}",
                    "action": "config.filter_update",
                    "target": f"f-{i}",
                    "ip": f"192.0.2.{w + 1}",
                    "details": {"w": w, "b": b, "i": i},
                }
                for i in range(PER_BATCH)
            ]
            body = batch if b % 2 else {"events": batch}
            resp = await client.post("/api/v1/events", json=body, headers=bearer(token))
            statuses.append(resp.status)
            assert resp.status == 201, await resp.text()
            r = await resp.json()
            acks.append((w, b, int(r["first_id"].split(":")[1]), int(r["last_id"].split(":")[1])))
            await asyncio.sleep(0)

    async def reader(r: int):
        token = keys["reader" if r % 2 else "admin"]
        while not writers_done.is_set():
            if r % 3 == 0:
                resp = await client.get("/api/v1/audit-log", params={"format": "ndjson"}, headers=bearer(token))
                statuses.append(resp.status)
                text = await resp.text()
                got = [json.loads(line)["seq"] for line in text.splitlines()]
            else:
                resp = await client.get("/api/v1/audit-log", params={"limit": "10000"}, headers=bearer(token))
                statuses.append(resp.status)
                body = await resp.json()
                assert body["integrity_violations"] == 0
                got = [e["seq"] for e in body["events"]]
            reads.append(got)
            await asyncio.sleep(0.005)

    readers = [asyncio.create_task(reader(r)) for r in range(4)]
    await asyncio.gather(*(writer(w) for w in range(WRITERS)))
    writers_done.set()
    await asyncio.gather(*readers)

    total = WRITERS * BATCHES * PER_BATCH
    assert all(s < 500 for s in statuses), sorted(set(statuses))
    assert len(acks) == WRITERS * BATCHES
    # the acknowledged ranges tile the seqs after the keys' own entries exactly
    k = KEY_ENTRIES
    ranges = sorted((first, last) for _, _, first, last in acks)
    assert ranges[0][0] == k + 1 and ranges[-1][1] == k + total
    assert all(last - first + 1 == PER_BATCH for first, last in ranges)
    assert all(a[1] + 1 == b[0] for a, b in zip(ranges, ranges[1:]))
    assert head_seq(svc) == k + total

    # every reader saw a contiguous committed prefix 1..k (never a hole)
    assert len(reads) >= 4
    for got in reads:
        assert got == list(range(1, len(got) + 1))

    # nothing lost: every posted event is there once, where its ack said
    events = await query_all(client, keys["reader"])
    assert [e["seq"] for e in events] == list(range(1, k + total + 1))
    by_seq = {e["seq"]: e for e in events}
    for w, b, first, _ in acks:
        got = [by_seq[first + i]["details"] for i in range(PER_BATCH)]
        assert got == [{"w": w, "b": b, "i": i} for i in range(PER_BATCH)]
        assert by_seq[first]["user"] == f"writer-{w}"

    # the commit metrics account for every entry once
    text = await (await client.get("/metrics")).text()
    metric = {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line and not line.startswith("#")
    }
    assert metric["auditlog_commit_batch_entries_sum"] == k + total
    assert metric["auditlog_appended_entries_total"] == k + total
    assert 1 <= metric["auditlog_commit_batch_entries_count"] <= k + WRITERS * BATCHES

    # and the whole log verifies, over HTTP and directly
    report = await (await client.get("/api/v1/verify", headers=bearer(keys["reader"]))).json()
    assert report["ok"] is True and report["violations"] == []
    assert report["entries_checked"] == k + total
    assert verify_node(svc.data_dir, svc.node).ok
