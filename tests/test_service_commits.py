"""The service's committer: concurrent appends share group commits, each gets
its own exact seqs, and a failed commit answers every request waiting on it."""

from __future__ import annotations

import asyncio

import pytest

from engine.entry import EntryDraft, pack_draft
from engine.errors import AuditLogError
from engine.settings import StoreSettings


async def test_concurrent_appends_share_commits_and_get_their_own_seqs(make_service):
    svc = make_service(store=StoreSettings(fsync="always"))
    commits0 = svc.metrics.batch_size.count
    batches = [[EntryDraft(f"u{i}", "auth.login", details={"i": i, "j": k}) for k in range(i % 3 + 1)]
               for i in range(60)]
    users = [[d.user for d in b] for b in batches]
    # packed drafts and plain ones (non-canonical details) in the same stream
    batches[5] = [pack_draft(d) for d in batches[5]]
    results = await asyncio.gather(*(svc.append(b, canonical=(i == 5)) for i, b in enumerate(batches)))
    commits = svc.metrics.batch_size.count - commits0
    assert commits < len(batches) // 2, commits          # grouped, not one fsync per request
    spans = sorted((r.first_seq, r.last_seq) for r in results)
    for (a0, a1), (b0, _) in zip(spans, spans[1:]):
        assert b0 == a1 + 1                                # contiguous, no overlap
    for want, r in zip(users, results):
        assert r.last_seq - r.first_seq + 1 == len(want)
        got = list(svc.log.scan(after_seq=r.first_seq - 1))[:len(want)]
        assert [e.user for e in got] == want
        assert all(e.integrity == "ok" for e in got)
    assert svc.pending_events == 0


async def test_a_failed_commit_answers_every_waiting_request(make_service):
    svc = make_service()
    svc.writer.close()
    outcomes = await asyncio.gather(*(svc.append([EntryDraft("u", "auth.login")]) for _ in range(5)),
                                    return_exceptions=True)
    assert all(isinstance(o, AuditLogError) and "closed" in str(o) for o in outcomes), outcomes
    assert svc.pending_events == 0
    with pytest.raises(AuditLogError, match="empty batch"):
        await svc.append([])
