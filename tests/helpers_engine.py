"""Shared helpers for engine-level tests (tamper, every-byte, crash, lock suites).

A plain module: ``import helpers_engine`` (``tests/conftest.py`` puts
``tests/`` on ``sys.path``).  Everything here works on real files: a real data dir, the
real writer, the real CLI (in-process through click's CliRunner, or as a
subprocess of the installed console script).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

import msgpack

from auditlog.engine.datadir import DataDir, Node
from auditlog.engine.entry import Entry, EntryDraft
from auditlog.engine.frame import HEADER, HEADER_SIZE, MAC_SIZE, parse_header, plain_payload
from auditlog.engine.segment import (
    FORMAT_VERSION,
    MAX_HEADER,
    SegmentData,
    list_segments,
    parse_segment_header,
    walk_frames,
)
from auditlog.engine.settings import StoreSettings
from auditlog.engine.writer import LogWriter

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = ROOT / ".venv" / "bin"
PYTHON = str(VENV_BIN / "python") if (VENV_BIN / "python").exists() else sys.executable
AUDITLOG = str(VENV_BIN / "auditlog")

#: small enough that a few dozen entries fill several segments (frames <= 1 KiB)
SMALL_SEGMENT = 4096


def draft(i: int, **extra) -> EntryDraft:
    """A recognisable event: details {"n": i} is the marker tests look for."""
    return EntryDraft(
        "alice",
        "config.filter_update",
        target=f"filter-{i}",
        domain="example.org",
        ip="192.0.2.10",
        details={"n": i, **extra},
    )


#: fixed values of :func:`sample_entry` (2026-03-14T09:12:33.123456Z; a recognisable signature)
SAMPLE_TS = 1_773_479_553_123_456
SAMPLE_SIG = bytes(range(32))


def sample_entry(seq: int = 1, **kw) -> Entry:
    """An entry as read back (for renderer tests): node-a, alice, auth.login; override any field."""
    fields = dict(
        node="node-a",
        seq=seq,
        ts=SAMPLE_TS + seq,
        user="alice",
        action="auth.login",
        target=None,
        domain=None,
        ip="192.0.2.1",
        user_agent=None,
        success=True,
        details={},
        signature=SAMPLE_SIG,
    )
    fields.update(kw)
    return Entry.of(**fields)


def init_dir(root: Path, node_id: str = "gw1") -> tuple[DataDir, Node]:
    dd = DataDir(Path(root))
    return dd, dd.init(node_id)


def settings(segment_max_bytes: int = SMALL_SEGMENT, fsync: str = "none", **kw) -> StoreSettings:
    return StoreSettings(segment_max_bytes=segment_max_bytes, fsync=fsync, **kw)


def append_events(
    dd: DataDir,
    node: Node,
    n: int,
    *,
    per_batch: int = 1,
    start: int = 0,
    segment_max_bytes: int = SMALL_SEGMENT,
    fsync: str = "none",
) -> None:
    """Append events ``start .. start+n-1`` (details n=i) in batches of ``per_batch``."""
    with LogWriter(dd, node, settings(segment_max_bytes, fsync)) as w:
        for i in range(start, start + n, per_batch):
            w.append_batch([draft(j) for j in range(i, min(start + n, i + per_batch))])


def build_log(
    root: Path,
    n: int = 60,
    *,
    node_id: str = "gw1",
    per_batch: int = 1,
    segment_max_bytes: int = SMALL_SEGMENT,
    fsync: str = "none",
    min_sealed: int = 3,
) -> tuple[DataDir, Node]:
    """Init ``root`` and append ``n`` events so that there are several sealed segments."""
    dd, node = init_dir(root, node_id)
    append_events(dd, node, n, per_batch=per_batch, segment_max_bytes=segment_max_bytes, fsync=fsync)
    segs = segment_paths(dd)
    assert len(segs) - 1 >= min_sealed, f"expected >= {min_sealed} sealed segments, got {len(segs) - 1}"
    return dd, node


def segment_paths(dd: DataDir) -> list[Path]:
    return list_segments(dd.segments)


def segment_header(path: Path, node: Node | None = None):
    with SegmentData(path) as sd:
        return parse_segment_header(bytes(sd.data[:MAX_HEADER]), node.key if node else None)


class FrameInfo:
    """Where one frame sits in a segment file, and its decoded records."""

    def __init__(self, offset: int, end: int, first_seq: int, count: int, records: list):
        self.offset = offset
        self.end = end
        self.first_seq = first_seq
        self.count = count
        self.records = records

    @property
    def last_seq(self) -> int:
        return self.first_seq + self.count - 1

    @property
    def payload_offset(self) -> int:
        return self.offset + HEADER_SIZE

    @property
    def mac_offset(self) -> int:
        return self.end - MAC_SIZE

    def __repr__(self) -> str:
        return f"FrameInfo(@{self.offset}..{self.end}, seq {self.first_seq}..{self.last_seq})"


def frames_of(path: Path, node: Node) -> list[FrameInfo]:
    """The intact frames of a segment file, in order (asserts they are all intact)."""
    hdr = segment_header(path, node)
    out = []
    with SegmentData(path) as sd:
        for fr in walk_frames(sd.data, hdr.size, hdr.mac, node.key, version=hdr.version):
            assert fr.problem is None, (path, fr.problem, fr.detail)
            out.append(FrameInfo(fr.offset, fr.end, fr.header.first_seq, fr.header.count, list(fr.records())))
    return out


def seqs_of(path: Path, node: Node) -> list[int]:
    return [s for f in frames_of(path, node) for s in range(f.first_seq, f.last_seq + 1)]


def flip_byte(path: Path, offset: int, mask: int = 0xFF) -> int:
    """XOR one byte of a file in place; returns the original byte."""
    with open(path, "r+b") as f:
        f.seek(offset)
        old = f.read(1)[0]
        f.seek(offset)
        f.write(bytes([old ^ mask]))
    return old


def replace_bytes(path: Path, start: int, end: int, new: bytes) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:start] + new + data[end:])


def read_frame_header(path: Path, offset: int):
    with open(path, "rb") as f:
        f.seek(offset)
        return parse_header(f.read(HEADER_SIZE))


def drop_derived(dd: DataDir) -> None:
    """Remove indexes and other sidecars (derived data), so nothing cached hides damage."""
    for p in dd.segments.iterdir():
        if not p.name.endswith(".seg"):
            p.unlink()


# -- the CLI --------------------------------------------------------------------


def run_cli(
    data_dir: Path, *args: str, config: Path | None = None, timeout: float = 60, input: str | None = None
) -> subprocess.CompletedProcess:
    """Run the installed ``auditlog`` console script as a real subprocess."""
    cmd = [AUDITLOG, "--data-dir", str(data_dir)]
    if config is not None:
        cmd += ["--config", str(config)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUDITLOG_")}
    return subprocess.run(cmd + list(args), capture_output=True, text=True, timeout=timeout, input=input, env=env)


def invoke_cli(data_dir: Path, *args: str, config: Path | None = None):
    """Run the CLI in-process (click's CliRunner, exceptions propagate)."""
    from click.testing import CliRunner

    from auditlog.cli.main import cli

    pre = ["--data-dir", str(data_dir)]
    if config is not None:
        pre += ["--config", str(config)]
    return CliRunner().invoke(cli, pre + list(args), catch_exceptions=False)


def verify_json(data_dir: Path, *, subprocess_: bool = False) -> tuple[int, dict]:
    """``auditlog --data-dir D verify --json`` -> (exit code, parsed report)."""
    if subprocess_:
        p = run_cli(data_dir, "verify", "--json")
        assert p.stdout.strip(), p.stderr
        return p.returncode, json.loads(p.stdout)
    r = invoke_cli(data_dir, "verify", "--json")
    return r.exit_code, json.loads(r.stdout)


def query_json(data_dir: Path, *args: str, subprocess_: bool = False) -> tuple[int, list[dict], str]:
    """``auditlog query --format json`` -> (exit code, entries, stderr)."""
    if subprocess_:
        p = run_cli(data_dir, "query", "--format", "json", *args)
        return p.returncode, json.loads(p.stdout), p.stderr
    r = invoke_cli(data_dir, "query", "--format", "json", *args)
    return r.exit_code, json.loads(r.stdout), r.stderr


def write_config(path: Path, **values) -> Path:
    """A TOML config file with top-level settings (ints, strings)."""
    lines = []
    for k, v in values.items():
        lines.append(f"{k} = {json.dumps(v) if isinstance(v, str) else v}")
    path.write_text("\n".join(lines) + "\n")
    return path


def kinds(report: dict) -> list[str]:
    return [v["kind"] for v in report["violations"]]


def violations_of(report: dict, kind: str) -> list[dict]:
    return [v for v in report["violations"] if v["kind"] == kind]


def covers(v: dict, seq_from: int, seq_to: int) -> bool:
    """Does violation ``v`` cover seqs seq_from..seq_to (an open end covers everything after)?"""
    lo = v["seq_from"]
    hi = v["seq_to"]
    return lo is not None and lo <= seq_from and (hi is None or hi >= seq_to)


def records_details(entries: Iterable[dict]) -> list:
    return [e["details"].get("n") for e in entries]


def unpack_payload(payload: bytes, version: int = FORMAT_VERSION):
    """A frame's records from its stored payload (decompressed from format 3 on)."""
    return msgpack.unpackb(plain_payload(payload, version), use_list=False, raw=False, strict_map_key=True)


def segment_version(path: Path) -> int:
    return segment_header(path).version


def keyless_rewrite(path: Path, offset: int, records: list) -> None:
    """Replace the records of the frame at ``offset`` as someone without the key would:
    the payload re-encoded (and, from format 3, compressed again), its length, count and
    xxHash64 in the header recomputed; the stored MAC stays (it needs the key)."""
    import xxhash
    import zstandard

    data = path.read_bytes()
    version = segment_version(path)
    fields = list(HEADER.unpack_from(data, offset))
    plen = fields[1]
    plain = msgpack.packb([list(r) for r in records], use_bin_type=True)
    stored = zstandard.ZstdCompressor(level=3).compress(plain) if version >= 3 else plain
    fields[1], fields[2], fields[7] = len(stored), len(records), xxhash.xxh64_intdigest(stored)
    mac = data[offset + HEADER_SIZE + plen : offset + HEADER_SIZE + plen + MAC_SIZE]
    rest = data[offset + HEADER_SIZE + plen + MAC_SIZE :]
    path.write_bytes(data[:offset] + HEADER.pack(*fields) + stored + mac + rest)


# -- forging with the key (what an insider holding node.key could do) ---------------


def frame_spans(path: Path, start: int) -> list[tuple[int, int]]:
    """(offset, end) of each frame from ``start``, by the length fields alone (no checks)."""
    data = path.read_bytes()
    spans, pos = [], start
    while pos < len(data):
        hdr = parse_header(data[pos : pos + HEADER_SIZE])
        end = pos + hdr.total_size
        spans.append((pos, end))
        pos = end
    return spans


def rewrite_frame(path: Path, node: Node, offset: int, records: list, *, first_seq: int | None = None) -> None:
    """Replace the frame at ``offset`` with one holding ``records`` (decoded records).

    The header (count, checksum, first seq) and the frame MAC are recomputed with
    the node key, as an insider would; entry signatures are left as given.  The
    frames after it are *not* re-MAC'd: call :func:`rechain` for that.
    """
    from auditlog.engine.frame import build_frame

    data = path.read_bytes()
    version = segment_version(path)
    hdr = parse_header(data[offset : offset + HEADER_SIZE], version)
    end = offset + hdr.total_size
    prev_mac = data[offset - MAC_SIZE : offset]
    raw = [msgpack.packb(list(r), use_bin_type=True) for r in records]
    fs = hdr.first_seq if first_seq is None else first_seq
    fb, _ = build_frame(raw, fs, hdr.min_ts, hdr.max_ts, node.key, prev_mac, version=version)
    path.write_bytes(data[:offset] + fb + data[end:])


def rechain(dd: DataDir, node: Node, from_segment: Path) -> None:
    """Recompute, with the key, every frame MAC from ``from_segment`` on and every
    later segment header's links, so only what the forger left alone (the
    per-entry signatures) can still give the forgery away."""
    from auditlog.engine.segment import SegmentHeader

    paths = segment_paths(dd)
    i = paths.index(from_segment)
    prev_mac = prev_sig = None
    for p in paths[i:]:
        data = bytearray(p.read_bytes())
        h = segment_header(p, node)
        if prev_mac is not None:
            raw, h2 = SegmentHeader.build(node.key, h.node, h.first_seq, h.created_us, prev_sig, prev_mac, h.version)
            assert len(raw) == h.size
            data[: h.size] = raw
            h = h2
        mac = h.mac
        last_sig = h.prev_sig
        pos = h.size
        while pos < len(data):
            fh = parse_header(bytes(data[pos : pos + HEADER_SIZE]), h.version)
            pend = pos + HEADER_SIZE + fh.payload_len
            mac = node.key.mac(mac, bytes(data[pos : pos + HEADER_SIZE]), bytes(data[pos + HEADER_SIZE : pend]))
            data[pend : pend + MAC_SIZE] = mac
            last_sig = unpack_payload(bytes(data[pos + HEADER_SIZE : pend]), h.version)[-1][-1]
            pos = pend + MAC_SIZE
        p.write_bytes(bytes(data))
        prev_mac, prev_sig = mac, last_sig
    drop_derived(dd)


def rewrite_in_format(dd: DataDir, node: Node, version: int) -> None:
    """Rewrite a whole (intact, stopped) log in segment format ``version`` with its key:
    the same entries, signatures and frame boundaries, every segment header and frame
    MAC made anew, as the code of that format would have written them."""
    from auditlog.engine.frame import FLAG_CONTINUES, build_frame
    from auditlog.engine.segment import SegmentHeader

    prev_mac = None
    for p in segment_paths(dd):
        h = segment_header(p, node)
        if prev_mac is None:
            prev_mac = h.prev_mac
        raw, h2 = SegmentHeader.build(node.key, h.node, h.first_seq, h.created_us, h.prev_sig, prev_mac, version)
        out, mac = [raw], h2.mac
        with SegmentData(p) as sd:
            frames = list(walk_frames(sd.data, h.size, h.mac, node.key, version=h.version))
        for fr in frames:
            assert fr.problem is None, (p, fr.detail)
            recs = [msgpack.packb(list(r), use_bin_type=True) for r in fr.records()]
            continues = bool(fr.header.flags & FLAG_CONTINUES) and version >= 2  # format 1 has no such flag
            fb, mac = build_frame(
                recs,
                fr.header.first_seq,
                fr.header.min_ts,
                fr.header.max_ts,
                node.key,
                mac,
                continues=continues,
                version=version,
            )
            out.append(fb)
        p.write_bytes(b"".join(out))
        prev_mac = mac
    drop_derived(dd)


# -- what a read returned -----------------------------------------------------------

_MARKER_RANGE = re.compile(r"seq (\d+)\.\.(\d+)|from seq (\d+)|before seq (\d+)")
MARKER_ACTION = "audit.integrity_violation"


def read_coverage(entries: list[dict], last_seq: int) -> tuple[dict[int, dict], set[int]]:
    """Split what a read returned into intact entries (by seq) and flagged seqs.

    A damaged entry flags its own seq; a marker entry flags the range its
    ``violation`` text names (``seq A..B``, or ``from seq A`` up to ``last_seq``; ``before
    seq A`` is a file that holds none of the log's seqs).
    """
    ok: dict[int, dict] = {}
    flagged: set[int] = set()
    for e in entries:
        if e["integrity"] == "ok":
            assert "violation" not in e, e
            ok[e["seq"]] = e
            continue
        assert e["integrity"] == "violation", e
        assert e.get("violation"), e
        if e["action"] == MARKER_ACTION:
            m = _MARKER_RANGE.search(e["violation"])
            assert m, e["violation"]
            if m.group(1):
                flagged.update(range(int(m.group(1)), int(m.group(2)) + 1))
            elif m.group(3):
                flagged.update(range(int(m.group(3)), last_seq + 1))
            assert e["seq"] == int(m.group(1) or m.group(3) or m.group(4)), e
        else:
            flagged.add(e["seq"])
    return ok, flagged


def served_log(tmp_path: Path, name: str, config_text: str, n: int = 3000):
    """A data dir with ``n`` events over small segments, a reader key, and a config file."""
    data, cfg = tmp_path / name, tmp_path / f"{name}.toml"
    cfg.write_text(f'segment_max_bytes = 16384\nfsync = "none"\n{config_text}')
    assert run_cli(data, "init", "--node-id", "gw1").returncode == 0
    src = tmp_path / f"{name}.ndjson"
    src.write_text(
        "".join(
            json.dumps(
                {"user": f"u{i % 7}", "action": "config.filter_update", "target": f"filter-{i}", "details": {"n": i}}
            )
            + "\n"
            for i in range(n)
        )
    )
    for args in (("append", "--file", str(src)), ("apikey", "create", "--role", "reader", "--name", "t")):
        p = run_cli(data, *args, config=cfg)
        assert p.returncode == 0, p.stderr
    assert len(list((data / "segments").glob("*.seg"))) >= n // 300
    return data, cfg, p.stdout.strip().splitlines()[-1]
