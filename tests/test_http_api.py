"""The HTTP API route by route (SPEC section 7), against a real Service on a real data dir.

Every request goes over a socket to ``create_app(service)`` (pytest-aiohttp's
test server); what a route claims to have written is read back through the
API and, where it matters, from the segment files themselves.
"""

from __future__ import annotations

import asyncio
import csv
import datetime as dt
import io
import json
import random
import re

import msgpack
import pytest
from helpers_http import KEY_ENTRIES, assert_error, bearer, ev, head_seq, ids, post_events, query, query_all, seqs

from auditlog.engine.entry import WIRE_FIELDS
from auditlog.engine.settings import StoreSettings
from auditlog.engine.verify import verify_node
from auditlog.query.node import ServiceSettings

NODE = "node-a"
SPEC_CSV_COLUMNS = [
    "timestamp",
    "node_id",
    "seq",
    "user",
    "action",
    "target",
    "domain",
    "ip_address",
    "user_agent",
    "success",
    "details",
    "signature",
    "integrity",
]


# ----------------------------------------------------------------------------- POST /api/v1/events


async def test_post_json_array_201_shape_and_readable(client, keys, service):
    events = [
        ev(0),
        ev(1, user="bob", ip="2001:DB8::1", domain="Example.COM", success=False),
        ev(2, action="quarantine.release", target="mail-1", details={"recipient": "x@example.org", "mail_id": "m1"}),
    ]
    resp = await post_events(client, keys["writer"], events)
    assert resp.status == 201, await resp.text()
    body = await resp.json()
    k = KEY_ENTRIES  # the keys' own entries come first
    assert body == {"appended": 3, "first_id": f"{NODE}:{k + 1}", "last_id": f"{NODE}:{k + 3}"}
    assert head_seq(service) == k + 3

    got = (await query(client, keys["reader"]))["events"][k:]
    assert ids(got) == [f"{NODE}:{k + 1}", f"{NODE}:{k + 2}", f"{NODE}:{k + 3}"]
    for e in got:
        assert list(e) == list(WIRE_FIELDS)
        assert e["node"] == NODE and e["integrity"] == "ok"
        assert re.fullmatch(r"[0-9a-f]{64}", e["signature"])
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", e["ts"])
    assert [e["details"]["n"] for e in got[:2]] == [0, 1]
    # stored normalised: IPv6 compressed lower case, domain lower case
    assert got[1]["ip"] == "2001:db8::1" and got[1]["domain"] == "example.com"
    assert got[1]["success"] is False and got[0]["success"] is True
    assert got[2]["details"] == {"mail_id": "m1", "recipient": "x@example.org"}


async def test_post_events_object_body(client, keys, service):
    resp = await post_events(client, keys["writer"], {"events": [ev(7), ev(8)]})
    assert resp.status == 201, await resp.text()
    k = KEY_ENTRIES
    assert await resp.json() == {"appended": 2, "first_id": f"{NODE}:{k + 1}", "last_id": f"{NODE}:{k + 2}"}
    got = (await query(client, keys["reader"]))["events"][k:]
    assert [e["details"]["n"] for e in got] == [7, 8]


async def test_post_events_msgpack_body(client, keys, service):
    body = msgpack.packb([ev(1, user="mp-user"), ev(2, details={"nested": {"a": [1, 2]}})])
    resp = await client.post(
        "/api/v1/events", data=body, headers={**bearer(keys["writer"]), "Content-Type": "application/msgpack"}
    )
    assert resp.status == 201, await resp.text()
    assert (await resp.json())["appended"] == 2
    got = (await query(client, keys["reader"]))["events"][KEY_ENTRIES:]
    assert got[0]["user"] == "mp-user"
    assert got[1]["details"] == {"nested": {"a": [1, 2]}}


async def test_post_events_all_or_nothing_names_every_bad_event(client, keys, service):
    await post_events(client, keys["writer"], [ev(0)])
    before = head_seq(service)
    batch = [ev(i) for i in range(10)]
    del batch[2]["user"]  # missing required field
    batch[5]["ip"] = "999.1.1.1"  # not an address
    batch[7]["action"] = "not.in_taxonomy"  # unknown action
    batch[9]["details"] = "not-a-map"  # wrong type
    resp = await post_events(client, keys["writer"], batch)
    err = await assert_error(resp, 400, "event 2", "event 5", "event 7", "event 9")
    problems = {(p["index"], p["field"]) for p in err["problems"]}
    assert problems == {(2, "user"), (5, "ip"), (7, "action"), (9, "details")}
    assert all(p["message"] for p in err["problems"])
    # nothing of the batch was written, not even the good events
    assert head_seq(service) == before
    assert [e["details"]["n"] for e in (await query_all(client, keys["reader"]))[KEY_ENTRIES:]] == [0]


