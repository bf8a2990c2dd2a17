"""The admin web UI (``query/http/ui/*``) in a real browser.

Playwright's sync API drives the system Chromium (``/usr/bin/chromium``,
installed by ``.ci/run``; never a downloaded browser) against real ``auditlog
serve`` processes on loopback, each on a tmp data dir with its own TOML config:

* ``demo``: ``serve --demo`` (the seeded day, its reader key from stdout),
  stopped, 500 events of user ``loadgen`` appended (``append --file``) so that
  paging (200 a page) has three pages, started again;
* ``tampered``: a node with 4 KiB segments; stopped, one byte of a frame
  payload in a sealed segment flipped, restarted;
* ``cluster``: two nodes with mTLS (``helpers_cluster.LocalCluster``), one of
  them stopped mid-test.

The API is the oracle: what the table shows is compared with what
``GET /api/v1/audit-log`` returns for the same filter.  One browser per module,
a fresh context (so fresh sessionStorage) per test.  A failing test leaves a
full-page screenshot of each of its pages in ``test-artifacts/``.  An uncaught
page error or a Content-Security-Policy refusal fails the test too.

Chromium missing: skipped, unless ``CI=true``, where the test fails.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import signal
import subprocess
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlparse

import pytest
from helpers_http import AUDITLOG, bearer, clean_env, free_port

from auditlog.export.csv import CSV_COLUMNS
from auditlog.query.filters import PARAM_NAMES

try:
    from playwright.sync_api import expect, sync_playwright
except ImportError:  # reported by the browser fixture (a failure under CI)
    expect = sync_playwright = None

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
IN_CI = os.environ.get("CI", "").lower() == "true"
WIDTH, HEIGHT = 1280, 800  # "usable at laptop width"
PAGE_SIZE = 200  # the UI's page (PAGE in query/http/ui/app.js)
BULK_USER, BULK_N = "loadgen", 500
KEY_ITEM = "auditlog-key"  # the sessionStorage item the UI keeps the key in


# -- a real ``auditlog serve`` -------------------------------------------------------------


class Node:
    """One node: a data dir and a TOML config under ``root``, ``auditlog serve`` on a free port."""

    def __init__(self, root: Path, node_id: str, settings: dict | None = None):
        self.root = root
        self.node_id = node_id
        self.data_dir = root / "data"
        self.config = root / "auditlog.toml"
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.stdout_path = root / "serve.stdout"
        self.stderr_path = root / "serve.stderr"
        self.proc: subprocess.Popen | None = None
        self.reader: str | None = None
        lines = [f'node_id = "{node_id}"', 'fsync = "none"']
        lines += [f"{k} = {json.dumps(v)}" for k, v in (settings or {}).items()]
        lines += ["", "[server]", f'listen = "127.0.0.1:{self.port}"']
        root.mkdir(parents=True, exist_ok=True)
        self.config.write_text("\n".join(lines) + "\n")

    def cli(self, *args: str) -> subprocess.CompletedProcess:
        p = subprocess.run(
            [AUDITLOG, "--data-dir", str(self.data_dir), "--config", str(self.config), *args],
            capture_output=True,
            text=True,
            timeout=120,
            env=clean_env(),
            stdin=subprocess.DEVNULL,
        )
        assert p.returncode == 0, f"auditlog {' '.join(args)} exited {p.returncode}:\n{p.stdout}\n{p.stderr}"
        return p

    def new_key(self, role: str) -> str:
        key = self.cli("apikey", "create", "--role", role, "--name", f"ui-{role}").stdout.strip().splitlines()[-1]
        assert key.startswith("alk_"), key
        return key

    def start(self, *args: str) -> None:
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "ab") as err:
            self.proc = subprocess.Popen(
                [AUDITLOG, "--data-dir", str(self.data_dir), "--config", str(self.config), "serve", *args],
                stdout=out,
                stderr=err,
                stdin=subprocess.DEVNULL,
                env=clean_env(),
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"serve exited with {self.proc.returncode}:\n{self.stderr()}")
            try:
                with urllib.request.urlopen(self.base + "/healthz", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.05)
        raise AssertionError(f"serve not ready after 30 s:\n{self.stderr()}")

    def stop(self) -> None:
        """SIGTERM and wait: a clean shutdown."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
                raise AssertionError("serve ignored SIGTERM for 20 s") from None

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace") if self.stderr_path.exists() else ""

    def stdout_lines(self) -> list[str]:
        return self.stdout_path.read_text(errors="replace").splitlines()

    def request(self, path: str, token: str, *, body: bytes | None = None) -> tuple[int, bytes]:
        headers = bearer(token)
        if body is not None:
            headers["Content-Type"] = "application/json"
        req = urllib.request.Request(
            self.base + path, data=body, headers=headers, method="POST" if body is not None else "GET"
        )
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            with e:
                return e.code, e.read()


