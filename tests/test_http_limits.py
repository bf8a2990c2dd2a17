"""Limits and hostile input (SPEC section 7): a clear 4xx JSON error, nothing written,
the server unharmed; back-pressure answers 503 with Retry-After and loses nothing."""

from __future__ import annotations

import asyncio
import json

import msgpack
import pytest
from helpers_http import KEY_ENTRIES, assert_error, bearer, ev, head_seq, make_keys, post_events, query, query_all

from auditlog.engine.settings import StoreSettings
from auditlog.ingest.limits import Limits
from auditlog.query.node import ServiceSettings


async def assert_unharmed(client, keys, service, head: int) -> None:
    """Nothing was written by the refused requests, and the server still works."""
    assert head_seq(service) == head
    resp = await client.get("/healthz")
    assert resp.status == 200 and (await resp.json())["status"] == "ok"
    resp = await post_events(client, keys["writer"], [ev(999)])
    assert resp.status == 201, await resp.text()
    assert (await resp.json())["first_id"] == f"node-a:{head + 1}"
    last = (await query(client, keys["reader"], order="desc", limit="1"))["events"][0]
    assert last["seq"] == head + 1 and last["details"] == {"n": 999}


# ----------------------------------------------------------------------------- body size


async def test_body_over_limit_is_413(make_service, make_client):
    svc = make_service(settings=ServiceSettings(max_body_bytes=2048))
    keys = make_keys(svc)
    client = await make_client(svc)
    w = bearer(keys["writer"])
    small = [ev(i) for i in range(3)]
    assert len(json.dumps(small)) < 2048
    assert (await post_events(client, keys["writer"], small)).status == 201
    head = head_seq(svc)

    big = [ev(i, details={"pad": "x" * 500}) for i in range(6)]
    assert len(json.dumps(big)) > 2048
    await assert_error(await client.post("/api/v1/events", json=big, headers=w), 413, "too large", "2048")
    await assert_error(
        await client.post(
            "/api/v1/events", data=msgpack.packb(big), headers={**w, "Content-Type": "application/msgpack"}
        ),
        413,
        "2048",
    )

    async def chunks():  # no Content-Length: the limit holds for a chunked body too
        yield b"["
        for i in range(40):
            yield json.dumps(ev(i, details={"pad": "y" * 100})).encode() + b","
        yield json.dumps(ev(41)).encode() + b"]"

    await assert_error(
        await client.post("/api/v1/events", data=chunks(), headers={**w, "Content-Type": "application/json"}), 413
    )
    await assert_error(
        await client.post(
            "/api/v1/api-keys", json={"name": "x" * 4000, "role": "reader"}, headers=bearer(keys["admin"])
        ),
        413,
    )
    assert len(svc.keys.list()) == 4
    await assert_unharmed(client, keys, svc, head)


async def test_batch_over_max_batch_is_413(make_service, make_client):
    svc = make_service(settings=ServiceSettings(limits=Limits(max_batch=5)))
    keys = make_keys(svc)
    client = await make_client(svc)
    assert (await post_events(client, keys["writer"], [ev(i) for i in range(5)])).status == 201
    await assert_error(
        await post_events(client, keys["writer"], [ev(i) for i in range(6)]), 413, "batch", "6 events", "5"
    )
    await assert_unharmed(client, keys, svc, KEY_ENTRIES + 5)


async def test_default_batch_limit_10000(client, keys, service):
    tiny = {"user": "u", "action": "auth.login"}
    await assert_error(await post_events(client, keys["writer"], [tiny] * 10001), 413, "10000")
    await assert_unharmed(client, keys, service, KEY_ENTRIES)


# ----------------------------------------------------------------------------- bad bodies


def _nested(depth: int):
    d: dict = {"leaf": 1}
    for _ in range(depth - 1):
        d = {"k": d}
    return d


