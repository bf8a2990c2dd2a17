"""The four-eyes report: ``GET /api/v1/reports/four-eyes`` and ``auditlog report four-eyes``.

A ``config.dkim_rotate`` is ok only when a ``config.dkim_rotate_confirm`` with
``details.confirms = <its id>`` came from a different user.  Cases: confirmed
by another admin (ok), self-confirmed (not ok: same user), unconfirmed (not
ok), a confirmation of an id that does not exist (an orphan), a confirmation
after the range's ``to`` (still counts), a rotation after ``to`` with its own
confirmation (neither in the report nor an orphan), custom pairs, and the
errors (malformed pair: 400 / exit 2).  The CLI exits 1 unless all is ok.
"""

from __future__ import annotations

import json
from pathlib import Path

from helpers_http import bearer, post_events, query_all, run_cli

ROTATE, CONFIRM = "config.dkim_rotate", "config.dkim_rotate_confirm"


def rotate(user: str, domain: str = "example.com") -> dict:
    return {
        "user": user,
        "action": ROTATE,
        "target": f"selector2026._domainkey.{domain}",
        "domain": domain,
        "details": {"old": "selector2025", "new": "selector2026"},
    }


def confirm(user: str, rid: str) -> dict:
    return {"user": user, "action": CONFIRM, "target": rid, "details": {"confirms": rid}}


class Scenario:
    """Appends one event at a time (through ``append(event) -> id``) and remembers the ids."""

    def __init__(self, append):
        self.append = append

    async def build(self) -> dict:
        a = self.append
        ids = {}
        ids["ok"] = await a(rotate("alice", "a.example"))
        ids["ok_c"] = await a(confirm("bob", ids["ok"]))
        ids["self"] = await a(rotate("alice", "b.example"))
        ids["self_c"] = await a(confirm("alice", ids["self"]))
        ids["none"] = await a(rotate("carol", "c.example"))
        ids["both"] = await a(rotate("dave", "d.example"))
        ids["both_self"] = await a(confirm("dave", ids["both"]))
        ids["both_c"] = await a(confirm("erin", ids["both"]))
        ids["orphan"] = await a(confirm("bob", "node-a:99999" if "node-a" in ids["ok"] else "gw1:99999"))
        ids["late"] = await a(rotate("frank", "e.example"))  # its confirmation comes after `to`
        ids["marker"] = await a({"user": "system", "action": "auth.login"})  # `to` = this entry's ts
        ids["late_c"] = await a(confirm("grace", ids["late"]))
        ids["after"] = await a(rotate("heidi", "f.example"))  # after `to`: not in the range
        ids["after_c"] = await a(confirm("ivan", ids["after"]))
        return ids


def check_full_report(rep: dict, ids: dict) -> None:
    """No range: every rotation is in, the orphan spoils the whole report."""
    assert rep["rules"] == [{"action": ROTATE, "confirm": CONFIRM}]
    rot = {r["id"]: r for r in rep["rotations"]}
    assert set(rot) == {ids[k] for k in ("ok", "self", "none", "both", "late", "after")}
    for r in rot.values():
        assert set(r) >= {"id", "user", "target", "ts", "confirmed_by", "ok"}
        assert r["action"] == ROTATE and r["ts"].endswith("Z")
    ok = rot[ids["ok"]]
    assert ok["ok"] is True and ok["confirmed_by"] == ["bob"] and ok["user"] == "alice" and ok["problem"] is None
    assert ok["target"] == "selector2026._domainkey.a.example" and ok["confirmations"] == [ids["ok_c"]]
    selfc = rot[ids["self"]]
    assert selfc["ok"] is False and selfc["confirmed_by"] == [] and selfc["self_confirmations"] == [ids["self_c"]]
    assert "same user" in selfc["problem"]
    none = rot[ids["none"]]
    assert none["ok"] is False and none["confirmed_by"] == [] and none["problem"] == "unconfirmed"
    both = rot[ids["both"]]
    assert both["ok"] is True and both["confirmed_by"] == ["erin"] and both["self_confirmations"] == [ids["both_self"]]
    assert rot[ids["late"]]["ok"] is True and rot[ids["late"]]["confirmed_by"] == ["grace"]
    assert rot[ids["after"]]["ok"] is True
    orphans = rep["orphan_confirmations"]
    assert [o["id"] for o in orphans] == [ids["orphan"]]
    assert orphans[0]["confirms"].endswith(":99999") and orphans[0]["user"] == "bob" and orphans[0]["problem"]
    assert rep["ok"] is False


