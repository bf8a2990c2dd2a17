"""The peer listener (mutual TLS): node-local scans, head, verify, and the witness's
routes (checkpoints to cosign, the tree answers cluster verification asks for).

Only a client presenting a certificate from the cluster CA gets past the TLS
handshake; on top of that its certificate's node id must be a configured peer.
"""

from __future__ import annotations

import asyncio

import msgpack
import orjson
from aiohttp import web

from auditlog.engine.entry import ENTRY_SUB
from auditlog.engine.identity import node_id_of
from auditlog.query.cluster.peers import entry_to_compact, pack_line_chunk
from auditlog.query.errors import QueryError
from auditlog.query.filters import PARAM_NAMES, Filter
from auditlog.query.http.base import NODE, error_middleware
from auditlog.query.http.chunked import PartsWriter
from auditlog.query.scan import read_node, scan_node
from auditlog.query.sources import LineTaker

CLUSTER: web.AppKey = web.AppKey("cluster", object)
#: request bodies the peer listener takes (each route takes far less)
MAX_PEER_BODY = 1024 * 1024


class PeerForbidden(QueryError):
    http_status = 403


class PeerBodyTooLarge(QueryError):
    http_status = 413


def peer_node(request: web.Request) -> tuple[str, bytes]:
    ssl_obj = request.transport.get_extra_info("ssl_object") if request.transport else None
    cert = ssl_obj.getpeercert() if ssl_obj else None
    der = ssl_obj.getpeercert(binary_form=True) if ssl_obj else None
    node = node_id_of(cert) if cert else None
    cluster = request.app[CLUSTER]
    if node is None or node not in {p.node for p in cluster.settings.peers}:
        raise PeerForbidden(f"certificate node {node!r} is not a configured peer of this node")
    return node, der


async def scan(request: web.Request) -> web.StreamResponse:
    peer_node(request)
    service = request.app[NODE]
    q = request.rel_url.query
    flt = Filter.from_params({k: q.getall(k) for k in PARAM_NAMES if k in q})
    order = q.get("order", "asc")
    if order not in ("asc", "desc"):
        raise QueryError("order must be asc or desc")
    after_seq, after_sub = q.get("after_seq"), q.get("after_sub", str(ENTRY_SUB))
    for name, value in (("after_seq", after_seq), ("after_sub", after_sub)):
        if value is not None and not (value.isascii() and value.isdigit() and len(value) <= 20):
            raise QueryError(f"{name} must be a whole number")
    fmt = q.get("format", "entries")
    if fmt not in ("entries", "lines"):
        raise QueryError("format must be entries or lines")
    after = (int(after_seq), int(after_sub)) if after_seq else None
    resp = web.StreamResponse(headers={"Content-Type": "application/msgpack"})
    PartsWriter.prepare(request, resp)
    await resp.prepare(request)
    body = PartsWriter(request, resp)
    count = 0
    packer = msgpack.Packer(use_bin_type=True)
    if fmt == "lines":
        batches = read_node(service.log, flt, order=order, after=after)
        chunk, args = _line_chunk, (LineTaker(batches, flt.from_us, flt.to_us, order),)
    else:
        gen = scan_node(service.log, flt, order=order, after=after)
        chunk, args = _chunk, (gen, packer)
    loop = asyncio.get_running_loop()
    ahead = loop.run_in_executor(service.executor, chunk, *args)
    try:
        while True:
            batch = await ahead
            if batch is None:
                break
            # the next chunk is read while this one is sent
            ahead = loop.run_in_executor(service.executor, chunk, *args)
            parts, n = batch
            count += n
            await body.write(parts)
        await body.write([packer.pack({"end": {"count": count}})])
        await resp.write_eof()
    except ConnectionError:
        # the calling node stopped reading (its page was full, or it gave up on
        # us): routine for a merge, not a server error
        pass
    finally:
        if not ahead.done():
            await asyncio.wait([ahead])  # the scan is busy in a worker until then
        if not ahead.cancelled():
            ahead.exception()  # a chunk never sent needs no report
    return resp


def _chunk(gen, packer, n: int = 2000):
    out = []
    for e in gen:
        out.append(entry_to_compact(e))
        if len(out) >= n:
            break
    if not out:
        return None
    return [packer.pack({"e": out})], len(out)


def _line_chunk(taker, n: int = 2000):
    got = taker.take(n, joined=False)
    if got is None:
        return None
    ts, lens, parts, bad = got
    return pack_line_chunk(ts, lens, parts, bad), len(ts)


async def head(request: web.Request) -> web.Response:
    peer_node(request)
    service = request.app[NODE]
    return web.json_response(await service.run(service.head_info))


async def verify(request: web.Request) -> web.Response:
    peer_node(request)
    service = request.app[NODE]
    from auditlog.engine.verify import verify_node

    report = await service.run(verify_node, service.data_dir, service.node)
    return web.json_response(report.to_dict())