async def test_a_failed_login_sent_without_success_is_stored_as_a_failure(client, keys, service):
    resp = await post_events(client, keys["writer"], [{"user": "mallory", "action": "auth.login_failed"}])
    assert resp.status == 201
    got = await query(client, keys["reader"], user="mallory")
    assert [(e["action"], e["success"]) for e in got["events"]] == [("auth.login_failed", False)]
    before = head_seq(service)
    resp = await post_events(
        client, keys["writer"], [ev(1), {"user": "m", "action": "auth.login_failed", "success": True}]
    )
    err = await assert_error(resp, 400, "event 1")
    assert err["problems"][0]["field"] == "success" and "records a failure" in err["problems"][0]["message"]
    assert head_seq(service) == before


# ----------------------------------------------------------------------------- GET /api/v1/audit-log

DATASET = [
    dict(user="alice", action="auth.login", ip="192.0.2.10", domain=None, target=None),
    dict(user="bob", action="config.filter_update", ip="2001:db8::b", domain="example.com", target="f-1"),
    dict(user="carol", action="config.dkim_rotate", ip="198.51.100.7", domain="example.org", target="sel1"),
    dict(
        user="alice",
        action="quarantine.release",
        ip="192.0.2.10",
        domain="example.org",
        target="m-1",
        details={"recipient": "r1@example.org", "mail_id": "m-1"},
    ),
    dict(user="dave", action="auth.login_failed", ip="203.0.113.66", domain=None, target=None, success=False),
    dict(user="bob", action="config.domain_add", ip="2001:db8::b", domain="shop.example.net", target="d"),
    dict(
        user="alice",
        action="quarantine.discard",
        ip="192.0.2.11",
        domain="example.com",
        target="m-2",
        details={"recipient": ["r2@example.com", "r1@example.org"], "mail_id": "m-2"},
    ),
    dict(
        user="carol",
        action="config.dkim_rotate_confirm",
        ip="198.51.100.7",
        domain="example.org",
        target="sel1",
        success=False,
    ),
]


@pytest.fixture
async def seeded(client, keys, service):
    """DATASET appended in three batches a few ms apart (distinct timestamps per batch)."""
    for chunk in (DATASET[:3], DATASET[3:6], DATASET[6:]):
        resp = await post_events(client, keys["writer"], [dict(d) for d in chunk])
        assert resp.status == 201
        await asyncio.sleep(0.005)
    events = await query_all(client, keys["reader"])
    assert len(events) == KEY_ENTRIES + len(DATASET)  # the keys' own entries, then DATASET
    return events


def _recipients(e):
    r = (e["details"] or {}).get("recipient")
    return set(r) if isinstance(r, list) else ({r} if r else set())


FILTER_CASES = [
    ({"user": "alice"}, lambda e: e["user"] == "alice"),
    ({"user": "alice,dave"}, lambda e: e["user"] in ("alice", "dave")),
    ({"action": "auth.login"}, lambda e: e["action"] == "auth.login"),
    ({"action": "config.*"}, lambda e: e["action"].startswith("config.")),
    (
        {"action": "config.dkim_rotate,quarantine.*"},
        lambda e: e["action"] == "config.dkim_rotate" or e["action"].startswith("quarantine."),
    ),
    ({"target": "sel1,m-1"}, lambda e: e["target"] in ("sel1", "m-1")),
    ({"domain": "EXAMPLE.org"}, lambda e: e["domain"] == "example.org"),
    ({"domain": "example.com,shop.example.net"}, lambda e: e["domain"] in ("example.com", "shop.example.net")),
    ({"ip": "2001:DB8:0::B"}, lambda e: e["ip"] == "2001:db8::b"),
    ({"ip": "192.0.2.10,203.0.113.66"}, lambda e: e["ip"] in ("192.0.2.10", "203.0.113.66")),
    ({"recipient": "r1@example.org"}, lambda e: "r1@example.org" in _recipients(e)),
    ({"recipient": "r2@example.com,nobody@x.org"}, lambda e: "r2@example.com" in _recipients(e)),
    ({"success": "false"}, lambda e: e["success"] is False),
    ({"success": "true"}, lambda e: e["success"] is True),
    ({"node": NODE}, lambda e: True),
    ({"node": "node-b"}, lambda e: False),
    ({"user": "alice", "ip": "192.0.2.10"}, lambda e: e["user"] == "alice" and e["ip"] == "192.0.2.10"),
    (
        {"user": "alice,bob", "action": "config.*,quarantine.release", "success": "true"},
        lambda e: (
            e["user"] in ("alice", "bob")
            and e["success"]
            and (e["action"].startswith("config.") or e["action"] == "quarantine.release")
        ),
    ),
    ({"from": "-1h"}, lambda e: True),
    ({"to": "-1h"}, lambda e: False),
    ({"from": "-2d", "to": "now"}, lambda e: True),
]


