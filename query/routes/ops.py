"""Operations: health, metrics, verification, cluster status, OpenAPI, the UI root."""

from __future__ import annotations

import json

from aiohttp import web

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
    if scope == "cluster" and service.cluster is not None:
        from query.cluster import cluster_verify
        body = await cluster_verify(service.cluster)
    else:
        from engine.verify import verify_node
        report = await service.run(verify_node, service.data_dir, service.node)
        body = report.to_dict()
        body.pop("node")
        body["nodes"] = {service.node_id: {"status": "ok", "ok": report.ok}}
    if body["violations"]:
        service.metrics.inc("auditlog_integrity_violations_total", len(body["violations"]))
    return web.json_response(body)


async def cluster(request: web.Request) -> web.Response:
    authorize(request, "read")
    service = request.app[SERVICE]
    me = await service.run(service.head_info)
    me["self"] = True
    rows = [me]
    if service.cluster is not None:
        for node, info in (await service.cluster.peer_json("/head")).items():
            if "error" in info:
                rows.append({"node": node, "status": "unreachable", "error": info["error"]})
            else:
                rows.append({**info, "node": node, "status": "ok"})
    policies = {json.dumps(r.get("retention_days")) for r in rows if r.get("status") == "ok"}
    mismatch = len(policies) > 1
    if mismatch:
        for r in rows:
            if r.get("status") == "ok":
                r["retention_mismatch"] = True
    return web.json_response({"node": service.node_id, "nodes": rows, "retention_consistent": not mismatch,
                              "checkpoint_errors": service.cluster.checkpoint_errors if service.cluster else {}})


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
