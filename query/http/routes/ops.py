"""Operations: health, metrics, verification, cluster status, OpenAPI, the UI root."""

from __future__ import annotations

import json
from pathlib import Path

from aiohttp import web

from auditlog.query.errors import InvalidFilterError
from auditlog.query.filters import Filter
from auditlog.query.http.base import NODE, authorize
from auditlog.query.http.openapi import openapi_document

#: signed checkpoints one GET /api/v1/checkpoints returns at most
MAX_CHECKPOINTS = 1000


async def healthz(request: web.Request) -> web.Response:
    service = request.app[NODE]
    return web.json_response({"status": "ok", "node": service.node_id})


async def metrics(request: web.Request) -> web.Response:
    return web.Response(
        text=request.app[NODE].metrics.render(),
        content_type="text/plain",
        charset="utf-8",
        headers={"X-Content-Type-Options": "nosniff"},
    )


async def verify(request: web.Request) -> web.Response:
    authorize(request, "read")
    service = request.app[NODE]
    for name in request.rel_url.query:
        if name != "scope":
            raise InvalidFilterError(f"unknown query parameter {name[:60]!r} (known: scope)")
    scope = request.rel_url.query.get("scope", "node")
    if scope not in ("node", "cluster"):
        raise InvalidFilterError(f"scope must be node or cluster, got {scope[:20]!r}")
    if scope == "cluster" and service.cluster is not None:
        from auditlog.query.cluster.checkpoints import cluster_verify

        body = await cluster_verify(service.cluster)
    else:
        from auditlog.engine.verify import verify_node

        report = await service.run(verify_node, service.data_dir, service.node)
        body = report.to_dict()
        body.pop("node")
        body["nodes"] = {service.node_id: {"status": "ok", "ok": report.ok}}
    if body["violations"]:
        service.metrics.inc("auditlog_integrity_violations_total", len(body["violations"]))
    return web.json_response(body)


async def checkpoints(request: web.Request) -> web.Response:
    """The node's newest signed checkpoints (C2SP notes), newest first: the latest, the
    newest ``limit``, or those made in ``from`` .. ``to`` (times as for the audit log)."""
    authorize(request, "read")
    service = request.app[NODE]
    query = request.rel_url.query
    for name in query:
        if name not in ("limit", "from", "to") or len(query.getall(name)) > 1:
            raise InvalidFilterError(f"unknown or repeated query parameter {name[:60]!r} (known: limit, from, to)")
    raw = query.get("limit", "1" if "from" not in query and "to" not in query else str(MAX_CHECKPOINTS))
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_CHECKPOINTS:
        raise InvalidFilterError(f"limit must be a whole number from 1 to {MAX_CHECKPOINTS}, got {raw[:20]!r}")
    window = Filter.from_params({k: query[k] for k in ("from", "to") if k in query})
    return web.json_response(await service.run(service.tree_heads, int(raw), window))


def _whole(query, name: str) -> int:
    raw = query.get(name)
    if raw is None:
        raise InvalidFilterError(f"{name} is required")
    if not raw.isdigit() or len(raw) > 19 or int(raw) < 1:
        raise InvalidFilterError(f"{name} must be a whole number ≥ 1, got {raw[:20]!r}")
    return int(raw)


async def inclusion_proof(request: web.Request) -> web.Response:
    """The inclusion proof of the entry of ``seq`` in the node's tree of ``size`` entries."""
    return await _proof(request, "inclusion")


async def consistency_proof(request: web.Request) -> web.Response:
    """The consistency proof from the node's tree of ``old`` entries to ``new``."""
    return await _proof(request, "consistency")


async def _proof(request: web.Request, kind: str) -> web.Response:
    authorize(request, "read")
    service = request.app[NODE]
    names = ("seq", "size") if kind == "inclusion" else ("old", "new")
    query = request.rel_url.query
    for name in query:
        if name not in names:
            raise InvalidFilterError(f"unknown query parameter {name[:60]!r} (known: {', '.join(names)})")
    a, b = (_whole(query, n) for n in names)
    return web.json_response(await service.run(service.tree_proof, kind, a, b))


async def make_checkpoint(request: web.Request) -> web.Response:
    """Make a signed checkpoint now (admin): 201 with its entry's seq and the note; 409
    when the log has damage (a checkpoint vouches for every entry before it)."""
    authorize(request, "admin")
    service = request.app[NODE]
    if request.rel_url.query:
        raise InvalidFilterError("POST /api/v1/checkpoints takes no query parameters")
    return web.json_response(await service.run(service.record_tree_head), status=201)


async def cluster(request: web.Request) -> web.Response:
    authorize(request, "read")
    service = request.app[NODE]
    me = await service.run(service.head_info)
    me["self"] = True
    rows = [me]
    if service.cluster is not None:
        for node, info in (await service.cluster.peer_json("/head")).items():
            if "error" in info:
                rows.append({"node": node, "status": "unreachable", "error": info["error"]})
            else:
                rows.append({**info, "node": node, "status": "ok"})
    # retention is a cluster-wide policy: flag the nodes that differ from the most common setting
    from collections import Counter

    counts = Counter(json.dumps(r.get("retention_days")) for r in rows if r.get("status") == "ok")
    mismatch = len(counts) > 1
    if mismatch:
        usual = counts.most_common(1)[0][0]
        for r in rows:
            if r.get("status") == "ok" and json.dumps(r.get("retention_days")) != usual:
                r["retention_mismatch"] = True
    return web.json_response(
        {
            "node": service.node_id,
            "nodes": rows,
            "retention_consistent": not mismatch,
            "checkpoint_errors": service.cluster.checkpoint_errors if service.cluster else {},
        }
    )


async def openapi(request: web.Request) -> web.Response:
    return web.json_response(openapi_document())


UI_DIR = Path(__file__).resolve().parent.parent / "ui"
UI_HEADERS = {
    # no inline script, no third-party anything; the key lives in sessionStorage
    "Content-Security-Policy": "default-src 'self'; img-src 'self' blob: data:; style-src 'self'; "
    "script-src 'self'; connect-src 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


async def index(request: web.Request) -> web.Response:
    return web.FileResponse(UI_DIR / "index.html", headers={**UI_HEADERS, "Content-Type": "text/html; charset=utf-8"})


async def whoami(request: web.Request) -> web.Response:
    """The calling key's name and role (for the UI)."""
    key = authenticate_only(request)
    return web.json_response({"name": key.name, "role": key.role, "key_id": key.id, "node": request.app[NODE].node_id})


def authenticate_only(request: web.Request):
    service = request.app[NODE]
    header = request.headers.get("Authorization", "")
    token = header[7:].strip() if header[:7].lower() == "bearer " else None
    return service.keys.authenticate(token)


def setup(app: web.Application) -> None:
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/api/v1/verify", verify)
    app.router.add_get("/api/v1/cluster", cluster)
    app.router.add_get("/api/v1/checkpoints", checkpoints)
    app.router.add_post("/api/v1/checkpoints", make_checkpoint)
    app.router.add_get("/api/v1/proofs/inclusion", inclusion_proof)
    app.router.add_get("/api/v1/proofs/consistency", consistency_proof)
    app.router.add_get("/api/v1/openapi.json", openapi)
    app.router.add_get("/", index)
    app.router.add_get("/api/v1/whoami", whoami)
    app.router.add_static("/ui/", UI_DIR, show_index=False, follow_symlinks=False, append_version=False)
