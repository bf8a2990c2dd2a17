"""How a setting is declared (``Setting``: name, default, help, check), the checks
the configuration uses, and the storage settings of one node.

Every configurable setting is declared once, as a ``Setting`` row beside the
settings object it fills in: the storage rows here (``STORE_SETTINGS``), the
``[server]``, ``[cluster]`` and ``[syslog]`` rows in the layers that own them.
The settings objects take their defaults from their rows and check their values
with the rows' checks; ``cli.config`` reads the TOML file with the same rows.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

from auditlog.engine.errors import ConfigError
from auditlog.engine.frame import MAX_PAYLOAD

FSYNC_MODES = ("always", "interval", "none")
MIN_RETENTION_DAYS = 90


@dataclass(frozen=True)
class Setting:
    name: str  # dotted for tables: "server.listen"
    default: Any
    help: str
    #: ``check(value, name)``: the value to keep, or a ConfigError naming the setting
    check: Callable[[Any, str], Any]
    #: the message when a table is given without this key (None: the key is optional)
    required: str | None = None
    #: a file path: the config file loader takes it relative to the config file
    path: bool = False

    @property
    def key(self) -> str:
        """The name within its table (``listen`` of ``server.listen``)."""
        return self.name.rpartition(".")[2]


def defaults_of(rows: tuple[Setting, ...]) -> dict[str, Any]:
    """{key within its table: default} of a table's rows."""
    return {s.key: s.default for s in rows}


def check_fields(obj, rows: tuple[Setting, ...]) -> None:
    """Check the fields of a frozen settings object that ``rows`` declare and keep what
    the checks return (None, where a row's default is None, means "not set")."""
    names = {f.name for f in fields(obj)}
    for s in rows:
        if s.key in names:
            v = getattr(obj, s.key)
            if v is None and s.default is None:
                continue
            object.__setattr__(obj, s.key, s.check(v, s.name))


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?\s*$")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, None: 1}


def parse_duration(value: Any, name: str) -> float:
    """Seconds from a number or a string like ``"1d"``, ``"12h"``, ``"30s"``."""
    if isinstance(value, bool):
        raise ConfigError(f'{name}: expected a duration like 86400 or "1d", got {value!r}')
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
    raise ConfigError(f'{name}: expected a duration like 86400 or "1d", got {value!r}')


def parse_retention(value: Any, name: str = "retention_days") -> int | None:
    if isinstance(value, str) and value.strip().lower() == "forever":
        return None
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(
            f'{name} must be a whole number of days (at least {MIN_RETENTION_DAYS}) or "forever", got {value!r}'
        )
    if value < MIN_RETENTION_DAYS:
        raise ConfigError(
            f"{name} must be at least {MIN_RETENTION_DAYS} days "
            f"(audit evidence is kept at least {MIN_RETENTION_DAYS} days), got {value}"
        )
    return value


def int_at_least(lo: int) -> Callable[[Any, str], int]:
    def check(v: Any, name: str) -> int:
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise ConfigError(f"{name} must be a whole number >= {lo}, got {v!r}")
        return v

    return check


def choice(options: tuple[str, ...]) -> Callable[[Any, str], str]:
    def check(v: Any, name: str) -> str:
        if v not in options:
            raise ConfigError(f"{name} must be one of {', '.join(options)}, got {v!r}")
        return v

    return check


def text(v: Any, name: str) -> str:
    if not isinstance(v, str) or not v:
        raise ConfigError(f"{name} must be a non-empty string, got {v!r}")
    return v


def file_path(v: Any, name: str) -> str:
    """A file name, as a string (a ``pathlib.Path`` is taken as its string)."""
    return text(os.fspath(v) if isinstance(v, os.PathLike) else v, name)


#: the storage settings: top-level keys of the config file
STORE_SETTINGS: tuple[Setting, ...] = (
    Setting("retention_days", 365, 'days to keep entries, at least 90, or "forever"', parse_retention),
    Setting("segment_max_bytes", 64 * 1024 * 1024, "roll a segment at this size", int_at_least(4096)),
    Setting("segment_max_age", 86400.0, 'roll a segment at this age (seconds or "1d")', parse_duration),
    Setting("fsync", "always", "always | interval | none (benchmarks only)", choice(FSYNC_MODES)),
)
_STORE = defaults_of(STORE_SETTINGS)


@dataclass(frozen=True)
class StoreSettings:
    segment_max_bytes: int = _STORE["segment_max_bytes"]
    segment_max_age: float = _STORE["segment_max_age"]  # seconds
    fsync: str = _STORE["fsync"]
    fsync_interval: float = 1.0  # seconds, for fsync="interval" (not configurable)
    retention_days: int | None = _STORE["retention_days"]  # None = forever

    def __post_init__(self):
        if self.retention_days is None:  # kept forever: nothing to check
            check_fields(self, tuple(s for s in STORE_SETTINGS if s.name != "retention_days"))
        else:
            check_fields(self, STORE_SETTINGS)

    @property
    def frame_max_payload(self) -> int:
        """Frames hold at most 64 KiB of records and at most a quarter of a segment."""
        return min(MAX_PAYLOAD, self.segment_max_bytes // 4)
