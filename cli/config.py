"""Configuration: every setting declared once (name, default, help, check),
loaded from a TOML file into a frozen dataclass.  Secrets never live here.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from engine.errors import ConfigError
from engine.settings import FSYNC_MODES, MIN_RETENTION_DAYS, StoreSettings

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?\s*$")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, None: 1}


def parse_duration(value: Any, name: str) -> float:
    """Seconds from a number or a string like ``"1d"``, ``"12h"``, ``"30s"``."""
    if isinstance(value, bool):
        raise ConfigError(f"{name}: expected a duration like 86400 or \"1d\", got {value!r}")
    if isinstance(value, (int, float)):
        if value <= 0:
            raise ConfigError(f"{name} must be positive, got {value!r}")
        return float(value)
    if isinstance(value, str):
        m = _DURATION.match(value)
        if m:
            secs = float(m.group(1)) * _UNITS[m.group(2)]
            if secs > 0:
                return secs
    raise ConfigError(f"{name}: expected a duration like 86400 or \"1d\", got {value!r}")


def parse_retention(value: Any, name: str = "retention_days") -> int | None:
    if isinstance(value, str) and value.strip().lower() == "forever":
        return None
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{name} must be a whole number of days (at least {MIN_RETENTION_DAYS}) "
                          f"or \"forever\", got {value!r}")
    if value < MIN_RETENTION_DAYS:
        raise ConfigError(f"{name} must be at least {MIN_RETENTION_DAYS} days "
                          f"(audit evidence is kept at least {MIN_RETENTION_DAYS} days), got {value}")
    return value


def _int_at_least(lo: int) -> Callable[[Any, str], int]:
    def check(v: Any, name: str) -> int:
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise ConfigError(f"{name} must be a whole number >= {lo}, got {v!r}")
        return v
    return check


def _choice(options: tuple[str, ...]) -> Callable[[Any, str], str]:
    def check(v: Any, name: str) -> str:
        if v not in options:
            raise ConfigError(f"{name} must be one of {', '.join(options)}, got {v!r}")
        return v
    return check


def _bool(v: Any, name: str) -> bool:
    if not isinstance(v, bool):
        raise ConfigError(f"{name} must be true or false, got {v!r}")
    return v


def _str(v: Any, name: str) -> str:
    if not isinstance(v, str) or not v:
        raise ConfigError(f"{name} must be a non-empty string, got {v!r}")
    return v


@dataclass(frozen=True)
class Setting:
    name: str           # dotted for tables: "server.listen"
    default: Any
    help: str
    check: Callable[[Any, str], Any]


SETTINGS: tuple[Setting, ...] = (
    Setting("node_id", None, "node id, [a-z0-9][a-z0-9-]{0,62} (default: from the data dir)", _str),
    Setting("retention_days", 365, "days to keep entries, at least 90, or \"forever\"", parse_retention),
    Setting("segment_max_bytes", 64 * 1024 * 1024, "roll a segment at this size", _int_at_least(4096)),
    Setting("segment_max_age", 86400.0, "roll a segment at this age (seconds or \"1d\")", parse_duration),
    Setting("fsync", "always", "always | interval | none (benchmarks only)", _choice(FSYNC_MODES)),
    Setting("line_files", True, "keep rendered NDJSON lines beside segments (faster reads, more disk)",
            _bool),
    Setting("server.listen", "127.0.0.1:8080", "HTTP API address HOST:PORT", _str),
)
_BY_NAME = {s.name: s for s in SETTINGS}
#: tables handled by later layers; their keys are checked there
_OPEN_TABLES = {"cluster", "syslog", "server"}


@dataclass(frozen=True)
class PeerEntry:
    node: str
    url: str


@dataclass(frozen=True)
class ClusterConfig:
    """``[cluster]``: the peer listener (mTLS) and the configured peers."""

    listen: str | None = None
    ca: str | None = None
    cert: str | None = None
    key: str | None = None
    peer_timeout: float = 2.0
    checkpoint_interval: float = 60.0
    peers: tuple[PeerEntry, ...] = ()


@dataclass(frozen=True)
class SyslogConfig:
    """``[syslog]``: forward this node's log to a syslog receiver / SIEM."""

    target: str
    format: str = "rfc5424"
    sd_id: str = "audit@32473"
    ca: str | None = None
    cert: str | None = None
    key: str | None = None
    server_name: str | None = None
    udp_max_bytes: int = 8192


