"""Legal holds: set and released through the log, kept by retention, mirrored in the archive.

A hold is its ``audit.legal_hold_set`` entry; a release is an
``audit.legal_hold_release`` entry naming it; the holds in force are a
projection of the log.  Retention keeps every segment a hold in force
overlaps (and what follows it); the archive puts an S3 legal hold on the
objects a hold overlaps and lifts it at release.
"""

from __future__ import annotations

import json

import pytest
from helpers_engine import build_log, run_cli, settings
from helpers_http import assert_error, bearer, ev

from auditlog.engine.holds import HoldError, held_segment, holds_in_force, release_draft, set_draft
from auditlog.engine.log import NodeLog
from auditlog.engine.retention import run_retention
from auditlog.engine.verify import verify_node
from auditlog.engine.writer import LogWriter

DAY_US = 86_400 * 1_000_000


def _old_log(tmp_path, n=80):
    dd, node = build_log(tmp_path / "data", n)
    infos = NodeLog(dd, node).segment_infos()
    return dd, node, infos, infos[-1].index.max_ts + 100 * DAY_US


def test_holds_are_a_projection_of_the_log(tmp_path):
    dd, node, infos, _ = _old_log(tmp_path, 60)
    with LogWriter(dd, node, settings()) as w:
        a = w.append_batch([set_draft(10, 20, "case a", "alice")])
        b = w.append_batch([set_draft(30, 40, "case b", "bob")])
        held = holds_in_force(w.log)
        assert [(h.id, h.from_us, h.to_us, h.reason, h.by) for h in held] == [
            (f"gw1:{a.first_seq}", 10, 20, "case a", "alice"),
            (f"gw1:{b.first_seq}", 30, 40, "case b", "bob"),
        ]
        w.append_batch([release_draft(held[0], "carol", "case closed")])
        assert [h.id for h in holds_in_force(w.log)] == [f"gw1:{b.first_seq}"]
    # another process reading the same log sees the same holds
    assert [h.id for h in holds_in_force(NodeLog(dd, node))] == [f"gw1:{b.first_seq}"]


@pytest.mark.parametrize(
    "from_us, to_us, reason, message",
    [
        (10, 10, "x", "after its 'from'"),
        (20, 10, "x", "after its 'from'"),
        (1, 2, " ", "needs a reason"),
        (1, 2, "x" * 1001, "longer than 1000"),
    ],
)
def test_a_hold_that_cannot_be_one_is_refused(from_us, to_us, reason, message):
    with pytest.raises(HoldError, match=message):
        set_draft(from_us, to_us, reason, "alice")


def test_retention_keeps_what_a_hold_covers_until_it_is_released(tmp_path):
    dd, node, infos, as_of = _old_log(tmp_path)
    target = infos[2]  # a hold over the entries of the third segment
    with LogWriter(dd, node, settings(retention_days=90)) as w:
        w.append_batch([set_draft(target.index.min_ts, target.index.max_ts + 1, "case 4711", "alice")])
        rep = run_retention(w, as_of, held=held_segment(holds_in_force(w.log)))
    hold = holds_in_force(NodeLog(dd, node))[0]
    # the two segments before the held one go; the held one and all after it stay
    assert rep.dropped_segments == [infos[0].name, infos[1].name] and rep.kept_for_hold == hold.id
    assert target.path.exists()
    with LogWriter(dd, node, settings(retention_days=90)) as w:
        w.append_batch([release_draft(hold, "alice", "closed")])
        rep = run_retention(w, as_of, held=held_segment(holds_in_force(w.log)))
    assert target.name in rep.dropped_segments and not target.path.exists()
    assert verify_node(dd, node).ok


