"""The stored entry and its canonical (signed) encoding.

What exactly is signed: the msgpack encoding of the array

    [node, seq, ts, user, action, target, domain, ip, user_agent, success, details]

with ``details`` a map whose keys are sorted (recursively).  The record stored
in a frame is the array

    [seq, ts, user, action, target, domain, ip, user_agent, success, details, signature]

so the stored record shares every byte of the signed encoding after the node
(see docs/FORMAT.md).  ``signature`` is 32 raw bytes.
"""

from __future__ import annotations

import datetime as _dt
from typing import Any, NamedTuple

import msgpack
import msgspec

_packer = msgpack.Packer(use_bin_type=True)
_pack = _packer.pack

# Field positions in a stored record (a decoded frame payload element).
R_SEQ, R_TS, R_USER, R_ACTION, R_TARGET, R_DOMAIN, R_IP, R_UA, R_SUCCESS, R_DETAILS, R_SIG = range(11)
RECORD_FIELDS = 11
_FIXARRAY_11 = b"\x9b"
_BIN8_32 = b"\xc4\x20"
#: For the writer: the header of the canonical array (and of the record, both
#: have 11 elements), and the packer every canonical encoding uses.
RECORD_HEADER = _FIXARRAY_11
pack_value = _pack

#: ``sub`` of an entry's position ``(seq, sub)`` in its node's log; markers for
#: damage sit before the entry of the same seq (``engine.items``)
ENTRY_SUB = 100

#: The entry's wire shape (SPEC section 3), declared once: the fields of its JSON
#: object in this order, each the ``Entry`` attribute of that name (``id`` is
#: ``node:seq``), converted by ``WIRE_CONVERSIONS`` where the wire differs from what
#: is stored; ``violation`` (``WIRE_OPTIONAL``) follows only when set.  ``to_wire``,
#: the NDJSON renderers (``export.ndjson`` builds its line makers from this), the CSV
#: columns (``export.csv``) and the peers' compact rows (``query.cluster.peers``) all
#: follow it.
WIRE_FIELDS = (
    "id",
    "node",
    "seq",
    "ts",
    "user",
    "action",
    "target",
    "domain",
    "ip",
    "user_agent",
    "success",
    "details",
    "signature",
    "integrity",
)
WIRE_OPTIONAL = "violation"


class EntryDraft(NamedTuple):
    """A validated event before the node assigns seq, ts and signature."""

    user: str
    action: str
    target: str | None = None
    domain: str | None = None
    ip: str | None = None
    user_agent: str | None = None
    success: bool = True
    details: dict = {}


def sort_details(value: Any) -> Any:
    """Return ``value`` with every map's keys sorted, recursively (canonical form)."""
    if isinstance(value, dict):
        return {k: sort_details(value[k]) for k in sorted(value)}
    if isinstance(value, (list, tuple)):
        return [sort_details(v) for v in value]
    return value


def canonical_bytes(node: str, seq: int, ts: int, draft: EntryDraft | tuple) -> bytes:
    """The bytes that are signed for one entry."""
    return _pack([node, seq, ts, *draft])


def pack_draft(draft: EntryDraft) -> bytes:
    """A draft's fields exactly as they appear in its canonical encoding.

    The canonical array is ``[node, seq, ts, *draft]``, and msgpack encodes
    an array as a header followed by its elements one after another, so these
    bytes are the encoding's tail: the writer completes them with the header,
    node, seq and ts (``LogWriter.append_batch`` takes packed drafts as well as
    drafts).  ``details`` must already be canonical, as validated drafts are.
    Lets the costly packing run where validation runs (a worker process).
    """
    return _pack(draft)[1:]  # drop the fixarray(8) header


def record_from_canonical(node_len: int, canonical: bytes, signature: bytes) -> bytes:
    """Stored record bytes, reusing the canonical encoding (no second pack)."""
    return _FIXARRAY_11 + canonical[1 + node_len :] + _BIN8_32 + signature


def packed_len(node: str) -> int:
    return len(_pack(node))


def format_ts(ts_us: int) -> str:
    """µs since the epoch (UTC) -> RFC 3339 with microseconds and ``Z``."""
    secs, micros = divmod(ts_us, 1_000_000)
    d = _dt.datetime(1970, 1, 1) + _dt.timedelta(seconds=secs)
    return f"{d:%Y-%m-%dT%H:%M:%S}.{micros:06d}Z"


