"""Opaque keyset cursors.

A page of a merged read consumed a prefix of every node's ordered stream, so
the exact position to continue from is, per node, the position of the last
item consumed: ``[seq, sub]`` (``engine.items``: a marker for damage sits
before the entry with the same seq).  The cursor carries that map, the order,
and a fingerprint of the filter so it cannot be replayed against a different
query.  It is base64url JSON: opaque to clients, but nothing secret is in it.
Cursors of version 1 (a seq per node) are still read.
"""

from __future__ import annotations

import base64
import hashlib
import json

from auditlog.engine.entry import ENTRY_SUB
from auditlog.query.errors import QueryError

Position = tuple[int, int]


class InvalidCursorError(QueryError):
    pass


def filter_fingerprint(params: dict[str, str], order: str) -> str:
    raw = json.dumps([sorted(params.items()), order], separators=(",", ":"))
    return hashlib.sha256(raw.encode()).hexdigest()[:16]


def encode_cursor(positions: dict[str, Position], order: str, fingerprint: str) -> str:
    raw = json.dumps(
        {"v": 2, "o": order, "f": fingerprint, "p": {n: list(p) for n, p in positions.items()}}, separators=(",", ":")
    )
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(text: str, order: str, fingerprint: str) -> dict[str, Position]:
    if len(text) > 65536:
        raise InvalidCursorError("cursor is too long")
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        d = json.loads(raw)
        positions = d["p"]
        if (
            d.get("v") == 1
            and isinstance(positions, dict)
            and all(isinstance(k, str) and type(v) is int and v >= 0 for k, v in positions.items())
        ):
            positions = {k: (v, ENTRY_SUB) for k, v in positions.items()}
            ok = True
        else:
            ok = (
                d.get("v") == 2
                and isinstance(positions, dict)
                and all(
                    isinstance(k, str)
                    and isinstance(v, list)
                    and len(v) == 2
                    and all(type(x) is int and x >= 0 for x in v)
                    for k, v in positions.items()
                )
            )
            if ok:
                positions = {k: (v[0], v[1]) for k, v in positions.items()}
    except (ValueError, KeyError, TypeError, AttributeError):
        ok = False
    if not ok:
        raise InvalidCursorError("cursor is not valid (pass next_cursor back unchanged)")
    if d.get("o") != order or d.get("f") != fingerprint:
        raise InvalidCursorError("cursor belongs to a different query (same filters and order needed)")
    return positions