def query_api(base: str, token: str, **params) -> dict:
    """One page of GET /api/v1/audit-log (newest first, up to 1000 unless told)."""
    params = {"order": "desc", "limit": "1000", **params}
    req = urllib.request.Request(f"{base}/api/v1/audit-log?{urlencode(params)}", headers=bearer(token))
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


def api_ids(node: Node, **params) -> list[str]:
    return [e["id"] for e in query_api(node.base, node.reader, **params)["events"]]


# -- servers ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """``serve --demo`` (the seeded day) plus BULK_N events of BULK_USER; ``.reader`` is the
    demo's reader key, read from the last line of serve's stdout.

    The bulk events are appended (``append --file``) between a first, seeding run and
    the second: any entry written before the seeding (a writer key made with
    ``apikey create`` records one) would clamp the demo's 24 h to the present."""
    root = tmp_path_factory.mktemp("ui-demo")
    node = Node(root, "gw1")
    try:
        node.start("--demo")
        node.reader = node.stdout_lines()[-1]
        assert node.reader.startswith("alk_"), node.stdout_lines()
        node.writer = re.search(r"auditlog:\s+writer\s+(alk_\S+)", node.stderr()).group(1)
        assert len(api_ids(node, action="config.dkim_rotate")) == 3, "the demo day was not seeded"
        node.stop()
        bulk = root / "bulk.ndjson"
        bulk.write_text(
            "".join(
                json.dumps({"user": BULK_USER, "action": "user.update", "target": f"bulk-{i}", "details": {"i": i}})
                + "\n"
                for i in range(BULK_N)
            )
        )
        assert node.cli("append", "--file", str(bulk)).stdout.strip() == str(BULK_N)
        node.start()
        yield node
    finally:
        node.close()


