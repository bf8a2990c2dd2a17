"""The peer listener (mutual TLS): node-local scans, head, signatures, checkpoints.

Only a client presenting a certificate from the cluster CA gets past the TLS
handshake; on top of that its certificate's node id must be a configured peer.
"""

from __future__ import annotations

import asyncio

import msgpack
import orjson
from aiohttp import web

from engine.entry import ENTRY_SUB
from query.cluster.peers import entry_to_compact, pack_line_chunk
from query.cluster.pki import node_id_of
from query.errors import QueryError
from query.filters import PARAM_NAMES, Filter
from query.http.base import NODE, error_middleware
from query.http.chunked import PartsWriter
from query.scan import read_node, scan_node
from query.sources import LineTaker

CLUSTER: web.AppKey = web.AppKey("cluster", object)
MAX_SIGNATURE_SEQS = 10000
#: request bodies the peer listener takes (a signature request of
#: MAX_SIGNATURE_SEQS seqs is a small fraction of it)
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
    from engine.verify import verify_node

    report = await service.run(verify_node, service.data_dir, service.node)
    return web.json_response(report.to_dict())


async def signatures(request: web.Request) -> web.Response:
    """Signatures of the entries at the given seqs (for witness checks).

    ``POST`` with a JSON body ``{"seqs": [...]}`` (how nodes ask); ``GET
    ?seqs=1,2,3`` is still answered for nodes of earlier versions (its request
    line bounds it to about a thousand seqs).  At most ``MAX_SIGNATURE_SEQS``
    seqs either way."""
    peer_node(request)
    service = request.app[NODE]
    if request.method == "POST":
        seqs = await _posted_seqs(request)
    else:
        raw = request.rel_url.query.get("seqs", "")
        parts = [s for s in raw.split(",") if s]
        if not all(s.isascii() and s.isdigit() for s in parts):
            raise QueryError("seqs must be comma-separated whole numbers")
        seqs = [int(s) for s in parts]
    if len(seqs) > MAX_SIGNATURE_SEQS:
        raise QueryError(f"at most {MAX_SIGNATURE_SEQS} seqs per request, not {len(seqs)}")
    return web.json_response(await service.run(service.signatures_at, seqs))


async def _posted_seqs(request: web.Request) -> list[int]:
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise PeerBodyTooLarge(f"request body too large (limit {MAX_PEER_BODY} bytes)") from None
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        raise QueryError(f"signatures body is not JSON: {e}"[:200]) from None
    seqs = body.get("seqs") if isinstance(body, dict) else None
    if not isinstance(seqs, list):
        raise QueryError('signatures body must be {"seqs": [whole numbers]}')
    if len(seqs) > MAX_SIGNATURE_SEQS:
        raise QueryError(f"at most {MAX_SIGNATURE_SEQS} seqs per request, not {len(seqs)}")
    if not all(type(s) is int and 0 <= s < 1 << 63 for s in seqs):
        raise QueryError("seqs must be whole numbers")
    return seqs


async def checkpoint(request: web.Request) -> web.Response:
    node, der = peer_node(request)
    service = request.app[NODE]
    try:
        body = await request.json()
        cp, sig = body["checkpoint"], body["witness_signature"]
        ok = (
            isinstance(cp, dict)
            and cp.get("node") == node
            and type(cp.get("seq")) is int
            and isinstance(cp.get("signature"), str)
            and len(cp["signature"]) == 64
            and isinstance(cp.get("ts"), str)
            and isinstance(sig, str)
            and len(sig) < 400
        )
    except (ValueError, KeyError, TypeError):
        ok = False
    if not ok:
        raise QueryError(
            "checkpoint body must be {checkpoint: {node, seq, signature, ts}, witness_signature} for the calling node"
        )
    from query.cluster.witness import verify_checkpoint, witness_draft

    verify_checkpoint(der, cp, sig)
    res = await service.committer.append([witness_draft(cp, sig, der)])
    return web.json_response({"witnessed_by": service.node_id, "id": f"{service.node_id}:{res.first_seq}"}, status=201)


def create_peer_app(service, cluster) -> web.Application:
    app = web.Application(middlewares=[error_middleware], client_max_size=MAX_PEER_BODY)
    app[NODE] = service
    app[CLUSTER] = cluster
    app.router.add_get("/peer/v1/scan", scan)
    app.router.add_get("/peer/v1/head", head)
    app.router.add_get("/peer/v1/verify", verify)
    app.router.add_get("/peer/v1/signatures", signatures)
    app.router.add_post("/peer/v1/signatures", signatures)
    app.router.add_post("/peer/v1/checkpoint", checkpoint)
    return app
