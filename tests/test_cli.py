"""The ``auditlog`` command line, driven for real: every command, every filter,
every output format and every documented exit code (0 ok, 1 integrity
violation, 2 usage or input error).

Most tests go through ``click.testing.CliRunner`` (fast, in process); a few run
the installed console script in a subprocess to prove the entry point, the
environment variables and the exit codes end to end.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

import auditlog.cli.main
from auditlog.cli.main import cli as auditlog_cli
from auditlog.engine.datadir import DataDir
from auditlog.engine.entry import WIRE_FIELDS, format_ts
from auditlog.engine.log import NodeLog
from auditlog.engine.segment import list_segments, parse_segment_header
from auditlog.export.csv import CSV_COLUMNS

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = Path(sys.executable).with_name("auditlog")
NODE = "gw1"


# ----------------------------------------------------------------------------- helpers


def invoke(data_dir: Path | None, *args: str, input=None, config: Path | None = None):
    """Run the CLI in process; the environment cannot leak a data dir or a config in."""
    runner = CliRunner(env={"AUDITLOG_DATA_DIR": None, "AUDITLOG_CONFIG": None})
    argv: list[str] = []
    if data_dir is not None:
        argv += ["--data-dir", str(data_dir)]
    if config is not None:
        argv += ["--config", str(config)]
    return runner.invoke(auditlog_cli, [*argv, *args], input=input, catch_exceptions=False)


def ok(result) -> str:
    assert result.exit_code == 0, (result.exit_code, result.stdout, result.stderr)
    return result.stdout


def usage_error(result) -> str:
    """Exit 2 with exactly one ``auditlog: error:`` line on stderr and no traceback."""
    assert result.exit_code == 2, (result.exit_code, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("auditlog: error: "), result.stderr
    assert "Traceback" not in result.output
    return lines[0]


def rows(data_dir: Path, *args: str) -> list[dict]:
    out = ok(invoke(data_dir, "query", "--format", "ndjson", *args))
    return [json.loads(line) for line in out.splitlines()]


def seqs(data_dir: Path, *args: str) -> list[int]:
    return [r["seq"] for r in rows(data_dir, *args)]


def head(data_dir: Path) -> int:
    dd = DataDir(data_dir)
    return NodeLog(dd, dd.open()).head()[0]


def init_dir(path: Path, node: str = NODE) -> Path:
    ok(invoke(path, "init", "--node-id", node))
    return path


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return init_dir(tmp_path / "data")


def flip_payload_byte(data_dir: Path) -> Path:
    """Flip one byte inside the first frame's payload of the first segment."""
    seg = list_segments(data_dir / "segments")[0]
    raw = bytearray(seg.read_bytes())
    hsize = parse_segment_header(bytes(raw), None).size
    pos = hsize + 48 + 8  # past the segment header and the frame header
    raw[pos] ^= 0x01
    seg.write_bytes(bytes(raw))
    return seg


# Six events with distinct timestamps (one CLI append each), shared read-only
# by the query tests.
EVENTS = [
    ["--user", "alice", "--action", "auth.login", "--ip", "192.0.2.10"],
    ["--user", "alice", "--action", "auth.login_failed", "--ip", "192.0.2.10", "--failure"],
    [
        "--user",
        "bob",
        "--action",
        "config.filter_update",
        "--target",
        "filter-12",
        "--domain",
        "Example.COM",
        "--detail",
        "old=block",
        "--detail",
        "new=quarantine",
    ],
    ["--user", "bob", "--action", "config.dkim_rotate", "--target", "example.com", "--domain", "example.com"],
    [
        "--user",
        "carol",
        "--action",
        "quarantine.release",
        "--target",
        "mail-1",
        "--domain",
        "example.org",
        "--detail",
        "recipient=dave@example.org",
    ],
    [
        "--user",
        "carol",
        "--action",
        "quarantine.discard",
        "--target",
        "mail-2",
        "--ip",
        "2001:DB8:0::1",
        "--detail",
        "recipient=erin@example.org",
        "--user-agent",
        "Mozilla/5.0 (X11, Linux)",
    ],
]


@pytest.fixture(scope="module")
def log6(tmp_path_factory) -> Path:
    d = init_dir(tmp_path_factory.mktemp("q") / "data")
    for i, args in enumerate(EVENTS, 1):
        assert ok(invoke(d, "append", *args)).strip() == f"{NODE}:{i}"
    return d


# ----------------------------------------------------------------------------- init


def test_init_creates_data_dir_with_private_key(tmp_path):
    d = tmp_path / "data"
    result = invoke(d, "init", "--node-id", "gw-1")
    out = ok(result)
    assert "gw-1" in out
    assert (d / "node.id").read_text().strip() == "gw-1"
    key_path = d / "node.key"
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    key = key_path.read_bytes()
    assert len(key) == 32
    assert (d / "segments").is_dir()
    for text in (result.stdout, result.stderr):
        assert key.hex() not in text and key.hex().upper() not in text
    # and the node opens with that key
    assert DataDir(d).open().node_id == "gw-1"


