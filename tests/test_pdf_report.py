"""The PDF report (GDPR subject access): ``auditlog export pdf`` and ``GET /api/v1/audit-log/export.pdf``.

Every PDF is parsed back with ``pdftotext -layout`` (poppler-utils) and
checked for: the title, the filters line, node coverage (an unreachable peer
named), exactly the filtered entries (a recipient's quarantine releases,
their subjects, a long subject that wraps, non-ASCII text), the integrity
line and "Page i of N" on every page.  A 5000-entry report is made in a
subprocess whose peak RSS (``ru_maxrss``) must stay within a bound, and every
export is recorded as ``audit.export`` with format pdf.

pdftotext missing: skipped, unless ``CI=true``, where the test fails.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from helpers_http import AUDITLOG, bearer, clean_env, free_port, post_events, query_all, run_cli

from auditlog.export.pdf import _find_font

PDFTOTEXT = shutil.which("pdftotext")


@pytest.fixture(autouse=True)
def need_pdftotext():
    if PDFTOTEXT is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("pdftotext (poppler-utils) is not installed but CI=true: the PDF tests must run")
        pytest.skip("pdftotext not installed (apt-get install poppler-utils)")


ANNA = "anna@example.com"
LONG_SUBJECT = (
    "Quarterly settlement statement for the Hamburg subsidiary including all outstanding "
    "invoices reminders and the reconciliation of the intercompany accounts please review "
    "before Friday closingword"
)
UNICODE_SUBJECT = "Grüße aus Köln – Ωμέγα"
CJK_SUBJECT = "請求書 No. 7"
N_PLAIN = 40


def events() -> list[dict]:
    """Anna's releases (the report), and what the filters must leave out."""
    out = []
    for i in range(N_PLAIN):
        out.append(
            {
                "user": f"admin{i % 3}",
                "action": "quarantine.release",
                "target": f"Q{i:05d}",
                "domain": "example.com",
                "ip": "192.0.2.10",
                "details": {
                    "mail_id": f"Q{i:05d}",
                    "subject": f"Rechnung {i:03d}",
                    "sender": "billing@partner.example",
                    "recipient": ANNA,
                },
            }
        )
    for subject, mid in ((LONG_SUBJECT, "QLONG"), (UNICODE_SUBJECT, "QUNI"), (CJK_SUBJECT, "QCJK")):
        out.append(
            {
                "user": "jürgen",
                "action": "quarantine.release",
                "target": mid,
                "domain": "example.com",
                "details": {"mail_id": mid, "subject": subject, "sender": "x@partner.example", "recipient": ANNA},
            }
        )
    # a mail to anna and bob: anna's too
    out.append(
        {
            "user": "admin0",
            "action": "quarantine.release",
            "target": "QMULTI",
            "details": {
                "mail_id": "QMULTI",
                "subject": "For both of you",
                "sender": "y@partner.example",
                "recipient": ["bob@example.com", ANNA],
            },
        }
    )
    # left out: another action for anna, and bob's own releases
    out.append(
        {
            "user": "admin1",
            "action": "quarantine.discard",
            "target": "QDISC",
            "details": {"mail_id": "QDISC", "subject": "DISCARDED-NOT-IN-REPORT", "recipient": ANNA},
        }
    )
    for i in range(3):
        out.append(
            {
                "user": "admin2",
                "action": "quarantine.release",
                "target": f"QBOB{i}",
                "details": {"mail_id": f"QBOB{i}", "subject": f"BOB-NOT-IN-REPORT-{i}", "recipient": "bob@example.com"},
            }
        )
    return out


N_ANNA = N_PLAIN + 4


def pdf_text(pdf: bytes, tmp_path: Path) -> list[str]:
    """The pages of a PDF as text (pdftotext -layout)."""
    assert pdf.startswith(b"%PDF-"), pdf[:20]
    path = tmp_path / f"r{len(list(tmp_path.glob('r*.pdf')))}.pdf"
    path.write_bytes(pdf)
    p = subprocess.run([PDFTOTEXT, "-layout", "-enc", "UTF-8", str(path), "-"], capture_output=True, timeout=60)
    assert p.returncode == 0, p.stderr
    pages = p.stdout.decode("utf-8").split("\f")
    if pages and not pages[-1].strip():
        pages.pop()
    return pages


