"""Elastic Common Schema documents: ``GET /api/v1/audit-log?format=ecs`` and ``auditlog export ecs``.

Every document is checked against the ECS 8.x rules that Elastic's own
tooling enforces: field types (arrays where ECS has arrays, RFC 3339 dates,
IPs, longs), the allowed values of the categorization fields and the
"expected event types" of each category, and the mapping of the audit
taxonomy onto them (auth -> authentication, config -> configuration,
quarantine -> email, ...), with email.* for quarantine events, user/source/
user_agent, observer/host = node and event.hash = the entry's signature.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import re

from helpers_http import bearer, post_events, query_all, run_cli

from auditlog.engine.datadir import DataDir
from auditlog.engine.entry import EntryDraft
from auditlog.engine.settings import StoreSettings
from auditlog.engine.writer import LogWriter
from auditlog.ingest.taxonomy import NODE_ACTIONS
from auditlog.query.cluster.fanout import Cluster
from auditlog.query.cluster.settings import ClusterSettings, PeerConfig

# ECS 8.x allowed values (docs/reference/ecs-allowed-values-event-*.md in elastic/ecs)
KINDS = {"alert", "asset", "enrichment", "event", "metric", "state", "pipeline_error", "signal"}
OUTCOMES = {"failure", "success", "unknown"}
EXPECTED_TYPES = {
    "api": {"access", "admin", "allowed", "change", "creation", "deletion", "denied", "end", "info", "start", "user"},
    "authentication": {"start", "end", "info"},
    "configuration": {"access", "change", "creation", "deletion", "info"},
    "database": {"access", "change", "info", "error"},
    "driver": {"change", "end", "info", "start"},
    "email": {"info"},
    "file": {"access", "change", "creation", "deletion", "info"},
    "host": {"access", "change", "end", "info", "start"},
    "iam": {"admin", "change", "creation", "deletion", "group", "info", "user"},
    "intrusion_detection": {"allowed", "denied", "info"},
    "library": {"start"},
    "malware": {"info"},
    "network": {"access", "allowed", "connection", "denied", "end", "info", "protocol", "start"},
    "package": {"access", "change", "deletion", "info", "installation", "start"},
    "process": {"access", "change", "end", "info", "start"},
    "registry": {"access", "change", "creation", "deletion"},
    "session": {"start", "end", "info"},
    "threat": {"indicator"},
    "vulnerability": {"info"},
    "web": {"access", "error", "info"},
}
RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$")

# action -> (category, a type it must carry)
MAPPING = {
    "auth.login": ("authentication", "start"),
    "auth.logout": ("authentication", "end"),
    "auth.login_failed": ("authentication", "start"),
    "config.filter_update": ("configuration", "change"),
    "config.domain_add": ("configuration", "creation"),
    "config.filter_delete": ("configuration", "deletion"),
    "quarantine.release": ("email", "info"),
    "quarantine.discard": ("email", "info"),
    "user.create": ("iam", "creation"),
    "user.role_change": ("iam", "change"),
    "security.brute_force_detected": ("intrusion_detection", "info"),
    "cluster.node_join": ("host", "start"),
    "backup.trigger": ("database", "info"),
    "licence.activate": ("configuration", "change"),
}

QUARANTINE = {
    "mail_id": "Q00012345",
    "subject": "Rechnung März – 請求書",
    "sender": "billing@partner.example",
    "recipient": "anna@example.com",
}


def events() -> list[dict]:
    """What clients send: every mapped action but the node's own (see ``node_join``)."""
    out = []
    for i, action in enumerate(MAPPING):
        if action in NODE_ACTIONS:
            continue
        e = {
            "user": f"admin{i % 3}",
            "action": action,
            "target": f"t-{i}",
            "ip": "2001:db8::17" if i % 2 else "192.0.2.10",
            "user_agent": "Mozilla/5.0 (X11) Gecko/20100101",
            "success": action != "auth.login_failed",
            "details": {"n": i},
        }
        if action.startswith("quarantine."):
            e["details"] = dict(QUARANTINE)
            e["domain"] = "example.com"
        out.append(e)
    # a quarantine release with several recipients and one with no client ip/user agent
    out.append(
        {
            "user": "system",
            "action": "quarantine.release",
            "target": "Q2",
            "details": {
                "mail_id": "Q2",
                "subject": "two",
                "sender": "a@b.example",
                "recipient": ["x@example.com", "y@example.com"],
            },
        }
    )
    return out