def test_init_refuses_an_initialised_dir(data_dir):
    key_before = (data_dir / "node.key").read_bytes()
    msg = usage_error(invoke(data_dir, "init", "--node-id", "other"))
    assert "already initialised" in msg
    assert (data_dir / "node.key").read_bytes() == key_before
    assert (data_dir / "node.id").read_text().strip() == NODE


@pytest.mark.parametrize(
    "bad",
    [
        "Gw1",
        "-gw",
        "gw_1",
        "gw 1",
        "",
        "a" * 64,
        "gw1/x",
        "gw\u00e9",
        "gw1\n",
    ],
)
def test_init_rejects_invalid_node_id(tmp_path, bad):
    d = tmp_path / "data"
    msg = usage_error(invoke(d, "init", "--node-id", bad))
    assert "node id" in msg
    assert not (d / "node.key").exists() and not (d / "node.id").exists()


def test_key_never_printed_by_any_command(data_dir, tmp_path):
    key_hex = (data_dir / "node.key").read_bytes().hex()
    outputs = [
        invoke(data_dir, "append", "--user", "alice", "--action", "auth.login"),
        invoke(data_dir, "query", "--format", "json"),
        invoke(data_dir, "query", "--format", "csv"),
        invoke(data_dir, "verify", "--json"),
        invoke(data_dir, "verify"),
        invoke(data_dir, "export", "ndjson", "-o", str(tmp_path / "x.ndjson")),
        invoke(data_dir, "retention", "run", "--dry-run"),
    ]
    for r in outputs:
        assert r.exit_code == 0
        assert key_hex not in r.stdout + r.stderr
    assert key_hex not in (tmp_path / "x.ndjson").read_text()


def test_command_on_uninitialised_dir_is_a_usage_error(tmp_path):
    msg = usage_error(invoke(tmp_path / "nothing", "query"))
    assert "init" in msg
    assert not (tmp_path / "nothing" / "node.key").exists()


# ----------------------------------------------------------------------------- append


def test_append_prints_node_and_seq(data_dir):
    assert ok(invoke(data_dir, "append", "--user", "alice", "--action", "auth.login")) == f"{NODE}:1\n"
    assert ok(invoke(data_dir, "append", "--user", "bob", "--action", "auth.logout")) == f"{NODE}:2\n"
    got = rows(data_dir)
    assert [(r["id"], r["user"], r["action"], r["success"]) for r in got] == [
        (f"{NODE}:1", "alice", "auth.login", True),
        (f"{NODE}:2", "bob", "auth.logout", True),
    ]


def test_append_all_single_event_options(data_dir):
    ok(
        invoke(
            data_dir,
            "append",
            "--user",
            "admin",
            "--action",
            "config.domain_add",
            "--target",
            "example.net",
            "--domain",
            "Example.NET.",
            "--ip",
            "198.51.100.7",
            "--user-agent",
            "curl/8.5",
            "--failure",
        )
    )
    (r,) = rows(data_dir)
    assert (r["target"], r["domain"], r["ip"], r["user_agent"], r["success"]) == (
        "example.net",
        "example.net",
        "198.51.100.7",
        "curl/8.5",
        False,
    )


def test_append_detail_values_parsed_as_json(data_dir):
    ok(
        invoke(
            data_dir,
            "append",
            "--user",
            "a",
            "--action",
            "config.filter_update",
            "--detail",
            "n=3",
            "--detail",
            "ok=true",
            "--detail",
            "l=[1,2]",
            "--detail",
            'obj={"b": 1, "a": null}',
            "--detail",
            "s=hello world",
            "--detail",
            'quoted="3"',
            "--detail",
            "f=1.5",
            "--detail",
            "nan=NaN",
            "--detail",
            "eq=a=b",
            "--detail",
            "empty=",
        )
    )
    (r,) = rows(data_dir)
    assert r["details"] == {
        "n": 3,
        "ok": True,
        "l": [1, 2],
        "obj": {"a": None, "b": 1},
        "s": "hello world",
        "quoted": "3",
        "f": 1.5,
        "nan": "NaN",
        "eq": "a=b",
        "empty": "",
    }
    # stored canonically: keys sorted, recursively
    assert list(r["details"]) == sorted(r["details"])
    assert list(r["details"]["obj"]) == ["a", "b"]


def test_append_detail_last_key_wins(data_dir):
    ok(invoke(data_dir, "append", "--user", "a", "--action", "auth.login", "--detail", "k=1", "--detail", "k=2"))
    assert rows(data_dir)[0]["details"] == {"k": 2}


def test_append_failure_flag(data_dir):
    ok(invoke(data_dir, "append", "--user", "a", "--action", "auth.login_failed", "--failure"))
    ok(invoke(data_dir, "append", "--user", "a", "--action", "auth.login"))
    assert [r["success"] for r in rows(data_dir)] == [False, True]


