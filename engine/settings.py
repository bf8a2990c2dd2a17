"""Storage settings of one node (declared once; the CLI config fills them in)."""

from __future__ import annotations

from dataclasses import dataclass

from engine.errors import ConfigError
from engine.frame import MAX_PAYLOAD

FSYNC_MODES = ("always", "interval", "none")
MIN_RETENTION_DAYS = 90


@dataclass(frozen=True)
class StoreSettings:
    segment_max_bytes: int = 64 * 1024 * 1024
    segment_max_age: float = 86400.0          # seconds
    fsync: str = "always"
    fsync_interval: float = 1.0               # seconds, for fsync="interval"
    retention_days: int | None = 365          # None = forever
    line_files: bool = True                   # keep rendered lines beside segments (engine.lines)

    def __post_init__(self):
        if self.segment_max_bytes < 4096:
            raise ConfigError("segment_max_bytes must be at least 4096")
        if self.segment_max_age <= 0:
            raise ConfigError("segment_max_age must be positive")
        if self.fsync not in FSYNC_MODES:
            raise ConfigError(f"fsync must be one of {', '.join(FSYNC_MODES)}, not {self.fsync!r}")
        if self.retention_days is not None and (
                not isinstance(self.retention_days, int) or self.retention_days < MIN_RETENTION_DAYS):
            raise ConfigError(
                f"retention_days must be at least {MIN_RETENTION_DAYS} (or \"forever\"), "
                f"got {self.retention_days!r}")

    @property
    def frame_max_payload(self) -> int:
        """Frames hold at most 64 KiB of records and at most a quarter of a segment."""
        return min(MAX_PAYLOAD, self.segment_max_bytes // 4)
