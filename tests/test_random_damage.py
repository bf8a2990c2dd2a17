"""Random structural damage, every read path: the answer is exact, or it reports a violation.

One log is written per module (node ``gw1``: several sealed segments and an
active one, 1-5 events per commit, users, IPs, recipients, DKIM rotations and
their confirmations; tests/helpers_damage.py).  Each example copies it (with or
without the derived ``.idx``/``.terms`` files), applies one to three
damages an attacker with write access to the data dir but without the node key
can make (docs/FORMAT.md: delete, cut, rename, copy or overwrite segment files,
flip bytes, rewrite a record and recompute the frame's keyless checksum), and
reads it back with one query (a time window [from, to) plus optional user / ip
/ action / recipient / target filters) on every path:

* CLI ``auditlog query --format json|ndjson|csv`` and ``auditlog export
  csv|ndjson|ecs|pdf -o FILE`` (each on its own copy: export runs the writer);
* HTTP on a real server (``query.node.build_node`` + ``query.http.app.create_app``
  on 127.0.0.1): JSON pages asc and desc (next_cursor followed), NDJSON, ECS,
  the CSV and PDF exports;
* the four-eyes report, ``auditlog report four-eyes --json`` and
  ``GET /api/v1/reports/four-eyes``.

The property, per path: (a) every entry returned with integrity ``ok`` is an
original entry (same id, signature, fields) that matches the query; (b) an
answer that reports no violation returns exactly the pristine matches, in
order.  Reporting a violation means, for the CLI, exit code 1 *and* a returned
row marked ``violation``; for HTTP JSON ``integrity_violations`` > 0 on a page;
for NDJSON/ECS/CSV a line or row whose integrity is not ``ok``; for a PDF the
``VIOLATION`` rows / ``FAILED verification`` line; for four-eyes ``ok`` false
plus a ``violations`` list (else the report must equal the pristine one).
Reads never crash: no traceback, no HTTP 500, no cut stream.

Paths that run a writer (CLI export, the server) let it recover the log first:
a cut inside the active segment's frames is then cut back and recorded as
``audit.recovery`` (the documented crash path); those seqs are not expected.
Damage a single node cannot detect by design is never drawn: deleting the
newest segment, cutting the active segment at a frame boundary, rolling the
whole directory back.
"""

from __future__ import annotations

import pytest
from helpers_damage import (
    ACTION_QUERIES,
    CLI_QUERY_FORMATS,
    CONFIRMATIONS,
    COPY_TARGETS,
    EDIT_FIELDS,
    EXPORT_FORMATS,
    FLIP_REGIONS,
    GARBAGE_KINDS,
    GARBAGE_NAMES,
    IPS,
    N_ENTRIES,
    PLAN_EVENTS,
    RECIPIENTS,
    ROTATIONS,
    SIDECARS,
    TARGETS,
    USERS,
    Answer,
    CopySegment,
    CutActive,
    DeleteSegment,
    DropSidecar,
    EditRecord,
    Example,
    FlipBytes,
    GarbageSegment,
    Query,
    SwapNames,
    TruncateSealed,
    build_pristine,
    check_answer,
    check_four_eyes,
    describe_failure,
    expected,
    four_eyes_oracle,
    pristine_four_eyes,
    resolve,
    run_cli_export,
    run_cli_four_eyes,
    run_cli_query,
    run_http,
    unclosed,
)
from hypothesis import HealthCheck, Phase, example, given, note, settings
from hypothesis import strategies as st

#: Examples drawn per test, beside the explicit ones.  The module runs in about
#: two minutes on two cores (pytest -n 2); raise them locally to search harder.
CLI_EXAMPLES = 100
EXPORT_EXAMPLES = 35
HTTP_EXAMPLES = 35
FOUR_EYES_EXAMPLES = 50