@pytest.mark.parametrize(
    "given, stored",
    [
        ("::ffff:192.0.2.1", "192.0.2.1"),
        ("2001:DB8:0:0::0001", "2001:db8::1"),
        ("192.0.2.1", "192.0.2.1"),
        ("::1", "::1"),
    ],
)
def test_append_ip_normalised(data_dir, given, stored):
    ok(invoke(data_dir, "append", "--user", "a", "--action", "auth.login", "--ip", given))
    assert rows(data_dir)[0]["ip"] == stored
    # and the filter finds it under either spelling
    assert seqs(data_dir, "--ip", given) == [1]


def test_append_needs_user_and_action(data_dir):
    usage_error(invoke(data_dir, "append", "--user", "a"))
    usage_error(invoke(data_dir, "append", "--action", "auth.login"))
    assert head(data_dir) == 0


def test_append_file_and_single_event_options_exclusive(data_dir, tmp_path):
    f = tmp_path / "e.ndjson"
    f.write_text(json.dumps({"user": "a", "action": "auth.login"}) + "\n")
    msg = usage_error(invoke(data_dir, "append", "--file", str(f), "--user", "x"))
    assert "--file" in msg
    assert head(data_dir) == 0


# ----------------------------------------------------------------------------- append --file


def ndjson(*events: dict) -> str:
    return "".join(json.dumps(e) + "\n" for e in events)


def test_append_file_prints_count(data_dir, tmp_path):
    f = tmp_path / "events.ndjson"
    f.write_text(
        ndjson(
            {"user": "a", "action": "auth.login", "ip": "::ffff:10.0.0.1"},
            {"user": "b", "action": "config.rbl_enable", "success": False, "details": {"z": 1, "a": [1]}},
            {"user": "c", "action": "custom.thing", "target": "t", "domain": "Mail.Example.org"},
        )
    )
    assert ok(invoke(data_dir, "append", "--file", str(f))) == "3\n"
    got = rows(data_dir)
    assert [(r["seq"], r["user"]) for r in got] == [(1, "a"), (2, "b"), (3, "c")]
    assert got[0]["ip"] == "10.0.0.1"
    assert got[1]["success"] is False and got[1]["details"] == {"a": [1], "z": 1}
    assert got[2]["domain"] == "mail.example.org"


def test_append_file_from_stdin(data_dir):
    data = ndjson({"user": "a", "action": "auth.login"}, {"user": "b", "action": "auth.logout"})
    assert ok(invoke(data_dir, "append", "--file", "-", input=data.encode())) == "2\n"
    assert [r["user"] for r in rows(data_dir)] == ["a", "b"]


def test_append_file_skips_blank_lines_and_crlf(data_dir, tmp_path):
    f = tmp_path / "e.ndjson"
    f.write_bytes(b'\r\n{"user":"a","action":"auth.login"}\r\n\n   \n{"user":"b","action":"auth.login"}')
    assert ok(invoke(data_dir, "append", "--file", str(f))) == "2\n"


def test_append_file_is_all_or_nothing(data_dir, tmp_path):
    ok(invoke(data_dir, "append", "--user", "before", "--action", "auth.login"))
    before = rows(data_dir)
    seg_bytes = {p.name: p.read_bytes() for p in list_segments(data_dir / "segments")}
    f = tmp_path / "e.ndjson"
    f.write_text(
        ndjson({"user": "a", "action": "auth.login"}, {"user": "b", "action": "auth.login"})
        + '{"user": "c", "action": "NOT VALID"}\n'
        + ndjson({"user": "d", "action": "auth.login"})
    )
    msg = usage_error(invoke(data_dir, "append", "--file", str(f)))
    assert "line 3" in msg and "action" in msg
    assert rows(data_dir) == before
    assert head(data_dir) == 1
    assert {p.name: p.read_bytes() for p in list_segments(data_dir / "segments")} == seg_bytes


def test_append_file_reports_every_bad_line(data_dir, tmp_path):
    f = tmp_path / "e.ndjson"
    f.write_text('{"user": "a"}\n{"user":"ok","action":"auth.login"}\n[1]\n')
    msg = usage_error(invoke(data_dir, "append", "--file", str(f)))
    assert "line 1" in msg and "line 3" in msg and "line 2" not in msg
    assert head(data_dir) == 0


def test_append_file_larger_than_one_api_batch(data_dir, tmp_path):
    # a bulk import is not bounded by the HTTP API's 10 000 events per batch
    n = 10_050
    f = tmp_path / "many.ndjson"
    f.write_text("".join(f'{{"user":"u{i}","action":"auth.login"}}\n' for i in range(n)))
    assert ok(invoke(data_dir, "append", "--file", str(f))) == f"{n}\n"
    assert head(data_dir) == n


# ----------------------------------------------------------------------------- query filters


