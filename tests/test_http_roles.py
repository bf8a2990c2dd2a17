"""The role matrix (SPEC section 7): every credential against every route.

Credentials: none, a malformed Authorization header, a key that does not exist,
a revoked key, and a valid key of each role.  Missing/invalid -> 401 (with
``WWW-Authenticate``), wrong role -> 403, otherwise the route's 2xx; a refused
request changes nothing.  PUT/PATCH/DELETE/POST on the log -> 405, whoever asks.
"""

from __future__ import annotations

import pytest
from helpers_http import KEY_ENTRIES, assert_error, bearer, ev, head_seq

CREDENTIALS = ["none", "malformed", "malformed-empty", "bad-key", "garbage", "revoked", "writer", "reader", "admin"]
ROLES = {"writer", "reader", "admin"}


def headers_for(cred: str, keys: dict[str, str]) -> dict[str, str]:
    if cred == "none":
        return {}
    if cred == "malformed":
        return {"Authorization": f"Basic {keys['admin']}"}  # a real key, wrong scheme
    if cred == "malformed-empty":
        return {"Authorization": "Bearer"}
    if cred == "bad-key":  # well-formed, right id, wrong secret
        kid = keys["admin"].split("_")[1]
        return bearer(f"alk_{kid}_{'a' * 52}")
    if cred == "garbage":
        return bearer("not-a-key")
    return bearer(keys[cred])


# (name, method, path, allowed roles, expected 2xx)
ROUTES = [
    ("events", "POST", "/api/v1/events", {"writer"}, 201),
    ("audit-log", "GET", "/api/v1/audit-log", {"reader", "admin"}, 200),
    ("audit-log-ndjson", "GET", "/api/v1/audit-log?format=ndjson", {"reader", "admin"}, 200),
    ("export-csv", "GET", "/api/v1/audit-log/export.csv", {"reader", "admin"}, 200),
    ("export-pdf", "GET", "/api/v1/audit-log/export.pdf", {"reader", "admin"}, 200),
    ("four-eyes", "GET", "/api/v1/reports/four-eyes", {"reader", "admin"}, 200),
    ("export-pdf", "GET", "/api/v1/audit-log/export.pdf", {"reader", "admin"}, 200),
    ("four-eyes", "GET", "/api/v1/reports/four-eyes", {"reader", "admin"}, 200),
    ("verify", "GET", "/api/v1/verify", {"reader", "admin"}, 200),
    ("cluster", "GET", "/api/v1/cluster", {"reader", "admin"}, 200),
    ("checkpoints", "GET", "/api/v1/checkpoints", {"reader", "admin"}, 200),
    ("export-bundle", "GET", "/api/v1/audit-log/export.bundle", {"reader", "admin"}, 200),
    ("count", "GET", "/api/v1/audit-log/count", {"reader", "admin"}, 200),
    ("histogram", "GET", "/api/v1/audit-log/histogram?interval=1h", {"reader", "admin"}, 200),
    ("checkpoint-make", "POST", "/api/v1/checkpoints", {"admin"}, 201),
    ("proof-inclusion", "GET", "/api/v1/proofs/inclusion?seq=1&size=1", {"reader", "admin"}, 200),
    ("proof-consistency", "GET", "/api/v1/proofs/consistency?old=1&new=1", {"reader", "admin"}, 200),
    ("keys-list", "GET", "/api/v1/api-keys", {"admin"}, 200),
    ("keys-create", "POST", "/api/v1/api-keys", {"admin"}, 201),
    ("keys-revoke", "DELETE", "/api/v1/api-keys/{victim}", {"admin"}, 200),
    ("holds-list", "GET", "/api/v1/holds", {"reader", "admin"}, 200),
    ("holds-set", "POST", "/api/v1/holds", {"admin"}, 201),
    ("holds-release", "DELETE", "/api/v1/holds/{hold}", {"admin"}, 200),
    ("healthz", "GET", "/healthz", None, 200),
    ("metrics", "GET", "/metrics", None, 200),
    ("openapi", "GET", "/api/v1/openapi.json", None, 200),
    ("whoami", "GET", "/api/v1/whoami", {"writer", "reader", "admin"}, 200),
    ("ui-root", "GET", "/", None, 200),
    ("ui-static", "GET", "/ui/app.js", None, 200),
    ("ui", "GET", "/", None, 200),
]