@pytest.fixture(scope="module")
def tampered(tmp_path_factory):
    """A node with 4 KiB segments whose second (sealed) segment had one payload byte of its
    first frame flipped while the node was stopped.  ``.bad`` = the ids the API flags."""
    from auditlog.engine.datadir import DataDir
    from auditlog.engine.frame import HEADER_SIZE
    from auditlog.engine.segment import MAX_HEADER, list_segments, parse_segment_header, walk_frames

    root = tmp_path_factory.mktemp("ui-tamper")
    node = Node(root, "gw9", {"segment_max_bytes": 4096})
    try:
        node.cli("init", "--node-id", "gw9")
        events = root / "events.ndjson"
        events.write_text(
            "".join(
                json.dumps(
                    {
                        "user": f"user{i % 4}",
                        "action": "config.filter_update",
                        "target": f"filter-{i}",
                        "details": {"i": i},
                    }
                )
                + "\n"
                for i in range(150)
            )
        )
        node.cli("append", "--file", str(events))
        node.reader = node.new_key("reader")
        node.start()
        before = query_api(node.base, node.reader, limit=str(PAGE_SIZE))
        assert before["integrity_violations"] == 0 and len(before["events"]) < PAGE_SIZE, before["nodes"]
        node.stop()

        dd = DataDir(node.data_dir)
        segs = list_segments(dd.segments)
        assert len(segs) >= 3, segs
        raw = bytearray(segs[1].read_bytes())  # sealed: a later segment follows it
        hdr = parse_segment_header(bytes(raw[:MAX_HEADER]), dd.open().key)
        frame = next(walk_frames(bytes(raw), hdr.size, hdr.mac, dd.open().key, version=hdr.version))
        assert frame.problem is None
        raw[frame.offset + HEADER_SIZE + len(frame.payload) // 2] ^= 0xFF
        segs[1].write_bytes(bytes(raw))

        node.start()
        after = query_api(node.base, node.reader, limit=str(PAGE_SIZE))
        node.bad = [e["id"] for e in after["events"] if e["integrity"] != "ok"]
        assert after["integrity_violations"] == len(node.bad) > 0
        yield node
    finally:
        node.close()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """Two nodes, ``a`` and ``b``, with mTLS between them; a few events on each."""
    from helpers_cluster import LocalCluster, NodeSpec

    cl = LocalCluster(
        tmp_path_factory.mktemp("ui-cluster"),
        [NodeSpec("a", settings={"fsync": "none"}), NodeSpec("b", settings={"fsync": "none"})],
        peer_timeout=5.0,
    )
    try:
        cl.build()
        cl.start()
        for name in ("a", "b"):
            cl[name].post_events(
                [
                    {"user": f"user-{name}", "action": "config.filter_update", "target": f"f-{name}-{i}"}
                    for i in range(3)
                ]
            )
        yield cl
    finally:
        cl.close()


# -- the browser -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser():
    problem = None
    if sync_playwright is None:
        problem = "the playwright package is not installed"
    elif not Path(CHROMIUM).exists():
        problem = f"{CHROMIUM} is missing (apt-get install chromium)"
    if problem:
        if IN_CI:
            pytest.fail(f"{problem} but CI=true: the UI tests must run (.ci/run installs chromium)")
        pytest.skip(problem)
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def context(browser, request):
    """A fresh context at laptop size; on failure every page is screenshotted to test-artifacts/."""
    ctx = browser.new_context(viewport={"width": WIDTH, "height": HEIGHT}, accept_downloads=True)
    ctx.set_default_timeout(10_000)
    problems: list[str] = []

    def watch(page):
        page.on("pageerror", lambda e: problems.append(f"uncaught error on {page.url}: {e}"))
        page.on(
            "console",
            lambda m: (
                problems.append(f"CSP refusal on {page.url}: {m.text}")
                if m.type == "error" and "Content Security Policy" in m.text
                else None
            ),
        )

    ctx.on("page", watch)
    yield ctx
    reports = [getattr(request.node, f"rep_{w}", None) for w in ("setup", "call")]
    if any(r is not None and r.failed for r in reports) or problems:
        ARTIFACTS.mkdir(exist_ok=True)
        stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.nodeid)
        for i, page in enumerate(ctx.pages):
            try:
                page.screenshot(path=str(ARTIFACTS / f"{stem}-{i}.png"), full_page=True)
            except Exception as e:  # noqa: BLE001 - a screenshot must not hide the failure
                print(f"screenshot of page {i} failed: {e}")
    ctx.close()
    assert not problems, problems


@pytest.fixture
def page(context):
    return context.new_page()


# -- driving the page ------------------------------------------------------------------------


def settle(page) -> None:
    """Until the search or page in flight has been rendered (the table is aria-busy meanwhile)."""
    page.wait_for_selector("#results[aria-busy='false']", state="attached")


def sign_in(page, base: str, key: str, *, goto: bool = True) -> None:
    if goto:
        page.goto(base + "/")
    expect(page.locator("#signin")).to_be_visible()
    page.fill("#apikey", key)
    page.click("#signin-form button[type=submit]")
    expect(page.locator("#main")).to_be_visible()
    settle(page)


def field(page, name: str):
    return page.locator(f'#filters [name="{name}"]')


def search(page, **values: str) -> None:
    """Fill the filter form (field name = API parameter) and press Search."""
    for name, value in values.items():
        field(page, name).fill(value)
    page.click("#filters button[type=submit]")
    settle(page)


def rows(page) -> list[dict]:
    return page.evaluate("""() => [...document.querySelectorAll('#results tbody tr')].map(tr => ({
        id: tr.dataset.id, violation: tr.classList.contains('violation'),
        ts: tr.cells[0].textContent, node: tr.cells[1].textContent, user: tr.cells[2].textContent,
        action: tr.cells[3].textContent}))""")


def ids(page) -> list[str]:
    return [r["id"] for r in rows(page)]


def active_row_id(page) -> str | None:
    return page.evaluate("document.activeElement.tagName === 'TR' ? document.activeElement.dataset.id : null")