@pytest.mark.parametrize("params,pred", FILTER_CASES, ids=[json.dumps(c[0]) for c in FILTER_CASES])
async def test_query_filters(client, keys, seeded, params, pred):
    expected = [e["id"] for e in seeded if pred(e)]
    got = await query(client, keys["reader"], **params)
    assert ids(got["events"]) == expected
    assert got["next_cursor"] is None


async def test_query_time_bounds_absolute_and_date(client, keys, seeded):
    times = sorted({e["ts"] for e in seeded})
    assert len(times) >= 3, "each batch should have its own timestamp"
    mid = times[1]
    got = await query(client, keys["reader"], **{"from": mid})
    assert ids(got["events"]) == [e["id"] for e in seeded if e["ts"] >= mid]  # inclusive
    got = await query(client, keys["reader"], to=mid)
    assert ids(got["events"]) == [e["id"] for e in seeded if e["ts"] < mid]  # exclusive
    got = await query(client, keys["reader"], **{"from": times[0], "to": times[-1]})
    assert ids(got["events"]) == [e["id"] for e in seeded if times[0] <= e["ts"] < times[-1]]
    # an offset form of the same instant
    t = dt.datetime.strptime(mid, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=dt.UTC)
    shifted = t.astimezone(dt.timezone(dt.timedelta(hours=2))).isoformat()
    got = await query(client, keys["reader"], **{"from": shifted})
    assert ids(got["events"]) == [e["id"] for e in seeded if e["ts"] >= mid]
    # a plain date: the whole log is from today (UTC), nothing before it
    today = seeded[0]["ts"][:10]
    assert len((await query(client, keys["reader"], **{"from": today}))["events"]) == len(seeded)
    assert (await query(client, keys["reader"], to=today))["events"] == []


async def test_query_json_shape(client, keys, seeded):
    got = await query(client, keys["reader"])
    assert set(got) == {"events", "next_cursor", "nodes", "integrity_violations"}
    assert got["nodes"] == {NODE: {"status": "ok"}}
    assert got["integrity_violations"] == 0
    assert got["next_cursor"] is None
    assert [list(e) for e in got["events"]] == [list(WIRE_FIELDS)] * len(seeded)
    # ascending by (ts, node, seq)
    keys_ = [(e["ts"], e["node"], e["seq"]) for e in got["events"]]
    assert keys_ == sorted(keys_)


async def test_query_order_desc_and_limit(client, keys, seeded):
    asc = await query(client, keys["reader"])
    desc = await query(client, keys["reader"], order="desc")
    assert ids(desc["events"]) == ids(asc["events"])[::-1]
    page = await query(client, keys["reader"], order="desc", limit="3")
    assert ids(page["events"]) == ids(asc["events"])[::-1][:3]
    assert isinstance(page["next_cursor"], str) and page["next_cursor"]
    rest = await query(client, keys["reader"], order="desc", limit="10", cursor=page["next_cursor"])
    assert ids(page["events"]) + ids(rest["events"]) == ids(asc["events"])[::-1]
    assert rest["next_cursor"] is None


async def test_default_limit_is_1000(client, keys, service):
    resp = await post_events(client, keys["writer"], [ev(i) for i in range(1005)])
    assert resp.status == 201
    page = await query(client, keys["reader"])
    assert len(page["events"]) == 1000 and page["next_cursor"]
    rest = await query(client, keys["reader"], cursor=page["next_cursor"])
    assert seqs(rest["events"]) == list(range(1001, 1006 + KEY_ENTRIES))


