"""PDF report of an entry stream (GDPR subject access, audit appendix), with fpdf2.

Title, the filters used, the period they cover (resolved to instants), the
oldest entry each node still holds, generation time, node coverage (unreachable
nodes named), a table of the entries with long values wrapped (at separators
such as ``_`` and ``.``, never inside a word that has one), the integrity
status, a SHA-256 digest of the report's data (the entries' NDJSON lines, in
the report's order, as ``format=ndjson`` serves them), optionally an appendix
of every entry's signature, and page numbers.  Text is set in DejaVu Sans when the font is installed
(characters it has no glyph for, such as CJK or emoji, are shown as
``<U+XXXX>`` rather than dropped); otherwise in Helvetica with characters
outside Latin-1 replaced, so a report is always produced.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
import os
from collections.abc import Iterable

from fpdf import FPDF

from auditlog.engine import clock
from auditlog.engine.entry import Entry, format_ts
from auditlog.export.ndjson import ndjson_lines

# fontTools says what it subsets at INFO, fpdf2 warns about fonts: neither belongs in a
# server's log for every report
logging.getLogger("fontTools").setLevel(logging.WARNING)
logging.getLogger("fpdf").setLevel(logging.ERROR)

FONT_DIRS = ("/usr/share/fonts/truetype/dejavu", "/usr/share/fonts/dejavu", "/usr/local/share/fonts")
MAX_CELL_CHARS = 400
#: where a value too long for its column is broken (after these), before splitting a part
_BREAK_AFTER = ("_", ".", "-", "/", "@", ":", ",", "=")
COLUMNS = ("Time (UTC)", "Entry", "User", "Action", "Target / details", "IP", "Outcome", "Integrity")
WIDTHS = (41, 22, 26, 38, 81, 28, 16, 25)


def _find_font() -> tuple[str | None, str | None]:
    for d in FONT_DIRS:
        regular, bold = os.path.join(d, "DejaVuSans.ttf"), os.path.join(d, "DejaVuSans-Bold.ttf")
        if os.path.exists(regular):
            return regular, bold if os.path.exists(bold) else regular
    return None, None


class _Report(FPDF):
    title_text = ""

    def header(self) -> None:
        self.set_font(self.family_name, "", 8)
        self.set_text_color(90)
        self.cell(0, 5, self.title_text, align="L")
        self.ln(6)
        self.set_text_color(0)

    def footer(self) -> None:
        self.set_y(-12)
        self.set_font(self.family_name, "", 8)
        self.set_text_color(90)
        self.cell(0, 8, f"Page {self.page_no()} of {{nb}}", align="C")
        self.set_text_color(0)


#: the date an embedded file carries (the bundle's own bytes say when it was made)
_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)


def render_pdf(
    entries: Iterable[Entry],
    *,
    title: str,
    filters: str,
    nodes: dict[str, dict],
    generated_by: str = "",
    max_rows: int | None = None,
    evidence: str | None = None,
    attachments: tuple[tuple[str, bytes], ...] = (),
    period: tuple[int | None, int | None] | None = None,
    oldest: dict[str, int | None] | None = None,
    signatures: bool = False,
) -> tuple[bytes, dict]:
    """Build the report; returns (PDF bytes, counts {"rows", "violations", "sha256"}).
    ``evidence``: a line naming the evidence bundle of the same entries and the
    checkpoint it rests on; ``attachments``: files embedded in the PDF, as (name, bytes)
    (the bundle itself); ``period``: the filter's from/to in µs (None: open); ``oldest``:
    per node, the ts of the oldest entry it holds (retention start); ``signatures``: an
    appendix with every entry's signature."""
    pdf = _Report(orientation="L", unit="mm", format="A4")
    for name, data in attachments:
        pdf.embed_file(bytes=data, basename=name, mime_type="application/x-tar", modification_date=_EPOCH)
    regular, bold = _find_font()
    if regular:
        pdf.add_font("DejaVu", "", regular)
        pdf.add_font("DejaVu", "B", bold)
        pdf.family_name = "DejaVu"
        # fpdf2 silently drops characters the font has no glyph for (CJK, emoji in
        # DejaVu Sans): a subject would lose words without a trace.  Show them as U+XXXX.
        covered = frozenset(pdf.fonts["dejavu"].cmap) & frozenset(pdf.fonts["dejavuB"].cmap)

        def clean(s: str) -> str:
            s = _clip(s)
            if s.isascii() or all(ord(ch) in covered for ch in s):
                return s
            return "".join(ch if ord(ch) in covered or ch == "\n" else f"<U+{ord(ch):04X}>" for ch in s)
    else:
        pdf.family_name = "helvetica"
        clean = lambda s: _clip(s).encode("latin-1", "replace").decode("latin-1")  # noqa: E731
    pdf.title_text = clean(title)
    pdf.set_title(clean(title))
    pdf.set_creator("auditlog")
    pdf.alias_nb_pages()
    pdf.set_auto_page_break(True, margin=15)
    pdf.add_page()
    fam = pdf.family_name
    pdf.set_font(fam, "B", 15)
    pdf.multi_cell(0, 8, clean(title), new_x="LMARGIN", new_y="NEXT")
    pdf.set_font(fam, "", 9)
    generated = format_ts(clock.now_us())[:19] + "Z"
    pdf.multi_cell(
        0,
        5,
        clean(f"Generated {generated}" + (f" by {generated_by}" if generated_by else "")),
        new_x="LMARGIN",
        new_y="NEXT",
    )
    pdf.multi_cell(0, 5, clean(f"Filters: {filters or '(none: every entry)'}"), new_x="LMARGIN", new_y="NEXT")
    if period is not None:
        lo, hi = period
        start = format_ts(lo) if lo is not None else "the oldest entry held"
        end = format_ts(hi) if hi is not None else f"the report's making ({generated})"
        pdf.multi_cell(0, 5, clean(f"Period: from {start} to {end} (end excluded)"), new_x="LMARGIN", new_y="NEXT")
    if oldest:
        held = ", ".join(f"{n}: {format_ts(t) if t is not None else 'no entries'}" for n, t in sorted(oldest.items()))
        pdf.multi_cell(0, 5, clean(f"Oldest entry held (retention start): {held}"), new_x="LMARGIN", new_y="NEXT")
    cover = ", ".join(
        f"{n}: {st.get('status')}" + (f" ({st.get('error')})" if st.get("error") else "")
        for n, st in sorted(nodes.items())
    )
    pdf.multi_cell(0, 5, clean(f"Node coverage: {cover}"), new_x="LMARGIN", new_y="NEXT")
    if evidence:
        pdf.multi_cell(0, 5, clean(f"Evidence: {evidence}"), new_x="LMARGIN", new_y="NEXT")
    unreachable = [n for n, st in nodes.items() if st.get("status") != "ok"]
    if unreachable:
        pdf.set_text_color(170, 0, 0)
        pdf.multi_cell(
            0,
            5,
            clean(
                f"Incomplete: entries of {', '.join(sorted(unreachable))} are missing "
                "(node unreachable when the report was made)."
            ),
            new_x="LMARGIN",
            new_y="NEXT",
        )
        pdf.set_text_color(0)
    pdf.ln(2)
    table = _Table(pdf, fam, clean)
    table.heading()
    rows = violations = 0
    digest = hashlib.sha256()
    sigs: list[tuple[str, str]] = []
    for e in entries:
        if max_rows is not None and rows >= max_rows:
            break
        rows += 1
        bad = e.integrity != "ok"
        violations += bad
        digest.update(ndjson_lines([e])[0])
        if signatures:
            sigs.append((e.id, e.signature.hex() if isinstance(e.signature, bytes) else str(e.signature or "")))
        table.row(
            (
                format_ts(e.ts),
                e.id,
                e.user,
                e.action,
                _describe(e),
                e.ip or "",
                "success" if e.success else "FAILED",
                "ok" if not bad else f"VIOLATION: {e.violation or ''}",
            ),
            bad,
        )
    pdf.ln(3)
    pdf.set_font(fam, "B", 10)
    if violations:
        pdf.set_text_color(170, 0, 0)
        status = f"Integrity: {violations} of {rows} entries FAILED verification (marked above)."
    else:
        status = f"Integrity: all {rows} entries verified (HMAC chain intact)."
    pdf.multi_cell(0, 6, clean(status), new_x="LMARGIN", new_y="NEXT")
    pdf.set_text_color(0)
    if rows == 0:
        pdf.set_font(fam, "", 9)
        pdf.multi_cell(0, 5, "No entries match these filters.", new_x="LMARGIN", new_y="NEXT")
    pdf.set_font(fam, "", 9)
    sha = digest.hexdigest()
    pdf.multi_cell(
        0,
        5,
        clean(
            f"Data digest: SHA-256 {sha} of the {rows} entries' NDJSON lines, in this report's order "
            "(as GET /api/v1/audit-log?format=ndjson with the same filters serves them)."
        ),
        new_x="LMARGIN",
        new_y="NEXT",
    )
    if signatures and sigs:
        pdf.add_page()
        pdf.set_font(fam, "B", 11)
        pdf.multi_cell(0, 6, "Appendix: entry signatures (HMAC-SHA256 chain, hex)", new_x="LMARGIN", new_y="NEXT")
        pdf.set_font("Courier", "", 7)
        for eid, sig in sigs:
            pdf.cell(0, 3.4, clean(f"{eid:<28} {sig}"), new_x="LMARGIN", new_y="NEXT")
    return bytes(pdf.output()), {"rows": rows, "violations": violations, "sha256": sha}