async def add_checkpoint(request: web.Request) -> web.Response:
    """A peer's checkpoint to cosign (c2sp.org/tlog-witness shape: ``old <size>``, the
    consistency proof, a blank line, the signed note): its cosignature line, or why not
    (JSON ``{"error", "kind", "cosigned_size"}``; 409 with the size to try again from)."""
    node, der = peer_node(request)
    from auditlog.query.cluster.witness import MAX_SUBMISSION, WitnessRefused

    body = await _body(request, MAX_SUBMISSION)
    cluster = request.app[CLUSTER]
    try:
        line = await cluster.witness.add_checkpoint(node, der, body)
    except WitnessRefused as e:
        r = e.refusal
        return web.json_response(
            {"error": r.detail, "kind": r.kind, "cosigned_size": r.witnessed_size}, status=e.http_status
        )
    return web.Response(text=line, content_type="text/plain")


async def tree(request: web.Request) -> web.Response:
    """This node's newest signed checkpoint and the consistency proof to it from
    ``{"old": size}`` (how cluster verification checks what witnesses cosigned)."""
    peer_node(request)
    service = request.app[NODE]
    raw = await _body(request, 1024)
    try:
        old = orjson.loads(raw).get("old")
    except (orjson.JSONDecodeError, AttributeError):
        old = None
    if type(old) is not int or not 0 <= old < 1 << 63:
        raise QueryError('tree body must be {"old": size}')
    return web.json_response(await service.run(service.tree_answer, old))


async def bundle(request: web.Request) -> web.Response:
    """This node's evidence bundle of the filter's entries, its checkpoint cosigned by
    its peers, for a cluster bundle the calling node assembles; recorded as an export."""
    node, _ = peer_node(request)
    service = request.app[NODE]
    q = request.rel_url.query
    flt = Filter.from_params({k: q.getall(k) for k in PARAM_NAMES if k in q})
    built = await service.run(service.make_bundle, flt, asyncio.get_running_loop())
    await service.record(
        "system", "audit.export", target=node, details={**built.export_details(flt), "requested_by": node}
    )
    return web.Response(body=built.data, content_type="application/x-tar", headers={"X-Bundle-SHA256": built.sha256})


async def counts(request: web.Request) -> web.Response:
    """This node's counts of a filter's matches (``query.histogram.node_counts``), per
    bucket of ``interval_us`` when given."""
    peer_node(request)
    service = request.app[NODE]
    q = request.rel_url.query
    flt = Filter.from_params({k: q.getall(k) for k in PARAM_NAMES if k in q})
    raw = q.get("interval_us")
    interval_us = None
    if raw is not None:
        if not (raw.isascii() and raw.isdigit() and 0 < len(raw) <= 15 and int(raw) > 0):
            raise QueryError("interval_us must be a positive whole number")
        interval_us = int(raw)
    from auditlog.query.histogram import node_counts

    return web.json_response(await service.run(node_counts, service.log, flt, interval_us))


async def certificate(request: web.Request) -> web.Response:
    """This node's cluster certificate (PEM): it binds the node id to its signing key."""
    peer_node(request)
    cluster = request.app[CLUSTER]
    service = request.app[NODE]
    pem = await service.run(_read_small, cluster.settings.cert)
    return web.Response(body=pem, content_type="application/x-pem-file")


def _read_small(path: str, limit: int = 64 * 1024) -> bytes:
    with open(path, "rb") as f:
        return f.read(limit)


async def _body(request: web.Request, limit: int) -> bytes:
    """The whole request body, refused (413) past ``limit`` bytes without reading on."""
    too_large = PeerBodyTooLarge(f"request body too large (limit {limit} bytes)")
    if request.content_length is not None and request.content_length > limit:
        raise too_large
    raw = b""
    try:
        while len(raw) <= limit:
            chunk = await request.content.read(limit + 1 - len(raw))  # may return less
            if not chunk:
                break
            raw += chunk
    except web.HTTPRequestEntityTooLarge:
        raise too_large from None
    if len(raw) > limit:
        raise too_large
    return raw


def create_peer_app(service, cluster) -> web.Application:
    app = web.Application(middlewares=[error_middleware], client_max_size=MAX_PEER_BODY)
    app[NODE] = service
    app[CLUSTER] = cluster
    app.router.add_get("/peer/v1/scan", scan)
    app.router.add_get("/peer/v1/head", head)
    app.router.add_get("/peer/v1/verify", verify)
    app.router.add_post("/peer/v1/add-checkpoint", add_checkpoint)
    app.router.add_post("/peer/v1/tree", tree)
    app.router.add_get("/peer/v1/bundle", bundle)
    app.router.add_get("/peer/v1/certificate", certificate)
    app.router.add_get("/peer/v1/counts", counts)
    return app