VALID = '{"user": "u", "action": "auth.login"}'
BAD_BODIES = [
    # (id, body bytes, content type, status, needles)
    ("malformed-json", b'[{"user": "u", "action": ', "application/json", 400, ["not valid JSON"]),
    ("trailing-garbage", f"[{VALID}] x".encode(), "application/json", 400, ["not valid JSON"]),
    ("invalid-utf8", b'[{"user": "\xff\xfe", "action": "auth.login"}]', "application/json", 400, ["UTF-8"]),
    ("nan", b'[{"user": "u", "action": "auth.login", "details": {"x": NaN}}]', "application/json", 400, ["NaN"]),
    (
        "infinity",
        b'[{"user": "u", "action": "auth.login", "details": {"x": -Infinity}}]',
        "application/json",
        400,
        ["Infinity"],
    ),
    (
        "duplicate-keys",
        b'[{"user": "u", "user": "v", "action": "auth.login"}]',
        "application/json",
        400,
        ["duplicate", "user"],
    ),
    (
        "duplicate-keys-in-details",
        b'[{"user": "u", "action": "auth.login", "details": {"a": 1, "a": 2}}]',
        "application/json",
        400,
        ["duplicate"],
    ),
    ("deeply-nested-body", b"[" * 100_000 + b"]" * 100_000, "application/json", 400, ["JSON"]),
    (
        "deeply-nested-details",
        json.dumps([{"user": "u", "action": "auth.login", "details": _nested(12)}]).encode(),
        "application/json",
        400,
        ["details", "deeper"],
    ),
    (
        "huge-float",
        b'[{"user": "u", "action": "auth.login", "details": {"x": 1e999}}]',
        "application/json",
        400,
        ["finite"],
    ),
    (
        "huge-int-digits",
        b'[{"user": "u", "action": "auth.login", "details": {"x": 1' + b"0" * 5000 + b"}}]",
        "application/json",
        400,
        ["JSON"],
    ),
    (
        "int-over-64-bit",
        b'[{"user": "u", "action": "auth.login", "details": {"x": 18446744073709551616}}]',
        "application/json",
        400,
        ["64-bit"],
    ),
    ("json-string", b'"[{\\"user\\": \\"u\\"}]"', "application/json", 400, ["array"]),
    ("json-number", b"42", "application/json", 400, ["array"]),
    ("json-null", b"null", "application/json", 400, ["array"]),
    ("empty-array", b"[]", "application/json", 400, ["empty"]),
    ("empty-events", b'{"events": []}', "application/json", 400, ["empty"]),
    ("events-plus-extra", f'{{"events": [{VALID}], "more": 1}}'.encode(), "application/json", 400, ["events"]),
    ("object-not-events", f"{VALID}".encode(), "application/json", 400, ["events"]),
    ("empty-body", b"", "application/json", 400, ["JSON"]),
    ("array-of-strings", b'["auth.login"]', "application/json", 400, ["event 0", "object"]),
    (
        "assigned-fields",
        b'[{"user": "u", "action": "auth.login", "seq": 1, "signature": "00"}]',
        "application/json",
        400,
        ["seq", "signature", "assigned"],
    ),
    ("reserved-action", b'[{"user": "u", "action": "audit.retention_purge"}]', "application/json", 400, ["reserved"]),
    ("control-char", b'[{"user": "u\\u0000x", "action": "auth.login"}]', "application/json", 400, ["control"]),
    ("lone-surrogate", b'[{"user": "\\ud800", "action": "auth.login"}]', "application/json", 400, ["surrogate"]),
    (
        "details-over-16k",
        json.dumps([{"user": "u", "action": "auth.login", "details": {"blob": "z" * 17000}}]).encode(),
        "application/json",
        400,
        ["details", "16384"],
    ),
    ("text-plain", f"[{VALID}]".encode(), "text/plain", 415, ["Content-Type", "application/json"]),
    ("form", b"user=u&action=auth.login", "application/x-www-form-urlencoded", 415, ["Content-Type"]),
    ("xml", b"<events/>", "application/xml", 415, ["Content-Type"]),
    ("msgpack-garbage", b"\xc1\xc1\xc1", "application/msgpack", 400, ["msgpack"]),
    (
        "msgpack-truncated",
        msgpack.packb([{"user": "u", "action": "auth.login"}])[:-3],
        "application/msgpack",
        400,
        ["msgpack"],
    ),
    ("msgpack-int-keys", msgpack.packb([{1: "u"}]), "application/msgpack", 400, ["msgpack"]),
    (
        "msgpack-binary-value",
        msgpack.packb([{"user": b"\x00bin", "action": "auth.login"}], use_bin_type=True),
        "application/msgpack",
        400,
        ["msgpack"],
    ),
]


@pytest.mark.parametrize("body,ctype,status,needles", [b[1:] for b in BAD_BODIES], ids=[b[0] for b in BAD_BODIES])
async def test_bad_bodies_refused_nothing_written(client, keys, service, body, ctype, status, needles):
    assert (await post_events(client, keys["writer"], [ev(1)])).status == 201
    resp = await client.post("/api/v1/events", data=body, headers={**bearer(keys["writer"]), "Content-Type": ctype})
    await assert_error(resp, status, *needles)
    await assert_unharmed(client, keys, service, KEY_ENTRIES + 1)