def _ndjson(text: str) -> list[dict]:
    assert text.endswith("\n")
    return [json.loads(line) for line in text.splitlines()]


async def test_ndjson_by_format_and_by_accept(client, keys, seeded):
    expected = (await query(client, keys["reader"], action="config.*"))["events"]
    assert expected
    r1 = await client.get(
        "/api/v1/audit-log", params={"format": "ndjson", "action": "config.*"}, headers=bearer(keys["reader"])
    )
    assert r1.status == 200
    assert r1.content_type == "application/x-ndjson"
    assert json.loads(r1.headers["X-Auditlog-Nodes"]) == {NODE: {"status": "ok"}}
    assert _ndjson(await r1.text()) == expected
    r2 = await client.get(
        "/api/v1/audit-log",
        params={"action": "config.*"},
        headers={**bearer(keys["reader"]), "Accept": "application/x-ndjson"},
    )
    assert r2.status == 200 and r2.content_type == "application/x-ndjson"
    assert _ndjson(await r2.text()) == expected
    # limit and order apply to the stream too
    r3 = await client.get(
        "/api/v1/audit-log", params={"format": "ndjson", "order": "desc", "limit": "2"}, headers=bearer(keys["reader"])
    )
    assert ids(_ndjson(await r3.text())) == ids(seeded)[::-1][:2]


async def test_ndjson_streams_everything_without_limit(client, keys, service):
    # unlike a JSON page (default limit 1000), the stream has no default limit
    resp = await post_events(client, keys["writer"], [ev(i) for i in range(2500)])
    assert resp.status == 201
    r = await client.get("/api/v1/audit-log", params={"format": "ndjson"}, headers=bearer(keys["reader"]))
    assert seqs(_ndjson(await r.text())) == list(range(1, 2501 + KEY_ENTRIES))


# ----------------------------------------------------------------------------- export.csv


async def _wait_for(client, token, timeout=5.0, **params) -> list[dict]:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        got = (await query(client, token, **params))["events"]
        if got or asyncio.get_running_loop().time() > deadline:
            return got
        await asyncio.sleep(0.02)


async def test_export_csv(client, keys, service):
    evil = [
        ev(0, user='=HYPERLINK("http://evil","x")', target="+1+2", user_agent="@SUM(A1)"),
        ev(1, user="-2+3", target="@cmd", details={"note": "=1+1"}),
        ev(2, user="bob", target="plain, with comma", user_agent='say "hi"'),
        ev(3, user="carol"),
    ]
    assert (await post_events(client, keys["writer"], evil)).status == 201
    resp = await client.get(
        "/api/v1/audit-log/export.csv",
        headers=bearer(keys["reader"]),
        params={"user": '-2+3,bob,=HYPERLINK("http://evil"\\,"x")'},
    )
    assert resp.status == 200, await resp.text()
    assert resp.headers["Content-Type"].startswith("text/csv")
    cd = resp.headers["Content-Disposition"]
    assert cd.startswith("attachment;") and re.search(r'filename="[^"]+\.csv"', cd)
    raw = await resp.read()
    assert raw.startswith(b"\xef\xbb\xbf")  # UTF-8 BOM for Excel
    text = raw.decode("utf-8")[1:]
    rows = list(csv.reader(io.StringIO(text, newline="")))
    assert rows[0] == SPEC_CSV_COLUMNS
    body = [dict(zip(rows[0], r, strict=True)) for r in rows[1:]]
    assert [int(r["seq"]) - KEY_ENTRIES for r in body] == [1, 2, 3]
    assert all(r["node_id"] == NODE and r["integrity"] == "ok" for r in body)
    # formula injection neutralised: every cell that would start a formula is prefixed
    assert body[0]["user"] == '\'=HYPERLINK("http://evil","x")'
    assert body[0]["target"] == "'+1+2"
    assert body[0]["user_agent"] == "'@SUM(A1)"
    assert body[1]["user"] == "'-2+3"
    assert body[1]["target"] == "'@cmd"
    assert json.loads(body[1]["details"]) == {"note": "=1+1"}
    assert body[2]["target"] == "plain, with comma" and body[2]["user_agent"] == 'say "hi"'
    assert body[2]["success"] == "true"
    for cell in (c for r in body for c in r.values()):
        assert not cell or cell[0] not in "=+-@\t\r"

    # the export is itself audited: who, filters, row count
    exports = await _wait_for(client, keys["reader"], action="audit.export")
    assert len(exports) == 1
    x = exports[0]
    assert x["user"] == "test-reader"
    assert x["details"]["rows"] == 3
    assert x["details"]["format"] == "csv"
    assert x["details"]["filters"]["user"].split(",")[0] == "-2+3"
    assert "bob" in x["details"]["filters"]["user"]


