"""A real N-node ``auditlog`` cluster in a tmp dir, for ``tests/test_cluster.py``.

Everything goes through the product: the CA and the node certificates come
from ``auditlog cluster ca-init|issue-cert`` (``--san 127.0.0.1``), each node
gets its own data dir (``auditlog init``), its own TOML config (free ports,
``[cluster]`` with mTLS files and ``[[cluster.peers]]``) and a writer and a
reader key (``auditlog apikey create``, before ``serve`` owns the writer).
Nodes run as real ``auditlog serve`` subprocesses that a test can stop
(SIGTERM), kill (SIGKILL) and restart.

Also here: a fake peer that accepts TCP connections and never says a word
(``StalledPeer``), and the two attacks the witness must catch, done the way
an attacker holding the data dir (and its key) would: cutting a node's log
back at a frame boundary (``cut_tail_at_seq``) and rewriting an entry with the
node's own key, re-signing the chain after it (``rewrite_entry``).
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from helpers_http import AUDITLOG, bearer, clean_env, http_request

from auditlog.bench.servers import free_ports, terminate, wait_serving  # free_ports: re-exported for the tests

#: actions used for generated events (a mix of families for filter tests)
ACTIONS = (
    "config.filter_update",
    "config.domain_add",
    "auth.login",
    "auth.login_failed",
    "quarantine.release",
    "user.update",
)
USERS = ("alice", "bob", "carol", "dave")


def cli(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
    p = subprocess.run(
        [AUDITLOG, *args], capture_output=True, text=True, timeout=timeout, env=clean_env(), stdin=subprocess.DEVNULL
    )
    if check and p.returncode != 0:
        raise AssertionError(f"auditlog {' '.join(args)} exited {p.returncode}:\n{p.stdout}\n{p.stderr}")
    return p


def make_events(n: int, tag: str, start: int = 0) -> list[dict]:
    """``n`` valid events with varied users/actions; ``details.tag`` marks the batch."""
    out = []
    for i in range(start, start + n):
        action = ACTIONS[i % len(ACTIONS)]
        out.append(
            {
                "user": USERS[i % len(USERS)],
                "action": action,
                "target": f"t-{tag}-{i}",
                "domain": "example.org",
                "ip": f"192.0.2.{i % 250 + 1}",
                "success": action != "auth.login_failed",
                "details": {"tag": tag, "i": i},
            }
        )
    return out


def write_ndjson(path: Path, events) -> Path:
    with open(path, "w", encoding="utf-8") as f:
        for e in events:
            f.write(json.dumps(e, separators=(",", ":")) + "\n")
    return path


# -- one node --------------------------------------------------------------------------


@dataclass
class NodeSpec:
    name: str
    #: configured peers among the cluster's nodes (None: every other node of the same CA)
    peers: list[str] | None = None
    #: extra peers that are not cluster nodes (e.g. a stalled socket): node -> url
    extra_peers: dict[str, str] = field(default_factory=dict)
    #: the CA that issues this node's certificate: "main" (the cluster's) or "other"
    ca: str = "main"
    #: the CAs this node trusts (its ``[cluster] ca`` file is their bundle)
    trust: tuple[str, ...] = ("main",)
    #: top-level config settings (retention_days, segment_max_bytes, ...)
    settings: dict = field(default_factory=dict)
    #: NDJSON file appended (``auditlog append --file``) before the first start
    preload: Path | None = None


class ClusterNode:
    def __init__(self, cluster: LocalCluster, spec: NodeSpec, http_port: int, peer_port: int):
        self.cluster = cluster
        self.spec = spec
        self.name = spec.name
        self.dir = cluster.root / spec.name
        self.data_dir = self.dir / "data"
        self.config_path = self.dir / f"{spec.name}.toml"
        self.http_port = http_port
        self.peer_port = peer_port
        self.base = f"http://127.0.0.1:{http_port}"
        self.peer_url = f"https://127.0.0.1:{peer_port}"
        self.tls_dir = cluster.root / ("tls" if spec.ca == "main" else "tls-other")
        self.cert = self.tls_dir / f"{spec.name}.pem"
        self.key = self.tls_dir / f"{spec.name}.key"
        self.writer_key: str | None = None
        self.reader_key: str | None = None
        self.proc: subprocess.Popen | None = None
        self.stderr_path = self.dir / "serve.stderr"
        self._stderr = None

    # -- setup ---------------------------------------------------------------

    def write_config(self) -> None:
        s = self.spec
        c = self.cluster
        lines = [f'node_id = "{self.name}"']
        for k, v in s.settings.items():
            lines.append(f"{k} = {json.dumps(v)}")
        ca_file = c.trust_bundle(s.trust)
        lines += [
            "",
            "[server]",
            f'listen = "127.0.0.1:{self.http_port}"',
            "",
            "[cluster]",
            f'listen = "127.0.0.1:{self.peer_port}"',
            f'ca = "{ca_file}"',
            f'cert = "{self.cert}"',
            f'key = "{self.key}"',
            f"peer_timeout = {c.peer_timeout}",
            f"checkpoint_interval = {c.checkpoint_interval}",
        ]
        peers = (
            s.peers
            if s.peers is not None
            else [n.name for n in c.nodes.values() if n.name != self.name and n.spec.ca == s.ca]
        )
        for p in peers:
            lines += ["", "[[cluster.peers]]", f'node = "{p}"', f'url = "{c.nodes[p].peer_url}"']
        for p, url in s.extra_peers.items():
            lines += ["", "[[cluster.peers]]", f'node = "{p}"', f'url = "{url}"']
        self.dir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text("\n".join(lines) + "\n")

    def prepare(self) -> None:
        """init, optional bulk preload, writer + reader keys (all before serve)."""
        self.run("init", "--node-id", self.name)
        if self.spec.preload is not None:
            bulk = self.dir / "bulk.toml"  # a bulk import does not need an fsync per chunk
            bulk.write_text('fsync = "none"\n')
            cli(
                "--data-dir",
                str(self.data_dir),
                "--config",
                str(bulk),
                "append",
                "--file",
                str(self.spec.preload),
                timeout=300,
            )
        self.writer_key = self._new_key("writer")
        self.reader_key = self._new_key("reader")

    def _new_key(self, role: str) -> str:
        out = self.run("apikey", "create", "--role", role, "--name", f"test-{role}-{self.name}").stdout
        key = out.strip().splitlines()[-1]
        assert key.startswith("alk_"), out
        return key

    def run(self, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
        """``auditlog --data-dir D --config C ARGS`` for this node."""
        return cli(
            "--data-dir", str(self.data_dir), "--config", str(self.config_path), *args, check=check, timeout=timeout
        )

    # -- process -------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> None:
        assert not self.running, f"{self.name} already running"
        self._stderr = open(self.stderr_path, "ab")
        self.proc = subprocess.Popen(
            [AUDITLOG, "--data-dir", str(self.data_dir), "--config", str(self.config_path), "serve"],
            stdout=subprocess.DEVNULL,
            stderr=self._stderr,
            stdin=subprocess.DEVNULL,
            env=clean_env(),
        )

    def wait_ready(self, timeout: float = 60) -> None:
        """Until /healthz answers and the peer listener accepts connections."""
        why = wait_serving(self.proc, self.base, self.peer_port, timeout)
        if why is not None:
            raise AssertionError(f"node {self.name} {why}:\n{self.stderr()}")

    def stop(self, timeout: float = 20) -> int:
        """SIGTERM and wait (a clean shutdown); returns the exit code."""
        assert self.proc is not None
        if not terminate(self.proc, timeout):
            self._close_stderr()
            raise AssertionError(f"node {self.name} ignored SIGTERM for {timeout}s")
        self._close_stderr()
        return self.proc.returncode

    def kill(self) -> None:
        """SIGKILL: the node vanishes without closing anything."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._close_stderr()

    def restart(self) -> None:
        if self.running:
            self.stop()
        self.start()
        self.wait_ready()

    def _close_stderr(self) -> None:
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None

    def stderr(self) -> str:
        if self._stderr is not None:
            self._stderr.flush()
        try:
            return self.stderr_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    # -- HTTP ------------------------------------------------------------------

    def request(
        self,
        path: str,
        key: str | None = "reader",
        *,
        method: str = "GET",
        body: bytes | None = None,
        headers: dict | None = None,
        timeout: float = 60,
    ):
        """(status, headers, body bytes); ``key`` is "reader", "writer", None or a token."""
        token = {"reader": self.reader_key, "writer": self.writer_key}.get(key, key) if key else None
        return http_request(self.base + path, token, method=method, body=body, headers=headers, timeout=timeout)

    def json(self, path: str, key: str | None = "reader", **kw):
        status, _, body = self.request(path, key, **kw)
        return status, json.loads(body)

    def get_ok(self, path: str, **kw) -> dict:
        status, body = self.json(path, **kw)
        assert status == 200, (self.name, path, status, body)
        return body

    def post_events(self, events: list[dict]) -> dict:
        status, body = self.json(
            "/api/v1/events",
            "writer",
            method="POST",
            body=json.dumps(events).encode(),
            headers={"Content-Type": "application/json"},
        )
        assert status == 201, (self.name, status, body)
        return body

    def open_stream(
        self, path: str, timeout: float = 60
    ) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        """A GET whose body the caller reads bit by bit (``resp.read(n)``)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.http_port, timeout=timeout)
        conn.request("GET", path, headers=bearer(self.reader_key))
        return conn, conn.getresponse()


# -- the cluster --------------------------------------------------------------------------


class LocalCluster:
    """``LocalCluster(root, [NodeSpec("a"), ...]).build()`` then ``start()``; ``close()`` always."""

    def __init__(
        self,
        root: Path,
        specs: list[NodeSpec] | tuple[str, ...],
        *,
        peer_timeout: float = 2.0,
        checkpoint_interval: float = 3600.0,
    ):
        self.root = Path(root)
        self.peer_timeout = peer_timeout
        self.checkpoint_interval = checkpoint_interval
        specs = [s if isinstance(s, NodeSpec) else NodeSpec(s) for s in specs]
        ports = free_ports(2 * len(specs))
        self.nodes: dict[str, ClusterNode] = {
            s.name: ClusterNode(self, s, ports[2 * i], ports[2 * i + 1]) for i, s in enumerate(specs)
        }
        self.ca_dirs = {"main": self.root / "ca", "other": self.root / "ca-other"}

    def __getitem__(self, name: str) -> ClusterNode:
        return self.nodes[name]

    def trust_bundle(self, cas: tuple[str, ...]) -> Path:
        if cas == ("main",):
            return self.ca_dirs["main"] / "ca.pem"
        path = self.root / f"trust-{'-'.join(cas)}.pem"
        path.write_bytes(b"".join((self.ca_dirs[c] / "ca.pem").read_bytes() for c in cas))
        return path

    def issue(
        self, name: str, ca: str = "main", out: Path | None = None, signing_key: Path | None = None
    ) -> tuple[Path, Path]:
        """A certificate for node id ``name`` from ``ca`` (also for ids that are no node),
        bound to the signing key in ``signing_key`` (a node.pub) when given."""
        out = out or self.root / ("tls" if ca == "main" else "tls-other")
        bind = ["--signing-key", str(signing_key)] if signing_key is not None else []
        cli(
            "cluster",
            "issue-cert",
            "--ca",
            str(self.ca_dirs[ca]),
            "--node",
            name,
            "--san",
            "127.0.0.1",
            "--out",
            str(out),
            *bind,
        )
        return out / f"{name}.pem", out / f"{name}.key"

    def build(self) -> LocalCluster:
        self.root.mkdir(parents=True, exist_ok=True)
        cas = (
            {"main"} | {n.spec.ca for n in self.nodes.values()} | {c for n in self.nodes.values() for c in n.spec.trust}
        )
        with ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(lambda c: cli("cluster", "ca-init", "--out", str(self.ca_dirs[c])), sorted(cas)))
            for n in self.nodes.values():
                n.write_config()
            list(pool.map(lambda n: n.prepare(), self.nodes.values()))
            # each certificate binds its node's signing key (made by init)
            list(
                pool.map(
                    lambda n: self.issue(n.name, n.spec.ca, signing_key=n.data_dir / "node.pub"), self.nodes.values()
                )
            )
        return self

    def start(self, *names: str) -> None:
        """Start the nodes (all by default) concurrently and wait until each is ready."""
        nodes = [self.nodes[n] for n in (names or self.nodes)]
        for n in nodes:
            n.start()
        for n in nodes:
            n.wait_ready()

    def close(self) -> None:
        for n in self.nodes.values():
            if n.running:
                try:
                    n.stop(timeout=10)
                except AssertionError:
                    pass
            n.kill()


# -- a peer that never answers ----------------------------------------------------------


class StalledPeer:
    """A plain TCP listener: accepts every connection and never sends a byte."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.url = f"https://127.0.0.1:{self.port}"
        self.accepted: list[socket.socket] = []
        self._closed = False
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted.append(conn)  # held open, never read, never written

    def close(self) -> None:
        self._closed = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        for c in self.accepted:
            c.close()
        self._thread.join(5)