@pytest.mark.parametrize(
    "args, expected",
    [
        ([], [1, 2, 3, 4, 5, 6]),
        (["--user", "alice"], [1, 2]),
        (["--user", "alice,carol"], [1, 2, 5, 6]),
        (["--user", "nobody"], []),
        (["--action", "auth.login"], [1]),  # exact: not auth.login_failed
        (["--action", "config.*"], [3, 4]),
        (["--action", "auth.login,quarantine.*"], [1, 5, 6]),
        (["--action", "*"], [1, 2, 3, 4, 5, 6]),
        (["--target", "filter-12"], [3]),
        (["--target", "mail-1,mail-2"], [5, 6]),
        (["--domain", "example.com"], [3, 4]),
        (["--domain", "EXAMPLE.COM."], [3, 4]),  # normalised like ingest
        (["--domain", "example.org"], [5]),
        (["--ip", "192.0.2.10"], [1, 2]),
        (["--ip", "2001:db8::1"], [6]),
        (["--ip", "2001:DB8:0:0:0:0:0:1,::ffff:192.0.2.10"], [1, 2, 6]),
        (["--recipient", "dave@example.org"], [5]),
        (["--recipient", "dave@example.org,erin@example.org"], [5, 6]),
        (["--success"], [1, 3, 4, 5, 6]),
        (["--failure"], [2]),
        (["--node", NODE], [1, 2, 3, 4, 5, 6]),
        (["--node", "gw2"], []),
        (["--node", "gw2,gw1"], [1, 2, 3, 4, 5, 6]),
        # AND across fields
        (["--user", "alice", "--failure"], [2]),
        (["--user", "alice", "--success"], [1]),
        (["--user", "bob", "--action", "config.*", "--domain", "example.com"], [3, 4]),
        (["--user", "carol", "--ip", "2001:db8::1"], [6]),
        (["--user", "alice", "--action", "config.*"], []),
        (["--action", "quarantine.*", "--recipient", "erin@example.org", "--user", "carol"], [6]),
    ],
)
def test_query_filters(log6, args, expected):
    assert seqs(log6, *args) == expected


def test_query_time_range_relative(log6):
    assert seqs(log6, "--from", "-1h") == [1, 2, 3, 4, 5, 6]
    assert seqs(log6, "--to", "-1h") == []
    assert seqs(log6, "--from", "-2d", "--to", "now") == [1, 2, 3, 4, 5, 6]
    assert seqs(log6, "--from", "now") == []


def test_query_time_range_dates(log6):
    day = rows(log6)[0]["ts"][:10]
    next_day = (dt.date.fromisoformat(day) + dt.timedelta(days=1)).isoformat()
    assert seqs(log6, "--from", day) == [1, 2, 3, 4, 5, 6]
    assert seqs(log6, "--to", day) == []
    assert seqs(log6, "--from", "2000-01-01", "--to", next_day) == [1, 2, 3, 4, 5, 6]
    assert seqs(log6, "--from", next_day) == []


def test_query_time_range_rfc3339_from_inclusive_to_exclusive(log6):
    ts = {r["seq"]: r["ts"] for r in rows(log6)}
    assert len(set(ts.values())) == 6
    assert seqs(log6, "--from", ts[3]) == [3, 4, 5, 6]
    assert seqs(log6, "--to", ts[3]) == [1, 2]
    assert seqs(log6, "--from", ts[2], "--to", ts[5]) == [2, 3, 4]
    # an explicit offset names the same instant
    t = dt.datetime.strptime(ts[4], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=dt.UTC)
    shifted = t.astimezone(dt.timezone(dt.timedelta(hours=2))).isoformat()
    assert seqs(log6, "--from", shifted) == [4, 5, 6]


def test_query_time_and_fields_combined(log6):
    ts = {r["seq"]: r["ts"] for r in rows(log6)}
    assert seqs(log6, "--from", ts[2], "--user", "alice,bob") == [2, 3, 4]
    assert seqs(log6, "--to", ts[5], "--action", "quarantine.*") == []


# ----------------------------------------------------------------------------- query output


def test_query_format_json(log6):
    data = json.loads(ok(invoke(log6, "query", "--format", "json")))
    assert isinstance(data, list) and len(data) == 6
    for i, e in enumerate(data, 1):
        assert set(e) == set(WIRE_FIELDS)
        assert e["id"] == f"{NODE}:{i}" and e["seq"] == i and e["node"] == NODE
        assert e["integrity"] == "ok"
        assert len(e["signature"]) == 64 and int(e["signature"], 16) >= 0
        assert e["ts"].endswith("Z") and len(e["ts"]) == len("2026-03-14T09:12:33.123456Z")
    assert data[2]["details"] == {"new": "quarantine", "old": "block"}
    assert data == rows(log6)  # json and ndjson agree


def test_query_format_json_empty_is_valid(log6):
    assert json.loads(ok(invoke(log6, "query", "--format", "json", "--user", "nobody"))) == []


