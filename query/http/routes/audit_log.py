"""GET /api/v1/audit-log (JSON page or NDJSON stream) and its CSV export."""

from __future__ import annotations

import asyncio
import hashlib
import json
from dataclasses import dataclass

from aiohttp import web

from auditlog.query.cursor import decode_cursor, encode_cursor, filter_fingerprint
from auditlog.query.errors import InvalidFilterError
from auditlog.query.filters import PARAM_NAMES, Filter
from auditlog.query.http.base import NODE, authorize
from auditlog.query.http.chunked import PartsWriter
from auditlog.query.linemerge import merge_lines, node_ranks
from auditlog.query.merge import Source, merge_sources
from auditlog.query.sources import LocalLineSource, LocalSource

PAGE_PARAMS = ("limit", "cursor", "order", "format", "follow")
#: seconds between looks for new entries while following, and between heartbeats
FOLLOW_POLL = 1.0
FOLLOW_HEARTBEAT = 10.0
CHUNK = 2000


def parse_query(request: web.Request, allowed_extra=PAGE_PARAMS):
    """Filter, order, limit and cursor positions from the query string (unknown names refused)."""
    service = request.app[NODE]
    q = request.rel_url.query
    for name in q.keys():
        if name not in PARAM_NAMES and name not in allowed_extra:
            raise InvalidFilterError(
                f"unknown query parameter {name[:60]!r} (known: {', '.join(PARAM_NAMES + tuple(allowed_extra))})"
            )
    params = {k: q.getall(k) for k in PARAM_NAMES if k in q}
    flt = Filter.from_params(params)
    order = q.get("order", "asc")
    if order not in ("asc", "desc"):
        raise InvalidFilterError(f"order must be asc or desc, got {order[:20]!r}")
    limit = None
    if "limit" in q:
        text = q["limit"]
        # isdigit() alone takes "²" (int() refuses it) and 5000-digit strings (int() refuses
        # those too): both were 500s
        if (
            not (text.isascii() and text.isdigit() and len(text) <= 9)
            or not 1 <= int(text) <= service.settings.max_query_limit
        ):
            raise InvalidFilterError(
                f"limit must be a whole number from 1 to {service.settings.max_query_limit}, got {text[:20]!r}"
            )
        limit = int(text)
    fingerprint = filter_fingerprint(flt.to_params(), order)
    positions = decode_cursor(q["cursor"], order, fingerprint) if "cursor" in q else {}
    return flt, order, limit, positions, fingerprint


def open_sources(
    service, flt: Filter, order: str, positions: dict[str, tuple[int, int]], lines: bool = False
) -> list[Source]:
    """One ordered source per node: this node, plus every peer when a cluster is configured
    (``lines``: sources of rendered NDJSON lines, for :func:`query.linemerge.merge_lines`)."""
    if service.cluster is not None:
        return service.cluster.sources(flt, order, positions, lines=lines)
    if not flt.admits_node(service.node_id):
        return []
    local = LocalLineSource if lines else LocalSource
    return [local(service, flt, order, positions.get(service.node_id))]


def node_status(sources: list[Source], service) -> dict:
    nodes = {s.node: dict(s.status) for s in sources}
    if service.cluster is not None:  # nodes excluded by a node filter are still listed
        for n in [service.node_id, *service.cluster.peers]:
            nodes.setdefault(n, {"status": "ok", "skipped": "excluded by the node filter"})
    else:
        nodes.setdefault(service.node_id, {"status": "ok"})
    return nodes


class Merged:
    """The merged stream with its sources, primed so node status is known up front."""

    def __init__(self, sources: list[Source], order: str):
        self.sources = sources
        self.it = merge_sources(sources, order, CHUNK)
        self.first: list | None = None

    async def prime(self) -> None:
        """Wait for every node's first answer (bounded by peer_timeout)."""
        try:
            self.first = await self.it.__anext__()
        except StopAsyncIteration:
            self.first = None

    async def batches(self, limit: int | None = None):
        n = 0
        pending = self.first
        self.first = None
        while pending is not None:
            if limit is not None and n + len(pending) >= limit:
                yield pending[: limit - n]
                return
            n += len(pending)
            yield pending
            try:
                pending = await self.it.__anext__()
            except StopAsyncIteration:
                pending = None

    async def close(self) -> None:
        await self.it.aclose()
        for s in self.sources:
            await s.close()


