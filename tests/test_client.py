"""ingest.client.AuditClient against a real ``auditlog serve`` (subprocess, loopback).

Batching, retry across a server restart, retry across a dropped response (a tiny
TCP proxy that forwards a request and then hangs up before relaying the answer),
idempotency keys that survive a restart and a SIGKILL mid-stream, and the raise/buffer choice.  Every
check of "no event lost, none appended twice" uses a unique ``details.n`` per event.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from helpers_http import free_port

from auditlog.ingest.client import AuditClient, BatchRejectedError, ClientClosedError, LogUnavailableError
from auditlog.ingest.errors import InvalidEventError
from auditlog.ingest.idempotency import IdempotencyCache

AUDITLOG = str(Path(sys.executable).with_name("auditlog"))
ACTION = "custom.client_test"


# --------------------------------------------------------------------------- helpers


def run_cli(data: Path, *args: str) -> str:
    p = subprocess.run([AUDITLOG, "--data-dir", str(data), *args], capture_output=True, text=True, timeout=30)
    assert p.returncode == 0, p.stderr
    return p.stdout


class Server:
    """One node: its data dir, a writer and a reader key, and a restartable ``serve``."""

    def __init__(self, tmp_path: Path):
        self.tmp = tmp_path
        self.data = tmp_path / "data"
        run_cli(self.data, "init", "--node-id", "t1")
        self.writer_key = (
            run_cli(self.data, "apikey", "create", "--role", "writer", "--name", "svc").strip().splitlines()[-1]
        )
        self.reader_key = (
            run_cli(self.data, "apikey", "create", "--role", "reader", "--name", "soc").strip().splitlines()[-1]
        )
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.starts += 1
        self._err = open(self.tmp / f"serve-{self.starts}.log", "wb")
        self.proc = subprocess.Popen(
            [AUDITLOG, "--data-dir", str(self.data), "serve", "--listen", f"127.0.0.1:{self.port}"],
            stdout=subprocess.DEVNULL,
            stderr=self._err,
        )
        deadline = time.monotonic() + 15
        while True:
            if self.proc.poll() is not None:
                self._err.close()
                raise AssertionError("serve exited: " + (self.tmp / f"serve-{self.starts}.log").read_text())
            try:
                status, _, _ = self.request("GET", "/healthz")
                if status == 200:
                    return
            except OSError:
                pass
            assert time.monotonic() < deadline, "server did not come up"
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:  # pragma: no cover
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None
        self._err.close()

    def request(
        self, method: str, path: str, body: bytes | None = None, headers: dict | None = None, key: str | None = None
    ):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            h = dict(headers or {})
            if key:
                h["Authorization"] = f"Bearer {key}"
            conn.request(method, path, body=body, headers=h)
            r = conn.getresponse()
            return r.status, dict(r.headers), r.read()
        finally:
            conn.close()

    def head_seq(self) -> int:
        status, _, body = self.request("GET", "/api/v1/cluster", key=self.reader_key)
        assert status == 200, body
        return json.loads(body)["nodes"][0]["head_seq"]

    def posts_201(self) -> int:
        status, _, body = self.request("GET", "/metrics")
        assert status == 200
        for line in body.decode().splitlines():
            if line.startswith('auditlog_http_requests_total{route="/api/v1/events",status="201"}'):
                return int(float(line.rsplit(" ", 1)[1]))
        return 0

    def numbers_http(self) -> list[int]:
        status, _, body = self.request("GET", f"/api/v1/audit-log?action={ACTION}&format=ndjson", key=self.reader_key)
        assert status == 200, body
        return [json.loads(line)["details"]["n"] for line in body.decode().splitlines() if line]

    def numbers_cli(self) -> list[int]:
        """After ``stop()``: what the data dir holds, read by ``auditlog query``."""
        out = run_cli(self.data, "query", "--format", "ndjson", "--action", ACTION)
        return [json.loads(line)["details"]["n"] for line in out.splitlines() if line]


@pytest.fixture
def server(tmp_path):
    s = Server(tmp_path)
    yield s
    s.stop()


def assert_exactly_once(numbers: list[int], n: int) -> None:
    dupes = sorted({x for x in numbers if numbers.count(x) > 1}) if len(numbers) != len(set(numbers)) else []
    missing = sorted(set(range(n)) - set(numbers))
    assert not dupes and not missing and len(numbers) == n, (
        f"{len(numbers)} entries for {n} events; duplicated {dupes[:20]}, missing {missing[:20]}"
    )


def read_message(f) -> bytes | None:
    """One HTTP/1.1 message (head + Content-Length body) from a socket file; None at EOF."""
    head = b""
    while True:
        line = f.readline(65537)
        if not line:
            return None
        head += line
        if line in (b"\r\n", b"\n"):
            break
    length = 0
    for h in head.split(b"\r\n")[1:]:
        name, _, value = h.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
        assert not (name.strip().lower() == b"transfer-encoding"), "proxy handles Content-Length only"
    body = f.read(length) if length else b""
    if len(body) < length:
        return None
    return head + body


class DroppingProxy:
    """Forwards each request to the server; for the first ``drops`` batches (distinct
    Idempotency-Keys) it waits for the server's complete answer to their first POST,
    then closes the client's connection without relaying it (the batch is in the
    log, the client never hears so).  Retries of those batches go through."""

    def __init__(self, upstream_port: int, drops: int = 0, unavailable: int = 0):
        self.upstream = upstream_port
        self.drops_left = drops
        #: answer this many event POSTs with 503 + Retry-After: 1 without forwarding them
        self.unavailable_left = unavailable
        self.answered_503 = 0
        self.dropped = 0
        self.dropped_keys: set[bytes] = set()
        self.replays = 0
        self.lock = threading.Lock()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.1)
        self.port = self.listener.getsockname()[1]
        self.stopping = False
        self.socks: list[socket.socket] = []
        self.threads: list[threading.Thread] = []
        t = threading.Thread(target=self._accept, daemon=True)
        t.start()
        self.threads.append(t)

    def _accept(self) -> None:
        while not self.stopping:
            try:
                c, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            c.settimeout(None)
            with self.lock:
                self.socks.append(c)
            t = threading.Thread(target=self._handle, args=(c,), daemon=True)
            t.start()
            self.threads.append(t)

    def _handle(self, c: socket.socket) -> None:
        up = cf = uf = None
        try:
            up = socket.create_connection(("127.0.0.1", self.upstream), timeout=10)
            with self.lock:
                self.socks.append(up)
            cf, uf = c.makefile("rb"), up.makefile("rb")
            while True:
                req = read_message(cf)
                if req is None:
                    return
                with self.lock:
                    busy = req.startswith(b"POST /api/v1/events") and self.unavailable_left > 0
                    if busy:
                        self.unavailable_left -= 1
                        self.answered_503 += 1
                if busy:
                    body = b'{"error":{"status":503,"message":"busy"}}'
                    c.sendall(
                        b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                        b"Retry-After: 1\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
                    )
                    continue
                up.sendall(req)
                resp = read_message(uf)
                if resp is None:
                    return
                head = resp.split(b"\r\n\r\n", 1)[0].lower()
                key = next(
                    (
                        h.split(b":", 1)[1].strip()
                        for h in req.split(b"\r\n\r\n", 1)[0].split(b"\r\n")
                        if h.lower().startswith(b"idempotency-key:")
                    ),
                    None,
                )
                with self.lock:
                    drop = (
                        req.startswith(b"POST /api/v1/events")
                        and key is not None
                        and self.drops_left > 0
                        and key not in self.dropped_keys
                    )
                    if drop:
                        self.drops_left -= 1
                        self.dropped += 1
                        self.dropped_keys.add(key)
                    if b"\r\nidempotent-replay: true" in head:
                        self.replays += 1
                if drop:
                    return
                c.sendall(resp)
        except OSError:
            return
        finally:
            for f in (cf, uf):
                if f is not None:
                    f.close()
            for s in (c, up):
                if s is not None:
                    s.close()

    def close(self) -> None:
        self.stopping = True
        with self.lock:
            socks = list(self.socks)
        for s in socks:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for t in self.threads:
            t.join(5)
        self.listener.close()


# --------------------------------------------------------------------------- tests


def test_batching_few_posts_every_event_once(server):
    server.start()
    n = 1000
    with AuditClient(server.url, server.writer_key, batch_size=100, flush_interval=5.0) as c:
        for i in range(n):
            c.log("svc", ACTION, target=f"msg-{i}", ip="192.0.2.10", details={"n": i})
        c.flush(20)
        assert c.pending == 0
        assert c.stats["acknowledged"] == n
        assert c.stats["batches"] == 10  # 10 full batches, none sent early
    assert server.posts_201() == 10
    assert_exactly_once(server.numbers_http(), n)


def test_local_validation_and_rejected_batch(server):
    server.start()
    c = AuditClient(server.url, server.reader_key, batch_size=10, flush_interval=0.01)
    try:
        with pytest.raises(InvalidEventError):
            c.log("svc", "Not An Action")
        with pytest.raises(InvalidEventError):
            c.log("svc", ACTION, colour="red")
        assert c.pending == 0
        for i in range(3):
            c.log("svc", ACTION, details={"n": i})
        with pytest.raises(BatchRejectedError) as ei:
            c.flush(10)
        assert ei.value.status == 403
        assert len(c.rejected) == 1 and c.rejected[0].status == 403
        assert [e["details"]["n"] for e in c.rejected[0].events] == [0, 1, 2]
        c.flush(1)  # the error is raised once
    finally:
        c.close(5)
    with pytest.raises(ClientClosedError):
        c.log("svc", ACTION)
    # append_now: a synchronous, durable ack of one batch
    with AuditClient(server.url, server.writer_key) as w:
        ack = w.append_now([{"user": "svc", "action": ACTION, "details": {"n": i}} for i in range(4)])
    assert ack["appended"] == 4 and ack["first_id"].startswith("t1:") and ack["last_id"].startswith("t1:")
    assert_exactly_once(server.numbers_http(), 4)


def test_retry_across_server_restart(server):
    server.start()
    c = AuditClient(
        server.url,
        server.writer_key,
        batch_size=50,
        flush_interval=0.05,
        on_unavailable="buffer",
        retry_deadline=2.0,
        backoff_max=0.3,
        timeout=5,
    )
    logged = 0
    enough = threading.Event()
    errors: list[BaseException] = []

    def produce():
        nonlocal logged
        try:
            while not enough.is_set():
                c.log("svc", ACTION, details={"n": logged})
                logged += 1
                if logged % 20 == 0:
                    time.sleep(0.02)
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    def logged_past(mark: int, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while logged < mark and not errors:
            assert time.monotonic() < deadline, f"the producer stalled at {logged} event(s)"
            time.sleep(0.01)

    # The producer never stops: the server goes down and comes back under it, and
    # each phase waits for a number of events, not for a stretch of wall time.
    t = threading.Thread(target=produce)
    t.start()
    try:
        logged_past(300)
        server.stop()  # SIGTERM while the client keeps logging
        logged_past(logged + 300)  # logged while nothing listens
        assert not errors, errors
        server.start()  # same port, same data dir
        logged_past(logged + 300)
    finally:
        enough.set()
        t.join(30)
    assert not errors, errors
    n = logged
    try:
        c.flush(30)
    finally:
        c.close(10)
    assert c.stats["retries"] > 0, "the client never saw the outage"
    assert c.stats["acknowledged"] == n
    server.stop()
    assert_exactly_once(server.numbers_cli(), n)


def test_retry_across_dropped_response(server):
    server.start()
    proxy = DroppingProxy(server.port, drops=3)
    n = 400
    try:
        with AuditClient(
            f"http://127.0.0.1:{proxy.port}", server.writer_key, batch_size=50, flush_interval=0.05, backoff_max=0.2
        ) as c:
            for i in range(n):
                c.log("svc", ACTION, details={"n": i})
            c.flush(30)
            stats = dict(c.stats)
    finally:
        proxy.close()
    assert proxy.dropped == 3
    assert proxy.replays == 3  # each lost answer was replayed, not re-appended
    assert stats["replays"] == 3 and stats["acknowledged"] == n
    assert_exactly_once(server.numbers_http(), n)


def test_retry_after_on_503_is_honoured(server):
    server.start()
    proxy = DroppingProxy(server.port, unavailable=1)
    try:
        with AuditClient(
            f"http://127.0.0.1:{proxy.port}",
            server.writer_key,
            batch_size=50,
            flush_interval=0.01,
            backoff_initial=0.01,
        ) as c:
            t0 = time.monotonic()
            for i in range(50):
                c.log("svc", ACTION, details={"n": i})
            c.flush(10)
            elapsed = time.monotonic() - t0
            assert c.stats["retries"] == 1 and c.stats["batches"] == 1
    finally:
        proxy.close()
    assert proxy.answered_503 == 1
    assert elapsed >= 1.0  # waited as told, not the 10 ms backoff
    assert_exactly_once(server.numbers_http(), 50)


def test_idempotency_key_survives_restart(server):
    server.start()
    batch = json.dumps([{"user": "svc", "action": ACTION, "details": {"n": i}} for i in range(5)]).encode()
    hdrs = {"Content-Type": "application/json", "Idempotency-Key": "batch-0001"}
    status, _, body1 = server.request("POST", "/api/v1/events", batch, hdrs, key=server.writer_key)
    assert status == 201, body1
    first = json.loads(body1)
    assert (server.data / "state" / IdempotencyCache.FILE_NAME).exists()
    server.stop()
    server.start()
    head = server.head_seq()
    status, headers, body2 = server.request("POST", "/api/v1/events", batch, hdrs, key=server.writer_key)
    assert status == 200, body2
    assert headers.get("Idempotent-Replay") == "true"
    assert json.loads(body2) == first
    assert server.head_seq() == head  # nothing appended by the replay
    assert_exactly_once(server.numbers_http(), 5)
    # the key is scoped to the API key: the reader cannot even post, and a new key appends
    status, _, _ = server.request(
        "POST", "/api/v1/events", batch, dict(hdrs, **{"Idempotency-Key": "batch-0002"}), key=server.writer_key
    )
    assert status == 201


def test_idempotency_file_compaction_and_torn_line(tmp_path):
    from auditlog.engine.chain import NodeKey
    from auditlog.engine.state import StateSeal

    seal = StateSeal(NodeKey(os.urandom(32)), "t1")
    path = tmp_path / "state" / IdempotencyCache.FILE_NAME
    c = IdempotencyCache(3, path, seal=seal)
    for i in range(20):
        c.put_many([(f"k{i}", f"json:{i}", {"appended": 1, "first_id": f"t1:{i}", "last_id": f"t1:{i}"})])
        assert len(path.read_bytes().splitlines()) <= 6
    c.close()
    with open(path, "ab") as f:
        f.write(seal.seal("idempotency", {"k": "torn", "fp": "json:t", "v": {}})[:40])  # a crash mid-write
    c2 = IdempotencyCache(3, path, seal=seal)
    assert c2.rejected == 0  # a torn last line is no forgery
    assert c2.get("k19").answer == {"appended": 1, "first_id": "t1:19", "last_id": "t1:19"}
    assert c2.get("k19").fingerprint == "json:19"
    assert c2.get("k16") is None and c2.get("torn") is None and len(c2) == 3
    c2.put_many([("k20", "json:20", {"appended": 2})])
    c2.close()
    records, problems = seal.read_lines(path)  # rewritten: every line sealed, the torn one gone
    assert problems == [] and [r["k"] for r in records] == ["k18", "k19", "k20"]
    assert IdempotencyCache(3, path, seal=seal).get("k20").answer == {"appended": 2}
    assert oct(os.stat(path).st_mode & 0o777) == "0o600"


def test_raise_mode_fails_fast_when_down(tmp_path):
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    c = AuditClient(
        url,
        "alk_x_y",
        batch_size=5,
        max_queue=10,
        flush_interval=0.01,
        on_unavailable="raise",
        retry_deadline=30,
        backoff_max=0.1,
    )
    try:
        for i in range(10):
            c.log("svc", ACTION, details={"n": i})
        t0 = time.monotonic()
        with pytest.raises(LogUnavailableError, match="queue full"):
            c.log("svc", ACTION, details={"n": 10})
        assert time.monotonic() - t0 < 0.5
        with pytest.raises(LogUnavailableError):
            c.flush(0.2)
        assert c.pending == 10
    finally:
        with pytest.raises(LogUnavailableError, match="10 event"):
            c.close(0.2)
    # past the retry budget the log counts as unavailable even with room in the queue
    c = AuditClient(
        url,
        "alk_x_y",
        batch_size=5,
        max_queue=100,
        flush_interval=0.01,
        on_unavailable="raise",
        retry_deadline=0.3,
        backoff_max=0.1,
    )
    try:
        c.log("svc", ACTION, details={"n": 0})
        deadline = time.monotonic() + 5
        while c.unavailable is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert c.unavailable is not None
        t0 = time.monotonic()
        with pytest.raises(LogUnavailableError, match="unavailable"):
            c.log("svc", ACTION, details={"n": 1})
        assert time.monotonic() - t0 < 0.5
        with pytest.raises(LogUnavailableError):
            c.append_now([{"user": "svc", "action": ACTION}], timeout=0.3)
    finally:
        with pytest.raises(LogUnavailableError):
            c.close(0.1)


def test_buffer_mode_delivers_when_server_returns(server):
    # the server's keys exist, but it is not running yet
    c = AuditClient(
        server.url,
        server.writer_key,
        batch_size=20,
        max_queue=100,
        flush_interval=0.01,
        on_unavailable="buffer",
        block_timeout=0.3,
        retry_deadline=0.3,
        backoff_max=0.2,
    )
    try:
        for i in range(100):
            c.log("svc", ACTION, details={"n": i})  # accepted while the log is down
        t0 = time.monotonic()
        with pytest.raises(LogUnavailableError, match="queue full"):
            c.log("svc", ACTION, details={"n": 999})
        assert 0.25 <= time.monotonic() - t0 < 2
        deadline = time.monotonic() + 5
        while c.unavailable is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert c.unavailable is not None  # buffer mode: log() is not affected by that
        # a caller blocked on the full queue is let through once the server is back
        c.block_timeout = 30
        t = threading.Thread(target=lambda: [c.log("svc", ACTION, details={"n": i}) for i in range(100, 150)])
        t.start()
        time.sleep(0.2)
        assert t.is_alive()
        server.start()
        t.join(30)
        assert not t.is_alive()
        c.flush(30)
        assert c.unavailable is None
    finally:
        c.close(10)
    assert_exactly_once(server.numbers_http(), 150)


def test_exactly_once_across_a_sigkill_mid_stream(server):
    """Writers post keyed batches; the server is SIGKILLed mid-stream; after a restart
    every batch is sent again with its key.  Each event must be in the log exactly
    once, and every batch acknowledged before the crash must come back as a replay."""
    server.start()
    per, nbatches = 20, 400
    batches = [
        json.dumps([{"user": "svc", "action": ACTION, "details": {"n": b * per + i}} for i in range(per)]).encode()
        for b in range(nbatches)
    ]
    acked: dict[int, dict] = {}
    lock = threading.Lock()
    nxt = iter(range(nbatches))

    def post(b: int):
        return server.request(
            "POST",
            "/api/v1/events",
            batches[b],
            {"Content-Type": "application/json", "Idempotency-Key": f"crash-{b}"},
            key=server.writer_key,
        )

    def writer():
        while True:
            with lock:
                b = next(nxt, None)
            if b is None:
                return
            try:
                status, _, body = post(b)
            except OSError:
                return  # the server is gone
            if status == 201:
                with lock:
                    acked[b] = json.loads(body)

    threads = [threading.Thread(target=writer) for _ in range(8)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 30
    while len(acked) < nbatches // 4 and time.monotonic() < deadline:
        time.sleep(0.005)
    server.proc.kill()  # SIGKILL, mid-stream
    for t in threads:
        t.join(30)
    server.proc.wait(10)
    server.proc = None
    server._err.close()
    assert nbatches // 4 <= len(acked) < nbatches, len(acked)

    server.start()
    replays = 0
    for b in range(nbatches):
        status, headers, body = post(b)
        assert status in (200, 201), body
        if b in acked:
            assert status == 200 and headers.get("Idempotent-Replay") == "true", (b, status)
            assert json.loads(body) == acked[b]
            replays += 1
    assert replays == len(acked)
    assert_exactly_once(server.numbers_http(), per * nbatches)