def url_query(page) -> dict[str, list[str]]:
    return parse_qs(urlparse(page.url).query)


def parse_ts(s: str) -> datetime:
    return datetime.fromisoformat(s.replace("Z", "+00:00"))


def detail(page) -> dict[str, str]:
    return page.evaluate("""() => { const out = {}; const dl = document.querySelector('#detail-body');
        for (const dt of dl.querySelectorAll('dt')) {
            const dd = dt.nextElementSibling, value = dd.querySelector('.value');
            out[dt.textContent] = (value || dd).textContent;   // not the "filter" button beside it
        }
        return out; }""")


def download(page, button: str):
    with page.expect_download() as info:
        page.click(button)
    return info.value


# -- sign-in, session --------------------------------------------------------------------------


def test_sign_in_bad_key_then_role_and_session_storage(page, demo):
    page.goto(demo.base + "/")
    expect(page.locator("#signin")).to_be_visible()
    expect(page.locator("#main")).to_be_hidden()

    page.fill("#apikey", "alk_000000000000_" + "a" * 52)
    page.click("#signin-form button[type=submit]")
    expect(page.locator("#signin-error")).to_contain_text("not valid")
    expect(page.locator("#main")).to_be_hidden()
    assert page.evaluate(f"sessionStorage.getItem('{KEY_ITEM}')") is None

    sign_in(page, demo.base, demo.reader, goto=False)
    expect(page.locator("#who")).to_contain_text("role reader")
    expect(page.locator("#who")).to_contain_text("demo-reader")
    expect(page.locator("#signin-error")).to_have_text("")
    # the key lives in this tab's sessionStorage only: not localStorage, not a cookie
    assert page.evaluate(f"sessionStorage.getItem('{KEY_ITEM}')") == demo.reader
    assert page.evaluate("localStorage.length") == 0
    assert page.evaluate("document.cookie") == ""
    assert [c for c in page.context.cookies()] == []

    # newest first by default, one page of PAGE_SIZE, exactly what the API says
    assert field(page, "order").input_value() == "desc"
    shown = rows(page)
    assert [r["id"] for r in shown] == api_ids(demo, limit=str(PAGE_SIZE))
    stamps = [parse_ts(r["ts"]) for r in shown]
    assert stamps == sorted(stamps, reverse=True)

    # a reload keeps the session (same tab); another tab has to sign in itself
    page.reload()
    expect(page.locator("#main")).to_be_visible()
    expect(page.locator("#who")).to_contain_text("role reader")
    other = page.context.new_page()
    other.goto(demo.base + "/")
    expect(other.locator("#signin")).to_be_visible()
    assert other.evaluate(f"sessionStorage.getItem('{KEY_ITEM}')") is None

    page.click("#signout")
    expect(page.locator("#signin")).to_be_visible()
    expect(page.locator("#main")).to_be_hidden()
    assert page.evaluate(f"sessionStorage.getItem('{KEY_ITEM}')") is None


# -- filters and the URL -----------------------------------------------------------------------


def test_filter_by_user_and_action_prefix_reflected_in_url_and_restored(context, demo):
    page = context.new_page()
    sign_in(page, demo.base, demo.reader)
    # the form's fields are the API's query parameters, each with a label
    names = page.eval_on_selector_all("#filters input[name], #filters select", "els => els.map(e => e.name)")
    assert set(names) - {"order"} == set(PARAM_NAMES)
    # the date-time pickers beside from/to are helpers with a label of their own, no parameter
    pickers = page.eval_on_selector_all("#filters input:not([name])", "els => els.map(e => [e.id, e.type])")
    assert sorted(pickers) == [["from-pick", "datetime-local"], ["to-pick", "datetime-local"]]
    unlabelled = page.eval_on_selector_all(
        "#filters input, #filters select", "els => els.filter(e => !e.labels.length).map(e => e.name)"
    )
    assert unlabelled == []

    search(page, user="alice", action="config.*")
    shown = rows(page)
    expected = api_ids(demo, user="alice", action="config.*")
    assert expected and [r["id"] for r in shown] == expected
    assert {r["user"] for r in shown} == {"alice"}
    assert all(r["action"].startswith("config.") for r in shown)
    assert len(api_ids(demo, action="config.*")) > len(expected)  # the user filter did narrow it
    q = url_query(page)
    assert q["user"] == ["alice"] and q["action"] == ["config.*"] and q["order"] == ["desc"]

    # the URL is the view: opened in a new tab (which must sign in: sessionStorage is per tab)
    shared = context.new_page()
    shared.goto(page.url)
    sign_in(shared, demo.base, demo.reader, goto=False)
    assert field(shared, "user").input_value() == "alice"
    assert field(shared, "action").input_value() == "config.*"
    assert ids(shared) == expected

    # Clear drops every filter, from the form and from the URL
    shared.click("#clear-filters")
    settle(shared)
    assert field(shared, "user").input_value() == ""
    assert "user" not in url_query(shared) and "action" not in url_query(shared)
    assert len(rows(shared)) == PAGE_SIZE