async def get_audit_log(request: web.Request) -> web.StreamResponse:
    authorize(request, "read")
    service = request.app[NODE]
    flt, order, limit, positions, fp = parse_query(request)
    fmt = request.rel_url.query.get("format")
    if fmt is None and "application/x-ndjson" in request.headers.get("Accept", ""):
        fmt = "ndjson"
    if fmt not in (None, "json", "ndjson", "ecs"):
        raise InvalidFilterError(f"format must be json, ndjson or ecs, got {fmt[:20]!r}")
    service.metrics.inc("auditlog_queries_total", format=fmt or "json")
    if _flag(request.rel_url.query.get("follow", "false"), "follow"):
        if fmt not in (None, "ndjson") or order != "asc" or limit is not None:
            raise InvalidFilterError("follow=true streams NDJSON, oldest first, without a limit")
        return await follow(request, service, flt, positions, fp)
    if fmt == "ndjson":
        return await stream_ndjson(request, service, flt, order, positions, limit)
    merged = Merged(open_sources(service, flt, order, positions), order)
    try:
        await merged.prime()
        if fmt == "ecs":
            return await stream_lines(request, service, merged, limit, ecs=True)
        limit = limit or service.settings.default_query_limit
        page = []
        async for batch in merged.batches(limit + 1):
            page.extend(batch)
        more = len(page) > limit
        page = page[:limit]
        for e in page:
            positions[e.node] = e.position
        nodes = node_status(merged.sources, service)
    finally:
        await merged.close()
    violations = sum(1 for e in page if e.integrity != "ok")
    if violations:
        service.metrics.inc("auditlog_integrity_violations_total", violations)
    return web.json_response(
        {
            "events": [e.to_wire() for e in page],
            "next_cursor": encode_cursor(positions, order, fp) if more else None,
            "nodes": nodes,
            "integrity_violations": violations,
        },
        dumps=lambda o: json.dumps(o, ensure_ascii=False),
    )


async def follow(request, service, flt: Filter, positions: dict, fp: str) -> web.StreamResponse:
    """Entries as they are appended, on every node, as NDJSON, until the client leaves
    (``follow=true``, like ``tail -f``).

    It starts after each node's newest entry (or from ``from``, or from a ``cursor``),
    looks for new entries every ``FOLLOW_POLL`` seconds and writes them in (ts, node,
    seq) order within each look.  After entries, and every ``FOLLOW_HEARTBEAT`` seconds
    when there are none, a line ``{"heartbeat": {"ts", "cursor"}}``: the cursor resumes
    the stream after what was sent.  A node that stops or starts answering says so in a
    ``{"node_status": {...}}`` line."""
    import time

    from auditlog.engine import clock
    from auditlog.engine.entry import ENTRY_SUB, format_ts
    from auditlog.export.ndjson import ndjson_lines

    order = "asc"
    positions = dict(positions)
    if not positions and flt.from_us is None:
        # from now: after each node's newest entry
        heads = {service.node_id: (await service.run(service.head_info))["head_seq"]}
        if service.cluster is not None and service.cluster.peers:
            for node, h in (await service.cluster.peer_json("/head")).items():
                if type(h.get("head_seq")) is int:
                    heads[node] = h["head_seq"]
        positions = {n: (seq, ENTRY_SUB) for n, seq in heads.items() if seq > 0}
    resp = web.StreamResponse(
        headers={"Content-Type": "application/x-ndjson", "Cache-Control": "no-store", "X-Accel-Buffering": "no"}
    )
    await resp.prepare(request)
    status: dict[str, str] = {}
    last_beat = time.monotonic()
    try:
        while not service.stopping:  # a server stopping ends its follows (within FOLLOW_POLL)
            # a read in flight only while it looks (the middleware does not count a follow), so
            # background indexing runs between looks
            service.reads_in_flight += 1
            wrote = False
            try:
                merged = Merged(open_sources(service, flt, order, positions), order)
                try:
                    await merged.prime()
                    async for batch in merged.batches():
                        for e in batch:
                            positions[e.node] = e.position
                        await resp.write(b"".join(ndjson_lines(batch)))
                        wrote = True
                    nodes = node_status(merged.sources, service)
                finally:
                    await merged.close()
            finally:
                service.reads_in_flight -= 1
            for node, st in nodes.items():
                now_status = st.get("status", "ok")
                if status.get(node, "ok") != now_status:
                    line = json.dumps({"node_status": {"node": node, **st}}, ensure_ascii=False)
                    await resp.write(line.encode() + b"\n")
                status[node] = now_status
            if wrote or time.monotonic() - last_beat >= FOLLOW_HEARTBEAT:
                beat = {"ts": format_ts(clock.now_us()), "cursor": encode_cursor(positions, order, fp)}
                await resp.write(json.dumps({"heartbeat": beat}).encode() + b"\n")
                last_beat = time.monotonic()
            await asyncio.sleep(FOLLOW_POLL)
    except ConnectionError:
        pass  # the client left: the end of a follow
    return resp