def test_query_format_ndjson(log6):
    out = ok(invoke(log6, "query", "--format", "ndjson", "--user", "carol"))
    assert out.endswith("\n")
    lines = out.splitlines()
    assert len(lines) == 2
    parsed = [json.loads(line) for line in lines]
    assert [p["target"] for p in parsed] == ["mail-1", "mail-2"]
    assert parsed[1]["user_agent"] == "Mozilla/5.0 (X11, Linux)"


def test_query_format_csv(log6):
    out = ok(invoke(log6, "query", "--format", "csv"))
    table = list(csv.reader(io.StringIO(out)))
    assert tuple(table[0]) == CSV_COLUMNS
    body = [dict(zip(CSV_COLUMNS, r)) for r in table[1:]]
    wire = rows(log6)
    assert len(body) == len(wire) == 6
    for c, w in zip(body, wire):
        assert c["node_id"] == w["node"] and int(c["seq"]) == w["seq"]
        assert c["timestamp"] == w["ts"] and c["user"] == w["user"] and c["action"] == w["action"]
        assert c["ip_address"] == (w["ip"] or "") and c["target"] == (w["target"] or "")
        assert c["success"] == ("true" if w["success"] else "false")
        assert json.loads(c["details"]) == w["details"]
        assert c["signature"] == w["signature"] and c["integrity"] == "ok"
    assert body[5]["user_agent"] == "Mozilla/5.0 (X11, Linux)"  # comma survives quoting


def test_query_format_table(log6):
    out = ok(invoke(log6, "query"))  # table is the default
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["time", "id", "user"]
    assert len(lines) == 1 + 6
    assert lines[1].split()[1:4] == [f"{NODE}:1", "alice", "auth.login"]
    assert "NO" in lines[2].split()  # the failed login
    assert all(line.rstrip().endswith("ok") for line in lines[1:])
    assert out == ok(invoke(log6, "query", "--format", "table"))


def test_query_limit_and_order(log6):
    assert seqs(log6, "--limit", "2") == [1, 2]
    assert seqs(log6, "--limit", "100") == [1, 2, 3, 4, 5, 6]
    assert seqs(log6, "--order", "desc") == [6, 5, 4, 3, 2, 1]
    assert seqs(log6, "--order", "asc") == [1, 2, 3, 4, 5, 6]
    assert seqs(log6, "--order", "desc", "--limit", "2") == [6, 5]
    assert seqs(log6, "--order", "desc", "--user", "alice") == [2, 1]
    out = ok(invoke(log6, "query", "--limit", "1"))
    assert len(out.splitlines()) == 2  # header + one row
    data = json.loads(ok(invoke(log6, "query", "--format", "json", "--limit", "3", "--order", "desc")))
    assert [e["seq"] for e in data] == [6, 5, 4]


def test_query_does_not_write(log6):
    before = {p.name: p.stat().st_size for p in list_segments(log6 / "segments")}
    ok(invoke(log6, "query", "--format", "csv"))
    assert {p.name: p.stat().st_size for p in list_segments(log6 / "segments")} == before


# ----------------------------------------------------------------------------- verify


def test_verify_ok(log6):
    out = ok(invoke(log6, "verify"))
    assert out.startswith("ok:") and "6 entries" in out


def test_verify_json_shape(log6):
    report = json.loads(ok(invoke(log6, "verify", "--json")))
    assert report == {"ok": True, "entries_checked": 6, "violations": []}


def test_verify_and_query_exit_1_on_violation(data_dir):
    for i in range(3):
        ok(invoke(data_dir, "append", "--user", f"u{i}", "--action", "auth.login"))
    flip_payload_byte(data_dir)

    r = invoke(data_dir, "verify", "--json")
    assert r.exit_code == 1
    report = json.loads(r.stdout)
    assert set(report) == {"ok", "entries_checked", "violations"}
    assert report["ok"] is False and report["violations"]
    for v in report["violations"]:
        assert set(v) == {"kind", "node", "seq_from", "seq_to", "segment", "detail"}
        assert v["node"] == NODE and v["segment"].endswith(".seg")

    r = invoke(data_dir, "verify")
    assert r.exit_code == 1 and r.stdout.startswith("VIOLATIONS")

    # query prints everything first, then exits 1
    r = invoke(data_dir, "query", "--format", "ndjson")
    assert r.exit_code == 1
    printed = [json.loads(line) for line in r.stdout.splitlines()]
    assert printed and any(e["integrity"] == "violation" for e in printed)
    assert "integrity violation" in r.stderr
    assert "Traceback" not in r.output


# ----------------------------------------------------------------------------- retention


def future(days: int) -> str:
    """``days`` after the node's clock (frozen in tests, tests/conftest.py), as RFC 3339."""
    from auditlog.engine import clock

    return format_ts(clock.now_us() + days * 86_400_000_000)


MULTI_N = 400  # enough entries to fill several 4 KiB segments once compressed


