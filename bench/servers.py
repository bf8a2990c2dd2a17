"""Real ``auditlog serve`` processes for the HTTP and cluster benchmarks.

The same approach as ``tests/helpers_cluster.py`` (which bench must not import):
everything goes through the product's command line.  A single node gets a
fresh data dir (``auditlog init``), a TOML config and a key
(``auditlog apikey create``, before ``serve`` owns the writer); a cluster also
gets a private CA and node certificates (``auditlog cluster ca-init`` /
``issue-cert --san 127.0.0.1``) and ``[cluster]`` / ``[[cluster.peers]]``
tables.  Servers listen on free loopback ports.

Profiling (bench only): with ``AUDITLOG_BENCH_PROFILE=DIR`` in the environment
of ``auditlog bench``, every server is started through
:mod:`bench.serve_profile` (cProfile of the main thread and of every other
thread, merged) and writes ``DIR/<label>-<pid>.pstats`` when it stops.  The
numbers of a profiled run are slower than a normal run's and say so
(``params.profiled``).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

PROFILE_ENV = "AUDITLOG_BENCH_PROFILE"
_ROOT = Path(__file__).resolve().parents[1]


def auditlog_cmd() -> list[str]:
    """The ``auditlog`` console script of this interpreter's environment."""
    exe = Path(sys.executable).parent / "auditlog"
    if exe.exists():
        return [str(exe)]
    found = shutil.which("auditlog")
    if found:
        return [found]
    return [sys.executable, "-m", "auditlog.cli.main"]


def clean_env() -> dict[str, str]:
    """The environment without AUDITLOG_* (data dir / config overrides), PYTHONPATH set."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUDITLOG_")}
    env["PYTHONPATH"] = str(_ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def profile_dir() -> str | None:
    return os.environ.get(PROFILE_ENV) or None


def wait_serving(proc: subprocess.Popen, base: str, peer_port: int | None = None, timeout: float = 60) -> str | None:
    """Poll until ``base``/healthz answers 200 (and ``peer_port``, if given, accepts
    connections).  None once it does; otherwise why not, for the caller's error."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return f"exited with {proc.returncode}"
        try:
            with urllib.request.urlopen(base + "/healthz", timeout=2) as r:
                healthy = r.status == 200
            if peer_port:
                with socket.create_connection(("127.0.0.1", peer_port), timeout=2):
                    pass
            if healthy:
                return None
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.05)
    return f"not ready after {timeout:g}s"


def terminate(proc: subprocess.Popen, timeout: float) -> bool:
    """SIGTERM and wait; SIGKILL if it outlives ``timeout``.  True if it ended by itself."""
    if proc.poll() is not None:
        return True
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
        return True
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)
        return False


def free_ports(n: int) -> list[int]:
    """``n`` distinct loopback ports nothing listens on (bound together, then released)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    p = subprocess.run(
        [*auditlog_cmd(), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=clean_env(),
        stdin=subprocess.DEVNULL,
    )
    if p.returncode != 0:
        raise RuntimeError(f"auditlog {' '.join(args)} exited {p.returncode}: {(p.stderr or p.stdout).strip()[-500:]}")
    return p


def proc_cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), seconds; 0.0 if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def proc_peak_rss_mb(pid: int) -> float | None:
    """VmHWM (peak resident set) of a live process, MB."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