def test_quick_ranges_set_from(page, demo):
    sign_in(page, demo.base, demo.reader)
    field(page, "user").fill("alice")
    field(page, "to").fill("2099-01-01")
    page.get_by_role("button", name="24 h").click()
    settle(page)
    assert field(page, "from").input_value() == "-24h"
    assert field(page, "to").input_value() == ""  # a quick range is open-ended
    assert url_query(page)["from"] == ["-24h"] and "to" not in url_query(page)
    day = ids(page)
    assert day and day == api_ids(demo, user="alice", **{"from": "-24h"})

    started = datetime.now(UTC)
    page.get_by_role("button", name="Last hour").click()
    settle(page)
    assert field(page, "from").input_value() == "-1h" and url_query(page)["from"] == ["-1h"]
    hour = rows(page)
    assert all(parse_ts(r["ts"]) >= started - timedelta(hours=1, seconds=5) for r in hour), hour
    assert {r["id"] for r in hour} < set(day)

    for label, value in (("7 days", "-7d"), ("30 days", "-30d")):
        page.get_by_role("button", name=label).click()
        settle(page)
        assert field(page, "from").input_value() == value and url_query(page)["from"] == [value]
        assert ids(page) == day  # the demo is one day long


# -- paging ------------------------------------------------------------------------------------


def test_load_more_pages_newest_first(page, demo):
    sign_in(page, demo.base, demo.reader)
    field(page, "user").fill(BULK_USER)
    # a quick range: a relative "from" must still page (the cursor belongs to one query)
    page.get_by_role("button", name="24 h").click()
    settle(page)
    expect(page.locator("#results tbody tr")).to_have_count(PAGE_SIZE)
    # the total comes from the server's count, before every page is loaded
    expect(page.locator("#count")).to_have_text(f"{PAGE_SIZE} of {BULK_N} shown, more available")
    more = page.locator("#load-more")
    expect(more).to_be_visible()

    more.click()
    settle(page)
    expect(page.locator("#results tbody tr")).to_have_count(2 * PAGE_SIZE)
    more.click()
    settle(page)
    expect(page.locator("#results tbody tr")).to_have_count(BULK_N)
    expect(more).to_be_hidden()
    expect(page.locator("#error-banner")).to_be_hidden()
    expect(page.locator("#count")).to_have_text(f"{BULK_N} of {BULK_N} shown")

    shown = rows(page)
    all_ids = [r["id"] for r in shown]
    assert all_ids == api_ids(demo, user=BULK_USER) and len(set(all_ids)) == BULK_N
    stamps = [parse_ts(r["ts"]) for r in shown]
    assert stamps == sorted(stamps, reverse=True)
    # the button is gone: focus moved to the first row it brought
    assert active_row_id(page) == all_ids[2 * PAGE_SIZE]

    # the histogram is the server's, over every match (not only the loaded rows)
    bars = page.eval_on_selector_all("#histogram rect", "rs => rs.map(r => parseInt(r.dataset.count, 10))")
    assert bars and sum(bars) == BULK_N
    expect(page.locator("#histogram-caption")).to_contain_text(f"{BULK_N} matching events")


# -- detail panel, keyboard --------------------------------------------------------------------


