"""``[cluster]``: the peer listener (mTLS) and the configured peers (declared here,
read by ``cli.config``, used by ``query.cluster``)."""

from __future__ import annotations

from dataclasses import dataclass, replace

from auditlog.engine.datadir import check_node_id
from auditlog.engine.errors import ConfigError
from auditlog.engine.settings import Setting, check_fields, defaults_of, file_path, parse_duration, text


@dataclass(frozen=True)
class PeerConfig:
    node: str
    url: str


def _peers(v, name: str) -> tuple[PeerConfig, ...]:
    """``[[cluster.peers]]``: each with exactly node and url (https://, mutual TLS), no
    node twice; tables from the config file or ``PeerConfig``s."""
    if not isinstance(v, (list, tuple)):
        raise ConfigError("[[cluster.peers]] must be an array of tables with node and url")
    peers = []
    for i, p in enumerate(v):
        if isinstance(p, PeerConfig):
            p = {"node": p.node, "url": p.url}
        if not isinstance(p, dict) or set(p) != {"node", "url"}:
            raise ConfigError(f"[[cluster.peers]] #{i + 1} must have exactly node and url")
        check_node_id(p["node"])
        url = text(p["url"], f"cluster.peers[{i}].url")
        if not url.startswith("https://"):
            raise ConfigError(f"[[cluster.peers]] {p['node']}: url must be https://HOST:PORT (mutual TLS), got {url!r}")
        peers.append(PeerConfig(p["node"], url))
    if len({p.node for p in peers}) != len(peers):
        raise ConfigError("[[cluster.peers]]: a node is listed twice")
    return tuple(peers)


#: ``[cluster]``: the peer listener (mTLS) and the configured peers
CLUSTER_SETTINGS: tuple[Setting, ...] = (
    Setting("cluster.listen", None, "the mTLS peer listener HOST:PORT", text),
    Setting("cluster.ca", None, "the cluster CA (auditlog cluster ca-init)", file_path, path=True),
    Setting("cluster.cert", None, "this node's certificate (auditlog cluster issue-cert)", file_path, path=True),
    Setting("cluster.key", None, "this node's certificate key", file_path, path=True),
    Setting("cluster.peer_timeout", 2.0, "seconds before a peer counts as unreachable", parse_duration),
    Setting("cluster.checkpoint_interval", 60.0, "seconds between witnessed checkpoints", parse_duration),
    Setting("cluster.peers", (), "[[cluster.peers]] node and url of each peer", _peers),
)
_CLUSTER = defaults_of(CLUSTER_SETTINGS)


@dataclass(frozen=True)
class ClusterSettings:
    listen: str | None = _CLUSTER["listen"]
    ca: str | None = _CLUSTER["ca"]
    cert: str | None = _CLUSTER["cert"]
    key: str | None = _CLUSTER["key"]
    peer_timeout: float = _CLUSTER["peer_timeout"]
    checkpoint_interval: float = _CLUSTER["checkpoint_interval"]
    peers: tuple[PeerConfig, ...] = _CLUSTER["peers"]

    def __post_init__(self):
        check_fields(self, CLUSTER_SETTINGS)

    @property
    def enabled(self) -> bool:
        return self.listen is not None or bool(self.peers)

    def check_tls(self) -> None:
        """A listener or peers need the node's certificate, key and the cluster CA."""
        if self.enabled and not (self.ca and self.cert and self.key):
            raise ConfigError("[cluster] needs ca, cert and key (see auditlog cluster ca-init / issue-cert)")

    def without(self, node_id: str) -> ClusterSettings:
        """These settings with ``node_id`` (this node, when listed) not among the peers."""
        return replace(self, peers=tuple(p for p in self.peers if p.node != node_id))
