"""What ingest refuses, over a real server and the real CLI: msgpack maps with a
repeated key (at any depth), and the actions that are the node's own
(``audit.*``, ``cluster.node_join``, ``cluster.node_leave``, ``auth.api_key_used``).
Each refusal names the problem and writes nothing; the node's own writes of
those actions still go through.
"""

from __future__ import annotations

import json
import struct

import msgpack
import pytest
from helpers_engine import invoke_cli, query_json, run_cli
from helpers_http import KEY_ENTRIES, assert_error, bearer, ev, head_seq, post_events, query

from auditlog.ingest.taxonomy import NODE_ACTIONS
from auditlog.query.cluster.fanout import Cluster
from auditlog.query.cluster.settings import ClusterSettings, PeerConfig

MSGPACK = {"Content-Type": "application/msgpack"}


def s(text: str) -> bytes:
    """A msgpack fixstr."""
    raw = text.encode()
    assert len(raw) < 32
    return bytes([0xA0 | len(raw)]) + raw


def fixmap(*pairs: tuple[bytes, bytes]) -> bytes:
    """A msgpack map written pair by pair (so a key may appear twice)."""
    return bytes([0x80 | len(pairs)]) + b"".join(k + v for k, v in pairs)


def array(*items: bytes) -> bytes:
    return bytes([0x90 | len(items)]) + b"".join(items)


def good_event(n: int) -> bytes:
    return msgpack.packb(ev(n, user="mp"))


async def post_msgpack(client, token: str, body: bytes):
    return await client.post("/api/v1/events", data=body, headers={**bearer(token), **MSGPACK})


# ----------------------------------------------------------------------------- msgpack repeated keys

REPEATED = {
    "top-level field": (
        array(
            good_event(0), fixmap((s("user"), s("alice")), (s("action"), s("auth.login")), (s("user"), s("mallory")))
        ),
        "'user'",
    ),
    "in details": (
        array(
            fixmap(
                (s("user"), s("u")),
                (s("action"), s("auth.login")),
                (s("details"), fixmap((s("old"), s("tag")), (s("new"), s("block")), (s("old"), s("allow")))),
            )
        ),
        "'old'",
    ),
    "deep in details": (
        array(
            fixmap(
                (s("user"), s("u")),
                (s("action"), s("auth.login")),
                (s("details"), fixmap((s("a"), array(fixmap((s("x"), b"\x01"), (s("x"), b"\x02")))))),
            )
        ),
        "'x'",
    ),
    "events wrapper": (fixmap((s("events"), array()), (s("events"), array(good_event(1)))), "'events'"),
}


@pytest.mark.parametrize("case", sorted(REPEATED))
async def test_msgpack_repeated_key_is_400_naming_it_and_nothing_written(client, keys, service, case):
    body, named = REPEATED[case]
    before = head_seq(service)
    await assert_error(await post_msgpack(client, keys["writer"], body), 400, "msgpack", f"duplicate key {named}")
    assert head_seq(service) == before
    assert (await query(client, keys["reader"]))["events"][KEY_ENTRIES:] == []


async def test_msgpack_without_repeated_keys_is_taken_however_it_is_encoded(client, keys, service):
    # float32, a 32-bit string header for a short string, a map32 header, an int64 for 5:
    # what other encoders may send; none of it is a repeated key
    details = (
        b"\xdf\x00\x00\x00\x03"
        + s("f")
        + b"\xca"
        + struct.pack(">f", 0.5)
        + s("t")
        + b"\xdb\x00\x00\x00\x02hi"
        + s("n")
        + b"\xd3"
        + (5).to_bytes(8, "big")
    )
    body = array(fixmap((s("user"), s("wide")), (s("action"), s("auth.login")), (s("details"), details)))
    resp = await post_msgpack(client, keys["writer"], body)
    assert resp.status == 201, await resp.text()
    (got,) = (await query(client, keys["reader"], user="wide"))["events"]
    assert got["details"] == {"f": 0.5, "n": 5, "t": "hi"}


# ----------------------------------------------------------------------------- the node's own actions


@pytest.mark.parametrize("action", sorted(NODE_ACTIONS) + ["audit.retention_purge"])
@pytest.mark.parametrize("encoding", ["json", "msgpack"])
async def test_writer_cannot_append_the_nodes_own_actions(client, keys, service, action, encoding):
    forged = {"user": "system", "action": action, "target": "gw9", "details": {"node": "gw9", "via": "config"}}
    batch = [ev(0), forged]
    before = head_seq(service)
    if encoding == "json":
        resp = await post_events(client, keys["writer"], batch)
    else:
        resp = await post_msgpack(client, keys["writer"], msgpack.packb(batch))
    err = await assert_error(resp, 400, "event 1", "'action'", action, "reserved")
    assert [(p["index"], p["field"]) for p in err["problems"]] == [(1, "action")]
    assert head_seq(service) == before
    assert (await query(client, keys["admin"], action=action))["events"] == []
    assert (await query(client, keys["admin"]))["events"][KEY_ENTRIES:] == []


async def test_the_node_still_writes_its_own_membership_and_key_use(client, keys, service):
    resp = await post_events(client, keys["writer"], [ev(0, user="system", action="cluster.node_join")])
    assert resp.status == 400
    # what the node records about itself goes through its writer, not through ingest
    assert service.flush_key_uses() >= 1
    cluster = Cluster(service, ClusterSettings(peers=(PeerConfig("gw2", "https://127.0.0.1:9"),)))
    cluster.record_membership()
    Cluster(service, ClusterSettings()).record_membership()  # gw2 left the config
    got = (await query(client, keys["admin"], user="system", action="cluster.*"))["events"]
    assert [(e["action"], e["target"]) for e in got] == [("cluster.node_join", "gw2"), ("cluster.node_leave", "gw2")]
    used = (await query(client, keys["admin"], action="auth.api_key_used"))["events"]
    assert {e["details"]["role"] for e in used} >= {"writer"}
    assert all(e["integrity"] == "ok" for e in got + used)


# ----------------------------------------------------------------------------- the CLI


@pytest.mark.parametrize("action", sorted(NODE_ACTIONS))
def test_cli_append_refuses_the_nodes_own_actions(tmp_path, action):
    data = tmp_path / "data"
    assert invoke_cli(data, "init", "--node-id", "gw1").exit_code == 0
    p = run_cli(data, "append", "--user", "system", "--action", action, "--target", "gw2")
    assert p.returncode == 2, (p.stdout, p.stderr)
    assert action in p.stderr and "reserved" in p.stderr and "'action'" in p.stderr
    assert "Traceback" not in p.stderr and p.stdout == ""
    code, entries, _ = query_json(data)
    assert code == 0 and entries == []


def test_cli_append_file_refuses_the_nodes_own_actions_all_or_nothing(tmp_path):
    data = tmp_path / "data"
    assert invoke_cli(data, "init", "--node-id", "gw1").exit_code == 0
    lines = [
        json.dumps({"user": "alice", "action": "auth.login"}),
        json.dumps({"user": "system", "action": "cluster.node_leave", "target": "gw2"}),
        json.dumps({"user": "k", "action": "auth.api_key_used"}),
    ]
    src = tmp_path / "events.ndjson"
    src.write_text("\n".join(lines) + "\n")
    p = run_cli(data, "append", "--file", str(src))
    assert p.returncode == 2, (p.stdout, p.stderr)
    assert "line 2" in p.stderr and "cluster.node_leave" in p.stderr
    assert "line 3" in p.stderr and "auth.api_key_used" in p.stderr
    code, entries, _ = query_json(data)
    assert code == 0 and entries == []