def has_id(text: str, entry_id: str) -> bool:
    return re.search(r"(?<!\S)" + re.escape(entry_id) + r"(?![\d])", text) is not None


_ROW = re.compile(
    r"^(?P<ts>\d{4}-\d{2}-\d{2}T\S+Z)\s+(?P<id>\S+)\s+(?P<user>\S+)\s+(?P<action>\S+)\s+"
    r"(?P<desc>.*?)\s{2,}(?:(?P<ip>[0-9a-fA-F.:]+)\s+)?(?P<outcome>success|FAILED)\s+(?P<integrity>.+)$"
)


def table_rows(pages: list[str]) -> dict[str, dict]:
    """The entry table read back from the layout text: {id: {ts, user, action, desc, ip, outcome,
    integrity, lines, page}}.  A wrapped cell's continuation lines hold only the
    "Target / details" column (the others are one line), so they are joined back with spaces."""
    rows: dict[str, dict] = {}
    for pno, page in enumerate(pages, 1):
        cur = None
        for line in page.splitlines():
            m = _ROW.match(line.strip())
            if m:
                cur = {**m.groupdict(), "lines": 1, "page": pno}
                assert cur["id"] not in rows, f"{cur['id']} twice in the table"
                rows[cur["id"]] = cur
            elif not line.strip():
                cur = None
            elif cur is not None:
                cur["desc"] += " " + line.strip()
                cur["lines"] += 1
    return rows


def check_report(
    pages: list[str], wire: dict[str, dict], *, title: str, node: str, unreachable: str | None = None
) -> None:
    """The report shows exactly anna's releases, with everything around them."""
    text = "\n".join(pages)
    flat = " ".join(text.split())
    n = len(pages)
    assert n >= 2, "the report should span several pages"
    for i, page in enumerate(pages, 1):
        assert re.findall(r"Page (\d+) of (\d+)", page) == [(str(i), str(n))], (i, n, page[-300:])
    first = pages[0]
    assert title in first
    filters = next(line for line in first.splitlines() if line.strip().startswith("Filters:"))
    assert "recipient=anna@example.com" in filters and "action=quarantine.release" in filters, filters
    coverage = next(line for line in first.splitlines() if line.strip().startswith("Node coverage:"))
    assert f"{node}: ok" in coverage, coverage
    if unreachable:
        assert f"{unreachable}: unreachable" in coverage, coverage
        assert f"Incomplete: entries of {unreachable} are missing" in flat
    else:
        assert "unreachable" not in coverage and "Incomplete" not in flat
    assert f"Integrity: all {N_ANNA} entries verified" in flat

    annas = [
        e
        for e in wire.values()
        if e["action"] == "quarantine.release"
        and (e["details"].get("recipient") == ANNA or ANNA in (e["details"].get("recipient") or []))
    ]
    assert len(annas) == N_ANNA
    rows = table_rows(pages)
    # exactly anna's releases, in time order, each as recorded
    assert list(rows) == [e["id"] for e in annas]
    assert "NOT-IN-REPORT" not in text
    for e in annas:
        r = rows[e["id"]]
        assert (r["ts"], r["user"], r["action"], r["outcome"], r["integrity"]) == (
            e["ts"],
            e["user"],
            "quarantine.release",
            "success",
            "ok",
        ), r
        assert r["ip"] == e["ip"]
        assert r["desc"].startswith(e["details"]["mail_id"] + ";"), r
        if e["details"]["mail_id"] != "QCJK":  # (CJK checked below: the font may lack it)
            assert f"subject: {e['details']['subject']};" in r["desc"], r
    by_mail = {wire[i]["details"]["mail_id"]: r for i, r in rows.items()}
    for i in range(N_PLAIN):
        assert by_mail[f"Q{i:05d}"]["desc"] == (
            f"Q{i:05d}; domain example.com; subject: Rechnung {i:03d}; "
            f"sender: billing@partner.example; recipient: {ANNA}"
        )
    # the long subject wraps onto several lines, and nothing of it is lost
    assert LONG_SUBJECT in by_mail["QLONG"]["desc"] and by_mail["QLONG"]["lines"] >= 3
    # non-ASCII text survives
    assert UNICODE_SUBJECT in by_mail["QUNI"]["desc"]
    assert by_mail["QUNI"]["user"] == "jürgen"
    if _find_font()[0] is not None:
        # glyphs DejaVu lacks are shown by code point, not dropped
        assert "subject: <U+8ACB><U+6C42><U+66F8> No. 7;" in by_mail["QCJK"]["desc"]
    # a list of recipients reads as one
    assert by_mail["QMULTI"]["desc"].endswith(f"recipient: bob@example.com, {ANNA}"), by_mail["QMULTI"]


