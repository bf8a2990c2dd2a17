"""The cluster as one node sees it: its peers, fan-out reads, heads, membership.

Nothing is replicated.  A read on any node scans its own log and asks every
peer (over mutual TLS) for its node-local scan, then merges the streams.  A
peer that refuses, times out or fails mid-stream is reported ``unreachable``
with the reason; the answer still comes, after at most ``peer_timeout``.
"""

from __future__ import annotations

import asyncio
import logging
from array import array
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from engine.entry import Entry, EntryDraft
from engine.items import VerifiedFrame
from engine.lines import LEN_CODE, line_marks
from export.csv import TimestampFormatter
from export.ndjson import ndjson_lines, record_lines
from query.filters import Filter
from query.linemerge import LineSource
from query.merge import Source
from query.peers import PeerClient, PeerConfig, PeerError
from query.scan import read_node, scan_node

log = logging.getLogger("auditlog.cluster")
#: where earlier versions kept the known peers (now derived from the log)
LEGACY_MEMBERS_FILE = "cluster_members.json"
_MEMBERSHIP = frozenset({"cluster.node_join", "cluster.node_leave"})


def known_members(node_log) -> set[str]:
    """The peers this node's own intact ``cluster.node_join``/``node_leave`` entries
    (user ``system``, ``via: config``, as ``record_membership`` writes them) leave joined."""
    known: set[str] = set()
    for e in node_log.scan(terms={"action": _MEMBERSHIP}, predicate=lambda e: e.action in _MEMBERSHIP):
        d = e.details
        if e.integrity != "ok" or e.user != "system" or not isinstance(d, dict) \
                or d.get("via") != "config" or d.get("node") != e.target or not isinstance(e.target, str):
            continue
        if e.action == "cluster.node_join":
            known.add(e.target)
        else:
            known.discard(e.target)
    return known


@dataclass(frozen=True)
class ClusterSettings:
    listen: str | None = None
    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    peer_timeout: float = 2.0
    checkpoint_interval: float = 60.0
    peers: tuple[PeerConfig, ...] = field(default_factory=tuple)

    @property
    def enabled(self) -> bool:
        return self.listen is not None or bool(self.peers)


class LocalSource(Source):
    def __init__(self, service, flt: Filter, order: str, after: tuple[int, int] | None, batch: int = 1000):
        super().__init__(service.node_id)
        self.service = service
        self.gen = scan_node(service.log, flt, order=order, after=after)
        self.batch = batch

    async def next_batch(self) -> list[Entry] | None:
        return await self.service.run(_take, self.gen, self.batch) or None


def _take(gen, n: int) -> list:
    out = []
    for e in gen:
        out.append(e)
        if len(out) >= n:
            break
    return out


class LocalLineSource(LineSource):
    """This node's part of an NDJSON answer, scanned and rendered in a worker thread,
    one chunk ahead: the next chunk is read while this one is merged and sent."""

    def __init__(self, service, flt: Filter, order: str, after: tuple[int, int] | None, batch: int = 2000):
        super().__init__(service.node_id)
        self.service = service
        self.taker = LineTaker(service.log, read_node(service.log, flt, order=order, after=after),
                               flt.from_us, flt.to_us, order)
        self.batch = batch
        self._ahead: asyncio.Future | None = None

    def _read_ahead(self) -> None:
        self._ahead = asyncio.get_running_loop().run_in_executor(
            self.service.executor, _take_marked, self.taker, self.batch)

    async def next_lines(self):
        if self._ahead is None:
            self._read_ahead()
        got = await self._ahead
        self._ahead = None
        if got is None:
            return None
        self._read_ahead()
        ts, marks, blob, bad = got
        self.violations += bad
        return ts, marks, blob

    async def close(self) -> None:
        # the scan generator is busy in a worker until its chunk is done
        if self._ahead is not None:
            ahead, self._ahead = self._ahead, None
            try:
                await ahead
            except Exception:
                pass


def _take_marked(taker: "LineTaker", n: int):
    got = taker.take(n)
    return None if got is None else (got[0], line_marks(got[1]), got[2], got[3])


