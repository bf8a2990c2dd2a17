"""Signed checkpoints over HTTP: POST /api/v1/checkpoints makes one (admin), GET
lists the newest (reader), each verifies with nothing but the node's public key
and matches the Merkle tree of the entries before it; the background job makes
one at a segment seal or once the interval passed, and none for a log with
damage."""

from __future__ import annotations

import pytest
from helpers_http import assert_error, bearer, ev, head_seq, post_events

from auditlog.engine.entry import canonical_bytes
from auditlog.engine.log import NodeLog
from auditlog.engine.merkle import leaf_hash, root
from auditlog.engine.note import Checkpoint, Verifier, open_note
from auditlog.engine.settings import StoreSettings
from auditlog.engine.signing import parse_public_key
from auditlog.engine.tree import TREE_HEAD_ACTION, origin
from auditlog.query.node import ServiceSettings


def verifier(service) -> Verifier:
    dd = service.data_dir
    return Verifier.of(origin(service.node_id), parse_public_key(dd.public_key_path.read_bytes(), "node.pub"))


def tree_root(service, size: int) -> bytes:
    leaves = []
    for e in NodeLog(service.data_dir, service.node).scan():
        draft = (e.user, e.action, e.target, e.domain, e.ip, e.user_agent, e.success, e.details)
        leaves.append(leaf_hash(canonical_bytes(service.node_id, e.seq, e.ts, draft) + e.signature))
    return root(leaves[:size])


async def test_post_makes_a_checkpoint_and_get_lists_it(client, keys, service):
    assert (await post_events(client, keys["writer"], [ev(i) for i in range(5)])).status == 201
    before = head_seq(service)
    resp = await client.post("/api/v1/checkpoints", headers=bearer(keys["admin"]))
    assert resp.status == 201, await resp.text()
    made = await resp.json()
    assert made["seq"] == before + 1 == head_seq(service)
    cp = Checkpoint.parse(open_note(made["checkpoint"], [verifier(service)])[0])
    assert cp.size == before and cp.root == tree_root(service, before)
    resp = await client.get("/api/v1/checkpoints", headers=bearer(keys["reader"]))
    assert resp.status == 200
    body = await resp.json()
    assert body["node"] == service.node_id and body["violations"] == []
    [got] = body["checkpoints"]
    assert got["seq"] == made["seq"] and got["checkpoint"] == made["checkpoint"]
    assert got["size"] == before and got["root"] == cp.root.hex()
    # a second one, and both listed newest first
    await post_events(client, keys["writer"], [ev(9)])
    second = await (await client.post("/api/v1/checkpoints", headers=bearer(keys["admin"]))).json()
    body = await (await client.get("/api/v1/checkpoints?limit=5", headers=bearer(keys["reader"]))).json()
    assert [c["seq"] for c in body["checkpoints"]] == [second["seq"], made["seq"]]
    assert Checkpoint.parse(open_note(second["checkpoint"], [verifier(service)])[0]).size == made["seq"] + 1
    # a time range: those made in it, newest first (up to 1000, or limit)
    for q, want in (
        ("from=2026-03-01&to=2027-01-01", [second["seq"], made["seq"]]),
        ("from=2026-03-01&limit=1", [second["seq"]]),
        ("to=2026-03-01", []),
        ("from=2027-01-01", []),
    ):
        body = await (await client.get(f"/api/v1/checkpoints?{q}", headers=bearer(keys["reader"]))).json()
        assert [c["seq"] for c in body["checkpoints"]] == want, q