#: what the node itself records when a peer joins its configuration (query.cluster.fanout)
NODE_JOIN = EntryDraft("system", "cluster.node_join", "gw2", details={"node": "gw2", "via": "config"})


def get(d: dict, dotted: str):
    cur = d
    for part in dotted.split("."):
        if not isinstance(cur, dict) or part not in cur:
            return None
        cur = cur[part]
    return cur


def check_document(doc: dict, entry: dict) -> None:
    """One ECS document against the entry it came from (the JSON wire form)."""
    # @timestamp: RFC 3339, the entry's time
    ts = doc["@timestamp"]
    assert isinstance(ts, str) and RFC3339.match(ts), ts
    assert dt.datetime.fromisoformat(ts.replace("Z", "+00:00")) == dt.datetime.fromisoformat(
        entry["ts"].replace("Z", "+00:00")
    )
    assert isinstance(get(doc, "ecs.version"), str) and re.match(r"^8\.\d+\.\d+$", doc["ecs"]["version"])
    ev = doc["event"]
    assert ev["action"] == entry["action"]
    assert ev["id"] == entry["id"] and ev["sequence"] == entry["seq"] and type(ev["sequence"]) is int
    # categorization: arrays of allowed values, types expected for their category
    assert isinstance(ev["category"], list) and ev["category"], ev
    assert isinstance(ev["type"], list) and ev["type"], ev
    for c in ev["category"]:
        assert c in EXPECTED_TYPES, c
        assert set(ev["type"]) <= EXPECTED_TYPES[c], (entry["action"], c, ev["type"])
    assert ev["kind"] in KINDS and isinstance(ev["kind"], str)
    assert ev["outcome"] in OUTCOMES and ev["outcome"] == ("success" if entry["success"] else "failure")
    # integrity: event.hash is the chained signature
    assert ev["hash"] == entry["signature"] and re.fullmatch(r"[0-9a-f]{64}", ev["hash"])
    assert get(doc, "labels.integrity") == entry["integrity"] == "ok"
    assert all(isinstance(v, str) for v in doc["labels"].values())
    # who, from where, with what
    assert get(doc, "user.name") == entry["user"]
    if entry["ip"]:
        assert get(doc, "source.ip") == entry["ip"]
        ipaddress.ip_address(doc["source"]["ip"])
    else:
        assert get(doc, "source.ip") is None
    if entry["user_agent"]:
        assert get(doc, "user_agent.original") == entry["user_agent"]
    else:
        assert "user_agent" not in doc
    # where it was recorded
    assert get(doc, "observer.name") == entry["node"] == get(doc, "host.name")
    assert isinstance(get(doc, "observer.type"), str)
    if entry["action"].startswith("security."):
        assert ev["kind"] == "alert"
    else:
        assert ev["kind"] == "event"
    # the family mapping
    if entry["action"] in MAPPING:
        cat, typ = MAPPING[entry["action"]]
        assert ev["category"] == [cat], (entry["action"], ev["category"])
        assert typ in ev["type"], (entry["action"], ev["type"])
    # email.* for quarantine events, with ECS arrays for the addresses
    if entry["action"].startswith("quarantine."):
        d = entry["details"]
        email = doc["email"]
        assert email["subject"] == d["subject"] and email["local_id"] == d["mail_id"]
        # the quarantine id is no Message-ID: email.message_id only from details.message_id
        assert email.get("message_id") == d.get("message_id")
        assert email["from"]["address"] == [d["sender"]]
        rc = d["recipient"]
        assert email["to"]["address"] == (rc if isinstance(rc, list) else [rc])
        assert all(isinstance(a, str) for a in email["from"]["address"] + email["to"]["address"])
    else:
        assert "email" not in doc
    # nothing lost: target, domain and details as recorded
    assert get(doc, "auditlog.target") == entry["target"]
    assert get(doc, "auditlog.details") == entry["details"]
    json.dumps(doc, allow_nan=False)  # plain JSON, no NaN/Infinity