_SYSLOG_KEYS = {"target", "format", "sd_id", "ca", "cert", "key", "server_name", "udp_max_bytes"}


def check_table(table: Any, name: str, known: set[str]) -> dict:
    """A TOML table with only known keys, or a ConfigError naming the strays."""
    if not isinstance(table, dict):
        raise ConfigError(f"[{name}] must be a table")
    unknown = set(table) - known
    if unknown:
        raise ConfigError(f"[{name}]: unknown setting(s) {', '.join(sorted(unknown))} "
                          f"(known: {', '.join(sorted(known))})")
    return table


def parse_syslog(table: Any, base: Path) -> SyslogConfig:
    check_table(table, "syslog", _SYSLOG_KEYS)
    if "target" not in table:
        raise ConfigError("[syslog] needs target = \"udp://HOST:PORT\", \"tcp://HOST:PORT\" or \"tls://HOST:PORT\"")
    target = _str(table["target"], "syslog.target")
    from urllib.parse import urlsplit
    try:
        u = urlsplit(target)
        port = u.port
    except ValueError:
        port = None
        u = None
    if u is None or u.scheme not in ("udp", "tcp", "tls") or not u.hostname or not port:
        raise ConfigError(f"syslog.target must be udp://HOST:PORT, tcp://HOST:PORT or tls://HOST:PORT, got {target!r}")
    fmt = table.get("format", "rfc5424")
    if fmt != "rfc5424":
        raise ConfigError(f"syslog.format must be \"rfc5424\", got {fmt!r}")
    sd_id = _str(table.get("sd_id", "audit@32473"), "syslog.sd_id")
    name, at, num = sd_id.partition("@")
    if not (at and name and num.isdigit() and len(sd_id) <= 32 and all(
            "!" <= c <= "~" and c not in '="]' for c in sd_id)):
        raise ConfigError(f"syslog.sd_id must look like name@<enterprise number>, got {sd_id!r}")
    files = {k: str((base / _str(table[k], f"syslog.{k}")).resolve()) for k in ("ca", "cert", "key") if k in table}
    if u.scheme != "tls" and files:
        raise ConfigError("syslog ca/cert/key only apply to a tls:// target")
    return SyslogConfig(target=target, format=fmt, sd_id=sd_id, ca=files.get("ca"), cert=files.get("cert"),
                        key=files.get("key"),
                        server_name=_str(table["server_name"], "syslog.server_name") if "server_name" in table else None,
                        udp_max_bytes=_int_at_least(480)(table.get("udp_max_bytes", 8192), "syslog.udp_max_bytes"))


_SERVER_KEYS = {"listen", "unix_socket", "validate_workers"}
_CLUSTER_KEYS = {"listen", "ca", "cert", "key", "peer_timeout", "checkpoint_interval", "peers"}


def parse_cluster(table: Any, base: Path) -> ClusterConfig:
    """Check ``[cluster]``; relative file paths are taken relative to the config file."""
    from engine.datadir import check_node_id
    check_table(table, "cluster", _CLUSTER_KEYS)
    files = {}
    for k in ("ca", "cert", "key"):
        if k in table:
            files[k] = str((base / _str(table[k], f"cluster.{k}")).resolve())
    peers = []
    raw_peers = table.get("peers", [])
    if not isinstance(raw_peers, list):
        raise ConfigError("[[cluster.peers]] must be an array of tables with node and url")
    for i, p in enumerate(raw_peers):
        if not isinstance(p, dict) or set(p) != {"node", "url"}:
            raise ConfigError(f"[[cluster.peers]] #{i + 1} must have exactly node and url")
        check_node_id(p["node"])
        url = _str(p["url"], f"cluster.peers[{i}].url")
        if not url.startswith("https://"):
            raise ConfigError(f"[[cluster.peers]] {p['node']}: url must be https://HOST:PORT (mutual TLS), got {url!r}")
        peers.append(PeerEntry(p["node"], url))
    if len({p.node for p in peers}) != len(peers):
        raise ConfigError("[[cluster.peers]]: a node is listed twice")
    cfg = ClusterConfig(
        listen=_str(table["listen"], "cluster.listen") if "listen" in table else None,
        ca=files.get("ca"), cert=files.get("cert"), key=files.get("key"),
        peer_timeout=parse_duration(table.get("peer_timeout", 2.0), "cluster.peer_timeout"),
        checkpoint_interval=parse_duration(table.get("checkpoint_interval", 60.0), "cluster.checkpoint_interval"),
        peers=tuple(peers))
    if (cfg.listen or cfg.peers) and not (cfg.ca and cfg.cert and cfg.key):
        raise ConfigError("[cluster] needs ca, cert and key (see auditlog cluster ca-init / issue-cert)")
    return cfg


