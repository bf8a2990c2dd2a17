"""Shared helpers for the HTTP suites (``tests/test_http_*.py``, ``test_serve_e2e.py``).

A plain module (``tests/`` is on ``sys.path``, see conftest).  Everything is
real: requests go over sockets to the aiohttp app (pytest-aiohttp's test
server) or to an ``auditlog serve`` subprocess; data dirs are on disk.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from auditlog.bench.servers import free_ports, wait_serving
from auditlog.query.node import RunningNode

ROOT = Path(__file__).resolve().parents[1]
AUDITLOG = str(ROOT / ".venv" / "bin" / "auditlog")

#: The keys of an error body (one shape for every failure, SPEC section 7).
ERROR_KEYS = {"status", "message"}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


#: entries ``make_keys`` appends: API keys are the log's own entries (four creates, one revoke)
KEY_ENTRIES = 5


def make_keys(service: RunningNode) -> dict[str, str]:
    """One key per role, plus a revoked admin key: {"writer"|"reader"|"admin"|"revoked": token}.

    Their ``audit.api_key_create``/``revoke`` entries are seqs 1..KEY_ENTRIES of a new log."""
    keys = {role: service.keys.create(f"test-{role}", role)[1] for role in ("writer", "reader", "admin")}
    rec, token = service.keys.create("test-revoked", "admin")
    service.keys.revoke(rec.id)
    keys["revoked"] = token
    return keys


def ev(i: int = 0, **kw) -> dict:
    """A valid client event; details.n = i is the marker tests look for."""
    e = {
        "user": "alice",
        "action": "config.filter_update",
        "target": f"filter-{i}",
        "domain": "example.org",
        "ip": "192.0.2.10",
        "details": {"n": i},
    }
    e.update(kw)
    return e


def head_seq(service: RunningNode) -> int:
    return service.log.head()[0]


async def assert_error(resp, status: int, *needles: str) -> dict:
    """The response is the JSON error shape with ``status``; its message names every needle."""
    assert resp.status == status, (resp.status, await resp.text())
    assert resp.content_type == "application/json", resp.content_type
    body = await resp.json()
    assert set(body) == {"error"}, body
    err = body["error"]
    assert ERROR_KEYS <= set(err), err
    assert err["status"] == status
    assert isinstance(err["message"], str) and err["message"]
    for n in needles:
        assert n.lower() in err["message"].lower(), (n, err["message"])
    return err


async def post_events(client, token: str, events, **kw):
    return await client.post("/api/v1/events", json=events, headers=bearer(token), **kw)


async def query(client, token: str, **params) -> dict:
    """One JSON page of GET /api/v1/audit-log (asserts 200)."""
    resp = await client.get("/api/v1/audit-log", params=params, headers=bearer(token))
    assert resp.status == 200, (resp.status, await resp.text())
    return await resp.json()


async def query_all(client, token: str, **params) -> list[dict]:
    """Every entry matching ``params`` (following next_cursor)."""
    out: list[dict] = []
    params = {"limit": "10000", **params}
    while True:
        page = await query(client, token, **params)
        out += page["events"]
        if page["next_cursor"] is None:
            return out
        params["cursor"] = page["next_cursor"]


def ids(events) -> list[str]:
    return [e["id"] for e in events]


def seqs(events) -> list[int]:
    return [e["seq"] for e in events]


# -- a real ``auditlog serve`` process -----------------------------------------------


def free_port() -> int:
    """A loopback port nothing listens on right now."""
    return free_ports(1)[0]


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("AUDITLOG_")}


def run_cli(data_dir: Path, *args: str, timeout: float = 120, input: str | None = None):
    return subprocess.run(
        [AUDITLOG, "--data-dir", str(data_dir), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        input=input,
        env=clean_env(),
    )


def http_request(
    url: str,
    token: str | None = None,
    *,
    method: str = "GET",
    body: bytes | None = None,
    headers: dict | None = None,
    timeout: float = 30,
):
    """(status, headers, body bytes) of one request over urllib (errors are answers too)."""
    h = dict(headers or {})
    if token is not None:
        h.update(bearer(token))
    req = urllib.request.Request(url, data=body, method=method, headers=h)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        with e:
            return e.code, e.headers, e.read()


class ServeProcess:
    """``auditlog --data-dir D serve --listen 127.0.0.1:PORT [args]`` in a subprocess.

    stdout lines are collected by a thread (the demo reader key is the last
    one); stderr goes to a file next to the data dir.
    """

    def __init__(self, data_dir: Path, *args: str, port: int | None = None, config: Path | None = None):
        self.data_dir = Path(data_dir)
        self.port = port or free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.stderr_path = self.data_dir.parent / f"serve-{self.port}.stderr"
        self._stderr = open(self.stderr_path, "wb")
        options = ["--config", str(config)] if config is not None else []
        self.proc = subprocess.Popen(
            [
                AUDITLOG,
                "--data-dir",
                str(self.data_dir),
                *options,
                "serve",
                "--listen",
                f"127.0.0.1:{self.port}",
                *args,
            ],
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            stdin=subprocess.DEVNULL,
            env=clean_env(),
        )
        self.stdout_lines: list[str] = []
        self._reader = threading.Thread(target=self._read_stdout, daemon=True)
        self._reader.start()

    def _read_stdout(self) -> None:
        for line in self.proc.stdout:
            self.stdout_lines.append(line.decode("utf-8", "replace").rstrip("\n"))

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stderr(self) -> str:
        if not self._stderr.closed:
            self._stderr.flush()
        return self.stderr_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = 30) -> None:
        why = wait_serving(self.proc, self.base, timeout=timeout)
        if why is not None:
            raise AssertionError(f"serve {why}: {self.stderr()}")

    def last_stdout_line(self, timeout: float = 5) -> str:
        deadline = time.monotonic() + timeout
        while not self.stdout_lines and time.monotonic() < deadline:
            time.sleep(0.02)
        assert self.stdout_lines, f"nothing on stdout; stderr: {self.stderr()}"
        return self.stdout_lines[-1]

    def request(
        self,
        path: str,
        token: str | None = None,
        *,
        method: str = "GET",
        body: bytes | None = None,
        headers: dict | None = None,
        timeout: float = 30,
    ):
        """(status, headers, body bytes) of one request (errors are answers too)."""
        return http_request(self.base + path, token, method=method, body=body, headers=headers, timeout=timeout)

    def json(self, path: str, token: str | None = None, **kw):
        status, _, body = self.request(path, token, **kw)
        return status, json.loads(body)

    def terminate(self, timeout: float = 15) -> int:
        """SIGTERM and wait; returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        finally:
            self.close()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._reader.join(5)
        if self.proc.stdout:
            self.proc.stdout.close()
        self._stderr.close()


def rss_kib(pid: int, field: str = "VmRSS") -> int:
    """Resident set size of a process (``VmRSS``, ``RssAnon``, ``RssFile``) from
    /proc/<pid>/status, in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for pid {pid}")
