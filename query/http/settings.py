"""``[server]``: the settings of the node's HTTP listeners and its background work (declared here, read by
``cli.config``, used by ``auditlog serve``)."""

from __future__ import annotations

from dataclasses import dataclass

from auditlog.engine.settings import Setting, check_fields, defaults_of, file_path, int_at_least, parse_duration, text

#: ``[server]``
SERVER_SETTINGS: tuple[Setting, ...] = (
    Setting("server.listen", "127.0.0.1:8080", "HTTP API address HOST:PORT", text),
    Setting("server.unix_socket", None, "also listen on this Unix socket (mode 0660)", file_path, path=True),
    Setting(
        "server.validate_workers",
        None,
        "worker processes validating ingest bodies (default: 1 with 2+ CPUs, else 0)",
        int_at_least(0),
    ),
    Setting(
        "server.checkpoint_interval",
        60.0,
        'seconds (or "5m") between signed checkpoints while the log grows; one is also made at each segment seal',
        parse_duration,
    ),
)
_SERVER = defaults_of(SERVER_SETTINGS)


@dataclass(frozen=True)
class ServerSettings:
    listen: str = _SERVER["listen"]
    unix_socket: str | None = _SERVER["unix_socket"]
    #: None: one worker when there is a second CPU (``query.node.default_validate_workers``)
    validate_workers: int | None = _SERVER["validate_workers"]
    checkpoint_interval: float = _SERVER["checkpoint_interval"]

    def __post_init__(self):
        check_fields(self, SERVER_SETTINGS)