async def test_problems_are_listed_per_event_and_field(client, keys, service):
    batch = [ev(0), {"user": 5, "action": "Auth.Login", "success": "yes", "colour": "red"}, ev(2, ip="x")]
    err = await assert_error(await post_events(client, keys["writer"], batch), 400)
    got = {(p["index"], p["field"]) for p in err["problems"]}
    assert got == {(1, "user"), (1, "action"), (1, "success"), (1, "colour"), (2, "ip")}
    await assert_unharmed(client, keys, service, KEY_ENTRIES)


# ----------------------------------------------------------------------------- bad query strings

BAD_QUERIES = [
    ({"colour": "red"}, "colour"),
    ({"limit": "0"}, "limit"),
    ({"limit": "10001"}, "limit"),
    ({"limit": "abc"}, "limit"),
    ({"limit": "-1"}, "limit"),
    ({"limit": "1.5"}, "limit"),
    ({"limit": ""}, "limit"),
    ({"limit": "\u00b2"}, "limit"),  # isdigit() but not int()-able: was a 500
    ({"limit": "9" * 5000}, "limit"),  # beyond int()'s digit limit: was a 500
    ({"limit": "\u0661\u0660"}, "limit"),  # Arabic-Indic "10"
    ({"limit": " 10"}, "limit"),
    ({"cursor": "zzz"}, "cursor"),
    ({"cursor": "eyJ2IjoxfQ"}, "cursor"),  # base64 of {"v":1}: no positions
    ({"from": "yesterday"}, "from"),
    ({"from": "2026-02-30"}, "from"),
    ({"to": "2026-13-01"}, "to"),
    ({"from": "2026-03-14T25:00:00Z"}, "from"),
    ({"from": "-30x"}, "from"),
    ({"from": "2026-03-14", "to": "2026-03-14"}, "from"),
    ({"from": "2026-03-15", "to": "2026-03-14"}, "from"),
    ({"from": "2026-03-14", "to": "1970-01-01"}, "from"),
    ({"ip": "999.1.1.1"}, "ip"),
    ({"ip": "192.0.2.1,not-an-ip"}, "ip"),
    ({"order": "sideways"}, "order"),
    ({"success": "maybe"}, "success"),
    ({"node": "Node_A!"}, "node"),
    ({"action": "Auth Login"}, "action"),
    ({"domain": "-bad-.example"}, "domain"),
    ({"user": "x" * 2000}, "user"),
    ({"format": "xml"}, "format"),
]


@pytest.mark.parametrize("params,needle", BAD_QUERIES, ids=[json.dumps(q[0])[:60] for q in BAD_QUERIES])
async def test_bad_query_strings_name_the_parameter(client, keys, service, params, needle):
    resp = await client.get("/api/v1/audit-log", params=params, headers=bearer(keys["reader"]))
    await assert_error(resp, 400, needle)


async def test_long_query_strings_get_the_json_error_shape(client, keys, service):
    from auditlog.query.http.base import MAX_QUERY_BYTES

    h = bearer(keys["reader"])
    # longer than aiohttp's own 8190-byte request line: the route still answers, in JSON
    resp = await client.get("/api/v1/audit-log?user=" + "a" * 9000, headers=h)
    await assert_error(resp, 400, "user")
    # longer than the routes read: 414, JSON, and the server goes on
    for path in ("/api/v1/audit-log", "/api/v1/audit-log/export.csv", "/api/v1/verify", "/no/such/route"):
        resp = await client.get(f"{path}?x=" + "b" * (MAX_QUERY_BYTES + 1), headers=h)
        await assert_error(resp, 414, "query string too long")
    assert (await client.get("/api/v1/audit-log", headers=h)).status == 200


async def test_cursor_from_another_query_is_refused(client, keys, service):
    assert (
        await post_events(client, keys["writer"], [ev(i, user="alice" if i % 2 else "bob") for i in range(10)])
    ).status == 201
    page = await query(client, keys["reader"], user="alice", limit="2")
    cur = page["next_cursor"]
    assert cur
    for other in ({"user": "bob"}, {"user": "alice", "order": "desc"}, {}, {"user": "alice", "ip": "192.0.2.10"}):
        resp = await client.get(
            "/api/v1/audit-log", params={**other, "cursor": cur, "limit": "2"}, headers=bearer(keys["reader"])
        )
        await assert_error(resp, 400, "cursor", "different query")
    # the same query accepts it (a different limit is the same query)
    rest = await query(client, keys["reader"], user="alice", cursor=cur, limit="10")
    assert len(page["events"]) + len(rest["events"]) == 5


