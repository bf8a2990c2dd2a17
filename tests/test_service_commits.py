"""The service's committer: concurrent appends share group commits, each gets
its own exact seqs, and a failed commit answers every request waiting on it."""

from __future__ import annotations

import asyncio
import os

import pytest

from auditlog.engine.entry import EntryDraft, pack_draft
from auditlog.engine.errors import AuditLogError
from auditlog.engine.settings import StoreSettings


async def test_concurrent_appends_share_commits_and_get_their_own_seqs(make_service):
    svc = make_service(store=StoreSettings(fsync="always"))
    commits0 = svc.metrics.batch_size.count
    batches = [
        [EntryDraft(f"u{i}", "auth.login", details={"i": i, "j": k}) for k in range(i % 3 + 1)] for i in range(60)
    ]
    users = [[d.user for d in b] for b in batches]
    # packed drafts and plain ones (non-canonical details) in the same stream
    batches[5] = [pack_draft(d) for d in batches[5]]
    results = await asyncio.gather(*(svc.committer.append(b, canonical=(i == 5)) for i, b in enumerate(batches)))
    commits = svc.metrics.batch_size.count - commits0
    assert commits < len(batches) // 2, commits  # grouped, not one fsync per request
    spans = sorted((r.first_seq, r.last_seq) for r in results)
    for (_, a1), (b0, _) in zip(spans, spans[1:]):
        assert b0 == a1 + 1  # contiguous, no overlap
    for want, r in zip(users, results):
        assert r.last_seq - r.first_seq + 1 == len(want)
        got = list(svc.log.scan(after_seq=r.first_seq - 1))[: len(want)]
        assert [e.user for e in got] == want
        assert all(e.integrity == "ok" for e in got)
    assert svc.committer.pending_events == 0


async def test_a_failed_commit_answers_every_waiting_request(make_service):
    svc = make_service()
    svc.writer.close()
    outcomes = await asyncio.gather(
        *(svc.committer.append([EntryDraft("u", "auth.login")]) for _ in range(5)), return_exceptions=True
    )
    assert all(isinstance(o, AuditLogError) and "closed" in str(o) for o in outcomes), outcomes
    assert svc.committer.pending_events == 0
    with pytest.raises(AuditLogError, match="empty batch"):
        await svc.committer.append([])


# ------------------------------------------------------------------ idempotency keys in the commit

FP = "json:" + "0" * 64  # a request fingerprint (ingest.idempotency.request_fingerprint)


def _file_keys(svc) -> list[str]:
    """The keys in the idempotency file, each line opened with the node's seal."""
    records, problems = svc.seal.read_lines(svc.idempotency.path)
    assert problems == []
    return [r["k"] for r in records]


async def test_idempotency_key_is_durable_before_its_entries_are_written(make_service):
    svc = make_service(store=StoreSettings(fsync="always"))
    seen = {}
    original = svc.writer.before_commit

    def spy(tagged):
        size_before = svc.writer._active_size
        original(tagged)
        seen["keys_on_disk"] = _file_keys(svc)
        seen["log_grew"] = svc.writer._active_size != size_before
        seen["tagged"] = [(k, r.first_seq, r.last_seq) for k, r in tagged]

    svc.writer.before_commit = spy
    res = await svc.committer.append([EntryDraft("u", "auth.login")] * 3, idempotency_key="k1:batch-1", fingerprint=FP)
    assert seen["keys_on_disk"] == ["k1:batch-1"] and seen["log_grew"] is False
    assert seen["tagged"] == [(("k1:batch-1", FP), res.first_seq, res.last_seq)]
    assert svc.idempotency.get("k1:batch-1").answer == svc.committer.answer(res)
    assert svc.idempotency.get("k1:batch-1").fingerprint == FP


async def test_keys_of_a_commit_lost_in_a_crash_are_dropped_at_start(tmp_path):
    from auditlog.engine.datadir import DataDir
    from auditlog.query.node import NodeConfig, ServiceSettings, build_node

    dd = DataDir(tmp_path / "data")
    dd.init("node-a")
    svc = build_node(NodeConfig(StoreSettings(fsync="always"), ServiceSettings(validate_workers=0)), dd)
    res = await svc.committer.append([EntryDraft("u", "auth.login")] * 2, idempotency_key="k:kept", fingerprint=FP)
    seal = svc.seal
    svc.close()
    # what a crash between the key's fsync and the entries' leaves: a key (sealed by
    # the node, as it writes them) for seqs the recovered log does not hold
    path = dd.state / "idempotency.jsonl"
    with path.open("ab") as f:
        f.write(
            seal.seal(
                "idempotency",
                {
                    "k": "k:lost",
                    "fp": FP,
                    "v": {
                        "appended": 5,
                        "first_id": f"node-a:{res.last_seq + 1}",
                        "last_id": f"node-a:{res.last_seq + 5}",
                    },
                },
            )
            + b"\n"
        )
    svc = build_node(NodeConfig(StoreSettings(fsync="always"), ServiceSettings(validate_workers=0)), dd)
    try:
        assert svc.idempotency.rejected == 0  # a sealed line: not a forgery
        assert svc.idempotency.get("k:lost") is None  # a retry will be appended
        assert svc.idempotency.get("k:kept").answer == svc.committer.answer(res)  # this one is replayed
        assert _file_keys(svc) == ["k:kept"]
    finally:
        svc.close()


async def test_a_failed_commit_forgets_its_idempotency_keys(make_service):
    import resource
    import signal

    svc = make_service(store=StoreSettings(fsync="always"))
    await svc.committer.append([EntryDraft("u", "auth.login")], idempotency_key="k:ok", fingerprint=FP)
    # a real write failure: the log file may not grow past its size (EFBIG)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    limit = max(svc.writer._active_size + 64, 4096)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        with pytest.raises(AuditLogError, match="write to the log failed"):
            await svc.committer.append(
                # random padding: compression does not shrink the batch under the limit
                [EntryDraft("u", "auth.login", details={"pad": os.urandom(100).hex()}) for _ in range(50)],
                idempotency_key="k:failed",
                fingerprint=FP,
            )
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, old_handler)
    assert svc.idempotency.get("k:failed") is None
    assert _file_keys(svc) == ["k:ok"]
    # and the batch retried with its key is appended once, on the seqs it failed to take
    res = await svc.committer.append([EntryDraft("u", "auth.login")], idempotency_key="k:failed", fingerprint=FP)
    assert svc.idempotency.get("k:failed").answer == svc.committer.answer(res)
