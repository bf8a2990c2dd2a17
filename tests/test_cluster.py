"""The cluster end to end: real ``auditlog serve`` processes on loopback, real mTLS.

* merged reads: (ts, node, seq) order both ways, exact pagination across nodes,
  filters pushed down to every node, the same merged view from any node;
* failures: a peer SIGKILLed, a peer that accepts TCP and never answers, a peer
  killed mid-stream (NDJSON and CSV), a peer with a certificate from another
  CA: bounded answers, ``unreachable`` named, no hang, no crash;
* the peer listener's TLS: no client certificate, another CA, a node id that
  is not a configured peer: refused;
* witnessed checkpoints: a tail cut at a frame boundary and a history
  rewritten with the node's own key are caught by cluster verification, a
  legitimate retention drop is not; ``/api/v1/cluster``, membership entries
  and a retention setting that differs between nodes.
"""

from __future__ import annotations

import csv
import http.client
import io
import json
import re
import shutil
import socket
import ssl
import time
from urllib.parse import urlencode

import pytest
from helpers_cluster import (
    LocalCluster,
    NodeSpec,
    StalledPeer,
    cut_tail_at_seq,
    ensure_running,
    make_events,
    rewrite_entry,
    write_ndjson,
)

from auditlog.engine.entry import format_ts

pytestmark = pytest.mark.e2e

PEER_TIMEOUT = 4.0
#: what "bounded" means for an answer with a dead or stalled peer: the peer timeout once,
#: with room for the healthy nodes on a busy machine, and still below twice the timeout
BOUND = PEER_TIMEOUT + 3.5
BULK = 200_000


def seq_of(event_id: str) -> int:
    return int(event_id.rsplit(":", 1)[1])


def order_key(e: dict) -> tuple:
    # RFC 3339 with fixed-width microseconds: the string order is the time order
    return (e["ts"], e["node"], e["seq"])


def q(path: str, **params) -> str:
    return f"{path}?{urlencode(params)}" if params else path


def ndjson_lines(body: bytes) -> list[dict]:
    return [json.loads(line) for line in body.decode("utf-8").splitlines() if line.strip()]


def timed(fn, *args, **kw):
    t0 = time.monotonic()
    out = fn(*args, **kw)
    return out, time.monotonic() - t0


def assert_alive(node) -> None:
    """The serving node neither died nor logged a traceback."""
    assert node.running, f"{node.name} died:\n{node.stderr()}"
    assert "Traceback" not in node.stderr(), node.stderr()


@pytest.fixture
def make_cluster(tmp_path):
    made: list[LocalCluster] = []

    def make(specs, **kw) -> LocalCluster:
        cl = LocalCluster(tmp_path / f"cluster{len(made)}", specs, peer_timeout=PEER_TIMEOUT, **kw)
        made.append(cl)
        cl.build()
        cl.start()
        return cl

    yield make
    for cl in made:
        cl.close()


# =====================================================================================
# merged reads (one read-only cluster for the module)
# =====================================================================================