def test_detail_panel_and_keyboard_navigation(page, demo):
    sign_in(page, demo.base, demo.reader)
    search(page, action="config.*")
    listed = ids(page)
    assert len(listed) >= 3
    by_id = {e["id"]: e for e in query_api(demo.base, demo.reader, action="config.*")["events"]}

    page.locator("#results tbody tr").first.focus()
    assert active_row_id(page) == listed[0]
    page.keyboard.press("ArrowDown")
    page.keyboard.press("ArrowDown")
    assert active_row_id(page) == listed[2]
    page.keyboard.press("ArrowUp")
    assert active_row_id(page) == listed[1]

    page.keyboard.press("Enter")
    expect(page.locator("#detail")).to_be_visible()
    expect(page.locator("#detail-title")).to_have_text(f"Entry {listed[1]}")
    assert page.evaluate("document.activeElement.id") == "detail-close"
    shown, entry = detail(page), by_id[listed[1]]
    assert shown["id"] == entry["id"] and shown["user"] == entry["user"]
    assert json.loads(shown["details"]) == entry["details"]
    assert shown["signature"] == entry["signature"] and re.fullmatch(r"[0-9a-f]{64,}", shown["signature"])
    assert shown["integrity"] == "ok"

    page.keyboard.press("Escape")
    expect(page.locator("#detail")).to_be_hidden()
    assert active_row_id(page) == listed[1]  # focus is back on the row

    # by mouse: a click opens, the close button closes
    page.locator("#results tbody tr").nth(2).click()
    expect(page.locator("#detail-title")).to_have_text(f"Entry {listed[2]}")
    page.click("#detail-close")
    expect(page.locator("#detail")).to_be_hidden()


# -- exports and the four-eyes report ----------------------------------------------------------


def read_csv(dl) -> list[dict]:
    text = Path(dl.path()).read_bytes().decode("utf-8-sig")
    reader = csv.DictReader(io.StringIO(text, newline=""))
    assert reader.fieldnames == list(CSV_COLUMNS)
    return list(reader)


def test_csv_export_is_the_current_filter(page, demo):
    sign_in(page, demo.base, demo.reader)
    search(page, user="alice", action="config.*")
    shown = ids(page)
    assert shown

    dl = download(page, "#export-csv")
    assert dl.suggested_filename == "auditlog.csv"
    got = read_csv(dl)
    assert [f"{r['node_id']}:{r['seq']}" for r in got] == shown
    assert {r["user"] for r in got} == {"alice"}
    assert all(r["action"].startswith("config.") and r["integrity"] == "ok" for r in got)

    # an edited filter not yet searched is applied first: table, URL and file agree
    field(page, "user").fill("bob")
    dl = download(page, "#export-csv")
    got = read_csv(dl)
    expected = api_ids(demo, user="bob", action="config.*")
    assert expected and [f"{r['node_id']}:{r['seq']}" for r in got] == expected
    assert {r["user"] for r in got} == {"bob"}
    assert url_query(page)["user"] == ["bob"]
    assert ids(page) == expected


def test_pdf_export(page, demo):
    sign_in(page, demo.base, demo.reader)
    search(page, action="config.dkim_rotate")
    dl = download(page, "#export-pdf")
    assert dl.suggested_filename.endswith(".pdf")
    data = Path(dl.path()).read_bytes()
    assert data.startswith(b"%PDF-") and b"%%EOF" in data[-64:], data[:64]
    expect(page.locator("#error-banner")).to_be_hidden()


def test_four_eyes_report_verdicts(page, demo):
    sign_in(page, demo.base, demo.reader)
    page.click("#four-eyes")
    expect(page.locator("#report")).to_be_visible()
    table = page.eval_on_selector_all(
        "#report-body tbody tr",
        "trs => trs.map(tr => ({"
        "action: tr.cells[2].textContent, target: tr.cells[3].textContent, "
        "by: tr.cells[4].textContent, verdict: tr.cells[6].textContent, "
        "good: tr.cells[6].classList.contains('good')}))",
    )
    rotations = {r["target"]: r for r in table if r["action"] == "config.dkim_rotate"}
    assert set(rotations) == {"example.com", "example.org", "shop.example.net"}, table
    assert rotations["example.com"]["verdict"] == "ok" and rotations["example.com"]["good"]
    assert "same user" in rotations["example.org"]["verdict"] and not rotations["example.org"]["good"]
    assert rotations["shop.example.net"]["verdict"] == "unconfirmed"
    assert not rotations["shop.example.net"]["good"]
    expect(page.locator("#report-body")).to_contain_text("lack a second pair of eyes")


