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

from collections.abc import Iterable

import msgpack

from engine.entry import EntryDraft, canonical_bytes
from engine.errors import EngineError
from engine.items import Damage, VerifiedFrame
from engine.merkle import CompactTree, leaf_hash
from engine.note import Checkpoint, sign
from engine.state import StateSeal, StateTampered

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


class LogTree:
    """The tree of one node's log, kept up with its verified entries on demand."""

    def __init__(self, log, seal: StateSeal, state_dir):
        self.log = log
        self.node_id = log.node
        self._seal = seal
        self._path = state_dir / TREE_FILE
        self._prefix = leaf_prefix(self.node_id)

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
        first = self._first_seq()
        if first is not None and first > tree.size + 1:
            raise TreeError(
                f"the log starts at seq {first} but the tree ends at {tree.size}: the entries between "
                "were dropped before the tree took them in"
            )
        after = (tree.size, 1 << 62) if tree.size else None
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
                tree.append(h)
            if through_seq is not None and tree.size >= through_seq:
                break
        if save and tree.size != start:
            self.save(tree)
        return tree


def signed_checkpoint(node_id: str, key, tree: CompactTree) -> str:
    """The C2SP signed checkpoint of ``tree`` (FORMAT.md section 14)."""
    name = origin(node_id)
    return sign(Checkpoint(name, tree.size, tree.root()).text(), name, key)


def record_tree_head(writer) -> tuple[str, int]:
    """Bring the tree up to the log, sign a checkpoint of it and append that as an
    ``audit.tree_head`` entry; ``(the signed checkpoint, the entry's seq)``."""
    tree = LogTree(writer.log, StateSeal(writer.key, writer.node), writer.data_dir.state).extend()
    note = signed_checkpoint(writer.node, writer.signing_key, tree)
    details = {"size": tree.size, "root": tree.root().hex(), "checkpoint": note}
    res = writer.append_batch([EntryDraft("system", TREE_HEAD_ACTION, target=origin(writer.node), details=details)])
    return note, res.last_seq
