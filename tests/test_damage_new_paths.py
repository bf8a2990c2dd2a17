"""Damage under the read paths added with compact postings, the Merkle tree and signed
checkpoints: what a person with write access to the data dir (no key) can do,
following FORMAT.md, is reported or refused, never answered as if intact."""

from __future__ import annotations

import pytest
from helpers_http import bearer, make_keys

from auditlog.engine import clock
from auditlog.engine.datadir import DataDir
from auditlog.engine.entry import EntryDraft
from auditlog.engine.frame import HEADER_SIZE
from auditlog.engine.index import index_path
from auditlog.engine.log import NodeLog
from auditlog.engine.retention import DAY_US, run_retention
from auditlog.engine.settings import StoreSettings
from auditlog.engine.tiles import STORED_FROM
from auditlog.engine.tree import TREE_DIR, LogTree, TreeError, record_tree_head
from auditlog.engine.writer import LogWriter


def drafts(n: int, k: int) -> list[EntryDraft]:
    return [
        EntryDraft(f"u{i % 3}", "auth.login", None, None, "192.0.2.1", None, True, {"k": k, "i": i}) for i in range(n)
    ]


def flip_payload_byte(dd: DataDir, node, seq: int) -> None:
    """Flip a byte inside the stored payload of the frame holding ``seq`` (no key: its MAC
    is left as it was)."""
    for info in NodeLog(dd, node).segment_infos():
        for row in info.index.frames:
            if row.first_seq <= seq < row.first_seq + row.count:
                raw = bytearray(info.path.read_bytes())
                raw[row.offset + HEADER_SIZE + 3] ^= 0x20
                info.path.write_bytes(bytes(raw))
                return
    raise AssertionError(f"no frame holds seq {seq}")


def test_a_frame_damaged_under_an_active_segments_prefix_index_is_reported(tmp_path):
    """The ``.idx`` of an active segment's first frames (FORMAT.md section 7) is a hint:
    a frame damaged after it was written is still checked when read and reported."""
    dd = DataDir(tmp_path / "d")
    node = dd.init("gw1")
    with LogWriter(dd, node, StoreSettings(fsync="none")) as w:
        for k in range(70):  # one frame per batch: more than the 64 a prefix index waits for
            w.append_batch(drafts(2, k))
    assert len(list(NodeLog(dd, node).scan())) == 140
    [seg] = sorted(dd.segments.glob("*.seg"))
    assert index_path(seg).exists()  # the prefix index a reader of the active segment wrote
    flip_payload_byte(dd, node, 21)
    got = list(NodeLog(dd, node).scan())
    bad = [e for e in got if e.integrity != "ok"]
    assert bad and all(e.seq in (21, 22) or e.pos_seq for e in bad), bad
    assert [e.seq for e in got if e.integrity == "ok"] == [s for s in range(1, 141) if s not in (21, 22)]
    # a selective read through the postings reports it too
    sel = list(NodeLog(dd, node).scan(terms={"user": frozenset({"u0"})}, predicate=lambda e: e.user == "u0"))
    assert any(e.integrity != "ok" for e in sel)


@pytest.fixture
def grown(tmp_path):
    dd = DataDir(tmp_path / "d")
    node = dd.init("gw1")
    with LogWriter(dd, node, StoreSettings(segment_max_bytes=16384, fsync="none")) as w:
        for k in range(12):
            w.append_batch(drafts(97, k))
        record_tree_head(w)
    return dd, node


def test_no_proof_rests_on_a_damaged_frame(grown):
    dd, node = grown
    size = LogTree(NodeLog(dd, node), node.key, dd).load().size
    flip_payload_byte(dd, node, 300)
    with LogTree(NodeLog(dd, node), node.key, dd) as tree:
        with pytest.raises(TreeError, match="damage"):
            tree.inclusion(300, size)  # its tile's leaves come from that frame
        tree.inclusion(size - 1, size)  # a proof that does not read that frame still works
    # the tree took those entries in while they verified; built again from scratch, it
    # stops at the damage instead of vouching for it
    (dd.state / "tree.json").unlink()
    with pytest.raises(TreeError, match="damage"):
        LogTree(NodeLog(dd, node), node.key, dd).extend()


def test_damaged_kept_leaves_are_an_error(grown):
    dd, node = grown
    with LogWriter(dd, node, StoreSettings(segment_max_bytes=16384, fsync="none")) as w:
        report = run_retention(w, as_of_us=clock.now_us() + 400 * DAY_US)
        assert report.dropped_entries and report.seq_to % (1 << STORED_FROM)
        w.append_batch(drafts(5, 99))
        record_tree_head(w)
    kept = dd.root / TREE_DIR / "L00.hashes"
    size = LogTree(NodeLog(dd, node), node.key, dd).load().size
    first_kept = report.seq_to + 1
    with LogTree(NodeLog(dd, node), node.key, dd) as tree:
        tree.inclusion(first_kept, size)  # needs the kept leaves of the cut tile
    raw = bytearray(kept.read_bytes())
    raw[12] ^= 0x01  # a kept leaf's hash
    kept.write_bytes(bytes(raw))
    with LogTree(NodeLog(dd, node), node.key, dd) as tree, pytest.raises(TreeError, match="does not check out"):
        tree.inclusion(first_kept, size)


async def test_a_damaged_checkpoint_entry_is_reported_not_listed(make_service, make_client):
    svc = make_service(StoreSettings(fsync="none"))
    keys = make_keys(svc)
    client = await make_client(svc)
    svc.writer.append_batch(drafts(5, 0))
    first = svc.record_tree_head()
    svc.writer.append_batch(drafts(5, 1))
    second = svc.record_tree_head()
    flip_payload_byte(svc.data_dir, svc.node, second["seq"])
    body = await (await client.get("/api/v1/checkpoints?limit=10", headers=bearer(keys["reader"]))).json()
    assert [c["seq"] for c in body["checkpoints"]] == [first["seq"]]  # the intact one only
    assert body["violations"] and all(v["integrity"] != "ok" for v in body["violations"])