async def test_ecs_over_the_api(client, keys, service):
    sent = events()
    resp = await post_events(client, keys["writer"], sent)
    assert resp.status == 201, await resp.text()
    Cluster(service, ClusterSettings(peers=(PeerConfig("gw2", "https://127.0.0.1:9"),))).record_membership()
    wire = {e["id"]: e for e in await query_all(client, keys["reader"])}

    resp = await client.get("/api/v1/audit-log", params={"format": "ecs"}, headers=bearer(keys["reader"]))
    assert resp.status == 200
    assert resp.content_type == "application/x-ndjson"
    body = await resp.text()
    assert body.endswith("\n")
    docs = [json.loads(line) for line in body.splitlines()]
    assert [d["event"]["id"] for d in docs] == list(wire)  # every entry, in order, nothing else
    client_docs = [
        d
        for d in docs
        if d["user"]["name"] in {e["user"] for e in sent}
        and d["event"]["action"] not in NODE_ACTIONS
        and not d["event"]["action"].startswith("audit.api_key")
    ]  # the keys' own entries
    assert len(client_docs) == len(sent)
    for d in docs:
        check_document(d, wire[d["event"]["id"]])
    actions = {d["event"]["action"] for d in docs}
    assert set(MAPPING) <= actions

    # filters apply to the ECS stream as to JSON
    resp = await client.get(
        "/api/v1/audit-log", params={"format": "ecs", "action": "quarantine.*"}, headers=bearer(keys["reader"])
    )
    qdocs = [json.loads(line) for line in (await resp.text()).splitlines()]
    assert len(qdocs) == 3 and all(d["event"]["category"] == ["email"] for d in qdocs)
    multi = next(d for d in qdocs if d["event"]["id"] == next(i for i, e in wire.items() if e["target"] == "Q2"))
    assert multi["email"]["to"]["address"] == ["x@example.com", "y@example.com"]
    assert "source" not in multi and "user_agent" not in multi

    # a limit is honoured on the stream
    resp = await client.get("/api/v1/audit-log", params={"format": "ecs", "limit": "2"}, headers=bearer(keys["reader"]))
    assert len((await resp.text()).splitlines()) == 2

    # unknown format refused
    resp = await client.get("/api/v1/audit-log", params={"format": "ecs2"}, headers=bearer(keys["reader"]))
    assert resp.status == 400


def test_ecs_from_the_cli(tmp_path):
    data = tmp_path / "data"
    assert run_cli(data, "init", "--node-id", "gw-ecs").returncode == 0
    src = tmp_path / "events.ndjson"
    src.write_text("".join(json.dumps(e) + "\n" for e in events()))
    # the node's own record first (stamped by this process's clock, which is behind the CLI's)
    dd = DataDir(data)
    with LogWriter(dd, dd.open(), StoreSettings()) as w:
        w.append_batch([NODE_JOIN])
    r = run_cli(data, "append", "--file", str(src))
    assert r.returncode == 0, r.stderr
    out = tmp_path / "out.ecs.ndjson"
    r = run_cli(data, "export", "ecs", "-o", str(out))
    assert r.returncode == 0, r.stderr
    q = run_cli(data, "query", "--format", "ndjson")
    wire = {e["id"]: e for e in map(json.loads, q.stdout.splitlines())}
    docs = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert len(docs) == len(events()) + 1
    assert {d["event"]["action"] for d in docs} >= set(MAPPING)
    for d in docs:
        check_document(d, wire[d["event"]["id"]])
        assert d["observer"]["name"] == "gw-ecs"
    # filtered export: only the security alert
    out2 = tmp_path / "sec.ndjson"
    r = run_cli(data, "export", "ecs", "--action", "security.*", "-o", str(out2))
    assert r.returncode == 0, r.stderr
    sec = [json.loads(line) for line in out2.read_text().splitlines()]
    assert [d["event"]["action"] for d in sec] == ["security.brute_force_detected"]
    assert sec[0]["event"]["kind"] == "alert" and sec[0]["event"]["category"] == ["intrusion_detection"]
    # the export itself is audited
    q = run_cli(data, "query", "--format", "ndjson", "--action", "audit.export")
    recs = [json.loads(line) for line in q.stdout.splitlines()]
    assert [(r["details"]["format"], r["details"]["rows"]) for r in recs] == [("ecs", len(docs)), ("ecs", 1)]
