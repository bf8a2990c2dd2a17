"""GET /api/v1/audit-log (JSON page or NDJSON stream) and its CSV export."""

from __future__ import annotations

import json

from aiohttp import web

from engine.entry import EntryDraft
from query.app import SERVICE, authorize
from query.cursor import decode_cursor, encode_cursor, filter_fingerprint
from query.errors import InvalidFilterError
from query.filters import PARAM_NAMES, Filter
from query.merge import merge_streams
from query.scan import scan_node

PAGE_PARAMS = ("limit", "cursor", "order", "format")
CHUNK = 2000


def parse_query(request: web.Request, allowed_extra=PAGE_PARAMS):
    """Filter, order, limit and cursor positions from the query string (unknown names refused)."""
    service = request.app[SERVICE]
    q = request.rel_url.query
    for name in q.keys():
        if name not in PARAM_NAMES and name not in allowed_extra:
            raise InvalidFilterError(f"unknown query parameter {name[:60]!r} "
                                     f"(known: {', '.join(PARAM_NAMES + tuple(allowed_extra))})")
    params = {k: q.getall(k) for k in PARAM_NAMES if k in q}
    flt = Filter.from_params(params)
    order = q.get("order", "asc")
    if order not in ("asc", "desc"):
        raise InvalidFilterError(f"order must be asc or desc, got {order[:20]!r}")
    limit = None
    if "limit" in q:
        text = q["limit"]
        if not text.isdigit() or not 1 <= int(text) <= service.settings.max_query_limit:
            raise InvalidFilterError(
                f"limit must be a whole number from 1 to {service.settings.max_query_limit}, got {text[:20]!r}")
        limit = int(text)
    fingerprint = filter_fingerprint(flt.to_params(), order)
    positions = decode_cursor(q["cursor"], order, fingerprint) if "cursor" in q else {}
    return flt, order, limit, positions, fingerprint


def open_streams(service, flt: Filter, order: str, positions: dict[str, int]):
    """Per-node ordered streams and their status (this node only, until peers are configured)."""
    streams = [scan_node(service.log, flt, order=order, after_seq=positions.get(service.node_id))]
    nodes = {service.node_id: {"status": "ok"}}
    return merge_streams(streams, order), nodes


def take(it, n: int) -> list:
    out = []
    for e in it:
        out.append(e)
        if len(out) >= n:
            break
    return out


async def get_audit_log(request: web.Request) -> web.StreamResponse:
    authorize(request, "read")
    service = request.app[SERVICE]
    flt, order, limit, positions, fp = parse_query(request)
    fmt = request.rel_url.query.get("format")
    if fmt is None and "application/x-ndjson" in request.headers.get("Accept", ""):
        fmt = "ndjson"
    if fmt not in (None, "json", "ndjson", "ecs"):
        raise InvalidFilterError(f"format must be json, ndjson or ecs, got {fmt[:20]!r}")
    if fmt == "ecs":
        raise InvalidFilterError("format=ecs is not available on this server version")
    service.metrics.inc("auditlog_queries_total", format=fmt or "json")
    merged, nodes = open_streams(service, flt, order, positions)
    if fmt == "ndjson":
        return await stream_ndjson(request, service, merged, limit, nodes)
    limit = limit or service.settings.default_query_limit
    page = await service.run(take, merged, limit + 1)
    more = len(page) > limit
    page = page[:limit]
    for e in page:
        positions[e.node] = e.seq
    violations = sum(1 for e in page if e.integrity != "ok")
    if violations:
        service.metrics.inc("auditlog_integrity_violations_total", violations)
    return web.json_response({
        "events": [e.to_wire() for e in page],
        "next_cursor": encode_cursor(positions, order, fp) if more else None,
        "nodes": nodes,
        "integrity_violations": violations,
    }, dumps=lambda o: json.dumps(o, ensure_ascii=False))


async def stream_ndjson(request, service, merged, limit, nodes) -> web.StreamResponse:
    from export.ndjson import iter_ndjson
    resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson; charset=utf-8",
                                       "X-Auditlog-Nodes": json.dumps(nodes, separators=(",", ":"))})
    await resp.prepare(request)
    counter = {"n": 0, "v": 0}

    def counted():
        for e in merged:
            if limit is not None and counter["n"] >= limit:
                return
            counter["n"] += 1
            if e.integrity != "ok":
                counter["v"] += 1
            yield e

    chunks = iter_ndjson(counted())
    while True:
        batch = await service.run(_take_chunks, chunks)
        if not batch:
            break
        await resp.write(batch.encode("utf-8"))
    if counter["v"]:
        service.metrics.inc("auditlog_integrity_violations_total", counter["v"])
    await resp.write_eof()
    return resp


def _take_chunks(chunks, budget: int = 256 * 1024) -> str:
    out, size = [], 0
    for c in chunks:
        out.append(c)
        size += len(c)
        if size >= budget:
            break
    return "".join(out)


async def export_csv(request: web.Request) -> web.StreamResponse:
    key = authorize(request, "read")
    service = request.app[SERVICE]
    flt, order, limit, positions, fp = parse_query(request, allowed_extra=("order",))
    from export.csv import iter_csv
    merged, nodes = open_streams(service, flt, order, {})
    counter = {"n": 0, "v": 0}

    def counted():
        for e in merged:
            counter["n"] += 1
            if e.integrity != "ok":
                counter["v"] += 1
            yield e

    resp = web.StreamResponse(headers={
        "Content-Type": "text/csv; charset=utf-8",
        "Content-Disposition": f'attachment; filename="auditlog-{service.node_id}.csv"'})
    await resp.prepare(request)
    chunks = iter_csv(counted())
    while True:
        batch = await service.run(_take_chunks, chunks)
        if not batch:
            break
        await resp.write(batch.encode("utf-8"))
    await resp.write_eof()
    await service.record(key.name, "audit.export", ip=request.remote, details={
        "format": "csv", "filters": flt.to_params(), "rows": counter["n"],
        "integrity_violations": counter["v"], "api_key_id": key.id})
    return resp


async def not_allowed(request: web.Request) -> web.Response:
    raise web.HTTPMethodNotAllowed(request.method, ["GET"])


def setup(app: web.Application) -> None:
    app.router.add_get("/api/v1/audit-log", get_audit_log)
    app.router.add_get("/api/v1/audit-log/export.csv", export_csv)
    for path in ("/api/v1/audit-log", "/api/v1/audit-log/{tail:.*}"):
        for m in ("PUT", "PATCH", "DELETE", "POST"):
            app.router.add_route(m, path, not_allowed)