@pytest.fixture
def multi_segment(tmp_path) -> tuple[Path, Path]:
    """A log of 400 entries over several small segments, and the config that made it."""
    cfg = tmp_path / "small.toml"
    cfg.write_text('segment_max_bytes = 4096\nretention_days = 90\nfsync = "none"\n')
    d = init_dir(tmp_path / "data")
    f = tmp_path / "e.ndjson"
    f.write_text(
        "".join(
            json.dumps({"user": f"u{i}", "action": "auth.login", "details": {"pad": "x" * 40}}) + "\n"
            for i in range(MULTI_N)
        )
    )
    ok(invoke(d, "append", "--file", str(f), config=cfg))
    assert len(list_segments(d / "segments")) >= 3
    return d, cfg


def snapshot(data_dir: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in list_segments(data_dir / "segments")}


def test_retention_nothing_to_drop_now(multi_segment):
    d, cfg = multi_segment
    before = snapshot(d)
    out = ok(invoke(d, "retention", "run", config=cfg))
    assert out.startswith("nothing to drop") and "90 days" in out
    assert snapshot(d) == before and head(d) == MULTI_N


def test_retention_dry_run_changes_nothing(multi_segment):
    d, cfg = multi_segment
    before = snapshot(d)
    out = ok(invoke(d, "retention", "run", "--dry-run", "--as-of", future(100), config=cfg))
    assert out.startswith("would drop ")
    assert snapshot(d) == before
    assert head(d) == MULTI_N
    assert seqs(d, "--action", "audit.retention_purge") == []
    assert not (d / "state" / "retention.json").exists()


def test_retention_run_drops_old_segments_and_records_purge(multi_segment):
    d, cfg = multi_segment
    n_segments = len(snapshot(d))
    dry = ok(invoke(d, "retention", "run", "--dry-run", "--as-of", future(100), config=cfg))
    out = ok(invoke(d, "retention", "run", "--as-of", future(100), config=cfg))
    assert out.startswith("dropped ")
    assert dry.startswith("would drop ")
    assert len(snapshot(d)) < n_segments
    purge = rows(d, "--action", "audit.retention_purge")
    assert len(purge) == 1
    det = purge[0]["details"]
    assert det["seq_from"] == 1 and det["count"] == det["seq_to"] and det["retention_days"] == 90
    remaining = rows(d)
    assert remaining[0]["seq"] == det["seq_to"] + 1  # nothing else lost
    assert remaining[-1]["seq"] == MULTI_N + 1 == purge[0]["seq"]  # seq never reused
    # verification starts from the purge anchor
    assert json.loads(ok(invoke(d, "verify", "--json")))["ok"] is True
    # the last run is the purge entry itself (nothing beside the log claims it)
    from auditlog.engine.retention import load_last_run
    from auditlog.engine.state import StateSeal

    node = DataDir(d).open()
    last, problem = load_last_run(NodeLog(DataDir(d), node), StateSeal(node.key, node.node_id), d / "state")
    assert problem is None and not (d / "state" / "retention.json").exists()
    assert last["dropped_entries"] == det["count"] and last["entry_id"] == purge[0]["id"]
    assert last["ran_at"] == purge[0]["ts"]


def test_retention_override_under_90_refused(multi_segment):
    d, cfg = multi_segment
    before = snapshot(d)
    msg = usage_error(invoke(d, "retention", "run", "--retention-days", "30", "--as-of", future(100), config=cfg))
    assert "90" in msg
    assert snapshot(d) == before


def test_retention_config_under_90_refused(data_dir, tmp_path):
    ok(invoke(data_dir, "append", "--user", "a", "--action", "auth.login"))
    before = snapshot(data_dir)
    cfg = tmp_path / "c.toml"
    cfg.write_text("retention_days = 30\n")
    msg = usage_error(invoke(data_dir, "retention", "run", "--as-of", future(400), config=cfg))
    assert "90" in msg and "retention_days" in msg
    assert snapshot(data_dir) == before
    assert not (data_dir / "state" / "retention.json").exists()


def test_retention_forever_keeps_everything(multi_segment, tmp_path):
    d, _ = multi_segment
    before = snapshot(d)
    out = ok(invoke(d, "retention", "run", "--retention-days", "forever", "--as-of", "2999-01-01"))
    assert out.startswith("nothing to drop") and "forever" in out
    cfg = tmp_path / "forever.toml"
    cfg.write_text('retention_days = "forever"\nsegment_max_bytes = 4096\n')
    out = ok(invoke(d, "retention", "run", "--as-of", "2999-01-01", config=cfg))
    assert out.startswith("nothing to drop") and "forever" in out
    assert snapshot(d) == before and head(d) == MULTI_N


def test_retention_bad_as_of(data_dir):
    msg = usage_error(invoke(data_dir, "retention", "run", "--as-of", "yesterday-ish"))
    assert "yesterday-ish" in msg


