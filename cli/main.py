"""``auditlog``: the command line.  Thin wiring over engine/, ingest/, query/, export/.

Exit codes: 0 ok, 1 an integrity violation was found (after printing
everything), 2 a usage or input error (one line on stderr, nothing written).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import click

from auditlog.cli.config import Config, load_config, parse_retention
from auditlog.engine.datadir import DataDir, Node
from auditlog.engine.entry import EntryDraft, format_ts
from auditlog.engine.errors import AuditLogError, KeyFileError
from auditlog.engine.log import NodeLog
from auditlog.ingest.limits import DEFAULT_LIMITS

EXIT_VIOLATION = 1
EXIT_USAGE = 2
#: events one ``append --file`` accepts (all validated in memory before the first write)
FILE_MAX_EVENTS = 1_000_000


class Context:
    def __init__(self, data_dir: str, config_path: str | None):
        self.data_dir = DataDir(Path(data_dir))
        self.config_path = config_path
        self._config: Config | None = None

    @property
    def config(self) -> Config:
        if self._config is None:
            self._config = load_config(self.config_path)
            for note in self._config.notes:
                click.echo(f"auditlog: warning: {note}", err=True)
        return self._config

    def node(self) -> Node:
        _ = self.config  # a broken config file is reported before anything else
        return self.data_dir.open()

    def reader(self, node: Node | None = None):
        """The node's reader; with an [archive], its reads reach into the archive for what
        lies before the first segment on disk."""
        from auditlog.engine.log import NodeLog

        node = node or self.node()
        log = NodeLog(self.data_dir, node)
        if self.config.archive is not None:
            from auditlog.engine.state import StateSeal
            from auditlog.export.archive import attach_reads

            attach_reads(
                log,
                self.config.archive,
                data_dir=self.data_dir,
                seal=StateSeal(node.key, node.node_id),
                rejected=lambda f, p: click.echo(f"auditlog: warning: {p}", err=True),
            )
        return log

    def writer(self):
        """The node's writer, not yet opened: ``with obj.writer() as w`` takes the lock
        (opening it here as well took the lock twice, which the writer refuses)."""
        from auditlog.engine.writer import LogWriter

        return LogWriter(self.data_dir, self.node(), self.config.store_settings())


def fail(message: str, code: int = EXIT_USAGE) -> None:
    click.echo(f"auditlog: error: {message}", err=True)
    sys.exit(code)


def handle_errors(fn):
    """Turn the project's errors into one clear line and the documented exit code."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except AuditLogError as e:
            fail(str(e), e.exit_code)
        except BrokenPipeError:
            sys.stderr.close()
            sys.exit(0)

    return wrapper


def on_terminal() -> bool:
    return sys.stderr.isatty()


class InputError(click.ClickException):
    """A usage error shown the documented way: one ``auditlog: error:`` line, exit 2."""

    exit_code = EXIT_USAGE

    def show(self, file=None) -> None:
        click.echo(f"auditlog: error: {self.format_message()}", err=True)


class AuditlogGroup(click.Group):
    """Reports click's own usage errors (bad flag values, unknown options, unreadable
    ``--file``/``--config`` paths) as one line like every other input error, instead of
    click's three-line usage block."""

    def make_context(self, info_name, args, parent=None, **extra):
        try:
            return super().make_context(info_name, args, parent=parent, **extra)
        except click.exceptions.NoArgsIsHelpError:
            raise
        except click.UsageError as e:
            raise InputError(" ".join(e.format_message().split())) from None

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except click.exceptions.NoArgsIsHelpError:
            raise
        except click.UsageError as e:
            raise InputError(" ".join(e.format_message().split())) from None


