"""Witness checks over a log of any age.

* ``RunningNode.signatures_at``: the answer a node gives for many seqs at once (one
  ordered walk of its log) agrees entry by entry with reading each entry,
  offers nothing for an entry that does not verify, and leaves out what
  retention dropped and what lies beyond the head;
* ``WitnessFindings``: checkpoints that fail the same way one after the other
  are one violation; retention-dropped seqs are no evidence; the report stays
  bounded however scattered the damage;
* end to end (real ``auditlog serve`` nodes, real mTLS): a cluster that has
  witnessed thousands of checkpoints verifies ok, and a node whose data dir is
  rolled back to an older copy and then runs on for longer than the newest
  few hundred checkpoints is still caught, with no node unreachable.
"""

from __future__ import annotations

import random
import shutil
import time
from urllib.parse import urlencode

import pytest
from helpers_cluster import LocalCluster, NodeSpec, make_events
from helpers_engine import draft, flip_byte, frames_of, segment_paths

from engine.datadir import DataDir
from engine.log import NodeLog
from engine.settings import StoreSettings
from query.cluster.witness import MAX_RUNS_PER_WITNESS, SIGNATURE_BATCH, WALK_GAP, WitnessFindings

# =====================================================================================
# signatures_at
# =====================================================================================


def _fill(svc, n: int, per_batch: int = 500) -> None:
    for i in range(0, n, per_batch):
        svc.writer.append_batch([draft(j) for j in range(i, min(n, i + per_batch))])


def _one_by_one(svc, seqs) -> dict[str, str | None]:
    """The reference: each entry read on its own."""
    out = {}
    for s in seqs:
        e = svc.log.get(s)
        out[str(s)] = e.signature.hex() if e is not None and e.seq == s and e.integrity == "ok" else None
    return out


def test_signatures_at_agrees_with_reading_each_entry(make_service):
    svc = make_service(StoreSettings(segment_max_bytes=256 * 1024, fsync="none"))
    n = 30_000
    _fill(svc, n)
    assert len(segment_paths(svc.data_dir)) >= 3
    head = svc.log.head()[0]
    rnd = random.Random(7)
    # dense runs, gaps just under and just over WALK_GAP, across segments, repeats
    seqs = list(range(1, 40)) + list(range(5000, 5000 + 3 * WALK_GAP, WALK_GAP - 1))
    seqs += list(range(12000, 12000 + 6 * (WALK_GAP + 1), WALK_GAP + 1))
    seqs += rnd.sample(range(1, head + 1), 300) + [head, head, 17, 17]
    ans = svc.signatures_at(seqs)
    assert ans["node"] == svc.node_id and ans["first_seq"] == 1 and ans["head_seq"] == head
    want = sorted(set(seqs))
    assert list(ans["sigs"]) == [str(s) for s in want]
    assert ans["sigs"] == _one_by_one(svc, want)
    assert all(v is not None for v in ans["sigs"].values())
    # beyond the head and seq 0: not in the answer at all (the head says why)
    ans = svc.signatures_at([0, head + 1, head + 5000, 3])
    assert list(ans["sigs"]) == ["3"]
    assert svc.signatures_at([])["sigs"] == {}


