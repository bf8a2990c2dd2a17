"""NDJSON lines in chunks, as reads, peers and the merge hand them on.

A chunk is one node's lines in stream order: their timestamps (µs), their
lengths and the lines themselves as one blob (each ending in ``\\n``).  Lengths
and timestamps travel between nodes as little-endian arrays; *marks* (the
offset of each line's last byte) let the merge take any run of lines as one
slice of the blob.
"""

from __future__ import annotations

import sys
from array import array
from itertools import accumulate

#: array type code of line lengths: 4-byte unsigned, little-endian on the wire
LEN_CODE = "I"
assert array(LEN_CODE).itemsize == 4
#: array type code of timestamps (µs): 8-byte signed, little-endian on the wire
TS_CODE = "q"
_BIG_ENDIAN = sys.byteorder == "big"


def line_marks(lens) -> list[int]:
    """``-1``, then the offset of each line's last byte (its ``\\n``), from the lines'
    lengths: line ``k`` of the blob is ``blob[marks[k] + 1:marks[k + 1] + 1]``."""
    return list(accumulate(lens, initial=-1))


def cut_lines(blob: bytes, marks: list[int], p: int = 0, j: int | None = None) -> list[bytes]:
    """Lines ``p`` to ``j - 1`` (all by default) of ``blob``, one bytes object each."""
    bounds = [m + 1 for m in marks[p : None if j is None else j + 1]]  # line starts, then the end
    return list(map(blob.__getitem__, map(slice, bounds[:-1], bounds[1:])))


def line_lengths(blob: bytes) -> array:
    """The length of each line of a blob of ``\\n``-terminated lines (no other CR or LF)."""
    return array(LEN_CODE, map(len, blob.splitlines(keepends=True)))


def le_bytes(code: str, values) -> bytes:
    """``values`` as a little-endian array of ``code`` (:data:`TS_CODE`, :data:`LEN_CODE`)."""
    a = array(code, values)
    if _BIG_ENDIAN:
        a.byteswap()
    return a.tobytes()


def le_array(code: str, raw) -> array:
    """The array :func:`le_bytes` wrote."""
    a = array(code)
    a.frombytes(raw)
    if _BIG_ENDIAN:
        a.byteswap()
    return a