# -- what an attacker with the data dir can do ---------------------------------------------


def _frames_of(data_dir: Path):
    """(data dir, node, [(segment path, its header, its bytes, [FrameRead...])]) for every
    segment, each frame walked and checked (an attack starts from an intact log)."""
    from auditlog.engine.datadir import DataDir
    from auditlog.engine.segment import MAX_HEADER, list_segments, parse_segment_header, walk_frames

    dd = DataDir(Path(data_dir))
    node = dd.open()
    out = []
    for p in list_segments(dd.segments):
        raw = p.read_bytes()
        hdr = parse_segment_header(raw[:MAX_HEADER], node.key)
        frames = list(walk_frames(raw, hdr.size, hdr.mac, node.key, version=hdr.version))
        assert all(f.problem is None for f in frames), [(f.offset, f.problem) for f in frames]
        out.append((p, hdr, raw, frames))
    return dd, node, out


def _drop_derived(dd) -> None:
    from auditlog.engine.index import INDEX_SUFFIX

    for p in dd.segments.iterdir():
        if p.suffix == INDEX_SUFFIX:
            p.unlink()


def cut_tail_at_seq(data_dir: Path, seq: int) -> int:
    """Cut the (stopped) node's last segment back to the start of the frame holding
    ``seq``, a clean frame boundary: no torn tail for recovery to notice.  Returns the
    seq of the last entry left."""
    dd, node, segs = _frames_of(data_dir)
    path, hdr, raw, frames = segs[-1]
    hit = [f for f in frames if f.header.first_seq <= seq <= f.header.last_seq]
    assert hit, f"seq {seq} is not in the active segment {path.name}"
    offset = hit[0].offset
    with open(path, "r+b") as f:
        f.truncate(offset)
    _drop_derived(dd)
    return hit[0].header.first_seq - 1