@click.group(cls=AuditlogGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option(
    "--data-dir",
    envvar="AUDITLOG_DATA_DIR",
    default="./auditlog-data",
    show_default=True,
    type=click.Path(file_okay=False),
    help="The node's data directory (env AUDITLOG_DATA_DIR).",
)
@click.option(
    "--config",
    "config_path",
    envvar="AUDITLOG_CONFIG",
    default=None,
    type=click.Path(dir_okay=False),
    help="TOML config file (env AUDITLOG_CONFIG).",
)
@click.version_option(package_name="auditlog")
@click.pass_context
def cli(ctx: click.Context, data_dir: str, config_path: str | None) -> None:
    """Tamper-evident, append-only audit log of a mail-security gateway node.

    \b
    Example:
      auditlog init --node-id gw1
      auditlog append --user alice --action auth.login --ip 192.0.2.10
      auditlog query --from -1d --action 'auth.*'
      auditlog verify
    """
    ctx.obj = Context(data_dir, config_path)


# -- init -----------------------------------------------------------------------


@cli.command()
@click.option("--node-id", required=True, help="This node's id: a-z, 0-9 and '-', up to 63 characters.")
@click.pass_obj
@handle_errors
def init(obj: Context, node_id: str) -> None:
    """Create a data dir: node id, a new random node key and Ed25519 signing key (mode 0600), segments/.

    \b
    Example:
      auditlog --data-dir /var/lib/auditlog init --node-id gw1
    """
    _ = obj.config  # a broken config file is reported before anything is created
    node = obj.data_dir.init(node_id)
    dd = obj.data_dir
    click.echo(
        f"initialised {dd.root} for node {node.node_id} (key in {dd.key_path}, signing key in "
        f"{dd.sign_key_path}, both mode 0600; public key in {dd.public_key_path})"
    )


# -- append ---------------------------------------------------------------------


@cli.command()
@click.option("--user", help="Actor: admin user, API key name, or 'system'.")
@click.option("--action", help="Dotted action name from the taxonomy, e.g. config.filter_update.")
@click.option("--target", help="Object acted on (domain, filter id, mail id, user).")
@click.option("--domain", help="Mail domain concerned.")
@click.option("--ip", help="Client IPv4/IPv6 address.")
@click.option("--user-agent", help="Client user agent.")
@click.option("--failure", is_flag=True, help="Record the action as failed (success=false).")
@click.option(
    "--detail",
    "details",
    multiple=True,
    metavar="KEY=VALUE",
    help="A details field; VALUE is parsed as JSON when it is JSON. Repeatable.",
)
@click.option(
    "--file",
    "file",
    type=click.File("rb"),
    default=None,
    help="Append NDJSON events from FILE ('-' for stdin), all or nothing.",
)
@click.pass_obj
@handle_errors
def append(obj: Context, user, action, target, domain, ip, user_agent, failure, details, file) -> None:
    """Append one event (prints its id) or an NDJSON file (prints the count).

    \b
    Examples:
      auditlog append --user alice --action config.filter_update --target filter-12 \\
          --detail old=block --detail new=quarantine
      auditlog append --file events.ndjson
    """
    from auditlog.ingest.event import parse_detail_args, parse_ndjson, validate_event

    if file is not None:
        if any(v is not None for v in (user, action, target, domain, ip, user_agent)) or failure or details:
            fail("--file cannot be combined with single-event options")
        # a file is a bulk import, not an HTTP batch: the per-batch limit of the
        # API (10 000) would refuse any real export file
        limits = dataclasses.replace(DEFAULT_LIMITS, max_batch=FILE_MAX_EVENTS)
        drafts = parse_ndjson(_read_lines(file), limits)
        with obj.writer() as w:
            # one commit: the whole file is durable, or none of it (the writer
            # splits it into frames and segments itself)
            w.append_batch(drafts, canonical=True)
        total = len(drafts)
        click.echo(total)
        return
    if user is None or action is None:
        fail("append needs --user and --action (or --file)")
    event = {"user": user, "action": action, "success": not failure}
    for k, v in (("target", target), ("domain", domain), ("ip", ip), ("user_agent", user_agent)):
        if v is not None:
            event[k] = v
    if details:
        event["details"] = parse_detail_args(details)
    draft = validate_event(event)
    with obj.writer() as w:
        res = w.append_batch([draft], canonical=True)
        click.echo(f"{w.node}:{res.first_seq}")


def _read_lines(file) -> Iterator[bytes]:
    """The file's lines, with a progress bar (by bytes read) when on a terminal."""
    try:
        total = os.fstat(file.fileno()).st_size
    except (OSError, ValueError, AttributeError):
        total = 0  # a pipe: no size to measure against
    with _progress(total, "reading and validating") as bar:
        for line in file:
            bar.update(len(line))
            yield line


class _NoBar:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def update(self, n):
        pass


def _progress(total: int, label: str):
    if on_terminal() and total:
        return click.progressbar(length=total, label=label, file=sys.stderr)
    return _NoBar()


# -- query ------------------------------------------------------------------------


def filter_options(fn):
    """The filters of SPEC section 6, shared by query and export."""
    opts = [
        click.option("--from", "from_", metavar="TIME", help="Inclusive start: RFC 3339, a date, or -30d/-12h."),
        click.option("--to", metavar="TIME", help="Exclusive end: RFC 3339, a date, or relative."),
        click.option("--user", help="User(s), comma-separated."),
        click.option("--action", help="Action(s), exact or prefix like 'config.*'."),
        click.option("--target", help="Target(s)."),
        click.option("--domain", help="Domain(s)."),
        click.option("--ip", help="IP address(es)."),
        click.option("--recipient", help="details.recipient value(s)."),
        click.option("--success/--failure", "success", default=None, help="Only successes / failures."),
        click.option("--node", help="Node id(s)."),
    ]
    for o in reversed(opts):
        fn = o(fn)
    return fn


def build_filter(from_, to, user, action, target, domain, ip, recipient, success, node):
    from auditlog.query.filters import Filter

    params = {
        k: v
        for k, v in (
            ("from", from_),
            ("to", to),
            ("user", user),
            ("action", action),
            ("target", target),
            ("domain", domain),
            ("ip", ip),
            ("recipient", recipient),
            ("node", node),
        )
        if v is not None
    }
    if success is not None:
        params["success"] = "true" if success else "false"
    return Filter.from_params(params)


class ViolationCounter:
    """Counts the entries and violations that pass; with ``progress``, says on stderr
    how far a long export has come (every ``every`` entries)."""

    def __init__(self, entries, progress: bool = False, every: int = 10_000):
        self.entries = entries
        self.violations = 0
        self.rows = 0
        self.progress = progress
        self.every = every

    def __iter__(self):
        for e in self.entries:
            if e.integrity != "ok":
                self.violations += 1
            self.rows += 1
            if self.progress and self.rows % self.every == 0:
                click.echo(f"auditlog: export: {self.rows:,} entries so far...", err=True)
            yield e


def _limited(entries, limit):
    if limit is None:
        yield from entries
        return
    for i, e in enumerate(entries):
        if i >= limit:
            return
        yield e


@cli.command()
@filter_options
@click.option(
    "--format", "fmt", type=click.Choice(["table", "json", "ndjson", "csv"]), default="table", show_default=True
)
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Stop after N entries (default: all).")
@click.option("--order", type=click.Choice(["asc", "desc"]), default="asc", show_default=True)
@click.option(
    "--follow",
    "-f",
    is_flag=True,
    help="Like tail -f: after the matches so far (the last 10 without --from), print new ones as they are "
    "appended to this node's log, until Ctrl-C (table or ndjson).",
)
@click.pass_obj
@handle_errors
def query(
    obj: Context, from_, to, user, action, target, domain, ip, recipient, success, node, fmt, limit, order, follow
) -> None:
    """Stream matching entries, verified; exit 1 after printing if a violation was met.

    \b
    Examples:
      auditlog query --from 2026-03-14T09:00:00Z --to 2026-03-14T12:00:00Z --action 'config.*'
      auditlog query --user alice --ip 192.0.2.10 --from -30d --format csv > alice.csv
      auditlog query --action 'auth.*' --follow
    """
    from auditlog.query.scan import scan_node

    flt = build_filter(from_, to, user, action, target, domain, ip, recipient, success, node)
    log = obj.reader()
    if follow:
        if fmt not in ("table", "ndjson") or order != "asc" or limit is not None or to:
            fail("--follow prints table or ndjson, oldest first, without --limit or --to")
        _follow(log, flt, fmt, from_ is not None)
        return
    counted = ViolationCounter(_limited(scan_node(log, flt, order=order), limit))
    out = sys.stdout
    if fmt == "table":
        _print_table(counted, out)
    elif fmt == "json":
        first = True
        out.write("[")
        for e in counted:
            out.write(("\n" if first else ",\n") + json.dumps(e.to_wire(), ensure_ascii=False))
            first = False
        out.write("\n]\n" if not first else "]\n")
    elif fmt == "ndjson":
        from auditlog.export.ndjson import iter_ndjson

        for chunk in iter_ndjson(counted):
            out.write(chunk)
    else:
        from auditlog.export.csv import iter_csv

        for chunk in iter_csv(counted, bom=False):
            out.write(chunk)
    out.flush()
    if counted.violations:
        click.echo(
            f"auditlog: {counted.violations} entr{'y' if counted.violations == 1 else 'ies'} "
            "with integrity violations (see the integrity column)",
            err=True,
        )
        sys.exit(EXIT_VIOLATION)


def _follow(log: NodeLog, flt, fmt: str, from_given: bool, poll: float = 0.5) -> None:
    """``query --follow``: the matches so far (the last 10 unless --from was given), then
    each new one as the log grows, until interrupted; a violation met is said on stderr."""
    import itertools
    import time

    from auditlog.engine.entry import ENTRY_SUB
    from auditlog.export.ndjson import ndjson_lines
    from auditlog.query.scan import scan_node

    out = sys.stdout
    if from_given:
        seen = list(scan_node(log, flt))
    else:  # the last 10, read newest first: no walk over the whole log
        seen = list(itertools.islice(scan_node(log, flt, order="desc"), 10))[::-1]
    after = None
    bad = 0

    def emit(entries) -> None:
        nonlocal bad
        if not entries:
            return
        if fmt == "ndjson":
            out.write(b"".join(ndjson_lines(entries)).decode("utf-8"))
        else:
            for e in entries:
                out.write(_table_row(e) + "\n")
        out.flush()
        bad += sum(1 for e in entries if e.integrity != "ok")

    if fmt == "table":
        out.write(_table_row(None) + "\n")
    emit(list(seen))
    if seen:
        after = seen[-1].position
    else:
        head, _ = log.head()
        after = (head, ENTRY_SUB) if head else None
    try:
        while True:
            time.sleep(poll)
            new = list(scan_node(log, flt, after=after))
            if new:
                after = new[-1].position
                emit(new)
                if bad:
                    click.echo(f"auditlog: {bad} entries with integrity violations so far", err=True)
    except KeyboardInterrupt:
        pass


_TABLE_COLS = ("time", "id", "user", "action", "target", "ip", "ok", "integrity")
_TABLE_WIDTHS = (27, 14, 16, 28, 20, 15, 3, 9)


def _table_row(e) -> str:
    """One line of the query table (the heading for None)."""
    if e is None:
        vals = _TABLE_COLS
    else:
        vals = (format_ts(e.ts), e.id, e.user, e.action, e.target, e.ip, "yes" if e.success else "NO", e.integrity)
    line = "  ".join(str(v if v is not None else "-")[:w].ljust(w) for v, w in zip(vals, _TABLE_WIDTHS)).rstrip()
    if e is not None and e.violation:
        line += f"\n    !! {e.violation}"
    return line


def _print_table(entries, out) -> None:
    out.write(_table_row(None) + "\n")
    for e in entries:
        out.write(_table_row(e) + "\n")


# -- verify -----------------------------------------------------------------------


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option(
    "--archive",
    "archive",
    is_flag=True,
    help="Check the archive's copy of the whole chain ([archive] in the config) instead of the local log.",
)
@click.pass_obj
@handle_errors
def verify(obj: Context, as_json: bool, archive: bool) -> None:
    """Check every byte of this node's log; exit 0 intact, 1 when anything is wrong.

    \b
    Examples:
      auditlog verify --json
      auditlog --config auditlog.toml verify --archive
    """
    from auditlog.engine.verify import verify_node

    node = obj.node()
    bar = None
    progress = None
    if archive:
        report = _verify_archive(obj, node, as_json)
    else:
        if on_terminal() and not as_json:
            total = sum(p.stat().st_size for p in obj.data_dir.segments.glob("*.seg"))
            bar = click.progressbar(length=max(total, 1), label="verifying", file=sys.stderr)
            bar.__enter__()
            progress = lambda done, tot: bar.update(done - bar.pos)  # noqa: E731
        report = verify_node(obj.data_dir, node, progress)
    if bar is not None:
        bar.__exit__(None, None, None)
    if as_json:
        d = report.to_dict()
        d.pop("node")
        click.echo(json.dumps(d, indent=2))
    else:
        if report.ok:
            click.echo(f"ok: node {node.node_id}, {report.entries_checked} entries verified, no violations")
        else:
            click.echo(
                f"VIOLATIONS: node {node.node_id}, {report.entries_checked} entries checked, "
                f"{len(report.violations)} problem(s):"
            )
            for v in report.violations:
                rng = f"seq {v.seq_from}..{v.seq_to}" if v.seq_to is not None else f"seq {v.seq_from}.."
                click.echo(f"  {v.kind:20s} {rng:22s} {v.segment}: {v.detail}")
    sys.exit(0 if report.ok else EXIT_VIOLATION)


def _verify_archive(obj: Context, node, as_json: bool):
    """The archive's report (``export.archive_check``); the sealed record of what was
    archived failing its seal is a violation too (the purge entries still say what
    retention dropped)."""
    from auditlog.engine.state import StateSeal
    from auditlog.engine.verify import Violation
    from auditlog.export.archive import Manifest
    from auditlog.export.archive_check import verify_archive

    settings = obj.config.archive
    if settings is None:
        fail("verify --archive needs an [archive] table in the config file (--config or AUDITLOG_CONFIG)")
    problems: list[Violation] = []
    manifest = Manifest(
        StateSeal(node.key, node.node_id),
        obj.data_dir.state,
        settings.url,
        lambda f, p: problems.append(Violation("state_corrupt", node.node_id, None, None, f"state/{f}", p)),
    )
    bar = None
    progress = None
    if on_terminal() and not as_json:
        bar = click.progressbar(length=1, label="checking the archive", file=sys.stderr)
        bar.__enter__()

        def progress(done, total):
            bar.length = max(total, 1)
            bar.update(done - bar.pos)

    try:
        report = verify_archive(settings.store(), obj.data_dir, node, manifest, progress)
    finally:
        if bar is not None:
            bar.__exit__(None, None, None)
    report.violations[:0] = problems
    return report


# -- retention ----------------------------------------------------------------------


@cli.group()
def retention() -> None:
    """Retention of old segments (whole segments, never single entries).

    \b
    Example:
      auditlog retention run --dry-run
    """


@retention.command("run")
@click.option("--as-of", metavar="TIME", help="Pretend it is TIME (RFC 3339 or date); default now.")
@click.option("--dry-run", is_flag=True, help="Only report what would be dropped.")
@click.option("--retention-days", metavar="DAYS|forever", help="Override the configured retention_days.")
@click.pass_obj
@handle_errors
def retention_run(obj: Context, as_of, dry_run, retention_days) -> None:
    """Drop segments whose newest entry is older than retention_days (>= 90).

    \b
    Example:
      auditlog retention run --dry-run
      auditlog retention run --as-of 2027-06-01
    """
    from auditlog.engine.retention import run_retention
    from auditlog.query.timeparse import parse_time

    settings = obj.config.store_settings()
    if retention_days is not None:
        settings = dataclasses.replace(settings, retention_days=parse_retention(retention_days, "--retention-days"))
    as_of_us = parse_time(as_of) if as_of else None
    from auditlog.engine.writer import LogWriter

    archived = None
    if obj.config.archive is not None:
        # with an archive, a segment goes only once its archived copy is verified
        from auditlog.engine.state import StateSeal
        from auditlog.export.archive import Manifest

        node = obj.node()
        manifest = Manifest(
            StateSeal(node.key, node.node_id),
            obj.data_dir.state,
            obj.config.archive.url,
            lambda f, p: click.echo(f"auditlog: warning: {p}", err=True),
        )
        archived = manifest.archived
    with LogWriter(obj.data_dir, obj.node(), settings) as w:
        if not dry_run:
            # the API key snapshot must hold every key whose create entry may be dropped now
            _key_store(obj, w)
        from auditlog.engine.holds import held_segment, holds_in_force

        report = run_retention(w, as_of_us, dry_run, archived, held_segment(holds_in_force(w.log)))
    days = "forever" if report.retention_days is None else f"{report.retention_days} days"
    verb = "would drop" if dry_run else "dropped"
    if report.dropped_segments:
        click.echo(
            f"{verb} {len(report.dropped_segments)} segment(s), {report.dropped_entries} entries "
            f"(seq {report.seq_from}..{report.seq_to}, {report.ts_from} .. {report.ts_to}); "
            f"retention {days}, as of {report.as_of}"
        )
    else:
        click.echo(f"nothing to drop (retention {days}, as of {report.as_of})")
    if report.kept_for_hold:
        click.echo(f"kept what legal hold {report.kept_for_hold} covers, and what follows")
    if report.waiting_for_archive:
        click.echo(f"kept {report.waiting_for_archive} and what follows: not archived and verified yet")


# -- legal holds --------------------------------------------------------------------


@cli.group()
def hold() -> None:
    """Legal holds: time ranges retention never drops, on disk or in the archive.

    \b
    Examples:
      auditlog hold add --from 2026-01-01 --to 2026-04-01 --reason "case 4711"
      auditlog hold list
      auditlog hold release gw1:1234
    """


def _print_hold(h: dict, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(h, indent=2, ensure_ascii=False))
    else:
        click.echo(f"{h['id']:16s} {h['from']} .. {h['to']}  set {h['set_at']} by {h['by']}: {h['reason']}")


@hold.command("add")
@click.option("--from", "from_", required=True, metavar="TIME", help="Start of the range (RFC 3339, date, -30d).")
@click.option("--to", required=True, metavar="TIME", help="End of the range (exclusive).")
@click.option("--reason", required=True, help="Why (a case, a request): recorded in the log.")
@click.option("--user", default="admin", show_default=True, help="Who sets it.")
@click.option("--json", "as_json", is_flag=True, help="Print the hold as JSON.")
@click.pass_obj
@handle_errors
def hold_add(obj: Context, from_, to, reason, user, as_json) -> None:
    """Set a legal hold over entries from --from to --to (its audit.legal_hold_set entry
    is the hold; its id is that entry's).

    \b
    Example:
      auditlog hold add --from 2026-01-01 --to 2026-04-01 --reason "case 4711"
    """
    from auditlog.engine.holds import find, set_draft
    from auditlog.query.timeparse import parse_time

    from_us, to_us = parse_time(from_, param="--from"), parse_time(to, param="--to")
    with obj.writer() as w:
        res = w.append_batch([set_draft(from_us, to_us, reason, user)])
        h = find(w.log, f"{w.node}:{res.first_seq}")
    _print_hold(h.to_dict(), as_json)


@hold.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print the holds as JSON.")
@click.pass_obj
@handle_errors
def hold_list(obj: Context, as_json) -> None:
    """The legal holds in force.

    \b
    Example:
      auditlog hold list --json
    """
    from auditlog.engine.holds import holds_in_force

    found = holds_in_force(obj.reader())
    holds = [h.to_dict() for h in found]
    if found.uncertain:
        click.echo(f"auditlog: warning: there may be more holds: {found.uncertain}; retention drops nothing", err=True)
    if as_json:
        click.echo(json.dumps({"holds": holds, "uncertain": found.uncertain}, indent=2, ensure_ascii=False))
    elif not holds:
        click.echo("no legal hold in force")
    for h in holds if not as_json else ():
        _print_hold(h, False)


@hold.command("release")
@click.argument("hold_id")
@click.option("--reason", help="Why it is lifted: recorded in the log.")
@click.option("--user", default="admin", show_default=True, help="Who releases it.")
@click.pass_obj
@handle_errors
def hold_release(obj: Context, hold_id, reason, user) -> None:
    """Release the legal hold HOLD_ID (an audit.legal_hold_release entry).

    \b
    Example:
      auditlog hold release gw1:1234 --reason "case closed"
    """
    from auditlog.engine.holds import find, release_draft

    with obj.writer() as w:
        h = find(w.log, hold_id)
        w.append_batch([release_draft(h, user, reason)])
    click.echo(f"released {h.id} ({format_range(h)})")


def format_range(h) -> str:
    d = h.to_dict()
    return f"{d['from']} .. {d['to']}"


# -- the archive ----------------------------------------------------------------------


@cli.group("archive")
def archive_group() -> None:
    """The node's archive ([archive] in the config file).

    \b
    Example:
      auditlog --config auditlog.toml archive restore
    """


@archive_group.command("restore")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.pass_obj
@handle_errors
def archive_restore(obj: Context, as_json: bool) -> None:
    """Take this node's segments back from its archive (a node rebuilt from scratch, its
    node.id, node.key and node.sign restored from backup).  The archive's segments and
    those on disk are verified together with the node key before anything is written;
    exit 1, with the problems, when they do not make a sound log.

    \b
    Example:
      auditlog --config auditlog.toml archive restore
    """
    from auditlog.engine.entry import EntryDraft
    from auditlog.engine.state import StateSeal
    from auditlog.engine.writer import WriterLock
    from auditlog.export.archive import Manifest
    from auditlog.export.archive_restore import RestoreRefused, restore

    settings = obj.config.archive
    if settings is None:
        fail("archive restore needs an [archive] table in the config file (--config or AUDITLOG_CONFIG)")
    node = obj.node()
    manifest = Manifest(
        StateSeal(node.key, node.node_id),
        obj.data_dir.state,
        settings.url,
        lambda f, p: click.echo(f"auditlog: warning: {p}", err=True),
    )
    lock = WriterLock(obj.data_dir.lock_path)
    lock.acquire()  # no writer may start (and create segment 1) while segments come back
    try:
        rep = restore(settings.store(), obj.data_dir, node, manifest)
    except RestoreRefused as e:
        click.echo(f"auditlog: error: {e}", err=True)
        for v in e.violations:
            click.echo(f"  {v.kind:20s} seq {v.seq_from}..{v.seq_to} {v.segment}: {v.detail}", err=True)
        sys.exit(EXIT_VIOLATION)
    finally:
        lock.release()
    with obj.writer() as w:
        w.append_batch(
            [
                EntryDraft(
                    "system",
                    "audit.recovery",
                    details={
                        "reason": "segments restored from the archive",
                        "archive": settings.url,
                        "segments": len(rep.restored),
                        "seq_from": rep.seq_from,
                        "seq_to": rep.seq_to,
                    },
                )
            ]
        )
    out = {
        "archive": settings.url,
        "objects": rep.objects,
        "restored": rep.restored,
        "seq_from": rep.seq_from,
        "seq_to": rep.seq_to,
        "entries_checked": rep.entries_checked,
    }
    if as_json:
        click.echo(json.dumps(out, indent=2))
    else:
        click.echo(
            f"restored {len(rep.restored)} of {rep.objects} archived segment(s), seq {rep.seq_from}..{rep.seq_to}, "
            f"{rep.entries_checked} entries verified with the node key; witnesses check the rest when it serves"
        )


# -- export -------------------------------------------------------------------------


@cli.command()
@click.argument("fmt", metavar="FORMAT", type=click.Choice(["csv", "ndjson", "ecs", "pdf", "bundle"]))
@filter_options
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="File to write ('-' for stdout).")
@click.option("--title", default="Audit log report", show_default=True, help="PDF report title.")
@click.option(
    "--bundle",
    "bundle_path",
    type=click.Path(dir_okay=False),
    help="pdf: also write the evidence bundle of the same entries here; the report names its digest and checkpoint.",
)
@click.option("--no-bom", is_flag=True, help="csv: no UTF-8 byte order mark (for machine consumers).")
@click.option("--signatures", is_flag=True, help="pdf: an appendix with every entry's signature.")
@click.option(
    "--progress/--no-progress",
    default=None,
    help="Say on stderr how far a long export has come (default: when stderr is a terminal).",
)
@click.pass_obj
@handle_errors
def export(
    obj: Context,
    fmt,
    from_,
    to,
    user,
    action,
    target,
    domain,
    ip,
    recipient,
    success,
    node,
    output,
    title,
    bundle_path,
    no_bom,
    signatures,
    progress,
) -> None:
    """Export the filtered range (all of it) to a file; the export itself is audited.

    csv: RFC 4180 with a BOM for Excel (--no-bom for machine consumers); ndjson: one entry per line; ecs:
    Elastic Common Schema documents (NDJSON); pdf: a report with the filters,
    node coverage, a table of the entries, integrity status and page numbers;
    bundle: the entries with proofs against a new signed checkpoint, checked
    offline with `auditlog verify-bundle FILE --key node.pub` (a bundle filtered
    by time only also proves that no entry of the range is missing).

    \b
    Examples:
      auditlog export csv --from 2026-03-14T09:00:00Z --to 2026-03-14T12:00:00Z \\
          --action 'config.*' -o config-changes.csv
      auditlog export pdf --recipient anna@example.com --action quarantine.release \\
          --title 'Subject access: anna@example.com' -o anna.pdf
      auditlog export ecs --from -1d -o today.ecs.ndjson
    """
    from auditlog.engine.errors import WriterLockedError

    flt = build_filter(from_, to, user, action, target, domain, ip, recipient, success, node)
    try:
        if progress is None:
            progress = sys.stderr.isatty()
        if signatures and fmt != "pdf":
            fail("--signatures goes with a PDF report")
        _export(obj, fmt, flt, output, title, bundle_path, no_bom, signatures, progress)
    except WriterLockedError as e:
        if fmt in ("ndjson", "ecs"):
            route, sep = f"/api/v1/audit-log?format={fmt}", "&"
        else:
            route, sep = f"/api/v1/audit-log/export.{fmt}", "?"
        fail(
            f"{e}. An export is recorded in the log, so it needs the writer: while `serve` runs, "
            f"export over its HTTP API with a reader key instead, e.g. "
            f"curl -OJ -H 'Authorization: Bearer $KEY' 'http://HOST:PORT{route}{sep}{_query_of(flt)}'"
        )