class Entry(msgspec.Struct, array_like=True, gc=False):
    """One entry as read back, with the integrity verdict of this read.

    Its first fields are those of the stored record, in their order, so a verified
    frame's plain payload decodes straight into entries (:func:`decode_entries`, in
    C, no object per field); ``node`` and the verdict follow.  The record fields are
    not type-checked on decoding (``Any``), as a frame that verified holds what the
    writer wrote; a damaged frame's records go through ``engine.items.salvage``,
    which builds well-typed entries.  Build one in code with :meth:`of`.
    """

    seq: Any
    ts: Any
    user: Any
    action: Any
    target: Any
    domain: Any
    ip: Any
    user_agent: Any
    success: Any
    details: Any
    signature: Any
    node: str = ""
    integrity: str = "ok"
    violation: str | None = None
    sub: int = ENTRY_SUB
    #: a marker's place in the read (its ``seq`` names the range it stands for)
    pos_seq: int = 0

    @classmethod
    def of(
        cls,
        node: str,
        seq: int,
        ts: int,
        user: str,
        action: str,
        target: str | None,
        domain: str | None,
        ip: str | None,
        user_agent: str | None,
        success: bool,
        details: dict,
        signature: bytes,
        integrity: str = "ok",
        violation: str | None = None,
    ) -> Entry:
        return cls(
            seq,
            ts,
            user,
            action,
            target,
            domain,
            ip,
            user_agent,
            success,
            details,
            signature,
            node,
            integrity,
            violation,
            ENTRY_SUB,
            seq,
        )

    @classmethod
    def from_record(cls, node: str, rec: tuple | list, integrity: str = "ok") -> Entry:
        return cls.of(node, *rec, integrity)

    @classmethod
    def from_records(cls, node: str, recs) -> list[Entry]:
        """Entries of verified records already decoded (tuples or lists)."""
        return [cls(*r, node) for r in recs]

    @classmethod
    def marker(cls, node: str, seq: int, ts: int, violation: str) -> Entry:
        """Stand-in for an undecodable range: ``seq`` is the first seq of the range."""
        return cls.of(
            node,
            seq,
            ts,
            "",
            "audit.integrity_violation",
            None,
            None,
            None,
            None,
            False,
            {},
            b"",
            "violation",
            violation,
        )

    @property
    def id(self) -> str:
        return f"{self.node}:{self.seq}"

    @property
    def position(self) -> tuple[int, int]:
        """Where the entry sits in its node's log (``engine.items``): cursors continue after it."""
        return (self.seq, ENTRY_SUB) if self.sub == ENTRY_SUB else (self.pos_seq, self.sub)

    def to_wire(self) -> dict:
        """The JSON shape of SPEC section 3 (``WIRE_FIELDS``: ts as RFC 3339, signature as hex)."""
        convert = WIRE_CONVERSIONS
        d = {f: convert[f](getattr(self, f)) if f in convert else getattr(self, f) for f in WIRE_FIELDS}
        if self.violation is not None:
            d[WIRE_OPTIONAL] = self.violation
        return d

    def __repr__(self) -> str:
        return f"Entry({self.id} {self.action} by {self.user!r}, {self.integrity})"


def _plain(value: Any) -> Any:
    """Tuples (as msgpack decodes arrays) back to lists for JSON."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


_entries_decoder = msgspec.msgpack.Decoder(list[Entry])


def decode_entries(node: str, plain: bytes) -> list[Entry]:
    """The entries of a verified frame's plain payload (a msgpack array of stored
    records), decoded straight into :class:`Entry` objects.  Raises ValueError
    when the payload is not such an array."""
    try:
        out = _entries_decoder.decode(plain)
    except (msgspec.DecodeError, msgspec.ValidationError) as e:
        raise ValueError(f"records do not decode: {e}") from None
    for e in out:
        e.node = node
    return out


#: stored value -> wire value, for the wire fields that are not sent as stored:
#: ``ts`` (int microseconds) as RFC 3339 text, ``signature`` (32 bytes) as hex,
#: ``details`` with arrays as lists
WIRE_CONVERSIONS: dict[str, Any] = {"ts": format_ts, "signature": bytes.hex, "details": _plain}