DAMAGE_SETTINGS = settings(
    deadline=None,
    derandomize=True,
    database=None,
    print_blob=False,
    # no shrinking: an example is one to three damages and one query already, and each
    # run costs a second; the failure message says what was done and what came back
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    return build_pristine(tmp_path_factory.mktemp("pristine"))


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    return tmp_path_factory.mktemp("damaged")


# ----------------------------------------------------------------------------- strategies

seqs = st.integers(1, N_ENTRIES)
fractions = st.integers(0, 999).map(lambda x: x / 1000)

damage_st = st.one_of(
    st.builds(DeleteSegment, seqs),
    st.builds(TruncateSealed, seqs, fractions),
    st.builds(CutActive, fractions),
    st.builds(FlipBytes, seqs, st.sampled_from(FLIP_REGIONS), fractions, st.integers(1, 255), st.integers(1, 4)),
    st.builds(SwapNames, seqs, seqs),
    st.builds(CopySegment, seqs, st.sampled_from(COPY_TARGETS)),
    st.builds(EditRecord, seqs, st.sampled_from(EDIT_FIELDS)),
    st.builds(
        GarbageSegment,
        st.sampled_from(GARBAGE_NAMES),
        st.sampled_from(GARBAGE_KINDS),
        st.integers(0, 600),
        seqs,
        st.integers(0, 2**16),
    ),
    st.builds(DropSidecar, seqs, st.sampled_from(SIDECARS)),
)

#: for the four-eyes report: damage aimed at rotations and confirmations half the time
report_seqs = st.one_of(st.sampled_from(ROTATIONS + CONFIRMATIONS), seqs)
report_damage_st = st.one_of(
    st.builds(EditRecord, report_seqs, st.sampled_from(EDIT_FIELDS)),
    st.builds(FlipBytes, report_seqs, st.sampled_from(FLIP_REGIONS), fractions, st.integers(1, 255), st.integers(1, 4)),
    st.builds(TruncateSealed, report_seqs, fractions),
    st.builds(DeleteSegment, report_seqs),
    st.builds(SwapNames, report_seqs, seqs),
    st.builds(CutActive, fractions),
    st.builds(DropSidecar, report_seqs, st.sampled_from(SIDECARS)),
)

FILTER_VALUES = {"user": USERS, "ip": IPS, "action": ACTION_QUERIES, "recipient": RECIPIENTS, "target": TARGETS}


@st.composite
def scenarios(draw, damages=damage_st, filters: bool = True):
    """(damage, derived files built first?, query); the query is often aimed at what the
    damage hit (a window around it, filter values taken from the damaged entry)."""
    damage = tuple(draw(st.lists(damages, min_size=1, max_size=3)))
    derived = draw(st.booleans())
    aims = [d.seq for d in damage if hasattr(d, "seq")]
    ref = st.sampled_from(aims) if aims else seqs
    a, b = sorted(draw(st.tuples(seqs, seqs)))
    window = draw(
        st.one_of(
            st.just(("all",)),
            st.tuples(st.just("segment"), st.one_of(ref, seqs)),
            st.tuples(st.just("frame"), st.one_of(ref, seqs)),
            st.tuples(
                st.just("seqs"), st.just(a), st.sampled_from((-1, 0, 1)), st.just(b), st.sampled_from((0, 1, -1))
            ),
        )
    )
    chosen = {}
    if filters:
        n = draw(st.sampled_from((0, 0, 1, 1, 2)))
        for name in draw(st.lists(st.sampled_from(sorted(FILTER_VALUES)), min_size=n, max_size=n, unique=True)):
            # an int stands for the value of that pristine entry (resolved once the log exists);
            # two values are OR
            chosen[name] = tuple(
                draw(st.lists(st.one_of(st.sampled_from(FILTER_VALUES[name]), ref, seqs), min_size=1, max_size=2))
            )
    return damage, derived, Query(window, **chosen)


# ----------------------------------------------------------------------------- explicit examples


def _first(pred, start: int) -> int:
    return next(s for s in range(start, N_ENTRIES) if pred(PLAN_EVENTS[s - 1]))


# Entries the explicit examples aim at (the plan is fixed: the seqs are known before the log
# is written; the segment layout is checked in build_pristine).
#: an entry with an ip, a quarter into the log (a sealed segment)
EDITED = _first(lambda ev: ev.get("ip"), N_ENTRIES // 4)
MIDDLE = N_ENTRIES // 2
THIRD = N_ENTRIES // 3
SEQ_AS_STRING = _first(lambda ev: True, N_ENTRIES * 2 // 5)
#: a rotation that a second admin confirmed
CONFIRMED_ROTATION = next(
    r
    for r in ROTATIONS
    if any(
        ev["action"] == "config.dkim_rotate_confirm"
        and ev["details"].get("confirms") == f"gw1:{r}"
        and ev["user"] != PLAN_EVENTS[r - 1]["user"]
        for ev in PLAN_EVENTS
    )
)

#: the entry confirming it
ITS_CONFIRMATION = next(
    i + 1
    for i, ev in enumerate(PLAN_EVENTS)
    if ev["action"] == "config.dkim_rotate_confirm" and ev["details"].get("confirms") == f"gw1:{CONFIRMED_ROTATION}"
)

EXPLICIT = [
    # (1) a frame of a sealed segment edited (checksum recomputed), its .terms deleted; a
    #     selective query for the user + ip whose match was in that frame
    ((EditRecord(EDITED, "user"), DropSidecar(EDITED, "terms")), True, Query(("all",), user=(EDITED,), ip=(EDITED,))),
    # (2) a middle segment deleted; a time-range query inside the gap
    ((DeleteSegment(MIDDLE),), False, Query(("segment", MIDDLE))),
    ((DeleteSegment(MIDDLE),), True, Query(("segment", MIDDLE))),
    # (3) a segment header byte flipped; a time-range query inside that segment's span
    ((FlipBytes(THIRD, "header", 0.5, 0x01),), False, Query(("segment", THIRD))),
    ((FlipBytes(THIRD, "header", 0.5, 0x01),), True, Query(("segment", THIRD))),
    # (4) the oldest segment deleted (no purge); a window at the start
    ((DeleteSegment(1),), False, Query(("seqs", 1, 0, 10, 0))),
    # (5) a record's seq turned into a string (checksum recomputed), every format
    ((EditRecord(SEQ_AS_STRING, "seq_str"),), False, Query(("all",))),
    ((EditRecord(SEQ_AS_STRING, "seq_str"),), True, Query(("frame", SEQ_AS_STRING))),
    # (6) a config.dkim_rotate frame damaged, then the four-eyes report
    ((EditRecord(CONFIRMED_ROTATION, "user"),), False, Query(("all",))),
    ((FlipBytes(CONFIRMED_ROTATION, "mac", 0.5, 0x01),), False, Query(("all",))),
    ((EditRecord(ITS_CONFIRMATION, "user"),), True, Query(("all",))),
    # found by these tests: a file named 99999999999999999999.seg (a writer must start after it)
    ((GarbageSegment("max", "random", 0),), False, Query(("all",))),
    # a sealed segment copied under the next free name (duplicated seqs), read by pages
    ((CopySegment(MIDDLE, "between"),), False, Query(("all",))),
    # a timestamp and a signature turned into other types
    ((EditRecord(SEQ_AS_STRING, "ts_float"),), False, Query(("all",))),
    ((EditRecord(SEQ_AS_STRING, "sig_str"),), True, Query(("all",))),
    # the active segment cut inside a frame, read with no writer running (the CLI query)
    ((CutActive(0.5),), False, Query(("all",))),
]


def explicit_examples(test):
    """Every scenario of :data:`EXPLICIT` as an ``@example``, in the order listed."""
    for damage, derived, query in reversed(EXPLICIT):
        test = example(scenario=(damage, derived, query))(test)
    return test


# ----------------------------------------------------------------------------- running a scenario


def _fail_if(failures: list[str], scenario, done: list[str], r) -> None:
    damage, derived, _ = scenario
    if failures:
        # a plain AssertionError (not pytest.fail, which Hypothesis lets through at once):
        # every explicit example then runs, and the report counts the others that failed
        raise AssertionError("\n" + describe_failure(damage, derived, done, r, failures))


def _cli_queries(ex: Example, r) -> list[Answer]:
    return [run_cli_query(ex.copy(), r, fmt) for fmt in CLI_QUERY_FORMATS]


def _cli_exports(ex: Example, r) -> list[Answer]:
    return [run_cli_export(ex.copy(), r, fmt, ex.root, ex.damaged, ex.p) for fmt in EXPORT_FORMATS]


def _checked(ex: Example, r, exp, answers: list[Answer]) -> list[str]:
    return [f for a in answers for f in check_answer(a, exp, ex.p, r)]


def _four_eyes(ex: Example, r, http: bool = True) -> list[str]:
    """Both four-eyes reports checked against the pristine one (``http``: also serve)."""
    rep, problems = run_cli_four_eyes(ex.copy(), r)
    out = check_four_eyes("cli four-eyes", rep, problems, pristine_four_eyes(ex.p, r))
    if http:
        run = run_http(ex.copy(), r, ex.damaged, ex.p, only_four_eyes=True)
        out += check_four_eyes("http four-eyes", run.four_eyes, run.problems, pristine_four_eyes(ex.p, r, run.cut))
    return out


def _http(ex: Example, r, exp) -> list[str]:
    run = run_http(ex.copy(), r, ex.damaged, ex.p)
    return run.problems + _checked(ex, r, exp, run.answers)


def _run(pristine, scratch, scenario, paths) -> None:
    damage, derived, query = scenario
    r = resolve(query, pristine)
    exp = expected(pristine, r)
    with Example(pristine, damage, derived, scratch) as ex:
        for line in ex.done:
            note(line)
        note(f"query: {r.describe()} ({len(exp)} pristine matches)")
        with unclosed() as leaked:
            failures = paths(ex, r, exp)
        _fail_if(failures + leaked, scenario, ex.done, r)


# ----------------------------------------------------------------------------- the tests

UNDAMAGED_QUERIES = [
    Query(("all",)),
    Query(("all",), user=(EDITED,), ip=(EDITED,)),
    Query(("seqs", 20, 0, 200, 1), action=("config.*",)),
    Query(("all",), recipient=("ben@example.com",), action=("quarantine.release",)),
    Query(("segment", MIDDLE), target=("filter-1", "example.org")),
]


@pytest.mark.parametrize("derived", [False, True], ids=["no-derived-files", "derived-files"])
def test_undamaged_log_every_path_exact(pristine, scratch, derived):
    """No damage: every path returns exactly the pristine matches and reports nothing."""
    for query in UNDAMAGED_QUERIES:
        r = resolve(query, pristine)
        exp = expected(pristine, r)
        assert exp, f"query {r.describe()} matches nothing: a useless control"
        with Example(pristine, (), derived, scratch) as ex, unclosed() as leaked:
            run = run_http(ex.copy(), r, ex.damaged, ex.p, four_eyes=True)
            answers = run.answers + _cli_queries(ex, r) + _cli_exports(ex, r)
            failures = run.problems + _checked(ex, r, exp, answers)
            failures += check_four_eyes("http four-eyes", run.four_eyes, [], pristine_four_eyes(pristine, r))
            failures += _four_eyes(ex, r, http=False)
            failures += [
                f"{a.path}: reports a violation on an undamaged log ({a.info})"
                for a in answers
                if a.reported or a.info not in ("", "exit 0")
            ]
        _fail_if(failures + leaked, ((), derived, query), [], r)
    # the pristine four-eyes report agrees with the plan (the oracle is not the product)
    r = resolve(Query(("all",)), pristine)
    rep = pristine_four_eyes(pristine, r)
    got = [(a["id"], a["user"], a["ok"], a["confirmed_by"]) for a in rep["rotations"]]
    assert got == four_eyes_oracle(pristine, r)
    assert rep["ok"] is False and rep["orphan_confirmations"], "the plan has unconfirmed rotations and an orphan"


def test_the_checks_catch_silent_loss_forgery_and_unlisted_report_changes(pristine):
    """The property checks themselves: an exact answer passes; a missing, duplicated,
    reordered, forged or out-of-query ok entry fails unless a violation is reported
    (and a forged ok entry fails even then); a changed four-eyes report passes only
    with ok false and its violations listed, and never with a rotation turned ok."""
    r = resolve(Query(("seqs", 10, 0, 60, 0), user=("alice", "bruno")), pristine)
    exp = expected(pristine, r)
    assert len(exp) > 5

    def answer(rows, reported=False, order="asc"):
        return Answer("test", rows=[dict(x) for x in rows], reported=reported, order=order)

    assert check_answer(answer(exp), exp, pristine, r) == []
    assert check_answer(answer(exp[::-1], order="desc"), exp, pristine, r) == []
    assert "missing gw1:" in " ".join(check_answer(answer(exp[:-1]), exp, pristine, r))
    assert "more than once" in " ".join(check_answer(answer(exp + exp[-1:]), exp, pristine, r))
    assert "order differs" in " ".join(check_answer(answer(exp[1:2] + exp[:1] + exp[2:]), exp, pristine, r))
    forged = [dict(exp[0], user="carla")] + exp[1:]
    assert "not the original's" in " ".join(check_answer(answer(forged, reported=True), exp, pristine, r))
    other = next(e for e in pristine.entries if e["user"] == "carla")
    assert "does not match the query" in " ".join(check_answer(answer([other] + exp, reported=True), exp, pristine, r))
    flagged = [dict(exp[0], integrity="violation")] + exp[1:]
    assert check_answer(answer(flagged, reported=True), exp, pristine, r) == []
    assert check_answer(answer(exp[:-1], reported=True), exp, pristine, r) == []
    assert check_answer(answer(flagged), exp, pristine, r) != []

    base = pristine_four_eyes(pristine, resolve(Query(("all",)), pristine))
    assert check_four_eyes("test", dict(base), [], base) == []
    fewer = dict(base, rotations=base["rotations"][1:])
    assert check_four_eyes("test", fewer, [], base) != []
    listed = dict(fewer, ok=False, violations=[{"kind": "segment_missing"}])
    assert check_four_eyes("test", listed, [], base) == []
    turned = [dict(a, ok=True, confirmed_by=["erika"]) if not a["ok"] else a for a in base["rotations"]]
    assert check_four_eyes("test", dict(listed, rotations=turned), [], base) != []


@explicit_examples
@given(scenario=scenarios())
@settings(DAMAGE_SETTINGS, max_examples=CLI_EXAMPLES)
def test_cli_query_random_damage(pristine, scratch, scenario):
    """``auditlog query --format json|ndjson|csv`` on a damaged log."""
    _run(pristine, scratch, scenario, lambda ex, r, exp: _checked(ex, r, exp, _cli_queries(ex, r)))


@explicit_examples
@given(scenario=scenarios())
@settings(DAMAGE_SETTINGS, max_examples=EXPORT_EXAMPLES)
def test_cli_export_random_damage(pristine, scratch, scenario):
    """``auditlog export csv|ndjson|ecs|pdf -o FILE`` on a damaged log."""
    _run(pristine, scratch, scenario, lambda ex, r, exp: _checked(ex, r, exp, _cli_exports(ex, r)))


@explicit_examples
@given(scenario=scenarios())
@settings(DAMAGE_SETTINGS, max_examples=HTTP_EXAMPLES)
def test_http_random_damage(pristine, scratch, scenario):
    """GET /api/v1/audit-log (JSON pages asc and desc, NDJSON, ECS), export.csv and
    export.pdf from a real server on a damaged log."""
    _run(pristine, scratch, scenario, _http)


@explicit_examples
@given(scenario=scenarios(report_damage_st, filters=False))
@settings(DAMAGE_SETTINGS, max_examples=FOUR_EYES_EXAMPLES)
def test_four_eyes_random_damage(pristine, scratch, scenario):
    """``auditlog report four-eyes --json`` and GET /api/v1/reports/four-eyes on a damaged
    log: the pristine report, or ``ok`` false with the violations listed."""
    _run(pristine, scratch, scenario, lambda ex, r, exp: _four_eyes(ex, r))