def _query_of(flt) -> str:
    from urllib.parse import urlencode

    return urlencode(flt.to_params())


def _export(obj: Context, fmt, flt, output, title, bundle_path, no_bom, signatures, progress) -> None:
    from auditlog.query.scan import scan_node

    node_obj = obj.node()
    log = obj.reader(node_obj)
    if fmt == "bundle":
        _export_bundle(obj, flt, node_obj, log, output)
        return
    if bundle_path is not None and fmt != "pdf":
        fail("--bundle goes with a PDF report (or use: export bundle)")
    if no_bom and fmt != "csv":
        fail("--no-bom goes with a CSV export")
    from auditlog.export.csv import iter_csv
    from auditlog.export.ecs import iter_ecs
    from auditlog.export.ndjson import iter_ndjson

    render = {"csv": lambda es: iter_csv(es, bom=not no_bom), "ndjson": iter_ndjson, "ecs": iter_ecs}.get(fmt)
    # the export is recorded by the writer: take it first so that a running
    # server (which owns the writer) is reported before any file is written
    with obj.writer() as w:
        evidence = None
        scanned = scan_node(log, flt)
        if bundle_path is not None:
            built = _write_bundle_file(obj, w, log, flt, bundle_path)
            evidence = (
                f"the evidence bundle {Path(bundle_path).name} (SHA-256 {built.sha256}) holds these "
                f"{built.rows} entries with proofs under the node's signed checkpoint of "
                f"{built.checkpoint_size} entries; check it with: auditlog verify-bundle "
                f"{Path(bundle_path).name} --key node.pub"
            )
            scanned = (e for e in scanned if e.seq <= built.checkpoint_size)
        counted = ViolationCounter(scanned, progress)
        target_path = None if output == "-" else Path(output)
        tmp = None if target_path is None else target_path.with_name(target_path.name + ".part")
        binary = fmt == "pdf"
        try:
            if tmp is None:
                out = sys.stdout.buffer if binary else sys.stdout
            else:
                out = open(tmp, "wb") if binary else open(tmp, "w", encoding="utf-8", newline="")
        except OSError as e:
            fail(f"cannot write {output}: {e.strerror}")
        try:
            if binary:
                from auditlog.export.pdf import render_pdf

                first = next(iter(log.scan()), None)
                pdf, _ = render_pdf(
                    counted,
                    title=title,
                    filters=flt.describe(),
                    nodes={node_obj.node_id: {"status": "ok"}},
                    generated_by="auditlog CLI",
                    evidence=evidence,
                    period=(flt.from_us, flt.to_us),
                    oldest={node_obj.node_id: first.ts if first is not None else None},
                    signatures=signatures,
                )
                out.write(pdf)
            else:
                for chunk in render(counted):
                    out.write(chunk)
            out.flush()
        finally:
            if tmp is not None:
                out.close()
        if tmp is not None:
            os.replace(tmp, target_path)
        w.append_batch(
            [
                EntryDraft(
                    "cli",
                    "audit.export",
                    details={
                        "format": fmt,
                        "filters": flt.to_params(),
                        "rows": counted.rows,
                        "integrity_violations": counted.violations,
                        "via": "cli",
                        **({"bundle_sha256": built.sha256} if bundle_path is not None else {}),
                    },
                )
            ]
        )
    click.echo(f"exported {counted.rows} entries to {output}", err=True)
    if counted.violations:
        click.echo(f"auditlog: {counted.violations} exported entries carry integrity violations", err=True)
        sys.exit(EXIT_VIOLATION)