def check_ranged_report(rep: dict, ids: dict) -> None:
    """to = the marker's ts: "late" is in (its confirmation after `to` counts), "after" is out
    and its confirmation is no orphan."""
    rot = {r["id"]: r for r in rep["rotations"]}
    assert set(rot) == {ids[k] for k in ("ok", "self", "none", "both", "late")}
    assert rot[ids["late"]]["ok"] is True and rot[ids["late"]]["confirmed_by"] == ["grace"]
    assert [o["id"] for o in rep["orphan_confirmations"]] == [ids["orphan"]]
    assert rep["ok"] is False


def check_all_ok_report(rep: dict, ids: dict) -> None:
    """from = "late"'s ts: only good rotations (late, after), no orphan -> ok."""
    assert {r["id"] for r in rep["rotations"]} == {ids["late"], ids["after"]}
    assert all(r["ok"] for r in rep["rotations"]) and rep["orphan_confirmations"] == []
    assert rep["ok"] is True


# -- the API ------------------------------------------------------------------------------------


async def test_four_eyes_api(client, keys):
    async def append(event):
        resp = await post_events(client, keys["writer"], [event])
        assert resp.status == 201, await resp.text()
        return (await resp.json())["first_id"]

    ids = await Scenario(append).build()
    ts = {e["id"]: e["ts"] for e in await query_all(client, keys["reader"])}

    async def report(**params):
        resp = await client.get("/api/v1/reports/four-eyes", params=params, headers=bearer(keys["reader"]))
        assert resp.status == 200, await resp.text()
        return await resp.json()

    rep = await report()
    check_full_report(rep, ids)
    assert rep["nodes"] == {"node-a": {"status": "ok"}}
    check_ranged_report(await report(to=ts[ids["marker"]]), ids)
    check_all_ok_report(await report(**{"from": ts[ids["late"]]}), ids)

    # a custom pair: config.filter_delete confirmed by custom.filter_delete_confirm
    d1 = await append({"user": "alice", "action": "config.filter_delete", "target": "filter-7"})
    await append({"user": "bob", "action": "custom.filter_delete_confirm", "details": {"confirms": d1}})
    d2 = await append({"user": "alice", "action": "config.filter_delete", "target": "filter-8"})
    rep = await report(pair="config.filter_delete:custom.filter_delete_confirm")
    assert rep["rules"] == [{"action": "config.filter_delete", "confirm": "custom.filter_delete_confirm"}]
    rot = {r["id"]: r for r in rep["rotations"]}
    assert set(rot) == {d1, d2} and rot[d1]["ok"] and not rot[d2]["ok"] and rep["ok"] is False
    assert all(r["action"] == "config.filter_delete" for r in rep["rotations"])
    # two pairs at once
    rep = await report(pair=["config.filter_delete:custom.filter_delete_confirm", f"{ROTATE}:{CONFIRM}"])
    assert len(rep["rules"]) == 2 and len(rep["rotations"]) == 8

    # errors: malformed pairs and unknown parameters are 400s; a writer key may not read
    for bad in (
        "config.filter_delete",
        "config.filter_delete:",
        ":custom.x",
        "a.b:a.b",
        "Bad Action:custom.x",
        "config.filter_delete:custom.x:more",
    ):
        resp = await client.get("/api/v1/reports/four-eyes", params={"pair": bad}, headers=bearer(keys["reader"]))
        assert resp.status == 400, (bad, resp.status)
        body = await resp.json()
        assert "pair" in body["error"]["message"]
    resp = await client.get("/api/v1/reports/four-eyes", params={"user": "x"}, headers=bearer(keys["reader"]))
    assert resp.status == 400
    resp = await client.get(
        "/api/v1/reports/four-eyes", params={"from": "yesterday-ish"}, headers=bearer(keys["reader"])
    )
    assert resp.status == 400
    resp = await client.get("/api/v1/reports/four-eyes", headers=bearer(keys["writer"]))
    assert resp.status == 403
    resp = await client.get("/api/v1/reports/four-eyes")
    assert resp.status == 401


