"""The cluster as one node sees it: its peers, fan-out reads, heads, membership.

Nothing is replicated.  A read on any node scans its own log and asks every
peer (over mutual TLS) for its node-local scan, then merges the streams.  A
peer that refuses, times out or fails mid-stream is reported ``unreachable``
with the reason; the answer still comes, after at most ``peer_timeout``.
"""

from __future__ import annotations

import asyncio
import logging

import aiohttp

from auditlog.engine.entry import Entry, EntryDraft
from auditlog.query.cluster.peers import PeerClient, PeerError
from auditlog.query.cluster.settings import ClusterSettings
from auditlog.query.cluster.witness import Witness
from auditlog.query.filters import Filter
from auditlog.query.linemerge import LineSource
from auditlog.query.merge import Source
from auditlog.query.sources import LocalLineSource, LocalSource

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
        if (
            e.integrity != "ok"
            or e.user != "system"
            or not isinstance(d, dict)
            or d.get("via") != "config"
            or d.get("node") != e.target
            or not isinstance(e.target, str)
        ):
            continue
        if e.action == "cluster.node_join":
            known.add(e.target)
        else:
            known.discard(e.target)
    return known


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
        #: the newest checkpoint handed to the peers: size, root and who cosigned it
        self.last_checkpoint: dict | None = None
        #: per peer: why it did not cosign the last checkpoint handed to it
        self.checkpoint_errors: dict[str, str] = {}
        #: per peer: the size of the last tree it cosigned of this log, as it said
        self.cosigned_size: dict[str, int] = {}
        #: per peer: its newest cosignature of this log (size, the signature line)
        self.cosignatures: dict[str, tuple[int, str]] = {}
        #: this node as its peers' witness
        self.witness = Witness(service)

    async def start(self) -> None:
        from auditlog.query.cluster.pki import client_context

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
        drafts = [
            EntryDraft("system", "cluster.node_join", n, details={"node": n, "via": "config"})
            for n in sorted(now - known)
        ]
        drafts += [
            EntryDraft("system", "cluster.node_leave", n, details={"node": n, "via": "config"})
            for n in sorted(known - now)
        ]
        if drafts:
            self.service.writer.append_batch(drafts)
        try:
            (self.service.data_dir.state / LEGACY_MEMBERS_FILE).unlink()
        except FileNotFoundError:
            pass

    def sources(
        self, flt: Filter, order: str, positions: dict[str, tuple[int, int]], lines: bool = False
    ) -> list[Source]:
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
