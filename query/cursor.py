"""Opaque keyset cursors.

A page of a merged read consumed a prefix of every node's ordered stream, so
the exact position to continue from is, per node, the last seq consumed.  The
cursor carries that map, the order, and a fingerprint of the filter so it
cannot be replayed against a different query.  It is base64url JSON: opaque to
clients, but nothing secret is in it.
"""

from __future__ import annotations

import base64
import hashlib
import json

from query.errors import QueryError


class InvalidCursorError(QueryError):
    pass


def filter_fingerprint(params: dict[str, str], order: str) -> str:
    raw = json.dumps([sorted(params.items()), order], separators=(",", ":"))
    return hashlib.sha256(raw.encode()).hexdigest()[:16]


def encode_cursor(positions: dict[str, int], order: str, fingerprint: str) -> str:
    raw = json.dumps({"v": 1, "o": order, "f": fingerprint, "p": positions}, separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(text: str, order: str, fingerprint: str) -> dict[str, int]:
    if len(text) > 65536:
        raise InvalidCursorError("cursor is too long")
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        d = json.loads(raw)
        positions = d["p"]
        ok = (d.get("v") == 1 and isinstance(positions, dict)
              and all(isinstance(k, str) and type(v) is int and v >= 0 for k, v in positions.items()))
    except (ValueError, KeyError, TypeError):
        ok = False
    if not ok:
        raise InvalidCursorError("cursor is not valid (pass next_cursor back unchanged)")
    if d.get("o") != order or d.get("f") != fingerprint:
        raise InvalidCursorError("cursor belongs to a different query (same filters and order needed)")
    return positions
