"""Idempotency-Key on POST /api/v1/events, over a real server on a real data dir.

A key is bound to its request (body bytes and Content-Type family) and scoped
to the API key that sent it: the same request replays the first answer, a
different one is refused with 422 and writes nothing, across restarts too.
The keys are kept in ``state/idempotency.jsonl`` as sealed lines: a line
written by hand, edited, or sealed by another node grants no replay and is
reported (a warning naming the file and line, and a counter in /metrics).
"""

from __future__ import annotations

import json
import logging
import os

import msgpack
import pytest
from helpers_http import assert_error, bearer, ev, head_seq, make_keys, query

from auditlog.engine.datadir import DataDir
from auditlog.engine.settings import StoreSettings
from auditlog.engine.state import StateSeal
from auditlog.ingest.idempotency import IdempotencyCache, request_fingerprint
from auditlog.query.node import RunningNode, ServiceSettings, build_node

JSON = {"Content-Type": "application/json"}
MSGPACK = {"Content-Type": "application/msgpack"}


def body_of(user: str, n: int, start: int = 0) -> bytes:
    return json.dumps([ev(start + i, user=user) for i in range(n)]).encode()


async def post(client, token: str, body: bytes, key: str | None, ctype: dict = JSON):
    headers = {**bearer(token), **ctype}
    if key is not None:
        headers["Idempotency-Key"] = key
    return await client.post("/api/v1/events", data=body, headers=headers)


async def markers(client, reader: str, user: str) -> list[int]:
    """details.n of every entry ``user`` has in the log, in log order."""
    return [e["details"]["n"] for e in (await query(client, reader, user=user))["events"]]


def reopen(svc: RunningNode) -> RunningNode:
    """What a restart does: close the node, build a new one on the same data dir."""
    svc.close()
    return build_node(svc.config, svc.data_dir)