async def stream_ndjson(
    request, service, flt: Filter, order: str, positions: dict[str, tuple[int, int]], limit: int | None
) -> web.StreamResponse:
    """NDJSON: one entry per line, merged from every node's rendered lines.

    The status header waits for every node's first answer (bounded by
    ``peer_timeout``); nodes not ``ok`` at the end add one
    ``{"node_status": {...}}`` line each, so a reader of the body alone learns
    of a peer lost mid-stream."""
    sources = open_sources(service, flt, order, positions, lines=True)
    merged = merge_lines(sources, order, node_ranks(s.node for s in sources))
    resp = None
    try:
        chunk = await anext(merged, None)
        resp = web.StreamResponse(
            headers={
                "Content-Type": "application/x-ndjson; charset=utf-8",
                "X-Auditlog-Nodes": json.dumps(node_status(sources, service), separators=(",", ":")),
            }
        )
        PartsWriter.prepare(request, resp)
        await resp.prepare(request)
        body = PartsWriter(request, resp)
        sent = 0
        while chunk is not None:
            n, parts = chunk
            if limit is not None and sent + n >= limit:
                # lines hold no LF but their last byte: the first ones are cut at a LF
                lines = b"".join(parts).splitlines(keepends=True)
                await body.write([b"".join(lines[: limit - sent])])
                break
            sent += n
            await body.write(parts)
            chunk = await anext(merged, None)
        violations = sum(s.violations for s in sources)
        if violations:
            service.metrics.inc("auditlog_integrity_violations_total", violations)
        await _write_status_trailer(resp, sources, service)
        await resp.write_eof()
    except ConnectionError:
        if resp is None or not resp.prepared:
            raise
        # the client hung up: routine for a stream, nothing is left to answer
    finally:
        await merged.aclose()
        for s in sources:
            await s.close()
    return resp


async def _write_status_trailer(resp, sources, service) -> None:
    trailer = [
        json.dumps({"node_status": {"node": n, **st}}, separators=(",", ":"))
        for n, st in node_status(sources, service).items()
        if st.get("status") != "ok"
    ]
    if trailer:
        await resp.write(("\n".join(trailer) + "\n").encode("utf-8"))


async def stream_lines(request, service, merged: Merged, limit, ecs: bool = False) -> web.StreamResponse:
    """NDJSON: one entry per line.  Nodes not ``ok`` at the end add one
    ``{"node_status": {...}}`` line each, so a reader of the body alone learns
    of a peer lost mid-stream; the ``X-Auditlog-Nodes`` header has the status
    at the start."""
    from auditlog.export.ecs import iter_ecs
    from auditlog.export.ndjson import iter_ndjson

    render = iter_ecs if ecs else iter_ndjson
    resp = web.StreamResponse(
        headers={
            "Content-Type": "application/x-ndjson; charset=utf-8",
            "X-Auditlog-Nodes": json.dumps(node_status(merged.sources, service), separators=(",", ":")),
        }
    )
    await resp.prepare(request)
    violations = 0
    try:
        async for batch in merged.batches(limit=limit):
            violations += sum(1 for e in batch if e.integrity != "ok")
            await resp.write("".join(render(batch)).encode("utf-8"))
        await _write_status_trailer(resp, merged.sources, service)
        await resp.write_eof()
    except ConnectionError:
        pass  # the client hung up: routine for a stream, nothing is left to answer
    if violations:
        service.metrics.inc("auditlog_integrity_violations_total", violations)
    return resp