def check_audited(record: dict, rows: int) -> None:
    assert record["action"] == "audit.export"
    d = record["details"]
    assert d["format"] == "pdf" and d["rows"] == rows
    assert d["filters"]["recipient"] == [ANNA] or d["filters"]["recipient"] == ANNA, d["filters"]
    assert d["integrity_violations"] == 0


# -- the CLI ------------------------------------------------------------------------------------


@pytest.fixture
def data_dir(tmp_path) -> Path:
    data = tmp_path / "data"
    assert run_cli(data, "init", "--node-id", "gw1").returncode == 0
    src = tmp_path / "events.ndjson"
    src.write_text("".join(json.dumps(e, ensure_ascii=False) + "\n" for e in events()), encoding="utf-8")
    r = run_cli(data, "append", "--file", str(src))
    assert r.returncode == 0, r.stderr
    return data


def cli_wire(data: Path, *args: str) -> dict[str, dict]:
    q = run_cli(data, "query", "--format", "ndjson", *args)
    assert q.returncode == 0, q.stderr
    return {e["id"]: e for e in map(json.loads, q.stdout.splitlines())}


def test_cli_pdf_subject_access_report(data_dir, tmp_path):
    wire = cli_wire(data_dir)
    out = tmp_path / "anna.pdf"
    title = "Subject access: anna@example.com"
    r = run_cli(
        data_dir,
        "export",
        "pdf",
        "--recipient",
        ANNA,
        "--action",
        "quarantine.release",
        "--title",
        title,
        "-o",
        str(out),
    )
    assert r.returncode == 0, r.stderr
    assert f"exported {N_ANNA} entries" in r.stderr
    assert not (tmp_path / "anna.pdf.part").exists()
    check_report(pdf_text(out.read_bytes(), tmp_path), wire, title=title, node="gw1")
    recs = list(cli_wire(data_dir, "--action", "audit.export").values())
    assert len(recs) == 1
    check_audited(recs[0], N_ANNA)
    assert recs[0]["details"]["filters"]["action"] in (["quarantine.release"], "quarantine.release")

    # no match: still a valid report that says so
    empty = tmp_path / "none.pdf"
    r = run_cli(data_dir, "export", "pdf", "--recipient", "nobody@example.com", "-o", str(empty))
    assert r.returncode == 0, r.stderr
    pages = pdf_text(empty.read_bytes(), tmp_path)
    assert len(pages) == 1 and "Page 1 of 1" in pages[0]
    assert "No entries match these filters." in pages[0] and "Integrity: all 0 entries verified" in pages[0]


def test_cli_pdf_of_5000_entries_stays_within_memory(tmp_path):
    """Peak RSS of ``auditlog export pdf`` with 5000 entries vs. with 1 entry, in subprocesses."""
    data = tmp_path / "data"
    assert run_cli(data, "init", "--node-id", "gw1").returncode == 0
    src = tmp_path / "many.ndjson"
    with open(src, "w", encoding="utf-8") as f:
        for i in range(5000):
            f.write(
                json.dumps(
                    {
                        "user": f"admin{i % 5}",
                        "action": "quarantine.release",
                        "target": f"M{i}",
                        "ip": "198.51.100.4",
                        "details": {
                            "mail_id": f"M{i}",
                            "sender": "s@partner.example",
                            "recipient": ANNA,
                            "subject": f"Message {i}: Rückfrage zur Lieferung, bitte die Anlage prüfen "
                            f"und bis Freitag antworten",
                        },
                    },
                    ensure_ascii=False,
                )
                + "\n"
            )
    assert run_cli(data, "append", "--file", str(src)).returncode == 0

    def peak_kib(*args: str) -> int:
        p = subprocess.Popen(
            [AUDITLOG, "--data-dir", str(data), "export", "pdf", *args],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=clean_env(),
        )
        err = p.stderr.read().decode()
        p.stderr.close()
        _, status, usage = os.wait4(p.pid, 0)
        p.returncode = os.waitstatus_to_exitcode(status)  # reaped here: tell Popen
        assert p.returncode == 0, err
        return usage.ru_maxrss

    small = peak_kib("--target", "M1", "-o", str(tmp_path / "one.pdf"))
    big = peak_kib("--action", "quarantine.release", "-o", str(tmp_path / "all.pdf"))
    growth_mib = (big - small) / 1024
    assert growth_mib < 64, f"5000-entry PDF grew peak RSS by {growth_mib:.1f} MiB"
    pages = pdf_text((tmp_path / "all.pdf").read_bytes(), tmp_path)
    assert len(pages) > 100
    assert f"Page {len(pages)} of {len(pages)}" in pages[-1]
    assert "Integrity: all 5000 entries verified" in " ".join(pages[-1].split())
    assert has_id("\n".join(pages), "gw1:5000") and has_id(pages[0], "gw1:1")