# -- layout --------------------------------------------------------------------------------------


def test_usable_at_laptop_width(page, demo):
    sign_in(page, demo.base, demo.reader)

    def geometry():
        return page.evaluate("""() => {
            const box = (s) => { const r = document.querySelector(s).getBoundingClientRect();
                                 return {left: r.left, right: r.right, top: r.top, width: r.width}; };
            const wrap = document.querySelector('.table-wrap');
            return {scroll: document.documentElement.scrollWidth, inner: innerWidth,
                    form: box('#filters'), table: box('#results'),
                    tableOverflow: wrap.scrollWidth - wrap.clientWidth}; }""")

    g = geometry()
    assert g["inner"] == WIDTH
    assert g["scroll"] <= g["inner"], g  # no horizontal page scroll
    for part in ("form", "table"):
        assert 0 <= g[part]["left"] and g[part]["right"] <= g["inner"] and g[part]["width"] > 0, g
    assert g["form"]["top"] < HEIGHT and g["table"]["top"] < HEIGHT, g  # both on the first screen
    assert g["tableOverflow"] <= 0, g  # every column fits, none scrolled away
    expect(page.locator("#filters")).to_be_visible()
    expect(page.locator("#results")).to_be_visible()
    # with the detail panel open still no horizontal scroll
    page.locator("#results tbody tr").first.click()
    expect(page.locator("#detail")).to_be_visible()
    g = geometry()
    assert g["scroll"] <= g["inner"], g


# -- integrity and cluster banners -----------------------------------------------------------------


def test_tampered_segment_shows_violation_banner(page, tampered):
    sign_in(page, tampered.base, tampered.reader)
    n = len(tampered.bad)
    banner = page.locator("#violation-banner")
    expect(banner).to_be_visible()
    expect(banner).to_contain_text(f"Integrity violation: {n} entr{'y' if n == 1 else 'ies'}")
    shown = rows(page)
    assert [r["id"] for r in shown if r["violation"]] == tampered.bad
    assert all(r["violation"] == (r["id"] in tampered.bad) for r in shown)
    marked = page.locator("#results tbody tr.violation").first
    normal = page.locator("#results tbody tr:not(.violation)").first
    bg = "el => getComputedStyle(el).backgroundColor"
    assert marked.evaluate(bg) != normal.evaluate(bg)  # highlighted, not only a class
    expect(page.locator("#histogram rect.bad").first).to_be_attached()

    marked.click()
    expect(page.locator("#detail")).to_be_visible()
    assert detail(page)["integrity"].startswith("violation")


def test_stopped_peer_shows_unreachable_banner(page, cluster):
    a, b = cluster["a"], cluster["b"]
    sign_in(page, a.base, a.reader_key)
    assert {r["node"] for r in rows(page)} == {"a", "b"}
    expect(page.locator("#unreachable-banner")).to_be_hidden()

    b.stop()
    page.click("#filters button[type=submit]")
    settle(page)
    banner = page.locator("#unreachable-banner")
    expect(banner).to_be_visible()
    expect(banner).to_contain_text("Node b temporarily unreachable")
    assert {r["node"] for r in rows(page)} == {"a"}


# -- investigations: histogram over the whole range, zoom, filter on a value, time zone -----------


