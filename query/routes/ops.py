"""Operations: health, metrics, verification, cluster status, OpenAPI, the UI root."""

from __future__ import annotations

from aiohttp import web

from engine.entry import format_ts
from query.app import SERVICE, authorize
from query.errors import InvalidFilterError
from query.openapi import openapi_document


async def healthz(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    return web.json_response({"status": "ok", "node": service.node_id})


async def metrics(request: web.Request) -> web.Response:
    return web.Response(text=request.app[SERVICE].metrics.render(),
                        content_type="text/plain", charset="utf-8",
                        headers={"X-Content-Type-Options": "nosniff"})


async def verify(request: web.Request) -> web.Response:
    authorize(request, "read")
    service = request.app[SERVICE]
    for name in request.rel_url.query:
        if name != "scope":
            raise InvalidFilterError(f"unknown query parameter {name[:60]!r} (known: scope)")
    scope = request.rel_url.query.get("scope", "node")
    if scope not in ("node", "cluster"):
        raise InvalidFilterError(f"scope must be node or cluster, got {scope[:20]!r}")
    from engine.verify import verify_node
    report = await service.run(verify_node, service.data_dir, service.node)
    if report.violations:
        service.metrics.inc("auditlog_integrity_violations_total", len(report.violations))
    body = report.to_dict()
    body.pop("node")
    body["nodes"] = {service.node_id: {"status": "ok", "ok": report.ok}}
    return web.json_response(body)


async def cluster(request: web.Request) -> web.Response:
    authorize(request, "read")
    service = request.app[SERVICE]
    head_seq, last_ts = await service.run(service.log.head)
    days = service.store.retention_days
    return web.json_response({"node": service.node_id, "nodes": [{
        "node": service.node_id, "self": True, "status": "ok", "head_seq": head_seq,
        "last_ts": format_ts(last_ts) if last_ts else None,
        "retention_days": "forever" if days is None else days,
        "retention_last_run": service.last_retention,
    }]})


async def openapi(request: web.Request) -> web.Response:
    return web.json_response(openapi_document())


UI_PAGE = """<!doctype html><html lang="en"><meta charset="utf-8"><title>auditlog</title>
<body><h1>auditlog</h1><p>This node serves the audit-log API under <code>/api/v1/</code>;
see <a href="/api/v1/openapi.json">the OpenAPI description</a>.</p></body></html>"""


async def index(request: web.Request) -> web.Response:
    return web.Response(text=UI_PAGE, content_type="text/html")


def setup(app: web.Application) -> None:
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/api/v1/verify", verify)
    app.router.add_get("/api/v1/cluster", cluster)
    app.router.add_get("/api/v1/openapi.json", openapi)
    app.router.add_get("/", index)
