"""Every read path says when stored data that could match it is missing, damaged or unverifiable.

Each test damages a copy of a real log the way an attacker with write access to
the data dir but without the node key would (docs/FORMAT.md: a frame's xxHash64
recomputed after an edit, files deleted, cut or flipped, sidecars deleted so
they are rebuilt from what is on disk now), then reads it through the real
CLI and a real server and checks that the answer is never a clean, incomplete
one: a violation in the stream, ``integrity_violations > 0``, a non-``ok``
integrity cell, ``ok: false``, exit 1.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
import subprocess
from pathlib import Path

import pytest
from helpers_engine import (
    flip_byte,
    frames_of,
    invoke_cli,
    keyless_rewrite,
    rewrite_in_format,
    segment_paths,
    segment_version,
    unpack_payload,
)
from helpers_http import bearer, make_keys

from auditlog.engine.clock import FrozenClock
from auditlog.engine.datadir import DataDir
from auditlog.engine.entry import EntryDraft, format_ts
from auditlog.engine.frame import HEADER, HEADER_SIZE
from auditlog.engine.log import NodeLog
from auditlog.engine.settings import StoreSettings
from auditlog.engine.writer import LogWriter
from auditlog.query.node import NodeConfig, build_node, forwarder

T0 = 1_773_478_800_000_000 - 30 * 86_400_000_000  # 30 days before the tests' epoch
USERS = ("alice", "bob", "carol")
IPS = ("192.0.2.1", "192.0.2.2", "192.0.2.3")
N = 420


def _event(i: int) -> EntryDraft:
    return EntryDraft(
        USERS[i % 3],
        "quarantine.release",
        f"mail-{i}",
        "example.org",
        IPS[(i // 3) % 3],
        None,
        True,
        {"n": i, "recipient": f"r{i % 5}@example.org", "subject": f"s{i}"},
    )


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    """120 quarantine releases in commits of 3, a second apart, over sealed segments; then a
    DKIM rotation and its confirmation by someone else, and a few more events."""
    root = tmp_path_factory.mktemp("completeness") / "data"
    dd = DataDir(root)
    node = dd.init("gw1")
    clock = FrozenClock(T0, step_us=1_000_000)
    with LogWriter(dd, node, StoreSettings(segment_max_bytes=4096, fsync="none"), clock=clock) as w:
        for i in range(0, N, 3):
            w.append_batch([_event(j) for j in range(i, i + 3)])
        rot = w.append_batch(
            [
                EntryDraft(
                    "dave",
                    "config.dkim_rotate",
                    "sel._domainkey.example.org",
                    "example.org",
                    details={"new": "k2", "old": "k1"},
                )
            ]
        )
        w.append_batch(
            [
                EntryDraft(
                    "erin",
                    "config.dkim_rotate_confirm",
                    "sel._domainkey.example.org",
                    "example.org",
                    details={"confirms": f"gw1:{rot.first_seq}"},
                )
            ]
        )
        for i in range(N, N + 6, 3):
            w.append_batch([_event(j) for j in range(i, i + 3)])
    entries = list(NodeLog(dd, node).scan())
    assert all(e.integrity == "ok" for e in entries) and len(segment_paths(dd)) >= 6
    return root, {e.seq: e for e in entries}


@pytest.fixture
def log(pristine, tmp_path):
    root, by_seq = pristine
    dst = tmp_path / "data"
    shutil.copytree(root, dst)
    dd = DataDir(dst)
    return dd, dd.open(), by_seq


# -- damage as an attacker without the key makes it ----------------------------------------


def edit_record(path: Path, frame_offset: int, index: int, change) -> None:
    """Re-encode one record of the frame at ``frame_offset`` with ``change(record_list)``
    applied, fixing the frame's length, count and xxHash64 as an attacker would (the MAC
    needs the key: the stored one stays)."""
    data = path.read_bytes()
    plen = HEADER.unpack_from(data, frame_offset)[1]
    stored = data[frame_offset + HEADER_SIZE : frame_offset + HEADER_SIZE + plen]
    recs = [list(r) for r in unpack_payload(stored, segment_version(path))]
    change(recs[index])
    keyless_rewrite(path, frame_offset, recs)


def frame_holding(dd, node, seq: int):
    for seg in segment_paths(dd):
        for fr in frames_of(seg, node):
            if fr.first_seq <= seq <= fr.last_seq:
                return seg, fr
    raise AssertionError(f"seq {seq} not found")


def drop_sidecars(dd, suffix: str) -> None:
    for p in dd.segments.glob(f"*{suffix}"):
        p.unlink()


def build_sidecars(dd, node) -> None:
    """A full read and a selective one: .idx and .terms exist before the damage."""
    log = NodeLog(dd, node)
    list(log.scan())
    list(log.scan(terms={"user": frozenset({"alice"})}, predicate=lambda e: e.user == "alice"))
    assert list(dd.segments.glob("*.terms")) and list(dd.segments.glob("*.idx"))


# -- reading ----------------------------------------------------------------------------------


def cli_json(dd, *args) -> tuple[int, list[dict], str]:
    r = invoke_cli(dd.root, "query", "--format", "json", *args)
    assert "Traceback" not in r.stderr
    return r.exit_code, json.loads(r.stdout), r.stderr


def flagged(rows: list[dict]) -> list[dict]:
    odd = [r for r in rows if "integrity" not in r]
    assert not odd, odd[:2]
    return [r for r in rows if r["integrity"] != "ok"]


class Served:
    """A real server (the node from ``build_node`` and the aiohttp app, on a loopback socket)."""

    def __init__(self, dd, client, keys):
        self.dd, self.client, self.keys = dd, client, keys

    async def get(self, path: str, **params):
        resp = await self.client.get(path, params=params, headers=bearer(self.keys["reader"]))
        assert resp.status == 200, (resp.status, await resp.text())
        return resp

    async def pages(self, **params) -> list[dict]:
        """Every page of the JSON API; the sum of their integrity_violations."""
        out, cursor, bad = [], None, 0
        while True:
            q = dict(params, limit="7", **({"cursor": cursor} if cursor else {}))
            body = await (await self.get("/api/v1/audit-log", **q)).json()
            out += body["events"]
            bad += body["integrity_violations"]
            cursor = body["next_cursor"]
            if cursor is None:
                return out, bad

    async def lines(self, fmt: str, **params) -> list[dict]:
        text = await (await self.get("/api/v1/audit-log", format=fmt, **params)).text()
        assert text == "" or text.endswith("\n")
        return [json.loads(x) for x in text.splitlines()]

    async def csv_rows(self, **params) -> list[dict]:
        text = (await (await self.get("/api/v1/audit-log/export.csv", **params)).read()).decode("utf-8-sig")
        return list(csv.DictReader(io.StringIO(text)))


@pytest.fixture
async def serve(aiohttp_client):
    """``await serve(dd)``: a server on the (damaged) data dir."""
    from auditlog.query.http.app import create_app

    made = []

    async def start(dd):
        svc = build_node(NodeConfig(StoreSettings(fsync="none")), dd)
        made.append(svc)
        keys = make_keys(svc)
        return Served(dd, await aiohttp_client(create_app(svc)), keys)

    yield start
    for svc in made:
        svc.close()


# -- 1. selective reads ------------------------------------------------------------------------


def _match(by_seq, user: str, ip: str) -> list[int]:
    return [s for s, e in by_seq.items() if e.user == user and e.ip == ip]


@pytest.mark.parametrize("sidecar", ["terms-rebuilt", "terms-kept", "both-rebuilt"])
async def test_selective_read_reports_an_edited_frame_that_held_a_match(log, serve, sidecar):
    dd, node, by_seq = log
    build_sidecars(dd, node)
    want = _match(by_seq, "alice", "192.0.2.2")
    target = want[len(want) // 2]
    seg, fr = frame_holding(dd, node, target)
    assert seg != segment_paths(dd)[-1]  # a sealed segment
    # the match's ip becomes another of the same length: the frame no longer holds a match
    edit_record(seg, fr.offset, target - fr.first_seq, lambda r: r.__setitem__(6, "192.0.2.9"))
    if sidecar != "terms-kept":
        drop_sidecars(dd, ".terms")
    if sidecar == "both-rebuilt":
        drop_sidecars(dd, ".idx")
    rc, rows, err = cli_json(dd, "--user", "alice", "--ip", "192.0.2.2")
    assert rc == 1 and "integrity" in err
    assert target in {r["seq"] for r in flagged(rows)}
    assert {r["seq"] for r in rows if r["integrity"] == "ok"} == set(want) - set(range(fr.first_seq, fr.last_seq + 1))
    # a subject access export by recipient reads through the same postings
    rcpt = by_seq[target].details["recipient"]
    out = dd.root.parent / "sar.csv"
    r = invoke_cli(dd.root, "export", "csv", "--recipient", rcpt, "-o", str(out))
    assert r.exit_code == 1, r.output
    cells = list(csv.DictReader(io.StringIO(out.read_text(encoding="utf-8-sig"))))
    assert any(c["seq"] == str(target) and c["integrity"] == "violation" for c in cells)
    srv = await serve(dd)
    events, bad = await srv.pages(user="alice", ip="192.0.2.2")
    assert bad > 0 and target in {e["seq"] for e in flagged(events)}


# -- 2. time windows that fall into damage ------------------------------------------------------


def _window(by_seq, seqs) -> dict:
    lo, hi = min(by_seq[s].ts for s in seqs), max(by_seq[s].ts for s in seqs)
    return {"from": format_ts(lo), "to": format_ts(hi + 1)}


def _damage(dd, node, how: str) -> list[int]:
    """Damage the log; the seqs whose entries it destroyed or made unverifiable."""
    segs = segment_paths(dd)
    if how == "delete_middle":
        victim = segs[2]
        seqs = [s for f in frames_of(victim, node) for s in range(f.first_seq, f.last_seq + 1)]
        victim.unlink()
        return seqs
    if how == "delete_oldest":
        seqs = [s for f in frames_of(segs[0], node) for s in range(f.first_seq, f.last_seq + 1)]
        segs[0].unlink()
        return seqs
    if how == "header_flip":
        seqs = [s for f in frames_of(segs[2], node) for s in range(f.first_seq, f.last_seq + 1)]
        flip_byte(segs[2], 20)  # first_seq: the header MAC fails
        return seqs
    if how == "cut_frame":
        frames = frames_of(segs[2], node)
        last = frames[-1]
        with open(segs[2], "r+b") as f:
            f.truncate(last.offset + 60)  # inside its last frame
        return list(range(last.first_seq, last.last_seq + 1))
    raise AssertionError(how)


@pytest.mark.parametrize("how", ["delete_middle", "delete_oldest", "header_flip", "cut_frame"])
@pytest.mark.parametrize("sidecars", [True, False], ids=["sidecars", "no-sidecars"])
async def test_a_window_inside_damage_is_never_a_clean_empty_answer(log, serve, how, sidecars):
    dd, node, by_seq = log
    if sidecars:
        build_sidecars(dd, node)
    lost = _damage(dd, node, how)
    w = _window(by_seq, lost[1:-1] or lost)  # strictly inside what was lost
    rc, rows, err = cli_json(dd, "--from", w["from"], "--to", w["to"])
    assert rc == 1, rows
    assert flagged(rows) and not [r for r in rows if r["integrity"] == "ok" and r["seq"] in lost]
    # a selective read of the same window is told too (damage is never filtered away)
    rc, rows, _ = cli_json(dd, "--from", w["from"], "--to", w["to"], "--user", "alice", "--ip", "192.0.2.1")
    assert rc == 1 and flagged(rows)
    # and a window that does not reach the damage stays clean
    far = {"from": format_ts(by_seq[N + 3].ts), "to": format_ts(by_seq[N + 3].ts + 1)}
    rc, rows, _ = cli_json(dd, "--from", far["from"], "--to", far["to"])
    assert rc == 0 and [r["seq"] for r in rows] == [s for s, e in by_seq.items() if e.ts == by_seq[N + 3].ts]
    srv = await serve(dd)
    events, bad = await srv.pages(**w)
    assert bad > 0 and flagged(events)
    assert flagged(await srv.lines("ndjson", **w))
    assert [r for r in await srv.csv_rows(**w) if r["integrity"] != "ok"]
    ecs = await srv.lines("ecs", **w)
    assert [d for d in ecs if d["labels"]["integrity"] != "ok"]
    desc, bad = await srv.pages(order="desc", **w)
    assert bad > 0


# -- 3. reports --------------------------------------------------------------------------------


def _rotation_seq(by_seq) -> int:
    return next(s for s, e in by_seq.items() if e.action == "config.dkim_rotate")


def four_eyes_cli(dd, *args) -> tuple[int, dict]:
    r = invoke_cli(dd.root, "report", "four-eyes", "--json", *args)
    assert "Traceback" not in r.stderr
    return r.exit_code, json.loads(r.stdout)


async def test_four_eyes_intact_log_is_ok(log, serve):
    dd, node, by_seq = log
    rc, rep = four_eyes_cli(dd)
    assert rc == 0 and rep["ok"] and rep["violations"] == [] and len(rep["rotations"]) == 1


@pytest.mark.parametrize("how", ["rotation_frame", "confirmation_segment"])
async def test_four_eyes_is_not_ok_when_damage_touches_its_window(log, serve, how):
    dd, node, by_seq = log
    rot = _rotation_seq(by_seq)
    seg, fr = frame_holding(dd, node, rot)
    if how == "rotation_frame":
        flip_byte(seg, fr.payload_offset + 5)
    else:
        seg, fr = frame_holding(dd, node, rot + 1)
        assert seg != segment_paths(dd)[-1]
        seg.unlink()
    rc, rep = four_eyes_cli(dd, "--from", format_ts(by_seq[rot].ts - 10_000_000))
    assert rc == 1 and rep["ok"] is False and rep["violations"]
    srv = await serve(dd)
    body = await (await srv.get("/api/v1/reports/four-eyes", **{"from": format_ts(by_seq[rot].ts - 10_000_000)})).json()
    assert body["ok"] is False and body["violations"]


# -- 4. damaged records of the wrong types -----------------------------------------------------

TYPE_CHANGES = {
    "seq-str": (0, '7\n=HYPERLINK("http://x")'),
    "ts-float": (1, 1.5e15),
    "user-int": (2, 12345),
    "user-formula": (2, "=cmd|' /C calc'!A0"),
    "success-str": (8, "yes"),
    "details-list": (9, ["=1+1", {"a": b"\x00"}]),
    "details-bytes-key": (9, {b"\xff": 1}),
    "signature-str": (10, "not bytes"),
    "target-list": (4, ["@SUM(1)", "x"]),
}


@pytest.mark.parametrize("change", sorted(TYPE_CHANGES))
async def test_a_record_of_the_wrong_types_is_flagged_and_rendered_safely(log, serve, change, tmp_path):
    """Format 2 payloads are plain msgpack: a frame that fails its MAC is still decoded,
    and its records, whatever their types, come out flagged and rendered safely."""
    dd, node, by_seq = log
    rewrite_in_format(dd, node, 2)
    field, value = TYPE_CHANGES[change]
    victim = 40
    seg, fr = frame_holding(dd, node, victim)
    edit_record(seg, fr.offset, victim - fr.first_seq, lambda r: r.__setitem__(field, value))
    for fmt in ("json", "ndjson", "csv", "table"):
        r = invoke_cli(dd.root, "query", "--format", fmt)
        assert r.exit_code == 1 and "Traceback" not in r.stderr, (fmt, r.stderr)
        if fmt == "csv":
            _check_csv(r.stdout, by_seq)
    for fmt in ("csv", "ndjson", "ecs", "pdf"):
        out = tmp_path / f"x.{fmt}"
        r = invoke_cli(dd.root, "export", fmt, "-o", str(out))
        assert r.exit_code == 1 and "Traceback" not in r.stderr, (fmt, r.stderr)
        if fmt == "csv":
            _check_csv(out.read_text(encoding="utf-8-sig"), by_seq)
        if fmt == "pdf" and shutil.which("pdftotext"):
            text = subprocess.run(["pdftotext", str(out), "-"], capture_output=True, text=True).stdout
            assert "VIOLATION" in text
    rc, rows, _ = cli_json(dd)
    bad = flagged(rows)
    assert victim in {r["seq"] for r in bad} and all(isinstance(r["seq"], int) for r in rows)
    assert all(isinstance(r["details"], dict) and isinstance(r["success"], bool) for r in rows)
    srv = await serve(dd)
    events, nbad = await srv.pages()
    assert nbad > 0 and victim in {e["seq"] for e in flagged(events)}
    assert victim in {r["seq"] for r in flagged(await srv.lines("ndjson"))}
    assert [
        d
        for d in await srv.lines("ecs")
        if d["event"]["sequence"] == victim and d["labels"]["integrity"] == "violation"
    ]
    _check_csv_rows(await srv.csv_rows(), by_seq)


async def test_a_keyless_edit_of_a_compressed_frame_is_never_decoded(log, serve, tmp_path):
    """From format 3 a payload is opened only once its MAC verified: the edited records
    reach no renderer, one marker per damaged frame says what could not be vouched for."""
    dd, node, by_seq = log
    victim = 40
    seg, fr = frame_holding(dd, node, victim)
    edit_record(seg, fr.offset, victim - fr.first_seq, lambda r: r.__setitem__(2, "=cmd|' /C calc'!A0"))
    span = f"seq {fr.first_seq}..{fr.last_seq}"
    rc, rows, _ = cli_json(dd)
    assert rc == 1
    bad = flagged(rows)
    assert [(r["seq"], r["action"]) for r in bad] == [(fr.first_seq, "audit.integrity_violation")]
    assert "mac_mismatch" in bad[0]["violation"] and span in bad[0]["violation"]
    assert {r["seq"] for r in rows} == set(by_seq) - set(range(fr.first_seq + 1, fr.last_seq + 1))
    for fmt in ("csv", "ndjson", "ecs", "pdf"):
        out = tmp_path / f"x.{fmt}"
        r = invoke_cli(dd.root, "export", fmt, "-o", str(out))
        assert r.exit_code == 1 and "Traceback" not in r.stderr, (fmt, r.stderr)
        if fmt != "pdf":
            text = out.read_text(encoding="utf-8-sig")
            assert "calc" not in text and span in text, fmt
    srv = await serve(dd)
    events, nbad = await srv.pages()
    assert nbad == 1 and [e["seq"] for e in flagged(events)] == [fr.first_seq]
    assert not any("calc" in json.dumps(e) for e in events)


def _check_csv(text: str, by_seq) -> None:
    _check_csv_rows(list(csv.DictReader(io.StringIO(text.lstrip("\ufeff")))), by_seq)


def _check_csv_rows(rows: list[dict], by_seq) -> None:
    """One row per entry (nothing injected), every cell typed, no cell a formula."""
    assert len(rows) >= len(by_seq)
    assert all(r["seq"].isdigit() for r in rows), [r["seq"] for r in rows if not r["seq"].isdigit()]
    for r in rows:
        for k, v in r.items():
            assert not v or v[0] not in "=+-@\t\r", (k, v)
    assert [r for r in rows if r["integrity"] == "violation"]


# -- 5. the syslog feed --------------------------------------------------------------------------


def test_the_syslog_feed_forwards_what_it_cannot_vouch_for(log):
    """A deleted segment and a damaged frame reach the SIEM as alerts naming the seqs, never
    as a silent hole in the feed (a real forwarder to a TCP receiver on loopback)."""
    import socket
    import time

    from test_syslog import _frames, audit_params, parse_rfc5424

    from auditlog.export.syslog import SyslogSettings

    dd, node, by_seq = log
    lost = set(_damage(dd, node, "delete_middle"))
    seg, fr = frame_holding(dd, node, 5)
    flip_byte(seg, fr.payload_offset + 5)
    damaged = set(range(fr.first_seq, fr.last_seq + 1))
    svc = build_node(NodeConfig(StoreSettings(fsync="none")), dd)
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    srv.settimeout(15)
    fwd = forwarder(svc, SyslogSettings(target=f"tcp://127.0.0.1:{srv.getsockname()[1]}"), batch=25)
    svc.syslog = fwd
    fwd.start()
    try:
        conn, _ = srv.accept()
        conn.settimeout(10)
        buf, msgs = b"", []
        head = svc.writer.next_seq - 1
        deadline = time.monotonic() + 20
        while not msgs or max(int(audit_params(m)["seq"]) for m in msgs) < head:
            assert time.monotonic() < deadline
            buf += conn.recv(65536)
            msgs = [parse_rfc5424(m) for m in _frames(buf)]
        conn.close()
    finally:
        fwd.stop()
        srv.close()
        svc.close()
    params = [audit_params(m) for m in msgs]
    ok = {int(p["seq"]) for p in params if p["integrity"] == "ok"}
    alerts = [(m, p) for m, p in zip(msgs, params) if p["integrity"] == "violation"]
    assert ok.isdisjoint(lost | damaged) and set(by_seq) - lost - damaged <= ok
    assert all(m["pri"] == 13 * 8 + 1 for m, _ in alerts)  # facility log audit, severity alert
    texts = " ".join(p.get("violation", "") for _, p in alerts)
    assert f"segment_missing: seq {min(lost)}..{max(lost)}" in texts
    # the damaged frame: its entries flagged one by one, or one marker for its range (a
    # compressed payload with a byte changed no longer decompresses)
    assert damaged <= {int(p["seq"]) for _, p in alerts} or f"seq {min(damaged)}..{max(damaged)}" in texts
