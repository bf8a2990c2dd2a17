"""Streamed NDJSON bodies (query.http.chunked.PartsWriter) on a real server: the chunk
framing written by hand is exact (a keep-alive connection carries the next request),
HTTP/1.0 clients get the same lines without chunking, a slow reader still gets every
line, and a reader that hangs up mid-stream leaves the server healthy."""

from __future__ import annotations

import http.client
import json
import socket
import time

import pytest
from helpers_engine import served_log
from helpers_http import ServeProcess

N = 6000  # several merge rounds and line-file blocks


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bodies")
    data, cfg, key = served_log(tmp, "n", "", n=N)
    srv = ServeProcess(data, config=cfg)
    try:
        srv.wait_ready()
        yield srv, key
    finally:
        srv.terminate()


def _lines(body: bytes) -> list[dict]:
    return [json.loads(x) for x in body.splitlines()]


def _get(conn: http.client.HTTPConnection, path: str, key: str) -> tuple[int, dict, bytes]:
    conn.request("GET", path, headers={"Authorization": f"Bearer {key}"})
    r = conn.getresponse()
    return r.status, dict(r.getheaders()), r.read()


@pytest.mark.parametrize("order", ["asc", "desc"])
def test_chunked_body_is_exact_and_the_connection_stays_usable(server, order):
    srv, key = server
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=30)
    try:
        for _ in range(2):  # the second answer: lines kept in line files
            status, headers, body = _get(conn, f"/api/v1/audit-log?format=ndjson&order={order}", key)
            assert status == 200 and headers.get("Transfer-Encoding") == "chunked"
            events = _lines(body)
            assert len(events) >= N
            seqs = [e["seq"] for e in events]
            assert seqs == sorted(seqs, reverse=(order == "desc"))
            assert all(e["integrity"] == "ok" for e in events)
            # the same connection answers again: the last chunk and the terminator were right
            status, _, page = _get(conn, "/api/v1/audit-log?limit=3", key)
            assert status == 200 and len(json.loads(page)["events"]) == 3
    finally:
        conn.close()


def test_http_1_0_gets_the_same_lines_without_chunking(server):
    srv, key = server
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=30)
    try:
        _, _, chunked = _get(conn, "/api/v1/audit-log?format=ndjson", key)
    finally:
        conn.close()
    with socket.create_connection(("127.0.0.1", srv.port), timeout=30) as s:
        s.sendall(
            b"GET /api/v1/audit-log?format=ndjson HTTP/1.0\r\nAuthorization: Bearer " + key.encode() + b"\r\n\r\n"
        )
        raw = b""
        while chunk := s.recv(1 << 16):
            raw += chunk
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 200") or head.startswith(b"HTTP/1.1 200")
    assert b"chunked" not in head.lower()
    # api_key_used may add one entry between the two reads: compare what both hold
    a, b = _lines(chunked), _lines(body)
    assert len(b) >= N and a[:N] == b[:N]


def test_a_slow_reader_gets_every_line(server):
    srv, key = server
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=30)
    try:
        conn.request("GET", "/api/v1/audit-log?format=ndjson", headers={"Authorization": f"Bearer {key}"})
        r = conn.getresponse()
        parts = []
        while part := r.read(32 * 1024):
            parts.append(part)
            time.sleep(0.002)  # the server must wait for the socket, not drop lines
        events = _lines(b"".join(parts))
    finally:
        conn.close()
    assert len(events) >= N
    assert [e["seq"] for e in events] == sorted(e["seq"] for e in events)


@pytest.mark.parametrize(
    "path", ["/api/v1/audit-log?format=ndjson", "/api/v1/audit-log?format=ecs", "/api/v1/audit-log/export.csv"]
)
def test_a_reader_hanging_up_mid_stream_leaves_the_server_healthy(server, path):
    srv, key = server
    _, _, before = srv.request("/api/v1/audit-log?action=audit.export&limit=1000", key)
    for _ in range(3):
        with socket.create_connection(("127.0.0.1", srv.port), timeout=30) as s:
            s.sendall(
                f"GET {path} HTTP/1.1\r\nHost: x\r\n".encode() + b"Authorization: Bearer " + key.encode() + b"\r\n\r\n"
            )
            assert s.recv(4096).startswith(b"HTTP/1.1 200")
        # closed after the first bytes: the server's scan and writes stop on their own
    status, _, body = srv.request("/api/v1/audit-log?format=ndjson&limit=5", key)
    assert status == 200 and len(body.splitlines()) == 5
    assert srv.proc.poll() is None
    assert "Traceback" not in srv.stderr() and "unhandled error" not in srv.stderr()
    if path.endswith(".csv"):
        # an export cut short by the client is still audited, with the rows it sent
        deadline = time.monotonic() + 10
        while True:
            _, page = srv.json("/api/v1/audit-log?action=audit.export&limit=1000", key)
            if len(page["events"]) >= len(json.loads(before)["events"]) + 3 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        exports = page["events"][-3:]
        assert len(page["events"]) == len(json.loads(before)["events"]) + 3
        assert all(e["details"]["rows"] < N for e in exports)