async def test_export_csv_without_bom(client, keys, service):
    assert (await post_events(client, keys["writer"], [ev(0, user="ünï"), ev(1)])).status == 201
    for bom, starts in (("false", False), ("0", False), ("true", True), ("1", True)):
        resp = await client.get("/api/v1/audit-log/export.csv", headers=bearer(keys["reader"]), params={"bom": bom})
        raw = await resp.read()
        assert resp.status == 200 and raw.startswith(b"\xef\xbb\xbf") is starts, bom
        if not starts:  # a plain DictReader over the bytes as UTF-8 sees the first column's name
            got = list(csv.DictReader(io.StringIO(raw.decode("utf-8"), newline="")))
            assert got[0].keys() == set(SPEC_CSV_COLUMNS) and "ünï" in [g["user"] for g in got]
    resp = await client.get("/api/v1/audit-log/export.csv", headers=bearer(keys["reader"]), params={"bom": "no"})
    await assert_error(resp, 400, "bom must be true or false")


async def test_export_csv_all_pages_and_order(client, keys, service):
    # an export is the whole filtered range, not one page of it
    assert (await post_events(client, keys["writer"], [ev(i) for i in range(1500)])).status == 201
    resp = await client.get("/api/v1/audit-log/export.csv", params={"order": "desc"}, headers=bearer(keys["admin"]))
    rows = list(csv.reader(io.StringIO((await resp.text())[1:], newline="")))
    assert [int(r[2]) for r in rows[1:]] == list(range(1500 + KEY_ENTRIES, 0, -1))
    exports = await _wait_for(client, keys["admin"], action="audit.export")
    assert exports[0]["details"]["rows"] == 1500 + KEY_ENTRIES and exports[0]["user"] == "test-admin"


# ----------------------------------------------------------------------------- API keys


async def test_api_keys_create_list_revoke(client, keys, service):
    admin = bearer(keys["admin"])
    resp = await client.post("/api/v1/api-keys", json={"name": "soc-dashboard", "role": "reader"}, headers=admin)
    assert resp.status == 201, await resp.text()
    created = await resp.json()
    assert set(created) == {"id", "name", "role", "created", "revoked", "suspended", "key"}
    assert created["name"] == "soc-dashboard" and created["role"] == "reader"
    assert created["revoked"] is None
    token = created["key"]
    assert token.startswith(f"alk_{created['id']}_")

    # the new key works, with its role
    assert (await client.get("/api/v1/audit-log", headers=bearer(token))).status == 200
    assert (await post_events(client, token, [ev()])).status == 403

    # list: every key, never a key or a hash
    resp = await client.get("/api/v1/api-keys", headers=admin)
    assert resp.status == 200
    text = await resp.text()
    listed = json.loads(text)["keys"]
    assert created["id"] in {k["id"] for k in listed}
    assert all(set(k) == {"id", "name", "role", "created", "revoked", "suspended"} for k in listed)
    secret = token.split("_")[2]
    assert secret not in text and token not in text
    for rec in service.keys.list():
        assert rec.secret_hmac not in text
    for t in keys.values():
        assert t.split("_")[2] not in text

    # revoke: 200, then the key is refused
    resp = await client.delete(f"/api/v1/api-keys/{created['id']}", headers=admin)
    assert resp.status == 200
    assert (await resp.json())["revoked"] is not None
    await assert_error(await client.get("/api/v1/audit-log", headers=bearer(token)), 401)
    listed = (await (await client.get("/api/v1/api-keys", headers=admin)).json())["keys"]
    assert [k["revoked"] for k in listed if k["id"] == created["id"]][0] is not None

    # both changes are audited, naming the key by id, never by its secret
    made = (await query(client, keys["admin"], action="audit.api_key_create", target="soc-dashboard"))["events"]
    gone = (await query(client, keys["admin"], action="audit.api_key_revoke", target="soc-dashboard"))["events"]
    assert len(made) == 1 and len(gone) == 1
    for e in made + gone:
        assert e["user"] == "test-admin" and e["target"] == "soc-dashboard"
        assert e["details"]["key_id"] == created["id"] and e["details"]["role"] == "reader"
        assert secret not in json.dumps(e)
    # the create entry holds what authentication needs: a keyed hash, not a plain one
    import hashlib

    mac = made[0]["details"]["secret_hmac"]
    assert re.fullmatch(r"[0-9a-f]{64}", mac)
    assert mac not in {hashlib.sha256(x.encode()).hexdigest() for x in (secret, token)}