def test_retention_dry_run_predicts_the_real_run_on_a_quiet_node(data_dir):
    for i in range(3):
        ok(invoke(data_dir, "append", "--user", f"u{i}", "--action", "auth.login"))
    dry = ok(invoke(data_dir, "retention", "run", "--dry-run", "--as-of", future(400)))
    real = ok(invoke(data_dir, "retention", "run", "--as-of", future(400)))
    assert real.startswith("dropped ")
    assert dry.startswith("would drop ")
    # the same segments and entries, apart from the verb
    assert dry.split(";")[0].replace("would drop", "dropped") == real.split(";")[0]


# ----------------------------------------------------------------------------- export


def test_export_csv_and_audit_entry(log6, tmp_path):
    d = tmp_path / "copy"
    shutil.copytree(log6, d)
    out_file = tmp_path / "alice.csv"
    r = invoke(d, "export", "csv", "--user", "alice", "--from", "2000-01-01", "-o", str(out_file))
    assert r.exit_code == 0, r.stderr
    assert "exported 2 entries" in r.stderr
    raw = out_file.read_bytes()
    assert raw.startswith(b"\xef\xbb\xbf")  # BOM for Excel
    table = list(csv.reader(io.StringIO(raw.decode("utf-8-sig"), newline="")))
    assert tuple(table[0]) == CSV_COLUMNS
    assert [(t[2], t[3], t[4]) for t in table[1:]] == [
        ("1", "alice", "auth.login"),
        ("2", "alice", "auth.login_failed"),
    ]
    assert not list(tmp_path.glob("*.part"))

    (entry,) = rows(d, "--action", "audit.export")
    assert entry["seq"] == 7
    assert entry["details"]["format"] == "csv"
    assert entry["details"]["rows"] == 2
    assert entry["details"]["filters"]["user"] == "alice"
    assert entry["details"]["filters"]["from"].startswith("2000-01-01T00:00:00")
    assert entry["details"]["integrity_violations"] == 0


def test_export_csv_without_bom_reads_with_plain_dictreader(log6, tmp_path):
    d = tmp_path / "copy"
    shutil.copytree(log6, d)
    out_file = tmp_path / "plain.csv"
    r = invoke(d, "export", "csv", "--no-bom", "--user", "alice", "-o", str(out_file))
    assert r.exit_code == 0, r.stderr
    raw = out_file.read_bytes()
    assert not raw.startswith(b"\xef\xbb\xbf")
    with open(out_file, newline="", encoding="utf-8") as f:  # what a script does without utf-8-sig
        got = list(csv.DictReader(f))
    assert [(x["seq"], x["user"]) for x in got] == [("1", "alice"), ("2", "alice")]
    r = invoke(d, "export", "ndjson", "--no-bom", "-o", str(tmp_path / "x.ndjson"))
    assert r.exit_code == 2 and "--no-bom goes with a CSV export" in r.stderr


def test_export_ndjson_matches_query(log6, tmp_path):
    d = tmp_path / "copy"
    shutil.copytree(log6, d)
    expected = rows(d, "--action", "quarantine.*")
    out_file = tmp_path / "q.ndjson"
    r = invoke(d, "export", "ndjson", "--action", "quarantine.*", "-o", str(out_file))
    assert r.exit_code == 0, r.stderr
    assert [json.loads(line) for line in out_file.read_text().splitlines()] == expected
    (entry,) = rows(d, "--action", "audit.export")
    assert entry["details"]["rows"] == 2 and entry["details"]["format"] == "ndjson"
    assert entry["details"]["filters"] == {"action": "quarantine.*"}


def test_export_empty_selection_still_audited(data_dir, tmp_path):
    ok(invoke(data_dir, "append", "--user", "a", "--action", "auth.login"))
    out_file = tmp_path / "none.csv"
    assert invoke(data_dir, "export", "csv", "--user", "nobody", "-o", str(out_file)).exit_code == 0
    assert out_file.read_text(encoding="utf-8-sig").splitlines() == [",".join(CSV_COLUMNS)]
    (entry,) = rows(data_dir, "--action", "audit.export")
    assert entry["details"]["rows"] == 0


def test_export_bad_format_and_filter_write_nothing(data_dir, tmp_path):
    ok(invoke(data_dir, "append", "--user", "a", "--action", "auth.login"))
    out_file = tmp_path / "x.out"
    usage_error(invoke(data_dir, "export", "xml", "-o", str(out_file)))
    usage_error(invoke(data_dir, "export", "csv", "--from", "garbage", "-o", str(out_file)))
    usage_error(invoke(data_dir, "export", "csv"))  # -o is required
    assert not out_file.exists()
    assert head(data_dir) == 1


# ----------------------------------------------------------------------------- bench, help


def test_bench_help():
    r = invoke(None, "bench", "--help")
    assert r.exit_code == 0
    assert "--quick" in r.stdout and "--json" in r.stdout and "Example" in r.stdout