async def export_csv(request: web.Request) -> web.StreamResponse:
    """CSV of the whole filtered range; a node that is unreachable, or lost
    mid-stream, adds a final row whose integrity cell says so."""
    key = authorize(request, "read")
    service = request.app[NODE]
    flt, order, limit, positions, fp = parse_query(request, allowed_extra=("order", "bom"))
    bom = _flag(request.rel_url.query.get("bom", "true"), "bom")
    from auditlog.export.csv import iter_csv

    merged = Merged(open_sources(service, flt, order, {}), order)
    rows = violations = 0
    try:
        await merged.prime()
        resp = web.StreamResponse(
            headers={
                "Content-Type": "text/csv; charset=utf-8",
                "Content-Disposition": f'attachment; filename="auditlog-{service.node_id}.csv"',
                "X-Auditlog-Nodes": json.dumps(node_status(merged.sources, service), separators=(",", ":")),
            }
        )
        await resp.prepare(request)
        first = True
        try:
            async for batch in merged.batches():
                violations += sum(1 for e in batch if e.integrity != "ok")
                chunks = list(iter_csv(batch, bom=bom and first))
                if not first:
                    chunks = chunks[1:]  # the header line comes once
                first = False
                await resp.write("".join(chunks).encode("utf-8"))
                rows += len(batch)
            if first:
                await resp.write("".join(iter_csv([], bom=bom)).encode("utf-8"))
            bad = {n: st for n, st in node_status(merged.sources, service).items() if st.get("status") != "ok"}
            if bad:
                await resp.write(unreachable_rows(bad).encode("utf-8"))
            await resp.write_eof()
        except ConnectionError:
            pass  # the client hung up: the export is still recorded, with the rows sent
        nodes = node_status(merged.sources, service)
    finally:
        await merged.close()
    await service.record(
        key.name,
        "audit.export",
        ip=request.remote,
        details={
            "format": "csv",
            "filters": flt.to_params(),
            "rows": rows,
            "integrity_violations": violations,
            "api_key_id": key.id,
            "nodes": {n: st.get("status") for n, st in nodes.items()},
        },
    )
    return resp


def unreachable_rows(bad: dict) -> str:
    import csv
    import io

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\r\n")
    for node, st in bad.items():
        w.writerow(["", node, "", "", "", "", "", "", "", "", "", "", f"unreachable: {st.get('error', '')}"])
    return buf.getvalue()