def _write_bundle_file(obj: Context, w, log: NodeLog, flt, output: str):
    """Build the bundle of ``flt`` (writer ``w`` open), write it to ``output`` and record
    the export; the ``query.bundles.BuiltBundle``."""
    from auditlog.query.bundles import build_bundle

    built = build_bundle(w, log, obj.data_dir, flt)
    target_path = Path(output)
    tmp = target_path.with_name(target_path.name + ".part")
    try:
        tmp.write_bytes(built.data)
        os.replace(tmp, target_path)
    except OSError as e:
        fail(f"cannot write {output}: {e.strerror}")
    w.append_batch([EntryDraft("cli", "audit.export", details={**built.export_details(flt), "via": "cli"})])
    return built


def _export_bundle(obj: Context, flt, node_obj, log: NodeLog, output: str) -> None:
    """``export bundle``: a new signed checkpoint, the matching entries under it with
    their proofs (and, for a time-only filter, the entries just outside the window)."""
    if output == "-":
        fail("a bundle is written to a file (-o FILE)")
    with obj.writer() as w:
        built = _write_bundle_file(obj, w, log, flt, output)
    claim = "complete for its time range" if built.complete else "authenticity and order"
    click.echo(f"exported {built.rows} entries to {output} ({claim}; sha256 {built.sha256})", err=True)


