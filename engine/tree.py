"""The Merkle tree over a node's entries (RFC 6962), as FORMAT.md section 14 defines it.

Leaf ``seq - 1`` is the entry of seq ``seq``; its leaf data is the entry's
canonical encoding (FORMAT.md section 5.1) followed by its 32-byte signature,
so a leaf commits to everything the HMAC chain commits to, and a proof about it
can be checked by someone who holds neither the node key nor the log.

The tree is built from verified frames only, in seq order, and what is needed
to go on (its size, the roots of its perfect subtrees, its root) is kept in the
sealed state file ``state/tree.json``; nothing else about the tree is stored
yet.  Retention brings the tree up to the end of what it drops first, so the
tree goes on after segments are gone.  A read that meets damage, or a log that
does not go on where the tree ends, stops the tree with :class:`TreeError`: a
tree head vouches for every entry before it.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable

import msgpack

from auditlog.engine.entry import EntryDraft, canonical_bytes
from auditlog.engine.errors import EngineError
from auditlog.engine.items import Damage, VerifiedFrame
from auditlog.engine.merkle import CompactTree, consistency_proof, inclusion_proof, leaf_hash, node_hash
from auditlog.engine.note import Checkpoint, sign
from auditlog.engine.state import StateSeal, StateTampered
from auditlog.engine.tiles import STORED_FROM, TILE_LEAVES, TileError, TreeNodes

TREE_FILE = "tree.json"
#: the action of the entries that record the node's signed checkpoints
TREE_HEAD_ACTION = "audit.tree_head"
_SIG = 32


def origin(node_id: str) -> str:
    """The origin line of the node's checkpoints, also its key name in their signatures."""
    return f"auditlog/{node_id}"


class TreeError(EngineError):
    """The tree cannot be brought up to the log (damage, a gap, a state that does not
    fit the log)."""

    http_status = 409


def leaf_prefix(node_id: str) -> bytes:
    """``0x9b ‖ msgpack(node)``: how every leaf of the node's tree begins."""
    return b"\x9b" + msgpack.packb(node_id)


def record_leaf(prefix: bytes, record: bytes) -> bytes:
    """The leaf data of a stored record's raw bytes (FORMAT.md sections 5.1 and 14):
    ``0x9b ‖ msgpack(node) ‖ R[1 : len(R)-34] ‖ R[len(R)-32 :]``."""
    return prefix + record[1:-34] + record[-_SIG:]


def record_spans(plain: bytes) -> list[bytes]:
    """The raw bytes of each record of a frame's plain payload."""
    up = msgpack.Unpacker(raw=False, use_list=False, strict_map_key=True)
    up.feed(plain)
    n = up.read_array_header()
    out, at = [], up.tell()
    for _ in range(n):
        up.skip()
        end = up.tell()
        out.append(plain[at:end])
        at = end
    return out


def frame_leaves(node_id: str, prefix: bytes, item: VerifiedFrame) -> Iterable[tuple[int, bytes]]:
    """``(seq, leaf hash)`` of every entry of a verified frame, in seq order."""
    if item.payload:
        for rec in record_spans(item.payload):
            seq = _seq_of(rec)
            yield seq, leaf_hash(record_leaf(prefix, rec))
        return
    for e in item.entries():  # a part of a frame: the entries it holds
        draft = (e.user, e.action, e.target, e.domain, e.ip, e.user_agent, e.success, e.details)
        yield e.seq, leaf_hash(canonical_bytes(node_id, e.seq, e.ts, draft) + e.signature)


def _seq_of(record: bytes) -> int:
    up = msgpack.Unpacker(raw=False)
    up.feed(record[1:10])  # the array header, then seq (at most 9 bytes)
    return up.unpack()


TREE_DIR = "tree"
#: tiles (their nodes below the stored levels) and stored nodes a getter keeps
_TILES_KEPT = 16
_STORED_KEPT = 4096
_AFTER_ALL = 1 << 62