async def test_four_eyes_api_empty_log_is_ok(client, keys):
    resp = await client.get("/api/v1/reports/four-eyes", headers=bearer(keys["reader"]))
    assert resp.status == 200
    rep = await resp.json()
    assert rep["rotations"] == [] and rep["orphan_confirmations"] == [] and rep["ok"] is True


# -- the CLI ------------------------------------------------------------------------------------


def test_four_eyes_cli(tmp_path: Path):
    import asyncio

    data = tmp_path / "data"
    assert run_cli(data, "init", "--node-id", "gw1").returncode == 0

    async def append(event):
        args = ["append", "--user", event["user"], "--action", event["action"]]
        if event.get("target"):
            args += ["--target", event["target"]]
        for k, v in (event.get("details") or {}).items():
            args += ["--detail", f"{k}={v}"]
        r = run_cli(data, *args)
        assert r.returncode == 0, r.stderr
        return r.stdout.strip()

    ids = asyncio.run(Scenario(append).build())
    q = run_cli(data, "query", "--format", "ndjson")
    ts = {e["id"]: e["ts"] for e in map(json.loads, q.stdout.splitlines())}

    def report(*args):
        return run_cli(data, "report", "four-eyes", *args)

    r = report("--json")
    assert r.returncode == 1, r.stderr
    check_full_report(json.loads(r.stdout), ids)
    r = report("--json", "--to", ts[ids["marker"]])
    assert r.returncode == 1
    check_ranged_report(json.loads(r.stdout), ids)
    r = report("--json", "--from", ts[ids["late"]])
    assert r.returncode == 0, (r.stdout, r.stderr)
    check_all_ok_report(json.loads(r.stdout), ids)

    # the text form: one line per rotation and orphan, with the verdict
    r = report()
    assert r.returncode == 1
    lines = r.stdout.splitlines()
    line = lambda i: next(x for x in lines if f" {ids[i]} " in x)  # noqa: E731
    assert line("ok").startswith("ok ") and "confirmed by: bob" in line("ok")
    assert line("self").startswith("FAIL") and "same user" in line("self")
    assert line("none").startswith("FAIL") and "unconfirmed" in line("none")
    assert line("orphan").startswith("FAIL") and "gw1:99999" in line("orphan")

    # custom pair, all confirmed -> 0; then one unconfirmed -> 1
    d1 = asyncio.run(append({"user": "alice", "action": "config.filter_delete", "target": "filter-7"}))
    asyncio.run(append({"user": "bob", "action": "custom.filter_delete_confirm", "details": {"confirms": d1}}))
    r = report("--json", "--pair", "config.filter_delete:custom.filter_delete_confirm")
    assert r.returncode == 0, r.stdout
    rep = json.loads(r.stdout)
    assert [x["id"] for x in rep["rotations"]] == [d1] and rep["ok"] is True
    asyncio.run(append({"user": "alice", "action": "config.filter_delete", "target": "filter-8"}))
    r = report("--json", "--pair", "config.filter_delete:custom.filter_delete_confirm")
    assert r.returncode == 1

    # malformed pair: one error line, exit 2, nothing on stdout
    for bad in ("config.filter_delete", "a.b:a.b", "Bad:custom.x"):
        r = report("--pair", bad)
        assert r.returncode == 2, (bad, r.returncode, r.stderr)
        assert r.stdout == "" and r.stderr.startswith("auditlog: error:") and "pair" in r.stderr
        assert "Traceback" not in r.stderr

    # an empty range: nothing to check, ok
    r = report("--json", "--from", "2001-01-01", "--to", "2001-01-02")
    assert r.returncode == 0 and json.loads(r.stdout)["rotations"] == []
