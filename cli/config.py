"""The config file: a TOML file read into a frozen ``Config``.  Secrets never live here.

Every setting is declared once, as a ``engine.settings.Setting`` row (name,
default, help, check) beside the settings object it fills in: the storage rows
in ``engine.settings``, ``[server]`` in ``query.http.settings``, ``[cluster]`` in
``query.cluster.settings``, ``[syslog]`` in ``export.syslog``; only ``node_id`` is
declared here.  This module reads the file with those rows and builds those
objects; ``Config.node_config`` hands them to ``query.node.build_node``.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from auditlog.engine.datadir import check_node_id
from auditlog.engine.errors import ConfigError
from auditlog.engine.settings import STORE_SETTINGS, Setting, StoreSettings, parse_duration, parse_retention, text
from auditlog.export.archive import ARCHIVE_SETTINGS, ArchiveSettings
from auditlog.export.http_stream import HTTP_STREAM_SETTINGS, HttpStreamSettings
from auditlog.export.syslog import SYSLOG_SETTINGS, SyslogSettings
from auditlog.query.cluster.settings import CLUSTER_SETTINGS, ClusterSettings
from auditlog.query.http.settings import SERVER_SETTINGS, ServerSettings

__all__ = ["SETTINGS", "TABLES", "Config", "Setting", "load_config", "parse_duration", "parse_retention"]


def _node_id(v: Any, name: str) -> str:
    return check_node_id(text(v, name))


#: the tables of the config file and the rows declaring their keys
TABLES: dict[str, tuple[Setting, ...]] = {
    "server": SERVER_SETTINGS,
    "cluster": CLUSTER_SETTINGS,
    "syslog": SYSLOG_SETTINGS,
    "http_stream": HTTP_STREAM_SETTINGS,
    "archive": ARCHIVE_SETTINGS,
}

#: every setting of the config file, top-level keys first
SETTINGS: tuple[Setting, ...] = (
    Setting("node_id", None, "node id, [a-z0-9][a-z0-9-]{0,62} (default: from the data dir)", _node_id),
    *STORE_SETTINGS,
    *(s for rows in TABLES.values() for s in rows),
)
_TOP = tuple(s for s in SETTINGS if "." not in s.name)
#: settings earlier versions had: accepted and ignored, with a warning saying why
RETIRED = {
    "line_files": "line_files is no longer a setting and is ignored: NDJSON reads render without a cache "
    "(the writer deletes *.lines files earlier versions kept); remove it from the config file",
}


@dataclass(frozen=True)
class Config:
    node_id: str | None = None
    store: StoreSettings = StoreSettings()
    server: ServerSettings = ServerSettings()
    #: [cluster], when the file has the table
    cluster: ClusterSettings | None = None
    #: [syslog], when the file has the table
    syslog: SyslogSettings | None = None
    #: [http_stream], when the file has the table
    http_stream: HttpStreamSettings | None = None
    #: [archive], when the file has the table
    archive: ArchiveSettings | None = None
    source: str | None = None
    raw: dict = field(default_factory=dict, repr=False, compare=False)
    #: warnings about the file (retired settings it still has)
    notes: tuple[str, ...] = ()

    # the storage settings and [server] by the names the file gives them
    retention_days = property(lambda self: self.store.retention_days)
    segment_max_bytes = property(lambda self: self.store.segment_max_bytes)
    segment_max_age = property(lambda self: self.store.segment_max_age)
    fsync = property(lambda self: self.store.fsync)
    server_listen = property(lambda self: self.server.listen)
    server_unix_socket = property(lambda self: self.server.unix_socket)
    server_validate_workers = property(lambda self: self.server.validate_workers)

    def store_settings(self) -> StoreSettings:
        return self.store

    def node_config(self):
        """What ``query.node.build_node`` needs (``query.node.NodeConfig``): the storage,
        service, cluster and syslog settings."""
        from auditlog.query.node import NodeConfig, ServiceSettings, default_validate_workers

        workers = self.server.validate_workers
        cluster = self.cluster if self.cluster is not None and self.cluster.enabled else None
        return NodeConfig(
            store=self.store,
            service=ServiceSettings(
                validate_workers=default_validate_workers() if workers is None else workers,
                checkpoint_interval=self.server.checkpoint_interval,
            ),
            cluster=cluster,
            syslog=self.syslog,
            http_stream=self.http_stream,
            archive=self.archive,
        )


def check_table(table: Any, name: str, known: set[str]) -> dict:
    """A TOML table with only known keys, or a ConfigError naming the strays."""
    if not isinstance(table, dict):
        raise ConfigError(f"[{name}] must be a table")
    unknown = set(table) - known
    if unknown:
        raise ConfigError(
            f"[{name}]: unknown setting(s) {', '.join(sorted(unknown))} (known: {', '.join(sorted(known))})"
        )
    return table


def _values(rows: tuple[Setting, ...], table: dict, base: Path) -> dict[str, Any]:
    """{key: checked value} of the keys ``table`` has; file paths taken relative to ``base``."""
    out = {}
    for s in rows:
        if s.key not in table:
            if s.required is not None:
                raise ConfigError(s.required)
            continue
        v = s.check(table[s.key], s.name)
        out[s.key] = str((base / v).resolve()) if s.path else v
    return out


def _read_toml(p: Path) -> dict:
    try:
        raw_bytes = p.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"config file {p} does not exist") from None
    except IsADirectoryError:
        raise ConfigError(f"config file {p} is a directory") from None
    except OSError as e:
        raise ConfigError(f"cannot read config file {p}: {e.strerror}") from None
    try:
        text_ = raw_bytes.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"config file {p} is not UTF-8 text") from None
    try:
        return tomllib.loads(text_)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config file {p} is not valid TOML: {e}") from None


def load_config(path: str | Path | None) -> Config:
    """Load and check a TOML config file; None gives the defaults."""
    if path is None:
        return Config()
    p = Path(path)
    data = _read_toml(p)
    notes = tuple(f"config file {p}: {RETIRED[k]}" for k in data if k in RETIRED)
    data = {k: v for k, v in data.items() if k not in RETIRED}
    by_key = {s.name: s for s in _TOP}
    for key in data:
        if key not in by_key and key not in TABLES:
            known = ", ".join(s.name for s in _TOP)
            raise ConfigError(
                f"config file {p}: unknown setting {key!r} (known: {known}, "
                f"and the tables [server], [cluster], [syslog], [http_stream], [archive])"
            )
    tables = {
        name: _values(rows, check_table(data[name], name, {s.key for s in rows}), p.parent)
        for name, rows in TABLES.items()
        if name in data
    }
    top = _values(_TOP, data, p.parent)
    cluster = None
    if "cluster" in tables:
        cluster = ClusterSettings(**tables["cluster"])
        cluster.check_tls()
    node_id = top.pop("node_id", None)
    store = StoreSettings(**top)
    archive = None
    if "archive" in tables:
        archive = ArchiveSettings(**tables["archive"])
        archive.check_against(store.retention_days)
    return Config(
        node_id=node_id,
        store=store,
        archive=archive,
        server=ServerSettings(**tables.get("server", {})),
        cluster=cluster,
        syslog=SyslogSettings(**tables["syslog"]) if "syslog" in tables else None,
        http_stream=HttpStreamSettings(**tables["http_stream"]) if "http_stream" in tables else None,
        source=str(p),
        raw=data,
        notes=notes,
    )