class LogTree:
    """The tree of one node's log, kept up with its verified entries on demand, and
    the proofs it gives (from stored nodes and the leaves of verified frames)."""

    def __init__(self, log, node_key, data_dir):
        self.log = log
        self.node_id = log.node
        self._seal = StateSeal(node_key, self.node_id)
        self._path = data_dir.state / TREE_FILE
        self.nodes = TreeNodes(data_dir.root / TREE_DIR, node_key)
        self._prefix = leaf_prefix(self.node_id)

    def close(self) -> None:
        self.nodes.close()

    def __enter__(self) -> LogTree:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _first_seq(self) -> int | None:
        for info in self.log.segment_infos():
            if info.header is not None:
                return info.header.first_seq
        return None

    def load(self) -> CompactTree:
        """The tree as last saved (empty when there is no state yet)."""
        try:
            data = self._seal.read(self._path)
        except StateTampered as e:
            raise TreeError(f"the tree's state is not to be believed: {e}") from None
        if data is None:
            return CompactTree()
        try:
            tree = CompactTree(data["size"], [bytes.fromhex(h) for h in data["frontier"]])
        except (KeyError, TypeError, ValueError):
            raise TreeError("the tree's state is not of the expected shape") from None
        if tree.root().hex() != data.get("root"):
            raise TreeError("the tree's state does not add up to its own root")
        return tree

    def save(self, tree: CompactTree) -> None:
        data = {"size": tree.size, "frontier": [h.hex() for h in tree.frontier], "root": tree.root().hex()}
        try:
            self._seal.write(self._path, data)
        except OSError as e:
            raise TreeError(f"cannot save the tree's state ({self._path.name}): {e.strerror or e}") from None

    def extend(self, through_seq: int | None = None, save: bool = True) -> CompactTree:
        """Bring the tree up to the log's last entry (or ``through_seq``), from verified
        frames, save it (unless ``save`` is false: a process that does not own the
        node's writer), and return it."""
        tree = self.load()
        start = tree.size
        head = self.log.head()[0]
        if tree.size > head:
            raise TreeError(
                f"the tree covers {tree.size} entries but the log ends at seq {head}: "
                "entries the tree took in are gone from the log"
            )
        first = self._first_seq()
        if first is not None and first > tree.size + 1:
            raise TreeError(
                f"the log starts at seq {first} but the tree ends at {tree.size}: the entries between "
                "were dropped before the tree took them in"
            )
        after = (tree.size, _AFTER_ALL) if tree.size else None
        put = self.nodes.put if save else None
        for item in self.log.read(after=after):
            if isinstance(item, Damage):
                raise TreeError(
                    f"the log has damage ({item.describe()}): a tree head vouches for every entry "
                    "before it (run: auditlog verify)"
                )
            if not isinstance(item, VerifiedFrame):
                continue
            for seq, h in frame_leaves(self.node_id, self._prefix, item):
                if seq <= tree.size:
                    continue
                if through_seq is not None and seq > through_seq:
                    break
                if seq != tree.size + 1:
                    raise TreeError(f"the log skips from seq {tree.size} to {seq}")
                for level, index, node_h in tree.append(h):
                    if level >= STORED_FROM and put is not None:
                        put(level, index, node_h)
            if through_seq is not None and tree.size >= through_seq:
                break
        if save and tree.size != start:
            try:
                self.nodes.sync()
            except OSError as e:
                raise TreeError(f"cannot save the tree's nodes: {e.strerror or e}") from None
            self.save(tree)
        return tree

    def keep_cut_tile(self, first_kept_seq: int) -> None:
        """Before retention drops the entries below ``first_kept_seq``: keep the leaf hashes
        of the part of its tile that goes, which the proofs of the rest still need."""
        first = first_kept_seq - 1  # its leaf index
        start = first - first % TILE_LEAVES
        if start == first:
            return
        self.nodes.keep_leaves(dict(zip(range(start, first), self._leaves(start, first, {}), strict=True)))

    # -- proofs ---------------------------------------------------------------------

    def _leaves(self, start: int, end: int, kept: dict[int, bytes] | None) -> list[bytes]:
        """Leaf hashes ``start .. end-1``: from verified frames, or kept by retention."""
        out: list[bytes] = []
        if kept:
            while start + len(out) < end and start + len(out) in kept:
                out.append(kept[start + len(out)])
        if start + len(out) == end:
            return out
        for item in self.log.read(after=(start + len(out), _AFTER_ALL)):
            if isinstance(item, Damage):
                raise TreeError(f"the log has damage ({item.describe()}): no proof can rest on it")
            if not isinstance(item, VerifiedFrame):
                continue
            for seq, h in frame_leaves(self.node_id, self._prefix, item):
                if seq <= start + len(out):
                    continue
                if seq != start + len(out) + 1:
                    raise TreeError(f"leaf {start + len(out)} is no longer in the log (retention) and was not kept")
                out.append(h)
                if start + len(out) == end:
                    return out
        raise TreeError(f"the log holds no entry for leaf {start + len(out)}")

    def getter(self, size: int):
        """``get(level, index)`` for proofs within the first ``size`` leaves.  The nodes
        of the last tiles asked for (every level below the stored ones) and the stored
        nodes read lately are kept, so proofs of neighbouring entries cost little."""
        tiles: OrderedDict[int, list[list[bytes]]] = OrderedDict()
        stored: OrderedDict[tuple[int, int], bytes] = OrderedDict()
        kept: dict[int, bytes] | None = None

        def tile(t: int) -> list[list[bytes]]:
            nonlocal kept
            got = tiles.get(t)
            if got is not None:
                tiles.move_to_end(t)
                return got
            if kept is None:
                kept = self.nodes.kept_leaves()
            lo = t * TILE_LEAVES
            levels = [self._leaves(lo, min(lo + TILE_LEAVES, size), kept)]
            while len(levels) < STORED_FROM:
                below = levels[-1]
                levels.append([node_hash(below[i], below[i + 1]) for i in range(0, len(below) - 1, 2)])
            tiles[t] = levels
            if len(tiles) > _TILES_KEPT:
                tiles.popitem(last=False)
            return levels

        def get(level: int, index: int) -> bytes:
            if level >= STORED_FROM:
                h = stored.get((level, index))
                if h is None:
                    h = stored[(level, index)] = self.nodes.get(level, index)
                    if len(stored) > _STORED_KEPT:
                        stored.popitem(last=False)
                return h
            per_tile = TILE_LEAVES >> level
            return tile(index // per_tile)[level][index % per_tile]

        return get

    def inclusion(self, seq: int, size: int) -> tuple[bytes, list[bytes]]:
        """The leaf hash of the entry of ``seq`` and its inclusion proof in the tree of
        ``size`` leaves (which the tree must have reached)."""
        if not 1 <= seq <= size:
            raise TreeError(f"seq {seq} is not in a tree of {size} entries")
        get = self.getter(size)
        try:
            return get(0, seq - 1), inclusion_proof(seq - 1, size, get)
        except TileError as e:
            raise TreeError(str(e)) from None

    def consistency(self, old_size: int, new_size: int) -> list[bytes]:
        """The consistency proof from the tree of ``old_size`` leaves to ``new_size``."""
        if not 0 < old_size <= new_size:
            raise TreeError(f"no consistency proof from {old_size} to {new_size} entries")
        try:
            return consistency_proof(old_size, new_size, self.getter(new_size))
        except TileError as e:
            raise TreeError(str(e)) from None


def signed_checkpoint(node_id: str, key, tree: CompactTree) -> str:
    """The C2SP signed checkpoint of ``tree`` (FORMAT.md section 14)."""
    name = origin(node_id)
    return sign(Checkpoint(name, tree.size, tree.root()).text(), name, key)


def record_tree_head(writer) -> tuple[str, int]:
    """Bring the tree up to the log, sign a checkpoint of it and append that as an
    ``audit.tree_head`` entry; ``(the signed checkpoint, the entry's seq)``."""
    with LogTree(writer.log, writer.key, writer.data_dir) as lt:
        tree = lt.extend()
    note = signed_checkpoint(writer.node, writer.signing_key, tree)
    details = {"size": tree.size, "root": tree.root().hex(), "checkpoint": note}
    res = writer.append_batch([EntryDraft("system", TREE_HEAD_ACTION, target=origin(writer.node), details=details)])
    return note, res.last_seq