# -- the API ------------------------------------------------------------------------------------


async def test_api_pdf_subject_access_report(client, keys, tmp_path):
    resp = await post_events(client, keys["writer"], events())
    assert resp.status == 201, await resp.text()
    wire = {e["id"]: e for e in await query_all(client, keys["reader"])}
    title = "Auskunft nach Art. 15 DSGVO: anna@example.com"
    resp = await client.get(
        "/api/v1/audit-log/export.pdf",
        headers=bearer(keys["reader"]),
        params={"recipient": ANNA, "action": "quarantine.release", "title": title},
    )
    assert resp.status == 200, await resp.text()
    assert resp.content_type == "application/pdf"
    assert resp.headers["Content-Disposition"].startswith("attachment")
    check_report(pdf_text(await resp.read(), tmp_path), wire, title=title, node="node-a")
    recs = await query_all(client, keys["reader"], action="audit.export")
    assert len(recs) == 1
    check_audited(recs[0], N_ANNA)
    assert recs[0]["user"] == "test-reader" and recs[0]["details"]["nodes"] == {"node-a": "ok"}

    # a writer key may not export; a bad filter is a 400 and writes nothing
    resp = await client.get("/api/v1/audit-log/export.pdf", headers=bearer(keys["writer"]))
    assert resp.status == 403
    resp = await client.get("/api/v1/audit-log/export.pdf", headers=bearer(keys["reader"]), params={"bogus": "1"})
    assert resp.status == 400
    assert len(await query_all(client, keys["reader"], action="audit.export")) == 1


def pdf_attachments(pdf: bytes, tmp_path: Path) -> dict[str, bytes]:
    """The files embedded in a PDF, extracted by poppler's pdfdetach."""
    tool = shutil.which("pdfdetach")
    assert tool, "pdfdetach (poppler-utils) is needed"
    path = tmp_path / "with-attachments.pdf"
    path.write_bytes(pdf)
    out = tmp_path / "detached"
    out.mkdir(exist_ok=True)
    p = subprocess.run([tool, "-saveall", "-o", str(out), str(path)], capture_output=True, timeout=60)
    assert p.returncode == 0, p.stderr
    return {f.name: f.read_bytes() for f in out.iterdir()}


async def test_api_pdf_embeds_the_bundle_of_exactly_its_entries(client, keys, service, tmp_path):
    import hashlib

    from auditlog.engine.signing import read_public_key
    from auditlog.export.bundle import verify_bundle

    resp = await post_events(client, keys["writer"], events())
    assert resp.status == 201
    params = {"recipient": ANNA, "action": "quarantine.release", "title": "Subject access", "bundle": "true"}
    resp = await client.get("/api/v1/audit-log/export.pdf", headers=bearer(keys["reader"]), params=params)
    assert resp.status == 200, await resp.text()
    pdf = await resp.read()
    files = pdf_attachments(pdf, tmp_path)
    assert list(files) == ["auditlog-node-a.bundle"]
    bundle = files["auditlog-node-a.bundle"]
    digest = hashlib.sha256(bundle).hexdigest()
    text = " ".join(" ".join(pdf_text(pdf, tmp_path)).split())
    assert f"SHA-256 {digest}" in text and "verify-bundle auditlog-node-a.bundle --key node.pub" in text
    # the embedded bundle verifies with the node's public key, and holds exactly the report's rows
    rep = verify_bundle(bundle, read_public_key(service.data_dir.root / "node.pub"))
    assert rep.ok and rep.claim == "authentic", rep.failures
    rows = table_rows(pdf_text(pdf, tmp_path))
    assert rep.entries == len(rows) == N_ANNA
    recs = await query_all(client, keys["reader"], action="audit.export")
    assert recs[-1]["details"]["format"] == "pdf" and recs[-1]["details"]["bundle_sha256"] == digest
    # bundle= takes true or false only
    resp = await client.get("/api/v1/audit-log/export.pdf", headers=bearer(keys["reader"]), params={"bundle": "yes"})
    assert resp.status == 400 and "bundle must be true or false" in await resp.text()


