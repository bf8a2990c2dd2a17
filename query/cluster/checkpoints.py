"""Cosigned checkpoints across the cluster: each node hands its newest signed
checkpoint to every peer to cosign (``cosign_round``, every
``checkpoint_interval``); ``cluster_verify`` checks every node's log and every
tree its witnesses cosigned of it (``query.cluster.witness``)."""

from __future__ import annotations

import asyncio
import logging

import orjson

from auditlog.engine.cosign import witness_name
from auditlog.engine.note import Checkpoint, NoteError, parse
from auditlog.engine.tree import TreeError
from auditlog.query.cluster.fanout import Cluster, PeerSource
from auditlog.query.cluster.peers import PeerError
from auditlog.query.filters import Filter
from auditlog.query.merge import Source
from auditlog.query.sources import LocalSource

log = logging.getLogger("auditlog.cluster")


async def _submit(cluster: Cluster, node: str, note: str, size: int) -> str:
    """Have peer ``node`` cosign ``note`` (of ``size`` entries): its cosignature line;
    PeerError with the reason when it does not."""
    from auditlog.query.cluster.witness import submission

    svc, client = cluster.service, cluster.peers[node]
    old = cluster.cosigned_size.get(node, 0)
    for _ in range(2):
        proof: list[bytes] = []
        if 0 < old < size:
            try:
                got = await svc.run(svc.tree_proof, "consistency", old, size)
            except TreeError as e:
                raise PeerError(f"no consistency proof from {old} entries: {e}") from None
            proof = [bytes.fromhex(h) for h in got["proof"]]
        status, body = await client.post("/add-checkpoint", submission(old, proof, note), "text/plain")
        if status == 200:
            line = body.decode("utf-8", "replace")
            try:
                sigs = parse(note + line)[1]
            except NoteError:
                sigs = []
            if not (
                len(sigs) == len(parse(note)[1]) + 1
                and sigs[-1].name == witness_name(node)
                and len(sigs[-1].signature) == 8 + 64
            ):
                raise PeerError("answered something else than one cosignature line")
            cluster.cosigned_size[node] = size
            return line
        try:
            why = orjson.loads(body)
        except orjson.JSONDecodeError:
            why = {}
        if not isinstance(why, dict):
            why = {}
        if status == 409 and why.get("kind") == "stale_old" and type(why.get("cosigned_size")) is int:
            old = cluster.cosigned_size[node] = why["cosigned_size"]
            continue  # again, from the size the witness last cosigned
        raise PeerError(f"refused to cosign ({why.get('kind', f'HTTP {status}')}): {why.get('error', body[:200])}")
    raise PeerError("refused to cosign: its last cosigned size keeps changing")


async def cosign_round(cluster: Cluster, note: str | None = None) -> dict[str, str]:
    """Hand this node's newest signed checkpoint (or ``note``) to every peer to cosign;
    ``{peer: cosignature line}`` of those that did."""
    svc = cluster.service
    if note is None:
        try:
            note = await svc.run(svc.newest_checkpoint)
        except TreeError as e:
            # nothing to hand over: the tree cannot vouch for the log (tree_head_job logs it)
            cluster.checkpoint_errors = {p: f"no signed checkpoint to hand over: {e}" for p in cluster.peers}
            cluster.last_checkpoint = {"error": str(e), "cosigned_by": []}
            return {}
    if note is None or not cluster.peers:
        return {}
    cp = Checkpoint.parse(parse(note)[0])
    lines: dict[str, str] = {}

    async def one(node: str) -> None:
        try:
            lines[node] = await _submit(cluster, node, note, cp.size)
            cluster.cosignatures[node] = (cp.size, lines[node])
            cluster.checkpoint_errors.pop(node, None)
        except PeerError as e:
            cluster.checkpoint_errors[node] = str(e)

    await asyncio.gather(*(one(n) for n in cluster.peers))
    cluster.last_checkpoint = {"size": cp.size, "root": cp.root.hex(), "cosigned_by": sorted(lines)}
    return lines


async def checkpoint_loop(cluster: Cluster) -> None:
    while True:
        await asyncio.sleep(cluster.settings.checkpoint_interval)
        try:
            await cosign_round(cluster)
        except Exception:
            log.exception("cosigning round failed")


async def _records(cluster: Cluster, witness: str, action: str, about: str, order: str):
    """``witness``'s entries of ``action`` about node ``about``, in batches; the source is
    returned last (its status says whether the witness answered in full)."""
    svc = cluster.service
    flt = Filter.from_params({"action": action, "target": about})
    if witness == svc.node_id:
        src: Source = LocalSource(svc, flt, order, None)
    else:
        src = PeerSource(cluster.peers[witness], flt.to_params(), order, None)
    return src


async def _tree_answer(cluster: Cluster, node: str, old: int) -> dict:
    svc = cluster.service
    if node == svc.node_id:
        return await svc.run(svc.tree_answer, old)
    ans = await cluster.peers[node].post_json("/tree", {"old": old})
    if not isinstance(ans, dict) or not (
        isinstance(ans.get("error"), str)
        or (isinstance(ans.get("checkpoint"), str) and isinstance(ans.get("proof"), list))
    ):
        raise PeerError("bad answer to /tree")
    return ans


async def _check_witness(cluster: Cluster, about: str, witness: str) -> tuple[list[dict], str | None, str | None]:
    """What ``witness`` holds of node ``about``, checked against ``about``'s tree:
    (violations, why the witness failed, why ``about`` failed)."""
    from auditlog.query.cluster.witness import COSIGNED_ACTION, REFUSED_ACTION, ClusterFindings, cosigned_of, refusal_of

    findings = ClusterFindings(about, witness)
    newest = None
    src = await _records(cluster, witness, COSIGNED_ACTION, about, "desc")
    try:
        while newest is None:
            batch = await src.next_batch()
            if not batch:
                break
            newest = next((c for c in (cosigned_of(e, about) for e in batch) if c is not None), None)
    finally:
        await src.close()
    witness_error = None if src.status["status"] == "ok" else src.status.get("error", "unreachable")
    if witness_error is None:
        src = await _records(cluster, witness, REFUSED_ACTION, about, "asc")
        try:
            while batch := await src.next_batch():
                for e in batch:
                    r = refusal_of(e, about)
                    if r is not None:
                        findings.refusal(r)
        finally:
            await src.close()
        if src.status["status"] != "ok":
            witness_error = src.status.get("error", "unreachable")
    violations = findings.violations()
    about_error = None
    if newest is not None:
        try:
            answer = await _tree_answer(cluster, about, newest["size"])
        except PeerError as e:
            about_error = str(e)
        except Exception as e:  # the node's own tree could not answer (damage)
            violations.append(findings._v("witness_mismatch", 1, newest["size"], f"no tree to check against: {e}"))
        else:
            v = findings.check_head(newest, answer)
            if v is not None:
                violations.append(v)
    return violations, witness_error, about_error


async def cluster_verify(cluster: Cluster) -> dict:
    """Every node's own verification plus what its witnesses cosigned and refused, as one report."""
    from auditlog.engine.verify import verify_node

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
                # its records could not all be read: the check is incomplete
                nodes[witness] = {"status": "unreachable", "error": f"reading its records of {node}: {witness_error}"}
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