async def test_api_keys_bad_requests(client, keys, service):
    admin = bearer(keys["admin"])
    n_keys = len(service.keys.list())
    for body, needle in (
        ({"name": "x", "role": "root"}, "role"),
        ({"role": "reader"}, "name"),
        ({"name": "", "role": "reader"}, "name"),
        ({"name": "x", "role": "reader", "key": "alk_mine_1"}, "body"),
        ([1, 2], "body"),
    ):
        await assert_error(await client.post("/api/v1/api-keys", json=body, headers=admin), 400, needle)
    await assert_error(await client.post("/api/v1/api-keys", data=b"{nope", headers=admin), 400, "JSON")
    # names that cannot be logged as they are: refused before any key exists (a lone
    # surrogate used to create the key, then fail its audit entry with a 500)
    for raw in (
        b'{"name": "a\\ud800b", "role": "reader"}',
        b'{"name": "a\\u0085b", "role": "reader"}',
        b'{"name": "line\\nbreak", "role": "reader"}',
    ):
        await assert_error(await client.post("/api/v1/api-keys", data=raw, headers=admin), 400, "name")
    assert len(service.keys.list()) == n_keys
    assert head_seq(service) == KEY_ENTRIES
    await assert_error(await client.delete("/api/v1/api-keys/000000000000", headers=admin), 404, "000000000000")
    assert len((await query(client, keys["admin"], action="audit.*"))["events"]) == KEY_ENTRIES


# ----------------------------------------------------------------------------- ops


async def test_healthz(client):
    resp = await client.get("/healthz")
    assert resp.status == 200
    assert await resp.json() == {"status": "ok", "node": NODE}


def _metrics(text: str) -> dict[str, float]:
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


async def test_metrics(client, keys, service):
    for n in (3, 4):
        assert (await post_events(client, keys["writer"], [ev(i) for i in range(n)])).status == 201
    resp = await client.get("/metrics")
    assert resp.status == 200
    assert resp.content_type == "text/plain"
    text = await resp.text()
    m = _metrics(text)
    assert "# TYPE auditlog_appended_entries_total counter" in text
    assert m["auditlog_appended_entries_total"] == 7 + KEY_ENTRIES
    assert "# TYPE auditlog_fsync_seconds histogram" in text
    assert m['auditlog_fsync_seconds_bucket{le="+Inf"}'] == m["auditlog_fsync_seconds_count"] >= 2
    buckets = [v for k, v in m.items() if k.startswith("auditlog_fsync_seconds_bucket")]
    assert buckets == sorted(buckets)  # cumulative
    assert "# TYPE auditlog_write_queue_events gauge" in text
    assert m["auditlog_write_queue_events"] == 0
    assert m["auditlog_head_seq"] == 7 + KEY_ENTRIES
    assert m['auditlog_http_requests_total{route="/api/v1/events",status="201"}'] == 2


async def test_metrics_are_exact_and_parse_with_prometheus_client(client, keys, service):
    from prometheus_client.parser import text_string_to_metric_families

    assert (await post_events(client, keys["writer"], [ev(i) for i in range(3)])).status == 201
    # what :g printed wrongly: a counter past a million, a Unix timestamp with a fraction
    service.metrics.inc("auditlog_appended_entries_total", 12_345_678)
    service.metrics.gauge("auditlog_test_timestamp_seconds", "a timestamp", lambda: 1_796_450_123.456789)
    text = await (await client.get("/metrics")).text()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    samples = {s.name: s for f in families.values() for s in f.samples if not s.labels}
    assert samples["auditlog_appended_entries_total"].value == 12_345_678 + 3 + KEY_ENTRIES
    assert f"auditlog_appended_entries_total {12_345_678 + 3 + KEY_ENTRIES}\n" in text
    assert samples["auditlog_test_timestamp_seconds"].value == 1_796_450_123.456789
    assert samples["auditlog_fsync_seconds_sum"].value > 0
    # every counter's samples end in _total, every family has a type and help
    for f in families.values():
        assert f.type in ("counter", "gauge", "histogram"), f.name
        assert f.documentation, f.name
        if f.type == "counter":
            assert all(s.name.endswith("_total") for s in f.samples), f.name