def metric(text: str, name: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    return None


STATE_REJECTED = 'auditlog_state_rejected_total{file="idempotency.jsonl"}'


# ----------------------------------------------------------------------------- bound to the request


async def test_same_key_with_a_different_batch_is_422_and_writes_nothing(client, keys, service):
    first = body_of("alice", 3)
    resp = await post(client, keys["writer"], first, "batch-1")
    assert resp.status == 201, await resp.text()
    answer = await resp.json()
    head = head_seq(service)

    # same size, other events: before, this was answered as a replay and the batch was lost
    other = body_of("bob", 3, start=100)
    err = await assert_error(
        await post(client, keys["writer"], other, "batch-1"),
        422,
        "Idempotency-Key",
        "'batch-1'",
        "different request",
        "nothing was written",
    )
    assert "problems" not in err
    # a different size and a different Content-Type family are different requests too
    await assert_error(await post(client, keys["writer"], body_of("bob", 5, 100), "batch-1"), 422)
    await assert_error(await post(client, keys["writer"], msgpack.packb(json.loads(first)), "batch-1", MSGPACK), 422)
    # even a body that would not validate: the key's binding is checked first
    await assert_error(await post(client, keys["writer"], b"[not json", "batch-1"), 422)
    assert head_seq(service) == head
    assert await markers(client, keys["reader"], "bob") == []

    # the very same request still replays the first answer and appends nothing
    resp = await post(client, keys["writer"], first, "batch-1")
    assert resp.status == 200 and resp.headers["Idempotent-Replay"] == "true"
    assert await resp.json() == answer
    assert head_seq(service) == head
    assert await markers(client, keys["reader"], "alice") == [0, 1, 2]
    # and a new key takes the other batch
    resp = await post(client, keys["writer"], other, "batch-2")
    assert resp.status == 201
    assert await markers(client, keys["reader"], "bob") == [100, 101, 102]


async def test_the_fingerprint_is_the_body_and_the_content_type_family(client, keys, service):
    assert request_fingerprint(b"[1]", "application/json") == request_fingerprint(b"[1]", "text/json")
    assert request_fingerprint(b"[1]", "application/json") != request_fingerprint(b"[1]", "application/msgpack")
    assert request_fingerprint(b"[1]", "application/json") != request_fingerprint(b"[1] ", "application/json")
    # one byte of whitespace is another request: the body is hashed as sent
    resp = await post(client, keys["writer"], body_of("carol", 2), "ws")
    assert resp.status == 201
    await assert_error(await post(client, keys["writer"], body_of("carol", 2) + b" ", "ws"), 422)
    # the msgpack media type's alias is the same family: a retry under either name replays
    packed = msgpack.packb([ev(7, user="dave")])
    resp = await post(client, keys["writer"], packed, "mp", MSGPACK)
    assert resp.status == 201
    resp = await post(client, keys["writer"], packed, "mp", {"Content-Type": "application/x-msgpack"})
    assert resp.status == 200 and resp.headers["Idempotent-Replay"] == "true"
    assert await markers(client, keys["reader"], "dave") == [7]


async def test_keys_are_scoped_to_the_api_key_that_sent_them(client, keys, service):
    other_writer = service.keys.create("second-writer", "writer")[1]
    resp = await post(client, keys["writer"], body_of("erin", 1), "shared")
    assert resp.status == 201
    # the other API key's "shared" is its own: neither a replay nor a conflict
    resp = await post(client, other_writer, body_of("frank", 1, 50), "shared")
    assert resp.status == 201
    resp = await post(client, other_writer, body_of("erin", 1), "shared")
    assert resp.status == 422
    assert await markers(client, keys["reader"], "erin") == [0]
    assert await markers(client, keys["reader"], "frank") == [50]


async def test_binding_and_replay_survive_a_restart(make_service, make_client):
    svc = make_service(store=StoreSettings(fsync="always"))
    keys = make_keys(svc)
    client = await make_client(svc)
    first = body_of("gina", 4)
    resp = await post(client, keys["writer"], first, "restart-1")
    assert resp.status == 201
    answer = await resp.json()

    svc = reopen(svc)
    try:
        client = await make_client(svc)
        head = head_seq(svc)
        await assert_error(await post(client, keys["writer"], body_of("hank", 4), "restart-1"), 422)
        assert head_seq(svc) == head
        resp = await post(client, keys["writer"], first, "restart-1")
        assert resp.status == 200 and resp.headers["Idempotent-Replay"] == "true"
        assert await resp.json() == answer
        assert head_seq(svc) == head
        assert await markers(client, keys["reader"], "gina") == [0, 1, 2, 3]
        assert await markers(client, keys["reader"], "hank") == []
    finally:
        svc.close()


async def test_a_compacted_file_holds_sealed_lines_that_still_bind(make_service, make_client):
    svc = make_service(settings=ServiceSettings(idempotency_entries=2))
    keys = make_keys(svc)
    client = await make_client(svc)
    bodies = {f"c-{i}": body_of(f"user{i}", 1, i) for i in range(7)}
    for k, b in bodies.items():
        assert (await post(client, keys["writer"], b, k)).status == 201
    path = svc.data_dir.state / IdempotencyCache.FILE_NAME
    records, problems = svc.seal.read_lines(path)
    assert problems == [] and len(records) <= 4  # compacted past 2 * entries
    assert [r["k"].split(":", 1)[1] for r in records][-2:] == ["c-5", "c-6"]
    assert all(r["fp"] == request_fingerprint(bodies[r["k"].split(":", 1)[1]], "application/json") for r in records)
    svc = reopen(svc)
    try:
        client = await make_client(svc)
        resp = await post(client, keys["writer"], bodies["c-6"], "c-6")
        assert resp.status == 200
        await assert_error(await post(client, keys["writer"], bodies["c-5"], "c-6"), 422)
    finally:
        svc.close()


# ----------------------------------------------------------------------------- sealed state file


async def test_forged_lines_grant_no_replay_and_are_reported(make_service, make_client, tmp_path, caplog):
    svc = make_service(store=StoreSettings(fsync="always"))
    keys = make_keys(svc)
    client = await make_client(svc)
    kid = keys["writer"].split("_")[1]
    # a real key first: its line is this node's, and must keep working next to the forgeries
    real = body_of("ivan", 2)
    resp = await post(client, keys["writer"], real, "real")
    assert resp.status == 201
    real_answer = await resp.json()
    assert (await post(client, keys["writer"], body_of("filler", 8), None)).status == 201
    path = svc.data_dir.state / IdempotencyCache.FILE_NAME
    genuine = path.read_bytes().splitlines()[-1]
    seal = svc.seal

    # batches that were never appended, each with a line claiming they were; the
    # claimed seqs are inside the log, so only the seal can tell them apart
    forged = {name: body_of(f"forged-{name}", 2) for name in ("plain", "foreign", "edited", "renamed")}

    def record(name: str) -> dict:
        return {
            "k": f"{kid}:{name}",
            "fp": request_fingerprint(forged[name], "application/json"),
            "v": {"appended": 2, "first_id": "node-a:1", "last_id": "node-a:2"},
        }

    other = DataDir(tmp_path / "other-node")
    other.init("node-b")
    lines = [
        json.dumps(record("plain")).encode(),  # hand-written
        StateSeal(other.open().key, "node-b").seal("idempotency", record("foreign")),  # another node's
        genuine.replace(f"{kid}:real".encode(), f"{kid}:edited".encode()).replace(
            json.loads(genuine)["data"]["fp"].encode(), record("edited")["fp"].encode()
        ),
        seal.seal("syslog_cursor", record("renamed")),  # sealed for another file
    ]
    svc.close()
    with path.open("ab") as f:
        f.write(b"\n".join(lines) + b"\n")
        f.write(seal.seal("idempotency", record("plain"))[:50])  # torn: a crash, not a forgery

    caplog.set_level(logging.WARNING, logger="auditlog.idempotency")
    svc = build_node(svc.config, svc.data_dir)
    try:
        client = await make_client(svc)
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        forged_lines = [w for w in warnings if "idempotency.jsonl line" in w]
        assert all(str(path) in w and "ignored" in w for w in forged_lines), forged_lines
        # line 1 is the genuine key, 2..5 the forgeries; the torn tail is not named
        assert sorted(int(w.split(" line ")[1].split(":")[0]) for w in forged_lines) == [2, 3, 4, 5]
        text = await (await client.get("/metrics")).text()
        assert metric(text, STATE_REJECTED) == 4

        head = head_seq(svc)
        for name, body in forged.items():
            resp = await post(client, keys["writer"], body, name)
            assert resp.status == 201, (name, resp.status, await resp.text())
            assert await markers(client, keys["reader"], f"forged-{name}") == [0, 1]
        assert head_seq(svc) == head + 8
        # the node's own line still binds and replays
        resp = await post(client, keys["writer"], real, "real")
        assert resp.status == 200 and await resp.json() == real_answer
    finally:
        svc.close()


async def test_an_untouched_file_reports_zero_rejected_lines(make_service, make_client):
    svc = make_service()
    keys = make_keys(svc)
    client = await make_client(svc)
    assert (await post(client, keys["writer"], body_of("jo", 1), "k")).status == 201
    svc = reopen(svc)
    try:
        client = await make_client(svc)
        text = await (await client.get("/metrics")).text()
        assert "# TYPE auditlog_state_rejected_total counter" in text
        assert metric(text, STATE_REJECTED) == 0
        path = svc.data_dir.state / IdempotencyCache.FILE_NAME
        assert oct(os.stat(path).st_mode & 0o777) == "0o600"
        assert svc.seal.read_lines(path)[1] == []
    finally:
        svc.close()


@pytest.mark.parametrize("status_first", [400, 415])
async def test_a_refused_body_does_not_bind_its_key(client, keys, service, status_first):
    bad, ctype = (b'[{"user": "u"}]', JSON) if status_first == 400 else (b"x", {"Content-Type": "text/plain"})
    assert (await post(client, keys["writer"], bad, "fix-me", ctype)).status == status_first
    # nothing was stored for the key: the corrected batch is taken under it
    resp = await post(client, keys["writer"], body_of("kim", 1), "fix-me")
    assert resp.status == 201
    assert await markers(client, keys["reader"], "kim") == [0]