class LineTaker:
    """One node's read (``query.scan.read_node``) as NDJSON lines, chunk by chunk.

    The one path from the reader's items to lines: a whole verified frame is
    rendered from its records, or taken from the segment's line file when the
    log keeps them (``engine.lines``: a block is used only for the very frame,
    by MAC, that has just verified); a part of a frame and damage (flagged
    entries, markers placed in the window) are rendered entry by entry.
    """

    def __init__(self, log, items, from_us: int | None, to_us: int | None, order: str):
        self.items = items
        self.node = log.node
        self.lines = log.line_files
        self.lo, self.hi = from_us, to_us
        self.desc = order == "desc"
        self.timestamps = TimestampFormatter().format
        self._segment = None
        self._last: int | None = None     # ts of the last line handed out

    def take(self, n: int, *, joined: bool = True
             ) -> tuple[list[int], array, bytes | list[bytes], int] | None:
        """At least ``n`` entries (or the rest) as (timestamps, line lengths, the lines
        as one blob, non-ok count); ``joined=False``: the lines as a list of blobs."""
        ts: list[int] = []
        lens = array(LEN_CODE)
        parts: list[bytes] = []
        bad = 0
        timestamps = self.timestamps
        for item in self.items:
            if type(item) is VerifiedFrame:
                if item.whole:
                    if self.lines is not None:
                        if item.path != self._segment:
                            self._segment = item.path
                            self.lines.begin(item.path)
                        try:
                            r = self.lines.frame(item.path, item.ordinal, item.offset, item.end, item.mac,
                                                 item.stored_records)
                        except (ValueError, TypeError, IndexError):
                            r = None
                        if r is not None:
                            if self.desc:
                                r = r.reversed()
                            ts += r.ts
                            lens += r.lens
                            parts.append(r.blob)
                            if len(ts) >= n:
                                break
                            continue
                    recs = item.records()
                    ts += [r[1] for r in recs]
                    lines = record_lines(self.node, recs, timestamps)
                else:
                    entries = item.entries()
                    ts += [e.ts for e in entries]
                    lines = ndjson_lines(entries, timestamps)
            else:
                entries = item.as_entries(self.lo, self.hi, ts[-1] if ts else self._last, self.desc)
                ts += [e.ts for e in entries]
                lines = ndjson_lines(entries, timestamps)
                bad += len(entries)
            lens.extend(map(len, lines))
            parts.append(b"".join(lines))
            if len(ts) >= n:
                break
        if not ts:
            return None
        self._last = ts[-1]
        return ts, lens, b"".join(parts) if joined else parts, bad


class _PeerStream:
    """A peer's scan stream pulled item by item: None at its end, and None on
    failure, with the reason in the source's status."""

    agen: object
    done = False

    async def _pull(self):
        if self.done:
            return None
        try:
            return await self.agen.__anext__()
        except StopAsyncIteration:
            self.done = True
            return None
        except PeerError as e:
            self.done = True
            self.fail(str(e) if not self.consumed else f"lost mid-stream after {self.consumed} entries: {e}")
            return None

    async def close(self) -> None:
        await self.agen.aclose()


class PeerLineSource(_PeerStream, LineSource):
    def __init__(self, client: PeerClient, params: dict, order: str, after: tuple[int, int] | None):
        super().__init__(client.node)
        self.agen = client.scan_lines(params, order, after)

    async def next_lines(self):
        got = await self._pull()
        if got is None:
            return None
        ts, marks, blob, bad = got
        self.violations += bad
        return ts, marks, blob


class PeerSource(_PeerStream, Source):
    def __init__(self, client: PeerClient, params: dict, order: str, after: tuple[int, int] | None):
        super().__init__(client.node)
        self.agen = client.scan(params, order, after)

    async def next_batch(self) -> list[Entry] | None:
        return await self._pull()