def test_signatures_at_offers_nothing_for_an_entry_that_does_not_verify(make_service):
    svc = make_service(StoreSettings(segment_max_bytes=64 * 1024, fsync="none"))
    _fill(svc, 3000, per_batch=50)
    path = segment_paths(svc.data_dir)[1]
    frames = frames_of(path, svc.node)
    hit = frames[len(frames) // 2]
    flip_byte(path, hit.payload_offset + 40)
    before, after = hit.first_seq - 1, hit.last_seq + 1
    seqs = [1, before, hit.first_seq, hit.first_seq + 1, hit.last_seq, after, 2999]
    ans = svc.signatures_at(seqs)
    sigs = ans["sigs"]
    for s in (hit.first_seq, hit.first_seq + 1, hit.last_seq):
        assert sigs[str(s)] is None, (s, sigs)
    for s in (1, before, after, 2999):
        e = svc.log.get(s)
        assert e.integrity == "ok" and sigs[str(s)] == e.signature.hex(), s


def test_signatures_at_leaves_out_what_retention_dropped(make_service, frozen_clock):
    svc = make_service(StoreSettings(segment_max_bytes=8192, fsync="none", retention_days=90))
    _fill(svc, 400, per_batch=20)
    frozen_clock.advance(100 * 86400 * 10**6)
    rep = svc.run_retention()
    assert rep.dropped_entries > 0
    _fill(svc, 50)
    first = svc.log.segment_infos()[0].first_seq
    assert first > 1
    ans = svc.signatures_at([1, first - 1, first, first + 1])
    assert ans["first_seq"] == first
    assert list(ans["sigs"]) == [str(first), str(first + 1)]
    assert ans["sigs"] == _one_by_one(svc, [first, first + 1])


# =====================================================================================
# WitnessFindings
# =====================================================================================


def _cp(seq: int, sig: str, ts: str = "2026-03-14T09:00:00.000000Z") -> dict:
    return {"seq": seq, "signature": sig, "ts": ts}


def test_findings_fold_runs_and_skip_retention_dropped_seqs():
    good = {str(s): f"{s:064x}" for s in range(1, 101)}
    answer = {"first_seq": 10, "head_seq": 100, "sigs": good}
    f = WitnessFindings("b", "c")
    cps = [_cp(s, f"{s:064x}") for s in range(1, 30)]  # intact (1..9: dropped by retention)
    cps += [_cp(5, "ff" * 32)]  # dropped by retention: no evidence
    cps += [_cp(s, "ee" * 32) for s in range(30, 60, 2)]  # a rewritten stretch
    cps += [_cp(s, f"{s:064x}") for s in range(60, 70)]
    cps += [_cp(s, f"{s:064x}") for s in range(101, 140, 3)]  # beyond the head
    f.check(cps[:20], answer)  # fed in two chunks
    f.check(cps[20:], answer)
    out = f.finish()
    assert [(v["kind"], v["seq_from"], v["seq_to"]) for v in out] == [
        ("witness_mismatch", 30, 58),
        ("witness_truncated", 101, 137),
    ], out
    assert all(v["node"] == "b" and "c witnessed" in v["detail"] for v in out)
    assert "15 checkpoints" in out[0]["detail"] and "13 checkpoints" in out[1]["detail"]

    # a seq in range that the node cannot offer a signature for: missing
    f = WitnessFindings("b", "a")
    f.check([_cp(50, "00" * 32)], {"first_seq": 1, "head_seq": 100, "sigs": {"50": None}})
    out = f.finish()
    assert [(v["kind"], v["seq_from"], v["seq_to"]) for v in out] == [("witness_truncated", 50, 50)]
    assert "missing" in out[0]["detail"]


def test_findings_stay_bounded_however_scattered_the_damage():
    n = MAX_RUNS_PER_WITNESS + 500
    sigs = {str(s): f"{s:064x}" for s in range(1, 2 * n + 1)}
    # every other checkpoint rewritten: as many runs as there are bad checkpoints
    cps = [_cp(s, "ee" * 32 if s % 2 else f"{s:064x}") for s in range(1, 2 * n + 1)]
    f = WitnessFindings("b", "c")
    for i in range(0, len(cps), SIGNATURE_BATCH):
        f.check(cps[i : i + SIGNATURE_BATCH], {"first_seq": 1, "head_seq": 2 * n, "sigs": sigs})
    out = f.finish()
    assert len(out) == MAX_RUNS_PER_WITNESS + 1
    last = out[-1]
    assert last["kind"] == "witness_mismatch" and "500 separate runs" in last["detail"]
    assert (last["seq_from"], last["seq_to"]) == (2 * MAX_RUNS_PER_WITNESS + 1, 2 * n - 1)


# =====================================================================================
# end to end: thousands of checkpoints, then a rollback
# =====================================================================================

PEER_TIMEOUT = 2.0
#: checkpoints each witness must hold of b before the rollback ("thousands")
HELD = 2200
#: more than the newest-checkpoints window witness checks once looked at
AFTER_ROLLBACK = 400


def _held(witness, about: str) -> list[int]:
    """The seqs of ``about`` that ``witness`` holds checkpoints of, oldest first."""
    page = witness.get_ok(
        "/api/v1/audit-log?"
        + urlencode(
            {"node": witness.name, "action": "audit.checkpoint", "target": about, "order": "asc", "limit": 10000}
        ),
        timeout=120,
    )
    assert page.get("next_cursor") is None and len(page["events"]) < 10000
    return [e["details"]["seq"] for e in page["events"]]


def _wait_held(witnesses, about: str, count: int, timeout: float) -> dict[str, list[int]]:
    deadline = time.monotonic() + timeout
    while True:
        held = {w.name: _held(w, about) for w in witnesses}
        if all(len(h) >= count for h in held.values()):
            return held
        if time.monotonic() > deadline:
            raise AssertionError(
                f"held of {about} after {timeout} s: { {n: len(h) for n, h in held.items()} }, wanted {count}"
            )
        time.sleep(1)


def _cluster_verify(node) -> tuple[dict, float]:
    t0 = time.monotonic()
    rep = node.get_ok("/api/v1/verify?scope=cluster", timeout=300)
    return rep, time.monotonic() - t0


def _log_head(data_dir) -> int:
    dd = DataDir(data_dir)
    return NodeLog(dd, dd.open()).head()[0]


@pytest.mark.e2e
@pytest.mark.slow
def test_rollback_caught_after_thousands_of_checkpoints(tmp_path):
    # checkpoints every 2 ms: each witness holds thousands of b's within a minute
    cl = LocalCluster(
        tmp_path / "cl",
        [NodeSpec(n, settings={"fsync": "none"}) for n in "abc"],
        peer_timeout=PEER_TIMEOUT,
        checkpoint_interval=0.002,
    )
    try:
        cl.build()
        cl.start()
        a, b, c = cl["a"], cl["b"], cl["c"]
        b.post_events(make_events(50, "before-copy"))
        _wait_held((a, c), "b", 100, timeout=60)

        # an older copy of b's data dir (a backup, taken while b is stopped)
        assert b.stop() == 0
        copy = tmp_path / "b-copy"
        shutil.copytree(b.data_dir, copy)
        copy_head = _log_head(copy)
        b.start()
        b.wait_ready()
        b.post_events(make_events(50, "after-copy"))  # history the rollback will lose
        held = _wait_held((a, c), "b", HELD, timeout=240)

        # the intact cluster: every checkpoint checked, none disagrees, nobody unreachable
        for viewer in (a, c):
            rep, took = _cluster_verify(viewer)
            print(
                f"\ncluster verify on {viewer.name}, intact, "
                f"{min(map(len, held.values()))}+ checkpoints of each node per witness: {took:.2f} s"
            )
            assert rep["violations"] == [] and rep["ok"] is True, rep["violations"][:5]
            assert rep["nodes"] == {n: {"status": "ok", "ok": True} for n in "abc"}, rep["nodes"]

        # roll b back to the copy; it runs on and is witnessed again for longer than
        # the newest few hundred checkpoints
        assert b.stop() == 0
        rolled_from = _log_head(b.data_dir)
        assert rolled_from > copy_head + HELD
        shutil.rmtree(b.data_dir)
        shutil.copytree(copy, b.data_dir)
        b.start()
        b.wait_ready()
        n_before = {n: len(h) for n, h in held.items()}
        after = _wait_held((a, c), "b", max(n_before.values()) + AFTER_ROLLBACK, timeout=120)
        for name, seqs in after.items():
            newest = seqs[n_before[name] :]
            assert len(newest) >= AFTER_ROLLBACK and max(newest) < rolled_from, (name, len(newest))

        # b alone cannot tell: its chain is intact, only another history
        own = b.get_ok("/api/v1/verify")
        assert own["ok"] is True and own["violations"] == [], own
        for viewer in (a, c):
            rep, took = _cluster_verify(viewer)
            print(
                f"cluster verify on {viewer.name} after the rollback: {took:.2f} s, {len(rep['violations'])} violations"
            )
            assert rep["ok"] is False
            # every node answered: no request too big, nothing timed out
            assert all(st["status"] == "ok" for st in rep["nodes"].values()), rep["nodes"]
            assert rep["nodes"]["b"]["ok"] is False
            assert rep["nodes"]["a"]["ok"] is True and rep["nodes"]["c"]["ok"] is True
            found = rep["violations"]
            assert found and all(v["node"] == "b" for v in found), found
            assert {v["kind"] for v in found} <= {"witness_mismatch", "witness_truncated"}
            assert any(v["kind"] == "witness_mismatch" for v in found), found
            # the evidence is the history after the copy, as both witnesses saw it
            assert all(copy_head < v["seq_from"] <= v["seq_to"] <= rolled_from for v in found), found
            for w in "ac":
                assert any(f"{w} witnessed" in v["detail"] for v in found), (w, found)
            # a stretch of rewritten history is a few findings per witness, not thousands
            assert len(found) <= 8, found
    finally:
        cl.close()
