"""One writer per data dir (an OS lock); readers need no lock and see a committed prefix."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest
from helpers_engine import PYTHON, draft, init_dir, run_cli, segment_paths, settings

from auditlog.engine.errors import WriterLockedError
from auditlog.engine.log import NodeLog
from auditlog.engine.verify import verify_node
from auditlog.engine.writer import LogWriter, WriterLock

CRASH_WRITER = str(Path(__file__).with_name("crash_writer.py"))


@pytest.fixture
def held(tmp_path):
    """A data dir with 5 entries and a writer holding it open in this process."""
    dd, node = init_dir(tmp_path / "data")
    w = LogWriter(dd, node, settings()).open()
    w.append_batch([draft(i) for i in range(5)])
    yield dd, node, w
    w.close()


def _refused(p: subprocess.CompletedProcess) -> None:
    assert p.returncode == 2, (p.returncode, p.stdout, p.stderr)
    assert p.stdout == ""
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in p.stderr, p.stderr
    msg = lines[0].lower()
    assert msg.startswith("auditlog: error:") and "another" in msg and "writer" in msg, msg


def test_second_writer_process_is_refused_with_a_clear_error(held):
    dd, node, w = held
    _refused(run_cli(dd.root, "append", "--user", "bob", "--action", "auth.login"))
    _refused(run_cli(dd.root, "append", "--file", "-", input='{"user": "bob", "action": "auth.login"}\n'))
    # nothing was written by the refused writers
    assert [e.seq for e in NodeLog(dd, node).scan()] == [1, 2, 3, 4, 5]
    assert w.append_batch([draft(5)]).first_seq == 6  # the holder is unaffected


def test_second_writer_in_the_same_process_is_refused(held):
    dd, node, w = held
    with pytest.raises(WriterLockedError, match="another auditlog writer"):
        LogWriter(dd, node, settings()).open()
    # the failed attempt closed its own descriptor: the holder still holds the lock
    assert WriterLock.is_held(dd.lock_path)
    _refused(run_cli(dd.root, "append", "--user", "bob", "--action", "auth.login"))


def test_verify_inside_the_writer_process_does_not_drop_the_lock(held):
    dd, node, w = held
    assert verify_node(dd, node).ok  # opens and closes the LOCK file to test it
    assert WriterLock.is_held(dd.lock_path)
    _refused(run_cli(dd.root, "append", "--user", "bob", "--action", "auth.login"))


def test_readers_need_no_lock(held):
    dd, node, w = held
    p = run_cli(dd.root, "query", "--format", "json")
    assert p.returncode == 0, p.stderr
    assert [e["seq"] for e in json.loads(p.stdout)] == [1, 2, 3, 4, 5]
    p = run_cli(dd.root, "verify", "--json")
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout) == {"ok": True, "entries_checked": 5, "violations": []}


def test_lock_is_released_on_close_and_when_the_holder_dies(tmp_path):
    dd, node = init_dir(tmp_path / "data")
    with LogWriter(dd, node, settings()) as w:
        w.append_batch([draft(0)])
    assert not WriterLock.is_held(dd.lock_path)
    p = run_cli(dd.root, "append", "--user", "bob", "--action", "auth.login")
    assert p.returncode == 0 and p.stdout.strip() == "gw1:2", p.stderr
    # a holder killed outright leaves no stale lock behind
    proc = subprocess.Popen(
        [PYTHON, CRASH_WRITER, *map(str, ("loop", dd.root, 1000, 1 << 20, "none", 1, 10**9))],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout.readline().startswith("ready")
        assert WriterLock.is_held(dd.lock_path)
        with pytest.raises(WriterLockedError):
            LogWriter(dd, node, settings()).open()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=30)
    assert not WriterLock.is_held(dd.lock_path)
    with LogWriter(dd, node, settings()) as w:
        assert w.append_batch([draft(1)]).first_seq > 2


def test_readers_see_a_consistent_committed_prefix_while_a_writer_appends(tmp_path):
    dd, node = init_dir(tmp_path / "data")
    out_path = tmp_path / "writer.out"
    # small segments: the readers also race the writer's segment rolls; a pause after
    # each batch keeps the log small enough that a full read and verify stay quick
    # on a loaded machine (about 10k events/s, a roll every ~10 ms)
    with open(out_path, "w") as out:
        proc = subprocess.Popen(
            [PYTHON, CRASH_WRITER, *map(str, ("loop", dd.root, 0, 8192, "always", 7, 100_000, 2))],
            stdout=out,
            stderr=subprocess.PIPE,
            text=True,
        )
    seen = []
    cli_reads = 0
    try:
        t0 = time.monotonic()
        while "ack" not in out_path.read_text():
            assert proc.poll() is None and time.monotonic() < t0 + 30, proc.stderr.read()
            time.sleep(0.01)
        t_min, t_max = time.monotonic() + 5, time.monotonic() + 30
        live = NodeLog(dd, node)  # a long-lived reader: indexes the growing segment incrementally
        while (len(seen) < 8 or cli_reads < 2 or time.monotonic() < t_min) and time.monotonic() < t_max:
            # in-process readers: fast, so many of them land mid-append and mid-roll
            entries = list((live if len(seen) % 2 else NodeLog(dd, node)).scan())
            seqs = [e.seq for e in entries]
            assert seqs == list(range(1, len(seqs) + 1)), "a reader saw a gap or disorder"
            assert all(e.integrity == "ok" for e in entries)
            assert all(e.details["n"] == e.seq - 1 for e in entries)
            seen.append(len(seqs))
            rep = verify_node(dd, node)
            assert rep.ok, rep.violations
            assert rep.entries_checked >= len(seqs)
            if cli_reads == 0 and len(seen) >= 2 or cli_reads == 1 and len(seen) >= 6:
                # the real CLI, as a separate reader process
                cli_reads += 1
                p = run_cli(dd.root, "verify", "--json")
                assert p.returncode == 0, (p.stdout, p.stderr)
                assert json.loads(p.stdout)["violations"] == []
                p = run_cli(dd.root, "query", "--format", "json")
                assert p.returncode == 0, p.stderr
                q = [e["seq"] for e in json.loads(p.stdout)]
                assert q == list(range(1, len(q) + 1)) and len(q) >= seen[-1]
                p = run_cli(dd.root, "append", "--user", "bob", "--action", "auth.login")
                assert p.returncode == 2 and "another auditlog writer" in p.stderr
        assert proc.poll() is None, "the writer stopped early"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=30)
    assert seen == sorted(seen), "a later read saw less than an earlier one"
    assert seen[0] > 0 and seen[-1] > seen[0] and len(seen) >= 8 and cli_reads == 2, seen
    assert len(segment_paths(dd)) > 3