class Server:
    """One node: data dir, config, keys, and its ``auditlog serve`` process."""

    def __init__(
        self, root: Path, node_id: str, http_port: int, *, fsync: str = "always", peer_port: int | None = None
    ):
        self.root = Path(root)
        self.node_id = node_id
        self.dir = self.root / node_id
        self.data_dir = self.dir / "data"
        self.config_path = self.dir / f"{node_id}.toml"
        self.http_port = http_port
        self.peer_port = peer_port
        self.fsync = fsync
        self.base = f"http://127.0.0.1:{http_port}"
        self.peer_url = f"https://127.0.0.1:{peer_port}" if peer_port else None
        self.keys: dict[str, str] = {}
        self.proc: subprocess.Popen | None = None
        self.stderr_path = self.dir / "serve.stderr"
        self._stderr = None
        self.peak_rss_mb: float | None = None
        self.profile_path: str | None = None

    def write_config(self, cluster_lines: list[str] = ()) -> None:
        lines = [
            f'node_id = "{self.node_id}"',
            f'fsync = "{self.fsync}"',
            "",
            "[server]",
            f'listen = "127.0.0.1:{self.http_port}"',
            *cluster_lines,
        ]
        self.dir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text("\n".join(lines) + "\n")

    def run(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
        return cli("--data-dir", str(self.data_dir), "--config", str(self.config_path), *args, timeout=timeout)

    def init(self) -> None:
        self.run("init", "--node-id", self.node_id)

    def new_key(self, role: str) -> str:
        out = self.run("apikey", "create", "--role", role, "--name", f"bench-{role}").stdout
        key = out.strip().splitlines()[-1]
        if not key.startswith("alk_"):
            raise RuntimeError(f"unexpected apikey create output: {out!r}")
        self.keys[role] = key
        return key

    # -- process -------------------------------------------------------------

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> None:
        self._stderr = open(self.stderr_path, "ab")
        args = ["--data-dir", str(self.data_dir), "--config", str(self.config_path), "serve"]
        prof = profile_dir()
        if prof:
            Path(prof).mkdir(parents=True, exist_ok=True)
            self.profile_path = str(Path(prof).resolve() / f"{self.root.name}-{self.node_id}")
            cmd = [sys.executable, "-m", "auditlog.bench.serve_profile", self.profile_path, *args]
        else:
            cmd = [*auditlog_cmd(), *args]
        self.proc = subprocess.Popen(
            cmd,
            stdout=subprocess.DEVNULL,
            stderr=self._stderr,
            stdin=subprocess.DEVNULL,
            env=clean_env(),
            cwd=str(_ROOT),
        )

    def launch(self, *roles: str) -> None:
        """Config, ``init``, a key for each of ``roles``, then ``serve``, ready."""
        self.write_config()
        self.init()
        for role in roles:
            self.new_key(role)
        self.start()
        self.wait_ready()

    def wait_ready(self, timeout: float = 120) -> None:
        """Until /healthz answers 200 (and the peer listener accepts, if any)."""
        why = wait_serving(self.proc, self.base, self.peer_port, timeout)
        if why is not None:
            raise RuntimeError(f"node {self.node_id} {why}: {self.stderr()[-800:]}")

    def note_rss(self) -> None:
        if self.running:
            v = proc_peak_rss_mb(self.pid)
            if v is not None:
                self.peak_rss_mb = v

    def stop(self, timeout: float = 60) -> None:
        """SIGTERM (a clean shutdown, which also writes a profile) and wait."""
        if self.proc is None:
            return
        self.note_rss()
        terminate(self.proc, timeout)
        self._close_stderr()

    def kill(self) -> None:
        """SIGKILL: the node vanishes without closing anything."""
        if self.proc is not None and self.proc.poll() is None:
            self.note_rss()
            self.proc.kill()
            self.proc.wait(10)
        self._close_stderr()

    def _close_stderr(self) -> None:
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None

    def stderr(self) -> str:
        try:
            return self.stderr_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def cpu_seconds(self) -> float:
        return proc_cpu_seconds(self.pid) if self.proc is not None else 0.0

    def get_json(self, path: str, role: str = "reader", timeout: float = 60) -> dict:
        req = urllib.request.Request(self.base + path, headers={"Authorization": f"Bearer {self.keys[role]}"})
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return json.loads(r.read())


def single_node(root: Path, *, role: str = "writer", fsync: str = "always", node_id: str = "bench-http") -> Server:
    """A fresh node (init, one ``role`` key), started and ready."""
    (port,) = free_ports(1)
    s = Server(root, node_id, port, fsync=fsync)
    try:
        s.launch(role)
    except BaseException:
        s.kill()
        raise
    return s


class Cluster:
    """N nodes of one private CA, every node a peer of every other (mTLS)."""

    def __init__(
        self,
        root: Path,
        names: list[str],
        *,
        peer_timeout: float = 2.0,
        checkpoint_interval: float = 3600.0,
        fsync: str = "always",
    ):
        self.root = Path(root)
        self.peer_timeout = peer_timeout
        self.checkpoint_interval = checkpoint_interval
        ports = free_ports(2 * len(names))
        self.nodes = [
            Server(self.root, n, ports[2 * i], fsync=fsync, peer_port=ports[2 * i + 1]) for i, n in enumerate(names)
        ]
        self.ca = self.root / "ca"
        self.tls = self.root / "tls"

    def __getitem__(self, i: int) -> Server:
        return self.nodes[i]

    def build(self) -> Cluster:
        """CA, certificates, configs and ``auditlog init`` of every node (not started)."""
        self.root.mkdir(parents=True, exist_ok=True)
        cli("cluster", "ca-init", "--out", str(self.ca))
        with ThreadPoolExecutor(max_workers=len(self.nodes)) as pool:
            list(
                pool.map(
                    lambda n: cli(
                        "cluster",
                        "issue-cert",
                        "--ca",
                        str(self.ca),
                        "--node",
                        n.node_id,
                        "--san",
                        "127.0.0.1",
                        "--out",
                        str(self.tls),
                    ),
                    self.nodes,
                )
            )
            for n in self.nodes:
                lines = [
                    "",
                    "[cluster]",
                    f'listen = "127.0.0.1:{n.peer_port}"',
                    f'ca = "{self.ca / "ca.pem"}"',
                    f'cert = "{self.tls / (n.node_id + ".pem")}"',
                    f'key = "{self.tls / (n.node_id + ".key")}"',
                    f"peer_timeout = {self.peer_timeout}",
                    f"checkpoint_interval = {self.checkpoint_interval}",
                ]
                for p in self.nodes:
                    if p is not n:
                        lines += ["", "[[cluster.peers]]", f'node = "{p.node_id}"', f'url = "{p.peer_url}"']
                n.write_config(lines)
            list(pool.map(lambda n: n.init(), self.nodes))
        return self

    def start(self) -> None:
        for n in self.nodes:
            n.start()
        for n in self.nodes:
            n.wait_ready()

    def close(self) -> None:
        for n in self.nodes:
            try:
                n.stop(timeout=30)
            except Exception:  # pragma: no cover - cleanup goes on
                n.kill()