@dataclass(frozen=True)
class Config:
    node_id: str | None = None
    retention_days: int | None = 365
    segment_max_bytes: int = 64 * 1024 * 1024
    segment_max_age: float = 86400.0
    fsync: str = "always"
    line_files: bool = True
    server_listen: str = "127.0.0.1:8080"
    source: str | None = None
    raw: dict = field(default_factory=dict, repr=False, compare=False)

    cluster: "ClusterConfig | None" = None
    syslog: "SyslogConfig | None" = None
    server_unix_socket: str | None = None
    #: worker processes validating ingest bodies; None = 1 when there are 2+ CPUs
    server_validate_workers: int | None = None

    def store_settings(self) -> StoreSettings:
        return StoreSettings(segment_max_bytes=self.segment_max_bytes,
                             segment_max_age=self.segment_max_age, fsync=self.fsync,
                             retention_days=self.retention_days, line_files=self.line_files)


def load_config(path: str | Path | None) -> Config:
    """Load and check a TOML config file; None gives the defaults."""
    if path is None:
        return Config()
    p = Path(path)
    try:
        raw_bytes = p.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"config file {p} does not exist") from None
    except IsADirectoryError:
        raise ConfigError(f"config file {p} is a directory") from None
    except OSError as e:
        raise ConfigError(f"cannot read config file {p}: {e.strerror}") from None
    try:
        text = raw_bytes.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"config file {p} is not UTF-8 text") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config file {p} is not valid TOML: {e}") from None
    values: dict[str, Any] = {}
    for key, value in data.items():
        if key == "cluster":
            values["cluster"] = parse_cluster(value, p.parent)
            continue
        if key == "syslog":
            values["syslog"] = parse_syslog(value, p.parent)
            continue
        if key == "server":
            check_table(value, "server", _SERVER_KEYS)
            if "validate_workers" in value:
                values["server.validate_workers"] = _int_at_least(0)(value["validate_workers"],
                                                                     "server.validate_workers")
            if "unix_socket" in value:
                values["server.unix_socket"] = str((p.parent / _str(value["unix_socket"], "server.unix_socket")).resolve())
        if isinstance(value, dict) and key in _OPEN_TABLES:
            for sub, subv in value.items():
                s = _BY_NAME.get(f"{key}.{sub}")
                if s is not None:
                    values[s.name] = s.check(subv, f"{key}.{sub}")
            continue
        s = _BY_NAME.get(key)
        if s is None:
            known = ", ".join(x.name for x in SETTINGS if "." not in x.name)
            raise ConfigError(f"config file {p}: unknown setting {key!r} (known: {known}, "
                              f"and the tables [server], [cluster], [syslog])")
        values[key] = s.check(value, key)
    if "node_id" in values:
        from engine.datadir import check_node_id
        check_node_id(values["node_id"])
    return Config(
        node_id=values.get("node_id"),
        retention_days=values.get("retention_days", 365),
        segment_max_bytes=values.get("segment_max_bytes", 64 * 1024 * 1024),
        segment_max_age=values.get("segment_max_age", 86400.0),
        fsync=values.get("fsync", "always"),
        line_files=values.get("line_files", True),
        server_listen=values.get("server.listen", "127.0.0.1:8080"),
        cluster=values.get("cluster"),
        syslog=values.get("syslog"),
        server_unix_socket=values.get("server.unix_socket"),
        server_validate_workers=values.get("server.validate_workers"),
        source=str(p), raw=data)