def test_histogram_counts_every_match_and_dragging_zooms(page, demo):
    sign_in(page, demo.base, demo.reader)
    search(page, action="auth.*")
    total = query_api(demo.base, demo.reader, action="auth.*", limit=10000)
    n = len(total["events"])
    expect(page.locator("#histogram-caption")).to_contain_text(f"{n} matching events")
    bars = page.eval_on_selector_all("#histogram rect", "rs => rs.map(r => parseInt(r.dataset.count, 10))")
    assert sum(bars) == n and len(bars) > 1
    expect(page.locator("#count")).to_contain_text(f"of {n} shown")
    # drag across the middle third: from/to set to that span, and the table within it
    box = page.locator("#histogram").bounding_box()
    y = box["y"] + box["height"] / 2
    page.mouse.move(box["x"] + box["width"] / 3, y)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] / 2, y, steps=5)
    page.mouse.move(box["x"] + 2 * box["width"] / 3, y, steps=5)
    page.mouse.up()
    settle(page)
    q = url_query(page)
    lo, hi = parse_ts(q["from"][0]), parse_ts(q["to"][0])
    assert lo < hi
    stamps = [parse_ts(r["ts"]) for r in rows(page)]
    assert stamps and all(lo <= t < hi for t in stamps)
    zoomed = query_api(demo.base, demo.reader, action="auth.*", limit=10000, **{"from": q["from"][0], "to": q["to"][0]})
    expect(page.locator("#histogram-caption")).to_contain_text(f"{len(zoomed['events'])} matching events")
    assert len(zoomed["events"]) < n


def test_filter_on_a_value_from_the_detail_panel(page, demo):
    sign_in(page, demo.base, demo.reader)
    search(page, action="config.*")
    page.locator("#results tbody tr").first.click()
    user = detail(page)["user"]
    page.get_by_role("button", name=f"Filter on user {user}").click()
    settle(page)
    assert field(page, "user").input_value() == user and url_query(page)["user"] == [user]
    assert url_query(page)["action"] == ["config.*"]  # the rest of the search kept
    assert {r["user"] for r in rows(page)} == {user}


def test_times_in_utc_or_local_and_a_stale_count_cleared(browser, demo):
    ctx = browser.new_context(viewport={"width": WIDTH, "height": HEIGHT}, timezone_id="Asia/Kolkata")
    ctx.set_default_timeout(10_000)
    page = ctx.new_page()
    sign_in(page, demo.base, demo.reader)
    search(page, action="config.dkim_rotate")
    utc = [r["ts"] for r in rows(page)]
    assert utc and all(t.endswith("Z") for t in utc)
    page.select_option("#tz", "local")
    local = [r["ts"] for r in rows(page)]
    assert all(t.endswith(" +05:30") for t in local), local
    # the same instant, microseconds kept
    first = datetime.strptime(local[0], "%Y-%m-%d %H:%M:%S.%f %z")
    assert first == parse_ts(utc[0]) and local[0].split(" ")[1][9:15] == utc[0][20:26]
    expect(page.locator("#time-heading")).to_have_text("Time (local)")
    page.select_option("#tz", "utc")
    assert [r["ts"] for r in rows(page)] == utc
    # a bad date after a good search: the error, and no "N shown" left over an empty table
    search(page, **{"from": "not-a-date"})
    expect(page.locator("#error-banner")).to_be_visible()
    expect(page.locator("#results tbody tr")).to_have_count(0)
    expect(page.locator("#count")).to_have_text("")
    # the date-time picker fills the field with the UTC instant
    page.fill("#from-pick", "2026-03-14T09:30:00")
    value = field(page, "from").input_value()
    assert parse_ts(value) == datetime.fromisoformat("2026-03-14T04:00:00+00:00")  # 09:30 in Kolkata
    ctx.close()


def test_live_toggle_shows_new_entries_as_they_come(page, demo):
    sign_in(page, demo.base, demo.reader)
    search(page, user="live-tester")
    expect(page.locator("#results tbody tr")).to_have_count(0)
    # the stream starts after each node's newest entry, fixed before the server sends its
    # headers: the event below is posted once they have come
    with page.expect_response(lambda r: "follow=true" in r.url) as live:
        page.check("#live")
    assert live.value.status == 200
    expect(page.locator("#live-status")).to_be_visible()
    body = json.dumps([{"user": "live-tester", "action": "auth.login", "ip": "192.0.2.77"}]).encode()
    req = urllib.request.Request(
        demo.base + "/api/v1/events",
        data=body,
        method="POST",
        headers={"Authorization": f"Bearer {demo.writer}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=10) as r:
        assert r.status == 201
    expect(page.locator("#results tbody tr")).to_have_count(1, timeout=15_000)
    assert rows(page)[0]["user"] == "live-tester"
    expect(page.locator("#count")).to_contain_text("1 of 1 shown")
    page.uncheck("#live")
    expect(page.locator("#live-status")).to_be_hidden()