def expected_status(cred: str, allowed: set[str] | None, ok: int) -> int:
    if allowed is None:  # public
        return ok
    if cred not in ROLES:
        return 401
    return ok if cred in allowed else 403


@pytest.mark.parametrize("cred", CREDENTIALS)
@pytest.mark.parametrize("name,method,path,allowed,ok", ROUTES, ids=[r[0] for r in ROUTES])
async def test_role_matrix(client, keys, service, cred, name, method, path, allowed, ok):
    victim, _ = service.keys.create("victim", "reader")
    hold = service.set_hold(0, 10**15, "role matrix", "test")
    path = path.format(victim=victim.id, hold=hold.id)
    kw = {}
    if name == "events":
        kw["json"] = [ev(1)]
    elif name == "keys-create":
        kw["json"] = {"name": "made-by-test", "role": "reader"}
    elif name == "holds-set":
        kw["json"] = {"from": "2026-01-01", "to": "2026-02-01", "reason": "case 1"}
    elif name.startswith("proof-"):
        service.record_tree_head()  # a checkpoint, so the tree has a size to prove in
    head = head_seq(service)
    n_keys = len(service.keys.list())

    resp = await client.request(method, path, headers=headers_for(cred, keys), **kw)
    want = expected_status(cred, allowed, ok)
    if want >= 400:
        err = await assert_error(resp, want)
        if want == 401:
            assert resp.headers["WWW-Authenticate"].startswith("Bearer")
        else:
            assert cred in err["message"]  # names the role that was refused
        # a refused request changes nothing
        assert head_seq(service) == head
        assert len(service.keys.list()) == n_keys
        assert all(k.revoked is None for k in service.keys.list() if k.id == victim.id)
        return
    assert resp.status == want, (resp.status, await resp.text())
    await resp.read()
    if name == "events":
        assert head_seq(service) == head + 1
    elif name == "keys-create":
        assert len(service.keys.list()) == n_keys + 1
    elif name == "keys-revoke":
        assert [k.revoked for k in service.keys.list() if k.id == victim.id][0] is not None


@pytest.mark.parametrize("cred", ["none", "writer", "reader", "admin"])
@pytest.mark.parametrize("path", ["/api/v1/audit-log", "/api/v1/audit-log/export.csv", "/api/v1/audit-log/node-a:1"])
@pytest.mark.parametrize("method", ["PUT", "PATCH", "DELETE", "POST"])
async def test_log_has_no_update_or_delete(client, keys, service, cred, path, method):
    assert (await client.post("/api/v1/events", json=[ev(1)], headers=bearer(keys["writer"]))).status == 201
    resp = await client.request(method, path, json=[ev(2)], headers=headers_for(cred, keys))
    await assert_error(resp, 405, method, "append-only")
    assert resp.headers["Allow"] == "GET"
    assert head_seq(service) == KEY_ENTRIES + 1
    page = await (await client.get("/api/v1/audit-log", headers=bearer(keys["reader"]))).json()
    assert [e["details"]["n"] for e in page["events"][KEY_ENTRIES:]] == [1]


@pytest.mark.parametrize("method", ["PUT", "PATCH", "DELETE", "GET"])
async def test_events_route_only_appends(client, keys, method):
    resp = await client.request(method, "/api/v1/events", headers=bearer(keys["writer"]))
    err = await assert_error(resp, 405, method)
    assert resp.headers["Allow"] == "POST"
    assert "POST" in err["message"]


async def test_unknown_path_is_json_404(client, keys):
    await assert_error(
        await client.get("/api/v1/nothing-here", headers=bearer(keys["admin"])), 404, "/api/v1/nothing-here"
    )


async def test_matrix_covers_every_route(client):
    """A route added to the app without a row above would escape the role checks."""
    served = {
        (r.method, r.resource.canonical)
        for r in client.app.router.routes()
        if r.method != "HEAD" and r.handler.__name__ != "not_allowed"
    }
    covered = {
        (m, p.split("?")[0].replace("{victim}", "{key_id}").replace("{hold}", "{hold_id}").replace("/ui/app.js", "/ui"))
        for _, m, p, _, _ in ROUTES
    }
    assert served <= covered, served - covered