class Cluster:
    def __init__(self, service, settings: ClusterSettings):
        self.service = service
        self.settings = settings
        self.session: aiohttp.ClientSession | None = None
        self.peers: dict[str, PeerClient] = {}
        self.client_ssl = None
        self.last_checkpoint: dict | None = None
        self.checkpoint_errors: dict[str, str] = {}

    async def start(self) -> None:
        from query.pki import client_context
        s = self.settings
        if s.peers:
            self.client_ssl = client_context(s.ca, s.cert, s.key)
            self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=self.client_ssl, limit=64))
            self.peers = {p.node: PeerClient(p, self.session, s.peer_timeout) for p in s.peers}
        await self.service.run(self.record_membership)

    async def stop(self) -> None:
        if self.session is not None:
            await self.session.close()

    def record_membership(self) -> None:
        """``cluster.node_join``/``node_leave`` when a peer first appears in or leaves the config.

        The peers known so far are what this node's own earlier join and leave
        entries say (no file beside the log to edit); the members file of
        earlier versions is removed.
        """
        known = known_members(self.service.log)
        now = {p.node for p in self.settings.peers}
        drafts = [EntryDraft("system", "cluster.node_join", n, details={"node": n, "via": "config"})
                  for n in sorted(now - known)]
        drafts += [EntryDraft("system", "cluster.node_leave", n, details={"node": n, "via": "config"})
                   for n in sorted(known - now)]
        if drafts:
            self.service.writer.append_batch(drafts)
        try:
            (self.service.data_dir.state / LEGACY_MEMBERS_FILE).unlink()
        except FileNotFoundError:
            pass

    def sources(self, flt: Filter, order: str, positions: dict[str, tuple[int, int]],
                lines: bool = False) -> list[Source]:
        """One source per node the filter admits; ``lines`` for NDJSON line sources."""
        srcs: list[Source] = []
        svc = self.service
        local, remote = (LocalLineSource, PeerLineSource) if lines else (LocalSource, PeerSource)
        if flt.admits_node(svc.node_id):
            srcs.append(local(svc, flt, order, positions.get(svc.node_id)))
        params = flt.to_params()
        for node, client in self.peers.items():
            if flt.admits_node(node):
                srcs.append(remote(client, params, order, positions.get(node)))
        return srcs

    async def peer_json(self, path: str, params=None) -> dict[str, dict]:
        """GET ``path`` on every peer concurrently; {node: answer or {"error": ...}}."""
        async def one(node, client):
            try:
                return node, await client.json(path, params)
            except PeerError as e:
                return node, {"error": str(e)}
        pairs = await asyncio.gather(*(one(n, c) for n, c in self.peers.items()))
        return dict(pairs)


# -- witnessed checkpoints ------------------------------------------------------------

async def send_checkpoints(cluster: Cluster) -> dict:
    """Sign this node's head and hand it to every peer to witness."""
    from query.witness import current_head, sign_checkpoint
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
    cluster.last_checkpoint = {"seq": cp["seq"], "ts": cp["ts"],
                               "witnessed_by": sorted(n for n, r in results.items() if "error" not in r)}
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
    if not (isinstance(ans, dict) and type(ans.get("head_seq")) is int
            and type(ans.get("first_seq")) is int and isinstance(ans.get("sigs"), dict)):
        raise PeerError("bad answer to /signatures")
    return ans


async def _check_witness(cluster: Cluster, about: str, witness: str
                         ) -> tuple[list[dict], str | None, str | None]:
    """Every checkpoint about node ``about`` that ``witness`` holds, checked against
    ``about``'s log: (violations, why the witness failed, why ``about`` failed).

    The witness's ``audit.checkpoint`` entries are streamed (its node-local scan,
    oldest first) and checked ``SIGNATURE_BATCH`` at a time, so memory and each
    request to ``about`` stay bounded however many checkpoints there are.
    """
    from query.witness import SIGNATURE_BATCH, WitnessFindings, checkpoint_of
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
                nodes[witness] = {"status": "unreachable",
                                  "error": f"reading its checkpoints of {node}: {witness_error}"}
                down.add(witness)
            if node_error is not None:
                nodes[node] = {"status": "unreachable", "error": node_error}
                down.add(node)
    return {"ok": not violations and all(n.get("status") == "ok" for n in nodes.values()),
            "entries_checked": checked, "violations": violations, "nodes": nodes}
