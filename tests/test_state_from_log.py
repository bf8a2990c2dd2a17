"""Node state an edit of ``<data-dir>/state/`` cannot change.

Every test works as an attacker with write access to the data dir but not to
the node key would: files under ``state/`` written by hand, restored from an
older copy, deleted, and (for API keys) the log itself damaged where a
revocation sits.  The node must grant nothing from such a file, report what
it ignored, and take the truth from the log: API keys, the syslog cursor,
retention's last run and cluster membership.

Servers are real: ``auditlog serve`` subprocesses where a restart matters,
the conftest ``make_service``/``make_client`` aiohttp server otherwise; the
syslog receiver is a TCP socket on loopback.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import re
import socket
import threading
import time
from pathlib import Path

import pytest
from helpers_http import ServeProcess, bearer, ev, make_keys, post_events, query, run_cli

from auditlog.engine.entry import ENTRY_SUB, EntryDraft

# -- helpers --------------------------------------------------------------------------------


def init_node(tmp_path: Path, config: str = 'fsync = "none"\n') -> tuple[Path, Path]:
    data, cfg = tmp_path / "data", tmp_path / "auditlog.toml"
    cfg.write_text('node_id = "gw1"\n' + config)
    r = run_cli(data, "--config", str(cfg), "init", "--node-id", "gw1")
    assert r.returncode == 0, r.stderr
    return data, cfg


def cli(data: Path, cfg: Path, *args: str):
    return run_cli(data, "--config", str(cfg), *args)


def cli_key(data: Path, cfg: Path, role: str, name: str) -> str:
    r = cli(data, cfg, "apikey", "create", "--role", role, "--name", name)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip().splitlines()[-1]


def serve(data: Path, cfg: Path) -> ServeProcess:
    node = ServeProcess(data, config=cfg)
    node.wait_ready()
    return node


def status(node: ServeProcess, token: str, path: str = "/api/v1/audit-log?limit=1") -> int:
    return node.request(path, token)[0]


def create_over_api(node: ServeProcess, admin: str, name: str, role: str = "reader") -> dict:
    st, body = node.json(
        "/api/v1/api-keys",
        admin,
        method="POST",
        body=json.dumps({"name": name, "role": role}).encode(),
        headers={"Content-Type": "application/json"},
    )
    assert st == 201, body
    return body


def metrics(node: ServeProcess) -> dict[str, float]:
    st, _, body = node.request("/metrics")
    assert st == 200
    return {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in body.decode().splitlines()
        if line and not line.startswith("#")
    }


def logged(data: Path, cfg: Path, *args: str) -> list[dict]:
    r = cli(data, cfg, "query", "--format", "ndjson", *args)
    assert r.returncode == 0, r.stderr
    return [json.loads(line) for line in r.stdout.splitlines()]


def legacy_key_file(path: Path, kid: str, role: str = "admin") -> str:
    """The plain key file of earlier versions, with one admin key whose secret we know."""
    secret = "a" * 52
    path.write_text(
        json.dumps(
            {
                "keys": [
                    {
                        "id": kid,
                        "name": "intruder",
                        "role": role,
                        "hash": hashlib.sha256(secret.encode()).hexdigest(),
                        "created": time.time(),
                        "revoked": None,
                    }
                ]
            }
        )
    )
    return f"alk_{kid}_{secret}"


def forged_snapshot(path: Path, kid: str, through_seq: int = 10**6) -> str:
    """A file in the sealed shape, with a key and a MAC made without the node key."""
    token = f"alk_{kid}_{'b' * 52}"
    data = {
        "through_seq": through_seq,
        "keys": [
            {
                "id": kid,
                "name": "intruder",
                "role": "admin",
                "created": 0,
                "seq": 1,
                "revoked": None,
                "suspended": None,
                "secret_hmac": hmac.new(b"a guess", token.encode(), "sha256").hexdigest(),
            }
        ],
    }
    path.write_text(
        json.dumps(
            {
                "v": 1,
                "name": "api_keys",
                "data": data,
                "mac": hmac.new(b"another guess", json.dumps(data).encode(), "sha256").hexdigest(),
            }
        )
    )
    return token


# -- API keys on a running server -----------------------------------------------------------


async def test_key_written_into_the_state_file_of_a_running_server_grants_nothing(make_service, make_client):
    svc = make_service()
    keys = make_keys(svc)
    client = await make_client(svc)
    path = svc.data_dir.state / "api_keys.json"
    assert path.exists()  # the sealed snapshot the server keeps
    for forge in (legacy_key_file, forged_snapshot):
        token = forge(path, "0badc0ffee00" if forge is legacy_key_file else "0badc0ffee01")
        await asyncio.sleep(1.2)  # past the old store's 1 s reload
        for url in ("/api/v1/audit-log", "/api/v1/api-keys"):
            resp = await client.get(url, headers=bearer(token))
            assert resp.status == 401, (forge.__name__, url, resp.status)
        # the real keys are untouched
        assert (await client.get("/api/v1/api-keys", headers=bearer(keys["admin"]))).status == 200
    # no key was created: the log has the fixture's four creates only
    made = (await query(client, keys["admin"], action="audit.api_key_create"))["events"]
    assert sorted(e["target"] for e in made) == ["test-admin", "test-reader", "test-revoked", "test-writer"]


@pytest.mark.e2e
def test_keys_come_from_the_log_across_restarts_whatever_the_state_file_says(tmp_path):
    data, cfg = init_node(tmp_path)
    admin = cli_key(data, cfg, "admin", "ops")
    snap = data / "state" / "api_keys.json"
    node = serve(data, cfg)
    try:
        reader = create_over_api(node, admin, "siem")["key"]
        victim = create_over_api(node, admin, "leaked")
        assert status(node, reader) == status(node, victim["key"]) == 200
        before_revoke = snap.read_bytes()
        st, body = node.json(f"/api/v1/api-keys/{victim['id']}", admin, method="DELETE")
        assert st == 200 and body["revoked"]
        assert status(node, victim["key"]) == 401
    finally:
        assert node.terminate() == 0

    # 1. the snapshot from before the revoke is put back (a sealed, older copy): still revoked
    snap.write_bytes(before_revoke)
    node = serve(data, cfg)
    try:
        assert status(node, victim["key"]) == 401
        assert status(node, reader) == status(node, admin) == 200
        assert "api_keys.json" not in node.stderr()  # an older sealed copy is no tampering
    finally:
        assert node.terminate() == 0

    # 2. the state file is forged, in the old plain shape and in the sealed one
    for forge, kid in ((legacy_key_file, "1badc0ffee00"), (forged_snapshot, "1badc0ffee01")):
        token = forge(snap, kid)
        node = serve(data, cfg)
        try:
            assert status(node, token) == 401
            assert status(node, victim["key"]) == 401
            assert status(node, reader) == status(node, admin) == 200  # rebuilt from the log
            err = node.stderr()
            assert "api_keys.json" in err and "WARNING" in err, err
            if forge is legacy_key_file:
                assert "earlier version" in err and "re-create" in err
            assert metrics(node)['auditlog_state_rejected_total{file="api_keys.json"}'] == 1
        finally:
            assert node.terminate() == 0
        # set aside for inspection, replaced by a sealed snapshot of the log's keys: reported
        # once, not at every start
        assert kid in (snap.parent / "api_keys.json.rejected").read_text()
        assert json.loads(snap.read_text())["name"] == "api_keys"
    recovered = [
        e for e in logged(data, cfg, "--action", "audit.recovery") if e["details"].get("file") == "api_keys.json"
    ]
    assert len(recovered) == 2 and all(e["user"] == "system" and e["details"]["reason"] for e in recovered)
    assert "earlier version" in recovered[0]["details"]["reason"]

    # 3. the state file is deleted: every key is rebuilt from the log
    snap.unlink()
    node = serve(data, cfg)
    try:
        assert status(node, reader) == status(node, admin) == 200
        assert status(node, victim["key"]) == 401
        late = create_over_api(node, admin, "after-restarts")["key"]
        assert status(node, late) == 200
        # the list works beside the running server (it reads the log)
        r = cli(data, cfg, "apikey", "list", "--json")
        assert r.returncode == 0, r.stderr
        listed = {k["name"]: k for k in json.loads(r.stdout)["keys"]}
        assert set(listed) == {"ops", "siem", "leaked", "after-restarts"}
        assert listed["leaked"]["revoked"] and not listed["siem"]["revoked"]
        assert "alk_" not in r.stdout
    finally:
        assert node.terminate() == 0
    node = serve(data, cfg)
    try:
        assert status(node, late) == 200  # created over the API, survives a restart
    finally:
        assert node.terminate() == 0
    # what authentication needs is in the create entries, as a keyed hash only
    for e in logged(data, cfg, "--action", "audit.api_key_create"):
        mac = e["details"]["secret_hmac"]
        assert re.fullmatch(r"[0-9a-f]{64}", mac)
        assert all(t.split("_")[2] not in json.dumps(e) for t in (admin, reader, late, victim["key"]))
        assert mac not in {hashlib.sha256(t.encode()).hexdigest() for t in (admin, reader, late)}


@pytest.mark.e2e
def test_a_hidden_revocation_suspends_the_keys_it_may_have_revoked(tmp_path):
    """The snapshot deleted and the revoke entry altered in the segment: the revocation
    cannot be read, so no key created before it is trusted; the operator re-creates them."""
    data, cfg = init_node(tmp_path)
    admin = cli_key(data, cfg, "admin", "ops")
    node = serve(data, cfg)
    try:
        victim = create_over_api(node, admin, "leaked")
        assert node.json(f"/api/v1/api-keys/{victim['id']}", admin, method="DELETE")[0] == 200
    finally:
        assert node.terminate() == 0
    (data / "state" / "api_keys.json").unlink()
    segs = sorted((data / "segments").glob("*.seg"))
    hit = [(p, p.read_bytes().rfind(b"audit.api_key_revoke")) for p in segs]
    path, at = [(p, i) for p, i in hit if i >= 0][-1]
    raw = bytearray(path.read_bytes())
    raw[at + len("audit.api_key_revok")] ^= 0x03  # "...revoke" -> "...revokf"
    path.write_bytes(bytes(raw))

    node = serve(data, cfg)
    try:
        assert status(node, victim["key"]) == 401
        assert status(node, admin) == 401  # created before the unreadable stretch
        assert "suspended" in node.stderr()
    finally:
        assert node.terminate() == 0
    r = cli(data, cfg, "apikey", "list", "--json")
    listed = {k["name"]: k for k in json.loads(r.stdout)["keys"]}
    assert listed["ops"]["suspended"] and listed["leaked"]["suspended"] and not listed["leaked"]["revoked"]
    # the way out: a new key, created after the damage
    fresh = cli_key(data, cfg, "admin", "ops-2")
    node = serve(data, cfg)
    try:
        assert status(node, fresh) == 200 and status(node, admin) == 401
    finally:
        assert node.terminate() == 0


def test_apikey_cli_works_through_the_log(tmp_path):
    data, cfg = init_node(tmp_path)
    token = cli_key(data, cfg, "reader", "dashboard")
    kid = token.split("_")[1]
    r = cli(data, cfg, "apikey", "list")
    assert r.returncode == 0 and kid in r.stdout and "dashboard" in r.stdout and "REVOKED" not in r.stdout
    r = cli(data, cfg, "apikey", "revoke", kid)
    assert r.returncode == 0, r.stderr
    assert "REVOKED" in cli(data, cfg, "apikey", "list").stdout
    made = logged(data, cfg, "--action", "audit.api_key_create")
    gone = logged(data, cfg, "--action", "audit.api_key_revoke")
    assert [(e["user"], e["target"], e["details"]["key_id"]) for e in made + gone] == [
        ("cli", "dashboard", kid),
        ("cli", "dashboard", kid),
    ]
    r = cli(data, cfg, "apikey", "revoke", "000000000000")
    assert r.returncode == 2 and "000000000000" in r.stderr
    # a legacy key file: listed as nothing, with a warning, and left for the next writer to replace
    legacy_key_file(data / "state" / "api_keys.json", "2badc0ffee00")
    r = cli(data, cfg, "apikey", "list", "--json")
    assert r.returncode == 0 and "earlier version" in r.stderr and "re-create" in r.stderr
    assert [k["id"] for k in json.loads(r.stdout)["keys"]] == [kid]


# -- syslog cursor ----------------------------------------------------------------------------


class Receiver:
    """A TCP syslog receiver on loopback (RFC 6587 octet counting): the ids that arrived."""

    def __init__(self):
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.target = f"tcp://127.0.0.1:{self.sock.getsockname()[1]}"
        self.ids: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            buf = b""
            conn.settimeout(0.2)
            with conn:
                while not self._stop.is_set():
                    try:
                        chunk = conn.recv(65536)
                    except TimeoutError:
                        continue
                    if not chunk:
                        break
                    buf += chunk
                    while (sp := buf.find(b" ")) > 0 and len(buf) >= sp + 1 + int(buf[:sp]):
                        n = int(buf[:sp])
                        m = re.search(rb'\[audit@32473 id="([^"]+)"', buf[sp + 1 : sp + 1 + n])
                        self.ids.append(m.group(1).decode())
                        buf = buf[sp + 1 + n :]

    def wait_for(self, ids: set[str], timeout: float = 15) -> None:
        deadline = time.monotonic() + timeout
        while not ids <= set(self.ids):
            assert time.monotonic() < deadline, sorted(ids - set(self.ids))[:10]
            time.sleep(0.02)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


def _forged_cursor_plain(path: Path, target: str) -> None:
    path.write_text(json.dumps({"target": target, "seq": 10**9}))


def _forged_cursor_sealed_shape(path: Path, target: str) -> None:
    data = {"target": target, "seq": 10**9}
    path.write_text(json.dumps({"v": 1, "name": "syslog_cursor", "data": data, "mac": "ab" * 32}))


@pytest.mark.parametrize("forge", [_forged_cursor_plain, _forged_cursor_sealed_shape])
async def test_a_cursor_moved_ahead_is_reported_and_everything_is_forwarded(make_service, make_client, receiver, forge):
    from auditlog.export.syslog import SyslogSettings

    svc = make_service(syslog=SyslogSettings(target=receiver.target))
    keys = make_keys(svc)
    svc.writer.append_batch(
        [EntryDraft("alice", "config.filter_update", f"f-{i}", details={"n": i}) for i in range(50)]
    )
    forge(svc.data_dir.state / "syslog_cursor.json", receiver.target)
    client = await make_client(svc)  # starts the forwarder, which reads its cursor
    st = svc.syslog.status()
    assert st["cursor_rejected"] and "syslog_cursor.json" in st["cursor_rejected"]
    assert str(10**9) in (svc.data_dir.state / "syslog_cursor.json.rejected").read_text()
    # every entry goes out, the ones before the forged cursor included
    receiver.wait_for({f"node-a:{s}" for s in range(1, 56)})
    assert (await post_events(client, keys["writer"], [ev(1)])).status == 201
    head = svc.writer.next_seq - 1
    receiver.wait_for({f"node-a:{s}" for s in range(1, head + 1)})
    # reported: an audit.recovery entry, the counter, the status
    rec = (await query(client, keys["reader"], action="audit.recovery"))["events"]
    assert [e["details"]["file"] for e in rec] == ["syslog_cursor.json"] and rec[0]["user"] == "system"
    assert rec[0]["details"]["reason"] == st["cursor_rejected"]
    text = await (await client.get("/metrics")).text()
    assert 'auditlog_state_rejected_total{file="syslog_cursor.json"} 1' in text.splitlines()
    body = await (await client.get("/api/v1/cluster", headers=bearer(keys["reader"]))).json()
    assert body["nodes"][0]["syslog"]["cursor_rejected"] == st["cursor_rejected"]
    # the cursor the forwarder writes is sealed, and a forwarder started on it resumes from it
    deadline = time.monotonic() + 10
    while svc.syslog.cursor < head:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.02)
    svc.syslog.stop()
    saved = json.loads((svc.data_dir.state / "syslog_cursor.json").read_text())
    assert saved["name"] == "syslog_cursor" and saved["data"] == {
        "target": receiver.target,
        "seq": head,
        "sub": ENTRY_SUB,
    }
    svc.syslog.start()
    assert svc.syslog.cursor == head and svc.syslog.cursor_rejected is None


# -- retention's last run ----------------------------------------------------------------------


@pytest.mark.e2e
def test_a_forged_retention_file_does_not_show_a_purge(tmp_path):
    data, cfg = init_node(tmp_path, 'fsync = "none"\nsegment_max_bytes = 4096\nretention_days = 90\n')
    events = tmp_path / "events.ndjson"
    events.write_text(
        "".join(json.dumps({"user": "u", "action": "auth.login", "details": {"i": i}}) + "\n" for i in range(200))
    )
    assert cli(data, cfg, "append", "--file", str(events)).returncode == 0
    admin = cli_key(data, cfg, "admin", "ops")
    forged = {
        "ran_at": "2026-12-31T00:00:00.000000Z",
        "as_of": "2026-12-31T00:00:00.000000Z",
        "retention_days": 90,
        "dry_run": False,
        "dropped_segments": ["x.seg"],
        "dropped_entries": 123456,
        "seq_from": 1,
        "seq_to": 123456,
        "ts_from": None,
        "ts_to": None,
        "kept_segments": 1,
    }
    state = data / "state" / "retention.json"
    state.write_text(json.dumps(forged))

    def last_run():
        st, body = node.json("/api/v1/cluster", admin)
        assert st == 200
        return body["nodes"][0]["retention_last_run"]

    node = serve(data, cfg)
    try:
        assert last_run() is None  # no purge ever happened
        m = metrics(node)
        assert "auditlog_retention_last_dropped_entries" not in m
        assert "auditlog_retention_last_run_timestamp_seconds" not in m
        assert m['auditlog_state_rejected_total{file="retention.json"}'] == 1
        assert "retention.json" in node.stderr()
    finally:
        assert node.terminate() == 0
    assert not state.exists() and "123456" in (data / "state" / "retention.json.rejected").read_text()

    r = cli(data, cfg, "retention", "run", "--as-of", "2999-01-01")
    assert r.returncode == 0 and r.stdout.startswith("dropped "), r.stdout + r.stderr
    (purge,) = logged(data, cfg, "--action", "audit.retention_purge")
    state.write_text(json.dumps({"v": 1, "name": "retention", "data": forged, "mac": "cd" * 32}))
    node = serve(data, cfg)
    try:
        run = last_run()
        assert run["entry_id"] == purge["id"] and run["ran_at"] == purge["ts"]
        assert run["dropped_entries"] == purge["details"]["count"] != 123456
        assert run["seq_to"] == purge["details"]["seq_to"]
        m = metrics(node)
        assert m["auditlog_retention_last_dropped_entries"] == purge["details"]["count"]
        assert m['auditlog_state_rejected_total{file="retention.json"}'] == 1
        # the API key snapshot was brought up to date before the purge: no key is lost with it
        assert status(node, admin) == 200
    finally:
        assert node.terminate() == 0
    # (the first start's entry went with the purge; the second start's is there)
    rec = [e for e in logged(data, cfg, "--action", "audit.recovery") if e["details"].get("file")]
    assert rec and rec[-1]["details"]["file"] == "retention.json" and "MAC" in rec[-1]["details"]["reason"]


async def test_a_run_that_dropped_nothing_is_kept_sealed_and_shown_when_newest(make_service, make_client):
    from auditlog.engine.retention import load_last_run

    svc = make_service()
    keys = make_keys(svc)
    client = await make_client(svc)
    await svc.run(svc.run_retention)
    (me,) = (await (await client.get("/api/v1/cluster", headers=bearer(keys["reader"]))).json())["nodes"]
    run = me["retention_last_run"]
    assert run["dropped_entries"] == 0 and run["entry_id"] is None
    saved = json.loads((svc.data_dir.state / "retention.json").read_text())
    assert saved["name"] == "retention" and saved["data"]["ran_at"] == run["ran_at"]
    # the same record edited: not shown, reported
    saved["data"]["dropped_entries"] = 77
    (svc.data_dir.state / "retention.json").write_text(json.dumps(saved))
    last, problem = load_last_run(svc.log, svc.seal, svc.data_dir.state)
    assert last is None and "MAC" in problem


# -- cluster membership ----------------------------------------------------------------------


def test_membership_comes_from_the_log_not_from_a_members_file(make_service):
    from auditlog.query.cluster.fanout import Cluster
    from auditlog.query.cluster.settings import ClusterSettings, PeerConfig

    svc = make_service()

    def start_with(*peers: str) -> list[tuple[str, str]]:
        head = svc.writer.next_seq - 1
        Cluster(
            svc, ClusterSettings(peers=tuple(PeerConfig(p, f"https://127.0.0.1:1/{p}") for p in peers))
        ).record_membership()
        return [(e.action, e.target) for e in svc.log.scan(after_seq=head)]

    members = svc.data_dir.state / "cluster_members.json"
    assert start_with("b", "c") == [("cluster.node_join", "b"), ("cluster.node_join", "c")]
    assert not members.exists()
    # a members file claiming another peer, or none: no leave, no second join
    members.write_text(json.dumps({"peers": ["b", "c", "x"]}))
    assert start_with("b", "c") == []
    assert not members.exists()  # the file of earlier versions goes away
    members.write_text(json.dumps({"peers": []}))
    assert start_with("b", "c") == []
    # the config changes: exactly what changed is recorded
    assert start_with("b") == [("cluster.node_leave", "c")]
    members.write_text(json.dumps({"peers": ["b", "c"]}))
    assert start_with("b") == []
    assert start_with("b", "c") == [("cluster.node_join", "c")]
