"""Evidence bundles (export.bundle, ``auditlog export bundle`` and ``verify-bundle``):
checked with nothing but the node's public key, by the CLI and by an independent
verifier written from FORMAT.md alone (tests/bundle_verifier.py); every changed
byte, a removed entry, a wrong key and a shortened time range are detected."""

from __future__ import annotations

import io
import json
import random
import tarfile
from pathlib import Path

import bundle_verifier
import pytest
from click.testing import CliRunner

from auditlog.cli.main import cli as auditlog_cli
from auditlog.engine.datadir import DataDir
from auditlog.engine.entry import EntryDraft, format_ts
from auditlog.engine.log import NodeLog
from auditlog.engine.settings import StoreSettings
from auditlog.engine.tree import LogTree
from auditlog.engine.writer import LogWriter
from auditlog.export.bundle import MEMBERS, canonical_tar, verify_bundle, write_bundle

SETTINGS = StoreSettings(segment_max_bytes=8192, fsync="none")


def invoke(*args: str):
    runner = CliRunner(env={"AUDITLOG_DATA_DIR": None, "AUDITLOG_CONFIG": None})
    return runner.invoke(auditlog_cli, list(args), catch_exceptions=False)


@pytest.fixture
def node(tmp_path):
    """A log of 12 batches of 25 entries, each batch with its own ts (the test clock
    moves between commits), details of every type."""
    dd = DataDir(tmp_path / "d")
    n = dd.init("gw1")
    stamps = []
    with LogWriter(dd, n, SETTINGS) as w:
        for k in range(12):
            res = w.append_batch(
                [
                    EntryDraft(
                        f"user{i % 4}",
                        "quarantine.release",
                        f"mail-{k}-{i}",
                        "example.org",
                        "2001:db8::1" if i % 2 else "192.0.2.9",
                        "Mozilla/5.0",
                        bool(i % 3),
                        {
                            "recipient": f"r{i}@example.org",
                            "subject": "Grüße 🔐",
                            "size": 2**40 + i,
                            "neg": -i - 1,
                            "ratio": i / 8,
                            "tags": ["a", {"z": None, "a": [1.5, True]}],
                        },
                    )
                    for i in range(25)
                ]
            )
            stamps.append(res.ts)
    return dd, n, stamps


def export(dd: DataDir, out: Path, *filters: str):
    r = invoke("--data-dir", str(dd.root), "export", "bundle", *filters, "-o", str(out))
    assert r.exit_code == 0, r.stderr
    return out.read_bytes()