def test_a_broken_hold_entry_never_releases_the_hold(tmp_path):
    """An attacker without the key cannot lift a hold by damaging its entry: the damaged frame
    is never opened, so the holds are uncertain, and retention then drops nothing at all
    (nor does the archive let anything go or lift an S3 legal hold)."""
    from helpers_engine import flip_byte, frames_of, segment_paths

    dd, node, infos, as_of = _old_log(tmp_path)
    target = infos[1]
    with LogWriter(dd, node, settings(retention_days=90)) as w:
        res = w.append_batch([set_draft(target.index.min_ts, target.index.max_ts + 1, "case 5", "alice")])
    seg = [p for p in segment_paths(dd) if any(f.first_seq <= res.first_seq <= f.last_seq for f in frames_of(p, node))][
        0
    ]
    frame = next(f for f in frames_of(seg, node) if f.first_seq <= res.first_seq <= f.last_seq)
    flip_byte(seg, frame.end - 40)  # a payload byte: checksum and MAC fail, the records stay unread
    found = holds_in_force(NodeLog(dd, node))
    assert found == [] and found.uncertain and f"gw1:{res.first_seq}" in found.uncertain
    before = [p.name for p in segment_paths(dd)]
    with LogWriter(dd, node, settings(retention_days=90)) as w:
        rep = run_retention(w, as_of, held=held_segment(holds_in_force(w.log)))
    assert rep.dropped_segments == [] and rep.kept_for_hold.startswith("any (holds uncertain")
    assert [p.name for p in segment_paths(dd)][: len(before)] == before
    p = run_cli(dd.root, "hold", "list", "--json")
    assert p.returncode == 0 and json.loads(p.stdout)["uncertain"] and "there may be more holds" in p.stderr


# ----------------------------------------------------------------------------- HTTP


async def test_holds_over_http(client, keys, service):
    admin, reader = bearer(keys["admin"]), bearer(keys["reader"])
    body = {"from": "2026-01-01T00:00:00Z", "to": "2026-02-01T00:00:00Z", "reason": "case 4711"}
    resp = await client.post("/api/v1/holds", json=body, headers=admin)
    assert resp.status == 201, await resp.text()
    h = await resp.json()
    assert (h["from"], h["to"], h["reason"], h["by"]) == (
        "2026-01-01T00:00:00.000000Z",
        "2026-02-01T00:00:00.000000Z",
        "case 4711",
        "test-admin",
    )
    got = await (await client.get("/api/v1/holds", headers=reader)).json()
    assert [x["id"] for x in got["holds"]] == [h["id"]]
    # the hold is its entry, with the admin's key name as the user
    page = await (await client.get("/api/v1/audit-log?action=audit.legal_hold_set", headers=reader)).json()
    assert [(e["id"], e["user"], e["details"]["reason"]) for e in page["events"]] == [
        (h["id"], "test-admin", "case 4711")
    ]
    resp = await client.delete(f"/api/v1/holds/{h['id']}?reason=closed", headers=admin)
    assert resp.status == 200 and (await resp.json())["released"] is True
    assert (await (await client.get("/api/v1/holds", headers=reader)).json())["holds"] == []
    page = await (await client.get("/api/v1/audit-log?action=audit.legal_hold_release", headers=reader)).json()
    assert [(e["target"], e["details"]) for e in page["events"]] == [
        (h["id"], {"hold_id": h["id"], "reason": "closed"})
    ]
    await assert_error(await client.delete(f"/api/v1/holds/{h['id']}", headers=admin), 404, h["id"])


@pytest.mark.parametrize(
    "body, needle",
    [
        ("not json", "JSON"),
        ("[]", "body must be"),
        ('{"from": "2026-01-01", "to": "2026-02-01"}', "body must be"),
        ('{"from": "2026-01-01", "to": "2026-02-01", "reason": "x", "extra": 1}', "body must be"),
        ('{"from": 1, "to": "2026-02-01", "reason": "x"}', "strings"),
        ('{"from": "yesterday-ish", "to": "2026-02-01", "reason": "x"}', "from"),
        ('{"from": "2026-02-01", "to": "2026-01-01", "reason": "x"}', "after its 'from'"),
        ('{"from": "2026-01-01", "to": "2026-02-01", "reason": ""}', "needs a reason"),
        ('{"from": "2026-01-01", "to": "2026-02-01", "reason": "' + "x" * 2000 + '"}', "longer than"),
    ],
)
async def test_a_bad_hold_request_is_refused_and_writes_nothing(client, keys, service, body, needle):
    head = service.writer.next_seq
    resp = await client.post("/api/v1/holds", data=body, headers=bearer(keys["admin"]))
    await assert_error(resp, 400, needle)
    assert service.writer.next_seq == head and service.holds() == []


async def test_clients_cannot_write_hold_entries(client, keys, service):
    for action in ("audit.legal_hold_set", "audit.legal_hold_release"):
        resp = await client.post(
            "/api/v1/events",
            json=[ev(1, action=action, details={"from_us": 0, "to_us": 10**18})],
            headers=bearer(keys["writer"]),
        )
        assert resp.status == 400, await resp.text()
    assert service.holds() == []


# ----------------------------------------------------------------------------- CLI