async def test_bad_query_strings_on_export_and_verify(client, keys, service):
    r = bearer(keys["reader"])
    await assert_error(await client.get("/api/v1/audit-log/export.csv", params={"limit": "5"}, headers=r), 400, "limit")
    await assert_error(
        await client.get("/api/v1/audit-log/export.csv", params={"from": "soon"}, headers=r), 400, "from"
    )
    await assert_error(await client.get("/api/v1/verify", params={"deep": "1"}, headers=r), 400, "deep")
    # a refused export is not audited as an export
    assert (await query(client, keys["reader"], action="audit.export"))["events"] == []
    await assert_unharmed(client, keys, service, KEY_ENTRIES)


# ----------------------------------------------------------------------------- back-pressure


async def test_back_pressure_503_with_retry_after_and_nothing_lost(make_service, make_client):
    svc = make_service(StoreSettings(fsync="always"), ServiceSettings(max_pending_events=10))
    keys = make_keys(svc)
    client = await make_client(svc)
    w = bearer(keys["writer"])
    accepted: list[tuple[int, int, int]] = []  # (request no, first seq, last seq)
    refused: list[int] = []
    statuses: list[int] = []

    async def one(no: int):
        batch = [ev(i, user=f"bp-{no}", details={"req": no, "i": i}) for i in range(4)]
        resp = await client.post("/api/v1/events", json=batch, headers=w)
        statuses.append(resp.status)
        if resp.status == 201:
            body = await resp.json()
            accepted.append((no, int(body["first_id"].split(":")[1]), int(body["last_id"].split(":")[1])))
        elif resp.status == 503:
            err = await assert_error(resp, 503, "retry")
            assert resp.headers["Retry-After"].isdigit()
            assert err["status"] == 503
            refused.append(no)
        else:
            raise AssertionError((resp.status, await resp.text()))

    for round_ in range(5):  # contention is timing-dependent: retry a few rounds
        await asyncio.gather(*(one(round_ * 100 + n) for n in range(40)))
        if refused:
            break
    assert refused, "no request was refused with 503 although the queue holds 2 batches"
    assert accepted
    assert all(s in (201, 503) for s in statuses)
    assert svc.committer.pending_events == 0

    # every 201'd event is in the log exactly where the response said; no 503'd one is
    events = (await query_all(client, keys["reader"]))[KEY_ENTRIES:]  # after the keys' own entries
    by_seq = {e["seq"]: e for e in events}
    assert len(events) == 4 * len(accepted)
    for no, first, last in accepted:
        assert last - first == 3
        assert [by_seq[s]["details"] for s in range(first, last + 1)] == [{"req": no, "i": i} for i in range(4)]
    assert {e["details"]["req"] for e in events}.isdisjoint(refused)
    assert sorted(by_seq) == list(range(KEY_ENTRIES + 1, KEY_ENTRIES + len(events) + 1))
    # metrics show the queue depth back at zero
    text = await (await client.get("/metrics")).text()
    assert "auditlog_write_queue_events 0" in text.splitlines()


async def test_bookkeeping_entries_are_not_dropped_by_back_pressure(make_service, make_client):
    """A key created or revoked, or an export sent, is recorded even when the write queue
    refuses client batches: the action happened, so its audit entry must not be lost."""
    svc = make_service(settings=ServiceSettings(max_pending_events=0))
    keys = make_keys(svc)
    client = await make_client(svc)
    admin = bearer(keys["admin"])
    await assert_error(await post_events(client, keys["writer"], [ev(1)]), 503, "retry")
    assert head_seq(svc) == KEY_ENTRIES
    resp = await client.post("/api/v1/api-keys", json={"name": "under-load", "role": "reader"}, headers=admin)
    assert resp.status == 201, await resp.text()
    kid = (await resp.json())["id"]
    assert (await client.delete(f"/api/v1/api-keys/{kid}", headers=admin)).status == 200
    assert (await client.get("/api/v1/audit-log/export.csv", headers=admin)).status == 200
    for _ in range(100):
        if head_seq(svc) == KEY_ENTRIES + 3:
            break
        await asyncio.sleep(0.02)
    got = (await query(client, keys["admin"]))["events"][KEY_ENTRIES:]
    assert [e["action"] for e in got] == ["audit.api_key_create", "audit.api_key_revoke", "audit.export"]
    assert got[0]["details"]["key_id"] == kid == got[1]["details"]["key_id"]