async def test_api_pdf_names_an_unreachable_node(make_service, make_client, tmp_path):
    from helpers_http import make_keys

    from auditlog.query.cluster.pki import ca_init, issue_cert
    from auditlog.query.cluster.settings import ClusterSettings, PeerConfig

    ca_init(tmp_path / "ca")
    cert, key = issue_cert(tmp_path / "ca", "node-a", ["127.0.0.1"], tmp_path / "tls")
    dead = free_port()  # nothing listens there: the peer refuses
    service = make_service(
        cluster=ClusterSettings(
            ca=tmp_path / "ca" / "ca.pem",
            cert=cert,
            key=key,
            peer_timeout=1.0,
            peers=(PeerConfig("gw2", f"https://127.0.0.1:{dead}"),),
        )
    )
    keys = make_keys(service)
    client = await make_client(service)  # starts the cluster with the app
    resp = await post_events(client, keys["writer"], events())
    assert resp.status == 201
    wire = {e["id"]: e for e in await query_all(client, keys["reader"]) if e["node"] == "node-a"}
    resp = await client.get(
        "/api/v1/audit-log/export.pdf",
        headers=bearer(keys["reader"]),
        params={"recipient": ANNA, "action": "quarantine.release", "title": "Subject access"},
    )
    assert resp.status == 200, await resp.text()
    pages = pdf_text(await resp.read(), tmp_path)
    check_report(pages, wire, title="Subject access", node="node-a", unreachable="gw2")
    recs = await query_all(client, keys["reader"], action="audit.export")
    assert recs[-1]["details"]["nodes"] == {"node-a": "ok", "gw2": "unreachable"}


def test_render_pdf_marks_violations_and_unreachable_nodes(tmp_path):
    """render_pdf directly: a failed entry is flagged, the summary counts it, every bad node is named."""
    from auditlog.engine.entry import Entry
    from auditlog.export.pdf import render_pdf

    ok = Entry.of(
        "gw1",
        1,
        1_773_479_553_000_000,
        "alice",
        "quarantine.release",
        "Q1",
        None,
        None,
        None,
        True,
        {"subject": "fine", "recipient": ANNA},
        bytes(32),
    )
    bad = Entry.marker("gw1", 2, 1_773_479_554_000_000, "signature mismatch")
    pdf, counts = render_pdf(
        [ok, bad],
        title="T",
        filters="recipient=anna@example.com",
        nodes={
            "gw1": {"status": "ok"},
            "gw3": {"status": "unreachable", "error": "timed out"},
            "gw2": {"status": "unreachable", "error": "connection refused"},
        },
    )
    assert {k: counts[k] for k in ("rows", "violations")} == {"rows": 2, "violations": 1}
    assert len(counts["sha256"]) == 64
    flat = " ".join(" ".join(pdf_text(pdf, tmp_path)).split())
    assert "Node coverage: gw1: ok, gw2: unreachable (connection refused), gw3: unreachable (timed out)" in flat
    assert "Incomplete: entries of gw2, gw3 are missing" in flat
    assert "VIOLATION: signature mismatch" in flat
    assert "Integrity: 1 of 2 entries FAILED verification" in flat