class _Table:
    """A fast table: our own word wrap with cached glyph widths, drawn with
    low-level calls (fpdf2's table() re-measures every character and is far too
    slow for reports of thousands of rows)."""

    SIZE = 7
    LINE = 3.3
    PAD = 0.8

    def __init__(self, pdf: FPDF, family: str, clean):
        self.pdf, self.family, self.clean = pdf, family, clean
        self._w: dict[str, float] = {}

    def width(self, text: str) -> float:
        w = self._w
        total = 0.0
        for ch in text:
            cw = w.get(ch)
            if cw is None:
                cw = w[ch] = self.pdf.get_string_width(ch)
            total += cw
        return total

    def wrap(self, text: str, maxw: float) -> list[str]:
        lines: list[str] = []
        for para in text.split("\n"):
            cur = ""
            for word in para.split(" "):
                cand = word if not cur else cur + " " + word
                if self.width(cand) <= maxw:
                    cur = cand
                    continue
                if cur:
                    lines.append(cur)
                while self.width(word) > maxw:  # a word longer than the column
                    cut = len(word)
                    while cut > 1 and self.width(word[:cut]) > maxw:
                        cut = max(1, int(cut * 0.8))
                    # rather after a separator (brute_force_ / detected) than inside a part
                    at = max(word.rfind(sep, 0, cut) for sep in _BREAK_AFTER) + 1
                    if at > 0:
                        cut = at
                    lines.append(word[:cut])
                    word = word[cut:]
                cur = word
            lines.append(cur)
        return lines or [""]

    def heading(self) -> None:
        self._draw(COLUMNS, bold=True, fill=(225, 230, 240), color=(0, 0, 0))

    def row(self, cells, bad: bool) -> None:
        self._draw(
            [self.clean(str(c)) for c in cells],
            bold=bad,
            fill=(253, 235, 235) if bad else None,
            color=(170, 0, 0) if bad else (0, 0, 0),
        )

    def _draw(self, cells, bold: bool, fill, color) -> None:
        pdf = self.pdf
        pdf.set_font(self.family, "B" if bold else "", self.SIZE)
        wrapped = [self.wrap(c, w - 2 * self.PAD) for c, w in zip(cells, WIDTHS)]
        height = max(len(x) for x in wrapped) * self.LINE + 2 * self.PAD
        if pdf.get_y() + height > pdf.h - pdf.b_margin:
            pdf.add_page()
            if cells is not COLUMNS:
                self.heading()
                pdf.set_font(self.family, "B" if bold else "", self.SIZE)
        x0, y0 = pdf.l_margin, pdf.get_y()
        if fill:
            pdf.set_fill_color(*fill)
            pdf.rect(x0, y0, sum(WIDTHS), height, style="F")
        pdf.set_draw_color(190)
        pdf.set_text_color(*color)
        x = x0
        for lines, w in zip(wrapped, WIDTHS):
            for i, line in enumerate(lines):
                if line:
                    pdf.text(x + self.PAD, y0 + self.PAD + (i + 0.8) * self.LINE, line)
            x += w
        pdf.line(x0, y0 + height, x0 + sum(WIDTHS), y0 + height)
        pdf.set_text_color(0)
        pdf.set_y(y0 + height)


def _describe(e: Entry) -> str:
    parts = []
    if e.target:
        parts.append(str(e.target))
    if e.domain and e.domain != e.target:
        parts.append(f"domain {e.domain}")
    d = e.details if isinstance(e.details, dict) else {}
    for k in ("subject", "sender", "recipient", "old", "new", "confirms", "reason"):
        v = d.get(k)
        if v in (None, ""):
            continue
        if isinstance(v, (list, tuple)):  # several recipients (arrays read back as tuples)
            v = ", ".join(str(x) for x in v)
        elif isinstance(v, dict):
            v = json.dumps(v, ensure_ascii=False, separators=(",", ":"), default=str)
        parts.append(f"{k}: {v}")
    return "; ".join(parts)


def _clip(s: str) -> str:
    s = "".join(ch if ch >= " " or ch == "\n" else " " for ch in s)
    return s if len(s) <= MAX_CELL_CHARS else s[: MAX_CELL_CHARS - 1] + "…"
