"""The Merkle tree over a node's entries (engine.tree) and ``auditlog checkpoint``:
leaves are the canonical bytes and signature of each entry (FORMAT.md section 14),
checkpoints verify with nothing but the node's public key, successive ones are
consistent, the tree goes on across retention, and damage or a forged state gets
no checkpoint."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from auditlog.cli.main import cli as auditlog_cli
from auditlog.engine import clock
from auditlog.engine.datadir import DataDir
from auditlog.engine.entry import EntryDraft, canonical_bytes
from auditlog.engine.log import NodeLog
from auditlog.engine.merkle import (
    CompactTree,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    root,
    verify_consistency,
    verify_inclusion,
)
from auditlog.engine.note import Checkpoint, NoteError, Verifier, open_note
from auditlog.engine.retention import DAY_US, run_retention
from auditlog.engine.settings import StoreSettings
from auditlog.engine.signing import parse_public_key
from auditlog.engine.state import StateSeal
from auditlog.engine.tree import TREE_FILE, LogTree, TreeError, origin
from auditlog.engine.writer import LogWriter, WriterLock

SETTINGS = StoreSettings(segment_max_bytes=4096, fsync="none")


def invoke(data_dir: Path, *args: str):
    runner = CliRunner(env={"AUDITLOG_DATA_DIR": None, "AUDITLOG_CONFIG": None})
    return runner.invoke(auditlog_cli, ["--data-dir", str(data_dir), *args], catch_exceptions=False)


def drafts(n: int, k: int = 0) -> list[EntryDraft]:
    return [
        EntryDraft(
            f"user{i % 7}",
            "quarantine.release",
            f"mail-{k}-{i}",
            "example.org",
            "192.0.2.7",
            None,
            True,
            {"recipient": f"u{i}@example.org", "subject": "Grüße 🔐", "n": 2**40 + i},
        )
        for i in range(n)
    ]


def expected_leaves(dd: DataDir, node) -> list[bytes]:
    """The leaves as FORMAT.md section 14 defines them, from the entries as read."""
    out = []
    for e in NodeLog(dd, node).scan():
        assert e.integrity == "ok"
        draft = (e.user, e.action, e.target, e.domain, e.ip, e.user_agent, e.success, e.details)
        out.append(leaf_hash(canonical_bytes(node.node_id, e.seq, e.ts, draft) + e.signature))
    return out


@pytest.fixture
def log(tmp_path):
    dd = DataDir(tmp_path / "d")
    node = dd.init("gw1")
    with LogWriter(dd, node, SETTINGS) as w:
        for k in range(6):
            w.append_batch(drafts(9, k))
    return dd, node


def verifier_of(dd: DataDir, node) -> Verifier:
    """What an auditor holds: the node's public key file, nothing else of the node."""
    return Verifier.of(origin(node.node_id), parse_public_key(dd.public_key_path.read_bytes(), "node.pub"))


def test_a_checkpoint_is_the_root_over_every_entry_signed_with_the_nodes_key(log):
    dd, node = log
    r = invoke(dd.root, "checkpoint")
    assert r.exit_code == 0, r.stderr
    text, signers = open_note(r.stdout, [verifier_of(dd, node)])
    cp = Checkpoint.parse(text)
    every = expected_leaves(dd, node)
    leaves = every[: cp.size]
    assert cp.origin == "auditlog/gw1" and cp.size == 54 and cp.root == root(leaves)
    # and it is recorded in the log itself, as the entry after the ones it covers
    head = list(NodeLog(dd, node).scan())[-1]
    assert len(every) == 55 and head.seq == 55 and head.action == "audit.tree_head" and head.user == "system"
    assert head.details == {"size": 54, "root": cp.root.hex(), "checkpoint": r.stdout}
    # the verifier key printed by the CLI is the same key
    vkey = invoke(dd.root, "keys", "public", "--vkey").stdout.strip()
    assert open_note(r.stdout, [Verifier.parse(vkey)])[1] == [Verifier.parse(vkey)]
    # another node's key does not open it
    other = DataDir(dd.root.parent / "other")
    other_node = other.init("gw1")
    with pytest.raises(NoteError):
        open_note(r.stdout, [verifier_of(other, other_node)])
    # every entry has an inclusion proof against it
    store: dict[tuple[int, int], bytes] = {}
    t = CompactTree()
    for h in leaves:
        for level, index, node_h in t.append(h):
            store[(level, index)] = node_h
    for i, h in enumerate(leaves):
        proof = inclusion_proof(i, cp.size, lambda lv, ix: store[(lv, ix)])
        assert verify_inclusion(h, i, cp.size, proof, cp.root)


def test_successive_checkpoints_are_consistent(log):
    dd, node = log
    first = Checkpoint.parse(open_note(invoke(dd.root, "checkpoint").stdout, [verifier_of(dd, node)])[0])
    with LogWriter(dd, node, SETTINGS) as w:
        w.append_batch(drafts(11, 9))
    second = Checkpoint.parse(open_note(invoke(dd.root, "checkpoint").stdout, [verifier_of(dd, node)])[0])
    assert second.size == first.size + 1 + 11  # the first one's own entry, then the new ones
    leaves = expected_leaves(dd, node)
    assert second.root == root(leaves[: second.size]) and first.root == root(leaves[: first.size])
    store = {}
    t = CompactTree()
    for h in leaves:
        store.update({(lv, ix): x for lv, ix, x in t.append(h)})
    proof = consistency_proof(first.size, second.size, lambda lv, ix: store[(lv, ix)])
    assert verify_consistency(first.size, second.size, first.root, second.root, proof)
    # the tree went on from its saved state: the same answer as from scratch
    saved = LogTree(NodeLog(dd, node), node.key, dd).extend()
    (dd.state / TREE_FILE).unlink()
    fresh = LogTree(NodeLog(dd, node), node.key, dd).extend()
    assert (fresh.size, fresh.root()) == (saved.size, saved.root()) == (len(leaves), root(leaves))