async def export_pdf(request: web.Request) -> web.Response:
    """PDF report of the filtered entries (GDPR subject access, audit appendix); audited.
    With ``bundle=true`` the evidence bundle of exactly these entries is made first and
    embedded in the PDF, which names its SHA-256 and the checkpoints it rests on."""
    key = authorize(request, "read")
    service = request.app[NODE]
    flt, order, limit, positions, fp = parse_query(request, allowed_extra=("order", "title", "bundle", "signatures"))
    title = request.rel_url.query.get("title", "Audit log report")[:200]
    with_bundle = _flag(request.rel_url.query.get("bundle", "false"), "bundle")
    with_signatures = _flag(request.rel_url.query.get("signatures", "false"), "signatures")
    bundle = await _make_bundle(service, flt) if with_bundle else None
    merged = Merged(open_sources(service, flt, order, {}), order)
    entries = []
    try:
        await merged.prime()
        async for batch in merged.batches(limit=MAX_PDF_ROWS + 1):
            if bundle is not None:  # exactly the bundle's entries: those under each node's checkpoint
                batch = [e for e in batch if e.seq <= bundle.sizes.get(e.node, 0)]
            entries.extend(batch)
        nodes = node_status(merged.sources, service)
    finally:
        await merged.close()
    if len(entries) > MAX_PDF_ROWS:
        raise InvalidFilterError(
            f"more than {MAX_PDF_ROWS} entries match: narrow the filters (or use the CSV export for bulk data)"
        )
    from auditlog.export.pdf import render_pdf

    evidence, attachments = None, ()
    if bundle is not None:
        evidence = bundle.evidence()
        attachments = ((bundle.name, bundle.data),)
    oldest = await _oldest(service, nodes)
    pdf, counts = await service.run(
        lambda: render_pdf(
            entries,
            title=title,
            filters=flt.describe(),
            nodes=nodes,
            generated_by=f"{key.name} (API key {key.id})",
            evidence=evidence,
            attachments=attachments,
            period=(flt.from_us, flt.to_us),
            oldest=oldest,
            signatures=with_signatures,
        )
    )
    await service.record(
        key.name,
        "audit.export",
        ip=request.remote,
        details={
            "format": "pdf",
            "filters": flt.to_params(),
            "rows": counts["rows"],
            "integrity_violations": counts["violations"],
            "api_key_id": key.id,
            "nodes": {n: st.get("status") for n, st in nodes.items()},
            "data_sha256": counts["sha256"],
            **({"bundle_sha256": bundle.sha256, "bundle": bundle.details} if bundle is not None else {}),
        },
    )
    return web.Response(
        body=pdf,
        content_type="application/pdf",
        headers={"Content-Disposition": f'attachment; filename="auditlog-report-{service.node_id}.pdf"'},
    )


async def _oldest(service, nodes: dict) -> dict:
    """Per node that answered: the ts of the oldest entry it holds (retention start)."""
    out = {service.node_id: await service.run(service.oldest_ts)}
    cluster = service.cluster
    if cluster is not None and cluster.peers:
        for node, head in (await cluster.peer_json("/head")).items():
            if nodes.get(node, {}).get("status") == "ok" and type(head.get("oldest_ts_us")) is int:
                out[node] = head["oldest_ts_us"]
    return out


def _flag(value: str, name: str) -> bool:
    if value in ("true", "1"):
        return True
    if value in ("false", "0"):
        return False
    raise InvalidFilterError(f"{name} must be true or false")


@dataclass
class _Bundle:
    data: bytes
    name: str
    details: dict
    #: per node: the size of the checkpoint its entries in the bundle rest on
    sizes: dict[str, int]
    cluster: bool

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    def evidence(self) -> str:
        under = ", ".join(f"{n}: {size} entries" for n, size in sorted(self.sizes.items()))
        check = "--ca ca.pem" if self.cluster else "--key node.pub"
        return (
            f"the evidence bundle {self.name} (SHA-256 {self.sha256}), embedded in this PDF, holds these "
            f"entries with proofs under signed checkpoints ({under}); extract it (pdfdetach -saveall) and "
            f"check it with: auditlog verify-bundle {self.name} {check}"
        )


async def _make_bundle(service, flt) -> _Bundle:
    """The evidence bundle of ``flt``: every node's on a node with peers, else this node's."""
    if service.cluster is not None and service.cluster.peers:
        # every node's bundle, cosigned checkpoints and certificates: verified with the CA
        from auditlog.query.cluster.bundles import build_cluster_bundle

        built = await build_cluster_bundle(service.cluster, flt)
        sizes = {n: p["checkpoint_size"] for n, p in built.details["parts"].items() if p.get("checkpoint_size")}
        return _Bundle(built.data, f"auditlog-cluster-{service.node_id}.bundle", built.details, sizes, True)
    built = await service.run(service.make_bundle, flt)
    sizes = {service.node_id: built.checkpoint_size}
    return _Bundle(built.data, f"auditlog-{service.node_id}.bundle", built.export_details(flt), sizes, False)