def members(data: bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        return {i.name: tf.extractfile(i).read() for i in tf.getmembers()}


def test_a_time_range_bundle_is_complete_and_verifies_with_the_public_key_alone(node, tmp_path):
    dd, n, stamps = node
    frm, to = format_ts(stamps[3]), format_ts(stamps[7])
    data = export(dd, tmp_path / "b.bundle", "--from", frm, "--to", to)
    pem = dd.public_key_path.read_bytes()
    # the CLI, the library, and the auditor's own script agree
    r = invoke("verify-bundle", str(tmp_path / "b.bundle"), "--key", str(dd.public_key_path))
    assert r.exit_code == 0 and r.stdout.startswith("ok: 100 entries of node gw1, complete"), r.stdout
    report = json.loads(
        invoke("verify-bundle", str(tmp_path / "b.bundle"), "--key", str(dd.public_key_path), "--json").stdout
    )
    assert report["ok"] and report["claim"] == "complete" and report["entries"] == 100
    assert bundle_verifier.check(data, pem) == []
    m = members(data)
    assert list(m) == list(MEMBERS)
    got = [json.loads(x) for x in m["entries.ndjson"].splitlines()]
    want = [e.seq for e in NodeLog(dd, n).scan() if stamps[3] <= e.ts < stamps[7]]
    assert [e["seq"] for e in got] == want == list(range(76, 176))
    sides = [json.loads(x)["side"] for x in m["boundaries.ndjson"].splitlines()]
    assert sides == ["before", "after"]
    # the export is recorded, with the bundle's digest
    import hashlib

    exp = [e for e in NodeLog(dd, n).scan() if e.action == "audit.export"][-1]
    assert exp.details["format"] == "bundle" and exp.details["sha256"] == hashlib.sha256(data).hexdigest()


def test_other_filters_prove_authenticity_and_order_only(node, tmp_path):
    dd, _, _ = node
    data = export(dd, tmp_path / "u.bundle", "--user", "user1")
    report = verify_bundle(data, dd.signing_key().public_raw)
    assert report.ok and report.claim == "authentic" and report.entries == 12 * 6
    assert b"other entries may match" in members(data)["manifest.txt"]
    assert bundle_verifier.check(data, dd.public_key_path.read_bytes()) == []


def test_every_changed_byte_is_detected(node, tmp_path):
    dd, _, stamps = node
    data = export(dd, tmp_path / "s.bundle", "--from", format_ts(stamps[5]), "--to", format_ts(stamps[6]))
    key = dd.signing_key().public_raw
    pem = dd.public_key_path.read_bytes()
    assert verify_bundle(data, key).ok
    r = random.Random(5)
    for i in range(len(data)):
        bad = bytearray(data)
        bad[i] ^= 1 << r.randrange(8)
        assert not verify_bundle(bytes(bad), key).ok, i
    # the auditor's script too, on a sample (it is slower)
    for i in r.sample(range(len(data)), 400):
        bad = bytearray(data)
        bad[i] ^= 0x01
        try:
            problems = bundle_verifier.check(bytes(bad), pem)
        except Exception:  # noqa: BLE001 - refused by failing to parse
            continue
        assert problems, i
    assert not verify_bundle(data[:-1], key).ok and not verify_bundle(data + b"\0", key).ok


def rebuilt(data: bytes, **changed: bytes) -> bytes:
    m = members(data)
    m.update(changed)
    return canonical_tar([(name, m[name]) for name in MEMBERS])


def test_an_entry_removed_from_a_time_range_bundle_is_detected(node, tmp_path):
    dd, n, stamps = node
    data = export(dd, tmp_path / "r.bundle", "--from", format_ts(stamps[2]), "--to", format_ts(stamps[4]))
    key = dd.signing_key().public_raw
    m = members(data)
    entries = m["entries.ndjson"].splitlines(True)
    # one range proof covers the whole window and its two boundary entries
    assert len(m["proofs.ndjson"].splitlines()) == 1
    # someone without the key drops an entry: the manifest no longer fits
    cut = rebuilt(data, **{"entries.ndjson": b"".join(entries[:10] + entries[11:])})
    report = verify_bundle(cut, key)
    assert not report.ok and "entries.ndjson is not the one the manifest names" in report.failures
    assert bundle_verifier.check(cut, dd.public_key_path.read_bytes())
    # even a bundle signed by the node itself but missing an entry (or the last ones of
    # the window) fails the completeness check
    with LogWriter(dd, n, SETTINGS) as w, LogTree(w.log, w.key, dd) as tree:
        from auditlog.engine.tree import record_tree_head

        note, _ = record_tree_head(w)
        before_after = [(b["side"], b["entry"]) for b in map(json.loads, m["boundaries.ndjson"].splitlines())]
        for keep in (entries[:10] + entries[11:], entries[:-1]):
            forged = write_bundle(
                "gw1",
                w.signing_key,
                note,
                keep,
                tree,
                filters={},
                time_only=True,
                window=(stamps[2], stamps[4]),
                boundaries=before_after,
            )
            report = verify_bundle(forged, key)
            assert not report.ok and any("missing" in f or "after the window" in f for f in report.failures)
            assert bundle_verifier.check(forged, dd.public_key_path.read_bytes())


def test_a_wrong_key_is_refused(node, tmp_path):
    dd, _, _ = node
    export(dd, tmp_path / "k.bundle")
    other = DataDir(tmp_path / "o")
    other.init("gw1")  # the same node id, another key
    r = invoke("verify-bundle", str(tmp_path / "k.bundle"), "--key", str(other.public_key_path))
    assert r.exit_code == 1 and "FAILED" in r.stdout and "trusted key" in r.stdout
    assert bundle_verifier.check((tmp_path / "k.bundle").read_bytes(), other.public_key_path.read_bytes())
    for bad in (b"", b"not a key", dd.sign_key_path.read_bytes()):
        (tmp_path / "bad.pub").write_bytes(bad)
        r = invoke("verify-bundle", str(tmp_path / "k.bundle"), "--key", str(tmp_path / "bad.pub"))
        assert r.exit_code == 2 and r.stderr.startswith("auditlog: error:")


@pytest.mark.parametrize("garbage", [b"", b"\0" * 10240, b"not a tar at all", b"x" * 100_000])
def test_garbage_is_a_failed_bundle_not_a_crash(node, tmp_path, garbage):
    dd, _, _ = node
    (tmp_path / "g.bundle").write_bytes(garbage)
    r = invoke("verify-bundle", str(tmp_path / "g.bundle"), "--key", str(dd.public_key_path))
    assert r.exit_code == 1 and r.stdout.startswith("FAILED")


def test_a_pdf_report_names_its_bundle_and_checkpoint(node, tmp_path):
    import hashlib
    import subprocess

    dd, _, stamps = node
    pdf, bundle = tmp_path / "r.pdf", tmp_path / "r.bundle"
    args = ["--from", format_ts(stamps[1]), "--to", format_ts(stamps[3])]
    r = invoke("--data-dir", str(dd.root), "export", "pdf", *args, "-o", str(pdf), "--bundle", str(bundle))
    assert r.exit_code == 0, r.stderr
    digest = hashlib.sha256(bundle.read_bytes()).hexdigest()
    report = verify_bundle(bundle.read_bytes(), dd.signing_key().public_raw)
    assert report.ok and report.entries == 50
    text = subprocess.run(["pdftotext", str(pdf), "-"], capture_output=True, text=True, timeout=60).stdout
    flat = " ".join(text.split())
    assert digest in flat.replace(" ", "") and "verify-bundle r.bundle" in flat
    assert f"checkpoint of {report.checkpoint_size} entries" in flat
    r = invoke("--data-dir", str(dd.root), "export", "csv", "-o", str(tmp_path / "x.csv"), "--bundle", str(bundle))
    assert r.exit_code == 2 and "--bundle goes with a PDF" in r.stderr