def _all_commands(group: click.Group, prefix: tuple[str, ...] = ()):
    for name, cmd in sorted(group.commands.items()):
        yield prefix + (name,), cmd
        if isinstance(cmd, click.Group):
            yield from _all_commands(cmd, prefix + (name,))


def test_every_command_documented_with_example():
    commands = list(_all_commands(auditlog_cli))
    names = {" ".join(p) for p, _ in commands}
    assert {"init", "append", "query", "verify", "retention", "retention run", "export", "bench"} <= names
    for path, cmd in [((), auditlog_cli), *commands]:
        assert cmd.help and "Example" in cmd.help, f"auditlog {' '.join(path)} has no example"
        r = invoke(None, *path, "--help")
        assert r.exit_code == 0 and "Example" in r.stdout
    readme = ROOT / "README.md"
    if readme.exists():
        # a line that runs auditlog and names the command (global options may come between)
        lines = [line for line in readme.read_text(encoding="utf-8").splitlines() if "auditlog" in line]
        for path, _ in commands:
            word = re.compile(r"(?<![\w.-])" + re.escape(" ".join(path)) + r"(?![\w-])")
            assert any(word.search(line.split("auditlog", 1)[1]) for line in lines), (
                f"README.md does not mention auditlog {' '.join(path)}"
            )


# ----------------------------------------------------------------------------- console script


def script(*args: str, env_extra: dict | None = None, input: bytes | None = None, cwd=None):
    env = {k: v for k, v in os.environ.items() if k not in ("AUDITLOG_DATA_DIR", "AUDITLOG_CONFIG")}
    env.update(env_extra or {})
    return subprocess.run([str(SCRIPT), *args], env=env, input=input, capture_output=True, timeout=60, cwd=cwd)


def test_console_script_end_to_end(tmp_path):
    assert SCRIPT.exists()
    env = {"AUDITLOG_DATA_DIR": str(tmp_path / "data")}
    r = script("init", "--node-id", "node-a", env_extra=env)
    assert r.returncode == 0, r.stderr
    r = script("append", "--user", "alice", "--action", "auth.login", env_extra=env)
    assert (r.returncode, r.stdout) == (0, b"node-a:1\n")
    r = script("append", "--file", "-", env_extra=env, input=ndjson({"user": "b", "action": "auth.logout"}).encode())
    assert (r.returncode, r.stdout) == (0, b"1\n")
    r = script("query", "--format", "ndjson", env_extra=env)
    assert r.returncode == 0
    assert [json.loads(x)["user"] for x in r.stdout.splitlines()] == ["alice", "b"]
    r = script("verify", "--json", env_extra=env)
    assert r.returncode == 0 and json.loads(r.stdout)["entries_checked"] == 2
    # --data-dir beats the environment
    r = script("--data-dir", str(tmp_path / "other"), "query", env_extra=env)
    assert r.returncode == 2 and b"not an auditlog data dir" in r.stderr


def test_console_script_exit_2_one_line_no_traceback(tmp_path):
    env = {"AUDITLOG_DATA_DIR": str(tmp_path / "data")}
    assert script("init", "--node-id", "n1", env_extra=env).returncode == 0
    for args in (
        ["append", "--user", "a", "--action", "Bad"],
        ["query", "--limit", "0"],
        ["query", "--order", "sideways"],
        ["query", "--from", "garbage"],
        ["init", "--node-id", "n1"],
        ["nosuchcommand"],
    ):
        r = script(*args, env_extra=env)
        assert r.returncode == 2, (args, r.stderr)
        err = r.stderr.decode()
        assert err.startswith("auditlog: error: ") and err.count("\n") == 1, (args, err)
        assert "Traceback" not in err and r.stdout == b""


def test_console_script_config_from_environment(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text("retention_days = 30\n")
    env = {"AUDITLOG_DATA_DIR": str(tmp_path / "data"), "AUDITLOG_CONFIG": str(cfg)}
    r = script("init", "--node-id", "n1", env_extra=env)
    assert r.returncode == 2 and b"90" in r.stderr
    assert not (tmp_path / "data" / "node.key").exists()


def test_console_script_exit_1_on_violation(tmp_path):
    env = {"AUDITLOG_DATA_DIR": str(tmp_path / "data")}
    assert script("init", "--node-id", "n1", env_extra=env).returncode == 0
    assert script("append", "--user", "a", "--action", "auth.login", env_extra=env).returncode == 0
    flip_payload_byte(tmp_path / "data")
    assert script("verify", env_extra=env).returncode == 1
    r = script("query", env_extra=env)
    assert r.returncode == 1 and b"violation" in r.stdout
    assert b"Traceback" not in r.stderr


def test_console_script_default_data_dir_is_cwd_relative(tmp_path):
    r = script("init", "--node-id", "n1", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "auditlog-data" / "node.key").exists()


def test_console_script_version():
    r = script("--version")
    assert r.returncode == 0 and b"auditlog" in r.stdout


def test_module_has_main():
    assert callable(auditlog.cli.main.main)