async def test_api_pdf_states_period_retention_start_digest_and_signatures(client, keys, service, tmp_path):
    import hashlib

    resp = await post_events(client, keys["writer"], events())
    assert resp.status == 201
    params = {"action": "quarantine.release", "from": "2026-01-01", "to": "2027-01-01"}
    resp = await client.get(
        "/api/v1/audit-log/export.pdf", headers=bearer(keys["reader"]), params={**params, "signatures": "true"}
    )
    assert resp.status == 200, await resp.text()
    pdf = await resp.read()
    text = " ".join(" ".join(pdf_text(pdf, tmp_path)).split())
    assert "Period: from 2026-01-01T00:00:00.000000Z to 2027-01-01T00:00:00.000000Z (end excluded)" in text
    oldest = (await query_all(client, keys["reader"]))[0]["ts"]
    assert f"Oldest entry held (retention start): node-a: {oldest}" in text
    # the digest: SHA-256 of the entries' NDJSON lines as the API serves them
    resp = await client.get("/api/v1/audit-log", headers=bearer(keys["reader"]), params={**params, "format": "ndjson"})
    lines = [ln for ln in (await resp.read()).splitlines(keepends=True) if not ln.startswith(b'{"node_status"')]
    want = hashlib.sha256(b"".join(lines)).hexdigest()
    assert f"Data digest: SHA-256 {want} of the {len(lines)} entries" in text
    recs = await query_all(client, keys["reader"], action="audit.export")
    assert recs[-1]["details"]["data_sha256"] == want
    # the appendix: every entry's id and signature
    for line in lines:
        e = json.loads(line)
        assert f"{e['id']} {e['signature']}" in text, e["id"]
    # without the option, no appendix
    resp = await client.get("/api/v1/audit-log/export.pdf", headers=bearer(keys["reader"]), params=params)
    assert "Appendix: entry signatures" not in " ".join(pdf_text(await resp.read(), tmp_path))
    resp = await client.get(
        "/api/v1/audit-log/export.pdf", headers=bearer(keys["reader"]), params={"signatures": "maybe"}
    )
    assert resp.status == 400


def test_long_values_break_at_separators_not_inside_words():
    from fpdf import FPDF

    from auditlog.export.pdf import _Table

    pdf = FPDF()
    pdf.add_page()
    pdf.set_font("helvetica", "", 7)
    t = _Table(pdf, "helvetica", str)
    for word, width in (("security.brute_force_detected", 20), ("config.filter_update", 15), ("a_b_c_d_e_f", 5)):
        lines = t.wrap(word, width)
        assert "".join(lines) == word and len(lines) > 1, lines
        # every break falls after a separator
        assert all(line[-1] in "_." for line in lines[:-1]), lines
    # a value with no separator is still cut to fit (nothing lost)
    lines = t.wrap("x" * 200, 20)
    assert "".join(lines) == "x" * 200 and all(t.width(line) <= 20 for line in lines)


def test_cli_pdf_signatures_period_and_progress(data_dir, tmp_path):
    wire = cli_wire(data_dir, "--from", "2026-01-01")  # before the export records itself
    out = tmp_path / "r.pdf"
    r = run_cli(data_dir, "export", "pdf", "--from", "2026-01-01", "--signatures", "--progress", "-o", str(out))
    assert r.returncode == 0, r.stderr
    text = " ".join(" ".join(pdf_text(out.read_bytes(), tmp_path)).split())
    assert "Period: from 2026-01-01T00:00:00.000000Z to the report's making" in text
    assert "Oldest entry held (retention start): gw1: " in text and "Data digest: SHA-256 " in text
    assert wire and all(f"{i} {e['signature']}" in text for i, e in wire.items())
    r = run_cli(data_dir, "export", "csv", "--signatures", "-o", str(tmp_path / "x.csv"))
    assert r.returncode == 2 and "--signatures goes with a PDF report" in r.stderr


def test_cli_export_progress_on_a_long_export(tmp_path):
    data = tmp_path / "data"
    assert run_cli(data, "init", "--node-id", "gw1").returncode == 0
    src = tmp_path / "many.ndjson"
    src.write_text(
        "".join(json.dumps({"user": "u", "action": "auth.login", "details": {"i": i}}) + "\n" for i in range(25_000))
    )
    assert run_cli(data, "append", "--file", str(src)).returncode == 0
    r = run_cli(data, "export", "csv", "--progress", "-o", str(tmp_path / "all.csv"))
    assert r.returncode == 0, r.stderr
    assert "export: 10,000 entries so far" in r.stderr and "export: 20,000 entries so far" in r.stderr
    # not a terminal and not asked for: quiet
    r = run_cli(data, "export", "csv", "-o", str(tmp_path / "all2.csv"))
    assert r.returncode == 0 and "so far" not in r.stderr