def test_hold_commands(tmp_path):
    dd, node, infos, as_of = _old_log(tmp_path)
    target = infos[1]
    p = run_cli(dd.root, "hold", "add", "--from", "2020-01-01", "--to", "2100-01-01", "--reason", "case 9", "--json")
    assert p.returncode == 0, p.stderr
    h = json.loads(p.stdout)
    assert h["reason"] == "case 9" and h["by"] == "admin"
    p = run_cli(dd.root, "hold", "list")
    assert p.returncode == 0 and h["id"] in p.stdout and "case 9" in p.stdout
    import datetime as dt

    as_of_text = dt.datetime.fromtimestamp(as_of / 1e6, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    p = run_cli(dd.root, "retention", "run", "--as-of", as_of_text, "--retention-days", "90")
    assert p.returncode == 0 and "nothing to drop" in p.stdout and h["id"] in p.stdout, p.stdout
    assert target.path.exists()
    p = run_cli(dd.root, "hold", "release", h["id"], "--reason", "done")
    assert p.returncode == 0 and f"released {h['id']}" in p.stdout
    p = run_cli(dd.root, "hold", "release", h["id"])
    assert p.returncode == 2 and "no legal hold" in p.stderr and "Traceback" not in p.stderr
    p = run_cli(dd.root, "hold", "list", "--json")
    assert json.loads(p.stdout) == {"holds": [], "uncertain": None}
    p = run_cli(dd.root, "hold", "add", "--from", "2026-02-01", "--to", "2026-01-01", "--reason", "x")
    assert p.returncode == 2 and "after its 'from'" in p.stderr
    p = run_cli(dd.root, "retention", "run", "--as-of", as_of_text, "--retention-days", "90")
    assert p.returncode == 0 and "dropped" in p.stdout and not target.path.exists()


# ----------------------------------------------------------------------------- the archive


def test_archived_objects_a_hold_covers_get_an_s3_legal_hold(tmp_path, s3, locked_bucket):
    from test_archive import archive_settings, make_archiver

    dd, node, infos, _ = _old_log(tmp_path)
    arch = make_archiver(dd, node, archive_settings(s3, locked_bucket, tmp_path))
    holds = []
    arch.holds = lambda: holds
    arch.run_once()
    client = s3.client()

    def status(info):
        a = arch.manifest.get(info.name)
        h = client.head_object(Bucket=locked_bucket, Key=a.key, VersionId=a.version_id)
        return h.get("ObjectLockLegalHoldStatus", "OFF")

    sealed = infos[:-1]
    assert [status(i) for i in sealed] == ["OFF"] * len(sealed)
    with LogWriter(dd, node, settings()) as w:
        w.append_batch([set_draft(sealed[1].index.min_ts, sealed[1].index.max_ts + 1, "case", "alice")])
        holds[:] = holds_in_force(w.log)
    assert arch.sync_holds() == 1
    assert [status(i) for i in sealed] == ["OFF", "ON"] + ["OFF"] * (len(sealed) - 2)
    assert arch.sync_holds() == 0  # recorded: not asked again
    holds[:] = []
    assert arch.sync_holds() == 1
    assert [status(i) for i in sealed] == ["OFF"] * len(sealed)


def test_uncertain_holds_lift_no_s3_legal_hold_and_let_nothing_expire(tmp_path, s3, locked_bucket, plain_bucket):
    from test_archive import _expiring, archive_settings, make_archiver

    from auditlog.engine.holds import Holds

    dd, node, infos, _ = _old_log(tmp_path)
    arch = make_archiver(dd, node, archive_settings(s3, locked_bucket, tmp_path))
    held = infos[1]
    with LogWriter(dd, node, settings()) as w:
        w.append_batch([set_draft(held.index.min_ts, held.index.max_ts + 1, "case", "alice")])
        holds = holds_in_force(w.log)
    arch.holds = lambda: holds
    arch.run_once()
    assert arch.manifest.get(held.name).legal_hold
    unsure = Holds()
    unsure.uncertain = "entries of the log cannot be read"
    arch.holds = lambda: unsure
    assert arch.sync_holds() == 0 and arch.manifest.get(held.name).legal_hold  # kept on
    # and the archive's retention lets nothing go while a hold may be hidden
    dd2, node2, st, arch2, rep, recorded, last_ts = _expiring(tmp_path / "two", s3, plain_bucket, object_lock="off")
    arch2.holds = lambda: unsure
    assert arch2.expire(last_ts + 200 * DAY_US) == [] and recorded == []
    arch2.holds = lambda: Holds()
    assert arch2.expire(last_ts + 200 * DAY_US)  # the same, certain: it goes
