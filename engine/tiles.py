"""Stored nodes of a node's Merkle tree, for proofs (FORMAT.md section 14).

The hash of every perfect subtree of ``2**level`` leaves with ``level >=``
:data:`STORED_FROM` is kept in ``<data-dir>/tree/L<level>.hashes``: record
``index`` at ``48 * index``, the 32-byte hash followed by the first 16 bytes of
``HMAC(K_tree, b"tree node" ‖ u8 level ‖ u64 index ‖ hash)`` (little-endian),
so a node read back is one the node wrote, or an error, never a wrong proof.
That is about a quarter of a byte per entry.  Lower nodes are computed when a
proof needs them from the leaves of their 256-leaf tile, taken from verified
frames; the leaves of the tile that retention cut in two are kept in
``L00.hashes`` (records of u64 index, hash and MAC), since the entries before
the cut are gone.
"""

from __future__ import annotations

import hmac
import os
import struct
from pathlib import Path

from auditlog.engine.chain import NodeKey
from auditlog.engine.errors import EngineError

#: levels at and above this are stored; below, computed from a tile's leaves
STORED_FROM = 8
TILE_LEAVES = 1 << STORED_FROM
HASH = 32
TAG = 16
RECORD = HASH + TAG
_LEAF_RECORD = 8 + RECORD
_NODE = struct.Struct("<BQ")


class TileError(EngineError):
    """A stored node is missing or does not check out (the tree's files were damaged)."""

    http_status = 409


class TreeNodes:
    """The stored nodes of one node's tree (``<data-dir>/tree/``)."""

    def __init__(self, directory: Path, key: NodeKey):
        self.dir = directory
        self._key = key.derive(b"tree")
        self._fds: dict[tuple[int, bool], int] = {}

    def _tag(self, level: int, index: int, h: bytes) -> bytes:
        return self._key.mac(b"tree node", _NODE.pack(level, index), h)[:TAG]

    def _path(self, level: int) -> Path:
        return self.dir / f"L{level:02d}.hashes"

    def _fd(self, level: int, write: bool) -> int:
        fd = self._fds.get((level, write))
        if fd is None:
            if write:
                self.dir.mkdir(exist_ok=True)
                fd = os.open(self._path(level), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            else:
                try:
                    fd = os.open(self._path(level), os.O_RDONLY | os.O_CLOEXEC)
                except FileNotFoundError:
                    raise TileError(f"the tree's nodes at level {level} are missing") from None
            self._fds[(level, write)] = fd
        return fd

    def put(self, level: int, index: int, h: bytes) -> None:
        """Keep a perfect subtree's hash (written in place: the same node is the same bytes)."""
        os.pwrite(self._fd(level, True), h + self._tag(level, index, h), RECORD * index)

    def get(self, level: int, index: int) -> bytes:
        raw = os.pread(self._fd(level, False), RECORD, RECORD * index)
        if len(raw) != RECORD:
            raise TileError(f"the tree's node ({level}, {index}) is missing")
        h, tag = raw[:HASH], raw[HASH:]
        if not hmac.compare_digest(tag, self._tag(level, index, h)):
            raise TileError(f"the tree's node ({level}, {index}) does not check out")
        return h

    def keep_leaves(self, leaves: dict[int, bytes]) -> None:
        """Keep leaf hashes whose entries are about to go (the tile retention cuts)."""
        if not leaves:
            return
        self.dir.mkdir(exist_ok=True)
        with open(self._path(0), "ab") as f:
            for index, h in sorted(leaves.items()):
                f.write(struct.pack("<Q", index) + h + self._tag(0, index, h))
            f.flush()
            os.fsync(f.fileno())

    def kept_leaves(self) -> dict[int, bytes]:
        """The leaf hashes retention kept; a record that does not check out is an error."""
        try:
            raw = self._path(0).read_bytes()
        except FileNotFoundError:
            return {}
        out = {}
        for at in range(0, len(raw) - len(raw) % _LEAF_RECORD, _LEAF_RECORD):
            (index,) = struct.unpack_from("<Q", raw, at)
            h, tag = raw[at + 8 : at + 8 + HASH], raw[at + 8 + HASH : at + _LEAF_RECORD]
            if not hmac.compare_digest(tag, self._tag(0, index, h)):
                raise TileError(f"a kept leaf hash ({index}) does not check out")
            out[index] = h
        return out

    def sync(self) -> None:
        for (_, write), fd in self._fds.items():
            if write:
                os.fsync(fd)

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

    def __enter__(self) -> TreeNodes:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
