"""docs/FORMAT.md section 13 ("What one node can and cannot detect"), row by row.

Every row of the table is carried out on a copy of a real log, and the column
"one node alone" is checked against ``auditlog verify`` and a full read: rows
that say "detected" must make both report a violation (the state file row:
``verify``), rows that say "not detected" must leave both clean, so the
document can claim neither more nor less than the node does.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest
from helpers_engine import build_log, draft, flip_byte, frames_of, query_json, segment_paths, settings, verify_json

from auditlog.engine.datadir import DataDir
from auditlog.engine.writer import LogWriter

DOC = Path(__file__).resolve().parents[1] / "docs" / "FORMAT.md"
N = 300


def table() -> dict[str, str]:
    """id -> the "one node alone" cell of section 13's table."""
    text = DOC.read_text()
    section = text[text.index("## 13. What one node can and cannot detect") :]
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 4 and re.fullmatch(r"[a-z]+(-[a-z]+)*", cells[0]) and cells[0] != "id":
            rows[cells[0]] = cells[2]
    return rows


ROWS = table()


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    root = tmp_path_factory.mktemp("limits") / "data"
    build_log(root, N, per_batch=3, min_sealed=3)
    return root


@pytest.fixture
def log(pristine, tmp_path):
    dst = tmp_path / "data"
    shutil.copytree(pristine, dst)
    dd = DataDir(dst)
    return dd, dd.open()


def _edit_bytes(dd, node):
    seg = segment_paths(dd)[1]
    fr = frames_of(seg, node)[1]
    flip_byte(seg, fr.payload_offset + 7)


def _edit_rebuild(dd, node):
    _edit_bytes(dd, node)
    for p in dd.segments.iterdir():
        if not p.name.endswith(".seg"):
            p.unlink()


def _delete_middle(dd, node):
    segment_paths(dd)[1].unlink()


def _delete_oldest(dd, node):
    segment_paths(dd)[0].unlink()


def _cut_mid_frame(dd, node):
    active = segment_paths(dd)[-1]
    last = frames_of(active, node)[-1]
    os.truncate(active, last.offset + 50)


def _swap_foreign(dd, node, tmp_path: Path):
    other = tmp_path / "other"
    build_log(other, N, per_batch=3, min_sealed=3, node_id="gw2")
    ours = segment_paths(dd)[1]
    shutil.copyfile(segment_paths(DataDir(other))[1], ours)


def _state_edit(dd, node):
    dd.state.mkdir(exist_ok=True)
    (dd.state / "syslog_cursor.json").write_text('{"target": "tcp://127.0.0.1:514", "seq": 999999}')


def _garbage_file(dd, node):
    (dd.segments / f"{12:020d}.seg").write_bytes(os.urandom(500))


def _cut_at_frame(dd, node):
    active = segment_paths(dd)[-1]
    os.truncate(active, frames_of(active, node)[-1].offset)


def _delete_newest(dd, node):
    segment_paths(dd)[-1].unlink()


def _rollback(dd, node, tmp_path: Path):
    older = tmp_path / "older"
    shutil.copytree(dd.root, older)
    with LogWriter(dd, node, settings()) as w:  # the log moves on ...
        for i in range(N, N + 30, 3):
            w.append_batch([draft(j) for j in range(i, i + 3)])
    shutil.rmtree(dd.root)  # ... and is replaced by the copy
    shutil.copytree(older, dd.root)


def _delete_all(dd, node):
    for p in segment_paths(dd):
        p.unlink()


def _key_holder(dd, node, tmp_path: Path):
    """A whole other history written under the same key and node id."""
    forged = tmp_path / "forged"
    (forged / "segments").mkdir(parents=True)
    (forged / "node.id").write_text("gw1\n")
    shutil.copyfile(dd.key_path, forged / "node.key")
    os.chmod(forged / "node.key", 0o600)
    fdd = DataDir(forged)
    with LogWriter(fdd, fdd.open(), settings()) as w:
        for i in range(0, N, 3):
            w.append_batch([draft(j, forged=True) for j in range(i, i + 3)])
    for p in segment_paths(dd):
        p.unlink()
    for p in segment_paths(fdd):
        shutil.copyfile(p, dd.segments / p.name)


ACTIONS = {
    "edit-bytes": _edit_bytes,
    "edit-rebuild": _edit_rebuild,
    "delete-middle": _delete_middle,
    "delete-oldest": _delete_oldest,
    "cut-mid-frame": _cut_mid_frame,
    "swap-foreign": _swap_foreign,
    "state-edit": _state_edit,
    "garbage-file": _garbage_file,
    "cut-at-frame": _cut_at_frame,
    "delete-newest": _delete_newest,
    "rollback": _rollback,
    "delete-all": _delete_all,
    "key-holder": _key_holder,
}


def test_every_row_of_the_table_is_carried_out_here():
    assert set(ROWS) == set(ACTIONS)


@pytest.mark.parametrize("row", sorted(ACTIONS))
def test_the_table_says_what_one_node_detects(log, tmp_path, row):
    dd, node = log
    action = ACTIONS[row]
    if action.__code__.co_argcount == 3:
        action(dd, node, tmp_path)
    else:
        action(dd, node)
    claim = ROWS[row]
    detected = not claim.startswith("**not detected**")
    assert detected or claim.startswith("**not detected**"), claim
    rc, rep = verify_json(dd.root)
    assert (rc == 1) == detected, (row, rep["violations"])
    if row != "state-edit":  # the state is not the log: verify reports it
        rc, entries, err = query_json(dd.root)
        flagged = [e for e in entries if e["integrity"] != "ok"]
        assert (rc == 1 and bool(flagged)) == detected, (row, rc, flagged[:2])
