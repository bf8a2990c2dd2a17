"""RFC 6962 / RFC 9162 Merkle tree hashing, compact ranges and proofs.

The tree is the one of Certificate Transparency (RFC 9162 section 2.1.1):

* the hash of an empty tree is ``SHA-256("")`` (:data:`EMPTY_ROOT`);
* a leaf hashes as ``SHA-256(0x00 || data)`` (:func:`leaf_hash`);
* an interior node hashes as ``SHA-256(0x01 || left || right)`` (:func:`node_hash`);
* a tree of ``n > 1`` leaves splits at ``k``, the largest power of two smaller
  than ``n``: ``MTH(D[n]) = node_hash(MTH(D[0:k]), MTH(D[k:n]))``.

Only *perfect* subtrees (``2**level`` leaves starting at a multiple of
``2**level``) are ever stored.  A node is named ``(level, index)``: the perfect
subtree of leaves ``[index * 2**level, (index + 1) * 2**level)``; level 0 holds
the leaf hashes.  :class:`CompactTree` grows a tree one leaf at a time keeping
only the roots of the perfect subtrees that make up the tree so far (at most
``log2(n) + 1`` hashes) and reports every perfect subtree each append completes,
so a caller can store them.  Proof generation then reads stored nodes through a
:class:`NodeGetter`; hashes of the right edge of a tree whose size is not a
power of two are recomputed from O(log n) stored nodes, never from the leaves.

Verification functions follow the algorithms of RFC 9162 sections 2.1.3.2 and
2.1.4.2 and return ``False`` for any malformed input instead of raising.
Generation functions raise :class:`ValueError` for out-of-range arguments and
:class:`TypeError` for arguments that are not integers.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Protocol

__all__ = [
    "EMPTY_ROOT",
    "HASH_SIZE",
    "CompactTree",
    "Node",
    "NodeGetter",
    "consistency_proof",
    "inclusion_proof",
    "leaf_hash",
    "node_hash",
    "range_hash",
    "range_proof",
    "verify_range",
    "root",
    "verify_consistency",
    "verify_inclusion",
]

#: length in bytes of every hash in the tree (SHA-256)
HASH_SIZE = 32
#: root of the empty tree: SHA-256 of the empty string (RFC 9162 section 2.1.1)
EMPTY_ROOT = hashlib.sha256(b"").digest()

_LEAF_PREFIX = b"\x00"
_NODE_PREFIX = b"\x01"
_sha256 = hashlib.sha256

#: the (level, index, hash) of a perfect subtree completed by an append
Node = tuple[int, int, bytes]


class NodeGetter(Protocol):
    """Reads a stored perfect subtree hash.

    ``get(level, index)`` returns the hash of the perfect subtree of
    ``2**level`` leaves starting at leaf ``index * 2**level``; level 0 returns
    leaf hashes.  A missing node may raise any exception (``KeyError`` for a
    dict-backed store); proof generation lets it propagate.
    """

    def __call__(self, level: int, index: int, /) -> bytes: ...


def leaf_hash(data: bytes) -> bytes:
    """The hash of a leaf: ``SHA-256(0x00 || data)`` (RFC 9162 section 2.1.1)."""
    return _sha256(_LEAF_PREFIX + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """The hash of an interior node: ``SHA-256(0x01 || left || right)`` (RFC 9162 section 2.1.1)."""
    return _sha256(_NODE_PREFIX + left + right).digest()


def root(leaf_hashes: Sequence[bytes]) -> bytes:
    """The Merkle tree hash ``MTH`` over the given leaf hashes (RFC 9162 section 2.1.1).

    Computed level by level: adjacent pairs are hashed together and an unpaired
    last node moves up unchanged.  This builds exactly the tree of the RFC's
    recursive definition (split at the largest power of two smaller than n),
    since every pair formed lies inside one perfect subtree of that tree and an
    unpaired node is always the root of its rightmost, smaller subtree.
    """
    level = list(leaf_hashes)
    if not level:
        return EMPTY_ROOT
    while len(level) > 1:
        paired = [node_hash(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            paired.append(level[-1])
        level = paired
    return level[0]


class CompactTree:
    """An append-only Merkle tree that keeps only its frontier (a compact range).

    The frontier is the list of roots of the perfect subtrees that make up a
    tree of ``size`` leaves, one for each bit set in ``size``, from the largest
    (leftmost) to the smallest (rightmost).  ``root()`` folds them right to
    left, which is the RFC 9162 section 2.1.1 tree hash.

    A tree goes on from a stored state with ``CompactTree(size, frontier)``.
    """

    __slots__ = ("_size", "_frontier")

    def __init__(self, size: int = 0, frontier: Sequence[bytes] = ()) -> None:
        """Start an empty tree, or resume one of ``size`` leaves from its ``frontier``."""
        _check_int("size", size)
        if size < 0:
            raise ValueError(f"size must be >= 0, got {size}")
        hashes = list(frontier)
        if len(hashes) != size.bit_count():
            raise ValueError(f"a tree of {size} leaves has a frontier of {size.bit_count()} hashes, got {len(hashes)}")
        for h in hashes:
            _check_hash("frontier hash", h)
        self._size = size
        self._frontier = [bytes(h) for h in hashes]

    @property
    def size(self) -> int:
        """Number of leaves appended so far."""
        return self._size

    @property
    def frontier(self) -> tuple[bytes, ...]:
        """Roots of the perfect subtrees of the tree, largest (leftmost) first."""
        return tuple(self._frontier)

    def frontier_nodes(self) -> list[Node]:
        """The frontier as ``(level, index, hash)`` nodes, largest (leftmost) first."""
        nodes = []
        start = 0
        for level in range(self._size.bit_length() - 1, -1, -1):
            if self._size >> level & 1:
                nodes.append((level, start >> level, self._frontier[len(nodes)]))
                start += 1 << level
        return nodes

    def append(self, leaf: bytes) -> list[Node]:
        """Append one leaf hash; return the perfect subtrees this append completes.

        The list starts with the leaf itself ``(0, index, leaf)`` and goes on
        with each parent completed by it, bottom up, as ``(level, index, hash)``:
        exactly the nodes a :class:`NodeGetter` store needs, written once each.
        """
        _check_hash("leaf hash", leaf)
        leaf = bytes(leaf)
        index = self._size
        completed = [(0, index, leaf)]
        frontier = self._frontier
        h = leaf
        level = 0
        while index & 1:
            h = _sha256(_NODE_PREFIX + frontier.pop() + h).digest()
            index >>= 1
            level += 1
            completed.append((level, index, h))
        frontier.append(h)
        self._size += 1
        return completed

    def root(self) -> bytes:
        """The tree hash of all leaves appended so far (:data:`EMPTY_ROOT` when empty)."""
        if not self._frontier:
            return EMPTY_ROOT
        r = self._frontier[-1]
        for h in reversed(self._frontier[:-1]):
            r = node_hash(h, r)
        return r

    def __repr__(self) -> str:
        return f"CompactTree(size={self._size})"


def range_hash(start: int, end: int, get: NodeGetter) -> bytes:
    """The tree hash ``MTH(D[start:end])`` of leaves ``[start, end)``, read through ``get``.

    The range is split as in RFC 9162 section 2.1.1; any part that is a perfect,
    aligned subtree is read with one ``get`` call.  When ``start`` is a multiple
    of the smallest power of two >= ``end - start`` (every node of a proof, and
    every prefix ``[0, end)``), that takes at most ``log2(end - start) + 1``
    calls.  Other ranges are correct too, at a cost up to linear in their length.
    An empty range hashes to :data:`EMPTY_ROOT`.
    """
    _check_int("start", start)
    _check_int("end", end)
    if start < 0 or end < start:
        raise ValueError(f"need 0 <= start <= end, got start={start}, end={end}")
    if start == end:
        return EMPTY_ROOT
    return _range_hash(start, end, get)


def _range_hash(start: int, end: int, get: NodeGetter) -> bytes:
    n = end - start
    if n & (n - 1) == 0 and start & (n - 1) == 0:
        level = n.bit_length() - 1
        return _get(get, level, start >> level)
    k = _split(n)
    return node_hash(_range_hash(start, start + k, get), _range_hash(start + k, end, get))


def inclusion_proof(index: int, size: int, get: NodeGetter) -> list[bytes]:
    """The audit path ``PATH(index, D[size])`` of RFC 9162 section 2.1.3.1, leaf sibling first.

    At most ``ceil(log2(size))`` hashes, read with O(log size) ``get`` calls.
    Raises ``ValueError`` unless ``0 <= index < size``.
    """
    _check_int("index", index)
    _check_int("size", size)
    if not 0 <= index < size:
        raise ValueError(f"need 0 <= index < size, got index={index}, size={size}")
    path = []
    lo, hi = 0, size
    while hi - lo > 1:
        k = _split(hi - lo)
        if index < lo + k:
            path.append(_range_hash(lo + k, hi, get))
            hi = lo + k
        else:
            path.append(_range_hash(lo, lo + k, get))
            lo += k
    path.reverse()
    return path


def consistency_proof(old_size: int, new_size: int, get: NodeGetter) -> list[bytes]:
    """The consistency proof ``PROOF(old_size, D[new_size])`` of RFC 9162 section 2.1.4.1.

    Built from ``SUBPROOF`` iteratively; empty when the sizes are equal.  Raises
    ``ValueError`` unless ``0 < old_size <= new_size`` (a proof from the empty
    tree is not defined by the RFC).
    """
    _check_int("old_size", old_size)
    _check_int("new_size", new_size)
    if not 0 < old_size <= new_size:
        raise ValueError(f"need 0 < old_size <= new_size, got old_size={old_size}, new_size={new_size}")
    proof = []
    lo, hi = 0, new_size
    whole_old_tree = True  # the RFC's flag b: [lo, hi) still starts at leaf 0
    while hi != old_size:
        k = _split(hi - lo)
        if old_size <= lo + k:
            proof.append(_range_hash(lo + k, hi, get))
            hi = lo + k
        else:
            proof.append(_range_hash(lo, lo + k, get))
            lo += k
            whole_old_tree = False
    if not whole_old_tree:
        proof.append(_range_hash(lo, hi, get))
    proof.reverse()
    return proof


def verify_inclusion(leaf: bytes, index: int, size: int, proof: Sequence[bytes], root_hash: bytes) -> bool:
    """Whether ``proof`` shows the leaf hash ``leaf`` at ``index`` in the tree of ``size`` leaves (``root_hash``).

    The algorithm of RFC 9162 section 2.1.3.2.  Never raises: malformed input
    (hashes that are not 32 bytes, ``index >= size``, a proof of the wrong
    length, arguments of the wrong type) gives ``False``.
    """
    if not (_is_int(index) and _is_int(size) and 0 <= index < size):
        return False
    if not (_is_hash(leaf) and _is_hash(root_hash) and _is_proof(proof, size.bit_length())):
        return False
    fn, sn = index, size - 1
    r = bytes(leaf)
    for p in proof:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            while fn and not fn & 1:
                fn >>= 1
                sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    return sn == 0 and r == root_hash


def verify_consistency(old_size: int, new_size: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]) -> bool:
    """Whether ``proof`` shows the tree of ``old_size`` leaves (``old_root``) is a prefix of the one of ``new_size``.

    The algorithm of RFC 9162 section 2.1.4.2 for ``0 < old_size < new_size``;
    equal sizes need an empty proof and equal roots.  A proof from the empty
    tree (``old_size == 0``) is not defined by the RFC and is rejected.  Never
    raises: malformed input gives ``False``.
    """
    if not (_is_int(old_size) and _is_int(new_size) and 0 < old_size <= new_size):
        return False
    if not (_is_hash(old_root) and _is_hash(new_root) and _is_proof(proof, new_size.bit_length() + 1)):
        return False
    if old_size == new_size:
        return len(proof) == 0 and old_root == new_root
    if len(proof) == 0:
        return False
    path = list(proof)
    if old_size & (old_size - 1) == 0:
        path.insert(0, bytes(old_root))
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            while fn and not fn & 1:
                fn >>= 1
                sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    return sn == 0 and fr == old_root and sr == new_root


def range_proof(start: int, end: int, size: int, get: NodeGetter) -> list[bytes]:
    """The proof that leaves ``[start, end)`` are those of the tree of ``size`` leaves: the
    hashes of the maximal subtrees of the RFC 9162 tree that lie wholly outside the
    range, left to right (at most about ``2 * log2(size)`` of them).  With the range's
    own leaf hashes they give the root (:func:`verify_range`).  Raises ``ValueError``
    unless ``0 <= start < end <= size``."""
    for name, x in (("start", start), ("end", end), ("size", size)):
        _check_int(name, x)
    if not 0 <= start < end <= size:
        raise ValueError(f"need 0 <= start < end <= size, got start={start}, end={end}, size={size}")
    out: list[bytes] = []

    def walk(lo: int, hi: int) -> None:
        if hi <= start or lo >= end:
            out.append(_range_hash(lo, hi, get))
        elif not (start <= lo and hi <= end):
            k = _split(hi - lo)
            walk(lo, lo + k)
            walk(lo + k, hi)

    walk(0, size)
    return out


def verify_range(leaves: Sequence[bytes], start: int, size: int, proof: Sequence[bytes], root_hash: bytes) -> bool:
    """Whether ``leaves`` (leaf hashes) are the leaves ``[start, start + len(leaves))`` of
    the tree of ``size`` leaves whose root is ``root_hash``, by ``proof``
    (:func:`range_proof`).  Never raises: malformed input gives ``False``."""
    if not (_is_int(start) and _is_int(size) and isinstance(leaves, list | tuple)):
        return False
    end = start + len(leaves)
    if not (0 <= start < end <= size and all(_is_hash(x) for x in leaves)):
        return False
    if not (_is_hash(root_hash) and _is_proof(proof, 2 * size.bit_length() + 2)):
        return False
    taken = iter(proof)
    used = 0

    def walk(lo: int, hi: int) -> bytes | None:
        nonlocal used
        if hi <= start or lo >= end:
            used += 1
            return next(taken, None)
        if start <= lo and hi <= end:
            return root(leaves[lo - start : hi - start])
        k = _split(hi - lo)
        left = walk(lo, lo + k)
        right = walk(lo + k, hi)
        if left is None or right is None:
            return None
        return node_hash(left, right)

    got = walk(0, size)
    return got is not None and used == len(proof) and got == root_hash


def _split(n: int) -> int:
    """The largest power of two smaller than ``n`` (``n >= 2``)."""
    return 1 << ((n - 1).bit_length() - 1)


def _get(get: NodeGetter, level: int, index: int) -> bytes:
    h = get(level, index)
    if not _is_hash(h):
        raise ValueError(f"stored node ({level}, {index}) is not a {HASH_SIZE}-byte hash")
    return bytes(h)


def _is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_hash(x: object) -> bool:
    return isinstance(x, bytes | bytearray) and len(x) == HASH_SIZE


def _is_proof(proof: object, max_len: int) -> bool:
    """A list or tuple of at most ``max_len`` hashes."""
    return isinstance(proof, list | tuple) and len(proof) <= max_len and all(_is_hash(p) for p in proof)


def _check_int(name: str, x: object) -> None:
    if not _is_int(x):
        raise TypeError(f"{name} must be an int, got {type(x).__name__}")


def _check_hash(name: str, x: object) -> None:
    if not _is_hash(x):
        got = f"{len(x)} bytes" if isinstance(x, bytes | bytearray) else type(x).__name__
        raise ValueError(f"{name} must be {HASH_SIZE} bytes, got {got}")