def test_metric_numbers_are_exact():
    from auditlog.query.http.metrics import number

    assert number(1_234_567) == "1234567" and number(1_234_567.0) == "1234567"
    assert number(1_796_450_123.456789) == "1796450123.456789"
    assert float(number(0.1 + 0.2)) == 0.1 + 0.2
    assert number(float("inf")) == "+Inf" and number(float("nan")) == "NaN" and number(True) == "1"
    assert number(2**70) == str(2**70)


async def test_verify_shape_like_cli(client, keys, service):
    from helpers_engine import invoke_cli

    assert (await post_events(client, keys["writer"], [ev(i) for i in range(20)])).status == 201
    resp = await client.get("/api/v1/verify", headers=bearer(keys["reader"]))
    assert resp.status == 200
    body = await resp.json()
    assert body["ok"] is True and body["violations"] == [] and body["entries_checked"] == 20 + KEY_ENTRIES
    assert body["nodes"] == {NODE: {"status": "ok", "ok": True}}
    r = invoke_cli(service.data_dir.root, "verify", "--json")
    cli = json.loads(r.stdout)
    assert {k: body[k] for k in cli} == cli  # the CLI's keys, same values
    await assert_error(
        await client.get("/api/v1/verify", params={"scope": "galaxy"}, headers=bearer(keys["reader"])), 400, "scope"
    )