@cli.command("verify-bundle")
@click.argument("bundle", type=click.Path(exists=True, dir_okay=False))
@click.option(
    "--key",
    "key_path",
    type=click.Path(exists=True, dir_okay=False),
    help="The node's public key (node.pub, PEM), for one node's bundle.",
)
@click.option(
    "--ca",
    "ca_path",
    type=click.Path(exists=True, dir_okay=False),
    help="The cluster CA certificate (ca.pem), for a cluster's bundle: it vouches for every node's key.",
)
@click.option(
    "--min-cosigners",
    type=click.IntRange(0, 64),
    default=1,
    show_default=True,
    help="Cluster bundles: peers that must have cosigned each node's checkpoint (at most the other nodes).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@handle_errors
def verify_bundle_cmd(
    bundle: str, key_path: str | None, ca_path: str | None, min_cosigners: int, as_json: bool
) -> None:
    """Check an evidence bundle offline: with the node's public key (--key) for one
    node's bundle, or with the cluster CA certificate (--ca) for a cluster's.  The
    signed manifest and checkpoint, every entry's inclusion proof, for a time range that
    no entry of it is missing, and for a cluster each node's certificate under the CA
    and its peers' cosignatures.  Exit 0 when all of it holds, 1 otherwise.

    \b
    Examples:
      auditlog verify-bundle gw1-march.bundle --key gw1.pub
      auditlog verify-bundle cluster-march.bundle --ca ca.pem
    """
    import json

    from auditlog.engine.signing import parse_public_key
    from auditlog.export.bundle import verify_bundle
    from auditlog.export.cluster_bundle import is_cluster_bundle, verify_cluster_bundle

    if (key_path is None) == (ca_path is None):
        fail("give the node's public key (--key node.pub) or the cluster CA certificate (--ca ca.pem)")
    try:
        data = Path(bundle).read_bytes()
        trust = Path(key_path or ca_path).read_bytes()
    except OSError as e:
        fail(f"cannot read {e.filename}: {e.strerror}")
    cluster_bundle = is_cluster_bundle(data)
    if ca_path is not None:
        if not cluster_bundle:
            fail(f"{Path(bundle).name} is one node's bundle: it carries no certificate; check it with --key node.pub")
        report = verify_cluster_bundle(data, trust, min_cosigners)
        if as_json:
            click.echo(json.dumps(report.to_dict(), indent=2))
        else:
            for node, row in sorted(report.nodes.items()):
                state = "ok" if row["ok"] else "FAILED"
                what = "complete for its time range" if row["claim"] == "complete" else "authentic and in order"
                cos = ", ".join(row["cosigned_by"]) or "nobody"
                click.echo(
                    f"{state}: {row['entries']} entries of node {node}, {what}, under a checkpoint of "
                    f"{row['checkpoint_size']} entries cosigned by {cos}"
                )
            for node, why in sorted(report.unreachable.items()):
                click.echo(f"INCOMPLETE: node {node} gave no bundle at export ({why}): nothing of it is here")
            for f in report.failures:
                click.echo(f"FAILED: {f}")
            if report.ok:
                click.echo(
                    f"ok: every certificate under the CA given, every node's bundle under its key "
                    f"(exported by {report.exporter})"
                )
        sys.exit(0 if report.ok else EXIT_VIOLATION)
    if cluster_bundle:
        fail(f"{Path(bundle).name} is a cluster's bundle: check it with --ca ca.pem")
    key = parse_public_key(trust, key_path)
    report = verify_bundle(data, key)
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
    else:
        if report.ok:
            what = "complete for its time range" if report.claim == "complete" else "authentic and in order"
            click.echo(
                f"ok: {report.entries} entries of node {report.node}, {what}, under a checkpoint of "
                f"{report.checkpoint_size} entries signed by the key given"
            )
        else:
            for f in report.failures:
                click.echo(f"FAILED: {f}")
    sys.exit(0 if report.ok else EXIT_VIOLATION)


# -- reports ---------------------------------------------------------------------------


@cli.group()
def report() -> None:
    """Compliance reports over the log.

    \b
    Example:
      auditlog report four-eyes --from -90d
    """


@report.command("four-eyes")
@click.option("--from", "from_", metavar="TIME", help="Inclusive start of the range of actions.")
@click.option("--to", metavar="TIME", help="Exclusive end of the range of actions.")
@click.option(
    "--pair",
    "pairs",
    multiple=True,
    metavar="ACTION:CONFIRM",
    help="Action and its confirming action (repeatable; default config.dkim_rotate:config.dkim_rotate_confirm).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.pass_obj
@handle_errors
def report_four_eyes(obj: Context, from_, to, pairs, as_json) -> None:
    """Was every sensitive change confirmed by a second, different admin? Exit 1 if not.

    \b
    Example:
      auditlog report four-eyes --from 2026-01-01 --json
      auditlog report four-eyes --pair config.filter_delete:custom.filter_delete_confirm
    """
    from auditlog.export.reports import DEFAULT_PAIRS, FourEyesRule, four_eyes, parse_pairs
    from auditlog.query.filters import Filter
    from auditlog.query.scan import scan_node

    try:
        rules = parse_pairs(pairs) if pairs else tuple(FourEyesRule(*p) for p in DEFAULT_PAIRS)
    except ValueError as e:
        fail(str(e))
    base = build_filter(from_, to, None, None, None, None, None, None, None, None)
    params = base.to_params()
    params.pop("to", None)
    params["action"] = ",".join(sorted({r.action for r in rules} | {r.confirm for r in rules}))
    log = obj.reader()
    rep = four_eyes(scan_node(log, Filter.from_params(params)), rules, base.from_us, base.to_us)
    if as_json:
        click.echo(json.dumps(rep, indent=2, ensure_ascii=False))
    else:
        for a in rep["rotations"]:
            mark = "ok  " if a["ok"] else "FAIL"
            who = ", ".join(a["confirmed_by"]) or "-"
            click.echo(
                f"{mark} {a['ts']} {a['id']:<12} {a['action']} {a['target'] or '-'} by {a['user']}; "
                f"confirmed by: {who}" + (f"  ({a['problem']})" if a["problem"] else "")
            )
        for o in rep["orphan_confirmations"]:
            click.echo(
                f"FAIL {o['ts']} {o['id']:<12} {o['action']} by {o['user']} confirms {o['confirms']!r}: {o['problem']}"
            )
        for v in rep["violations"]:
            click.echo(f"FAIL {v['ts']} {v['id']:<12} integrity violation: {v['violation']}")
        if rep["violations"]:
            click.echo(
                f"the log could not be verified everywhere this report reads "
                f"({len(rep['violations'])} violation(s)): it cannot vouch that every change "
                "was confirmed",
                err=True,
            )
        if not rep["rotations"] and not rep["orphan_confirmations"] and not rep["violations"]:
            click.echo("no actions needing a second pair of eyes in this range")
    sys.exit(0 if rep["ok"] else EXIT_VIOLATION)


# -- serve ----------------------------------------------------------------------------


def default_node_id() -> str:
    import re
    import socket

    name = re.sub(r"[^a-z0-9-]+", "-", socket.gethostname().split(".")[0].lower()).strip("-")
    return (name or "node")[:63]


@cli.command()
@click.option(
    "--listen", default=None, metavar="HOST:PORT", help="HTTP address (default [server] listen, or 127.0.0.1:8080)."
)
@click.option(
    "--unix-socket",
    default=None,
    type=click.Path(dir_okay=False),
    help="Also listen on this Unix socket (mode 0660) for same-host subsystems.",
)
@click.option(
    "--demo",
    is_flag=True,
    help="On an empty log, seed a day of sample events; print a reader, a writer and an admin key.",
)
@click.pass_obj
@handle_errors
def serve(obj: Context, listen, unix_socket, demo) -> None:
    """Run the HTTP API (and the node's writer) until SIGINT/SIGTERM.

    On a data dir that does not exist yet, initialise one (node id from the
    config's node_id, else the hostname), so the log is on with no setup.

    \b
    Example:
      auditlog serve --listen 127.0.0.1:8080
      auditlog --data-dir ./demo-data serve --demo
    """
    import logging

    from auditlog.query.http.server import bind, parse_listen, serve_forever
    from auditlog.query.http.server import serve as run_serve
    from auditlog.query.node import build_node

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = obj.config
    listen = listen or cfg.server.listen
    parse_listen(listen)
    # the ports first: one in use fails here, before the data dir is made or written to
    socks = {}
    wanted = [("http", listen)]
    if cfg.cluster is not None and cfg.cluster.listen:
        wanted.append(("peer", cfg.cluster.listen))
    for name, where in wanted:
        try:
            socks[name] = bind(where)
        except OSError as e:
            for sk in socks.values():
                sk.close()
            fail(f"cannot listen on {where}: {e.strerror or e}")
    if not obj.data_dir.is_initialised():
        node_id = cfg.node_id or default_node_id()
        obj.data_dir.init(node_id)
        click.echo(f"initialised {obj.data_dir.root} for node {node_id}", err=True)
    try:
        node = build_node(cfg.node_config(), obj.data_dir)
    except BaseException:
        for sk in socks.values():
            sk.close()
        raise
    unix_socket = unix_socket or cfg.server.unix_socket
    try:
        if demo:
            _seed_demo(node)
    except BaseException:
        node.close()
        for sk in socks.values():
            sk.close()
        raise

    def ready(runner):
        click.echo(f"auditlog: node {node.node_id} serving http://{listen}/ (data dir {obj.data_dir.root})", err=True)

    try:
        serve_forever(run_serve(node, listen, unix_socket, ready, socks))
    except OSError as e:
        node.close()
        fail(f"cannot listen on {listen}: {e.strerror or e}")


def _seed_demo(service) -> None:
    from auditlog.ingest.demo import seed_demo

    head, _ = service.log.head()
    if head <= 1:  # empty (or only the recovery/first bookkeeping entry)
        n = seed_demo(service.writer, service.writer.now())
        click.echo(f"auditlog: demo: seeded {n} sample events over the last 24 hours", err=True)
    made = {role: service.keys.create(f"demo-{role}", role, user="cli")[1] for role in ("writer", "admin", "reader")}
    click.echo("auditlog: demo API keys (shown once; each start of the demo makes new ones):", err=True)
    for role, what in (
        ("reader", "query, export, verify"),
        ("writer", "append: POST /api/v1/events"),
        ("admin", "reader + manage API keys and legal holds"),
    ):
        click.echo(f"auditlog:   {role:<6} {made[role]}   ({what})", err=True)
    click.echo(made["reader"])  # the last line on stdout: the reader key, for scripts


# -- keys -----------------------------------------------------------------------------


@cli.group()
def keys() -> None:
    """The node's signing key (Ed25519): its public half is for auditors.

    \b
    Example:
      auditlog keys public > gw1.pub
    """


@keys.command("public")
@click.option("--fingerprint", is_flag=True, help="Print SHA256:<hex> of the raw public key instead of the PEM.")
@click.option("--vkey", is_flag=True, help="Print the verifier key of the node's signed checkpoints (C2SP note).")
@click.pass_obj
@handle_errors
def keys_public(obj: Context, fingerprint: bool, vkey: bool) -> None:
    """Print the node's public signing key (PEM), taken from its private half.

    \b
    Example:
      auditlog --data-dir /var/lib/auditlog keys public > gw1.pub
    """
    obj.data_dir.open()  # an initialised data dir, or a clear error
    if not obj.data_dir.sign_key_path.exists():
        raise KeyFileError(
            f"{obj.data_dir.root} has no signing key yet (it was made before there were any): "
            "it is created when the writer next starts (serve, append or import)"
        )
    node = obj.data_dir.open()
    key = obj.data_dir.signing_key()
    if vkey:
        from auditlog.engine.note import Verifier
        from auditlog.engine.tree import origin

        click.echo(str(Verifier.of(origin(node.node_id), key.public_raw)))
    elif fingerprint:
        click.echo(key.fingerprint)
    else:
        click.echo(key.public_pem().decode(), nl=False)


@cli.command()
@click.pass_obj
@handle_errors
def checkpoint(obj: Context) -> None:
    """Make a signed checkpoint of the node's log and print it: the Merkle tree's size
    and root (RFC 6962), signed with the node's Ed25519 key as a C2SP signed note,
    and recorded in the log as an audit.tree_head entry.

    The tree is brought up to the log's last entry first, from verified frames
    only; a log with damage gets no checkpoint (exit 2: run verify).  While
    `serve` runs it owns the writer: the checkpoint is printed but not recorded
    (the server records one every checkpoint interval and on POST /api/v1/checkpoints).

    \b
    Example:
      auditlog --data-dir /var/lib/auditlog checkpoint > gw1.checkpoint
    """
    from auditlog.engine.errors import WriterLockedError
    from auditlog.engine.tree import LogTree, record_tree_head, signed_checkpoint
    from auditlog.engine.writer import WriterLock

    dd = obj.data_dir
    node = dd.open()
    if not dd.sign_key_path.exists() and WriterLock.is_held(dd.lock_path):
        raise KeyFileError(
            f"{dd.root} has no signing key yet (it was made before there were any): "
            "it is created when the writer next starts (serve, append or import)"
        )
    writer = None
    if not WriterLock.is_held(dd.lock_path):
        try:
            writer = obj.writer().open()
        except WriterLockedError:
            writer = None
    if writer is not None:
        try:
            note, _ = record_tree_head(writer)
        finally:
            writer.close()
    else:
        with LogTree(NodeLog(dd, node), node.key, dd) as lt:
            tree = lt.extend(save=False)
        note = signed_checkpoint(node.node_id, dd.signing_key(), tree)
        click.echo(
            "auditlog: warning: the server owns the writer: this checkpoint is not recorded in the log "
            "(POST /api/v1/checkpoints records one)",
            err=True,
        )
    click.echo(note, nl=False)


# -- apikey ---------------------------------------------------------------------------


@cli.group()
def apikey() -> None:
    """API keys for the HTTP API (stored hashed; a key is shown once).

    \b
    Example:
      auditlog apikey create --role reader --name soc-dashboard
    """


_CREATE_OVER_API = (
    "the server is running and owns the writer: manage keys over the API "
    "(POST /api/v1/api-keys with an admin key) so the change is audited"
)
_REVOKE_OVER_API = (
    "the server is running and owns the writer: revoke over the API "
    "(DELETE /api/v1/api-keys/ID with an admin key) so the change is audited"
)


def _key_store(obj: Context, writer=None):
    """The API keys as the log says (query.http.auth.KeyStore); problems found go to stderr."""
    from auditlog.query.http.auth import KeyStore

    node = obj.node() if writer is None else Node(writer.node, writer.key)
    store = KeyStore(node, obj.data_dir.state, writer.log if writer else NodeLog(obj.data_dir, node), writer).load()
    for problem in store.problems:
        click.echo(f"auditlog: warning: {problem}", err=True)
    return store


@contextlib.contextmanager
def _key_store_for_change(obj: Context, refused: str):
    """The key store with the node's writer (keys change through the log); refused
    with ``refused`` while a server owns the writer."""
    from auditlog.engine.errors import WriterLockedError
    from auditlog.engine.writer import WriterLock

    obj.node()
    if WriterLock.is_held(obj.data_dir.lock_path):
        fail(refused)
    try:
        writer = obj.writer().open()
    except WriterLockedError:
        fail(refused)
    try:
        yield _key_store(obj, writer)
    finally:
        writer.close()


@apikey.command("create")
@click.option("--role", required=True, type=click.Choice(["writer", "reader", "admin"]))
@click.option("--name", required=True, help="Who or what uses the key (shown in the audit log).")
@click.pass_obj
@handle_errors
def apikey_create(obj: Context, role: str, name: str) -> None:
    """Create a key; the key is the LAST line of stdout, printed once.

    \b
    Example:
      auditlog apikey create --role writer --name quarantine-service
    """
    from auditlog.query.http.auth import check_name

    obj.node()
    check_name(name)
    with _key_store_for_change(obj, _CREATE_OVER_API) as store:
        rec, token = store.create(name, role, user="cli")
    click.echo(f"created {role} key {rec.id} for {name!r}; store it now, it is not shown again:")
    click.echo(token)


@apikey.command("list")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
@handle_errors
def apikey_list(obj: Context, as_json: bool) -> None:
    """List keys (id, name, role, created, revoked, suspended); never the keys themselves.

    Reads the log (works while a server runs).

    \b
    Example:
      auditlog apikey list
    """
    keys = [k.public() for k in _key_store(obj).list()]
    if as_json:
        click.echo(json.dumps({"keys": keys}, indent=2))
        return
    for k in keys:
        click.echo(
            f"{k['id']}  {k['role']:6s}  {k['name']}  created {k['created']}"
            + (f"  REVOKED {k['revoked']}" if k["revoked"] else "")
            + (f"  SUSPENDED: {k['suspended']}" if k["suspended"] else "")
        )


@apikey.command("revoke")
@click.argument("key_id")
@click.pass_obj
@handle_errors
def apikey_revoke(obj: Context, key_id: str) -> None:
    """Revoke a key by id (it stops working at once).

    \b
    Example:
      auditlog apikey revoke 3f2a9c1b7d4e
    """
    with _key_store_for_change(obj, _REVOKE_OVER_API) as store:
        rec = store.revoke(key_id, user="cli")
    click.echo(f"revoked key {rec.id} ({rec.name})")


# -- cluster ------------------------------------------------------------------------


@cli.group()
def cluster() -> None:
    """Cluster PKI: a private CA and node certificates for the mTLS peer listener.

    \b
    Example:
      auditlog cluster ca-init --out ./ca
      auditlog cluster issue-cert --ca ./ca --node gw1 --san 10.0.0.11 --out ./tls
    """


@cluster.command("ca-init")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Directory for ca.pem and ca.key.")
@handle_errors
def cluster_ca_init(out: str) -> None:
    """Create the cluster CA (ca.pem, ca.key with mode 0600); refuses to overwrite.

    \b
    Example:
      auditlog cluster ca-init --out /etc/auditlog/ca
    """
    from auditlog.query.cluster.pki import ca_init

    cert, key = ca_init(Path(out))
    click.echo(f"wrote {cert} and {key} (keep ca.key offline; it signs node certificates)")


@cluster.command("issue-cert")
@click.option("--ca", "ca_dir", required=True, type=click.Path(file_okay=False), help="Directory of the cluster CA.")
@click.option("--node", required=True, help="Node id the certificate is for.")
@click.option(
    "--san",
    multiple=True,
    metavar="HOST_OR_IP",
    help="Host name or IP peers use to reach this node (repeatable; default 127.0.0.1 and localhost).",
)
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Directory for NODE.pem and NODE.key.")
@click.option(
    "--signing-key",
    type=click.Path(dir_okay=False),
    help="The node's node.pub: the certificate then binds the node id to its signing key, so peers "
    "cosign its checkpoints and the CA certificate alone verifies its bundles.",
)
@handle_errors
def cluster_issue_cert(ca_dir: str, node: str, san: tuple[str, ...], out: str, signing_key: str | None) -> None:
    """Issue a node certificate (NODE.pem, NODE.key with mode 0600) from the cluster CA.

    \b
    Example:
      auditlog cluster issue-cert --ca /etc/auditlog/ca --node gw2 --san gw2.example.net \\
          --signing-key /var/lib/auditlog/node.pub --out /etc/auditlog/tls
    """
    from auditlog.engine.signing import fingerprint, read_public_key
    from auditlog.query.cluster.pki import issue_cert

    public_raw = read_public_key(Path(signing_key)) if signing_key else None
    cert, key = issue_cert(Path(ca_dir), node, list(san), Path(out), signing_key=public_raw)
    click.echo(f"wrote {cert} and {key} for node {node}")
    if public_raw is not None:
        click.echo(f"bound to the signing key {fingerprint(public_raw)}")
    else:
        click.echo("bound to no signing key: peers will not cosign this node's checkpoints (see --signing-key)")


# -- bench --------------------------------------------------------------------------


@cli.command()
@click.option("--quick", is_flag=True, help="Smaller data sets (stated in the output).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Write results as JSON here.")
@click.option("--only", multiple=True, help="Run only these scenarios (repeatable).")
@handle_errors
def bench(quick: bool, json_path: str | None, only: tuple[str, ...]) -> None:
    """Run the benchmarks against the SQLite baseline in the same run.

    \b
    Example:
      auditlog bench --quick --json bench-results.json
    """
    from auditlog.bench.runner import run_bench

    run_bench(quick=quick, json_path=json_path, only=only)


def main() -> None:
    cli(prog_name="auditlog")


if __name__ == "__main__":
    main()
