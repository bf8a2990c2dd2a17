"""The one source of "now" for everything the node stamps: µs since the epoch, UTC.

Every module that needs the current time calls :func:`now_us` through this
module (``from engine import clock``; ``clock.now_us()``), never
``time.time`` directly, so a test can freeze or step time for the whole
process by replacing this one function, and code that takes a ``clock``
argument (the writer, retention) can be handed a :class:`FrozenClock`.
"""

from __future__ import annotations

import time


def now_us() -> int:
    """The system clock, µs since 1970-01-01T00:00:00Z."""
    return time.time_ns() // 1000


class FrozenClock:
    """A clock that only moves when told to (tests, benchmarks, reproducible demos).

    ``step_us`` > 0 advances it by that much after every reading, so that
    successive commits still get distinct, increasing timestamps.
    """

    def __init__(self, start_us: int, step_us: int = 0):
        self.now = start_us
        self.step_us = step_us

    def __call__(self) -> int:
        t = self.now
        self.now += self.step_us
        return t

    def advance(self, us: int) -> None:
        self.now += us

    def __repr__(self) -> str:
        return f"FrozenClock(now={self.now}, step_us={self.step_us})"