async def test_verify_reports_tampering(make_service, make_client):
    from helpers_http import make_keys

    svc = make_service(StoreSettings(fsync="none", segment_max_bytes=4096), name="tamper")
    k = make_keys(svc)
    client = await make_client(svc)
    rng = random.Random(7)  # padding that does not compress away, so the log spans segments
    for _ in range(16):
        batch = [ev(j, details={"pad": rng.randbytes(150).hex()}) for j in range(5)]
        assert (await post_events(client, k["writer"], batch)).status == 201
    segs = sorted(svc.data_dir.segments.glob("*.seg"))
    assert len(segs) >= 3
    data = bytearray(segs[0].read_bytes())
    data[len(data) // 2] ^= 0x01  # inside a frame's compressed payload
    segs[0].write_bytes(bytes(data))
    body = await (await client.get("/api/v1/verify", headers=bearer(k["reader"]))).json()
    assert body["ok"] is False and body["violations"]
    v = body["violations"][0]
    assert set(v) == {"kind", "node", "seq_from", "seq_to", "segment", "detail"}
    assert v["node"] == NODE and v["segment"] == segs[0].name
    assert body["nodes"][NODE]["ok"] is False
    assert verify_node(svc.data_dir, svc.node).ok is False
    page = await query(client, k["reader"])
    assert page["integrity_violations"] >= 1
    assert any(e["integrity"] == "violation" for e in page["events"])


async def test_cluster(client, keys, service):
    body = await (await client.get("/api/v1/cluster", headers=bearer(keys["reader"]))).json()
    assert body["node"] == NODE
    (me,) = body["nodes"]
    assert me["node"] == NODE and me["status"] == "ok"
    assert me["head_seq"] == KEY_ENTRIES
    assert me["retention_days"] == 365 and me["retention_last_run"] is None

    assert (await post_events(client, keys["writer"], [ev(i) for i in range(5)])).status == 201
    last = (await query(client, keys["reader"], order="desc", limit="1"))["events"][0]
    await service.run(service.run_retention)
    (me,) = (await (await client.get("/api/v1/cluster", headers=bearer(keys["admin"]))).json())["nodes"]
    assert me["head_seq"] == 5 + KEY_ENTRIES and me["last_ts"] == last["ts"]
    run = me["retention_last_run"]
    assert run is not None and run["ran_at"] and run["retention_days"] == 365
    assert run["dropped_entries"] == 0


@pytest.mark.parametrize("days,shown", [(None, "forever"), (400, 400)])
async def test_cluster_retention_setting(make_service, make_client, days, shown):
    from helpers_http import make_keys

    svc = make_service(StoreSettings(fsync="none", retention_days=days), name=f"ret-{days}")
    k = make_keys(svc)
    client = await make_client(svc)
    body = await (await client.get("/api/v1/cluster", headers=bearer(k["reader"]))).json()
    assert body["nodes"][0]["retention_days"] == shown


async def test_openapi_describes_every_route(client):
    resp = await client.get("/api/v1/openapi.json")
    assert resp.status == 200
    doc = await resp.json()
    assert doc["openapi"].startswith("3.")
    assert doc["info"]["title"] and doc["info"]["version"]
    assert doc["components"]["securitySchemes"]["bearer"] == {"type": "http", "scheme": "bearer"}
    served = set()
    for route in client.app.router.routes():
        path = route.resource.canonical if route.resource else None
        # "/" and "/ui/*" are the admin UI's static files, not API operations
        if route.method in ("HEAD", "*") or path in (None, "/", "/ui") or route.handler.__name__ == "not_allowed":
            continue
        served.add((path, route.method.lower()))
    documented = {(p, m) for p, ops in doc["paths"].items() for m in ops}
    assert served, "no routes found"
    assert served <= documented, served - documented
    assert documented <= served, documented - served
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            assert op.get("summary") and op.get("responses"), (path, method)
            if path not in ("/healthz", "/metrics", "/api/v1/openapi.json"):
                assert op.get("security") == [{"bearer": []}], (path, method)
                assert "401" in op["responses"]
                if path != "/api/v1/whoami":  # any valid key may ask who it is
                    assert "403" in op["responses"]


# ----------------------------------------------------------------------------- auth.api_key_used


async def test_api_key_use_audited_once_per_interval_with_count(make_service, make_client):
    from helpers_http import make_keys

    svc = make_service(settings=ServiceSettings(key_use_interval=3600.0))
    k = make_keys(svc)
    client = await make_client(svc)
    reader_id = k["reader"].split("_")[1]
    writer_id = k["writer"].split("_")[1]
    for _ in range(5):
        assert (await client.get("/api/v1/audit-log", headers=bearer(k["reader"]))).status == 200
    for i in range(3):
        assert (await post_events(client, k["writer"], [ev(i)])).status == 201
    # a denied request still used the key (authenticated, then refused)
    assert (await client.get("/api/v1/audit-log", headers=bearer(k["writer"]))).status == 403
    # nothing is written per request: only the periodic flush writes
    assert head_seq(svc) == 3 + KEY_ENTRIES
    assert svc.flush_key_uses() == 2
    assert svc.flush_key_uses() == 0  # nothing new since

    used = (await query(client, k["admin"], action="auth.api_key_used"))["events"]
    by_key = {e["details"]["key_id"]: e for e in used}
    assert set(by_key) == {reader_id, writer_id} and len(used) == 2
    assert by_key[reader_id]["details"]["count"] == 5
    assert by_key[reader_id]["user"] == "test-reader" and by_key[reader_id]["details"]["role"] == "reader"
    assert by_key[writer_id]["details"]["count"] == 4
    assert by_key[reader_id]["ip"] == "127.0.0.1"

    # the next interval gets a new entry with its own count (the admin's query counted too)
    for _ in range(2):
        await client.get("/api/v1/cluster", headers=bearer(k["reader"]))
    assert svc.flush_key_uses() == 2
    used = (await query(client, k["admin"], action="auth.api_key_used", target=reader_id))["events"]
    assert [e["details"]["count"] for e in used] == [5, 2]

    # the key itself never reaches the log: not in the segment files, not in any output
    secrets_ = [t for t in k.values()] + [t.split("_")[2] for t in k.values()]
    blob = b"".join(p.read_bytes() for p in svc.data_dir.segments.iterdir() if p.is_file())
    r = await client.get("/api/v1/audit-log", params={"format": "ndjson"}, headers=bearer(k["admin"]))
    out = await r.text()
    csv_out = await (await client.get("/api/v1/audit-log/export.csv", headers=bearer(k["admin"]))).text()
    assert "auth.api_key_used" in out
    for s in secrets_:
        assert s.encode() not in blob, "an API key reached the segment files"
        assert s not in out and s not in csv_out
