"""A cluster evidence bundle (``export.cluster_bundle``): this node's bundle and every
peer's (``/peer/v1/bundle``), each checkpoint cosigned by the node's peers, with every
node's certificate (``/peer/v1/certificate``), so that the cluster CA certificate
alone verifies it.  A peer that gives no bundle is named in the manifest."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

from auditlog.export.cluster_bundle import part_summary, write_cluster_bundle
from auditlog.query.cluster.fanout import Cluster
from auditlog.query.cluster.peers import PeerError
from auditlog.query.filters import Filter

#: a peer's bundle is built before it is sent: seconds it may take
PEER_BUNDLE_WAIT = 300.0
MAX_PART_BYTES = 1024**3
MAX_CERT_BYTES = 64 * 1024


@dataclass
class BuiltClusterBundle:
    data: bytes
    details: dict

    @property
    def sha256(self) -> str:
        import hashlib

        return hashlib.sha256(self.data).hexdigest()


async def build_cluster_bundle(cluster: Cluster, flt: Filter) -> BuiltClusterBundle:
    svc = cluster.service
    me = svc.node_id
    loop = asyncio.get_running_loop()
    certs: dict[str, bytes] = {me: await svc.run(Path(cluster.settings.cert).read_bytes)}
    parts: dict[str, bytes] = {}
    unreachable: dict[str, str] = {}

    async def local() -> None:
        if flt.admits_node(me):
            built = await svc.run(svc.make_bundle, flt, loop)
            parts[me] = built.data

    async def peer(node: str) -> None:
        client = cluster.peers[node]
        try:
            certs[node] = (await client.get_bytes("/certificate", limit=MAX_CERT_BYTES))[0]
            if flt.admits_node(node):
                parts[node] = (
                    await client.get_bytes("/bundle", flt.to_params(), limit=MAX_PART_BYTES, wait=PEER_BUNDLE_WAIT)
                )[0]
        except PeerError as e:
            if flt.admits_node(node):
                unreachable[node] = str(e)

    await asyncio.gather(local(), *(peer(n) for n in cluster.peers))
    data = await svc.run(write_cluster_bundle, me, svc.writer.signing_key, flt.to_params(), parts, certs, unreachable)
    summaries = {n: part_summary(p) for n, p in parts.items()}
    details = {
        "format": "bundle",
        "filters": flt.to_params(),
        "rows": sum(s.get("entries", 0) for s in summaries.values()),
        "integrity_violations": 0,
        "nodes": {n: ("unreachable" if n in unreachable else "ok") for n in sorted(set(parts) | set(unreachable))},
        "parts": {
            n: {"claim": s.get("claim"), "checkpoint_size": s.get("checkpoint_size"), "entries": s.get("entries")}
            for n, s in summaries.items()
        },
    }
    return BuiltClusterBundle(data, details)
