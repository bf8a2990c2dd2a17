"""Size limits applied to ingested events (one frozen value object, overridable by config)."""

from __future__ import annotations

from dataclasses import dataclass, fields


@dataclass(frozen=True)
class Limits:
    #: msgpack-encoded size of ``details`` in bytes.
    max_details_bytes: int = 16384
    #: Events per batch (HTTP batch or NDJSON input).
    max_batch: int = 10000
    #: Characters in ``user``, ``action``, ``target``, ``domain`` and ``ip``.
    max_field_len: int = 1024
    #: Characters in ``user_agent`` (browsers send long ones).
    max_user_agent_len: int = 2048
    #: Nesting levels of maps/lists in ``details``; the details map itself is level 1.
    max_details_depth: int = 8

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if type(v) is not int or v < 1:
                raise ValueError(f"Limits.{f.name} must be a positive integer, got {v!r}")


DEFAULT_LIMITS = Limits()
