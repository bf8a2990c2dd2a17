"""Keyset cursor pagination over HTTP: exact (no duplicates, no gaps), in both orders,
with filters, across segment boundaries, and while another task keeps appending."""

from __future__ import annotations

import asyncio

import pytest
from helpers_http import KEY_ENTRIES, ev, head_seq, ids, make_keys, post_events, query

from auditlog.engine.entry import EntryDraft
from auditlog.engine.settings import StoreSettings

N = 3000
USERS = ("alice", "bob", "carol", "dave")


def drafts(start: int, n: int) -> list[EntryDraft]:
    out = []
    for i in range(start, start + n):
        user = USERS[i % 4]
        if i % 3 == 0:
            out.append(
                EntryDraft(
                    user,
                    "quarantine.release",
                    f"mail-{i}",
                    "example.org",
                    "192.0.2.1",
                    None,
                    True,
                    {"n": i, "recipient": f"r{i % 5}@example.org"},
                )
            )
        elif i % 3 == 1:
            out.append(
                EntryDraft(
                    user,
                    "config.filter_update",
                    f"filter-{i % 10}",
                    "example.com",
                    "2001:db8::1",
                    None,
                    i % 7 != 0,
                    {"n": i},
                )
            )
        else:
            out.append(EntryDraft(user, "auth.login", None, None, "198.51.100.7", "ua", i % 5 != 0, {"n": i}))
    return out


@pytest.fixture
async def big(make_service, make_client):
    """N entries in 60 batches (so timestamps differ) over many small segments."""
    svc = make_service(StoreSettings(fsync="none", segment_max_bytes=16 * 1024), name="paging")
    for b in range(0, N, 50):
        svc.writer.append_batch(drafts(b, 50))
    assert len(list(svc.data_dir.segments.glob("*.seg"))) >= 5
    keys = make_keys(svc)
    client = await make_client(svc)
    return svc, client, keys


async def page_through(client, token, limit: int, **params) -> tuple[list[dict], int]:
    out: list[dict] = []
    pages = 0
    cursor = None
    while True:
        p = dict(params, limit=str(limit))
        if cursor:
            p["cursor"] = cursor
        page = await query(client, token, **p)
        pages += 1
        assert len(page["events"]) <= limit
        cursor = page["next_cursor"]
        if cursor is None:
            out += page["events"]
            return out, pages
        assert len(page["events"]) == limit, "a page with a next_cursor must be full"
        out += page["events"]


CASES = [
    ("asc", 97, {}),
    ("desc", 101, {}),
    ("asc", 13, {"user": "alice,bob", "action": "config.*"}),
    ("desc", 7, {"success": "false"}),
    ("asc", 50, {"recipient": "r1@example.org,r3@example.org"}),
    ("desc", 33, {"action": "auth.login", "ip": "198.51.100.7", "user": "carol"}),
    ("asc", 1000, {}),
    ("asc", 1, {"target": "filter-3"}),
]


@pytest.mark.parametrize("order,limit,params", CASES, ids=[f"{c[0]}-{c[1]}-{'&'.join(c[2])}" for c in CASES])
async def test_paging_equals_one_big_query(big, order, limit, params):
    svc, client, keys = big
    whole = await query(client, keys["reader"], order=order, limit="10000", **params)
    assert whole["next_cursor"] is None
    expected = whole["events"]
    assert expected, "the filter should select something"
    got, pages = await page_through(client, keys["reader"], limit, order=order, **params)
    assert ids(got) == ids(expected)
    assert len(set(ids(got))) == len(got)  # no duplicates
    assert pages == max(1, -(-len(expected) // limit))  # ceil: no empty trailing page
    seq_list = [e["seq"] for e in got]
    assert seq_list == sorted(seq_list, reverse=order == "desc")
    if not params:
        # no gaps (the keys' own entries follow the N drafts)
        assert len(got) == N + KEY_ENTRIES and set(seq_list) == set(range(1, N + KEY_ENTRIES + 1))


async def test_paging_a_time_window(big):
    svc, client, keys = big
    everything = (await query(client, keys["reader"], limit="10000"))["events"]
    lo, hi = everything[500]["ts"], everything[2500]["ts"]
    expected = [e["id"] for e in everything if lo <= e["ts"] < hi]
    for order in ("asc", "desc"):
        got, _ = await page_through(client, keys["reader"], 77, order=order, **{"from": lo, "to": hi})
        assert ids(got) == (expected if order == "asc" else expected[::-1])


@pytest.mark.parametrize("order", ["asc", "desc"])
@pytest.mark.parametrize("params", [{}, {"user": "alice"}], ids=["all", "alice"])
async def test_paging_while_appending(big, order, params):
    """Every entry that existed when paging started is seen exactly once, in order."""
    svc, client, keys = big
    stop = asyncio.Event()
    appended: list[int] = []

    async def appender():
        i = 0
        while not stop.is_set() and i < 400:  # bounded either way
            batch = [ev(10_000 + i * 10 + j, user=USERS[j % 4]) for j in range(10)]
            resp = await post_events(client, keys["writer"], batch)
            assert resp.status == 201, await resp.text()
            appended.append(i)
            i += 1
            await asyncio.sleep(0)

    task = asyncio.create_task(appender())
    while not appended:  # appends are under way before paging starts
        await asyncio.sleep(0.001)
    start_head = head_seq(svc)
    try:
        seen, _ = await page_through(client, keys["reader"], 61, order=order, **params)
    finally:
        stop.set()
        await task
    assert appended and head_seq(svc) > start_head, "the appender did not overlap the paging"

    seen_seqs = [e["seq"] for e in seen]
    assert len(seen_seqs) == len(set(seen_seqs)), "an entry was returned twice"
    assert seen_seqs == sorted(seen_seqs, reverse=order == "desc")
    # everything that existed at the start, matching the filter, is there exactly once
    existing = (await query(client, keys["reader"], limit="10000", to="now", **params))["events"]
    want = [e["seq"] for e in existing if e["seq"] <= start_head]
    assert [s for s in sorted(seen_seqs) if s <= start_head] == sorted(want)
    if params:
        assert all(e["user"] == "alice" for e in seen)