async def test_roles_and_bad_parameters(client, keys):
    await assert_error(await client.post("/api/v1/checkpoints", headers=bearer(keys["reader"])), 403, "admin")
    await assert_error(await client.post("/api/v1/checkpoints", headers=bearer(keys["writer"])), 403)
    await assert_error(await client.get("/api/v1/checkpoints", headers=bearer(keys["writer"])), 403)
    await assert_error(await client.get("/api/v1/checkpoints"), 401)
    for q in (
        "limit=0",
        "limit=1001",
        "limit=x",
        "limit=-1",
        "limit=" + "9" * 50,
        "from=yesterday-ish",
        "from=2026-01-01&from=2026-01-02",
        "from=2026-02-01&to=2026-01-01",
        "size=3",
    ):
        await assert_error(await client.get(f"/api/v1/checkpoints?{q}", headers=bearer(keys["reader"])), 400)
    await assert_error(await client.post("/api/v1/checkpoints?x=1", headers=bearer(keys["admin"])), 400)
    body = await (await client.get("/api/v1/checkpoints", headers=bearer(keys["reader"]))).json()
    assert body["checkpoints"] == []


async def test_a_log_with_damage_gets_no_checkpoint(make_service, make_client):
    svc = make_service(StoreSettings(segment_max_bytes=4096, fsync="none"))
    from helpers_http import make_keys

    keys = make_keys(svc)
    client = await make_client(svc)
    for k in range(4):
        assert (await post_events(client, keys["writer"], [ev(10 * k + i) for i in range(10)])).status == 201
    seg = sorted(svc.data_dir.segments.glob("*.seg"))[0]
    raw = bytearray(seg.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    seg.write_bytes(bytes(raw))
    head = head_seq(svc)
    await assert_error(await client.post("/api/v1/checkpoints", headers=bearer(keys["admin"])), 409, "damage")
    assert head_seq(svc) == head  # nothing recorded
    svc.tree_head_job()  # the background job: no checkpoint, no exception
    assert head_seq(svc) == head


@pytest.mark.parametrize("interval", [0.0, 3600.0])
def test_the_job_makes_one_at_a_seal_or_once_the_interval_passed(make_service, interval):
    svc = make_service(
        StoreSettings(segment_max_bytes=4096, fsync="none"), ServiceSettings(checkpoint_interval=interval)
    )
    w = svc.writer
    heads = lambda: [e for e in NodeLog(svc.data_dir, svc.node).scan() if e.action == TREE_HEAD_ACTION]  # noqa: E731
    svc.tree_head_job()
    assert heads() == []  # nothing new since start
    w.append_batch([ev_draft(i) for i in range(3)])
    svc.tree_head_job()
    assert len(heads()) == (1 if interval == 0 else 0)
    svc.tree_head_job()  # nothing since (its own entry aside): no second one
    assert len(heads()) == (1 if interval == 0 else 0)
    before = w.active_name
    while w.active_name == before:  # a segment sealed: a checkpoint, whatever the interval
        w.append_batch([ev_draft(i) for i in range(20)])
    svc.tree_head_job()
    got = heads()
    assert len(got) == (2 if interval == 0 else 1)
    cp = Checkpoint.parse(open_note(got[-1].details["checkpoint"], [verifier(svc)])[0])
    assert cp.size == got[-1].seq - 1 and cp.root == tree_root(svc, cp.size)


def ev_draft(i: int):
    from auditlog.engine.entry import EntryDraft

    return EntryDraft("alice", "auth.login", None, None, "192.0.2.1", None, True, {"n": i})


async def test_proofs_over_http_verify_against_the_signed_checkpoints(client, keys, service):
    from auditlog.engine.merkle import verify_consistency, verify_inclusion

    for k in range(3):
        assert (await post_events(client, keys["writer"], [ev(100 * k + i) for i in range(150)])).status == 201
        await client.post("/api/v1/checkpoints", headers=bearer(keys["admin"]))
    body = await (await client.get("/api/v1/checkpoints?limit=3", headers=bearer(keys["reader"]))).json()
    cps = [Checkpoint.parse(open_note(c["checkpoint"], [verifier(service)])[0]) for c in body["checkpoints"]]
    new, old = cps[0], cps[-1]
    assert new.size > 256  # stored nodes and computed ones both in use
    for seq in (1, 2, old.size, old.size + 1, 300, new.size):
        resp = await client.get(f"/api/v1/proofs/inclusion?seq={seq}&size={new.size}", headers=bearer(keys["reader"]))
        assert resp.status == 200, await resp.text()
        p = await resp.json()
        assert p["leaf_index"] == seq - 1 and p["size"] == new.size
        proof = [bytes.fromhex(h) for h in p["proof"]]
        assert verify_inclusion(bytes.fromhex(p["leaf_hash"]), seq - 1, new.size, proof, new.root)
    resp = await client.get(f"/api/v1/proofs/consistency?old={old.size}&new={new.size}", headers=bearer(keys["reader"]))
    p = await resp.json()
    assert verify_consistency(old.size, new.size, old.root, new.root, [bytes.fromhex(h) for h in p["proof"]])
    # sizes the tree has not reached, and bad parameters
    r = bearer(keys["reader"])
    await assert_error(await client.get(f"/api/v1/proofs/inclusion?seq=1&size={new.size + 10}", headers=r), 409)
    for q in ("seq=0&size=5", "seq=1", "size=5", "seq=x&size=5", "seq=1&size=5&x=1", "seq=-1&size=5", "seq=99&size=5"):
        resp = await client.get(f"/api/v1/proofs/inclusion?{q}", headers=r)
        assert resp.status in (400, 409), (q, resp.status)
    await assert_error(await client.get("/api/v1/proofs/consistency?old=5&new=2", headers=r), 409)
    await assert_error(await client.get("/api/v1/proofs/consistency?old=1", headers=r), 400, "new is required")


async def test_export_bundle_over_http_verifies_offline(client, keys, service):
    import hashlib

    import bundle_verifier

    from auditlog.export.bundle import verify_bundle

    for k in range(3):
        assert (await post_events(client, keys["writer"], [ev(10 * k + i) for i in range(10)])).status == 201
    resp = await client.get("/api/v1/audit-log/export.bundle", headers=bearer(keys["reader"]))
    assert resp.status == 200 and resp.content_type == "application/x-tar"
    data = await resp.read()
    assert resp.headers["X-Bundle-SHA256"] == hashlib.sha256(data).hexdigest()
    report = verify_bundle(data, service.data_dir.signing_key().public_raw)
    assert report.ok and report.claim == "complete" and report.entries >= 30, report.failures
    assert bundle_verifier.check(data, service.data_dir.public_key_path.read_bytes()) == []
    exports = [e for e in NodeLog(service.data_dir, service.node).scan() if e.action == "audit.export"]
    assert (
        exports[-1].details["format"] == "bundle" and exports[-1].details["sha256"] == hashlib.sha256(data).hexdigest()
    )
    # a filtered bundle proves authenticity and order only
    resp = await client.get("/api/v1/audit-log/export.bundle?user=alice", headers=bearer(keys["reader"]))
    report = verify_bundle(await resp.read(), service.data_dir.signing_key().public_raw)
    assert report.ok and report.claim == "authentic"
    await assert_error(await client.get("/api/v1/audit-log/export.bundle?limit=5", headers=bearer(keys["reader"])), 400)
    await assert_error(await client.get("/api/v1/audit-log/export.bundle", headers=bearer(keys["writer"])), 403)


async def test_background_indexing_waits_while_a_read_streams(client, keys, service):
    """The term-postings job does nothing while reads are in flight (they would compete
    for the CPU) and catches up afterwards; the middleware's count never leaks."""
    assert (await post_events(client, keys["writer"], [ev(i) for i in range(20)])).status == 201
    active = service.writer.active_name
    service.reads_in_flight = 1
    assert service.postings_job() == 0
    assert active not in service.log.postings._segments  # nothing indexed
    service.reads_in_flight = 0
    service.postings_job()
    assert service.log.postings._segments[active].frames >= 1
    r = bearer(keys["reader"])
    for path in ("/api/v1/audit-log", "/api/v1/audit-log?format=ndjson", "/api/v1/audit-log?bogus=1", "/healthz"):
        await (await client.get(path, headers=r)).read()
    assert service.reads_in_flight == 0