@pytest.fixture(scope="module")
def ro(tmp_path_factory):
    """Three nodes a, b, c with 600 interleaved events, plus the truth: every entry up to
    ``to`` read straight from each data dir by the CLI (no merge involved)."""
    cl = LocalCluster(tmp_path_factory.mktemp("ro"), ("a", "b", "c"), peer_timeout=PEER_TIMEOUT)
    try:
        cl.build()
        cl.start()
        i = 0
        for _ in range(8):  # rounds, so the nodes' timestamps interleave
            for name in "abc":
                cl[name].post_events(make_events(25, name, start=i))
                i += 25
        to = format_ts(time.time_ns() // 1000 + 1)
        truth = []
        for name in "abc":
            out = cl[name].run("query", "--to", to, "--format", "ndjson").stdout
            local = ndjson_lines(out.encode())
            assert local and {e["node"] for e in local} == {name}
            truth += local
        truth.sort(key=order_key)
        cl.to = to
        cl.truth = truth
        yield cl
    finally:
        cl.close()


def test_merged_order_from_every_node(ro):
    truth = ro.truth
    assert len(truth) >= 600
    # the three logs really interleave in time (not one node's block after another's)
    switches = sum(1 for x, y in zip(truth, truth[1:]) if x["node"] != y["node"])
    assert switches >= 20
    for name in "abc":
        page = ro[name].get_ok(q("/api/v1/audit-log", to=ro.to, limit=10000))
        assert page["nodes"] == {"a": {"status": "ok"}, "b": {"status": "ok"}, "c": {"status": "ok"}}
        assert page["next_cursor"] is None and page["integrity_violations"] == 0
        got = page["events"]
        assert [(e["id"], e["signature"]) for e in got] == [(e["id"], e["signature"]) for e in truth]
        assert got == sorted(got, key=order_key)
        down = ro[name].get_ok(q("/api/v1/audit-log", to=ro.to, limit=10000, order="desc"))["events"]
        assert [e["id"] for e in down] == [e["id"] for e in reversed(truth)]
    # NDJSON streams the same merge; all nodes answered, so no node_status line
    status, headers, body = ro["b"].request(q("/api/v1/audit-log", to=ro.to, format="ndjson"))
    assert status == 200
    lines = ndjson_lines(body)
    assert [e["id"] for e in lines] == [e["id"] for e in truth]
    assert json.loads(headers["X-Auditlog-Nodes"]) == {n: {"status": "ok"} for n in "abc"}
    # each node renders its own lines: the same objects as the JSON page, in every order
    page = ro["c"].get_ok(q("/api/v1/audit-log", to=ro.to, limit=10000))["events"]
    assert lines == page
    status, _, body = ro["a"].request(q("/api/v1/audit-log", to=ro.to, format="ndjson", order="desc"))
    assert status == 200 and ndjson_lines(body) == page[::-1]
    status, _, body = ro["c"].request(q("/api/v1/audit-log", to=ro.to, format="ndjson", limit=50))
    assert status == 200 and ndjson_lines(body) == page[:50]
    user = truth[len(truth) // 2]["user"]
    status, _, body = ro["b"].request(q("/api/v1/audit-log", to=ro.to, format="ndjson", user=user))
    assert status == 200 and ndjson_lines(body) == [e for e in page if e["user"] == user]


def _paginate(nodes, limit: int, **params) -> list[dict]:
    """Follow next_cursor, asking the nodes in turn (a cursor from one node works on any)."""
    out: list[dict] = []
    cursor = None
    for i in range(2000):  # more pages than any of these answers needs
        p = dict(params, limit=limit)
        if cursor:
            p["cursor"] = cursor
        page = nodes[i % len(nodes)].get_ok(q("/api/v1/audit-log", **p))
        assert all(st["status"] == "ok" for st in page["nodes"].values()), page["nodes"]
        cursor = page["next_cursor"]
        assert len(page["events"]) == limit if cursor else len(page["events"]) <= limit
        out += page["events"]
        if cursor is None:
            return out
    raise AssertionError("pagination never ended")


def test_pagination_is_exact_across_nodes(ro):
    want = [e["id"] for e in ro.truth]
    a, b, c = ro["a"], ro["b"], ro["c"]
    for nodes, limit in (([a], 50), ([b], 50), ([c], 50), ([a, b, c], 7), ([c, a], 1000)):
        got = [e["id"] for e in _paginate(nodes, limit, to=ro.to)]
        assert len(got) == len(set(got)), "duplicates across pages"
        assert got == want, f"pages of {limit} via {[n.name for n in nodes]}"
    got = [e["id"] for e in _paginate([b, c], 13, to=ro.to, order="desc")]
    assert got == want[::-1]


FILTERS = [
    pytest.param({"user": "alice"}, lambda e: e["user"] == "alice", id="user"),
    pytest.param({"action": "config.*"}, lambda e: e["action"].startswith("config."), id="action-prefix"),
    pytest.param({"node": "b,c"}, lambda e: e["node"] in ("b", "c"), id="node"),
    pytest.param(
        {"user": "bob,carol", "action": "auth.*", "success": "false"},
        lambda e: e["user"] in ("bob", "carol") and e["action"].startswith("auth.") and not e["success"],
        id="users-actions-failures",
    ),
    pytest.param(
        {"node": "a", "action": "quarantine.release"},
        lambda e: e["node"] == "a" and e["action"] == "quarantine.release",
        id="node-and-action",
    ),
]


@pytest.mark.parametrize("params,match", FILTERS)
def test_filters_same_answer_from_every_node(ro, params, match):
    want = [e["id"] for e in ro.truth if match(e)]
    assert want and len(want) < len(ro.truth)
    nodes = set(params["node"].split(",")) if "node" in params else {"a", "b", "c"}
    for name in "abc":
        page = ro[name].get_ok(q("/api/v1/audit-log", to=ro.to, limit=10000, **params))
        assert [e["id"] for e in page["events"]] == want, name
        for n, st in page["nodes"].items():
            assert st["status"] == "ok"
            # a node the filter excludes is not asked at all
            assert ("skipped" in st) == (n not in nodes), (n, st)
    # and page by page through another node
    assert [e["id"] for e in _paginate([ro["c"], ro["a"]], 17, to=ro.to, **params)] == want


def test_cluster_endpoint_lists_every_node(ro):
    body = ro["c"].get_ok("/api/v1/cluster")
    rows = {r["node"]: r for r in body["nodes"]}
    assert set(rows) == {"a", "b", "c"} and rows["c"].get("self") is True
    for name in "abc":
        last = max(e["seq"] for e in ro.truth if e["node"] == name)
        assert rows[name]["status"] == "ok" and rows[name]["head_seq"] >= last
        assert rows[name]["retention_days"] == 365
    assert body["retention_consistent"] is True


# =====================================================================================
# failures (one cluster: b holds 200k entries; a also lists a stalled socket and f,
# a node whose certificate comes from another CA)
# =====================================================================================


@pytest.fixture(scope="module")
def fc(tmp_path_factory):
    root = tmp_path_factory.mktemp("fc")
    stall = StalledPeer()
    filler = "x" * 160  # big enough entries that the stream cannot sit in socket buffers
    bulk = write_ndjson(
        root / "bulk.ndjson",
        (
            {
                "user": "bulk",
                "action": "quarantine.release",
                "target": f"mail-{i}",
                "details": {"i": i, "subject": filler},
            }
            for i in range(BULK)
        ),
    )
    cl = LocalCluster(
        root,
        [
            NodeSpec("a", peers=["b", "c", "f"], extra_peers={"stall": stall.url}),
            NodeSpec("b", preload=bulk),
            NodeSpec("c"),
            NodeSpec("f", ca="other", trust=("other", "main"), peers=["a"]),
        ],
        peer_timeout=PEER_TIMEOUT,
    )
    try:
        cl.build()
        cl.start()
        for name in "acf":
            cl[name].post_events(make_events(20, name))
        cl.stall = stall
        yield cl
    finally:
        cl.close()
        stall.close()


def test_sigkilled_peer_is_unreachable_and_the_rest_arrives(fc):
    a, b, c = fc["a"], fc["b"], fc["c"]
    ensure_running(a, b, c)
    b.kill()

    page, took = timed(c.get_ok, q("/api/v1/audit-log", limit=200, order="desc"))
    assert took < BOUND
    assert page["nodes"]["b"]["status"] == "unreachable" and page["nodes"]["b"]["error"]
    assert page["nodes"]["a"] == {"status": "ok"} and page["nodes"]["c"] == {"status": "ok"}
    got = {e["node"] for e in page["events"]}
    assert got == {"a", "c"}
    assert sum(1 for e in page["events"] if e["details"].get("tag") == "a") == 20

    (status, headers, body), took = timed(c.request, q("/api/v1/audit-log", format="ndjson"))
    assert status == 200 and took < BOUND
    assert json.loads(headers["X-Auditlog-Nodes"])["b"]["status"] == "unreachable"
    lines = ndjson_lines(body)
    assert lines[-1]["node_status"]["node"] == "b"
    assert lines[-1]["node_status"]["status"] == "unreachable" and lines[-1]["node_status"]["error"]
    assert {e["node"] for e in lines[:-1]} == {"a", "c"}

    (status, _, body), took = timed(c.request, "/api/v1/audit-log/export.csv")
    assert status == 200 and took < BOUND
    rows = list(csv.reader(io.StringIO(body.decode("utf-8-sig"), newline="")))
    assert rows[-1][1] == "b" and rows[-1][-1].startswith("unreachable:") and len(rows[-1][-1]) > 13
    assert {r[1] for r in rows[1:-1]} == {"a", "c"}

    cluster, took = timed(c.get_ok, "/api/v1/cluster")
    assert took < BOUND
    rows = {r["node"]: r for r in cluster["nodes"]}
    assert rows["b"]["status"] == "unreachable" and rows["b"]["error"]
    assert rows["a"]["status"] == "ok" and rows["a"]["head_seq"] >= 20

    rep, took = timed(c.get_ok, "/api/v1/verify?scope=cluster")
    assert took < BOUND
    assert rep["nodes"]["b"]["status"] == "unreachable" and rep["ok"] is False
    assert rep["nodes"]["a"] == {"status": "ok", "ok": True} and rep["violations"] == []
    assert_alive(c)


def test_stalled_peer_is_unreachable_within_peer_timeout(fc):
    a, b, c = fc["a"], fc["b"], fc["c"]
    ensure_running(a, b, c)
    before = len(fc.stall.accepted)

    page, took = timed(a.get_ok, q("/api/v1/audit-log", limit=100, order="desc"))
    assert took < BOUND
    assert len(fc.stall.accepted) > before, "the stalled peer was never even connected to"
    st = page["nodes"]["stall"]
    assert st["status"] == "unreachable" and re.search(r"no answer|stalled|timed? ?out", st["error"]), st
    assert all(page["nodes"][n] == {"status": "ok"} for n in "abc"), page["nodes"]
    assert {"a", "c"} <= {e["node"] for e in page["events"]}

    (status, _, body), took = timed(a.request, q("/api/v1/audit-log", format="ndjson", node="a,c,stall"))
    assert status == 200 and took < BOUND
    lines = ndjson_lines(body)
    trailer = [x["node_status"] for x in lines if "node_status" in x]
    assert [t["node"] for t in trailer] == ["stall"] and trailer[0]["status"] == "unreachable"
    assert "node_status" in lines[-1] and {e["node"] for e in lines if "node" in e} == {"a", "c"}

    cluster, took = timed(a.get_ok, "/api/v1/cluster")
    assert took < BOUND
    rows = {r["node"]: r for r in cluster["nodes"]}
    assert rows["stall"]["status"] == "unreachable" and rows["c"]["status"] == "ok"

    rep, took = timed(a.get_ok, "/api/v1/verify?scope=cluster")
    assert took < BOUND, "cluster verification waited for the stalled peer more than once"
    assert rep["nodes"]["stall"]["status"] == "unreachable"
    assert rep["nodes"]["c"] == {"status": "ok", "ok": True}
    assert_alive(a)


def test_peer_from_another_ca_is_unreachable_both_ways(fc):
    a, f = fc["a"], fc["f"]
    ensure_running(a, f)
    page, took = timed(a.get_ok, q("/api/v1/audit-log", limit=50, node="a,f"))
    assert took < BOUND
    st = page["nodes"]["f"]
    assert st["status"] == "unreachable" and re.search(r"TLS|certificate", st["error"]), st
    assert {e["node"] for e in page["events"]} == {"a"}

    # f trusts our CA (so it accepts a's server certificate), but a refuses f's client cert
    page, took = timed(f.get_ok, q("/api/v1/audit-log", limit=1000))
    assert took < BOUND
    assert page["nodes"]["a"]["status"] == "unreachable" and page["nodes"]["a"]["error"]
    assert page["nodes"]["f"] == {"status": "ok"}
    assert {e["node"] for e in page["events"]} == {"f"}
    assert_alive(a)
    assert_alive(f)


def _read_then_kill(node, path: str, victim, first_bytes: int = 2 * 1024 * 1024):
    """Stream ``path`` from ``node``; SIGKILL ``victim`` after ``first_bytes``; read the
    rest.  Returns (body, seconds from the kill to the end of the body)."""
    conn, resp = node.open_stream(path, timeout=30)
    try:
        assert resp.status == 200
        head = resp.read(first_bytes)
        assert len(head) == first_bytes
        victim.kill()
        t0 = time.monotonic()
        try:
            rest = resp.read()  # raises IncompleteRead when the answer is cut, times out on a hang
        except TimeoutError:
            pytest.fail("the answer hung after the peer was killed")
        return head + rest, time.monotonic() - t0
    finally:
        conn.close()


def test_peer_killed_mid_stream_ndjson_and_csv(fc):
    a, b, c = fc["a"], fc["b"], fc["c"]
    ensure_running(a, b, c)
    body, took = _read_then_kill(c, q("/api/v1/audit-log", format="ndjson"), b)
    assert took < BOUND
    lines = ndjson_lines(body)
    last = lines[-1]
    assert set(last) == {"node_status"}
    assert last["node_status"]["node"] == "b" and last["node_status"]["status"] == "unreachable"
    assert re.search(r"mid-stream|cut|closed", last["node_status"]["error"]), last
    events = lines[:-1]
    assert not any("node_status" in e for e in events)
    from_b = [e["seq"] for e in events if e["node"] == "b"]
    # a prefix of b's log came through, in order, and then b was reported lost
    assert 0 < len(from_b) < BULK and from_b == list(range(1, len(from_b) + 1))
    # the other nodes' entries (newer than b's bulk) still arrived, after b's
    assert {"a", "c"} <= {e["node"] for e in events}
    assert events == sorted(events, key=order_key)

    ensure_running(b)
    body, took = _read_then_kill(c, "/api/v1/audit-log/export.csv", b)
    assert took < BOUND
    rows = list(csv.reader(io.StringIO(body.decode("utf-8-sig"), newline="")))
    assert rows[0][:3] == ["timestamp", "node_id", "seq"]
    assert rows[-1][1] == "b" and rows[-1][-1].startswith("unreachable:"), rows[-1]
    assert "mid-stream" in rows[-1][-1] or "cut" in rows[-1][-1]
    b_rows = [r for r in rows[1:-1] if r[1] == "b"]
    assert 0 < len(b_rows) < BULK
    assert {"a", "c"} <= {r[1] for r in rows[1:-1]}
    assert_alive(c)


# =====================================================================================
# the peer listener's TLS
# =====================================================================================


def _raw_tls_request(port: int, ctx: ssl.SSLContext):
    """What a peer request over TLS gets: ("handshake", error) when the handshake fails,
    else ("answer", bytes or the error that ended the read)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        try:
            s = ctx.wrap_socket(raw, server_hostname="127.0.0.1")
        except (ssl.SSLError, ConnectionResetError, BrokenPipeError) as e:
            return "handshake", e
        with s:
            data = b""
            try:
                s.sendall(b"GET /peer/v1/head HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
                while chunk := s.recv(65536):
                    data += chunk
            except (ssl.SSLError, ConnectionResetError, BrokenPipeError) as e:
                return "answer", e
            return "answer", data


def _tls12(ctx: ssl.SSLContext) -> ssl.SSLContext:
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def _assert_refused(port: int, make_ctx) -> None:
    """Refused in the TLS handshake: with TLS 1.2 the handshake itself fails (the
    server aborts it); with TLS 1.3, where the client finishes first, the connection
    ends before any HTTP answer."""
    stage, res = _raw_tls_request(port, _tls12(make_ctx()))
    assert stage == "handshake" and isinstance(res, (ssl.SSLError, ConnectionResetError)), (stage, res)
    stage, res = _raw_tls_request(port, make_ctx())
    assert not (isinstance(res, bytes) and res), f"an answer came through: {res[:200]!r}"


def _client_ctx(fc, cert=None, key=None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(fc.ca_dirs["main"] / "ca.pem"))
    if cert is not None:
        ctx.load_cert_chain(str(cert), str(key))
    return ctx


def _https_get(fc, port: int, path: str, cert, key):
    return _https(fc, port, "GET", path, None, cert, key)


def _https(fc, port: int, method: str, path: str, body: bytes | None, cert, key, timeout: float = 10):
    conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=timeout, context=_client_ctx(fc, cert, key))
    try:
        conn.request(method, path, body=body, headers={"Content-Type": "application/json"} if body else {})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def test_peer_listener_tls_refusals(fc):
    a = fc["a"]
    ensure_running(a)
    port = a.peer_port
    # positive control: a configured peer's certificate gets an answer
    status, body = _https_get(fc, port, "/peer/v1/head", fc["b"].cert, fc["b"].key)
    assert status == 200 and json.loads(body)["node"] == "a"
    # a configured peer sending nonsense gets a 400 naming the problem
    for path, needle in (
        ("/peer/v1/scan?format=xml", "format"),
        ("/peer/v1/scan?order=up", "order"),
        ("/peer/v1/scan?after_seq=%C2%B2", "after_seq"),
        ("/peer/v1/scan?after_seq=-1", "after_seq"),
    ):
        status, body = _https_get(fc, port, path, fc["b"].cert, fc["b"].key)
        assert status == 400 and needle in json.loads(body)["error"]["message"], (path, status, body)

    for make in (
        lambda: _client_ctx(fc, fc["b"].cert, fc["b"].key),
        lambda: _tls12(_client_ctx(fc, fc["b"].cert, fc["b"].key)),
    ):
        stage, res = _raw_tls_request(port, make())  # the same raw request, TLS 1.3 and 1.2
        assert stage == "answer" and isinstance(res, bytes) and res.startswith(b"HTTP/1.1 200"), res

    # no client certificate: refused in the handshake, no HTTP answer at all
    _assert_refused(port, lambda: _client_ctx(fc))
    # a certificate from another CA (f's): refused in the handshake
    _assert_refused(port, lambda: _client_ctx(fc, fc["f"].cert, fc["f"].key))

    # a valid certificate of the cluster CA for a node id that is not a configured peer
    zz_cert, zz_key = fc.issue("zz", out=fc.root / "tls-extra")
    for path in ("/peer/v1/head", "/peer/v1/scan", "/peer/v1/verify"):
        status, body = _https_get(fc, port, path, zz_cert, zz_key)
        assert status == 403, (path, status, body)
        assert "zz" in json.loads(body)["error"]["message"]
    # nor can it hand in a checkpoint to cosign, nor ask for a node's tree
    for path, body in (("/peer/v1/add-checkpoint", b"old 0\n\n"), ("/peer/v1/tree", b'{"old": 0}')):
        status, answer = _https(fc, port, "POST", path, body, zz_cert, zz_key)
        assert status == 403 and "zz" in json.loads(answer)["error"]["message"], (path, status, answer)
    assert_alive(a)


# =====================================================================================
# witnessed checkpoints
# =====================================================================================


def _cosigned(witness, about: str) -> int:
    """Size of the newest tree of ``about`` that ``witness`` cosigned (0: none)."""
    page = witness.get_ok(
        q("/api/v1/audit-log", node=witness.name, action="audit.checkpoint", target=about, order="desc", limit=1)
    )
    return page["events"][0]["details"]["size"] if page["events"] else 0


def _wait_cosigned(witness, about: str, size: int, timeout: float = 20) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = _cosigned(witness, about)
        if got >= size:
            return got
        time.sleep(0.2)
    raise AssertionError(f"{witness.name} never cosigned {about} at size >= {size}")


def _refusals(witness, about: str, timeout: float = 20) -> list[dict]:
    """The refusals ``witness`` recorded of ``about``'s checkpoints (waiting for one)."""
    deadline = time.monotonic() + timeout
    while True:
        page = witness.get_ok(
            q("/api/v1/audit-log", node=witness.name, action="audit.checkpoint_refused", target=about)
        )
        if page["events"] or time.monotonic() > deadline:
            return [e["details"] for e in page["events"]]
        time.sleep(0.2)


def _drop_tree(data_dir) -> None:
    """What an attacker re-signing the log does to its tree: drop it, so the node
    builds a new one over the entries as they now are."""
    (data_dir / "state" / "tree.json").unlink()
    shutil.rmtree(data_dir / "tree", ignore_errors=True)


def test_witness_catches_a_tail_cut_at_a_frame_boundary(make_cluster):
    cl = make_cluster(("a", "b", "c"), checkpoint_interval=1)
    a, b, c = cl["a"], cl["b"], cl["c"]
    res = b.post_events(make_events(300, "doomed"))
    first, last = seq_of(res["first_id"]), seq_of(res["last_id"])
    _wait_cosigned(a, "b", last)
    _wait_cosigned(c, "b", last)
    assert b.stop() == 0
    kept = cut_tail_at_seq(b.data_dir, first)
    assert kept < first
    b.start()
    b.wait_ready()

    # b's chain is intact, just shorter; the tree it kept says entries are gone
    for viewer in (a, c):
        rep = viewer.get_ok("/api/v1/verify?scope=cluster")
        assert rep["ok"] is False
        mine = [v for v in rep["violations"] if v["node"] == "b"]
        assert any(v["seq_to"] >= last and "cannot answer" in v["detail"] for v in mine), rep["violations"]
        assert all(v["node"] == "b" for v in rep["violations"]), rep["violations"]
        assert rep["nodes"]["b"]["ok"] is False
        assert rep["nodes"]["a"]["ok"] is True and rep["nodes"]["c"]["ok"] is True

    # the attacker drops the tree too: b builds a smaller one, which its witnesses refuse
    assert b.stop() == 0
    _drop_tree(b.data_dir)
    b.start()
    b.wait_ready()
    for w in (a, c):
        refused = _refusals(w, "b")
        assert refused and refused[0]["reason"] == "rollback" and refused[0]["cosigned_size"] >= last, refused
        assert refused[0]["size"] < last
    deadline = time.monotonic() + 20
    while True:
        me = next(r for r in b.get_ok("/api/v1/cluster")["nodes"] if r["node"] == "b")
        if (me["last_checkpoint"] or {}).get("size", last) < last or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert me["last_checkpoint"]["cosigned_by"] == [], me
    for viewer in (a, c):
        rep = viewer.get_ok("/api/v1/verify?scope=cluster")
        assert rep["ok"] is False
        trunc = [v for v in rep["violations"] if v["kind"] == "witness_truncated"]
        assert trunc and all(v["node"] == "b" and v["seq_from"] < last <= v["seq_to"] for v in trunc), trunc
        # each witness's refusals, and the check of the tree each cosigned last
        assert any(v["detail"].startswith("a refused") for v in trunc), trunc
        assert any(v["detail"].startswith("c refused") for v in trunc), trunc


def test_witness_catches_history_rewritten_with_the_node_key(make_cluster):
    cl = make_cluster(("a", "b", "c"), checkpoint_interval=1)
    a, b, c = cl["a"], cl["b"], cl["c"]
    res = b.post_events(make_events(20, "evidence"))
    target = seq_of(res["first_id"]) + 3
    _wait_cosigned(a, "b", seq_of(res["last_id"]))
    _wait_cosigned(c, "b", seq_of(res["last_id"]))
    assert b.stop() == 0
    rewrite_entry(b.data_dir, target, user="mallory")
    _drop_tree(b.data_dir)
    b.start()
    b.wait_ready()

    # the forgery is perfect as far as b's own key and chain go
    own = b.get_ok("/api/v1/verify")
    assert own["ok"] is True and own["violations"] == [] and own["entries_checked"] >= target, own
    forged = b.get_ok(q("/api/v1/audit-log", node="b", user="mallory"))["events"]
    assert [(e["seq"], e["integrity"]) for e in forged] == [(target, "ok")]

    # b's next checkpoint does not extend what its witnesses cosigned: refused, recorded
    for w in (a, c):
        refused = _refusals(w, "b")
        assert refused and refused[0]["reason"] == "inconsistent", refused
    rep = a.get_ok("/api/v1/verify?scope=cluster")
    assert rep["ok"] is False
    mism = [v for v in rep["violations"] if v["kind"] == "witness_mismatch"]
    assert mism and all(v["node"] == "b" and v["seq_from"] <= target <= v["seq_to"] for v in mism), rep["violations"]
    assert any("history rewritten" in v["detail"] for v in mism), mism
    assert any(v["detail"].startswith("c refused") for v in mism) and any(
        v["detail"].startswith("a refused") for v in mism
    )
    assert not any(v["kind"] == "witness_truncated" for v in rep["violations"])
    assert rep["nodes"]["b"]["ok"] is False and rep["nodes"]["c"]["ok"] is True


def test_witness_accepts_a_legitimate_retention_drop(make_cluster):
    cl = make_cluster([NodeSpec("a"), NodeSpec("b", settings={"segment_max_bytes": 4096})], checkpoint_interval=1)
    a, b = cl["a"], cl["b"]
    last = 0
    for i in range(6):
        last = seq_of(b.post_events(make_events(50, "old", start=50 * i))["last_id"])
    _wait_cosigned(a, "b", last)
    assert b.stop() == 0
    out = b.run("retention", "run", "--as-of", "2100-01-01").stdout
    m = re.search(r"dropped (\d+) segment", out)
    assert m and int(m.group(1)) >= 3, out
    b.start()
    b.wait_ready()
    purge = b.get_ok(q("/api/v1/audit-log", node="b", action="audit.retention_purge"))["events"]
    assert len(purge) == 1
    first_kept = purge[0]["details"]["seq_to"] + 1
    # a goes on cosigning b's trees past the drop: each extends the last, dropped part and all
    _wait_cosigned(a, "b", max(first_kept, last) + 1)
    assert _refusals(a, "b", timeout=0) == []

    own = b.get_ok("/api/v1/verify")
    assert own["ok"] is True, own
    rep = a.get_ok("/api/v1/verify?scope=cluster")
    assert rep["violations"] == [] and rep["ok"] is True, rep
    assert rep["nodes"] == {"a": {"status": "ok", "ok": True}, "b": {"status": "ok", "ok": True}}


def test_cluster_status_membership_and_retention_mismatch(make_cluster):
    cl = make_cluster(
        [NodeSpec("a"), NodeSpec("b"), NodeSpec("c", settings={"retention_days": 400})], checkpoint_interval=1
    )
    a, b, c = cl["a"], cl["b"], cl["c"]
    deadline = time.monotonic() + 20
    while True:
        body = a.get_ok("/api/v1/cluster")
        rows = {r["node"]: r for r in body["nodes"]}
        if (
            all(r.get("last_checkpoint") and len(r["last_checkpoint"]["cosigned_by"]) == 2 for r in rows.values())
            or time.monotonic() > deadline
        ):
            break
        time.sleep(0.2)
    assert set(rows) == {"a", "b", "c"} and rows["a"]["self"] is True
    for name, r in rows.items():
        assert r["status"] == "ok" and isinstance(r["head_seq"], int) and r["head_seq"] >= 1, r
        cp = r["last_checkpoint"]
        assert cp and 1 <= cp["size"] < r["head_seq"] and len(cp["root"]) == 64, r
        assert cp["cosigned_by"] == sorted(set("abc") - {name}), r
    assert body["retention_consistent"] is False
    assert rows["c"]["retention_days"] == 400 and rows["c"].get("retention_mismatch") is True
    assert rows["a"]["retention_days"] == 365
    assert "retention_mismatch" not in rows["a"] and "retention_mismatch" not in rows["b"]  # only the odd one out

    # membership: each node recorded its peers joining, once, on first start
    def joins(node):
        page = node.get_ok(q("/api/v1/audit-log", node=node.name, action="cluster.node_join"))
        return [(e["user"], e["target"]) for e in page["events"]]

    for node in (a, b, c):
        assert joins(node) == [("system", p) for p in sorted(set("abc") - {node.name})]
    # a members file written by hand (as earlier versions kept one) changes nothing:
    # the known peers are what b's own join/leave entries say
    (b.data_dir / "state" / "cluster_members.json").write_text('{"peers": ["a", "zz"]}')
    b.restart()
    assert joins(b) == [("system", "a"), ("system", "c")]
    leaves = b.get_ok(q("/api/v1/audit-log", node="b", action="cluster.node_leave"))["events"]
    assert leaves == [] and not (b.data_dir / "state" / "cluster_members.json").exists()

    c.kill()
    body, took = timed(a.get_ok, "/api/v1/cluster")
    assert took < BOUND
    rows = {r["node"]: r for r in body["nodes"]}
    assert rows["c"]["status"] == "unreachable" and rows["c"]["error"]
    assert rows["b"]["status"] == "ok" and rows["a"]["status"] == "ok"
    assert_alive(a)
