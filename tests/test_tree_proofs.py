"""Proofs from a node's Merkle tree (engine.tree, engine.tiles): inclusion proofs of
entries and consistency proofs between checkpoints verify against the signed roots
with the RFC 9162 algorithms, also after retention dropped the oldest segments; the
stored nodes are authenticated, so damage to them is an error, never a wrong proof."""

from __future__ import annotations

import random

import pytest

from auditlog.engine import clock
from auditlog.engine.datadir import DataDir
from auditlog.engine.entry import EntryDraft, canonical_bytes
from auditlog.engine.log import NodeLog
from auditlog.engine.merkle import leaf_hash, root, verify_consistency, verify_inclusion
from auditlog.engine.note import Checkpoint, Verifier, open_note
from auditlog.engine.retention import DAY_US, run_retention
from auditlog.engine.settings import StoreSettings
from auditlog.engine.signing import parse_public_key
from auditlog.engine.tiles import RECORD, STORED_FROM
from auditlog.engine.tree import TREE_DIR, LogTree, TreeError, origin, record_tree_head
from auditlog.engine.writer import LogWriter

SETTINGS = StoreSettings(segment_max_bytes=16384, fsync="none")


def drafts(n: int, k: int) -> list[EntryDraft]:
    return [
        EntryDraft(f"u{i % 5}", "auth.login", None, None, "192.0.2.1", None, True, {"k": k, "i": i}) for i in range(n)
    ]


def leaves_by_seq(dd: DataDir, node) -> dict[int, bytes]:
    out = {}
    for e in NodeLog(dd, node).scan():
        draft = (e.user, e.action, e.target, e.domain, e.ip, e.user_agent, e.success, e.details)
        out[e.seq] = leaf_hash(canonical_bytes(node.node_id, e.seq, e.ts, draft) + e.signature)
    return out


def signed(dd: DataDir, node, note: str) -> Checkpoint:
    v = Verifier.of(origin(node.node_id), parse_public_key(dd.public_key_path.read_bytes(), "node.pub"))
    return Checkpoint.parse(open_note(note, [v])[0])


@pytest.fixture
def grown(tmp_path):
    """A log of about 1,300 entries with two signed checkpoints along the way."""
    dd = DataDir(tmp_path / "d")
    node = dd.init("gw1")
    cps = []
    with LogWriter(dd, node, SETTINGS) as w:
        for k in range(13):
            w.append_batch(drafts(97, k))
            if k in (4, 12):
                cps.append(signed(dd, node, record_tree_head(w)[0]))
    return dd, node, cps


def test_inclusion_proofs_verify_against_the_signed_roots(grown):
    dd, node, (first, last) = grown
    leaves = leaves_by_seq(dd, node)
    assert last.size > 2 ** (STORED_FROM + 2)  # stored nodes at several levels are used
    assert (dd.root / TREE_DIR / f"L{STORED_FROM:02d}.hashes").stat().st_size == RECORD * (last.size >> STORED_FROM)
    r = random.Random(7)
    with LogTree(NodeLog(dd, node), node.key, dd) as tree:
        for cp in (first, last):
            for seq in [s for s in (1, 2, 255, 256, 257, 512, cp.size - 1, cp.size) if s <= cp.size] + r.sample(
                range(1, cp.size + 1), 25
            ):
                leaf, proof = tree.inclusion(seq, cp.size)
                assert leaf == leaves[seq]
                assert verify_inclusion(leaf, seq - 1, cp.size, proof, cp.root)
                assert len(proof) <= (cp.size - 1).bit_length()
                assert not verify_inclusion(leaves[seq % cp.size + 1], seq - 1, cp.size, proof, cp.root)
        proof = tree.consistency(first.size, last.size)
        assert verify_consistency(first.size, last.size, first.root, last.root, proof)
        assert not verify_consistency(first.size, last.size, last.root, first.root, proof)
        with pytest.raises(TreeError):
            tree.inclusion(last.size + 1, last.size)
        with pytest.raises(TreeError):
            tree.consistency(0, last.size)


def test_proofs_after_retention(grown):
    dd, node, (first, last) = grown
    before = leaves_by_seq(dd, node)
    with LogWriter(dd, node, SETTINGS) as w:
        report = run_retention(w, as_of_us=clock.now_us() + 400 * DAY_US)
        assert report.dropped_entries > 0 and (report.seq_to % 256) != 0  # the cut splits a tile
        w.append_batch(drafts(300, 99))
        after = signed(dd, node, record_tree_head(w)[0])
    kept = leaves_by_seq(dd, node)
    assert min(kept) == report.seq_to + 1
    every = {**before, **kept}
    assert after.root == root([every[s] for s in range(1, after.size + 1)])
    with LogTree(NodeLog(dd, node), node.key, dd) as tree:
        for seq in sorted(kept)[:300] + [s for s in kept if s <= after.size][-5:]:
            if seq > after.size:
                continue
            leaf, proof = tree.inclusion(seq, after.size)
            assert leaf == kept[seq] and verify_inclusion(leaf, seq - 1, after.size, proof, after.root)
        # from the checkpoints made before retention to the one after
        proof = tree.consistency(last.size, after.size)
        assert verify_consistency(last.size, after.size, last.root, after.root, proof)
        # an entry retention dropped has no inclusion proof: it is gone, and says so
        first_tile_end = ((report.seq_to) // 256) * 256
        if first_tile_end >= 1:
            with pytest.raises(TreeError, match="retention|no longer"):
                tree.inclusion(1, after.size)


def test_damaged_stored_nodes_are_an_error_never_a_wrong_proof(grown):
    dd, node, (_, last) = grown
    path = dd.root / TREE_DIR / f"L{STORED_FROM:02d}.hashes"
    raw = bytearray(path.read_bytes())
    raw[5] ^= 0x01  # the first level-8 node's hash
    path.write_bytes(bytes(raw))
    with LogTree(NodeLog(dd, node), node.key, dd) as tree:
        with pytest.raises(TreeError, match="does not check out"):
            tree.inclusion(300, last.size)  # its path needs node (8, 0), leaves 0..255
        leaf, proof = tree.inclusion(1, 512)  # a proof that does not need it still works
        assert verify_inclusion(leaf, 0, 512, proof, root([leaves_by_seq(dd, node)[s] for s in range(1, 513)]))
    path.unlink()
    with LogTree(NodeLog(dd, node), node.key, dd) as tree, pytest.raises(TreeError, match="missing"):
        tree.inclusion(300, last.size)
