"""The archive against a real S3-compatible server (SeaweedFS, started by the tests).

Sealed segments are copied with their checksum, locked (COMPLIANCE: the
store refuses to delete them), read back and verified before they count;
retention drops a segment locally only once its copy is verified and names
the object in its purge entry; a bucket without Object Lock is refused when
a lock is asked for; an unreachable store never slows appends.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import itertools
import json
import shutil
import time
from pathlib import Path

import pytest
from helpers_engine import append_events, build_log, draft, segment_paths, settings, write_config
from helpers_http import ev
from helpers_s3 import ACCESS_KEY, SECRET_KEY

from auditlog.engine.errors import ConfigError
from auditlog.engine.log import NodeLog
from auditlog.engine.retention import run_retention
from auditlog.engine.state import StateSeal
from auditlog.engine.verify import verify_node
from auditlog.engine.writer import LogWriter
from auditlog.export.archive import FOREVER, Archiver, ArchiveSettings, retain_until
from auditlog.export.s3 import StoreError

DAY_US = 86_400 * 1_000_000
_names = itertools.count()


@pytest.fixture
def bucket(locked_bucket):
    return locked_bucket


def archive_settings(s3, bucket, tmp_path, **kw) -> ArchiveSettings:
    creds = s3.credentials_file(tmp_path / "s3.toml")
    url = f"s3://{bucket}/audit-{next(_names)}"
    return ArchiveSettings(url=url, endpoint=s3.endpoint, credentials_file=str(creds), **kw)


def make_archiver(dd, node, st: ArchiveSettings, rejected=None) -> Archiver:
    found = []
    arch = Archiver(
        st,
        store=st.store(),
        reader=NodeLog(dd, node),
        data_dir=dd,
        seal=StateSeal(node.key, node.node_id),
        rejected=rejected or (lambda f, p: found.append((f, p))),
    )
    arch.rejections = found
    return arch


def test_sealed_segments_are_copied_locked_read_back_and_recorded(tmp_path, s3, bucket):
    dd, node = build_log(tmp_path / "data", 80)
    st = archive_settings(s3, bucket, tmp_path, retention_days=400)
    arch = make_archiver(dd, node, st)
    infos = NodeLog(dd, node).segment_infos()
    sealed = infos[:-1]
    assert arch.run_once() == len(sealed)
    assert arch.run_once() == 0  # nothing new
    client = s3.client()
    for info in sealed:
        a = arch.manifest.get(info.name)
        assert a is not None and a.key == f"{st.url.split('/', 3)[3]}/gw1/{info.name}"
        assert (a.first_seq, a.last_seq) == (info.first_seq, info.last_seq)
        body = client.get_object(Bucket=bucket, Key=a.key, VersionId=a.version_id)["Body"].read()
        assert body == info.path.read_bytes() and hashlib.sha256(body).hexdigest() == a.sha256
        h = client.head_object(Bucket=bucket, Key=a.key, VersionId=a.version_id)
        assert h["ObjectLockMode"] == "COMPLIANCE"
        assert h["ObjectLockRetainUntilDate"] == retain_until(info.index.max_ts, 400).replace(microsecond=0)
    assert arch.manifest.get(infos[-1].name) is None  # the active segment stays local only
    # the lock holds: the store refuses to delete an archived version
    a = arch.manifest.get(sealed[0].name)
    with pytest.raises(Exception) as e:
        client.delete_object(Bucket=bucket, Key=a.key, VersionId=a.version_id)
    assert "AccessDenied" in str(e.value)
    # the record survives a restart (sealed state), so nothing is copied twice
    again = make_archiver(dd, node, st)
    assert len(again.manifest) == len(sealed) and again.run_once() == 0
    assert arch.status()["pending_segments"] == 0 and arch.status()["archived_segments"] == len(sealed)


def test_forever_locks_until_the_end_of_9999(tmp_path, s3, bucket):
    dd, node = build_log(tmp_path / "data", 40, min_sealed=1)
    arch = make_archiver(dd, node, archive_settings(s3, bucket, tmp_path, object_lock="governance"))
    arch.run_once()
    a = next(iter(arch.manifest.all()))
    h = s3.client().head_object(Bucket=bucket, Key=a.key, VersionId=a.version_id)
    assert h["ObjectLockMode"] == "GOVERNANCE" and h["ObjectLockRetainUntilDate"] == FOREVER


def test_a_bucket_without_object_lock_is_refused_when_a_lock_is_asked_for(tmp_path, s3, plain_bucket):
    plain = plain_bucket
    dd, node = build_log(tmp_path / "data", 40, min_sealed=1)
    arch = make_archiver(dd, node, archive_settings(s3, plain, tmp_path))
    with pytest.raises(ConfigError, match="has no Object Lock"):
        arch.check_bucket()
    with pytest.raises(ConfigError, match="has no Object Lock"):
        arch.run_once()
    assert len(arch.manifest) == 0
    # without a lock it archives
    arch = make_archiver(dd, node, archive_settings(s3, plain, tmp_path, object_lock="off"))
    assert arch.run_once() >= 1


def test_serve_refuses_a_bucket_without_object_lock_and_writes_nothing(tmp_path, s3, plain_bucket):
    from helpers_engine import run_cli

    plain = plain_bucket
    dd, node = build_log(tmp_path / "data", 40, min_sealed=1)
    creds = s3.credentials_file(tmp_path / "s3.toml")
    cfg = tmp_path / "auditlog.toml"
    cfg.write_text(f'[archive]\nurl = "s3://{plain}/audit"\nendpoint = "{s3.endpoint}"\ncredentials_file = "{creds}"\n')
    before = sorted(p.name for p in segment_paths(dd))
    p = run_cli(dd.root, "--config", str(cfg), "serve", "--listen", "127.0.0.1:0")
    assert p.returncode == 2, (p.stdout, p.stderr)
    assert "has no Object Lock" in p.stderr and "Traceback" not in p.stderr
    assert SECRET_KEY not in p.stderr + p.stdout
    assert sorted(p.name for p in segment_paths(dd)) == before


def test_credentials_come_from_a_private_file_or_the_environment(tmp_path, s3, bucket, monkeypatch):
    creds = s3.credentials_file(tmp_path / "s3.toml")
    creds.chmod(0o644)
    st = ArchiveSettings(url=f"s3://{bucket}/a", endpoint=s3.endpoint, credentials_file=str(creds))
    with pytest.raises(StoreError, match="readable by group or others") as e:
        st.store()
    assert SECRET_KEY not in str(e.value)
    monkeypatch.delenv("AWS_ACCESS_KEY_ID", raising=False)
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY", raising=False)
    with pytest.raises(StoreError, match="AWS_ACCESS_KEY_ID"):
        ArchiveSettings(url=f"s3://{bucket}/a", endpoint=s3.endpoint).store()
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    store = ArchiveSettings(url=f"s3://{bucket}/a", endpoint=s3.endpoint).store()
    store.check_bucket()
    assert SECRET_KEY not in repr(store) and ACCESS_KEY not in repr(store)


@pytest.mark.parametrize(
    "values, message",
    [
        ({"url": "https://bucket/x"}, "s3://BUCKET/PREFIX"),
        ({"url": "s3:///x"}, "s3://BUCKET/PREFIX"),
        ({"url": "s3://b/x", "object_lock": "strict"}, "compliance, governance, off"),
        ({"url": "s3://b/x", "retention_days": 30}, "at least 90"),
        ({"url": "s3://b/x", "endpoint": "ftp://x"}, "http:// or https://"),
    ],
)
def test_bad_archive_settings_are_refused_with_the_setting_named(values, message):
    with pytest.raises(ConfigError, match=message):
        ArchiveSettings(**values)


def test_the_archive_keeps_at_least_what_the_node_keeps(tmp_path):
    cfg = write_config(tmp_path / "c.toml", retention_days=400)
    cfg.write_text(cfg.read_text() + '\n[archive]\nurl = "s3://b/x"\nretention_days = 365\n')
    from auditlog.cli.config import load_config

    with pytest.raises(ConfigError, match=r"retention_days \(365\) must be at least the node's retention_days"):
        load_config(cfg)
    cfg.write_text(cfg.read_text().replace("retention_days = 365", 'retention_days = "forever"'))
    assert load_config(cfg).archive.retention_days is None


def test_an_unreachable_store_never_slows_appends(tmp_path):
    dd, node = build_log(tmp_path / "data", 40, min_sealed=1)
    creds = tmp_path / "s3.toml"
    creds.write_text(f'access_key_id = "{ACCESS_KEY}"\nsecret_access_key = "{SECRET_KEY}"\n')
    creds.chmod(0o600)
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    st = ArchiveSettings(
        url="s3://gone/audit", endpoint=f"http://127.0.0.1:{dead}", credentials_file=str(creds), interval=0.05
    )
    arch = make_archiver(dd, node, st)
    arch.start()
    try:
        with LogWriter(dd, node, settings()) as w:
            t0 = time.perf_counter()
            for i in range(200):
                w.append_batch([draft(1000 + i)])
            took = time.perf_counter() - t0
        deadline = time.monotonic() + 30
        while arch.errors < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        arch.stop()
    assert arch.errors >= 2 and "cannot be reached" in arch.last_error
    assert SECRET_KEY not in arch.last_error
    assert len(arch.manifest) == 0
    # the appends went on at disk speed while the archiver failed (a generous bound: the
    # point is that no append waited on a connection timeout)
    assert took < 5, took


def _old_log(tmp_path, n=80):
    """A log whose entries are all older than 90 days at ``as_of``."""
    dd, node = build_log(tmp_path / "data", n)
    infos = NodeLog(dd, node).segment_infos()
    as_of = infos[-1].index.max_ts + 100 * DAY_US
    return dd, node, as_of


def test_retention_drops_only_what_is_archived_and_names_the_objects(tmp_path, s3, bucket):
    dd, node, as_of = _old_log(tmp_path)
    st = archive_settings(s3, bucket, tmp_path)
    arch = make_archiver(dd, node, st)
    before = [p.name for p in segment_paths(dd)]
    # nothing archived yet: nothing goes, whatever its age
    with LogWriter(dd, node, settings(retention_days=90)) as w:
        rep = run_retention(w, as_of, archived=arch.archived)
    assert rep.dropped_segments == [] and rep.waiting_for_archive == before[0]
    assert [p.name for p in segment_paths(dd)][: len(before)] == before
    # retention's roll sealed the active segment; archive everything sealed, then run again
    arch.run_once()
    with LogWriter(dd, node, settings(retention_days=90)) as w:
        rep = run_retention(w, as_of, archived=arch.archived)
    assert rep.dropped_segments and rep.dropped_segments[0] == before[0]
    assert all(not (dd.segments / n).exists() for n in rep.dropped_segments)
    purge = [e for e in NodeLog(dd, node).scan() if e.action == "audit.retention_purge"][-1]
    objects = purge.details["archive"]["objects"]
    assert purge.details["archive"]["url"] == st.url
    assert [o[0] for o in objects] == rep.dropped_segments
    for name, key, version, sha in objects:
        a = arch.manifest.get(name)
        assert (key, version, sha) == (a.key, a.version_id, a.sha256)
    assert verify_node(dd, node).ok


def test_a_segment_changed_after_it_was_archived_is_kept(tmp_path, s3, bucket):
    dd, node, as_of = _old_log(tmp_path)
    arch = make_archiver(dd, node, archive_settings(s3, bucket, tmp_path))
    arch.run_once()
    first = segment_paths(dd)[0]
    data = bytearray(first.read_bytes())
    data[-5] ^= 0x01  # an attacker edits the local copy after it went to the archive
    first.write_bytes(bytes(data))
    with LogWriter(dd, node, settings(retention_days=90)) as w:
        rep = run_retention(w, as_of, archived=arch.archived)
    assert rep.dropped_segments == [] and rep.waiting_for_archive == first.name
    assert first.exists()


def test_a_forged_record_is_set_aside_and_the_segments_are_checked_again(tmp_path, s3, bucket):
    dd, node = build_log(tmp_path / "data", 60)
    st = archive_settings(s3, bucket, tmp_path)
    arch = make_archiver(dd, node, st)
    n = arch.run_once()
    state = dd.state / "archive.json"
    state.write_bytes(state.read_bytes().replace(b'"size"', b'"sizf"', 1))
    again = make_archiver(dd, node, st)
    assert again.rejections and again.rejections[0][0] == "archive.json"
    assert len(again.manifest) == 0
    assert again.run_once() == n  # copied (and verified) again, as new versions


def test_a_node_that_goes_on_writing_gets_its_new_segments_archived(tmp_path, s3, bucket):
    dd, node = build_log(tmp_path / "data", 40, min_sealed=1)
    arch = make_archiver(dd, node, archive_settings(s3, bucket, tmp_path))
    first = arch.run_once()
    append_events(dd, node, 60, start=40)
    assert arch.run_once() == len(segment_paths(dd)) - 1 - first
    assert len(arch.manifest) == len(segment_paths(dd)) - 1


def test_retain_until_is_the_newest_entry_plus_the_archive_retention():
    ts = int(dt.datetime(2026, 3, 14, 9, tzinfo=dt.UTC).timestamp() * 1e6)
    assert retain_until(ts, 365) == dt.datetime(2027, 3, 14, 9, tzinfo=dt.UTC)
    assert retain_until(ts, None) == FOREVER
    # never in the past for the store, which enforces a lock in real time: at least a day ahead
    now = dt.datetime(2026, 12, 5, 12, tzinfo=dt.UTC)
    assert retain_until(ts, 90, now) == dt.datetime(2026, 12, 6, 12, tzinfo=dt.UTC)
    assert retain_until(ts, 365, now) == dt.datetime(2027, 3, 14, 9, tzinfo=dt.UTC)


# ----------------------------------------------------------------------------- verify --archive


def _config(tmp_path, s3, st: ArchiveSettings, **top) -> Path:
    lines = [f"{k} = {v}" for k, v in top.items()]
    lines += [
        "[archive]",
        f'url = "{st.url}"',
        f'endpoint = "{s3.endpoint}"',
        f'credentials_file = "{st.credentials_file}"',
        f'object_lock = "{st.object_lock}"',
    ]
    p = tmp_path / "auditlog.toml"
    p.write_text("\n".join(lines) + "\n")
    return p


def _verify_archive(dd, cfg) -> tuple[int, dict]:
    import json

    from helpers_engine import run_cli

    p = run_cli(dd.root, "--config", str(cfg), "verify", "--archive", "--json")
    assert p.returncode in (0, 1), (p.returncode, p.stdout, p.stderr)
    assert SECRET_KEY not in p.stdout + p.stderr
    return p.returncode, json.loads(p.stdout)


def _archived_and_purged(tmp_path, s3, bucket, **kw):
    """A log archived whole (but the active segment), its oldest segments then dropped
    locally by retention."""
    dd, node, as_of = _old_log(tmp_path, 100)
    st = archive_settings(s3, bucket, tmp_path, **kw)
    arch = make_archiver(dd, node, st)
    with LogWriter(dd, node, settings(retention_days=90)) as w:
        w.roll()
    arch.run_once()
    with LogWriter(dd, node, settings(retention_days=90)) as w:
        rep = run_retention(w, as_of, archived=arch.archived)
    assert rep.dropped_segments
    return dd, node, st, arch, rep


def test_verify_archive_checks_the_whole_chain_across_archive_and_disk(tmp_path, s3, bucket):
    dd, node, st, arch, rep = _archived_and_purged(tmp_path, s3, bucket)
    total = NodeLog(dd, node).head()[0]
    code, out = _verify_archive(dd, _config(tmp_path, s3, st))
    assert code == 0 and out["violations"] == [], out
    assert out["entries_checked"] == total


def test_verify_archive_reports_an_object_stored_over_the_archived_one(tmp_path, s3, bucket):
    dd, node, st, arch, rep = _archived_and_purged(tmp_path, s3, bucket)
    victim = rep.dropped_segments[1]
    a = arch.manifest.get(victim)
    s3.client().put_object(Bucket=bucket, Key=a.key, Body=b"AUDITSEG forged")  # a new version on top
    code, out = _verify_archive(dd, _config(tmp_path, s3, st))
    assert code == 1
    kinds = [(v["kind"], v["segment"]) for v in out["violations"]]
    assert kinds == [("archive_overwritten", victim)], out
    assert out["violations"][0]["seq_from"] == a.first_seq and out["violations"][0]["seq_to"] == a.last_seq


def test_verify_archive_reports_objects_altered_or_deleted_in_an_unlocked_bucket(tmp_path, s3, plain_bucket):
    dd, node, st, arch, rep = _archived_and_purged(tmp_path, s3, plain_bucket, object_lock="off")
    client = s3.client()
    gone, changed = rep.dropped_segments[1], rep.dropped_segments[3]
    ga, ca = arch.manifest.get(gone), arch.manifest.get(changed)
    client.delete_object(Bucket=plain_bucket, Key=ga.key)
    body = bytearray(client.get_object(Bucket=plain_bucket, Key=ca.key)["Body"].read())
    body[-40] ^= 0x01  # one bit of a frame, by someone without the node key
    client.put_object(Bucket=plain_bucket, Key=ca.key, Body=bytes(body))
    code, out = _verify_archive(dd, _config(tmp_path, s3, st))
    assert code == 1
    found = {(v["kind"], v["segment"]) for v in out["violations"]}
    assert ("archive_missing", gone) in found and ("archive_altered", changed) in found, out
    # the chain check says what the missing and the altered copies mean for the log
    chain = [v for v in out["violations"] if v["detail"].startswith("in the archive's chain")]
    assert any(v["kind"] == "segment_missing" and v["seq_from"] == ga.first_seq for v in chain), chain
    assert any(ca.first_seq <= (v["seq_from"] or 0) <= ca.last_seq for v in chain if v["kind"] != "segment_missing")


def test_verify_archive_without_an_archive_table_says_so(tmp_path):
    from helpers_engine import run_cli

    dd, node = build_log(tmp_path / "data", 20, min_sealed=1)
    p = run_cli(dd.root, "verify", "--archive")
    assert p.returncode == 2 and "needs an [archive] table" in p.stderr and "Traceback" not in p.stderr


def test_cli_retention_defers_to_the_archive(tmp_path, s3, bucket):
    from helpers_engine import run_cli

    dd, node, as_of = _old_log(tmp_path, 80)
    st = archive_settings(s3, bucket, tmp_path)
    cfg = _config(tmp_path, s3, st, retention_days=90)
    before = [p.name for p in segment_paths(dd)]
    as_of_text = dt.datetime.fromtimestamp(as_of / 1e6, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    p = run_cli(dd.root, "--config", str(cfg), "retention", "run", "--as-of", as_of_text)
    assert p.returncode == 0, p.stderr
    assert "nothing to drop" in p.stdout and f"kept {before[0]}" in p.stdout
    assert all((dd.segments / n).exists() for n in before)
    make_archiver(dd, node, st).run_once()
    p = run_cli(dd.root, "--config", str(cfg), "retention", "run", "--as-of", as_of_text)
    assert p.returncode == 0 and "dropped" in p.stdout, p.stdout + p.stderr
    assert not (dd.segments / before[0]).exists()


# ----------------------------------------------------------------------------- reads span both


def _reader_with_archive(dd, node, st, arch, budget_mb=None):
    from auditlog.export.archive import attach_reads

    log = NodeLog(dd, node)
    if budget_mb is not None:
        import dataclasses

        st = dataclasses.replace(st, cache_mb=budget_mb)
    reads = attach_reads(
        log, st, data_dir=dd, seal=StateSeal(node.key, node.node_id), rejected=lambda f, p: None, store=arch.store
    )
    return log, reads


def test_a_read_reaching_before_the_disk_is_served_from_the_archive_verified(tmp_path, s3, bucket):
    dd, node, st, arch, rep = _archived_and_purged(tmp_path, s3, bucket)
    local_only = [e.seq for e in NodeLog(dd, node).scan() if e.integrity == "ok"]
    assert local_only[0] > 1  # retention dropped the start locally
    log, reads = _reader_with_archive(dd, node, st, arch)
    entries = list(log.scan())
    assert [e.seq for e in entries] == list(range(1, entries[-1].seq + 1))
    assert all(e.integrity == "ok" for e in entries)
    assert reads.fetches == len(rep.dropped_segments)
    # a window inside the archived part fetches only what it overlaps
    old = [e for e in entries if e.seq < local_only[0]]
    mid = old[len(old) // 2]
    log2, reads2 = _reader_with_archive(dd, node, st, arch)
    reads2.dir = tmp_path / "other-cache"  # nothing cached yet
    got = list(log2.scan(mid.ts, mid.ts + 1))
    assert [e.seq for e in got if e.seq == mid.seq] == [mid.seq]
    assert reads2.fetches == 1
    # newest first, the same entries
    back = [e.seq for e in log.scan(order="desc")]
    assert back == [e.seq for e in reversed(entries)]


def test_an_archived_copy_that_is_gone_or_altered_is_damage_in_the_read(tmp_path, s3, plain_bucket):
    dd, node, st, arch, rep = _archived_and_purged(tmp_path, s3, plain_bucket, object_lock="off")
    client = s3.client()
    gone = arch.manifest.get(rep.dropped_segments[1])
    client.delete_object(Bucket=plain_bucket, Key=gone.key)
    log, reads = _reader_with_archive(dd, node, st, arch)
    entries = list(log.scan())
    flagged = [e for e in entries if e.integrity != "ok"]
    assert flagged and all(gone.first_seq <= e.seq <= gone.last_seq for e in flagged), flagged
    assert "archive_unavailable" in flagged[0].violation or "archived copy" in flagged[0].violation
    ok = [e.seq for e in entries if e.integrity == "ok"]
    assert ok == [s for s in range(1, ok[-1] + 1) if not gone.first_seq <= s <= gone.last_seq]


def test_the_cache_stays_within_its_budget_and_fetches_again(tmp_path, s3, bucket):
    dd, node, st, arch, rep = _archived_and_purged(tmp_path, s3, bucket)
    log, reads = _reader_with_archive(dd, node, st, arch, budget_mb=1)
    reads.budget = 10_000  # about one small segment
    n = len(list(log.scan()))
    size = sum(p.stat().st_size for p in reads.dir.iterdir())
    assert size <= 10_000 + max(a.size for a in arch.manifest.all()) * 2
    assert len(list(log.scan())) == n  # read again: fetched again, still complete
    assert reads.fetches >= 2 * len(rep.dropped_segments) - 1


def test_cli_query_reaches_into_the_archive(tmp_path, s3, bucket):
    import json

    from helpers_engine import run_cli

    dd, node, st, arch, rep = _archived_and_purged(tmp_path, s3, bucket)
    cfg = _config(tmp_path, s3, st)
    p = run_cli(dd.root, "--config", str(cfg), "query", "--format", "json", "--limit", "5")
    assert p.returncode == 0, p.stderr
    assert [e["seq"] for e in json.loads(p.stdout)] == [1, 2, 3, 4, 5]
    p = run_cli(dd.root, "query", "--format", "json", "--limit", "5")  # without the archive
    assert p.returncode == 0 and json.loads(p.stdout)[0]["seq"] > 1


# ----------------------------------------------------------------------------- a node at work


async def test_a_node_answers_for_what_only_its_archive_holds(tmp_path, s3, bucket, aiohttp_client):
    """retention_days = 90 locally, the archive kept forever: a query over entries older
    than 90 days is answered from the archive, verified; a held range survives retention;
    the archive's state shows in /api/v1/cluster and /metrics."""
    from helpers_http import bearer, make_keys
    from prometheus_client.parser import text_string_to_metric_families

    from auditlog.engine.datadir import DataDir
    from auditlog.engine.settings import StoreSettings
    from auditlog.query.http.app import create_app
    from auditlog.query.node import NodeConfig, build_node

    dd = DataDir(tmp_path / "node")
    dd.init("gw1")
    st = archive_settings(s3, bucket, tmp_path)
    node = build_node(
        NodeConfig(StoreSettings(fsync="none", retention_days=90, segment_max_bytes=4096), archive=st), dd
    )
    try:
        keys = make_keys(node)
        client = await aiohttp_client(create_app(node))
        writer = bearer(keys["writer"])
        for i in range(8):
            resp = await client.post("/api/v1/events", json=[ev(k) for k in range(i * 20, i * 20 + 20)], headers=writer)
            assert resp.status == 201
        node.writer.roll()
        first = [e for e in NodeLog(dd, node.node).scan()]
        held_ts = first[len(first) // 2].ts
        hold = node.set_hold(held_ts, held_ts + 1, "case 12", "test")
        await node.run(node.archiver.run_once)  # (its thread may have done some already)
        assert len(node.archiver.manifest) > 3 and not node.archiver.candidates()
        as_of = first[-1].ts + 100 * DAY_US
        rep = await node.run(node.run_retention, as_of)
        assert rep.dropped_segments and rep.kept_for_hold == hold.id
        local_first = NodeLog(dd, node.node).segment_infos()[0].first_seq
        assert local_first > 1
        reader = bearer(keys["reader"])
        page = await (await client.get("/api/v1/audit-log?limit=10000", headers=reader)).json()
        seqs = [e["seq"] for e in page["events"]]
        assert seqs[: local_first - 1] == list(range(1, local_first))  # from the archive
        assert all(e["integrity"] == "ok" for e in page["events"])
        assert seqs == list(range(1, seqs[-1] + 1))
        held = [e for e in page["events"] if e["seq"] == first[len(first) // 2].seq]
        assert held and (dd.segments / NodeLog(dd, node.node).segment_infos()[0].name).exists()
        # the retention entry may have sealed a segment, and the hold woke the archiver's own
        # thread: one more pass, which waits for any in flight, settles what the status shows
        await node.run(node.archiver.run_once)
        status = (await (await client.get("/api/v1/cluster", headers=reader)).json())["nodes"][0]["archive"]
        assert status["url"] == st.url and status["archived_segments"] >= len(rep.dropped_segments)
        assert status["errors"] == 0 and status["pending_segments"] == 0
        text = await (await client.get("/metrics")).text()
        fams = {f.name: f for f in text_string_to_metric_families(text)}
        assert fams["auditlog_archive_segments"].samples[0].value == status["archived_segments"]
        assert fams["auditlog_archive_errors"].type == "counter"
    finally:
        node.close()


# ----------------------------------------------------------------------------- restore


def _rebuilt(tmp_path, dd, name="rebuilt"):
    """A data dir with the old node's identity and keys (from a backup) and no log."""
    import shutil as _sh

    new = tmp_path / name
    new.mkdir()
    for f in ("node.id", "node.key", "node.sign", "node.pub"):
        _sh.copy2(dd.root / f, new / f)
    return new


def test_a_node_rebuilt_from_scratch_takes_its_log_back_from_the_archive(tmp_path, s3, bucket):
    import json

    from helpers_engine import run_cli

    dd, node, st, arch, rep = _archived_and_purged(tmp_path, s3, bucket)
    archived_to = max(a.last_seq for a in arch.manifest.all())
    cfg = _config(tmp_path, s3, st)
    new = _rebuilt(tmp_path, dd)
    p = run_cli(new, "--config", str(cfg), "archive", "restore", "--json")
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert (out["seq_from"], out["seq_to"]) == (1, archived_to)
    assert out["entries_checked"] == archived_to and len(out["restored"]) == out["objects"]
    # the log is whole again and goes on after what the archive held
    p = run_cli(new, "verify", "--json")
    assert p.returncode == 0 and json.loads(p.stdout)["violations"] == [], p.stdout
    p = run_cli(new, "append", "--user", "alice", "--action", "auth.login")
    assert p.returncode == 0 and p.stdout.strip() == f"gw1:{archived_to + 2}", p.stdout  # after audit.recovery
    q = run_cli(new, "query", "--format", "json")
    entries = json.loads(q.stdout)
    assert [e["seq"] for e in entries] == list(range(1, archived_to + 3))
    assert entries[archived_to]["action"] == "audit.recovery"
    assert entries[archived_to]["details"]["reason"] == "segments restored from the archive"
    # and the record of what is archived is back: the archive checks out
    p = run_cli(new, "--config", str(cfg), "verify", "--archive", "--json")
    assert p.returncode == 0 and json.loads(p.stdout)["violations"] == [], p.stdout


def test_restore_under_another_key_is_refused_and_writes_nothing(tmp_path, s3, bucket):
    from helpers_engine import run_cli

    dd, node, st, arch, rep = _archived_and_purged(tmp_path, s3, bucket)
    cfg = _config(tmp_path, s3, st)
    other = tmp_path / "other"
    p = run_cli(other, "init", "--node-id", "gw1")  # same id, a new key: not the node that wrote them
    assert p.returncode == 0, p.stderr
    p = run_cli(other, "--config", str(cfg), "archive", "restore")
    assert p.returncode == 1 and "nothing restored" in p.stderr and "foreign_segment" in p.stderr, p.stderr
    assert list((other / "segments").glob("*.seg")) == [] if (other / "segments").exists() else True
    assert not (other / "state" / "archive.json").exists()


def test_restore_refuses_an_archive_with_an_altered_segment(tmp_path, s3, plain_bucket):
    from helpers_engine import run_cli

    dd, node, st, arch, rep = _archived_and_purged(tmp_path, s3, plain_bucket, object_lock="off")
    a = arch.manifest.get(rep.dropped_segments[1])
    client = s3.client()
    body = bytearray(client.get_object(Bucket=plain_bucket, Key=a.key)["Body"].read())
    body[-40] ^= 0x01
    client.put_object(Bucket=plain_bucket, Key=a.key, Body=bytes(body))
    new = _rebuilt(tmp_path, dd)
    p = run_cli(new, "--config", str(_config(tmp_path, s3, st)), "archive", "restore")
    assert p.returncode == 1 and "nothing restored" in p.stderr, p.stderr
    assert rep.dropped_segments[1] in p.stderr
    assert not list((new / "segments").glob("*.seg")) if (new / "segments").exists() else True


# ----------------------------------------------------------------------------- the archive's own retention


def _expiring(tmp_path, s3, bucket, **kw):
    """An old log, archived (archive kept 120 days), its old segments dropped locally; the
    archiver records through a writer of its own."""
    dd, node, st, arch, rep = _archived_and_purged(tmp_path, s3, bucket, retention_days=120, **kw)
    recorded = []

    def record(draft):
        with LogWriter(dd, node, settings(retention_days=90)) as w:
            recorded.append(w.append_batch([draft]))

    arch.record = record
    last_ts = max(a.max_ts for a in arch.manifest.all())
    return dd, node, st, arch, rep, recorded, last_ts


def test_the_archive_lets_go_of_what_its_retention_no_longer_keeps(tmp_path, s3, plain_bucket):
    dd, node, st, arch, rep, recorded, last_ts = _expiring(tmp_path, s3, plain_bucket, object_lock="off")
    before = sorted(arch.manifest.all(), key=lambda a: a.first_seq)
    gone_expected = [a.name for a in before if a.name in rep.dropped_segments]
    # too young: nothing goes
    assert arch.expire(last_ts + 100 * DAY_US) == []
    gone = arch.expire(last_ts + 200 * DAY_US)
    assert gone == gone_expected  # what is dropped locally and old enough: the prefix
    assert all(arch.manifest.get(n) is None for n in gone) and len(recorded) == 1
    names = {n.rsplit("/", 1)[-1] for n in arch.store.names("gw1/")}
    assert not names & set(gone) and names == {a.name for a in arch.manifest.all()}
    purge = [e for e in NodeLog(dd, node).scan() if e.action == "audit.archive_purge"]
    assert len(purge) == 1 and [o[0] for o in purge[0].details["objects"]] == gone
    # the archive checks out: what its retention let go is no longer expected, and the chain's
    # new start is accounted for by the node's retention purge entries
    code, out = _verify_archive(dd, _config(tmp_path, s3, st))
    assert code == 0 and out["violations"] == [], out
    assert arch.expire(last_ts + 200 * DAY_US) == []  # nothing more, nothing recorded twice
    assert len(recorded) == 1


def test_a_hold_keeps_archived_segments_past_the_archive_retention(tmp_path, s3, plain_bucket):
    from auditlog.engine.holds import holds_in_force, set_draft

    dd, node, st, arch, rep, recorded, last_ts = _expiring(tmp_path, s3, plain_bucket, object_lock="off")
    ordered = sorted(arch.manifest.all(), key=lambda a: a.first_seq)
    held = ordered[1]
    with LogWriter(dd, node, settings(retention_days=90)) as w:
        w.append_batch([set_draft(held.min_ts, held.max_ts + 1, "case 77", "alice")])
        holds = holds_in_force(w.log)
    arch.holds = lambda: holds
    assert arch.expire(last_ts + 200 * DAY_US) == [ordered[0].name]
    assert arch.manifest.get(held.name) is not None
    assert held.name in {n.rsplit("/", 1)[-1] for n in arch.store.names("gw1/")}


def test_a_locked_object_the_store_keeps_is_tried_again_not_recorded_again(tmp_path, s3, bucket):
    """Under COMPLIANCE, an object is locked at least a day past its archiving (stores refuse a
    retain-until date in the past), so the store refuses to delete it yet: the archiver says so,
    keeps its record, and tries again at its next pass without a second purge entry."""
    dd, node, st, arch, rep, recorded, last_ts = _expiring(tmp_path, s3, bucket)
    with pytest.raises(StoreError, match="AccessDenied"):
        arch.expire(last_ts + 200 * DAY_US)
    assert len(recorded) == 1
    first = sorted(arch.manifest.all(), key=lambda a: a.first_seq)[0]
    assert first.expiring and arch.manifest.get(first.name) is not None
    with pytest.raises(StoreError):
        arch.expire(last_ts + 200 * DAY_US)
    assert len(recorded) == 1
    # every copy is still there and the archive still checks out
    code, out = _verify_archive(dd, _config(tmp_path, s3, st))
    assert code == 0 and out["violations"] == [], out


@pytest.mark.e2e
def test_a_restored_node_that_lost_its_newest_entries_is_reported_by_its_witness(tmp_path, s3, bucket):
    """A node restored from its archive has its log up to the last archived segment: the
    entries of the segment it was writing are gone with the old disk.  Its witness, which
    cosigned the longer tree, refuses the shorter one, and cluster verification says so."""
    import shutil as _sh

    from helpers_cluster import LocalCluster, NodeSpec, make_events
    from test_witness import _records, _wait

    cl = LocalCluster(
        tmp_path / "cl", [NodeSpec("a", settings={"segment_max_bytes": 4096}), NodeSpec("b")], checkpoint_interval=0.2
    )
    try:
        cl.build()
        a, b = cl["a"], cl["b"]
        st = archive_settings(s3, bucket, tmp_path)
        a.config_path.write_text(
            a.config_path.read_text()
            + f'\n[archive]\nurl = "{st.url}"\nendpoint = "{s3.endpoint}"\n'
            + f'credentials_file = "{st.credentials_file}"\ninterval = "0.5s"\n'
        )
        cl.start()
        last = int(a.post_events(make_events(150, "before-loss"))["last_id"].split(":")[1])
        _wait(lambda: any(d["size"] >= last for d in _records(b, "a", "audit.checkpoint")), 30, "b cosigns a")

        def archived():
            row = next(r for r in a.get_ok("/api/v1/cluster")["nodes"] if r["node"] == "a")["archive"]
            return row["archived_segments"] >= 3 and row["pending_segments"] == 0 and row["errors"] == 0

        _wait(archived, 30, "a's sealed segments archived")
        # the disk is lost; the keys come back from a backup
        a.kill()
        keep = {f: (a.data_dir / f).read_bytes() for f in ("node.id", "node.key", "node.sign", "node.pub")}
        _sh.rmtree(a.data_dir)
        a.data_dir.mkdir()
        for f, data in keep.items():
            (a.data_dir / f).write_bytes(data)
            (a.data_dir / f).chmod(0o600 if f in ("node.key", "node.sign") else 0o644)
        p = a.run("--config", str(a.config_path), "archive", "restore", "--json", check=False)
        assert p.returncode == 0, p.stderr
        restored_to = json.loads(p.stdout)["seq_to"]
        assert restored_to < last  # what a was writing was not archived yet
        a.start()
        a.wait_ready()
        refused = _wait(lambda: _records(b, "a", "audit.checkpoint_refused"), 30, "b refuses the shorter tree")
        assert {d["reason"] for d in refused} <= {"rollback", "inconsistent"}
        rep = b.get_ok("/api/v1/verify?scope=cluster")
        found = [v for v in rep["violations"] if v["kind"] in ("witness_truncated", "witness_mismatch")]
        assert found and all(v["node"] == "a" for v in found), rep["violations"]
    finally:
        cl.close()


def test_a_read_takes_an_archived_index_only_when_it_holds(tmp_path, s3, bucket, monkeypatch):
    """The .idx archived beside a segment spares a read the walk over the whole segment; an
    index that fails its MAC, or another segment's, is not taken (the segment is walked), and
    every frame is checked when read either way."""
    import auditlog.engine.catalog as catalog

    dd, node, st, arch, rep = _archived_and_purged(tmp_path, s3, bucket)
    walks = []
    real = catalog.index_segment
    monkeypatch.setattr(catalog, "index_segment", lambda p, *a, **k: walks.append(p.name) or real(p, *a, **k))
    expected = list(range(1, NodeLog(dd, node).head()[0] + 1))

    def read_all():
        walks.clear()
        log, reads = _reader_with_archive(dd, node, st, arch)
        shutil.rmtree(reads.dir, ignore_errors=True)
        entries = list(log.scan())
        assert [e.seq for e in entries] == expected and all(e.integrity == "ok" for e in entries)
        return [w for w in walks if w in rep.dropped_segments]

    assert read_all() == []  # every archived segment indexed from its archived .idx
    client = s3.client()
    prefix = st.url.split("/", 3)[3]
    first, second = rep.dropped_segments[0], rep.dropped_segments[1]
    idx_key = lambda seg: f"{prefix}/gw1/{seg.replace('.seg', '.idx')}"  # noqa: E731
    bad = bytearray(client.get_object(Bucket=bucket, Key=idx_key(first))["Body"].read())
    bad[10] ^= 0x01
    client.put_object(Bucket=bucket, Key=idx_key(first), Body=bytes(bad))  # fails its MAC
    other = client.get_object(Bucket=bucket, Key=idx_key(rep.dropped_segments[2]))["Body"].read()
    client.put_object(Bucket=bucket, Key=idx_key(second), Body=other)  # another segment's, intact
    assert sorted(read_all()) == sorted([first, second])


def test_a_cached_archived_copy_edited_on_disk_is_damage_in_the_read(tmp_path, s3, bucket):
    """The cache is under the data dir: someone with write access there but no key who edits
    a fetched copy is found when the frames are checked again as they are read."""
    from helpers_engine import flip_byte, frames_of

    dd, node, st, arch, rep = _archived_and_purged(tmp_path, s3, bucket)
    log, reads = _reader_with_archive(dd, node, st, arch)
    total = len(list(log.scan()))
    victim = reads.dir / rep.dropped_segments[1]
    frame = frames_of(victim, node)[0]
    flip_byte(victim, frame.end - 40)
    entries = list(log.scan())
    bad = [e for e in entries if e.integrity != "ok"]
    assert bad and all(frame.first_seq <= e.seq <= frame.last_seq for e in bad), bad
    assert len([e for e in entries if e.integrity == "ok"]) == total - (frame.last_seq - frame.first_seq + 1)


@pytest.mark.parametrize(
    "content, message",
    [
        (b"\xff\xfe not text", "not TOML"),
        (b"access_key_id = ", "not TOML"),
        (b'access_key_id = "AK"\n', "needs access_key_id and secret_access_key"),
        (b'access_key_id = "AK"\nsecret_access_key = 5\n', "needs access_key_id and secret_access_key"),
        (b"x" * (64 * 1024 + 1), "larger than"),
    ],
)
def test_a_bad_credentials_file_is_refused_in_one_line(tmp_path, content, message):
    from auditlog.export.s3 import read_credentials

    p = tmp_path / "s3.toml"
    p.write_bytes(content)
    p.chmod(0o600)
    with pytest.raises(StoreError, match=message) as e:
        read_credentials(str(p))
    assert "\n" not in str(e.value)
    with pytest.raises(StoreError, match="missing"):
        read_credentials(str(tmp_path / "none.toml"))