async def export_bundle(request: web.Request) -> web.Response:
    """An evidence bundle of this node's matching entries (a tar, FORMAT.md section 15),
    checked offline with the node's public key; audited."""
    key = authorize(request, "read")
    service = request.app[NODE]
    flt, _, _, _, _ = parse_query(request, allowed_extra=())
    built = await _make_bundle(service, flt)
    details = {**built.details, "sha256": built.sha256, "api_key_id": key.id}
    await service.record(key.name, "audit.export", ip=request.remote, details=details)
    return web.Response(
        body=built.data,
        content_type="application/x-tar",
        headers={"Content-Disposition": f'attachment; filename="{built.name}"', "X-Bundle-SHA256": built.sha256},
    )


async def four_eyes_report(request: web.Request) -> web.Response:
    authorize(request, "read")
    service = request.app[NODE]
    q = request.rel_url.query
    for name in q.keys():
        if name not in ("from", "to", "pair", "node"):
            raise InvalidFilterError(f"unknown query parameter {name[:60]!r} (known: from, to, pair, node)")
    from auditlog.export.reports import DEFAULT_PAIRS, FourEyesRule, four_eyes, parse_pairs

    try:
        rules = parse_pairs(q.getall("pair")) if "pair" in q else tuple(FourEyesRule(*p) for p in DEFAULT_PAIRS)
    except ValueError as e:
        raise InvalidFilterError(str(e)) from None
    base = Filter.from_params({k: q.getall(k) for k in ("from", "to", "node") if k in q})
    actions = sorted({r.action for r in rules} | {r.confirm for r in rules})
    # confirmations may come after the range: read from `from` to now
    params = base.to_params()
    params.pop("to", None)
    params["action"] = ",".join(actions)
    flt = Filter.from_params(params)
    merged = Merged(open_sources(service, flt, "asc", {}), "asc")
    entries = []
    try:
        await merged.prime()
        async for batch in merged.batches():
            entries.extend(batch)
        nodes = node_status(merged.sources, service)
    finally:
        await merged.close()
    report = four_eyes(entries, rules, base.from_us, base.to_us)
    report["nodes"] = nodes
    return web.json_response(report)


MAX_PDF_ROWS = 20000


async def not_allowed(request: web.Request) -> web.Response:
    raise web.HTTPMethodNotAllowed(request.method, ["GET"])


async def histogram(request: web.Request) -> web.Response:
    """The filter's matches per ``interval`` over its whole range, from every node,
    counted where they are: ``{"interval", "buckets": [{"start", "count", "nodes"}],
    "count", "violations", "nodes"}``."""
    authorize(request, "read")
    service = request.app[NODE]
    flt, _, _, _, _ = parse_query(request, allowed_extra=("interval",))
    from auditlog.query.histogram import gather, merge, parse_interval

    interval = request.rel_url.query.get("interval")
    if interval is None:
        raise InvalidFilterError("interval is required (like 1h, 15m or 1d)")
    interval_us = parse_interval(interval)
    per_node, nodes = await gather(service, flt, interval_us)
    body = merge(per_node, flt, interval_us, interval)
    body["nodes"] = nodes
    return web.json_response(body)


async def count(request: web.Request) -> web.Response:
    """How many entries match, from every node: ``{"count", "violations", "nodes"}``;
    it reads the matching entries but renders none."""
    authorize(request, "read")
    service = request.app[NODE]
    flt, _, _, _, _ = parse_query(request, allowed_extra=())
    from auditlog.query.histogram import gather, merge

    per_node, nodes = await gather(service, flt, None)
    body = merge(per_node, flt, None, None)
    body["nodes"] = nodes
    return web.json_response(body)


def setup(app: web.Application) -> None:
    app.router.add_get("/api/v1/audit-log", get_audit_log)
    app.router.add_get("/api/v1/audit-log/count", count)
    app.router.add_get("/api/v1/audit-log/histogram", histogram)
    app.router.add_get("/api/v1/audit-log/export.csv", export_csv)
    app.router.add_get("/api/v1/audit-log/export.pdf", export_pdf)
    app.router.add_get("/api/v1/audit-log/export.bundle", export_bundle)
    app.router.add_get("/api/v1/reports/four-eyes", four_eyes_report)
    for path in ("/api/v1/audit-log", "/api/v1/audit-log/{tail:.*}"):
        for m in ("PUT", "PATCH", "DELETE", "POST"):
            app.router.add_route(m, path, not_allowed)