def rewrite_entry(data_dir: Path, seq: int, **changes) -> None:
    """Change fields of entry ``seq`` of a (stopped) node and re-sign everything from
    there with the node's own key: entry signatures, frame MACs, later segment headers.
    The node's own verification cannot tell; only a witness can."""
    from auditlog.engine.entry import R_SIG, canonical_bytes, packed_len, record_from_canonical
    from auditlog.engine.frame import FLAG_CONTINUES, build_frame
    from auditlog.engine.segment import SegmentHeader

    fields = ("user", "action", "target", "domain", "ip", "user_agent", "success", "details")
    dd, node, segs = _frames_of(data_dir)
    sign = node.key.signer()
    nlen = packed_len(node.node_id)
    prev_sig = prev_mac = None  # links to carry into the next segment once rewriting began
    found = False
    for path, hdr, raw, frames in segs:
        if prev_sig is None and not any(f.header.first_seq <= seq <= f.header.last_seq for f in frames):
            continue
        if prev_sig is None:
            head_bytes, sig, mac = raw[: hdr.size], hdr.prev_sig, hdr.mac
        else:
            head_bytes, h = SegmentHeader.build(
                node.key, node.node_id, hdr.first_seq, hdr.created_us, prev_sig, prev_mac, hdr.version
            )
            sig, mac = prev_sig, h.mac
        out = [head_bytes]
        for fr in frames:
            recs = []
            for r in fr.records():
                s, ts, *vals = r[:R_SIG]
                if s == seq:
                    d = dict(zip(fields, vals))
                    d.update(changes)
                    vals = [d[k] for k in fields]
                    found = True
                canon = canonical_bytes(node.node_id, s, ts, tuple(vals))
                sig = sign(sig, canon)
                recs.append(record_from_canonical(nlen, canon, sig))
            fb, mac = build_frame(
                recs,
                fr.header.first_seq,
                fr.header.min_ts,
                fr.header.max_ts,
                node.key,
                mac,
                continues=bool(fr.header.flags & FLAG_CONTINUES),
                version=fr.version,
            )
            out.append(fb)
        tmp = path.with_name(path.name + ".rewrite")
        tmp.write_bytes(b"".join(out))
        os.replace(tmp, path)
        prev_sig, prev_mac = sig, mac
    assert found, f"no entry {seq} in {data_dir}"
    _drop_derived(dd)


def ensure_running(*nodes: ClusterNode) -> None:
    """Start whichever of ``nodes`` is down (concurrently) and wait until each is ready."""
    down = [n for n in nodes if not n.running]
    for n in down:
        n.start()
    for n in down:
        n.wait_ready()