def test_the_tree_goes_on_across_retention(log):
    dd, node = log
    before = expected_leaves(dd, node)
    with LogWriter(dd, node, SETTINGS) as w:
        report = run_retention(w, as_of_us=clock.now_us() + 400 * DAY_US)
        assert report.dropped_entries > 0 and report.seq_from == 1
        w.append_batch(drafts(5, 20))
    assert NodeLog(dd, node).scan().__next__().seq > 1  # the first entries are gone
    cp = Checkpoint.parse(open_note(invoke(dd.root, "checkpoint").stdout, [verifier_of(dd, node)])[0])
    kept = expected_leaves(dd, node)  # what is left: from the first kept seq on
    first_kept = next(iter(NodeLog(dd, node).scan())).seq
    every = before[: first_kept - 1] + kept
    assert cp.size == len(every) - 1  # all but its own entry
    assert cp.root == root(every[: cp.size])
    # without its saved state the tree cannot go on: the entries it needs are gone
    (dd.state / TREE_FILE).unlink()
    r = invoke(dd.root, "checkpoint")
    assert r.exit_code == 2 and r.stdout == "" and "dropped before the tree took them in" in r.stderr


def test_a_log_with_damage_gets_no_checkpoint(log):
    dd, node = log
    seg = sorted(dd.segments.glob("*.seg"))[1]
    raw = bytearray(seg.read_bytes())
    raw[len(raw) // 2] ^= 0x40
    seg.write_bytes(bytes(raw))
    r = invoke(dd.root, "checkpoint")
    assert r.exit_code == 2 and r.stdout == ""
    assert r.stderr.startswith("auditlog: error: the log has damage") and "auditlog verify" in r.stderr


def test_a_forged_or_foreign_tree_state_is_not_believed(log, tmp_path):
    dd, node = log
    assert invoke(dd.root, "checkpoint").exit_code == 0
    path = dd.state / TREE_FILE
    good = path.read_bytes()
    path.write_bytes(good.replace(b'"size":54', b'"size":53'))
    r = invoke(dd.root, "checkpoint")
    assert r.exit_code == 2 and "not to be believed" in r.stderr and r.stdout == ""
    # another node's sealed state (another key) is not believed either
    other = DataDir(tmp_path / "o")
    onode = other.init("gw1")
    StateSeal(onode.key, "gw1").write(path, {"size": 0, "frontier": [], "root": CompactTree().root().hex()})
    r = invoke(dd.root, "checkpoint")
    assert r.exit_code == 2 and "not to be believed" in r.stderr
    # a sealed state whose frontier does not add up to its root
    StateSeal(node.key, "gw1").write(path, {"size": 1, "frontier": ["00" * 32], "root": "11" * 32})
    with pytest.raises(TreeError, match="does not add up"):
        LogTree(NodeLog(dd, node), node.key, dd).extend()


def test_a_data_dir_from_before_gets_its_signing_key_with_its_first_checkpoint(tmp_path):
    dd = DataDir(tmp_path / "d")
    node = dd.init("gw1")
    for p in (dd.sign_key_path, dd.public_key_path):
        p.unlink()
    r = invoke(dd.root, "checkpoint")  # opens the writer, which makes the key
    assert r.exit_code == 0 and dd.sign_key_path.exists()
    assert Checkpoint.parse(open_note(r.stdout, [verifier_of(dd, node)])[0]).size == 0


def test_checkpoint_while_another_process_owns_the_writer(log):
    """The checkpoint is printed, signed, but not recorded; without a signing key the
    command says how to get one."""
    dd, node = log
    lock = WriterLock(dd.lock_path)
    lock.acquire()
    try:
        head = list(NodeLog(dd, node).scan())[-1].seq
        r = invoke(dd.root, "checkpoint")
        assert r.exit_code == 0 and "not recorded in the log" in r.stderr
        cp = Checkpoint.parse(open_note(r.stdout, [verifier_of(dd, node)])[0])
        assert cp.size == head and list(NodeLog(dd, node).scan())[-1].seq == head
        for p in (dd.sign_key_path, dd.public_key_path):
            p.unlink()
        r = invoke(dd.root, "checkpoint")
        assert r.exit_code == 2 and "no signing key yet" in r.stderr and r.stdout == ""
    finally:
        lock.release()


def test_an_empty_log_has_the_empty_root(tmp_path):
    dd = DataDir(tmp_path / "d")
    node = dd.init("gw1")
    cp = Checkpoint.parse(open_note(invoke(dd.root, "checkpoint").stdout, [verifier_of(dd, node)])[0])
    assert cp.size == 0 and cp.root == root([])


def test_a_copy_of_the_data_dir_gives_the_same_checkpoint_root(log, tmp_path):
    """What the tree says depends on the entries only, not on where or when it is
    computed (the signature differs only if the key does)."""
    dd, node = log
    copy = tmp_path / "copy"
    shutil.copytree(dd.root, copy)
    a = invoke(dd.root, "checkpoint").stdout
    b = invoke(copy, "checkpoint").stdout
    assert a == b  # Ed25519 signatures are deterministic
