"""HTTP streaming destinations (``[http_stream]``): a real ``auditlog serve`` POSTs its
log as NDJSON batches to a real local HTTP receiver that checks the verification
token, fails for a while and recovers; every entry arrives (at least once, ``id``
for deduplication), the cursor survives a node restart, and a token file others can
read is refused."""

from __future__ import annotations

import json
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from helpers_http import run_cli
from test_syslog import Node, Poster, metric, setup_node

TOKEN = "s3cret-verification-token"


class Receiver:
    """A local HTTP receiver: records each accepted batch; answers 500 while ``failing``,
    401 to a wrong token."""

    def __init__(self):
        self.batches: list[list[dict]] = []
        self.refused = 0
        self.failing = False
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if self.headers.get("X-Auditlog-Token") != TOKEN:
                    self.send_response(401)
                elif outer.failing:
                    with outer.lock:
                        outer.refused += 1
                    self.send_response(500)
                else:
                    assert self.headers["Content-Type"] == "application/x-ndjson"
                    with outer.lock:
                        outer.batches.append([json.loads(x) for x in body.splitlines()])
                    self.send_response(204)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/ingest/audit"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def ids(self) -> list[str]:
        with self.lock:
            return [e["id"] for b in self.batches for e in b]

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


def _config(tmp_path, receiver, mode=0o600) -> str:
    tok = tmp_path / "stream.token"
    tok.write_text(TOKEN + "\n")
    os.chmod(tok, mode)
    return f'url = "{receiver.url}"\ntoken_file = "{tok}"\nbatch = 100\n'


def _with_stream(cfg, table: str) -> None:
    # setup_node writes a [syslog] table: this test wants [http_stream] alone
    text = cfg.read_text().split("[syslog]")[0]
    cfg.write_text(text + "[http_stream]\n" + table)


def _head(node, key) -> int:
    return node.json("/api/v1/cluster", key)[1]["nodes"][0]["head_seq"]


def _wait_all(receiver, head: int, timeout: float = 30) -> list[str]:
    deadline = time.monotonic() + timeout
    while True:
        ids = receiver.ids()
        if {f"gw1:{s}" for s in range(1, head + 1)} <= set(ids):
            return ids
        assert time.monotonic() < deadline, (len(set(ids)), head)
        time.sleep(0.1)


def _caught_up(node, key, head: int, timeout: float = 10) -> dict:
    # the receiver records a batch before it answers; the forwarder moves its cursor once
    # the answer reaches it
    deadline = time.monotonic() + timeout
    while True:
        st = node.json("/api/v1/cluster", key)[1]["nodes"][0]["http_stream"]
        if st["cursor_seq"] >= head:
            return st
        assert time.monotonic() < deadline, (st, head)
        time.sleep(0.05)


@pytest.mark.e2e
def test_every_entry_arrives_through_failures_and_a_node_restart(tmp_path, receiver):
    data, cfg, keys = setup_node(tmp_path, 'target = "udp://127.0.0.1:9"', 700)
    _with_stream(cfg, _config(tmp_path, receiver))
    node = Node(data, cfg)
    try:
        node.wait_ready()
        head = _head(node, keys["reader"])
        ids = _wait_all(receiver, head)
        assert len(ids) == len(set(ids)), "no failure yet: exactly once"
        assert all(len(b) <= 100 for b in receiver.batches)
        st = _caught_up(node, keys["reader"], head)
        assert st["target"] == receiver.url
        # the receiver fails for a while, events keep coming; then it recovers
        poster = Poster([node], keys["writer"]).start()
        try:
            time.sleep(0.5)
            receiver.failing = True
            deadline = time.monotonic() + 10
            # the receiver counts a refusal as it answers; the forwarder counts it once
            # the answer reaches it, so the metric is polled, not read once
            while (
                receiver.refused < 2
                or metric(node, "auditlog_http_stream_errors_total") < 2
                or metric(node, "auditlog_http_stream_lag_entries") <= 0
            ):
                assert time.monotonic() < deadline, "the forwarder did not retry, count its errors or report lag"
                time.sleep(0.05)
            receiver.failing = False
            time.sleep(0.5)
        finally:
            posted = poster.stop()
        assert posted > 0
        head = _head(node, keys["reader"])
        _wait_all(receiver, head, timeout=60)
        # a node restart: the cursor is durable, nothing is sent from the start again
        before = len(receiver.ids())
        assert node.terminate() == 0
        node = Node(data, cfg, port=node.port)
        node.wait_ready()
        time.sleep(1.5)
        head = _head(node, keys["reader"])
        ids = _wait_all(receiver, head)
        delivered = set(ids[:before])
        resent = [i for i in ids[before:] if i in delivered]
        assert len(resent) <= 100, len(resent)  # at most the one batch in flight at the stop
        assert ids.count("gw1:1") == 1
    finally:
        node.close()


@pytest.mark.e2e
def test_a_token_file_others_can_read_is_refused(tmp_path, receiver):
    data, cfg, keys = setup_node(tmp_path, 'target = "udp://127.0.0.1:9"', 0)
    _with_stream(cfg, _config(tmp_path, receiver, mode=0o644))
    r = run_cli(data, "--config", str(cfg), "serve", "--listen", "127.0.0.1:0")
    assert r.returncode == 2 and "readable by group or others" in r.stderr, r.stderr
    assert TOKEN not in r.stderr and "Traceback" not in r.stderr
