"""ByteLRU: a least-recently-used map budgeted in bytes, for the readers' caches.

Every entry is put with its size in bytes (what it holds in memory: its
buffers' allocations plus the entry's own cost), and the map never holds
more than its budget: the least recently used entries go first, but never the
newest one.  Used for the checked blocks of ``.terms`` sidecars
(``engine.postings``) and the records read through postings
(``engine.selective``).
"""

from __future__ import annotations

import sys
import threading
from collections import OrderedDict

#: what an entry costs besides its value: the key and the map's own node, measured
#: with sys.getsizeof for the keys used here (a tuple of a 32-byte MAC and an int,
#: or of a name, a file identity and an int)
ENTRY_OVERHEAD = 200


class ByteLRU:
    """A least-recently-used map of at most ``budget`` bytes (thread-safe)."""

    def __init__(self, budget: int):
        self.budget = budget
        self.nbytes = 0
        self._d: OrderedDict = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key):
        with self._lock:
            got = self._d.get(key)
            if got is None:
                return None
            self._d.move_to_end(key)
            return got[0]

    def put(self, key, value, size: int | None = None) -> None:
        """Keep ``value`` under ``key``; ``size`` defaults to ``sys.getsizeof(value)``
        plus :data:`ENTRY_OVERHEAD`."""
        n = sys.getsizeof(value) + ENTRY_OVERHEAD if size is None else size
        with self._lock:
            old = self._d.pop(key, None)
            if old is not None:
                self.nbytes -= old[1]
            self._d[key] = (value, n)
            self.nbytes += n
            while self.nbytes > self.budget and len(self._d) > 1:
                _, (_, m) = self._d.popitem(last=False)
                self.nbytes -= m

    def clear(self) -> None:
        with self._lock:
            self._d.clear()
            self.nbytes = 0

    def __len__(self) -> int:
        return len(self._d)
