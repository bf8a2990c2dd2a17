"""Hostile and mistaken input to the CLI: every case must end the same way.

Exit code 2, exactly one line on stderr starting with ``auditlog: error:``, no
Python traceback anywhere, and nothing written (the node's seq head and its
segment bytes are unchanged).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from auditlog.cli.main import cli as auditlog_cli
from auditlog.engine.datadir import DataDir
from auditlog.engine.log import NodeLog
from auditlog.engine.segment import list_segments

SCRIPT = Path(sys.executable).with_name("auditlog")
GOOD = {"user": "alice", "action": "auth.login"}
GOOD_LINE = json.dumps(GOOD).encode()


def invoke(data_dir: Path, *args: str, input=None, config: Path | str | None = None):
    runner = CliRunner(env={"AUDITLOG_DATA_DIR": None, "AUDITLOG_CONFIG": None})
    argv = ["--data-dir", str(data_dir)]
    if config is not None:
        argv += ["--config", str(config)]
    return runner.invoke(auditlog_cli, [*argv, *args], input=input, catch_exceptions=False)


def head(data_dir: Path) -> int:
    dd = DataDir(data_dir)
    return NodeLog(dd, dd.open()).head()[0]


def state(data_dir: Path) -> tuple[int, dict[str, bytes], list[str]]:
    segs = {p.name: p.read_bytes() for p in list_segments(data_dir / "segments")}
    files = sorted(str(p.relative_to(data_dir)) for p in data_dir.rglob("*") if p.is_file() and p.name != "LOCK")
    return head(data_dir), segs, files


@pytest.fixture
def log(tmp_path: Path) -> Path:
    """A data dir holding two entries."""
    d = tmp_path / "data"
    r = invoke(d, "init", "--node-id", "gw1")
    assert r.exit_code == 0, r.stderr
    for user in ("a", "b"):
        assert invoke(d, "append", "--user", user, "--action", "auth.login").exit_code == 0
    assert head(d) == 2
    return d


def rejected(result, data_dir: Path, before) -> str:
    """Assert the documented failure shape; return the error line."""
    assert result.exit_code == 2, (result.exit_code, result.stdout, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("auditlog: error: "), result.stderr
    assert len(lines[0]) > len("auditlog: error: ") + 5
    assert "Traceback" not in result.output
    assert result.stdout == ""
    assert state(data_dir) == before
    return lines[0]


def append_file(data_dir: Path, tmp_path: Path, content: bytes, name: str = "in.ndjson"):
    f = tmp_path / name
    f.write_bytes(content)
    return invoke(data_dir, "append", "--file", str(f))


# ----------------------------------------------------------------------------- malformed NDJSON


@pytest.mark.parametrize(
    "content, expect",
    [
        (GOOD_LINE + b"\n{bad json\n" + GOOD_LINE + b"\n", "line 2: invalid JSON"),
        (b'{"user": "a", "action": "auth.login"\n', "line 1: invalid JSON"),
        (b"[1, 2]\n", "line 1: expected an object, got array"),
        (GOOD_LINE + b'\n"just a string"\n', "line 2: expected an object, got string"),
        (b"42\n", "expected an object, got integer"),
        (b"null\n", "expected an object, got null"),
        (GOOD_LINE + b"\ntrue\n", "line 2: expected an object"),
        (b'{"user": "a", "action": "auth.login", "target": "\xff\xfe"}\n', "line 1: not valid UTF-8"),
        (GOOD_LINE + b"\n\xc3\x28\n", "line 2: not valid UTF-8"),
        (b'{"user": "a", "user": "b", "action": "auth.login"}\n', "duplicate key"),
        (b'{"user": "a", "action": "auth.login", "details": {"n": NaN}}\n', "line 1"),
        (b'{"user": "a", "action": "auth.login", "details": {"n": 1' + b"0" * 5000 + b"}}\n", "line 1"),
        (b"[" * 100_000 + b"]" * 100_000 + b"\n", "line 1"),
    ],
)
def test_malformed_ndjson(log, tmp_path, content, expect):
    before = state(log)
    msg = rejected(append_file(log, tmp_path, content), log, before)
    assert expect in msg


@pytest.mark.parametrize("content", [b"", b"\n\n   \n", b"\xef\xbb\xbf"])
def test_empty_ndjson_file(log, tmp_path, content):
    before = state(log)
    msg = rejected(append_file(log, tmp_path, content), log, before)
    assert "empty" in msg


def test_empty_stdin(log):
    before = state(log)
    msg = rejected(invoke(log, "append", "--file", "-", input=b""), log, before)
    assert "empty" in msg


def test_twenty_megabyte_line(log, tmp_path):
    before = state(log)
    big = json.dumps({**GOOD, "target": "x" * (20 * 1024 * 1024)}).encode()
    msg = rejected(append_file(log, tmp_path, GOOD_LINE + b"\n" + big + b"\n"), log, before)
    assert "line 2" in msg and "target" in msg and "too long" in msg
    assert len(msg) < 500  # the value is not echoed back


def test_twenty_megabyte_line_of_garbage(log, tmp_path):
    before = state(log)
    msg = rejected(append_file(log, tmp_path, b"{" + b"x" * (20 * 1024 * 1024) + b"\n"), log, before)
    assert "line 1" in msg and len(msg) < 500


def test_missing_file(log, tmp_path):
    before = state(log)
    msg = rejected(invoke(log, "append", "--file", str(tmp_path / "nope.ndjson")), log, before)
    assert "nope.ndjson" in msg


def test_file_is_a_directory(log, tmp_path):
    before = state(log)
    rejected(invoke(log, "append", "--file", str(tmp_path)), log, before)


def test_many_bad_lines_give_one_bounded_line(log, tmp_path):
    before = state(log)
    content = b"".join(b"[%d]\n" % i for i in range(5000))
    msg = rejected(append_file(log, tmp_path, content), log, before)
    assert "line 1:" in msg and "more" in msg
    assert len(msg) < 5000


# ----------------------------------------------------------------------------- invalid event fields


@pytest.mark.parametrize(
    "event, field",
    [
        ({"user": "a", "action": "Auth.Login"}, "action"),
        ({"user": "a", "action": "auth"}, "action"),
        ({"user": "a", "action": "made.up_action"}, "action"),  # not in the taxonomy
        ({"user": "a", "action": 5}, "action"),
        ({"user": "a"}, "action"),
        ({"action": "auth.login"}, "user"),
        ({"user": "", "action": "auth.login"}, "user"),
        ({"user": ["a"], "action": "auth.login"}, "user"),
        ({"user": "a", "action": "auth.login", "ip": "999.1.1.1"}, "ip"),
        ({"user": "a", "action": "auth.login", "ip": "10.0.0.1/24"}, "ip"),
        ({"user": "a", "action": "auth.login", "ip": 167772161}, "ip"),
        ({"user": "a", "action": "auth.login", "success": "yes"}, "success"),
        ({"user": "a", "action": "auth.login", "success": 1}, "success"),
        ({"user": "a", "action": "auth.login", "details": "x=1"}, "details"),
        ({"user": "a", "action": "auth.login", "details": [1, 2]}, "details"),
        ({"user": "a", "action": "auth.login", "target": 12}, "target"),
        ({"user": "a", "action": "auth.login", "domain": "not a domain"}, "domain"),
        ({"user": "a", "action": "auth.login", "domain": "-bad-.com"}, "domain"),
        ({"user": "a", "action": "auth.login", "user_agent": {"x": 1}}, "user_agent"),
        ({"user": "a", "action": "auth.login", "details": {"big": "x" * 20000}}, "details"),
        ({"user": "a", "action": "auth.login", "details": {f"k{i}": "v" * 100 for i in range(200)}}, "details"),
        ({"user": "a", "action": "auth.login", "details": {"n": 2**70}}, "details"),
        ({"user": "a", "action": "auth.login", "details": {"d": [[[[[[[[[[1]]]]]]]]]]}}, "details"),
        ({"user": "a\x00b", "action": "auth.login"}, "user"),
        ({"user": "a", "action": "auth.login", "target": "line1\nline2"}, "target"),
        ({"user": "a", "action": "auth.login", "user_agent": "ua\r\nX-Forged: 1"}, "user_agent"),
        ({"user": "a", "action": "auth.login", "target": "esc\x1b[31m"}, "target"),
        ({"user": "a", "action": "auth.login", "target": "c1\x85"}, "target"),
        ({"user": "a", "action": "auth.login", "bogus": 1}, "bogus"),
        ({"user": "a", "action": "auth.login", "seq": 7}, "seq"),
        ({"user": "a", "action": "auth.login", "signature": "00" * 32}, "signature"),
        ({"user": "a", "action": "auth.login", "integrity": "ok"}, "integrity"),
        ({"user": "a", "action": "auth.login", "id": "gw1:1"}, "id"),
        ({"user": "a", "action": "auth.login", "User": "x"}, "User"),
    ],
)
def test_invalid_event_in_file(log, tmp_path, event, field):
    before = state(log)
    content = GOOD_LINE + b"\n" + json.dumps(event).encode() + b"\n" + GOOD_LINE + b"\n"
    msg = rejected(append_file(log, tmp_path, content), log, before)
    assert "line 2" in msg and repr(field) in msg, msg
    assert "line 1" not in msg and "line 3" not in msg


def test_control_characters_never_reach_the_terminal_raw(log, tmp_path):
    before = state(log)
    content = json.dumps({"user": "a", "action": "auth.login", "bogus\nfield\x1b[2J": 1}).encode()
    msg = rejected(append_file(log, tmp_path, content + b"\n"), log, before)
    assert "\x1b" not in msg


@pytest.mark.parametrize(
    "args, field",
    [
        (["--user", "a", "--action", "Auth.Login"], "action"),
        (["--user", "a", "--action", "nosuch.action"], "action"),
        (["--user", "a", "--action", "auth.login", "--ip", "999.1.1.1"], "ip"),
        (["--user", "a", "--action", "auth.login", "--ip", "localhost"], "ip"),
        (["--user", "a", "--action", "auth.login", "--domain", "exa mple.com"], "domain"),
        (["--user", "a\x01b", "--action", "auth.login"], "user"),
        (["--user", "a", "--action", "auth.login", "--target", "x\ny"], "target"),
        (["--user", "   ", "--action", "auth.login"], "user"),
        (["--user", "a", "--action", "auth.login", "--detail", "big=" + "x" * 20000], "details"),
        (["--user", "a", "--action", "auth.login", "--detail", "novalue"], "details"),
        (["--user", "a", "--action", "auth.login", "--detail", "=v"], "details"),
        (["--user", "a", "--action", "auth.login", "--detail", "n=1" + "0" * 30], "details"),
        (["--user", "x" * 5000, "--action", "auth.login"], "user"),
    ],
)
def test_invalid_single_append(log, args, field):
    before = state(log)
    msg = rejected(invoke(log, "append", *args), log, before)
    assert field in msg
    assert len(msg) < 1000


def test_unknown_option(log):
    before = state(log)
    msg = rejected(invoke(log, "append", "--user", "a", "--action", "auth.login", "--colour", "red"), log, before)
    assert "--colour" in msg


# ----------------------------------------------------------------------------- garbage config


@pytest.mark.parametrize(
    "content, expect",
    [
        (b"retention_days = [\n", "not valid TOML"),
        (b"this is not toml at all\n", "not valid TOML"),
        (b"[server\nlisten = 1\n", "not valid TOML"),
        (b"fsync = 'always'\nfsync = 'none'\n", "not valid TOML"),  # duplicate key
        (bytes(range(256)) * 4, "not UTF-8"),
        (b"\x00\x01\x02ELF\xff\xfe", "config file"),
        (b"colour = 'blue'\n", "unknown setting 'colour'"),
        (b"retention-days = 365\n", "unknown setting"),
        (b"server = 'x'\n", "[server] must be a table"),
        (b"fsync = 3\n", "fsync"),
        (b"fsync = 'sometimes'\n", "fsync"),
        (b"retention_days = '365 days'\n", "retention_days"),
        (b"retention_days = 365.5\n", "retention_days"),
        (b"retention_days = true\n", "retention_days"),
        (b"retention_days = 30\n", "90"),
        (b"retention_days = 89\n", "90"),
        (b"retention_days = -1\n", "90"),
        (b"segment_max_bytes = 'big'\n", "segment_max_bytes"),
        (b"segment_max_bytes = 100\n", "segment_max_bytes"),
        (b"segment_max_age = 'soon'\n", "segment_max_age"),
        (b"segment_max_age = -5\n", "segment_max_age"),
        (b"segment_max_age = 0\n", "segment_max_age"),
        (b"node_id = 'Not Valid'\n", "node id"),
        (b"node_id = 7\n", "node_id"),
        (b"[server]\nlisten = 8080\n", "server.listen"),
        (b"[server]\nlisten = ''\n", "server.listen"),
    ],
)
@pytest.mark.parametrize(
    "command",
    [
        ["append", "--user", "a", "--action", "auth.login"],
        ["query"],
    ],
)
def test_garbage_config(log, tmp_path, content, expect, command):
    cfg = tmp_path / "auditlog.toml"
    cfg.write_bytes(content)
    before = state(log)
    msg = rejected(invoke(log, *command, config=cfg), log, before)
    assert expect in msg, msg


def test_garbage_config_blocks_init(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text("retention_days = 30\n")
    d = tmp_path / "fresh"
    r = invoke(d, "init", "--node-id", "gw1", config=cfg)
    assert r.exit_code == 2 and r.stderr.startswith("auditlog: error: ") and "90" in r.stderr
    assert not (d / "node.key").exists()


def test_missing_config_file(log, tmp_path):
    before = state(log)
    msg = rejected(
        invoke(log, "append", "--user", "a", "--action", "auth.login", config=tmp_path / "absent.toml"), log, before
    )
    assert "absent.toml" in msg and "does not exist" in msg


def test_config_path_is_a_directory(log, tmp_path):
    before = state(log)
    msg = rejected(invoke(log, "append", "--user", "a", "--action", "auth.login", config=tmp_path), log, before)
    assert "directory" in msg


@pytest.mark.skipif(
    hasattr(os, "geteuid") and os.geteuid() == 0,
    reason="root reads a mode-000 file anyway (the directory case covers it)",
)
def test_unreadable_config_file(log, tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text("fsync = 'always'\n")
    cfg.chmod(0)
    try:
        before = state(log)
        msg = rejected(invoke(log, "append", "--user", "a", "--action", "auth.login", config=cfg), log, before)
        assert "c.toml" in msg
    finally:
        cfg.chmod(0o600)


# ----------------------------------------------------------------------------- bad flag values


@pytest.mark.parametrize(
    "args, expect",
    [
        (["query", "--limit", "0"], "--limit"),
        (["query", "--limit", "-3"], "--limit"),
        (["query", "--limit", "many"], "--limit"),
        (["query", "--order", "sideways"], "--order"),
        (["query", "--format", "xml"], "--format"),
        (["query", "--from", "garbage"], "from"),
        (["query", "--from", "2026-13-45"], "from"),
        (["query", "--from", "2026-02-30T00:00:00Z"], "from"),
        (["query", "--to", "tomorrow"], "to"),
        (["query", "--to", "-30x"], "to"),
        (["query", "--from", "1969-12-31"], "from"),
        (["query", "--from", "2026-03-02", "--to", "2026-03-01"], "must be before"),
        (["query", "--from", "2026-03-01", "--to", "2026-03-01"], "must be before"),
        (["query", "--from", "-1d", "--to", "-2d"], "must be before"),
        (["query", "--action", "Config.*.x"], "action"),
        (["query", "--action", "config*"], "action"),
        (["query", "--ip", "not-an-ip"], "ip"),
        (["query", "--domain", "bad domain"], "domain"),
        (["query", "--node", "Bad_Node"], "node"),
        (["query", "--user", "a\x07b"], "control"),
        (["query", "--success", "--nonsense"], "--nonsense"),
        (["export", "csv", "--from", "later", "-o", "out.csv"], "from"),
        (["export", "pdfx", "-o", "out.csv"], "FORMAT"),
        (["retention", "run", "--as-of", "someday"], "someday"),
        (["retention", "run", "--retention-days", "30"], "90"),
        (["retention", "run", "--retention-days", "lots"], "retention-days"),
        (["retention", "run", "--retention-days", "0"], "90"),
        (["verify", "--jsn"], "--jsn"),
        (["frobnicate"], "frobnicate"),
    ],
)
def test_bad_flag_values(log, tmp_path, monkeypatch, args, expect):
    monkeypatch.chdir(tmp_path)
    before = state(log)
    msg = rejected(invoke(log, *args), log, before)
    assert expect in msg, msg
    assert not (tmp_path / "out.csv").exists()


def test_query_error_prints_no_partial_output(log):
    before = state(log)
    r = invoke(log, "query", "--format", "json", "--from", "garbage")
    rejected(r, log, before)
    assert r.stdout == ""


# ----------------------------------------------------------------------------- end to end


def test_console_script_bad_input_shape(log, tmp_path):
    """The installed script: exit 2, one line, no traceback, nothing written."""
    env = {k: v for k, v in os.environ.items() if k not in ("AUDITLOG_DATA_DIR", "AUDITLOG_CONFIG")}
    env["AUDITLOG_DATA_DIR"] = str(log)
    cfg = tmp_path / "junk.toml"
    cfg.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00")
    before = state(log)
    cases = [
        (["append", "--file", "-"], GOOD_LINE + b"\n{oops\n"),
        (["append", "--file", "-"], b"\xff\xfe\xfd\n"),
        (["--config", str(cfg), "query"], None),
        (["query", "--limit", "0"], None),
        (["query", "--from", "2026-03-02", "--to", "2026-03-01"], None),
    ]
    for args, stdin in cases:
        p = subprocess.run([str(SCRIPT), *args], input=stdin, env=env, capture_output=True, timeout=60)
        err = p.stderr.decode("utf-8", "replace")
        assert p.returncode == 2, (args, err)
        assert err.startswith("auditlog: error: ") and err.count("\n") == 1, (args, err)
        assert "Traceback" not in err and p.stdout == b""
    assert state(log) == before
    p = subprocess.run([str(SCRIPT), "query", "--format", "ndjson"], env=env, capture_output=True, timeout=60)
    assert p.returncode == 0 and len(p.stdout.splitlines()) == 2
