"""Witnessed checkpoints across the cluster: each node signs its head and hands it
to every peer (``send_checkpoints``, every ``checkpoint_interval``); ``cluster_verify``
checks every node's log and every checkpoint its peers hold of it."""

from __future__ import annotations

import asyncio
import logging

from query.cluster.fanout import Cluster, PeerSource
from query.cluster.peers import PeerError
from query.filters import Filter
from query.merge import Source
from query.sources import LocalSource

log = logging.getLogger("auditlog.cluster")


async def send_checkpoints(cluster: Cluster) -> dict:
    """Sign this node's head and hand it to every peer to witness."""
    from query.cluster.witness import current_head, sign_checkpoint

    svc = cluster.service
    cp = await svc.run(current_head, svc)
    if cp is None or not cluster.peers:
        return {}
    sig = await svc.run(sign_checkpoint, cluster.settings.key, cp)
    results = {}

    async def one(node, client):
        try:
            results[node] = await client.post_json("/checkpoint", {"checkpoint": cp, "witness_signature": sig})
            cluster.checkpoint_errors.pop(node, None)
        except PeerError as e:
            cluster.checkpoint_errors[node] = str(e)
            results[node] = {"error": str(e)}

    await asyncio.gather(*(one(n, c) for n, c in cluster.peers.items()))
    cluster.last_checkpoint = {
        "seq": cp["seq"],
        "ts": cp["ts"],
        "witnessed_by": sorted(n for n, r in results.items() if "error" not in r),
    }
    return results


async def checkpoint_loop(cluster: Cluster) -> None:
    while True:
        await asyncio.sleep(cluster.settings.checkpoint_interval)
        try:
            await send_checkpoints(cluster)
        except Exception:
            log.exception("checkpoint round failed")


async def _signatures(cluster: Cluster, node: str, seqs: list[int]) -> dict:
    """``node``'s answer for ``seqs`` (``Service.signatures_at``); PeerError when a
    peer fails or answers something else."""
    svc = cluster.service
    if node == svc.node_id:
        return await svc.run(svc.signatures_at, seqs)
    ans = await cluster.peers[node].post_json("/signatures", {"seqs": seqs})
    if not (
        isinstance(ans, dict)
        and type(ans.get("head_seq")) is int
        and type(ans.get("first_seq")) is int
        and isinstance(ans.get("sigs"), dict)
    ):
        raise PeerError("bad answer to /signatures")
    return ans


async def _check_witness(cluster: Cluster, about: str, witness: str) -> tuple[list[dict], str | None, str | None]:
    """Every checkpoint about node ``about`` that ``witness`` holds, checked against
    ``about``'s log: (violations, why the witness failed, why ``about`` failed).

    The witness's ``audit.checkpoint`` entries are streamed (its node-local scan,
    oldest first) and checked ``SIGNATURE_BATCH`` at a time, so memory and each
    request to ``about`` stay bounded however many checkpoints there are.
    """
    from query.cluster.witness import SIGNATURE_BATCH, WitnessFindings, checkpoint_of

    svc = cluster.service
    flt = Filter.from_params({"action": "audit.checkpoint", "target": about})
    if witness == svc.node_id:
        src: Source = LocalSource(svc, flt, "asc", None)
    else:
        src = PeerSource(cluster.peers[witness], flt.to_params(), "asc", None)
    findings = WitnessFindings(about, witness)
    pending: list[dict] = []
    about_error = None
    try:
        while True:
            batch = await src.next_batch()
            if batch:
                pending += [cp for cp in (checkpoint_of(e, about) for e in batch) if cp is not None]
            while len(pending) >= SIGNATURE_BATCH or (pending and not batch):
                chunk, pending = pending[:SIGNATURE_BATCH], pending[SIGNATURE_BATCH:]
                answer = await _signatures(cluster, about, sorted({cp["seq"] for cp in chunk}))
                findings.check(chunk, answer)
            if not batch:
                break
    except PeerError as e:
        about_error = str(e)
    finally:
        await src.close()
    witness_error = None if src.status["status"] == "ok" else src.status.get("error", "unreachable")
    return findings.finish(), witness_error, about_error


async def cluster_verify(cluster: Cluster) -> dict:
    """Every node's own verification plus the witness comparison, as one report."""
    from engine.verify import verify_node

    svc = cluster.service
    local = await svc.run(verify_node, svc.data_dir, svc.node)
    nodes: dict[str, dict] = {svc.node_id: {"status": "ok", "ok": local.ok}}
    violations = [v.to_dict() for v in local.violations]
    checked = local.entries_checked
    remote = await cluster.peer_json("/verify")
    for node, rep in remote.items():
        if "error" in rep:
            nodes[node] = {"status": "unreachable", "error": rep["error"]}
            continue
        nodes[node] = {"status": "ok", "ok": rep.get("ok", False)}
        violations += rep.get("violations", [])
        checked += rep.get("entries_checked", 0)
    # a peer that did not answer is not asked again (each wait costs up to peer_timeout)
    down = {n for n, st in nodes.items() if st.get("status") != "ok"}
    everyone = [svc.node_id, *cluster.peers]
    for node in everyone:
        if node in down:
            continue
        witnesses = [w for w in everyone if w != node and w not in down]
        # a node's witnesses are read side by side (each on its own peer)
        results = await asyncio.gather(*(_check_witness(cluster, node, w) for w in witnesses))
        for witness, (found, witness_error, node_error) in zip(witnesses, results):
            violations += found
            if found and nodes[node].get("status") == "ok":
                nodes[node]["ok"] = False
            if witness_error is not None:
                # its checkpoints could not all be read: the check is incomplete
                nodes[witness] = {
                    "status": "unreachable",
                    "error": f"reading its checkpoints of {node}: {witness_error}",
                }
                down.add(witness)
            if node_error is not None:
                nodes[node] = {"status": "unreachable", "error": node_error}
                down.add(node)
    return {
        "ok": not violations and all(n.get("status") == "ok" for n in nodes.values()),
        "entries_checked": checked,
        "violations": violations,
        "nodes": nodes,
    }
