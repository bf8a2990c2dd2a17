"""Term postings: which entries of a segment carry a given user, IP, action...

For each of the fields ``user``, ``action``, ``target``, ``domain``, ``ip`` and
``recipient`` (``details.recipient``), value -> the entries carrying it, each
as (seq offset in the segment, byte offset of its record in the file).  A
selective query reads exactly those records and checks each one's chained
signature (its predecessor's signature is the 32 bytes in front of it), so it
costs per match, not per frame.

Postings are derived data, built off the write path by readers from verified
frames, cached in a ``<seg>.terms`` sidecar MAC'd with a derived key and bound
to the segment's header MAC and size, and rebuilt whenever missing or
inconsistent.  A posting is only a pointer: the record it points at must decode
to the expected seq and verify, or the reader falls back to the whole frame.
A frame that does not verify when the postings are built is not indexed but
listed in ``damaged``: every selective read whose window reaches it visits it
and reports what is wrong with it.
"""

from __future__ import annotations

from array import array
from pathlib import Path

import msgpack

from engine.chain import NodeKey
from engine.entry import R_ACTION, R_DETAILS, R_DOMAIN, R_IP, R_TARGET, R_USER

TERMS_SUFFIX = ".terms"
TERMS_VERSION = 3  # 3: in a compressed segment, offsets into a frame's plain payload; 2: damaged frames listed
TERM_FIELDS = ("user", "action", "target", "domain", "ip", "recipient")
_FIELD_POS = (("user", R_USER), ("action", R_ACTION), ("target", R_TARGET), ("domain", R_DOMAIN), ("ip", R_IP))
_MAC = 32


def terms_path(seg_path: Path) -> Path:
    return seg_path.with_suffix(TERMS_SUFFIX)


class TermIndex:
    """Postings of one segment; ``frames`` says how many frames they cover."""

    def __init__(self, name: str, header_mac: bytes, first_seq: int):
        self.name = name
        self.header_mac = header_mac
        self.first_seq = first_seq
        self.frames = 0
        self.size = 0
        #: ordinals of frames that did not verify when they were indexed
        self.damaged: set[int] = set()
        # field -> value -> array('I') of interleaved (seq offset, file offset),
        # or the packed bytes of the field's map until a query needs it
        self.fields: dict[str, dict | bytes] = {f: {} for f in TERM_FIELDS}
        self._approx = 0

    def has(self, fname: str) -> bool:
        """Whether this field's postings are held (a lean copy may hold only some)."""
        return self.fields.get(fname) is not None

    def field(self, fname: str) -> dict:
        v = self.fields[fname]
        if type(v) is bytes:
            self._approx -= len(v)  # the packed form is dropped once decoded
            try:
                v = msgpack.unpackb(v, raw=False)
                if not isinstance(v, dict):
                    v = {}
            except (ValueError, TypeError, msgpack.UnpackException):
                v = {}
            # keys and posting blobs, decoded: the blobs stay bytes until looked up
            self._approx += sum(len(k) + len(p) + 120 for k, p in v.items())
            self.fields[fname] = v
        return v

    def lean(self, keep) -> TermIndex:
        """A copy holding only the fields in ``keep`` (what queries have asked for)."""
        t = TermIndex(self.name, self.header_mac, self.first_seq)
        t.frames, t.size, t.damaged = self.frames, self.size, self.damaged
        t.fields = {f: (self.fields[f] if f in keep else None) for f in TERM_FIELDS}
        t._approx = 0
        for f in keep:
            v = t.fields.get(f)
            if type(v) is bytes:
                t._approx += len(v)
            elif v:
                t._approx += sum(len(k) + 120 + (len(p) * 4 if type(p) is array else len(p)) for k, p in v.items())
        return t

    def add_frame(self, payload: bytes, payload_offset: int) -> None:
        """Index the records of one verified frame (payload at ``payload_offset`` in the file);
        the caller advances ``frames``."""
        up = msgpack.Unpacker(raw=False, use_list=False, strict_map_key=True)
        up.feed(payload)
        n = up.read_array_header()
        self._approx += 64 * n  # ~6 postings of 8 bytes per record, plus new keys
        first = self.first_seq
        fields = [(self.field(f), pos) for f, pos in _FIELD_POS]
        recipients = self.field("recipient")
        for _ in range(n):
            start = up.tell()
            rec = up.unpack()
            pair = (rec[0] - first, payload_offset + start)
            for idx, pos in fields:
                v = rec[pos]
                if v is not None:
                    _post(idx, v, pair)
            d = rec[R_DETAILS]
            if d and isinstance(d, dict):
                r = d.get("recipient")
                if isinstance(r, str):
                    _post(recipients, r, pair)
                elif isinstance(r, (list, tuple)):  # a multi-recipient mail (query.filters agrees)
                    for v in r:
                        if isinstance(v, str):
                            _post(recipients, v, pair)

    def lookup(self, terms: dict[str, frozenset[str]]) -> list[tuple[int, int]] | None:
        """(seq offset, file offset) of entries matching every constraint, in seq order.

        None when no constraint applies to indexed fields.
        """
        result: dict[int, int] | None = None
        for fname, values in terms.items():
            if fname not in self.fields:
                continue
            if self.fields[fname] is None:
                raise KeyError(fname)  # a lean copy without this field: reload it
            idx = self.field(fname)
            hits: dict[int, int] = {}
            for v in values:
                p = idx.get(v)
                if p is None:
                    continue
                if type(p) is bytes:
                    a = array("I")
                    a.frombytes(p)
                    p = idx[v] = a
                it = iter(p)
                hits.update(zip(it, it))
            if result is None:
                result = hits
            else:
                result = (
                    {k: v for k, v in result.items() if k in hits}
                    if len(result) <= len(hits)
                    else {k: result[k] for k in hits if k in result}
                )
            if not result:
                return []
        if result is None:
            return None
        return sorted(result.items())

    # -- persistence -----------------------------------------------------------

    def to_bytes(self, key: NodeKey, size: int) -> bytes:
        packed = {}
        for f in TERM_FIELDS:
            v = self.fields[f]
            if type(v) is not bytes:
                v = msgpack.packb(
                    {k: (p.tobytes() if type(p) is array else p) for k, p in v.items()}, use_bin_type=True
                )
            packed[f] = v
        body = msgpack.packb(
            {
                "v": TERMS_VERSION,
                "name": self.name,
                "header_mac": self.header_mac,
                "first_seq": self.first_seq,
                "frames": self.frames,
                "size": size,
                "damaged": sorted(self.damaged),
                "fields": packed,
            },
            use_bin_type=True,
        )
        return body + key.mac(b"terms", body)

    @classmethod
    def from_bytes(cls, raw: bytes, key: NodeKey) -> TermIndex | None:
        if len(raw) < _MAC or key.mac(b"terms", raw[:-_MAC]) != raw[-_MAC:]:
            return None
        try:
            d = msgpack.unpackb(raw[:-_MAC], raw=False)
            if not isinstance(d, dict) or d.get("v") != TERMS_VERSION:
                return None
            t = cls(d["name"], d["header_mac"], d["first_seq"])
            t.frames, t.size = d["frames"], d["size"]
            t.damaged = set(d["damaged"])
            if not all(type(o) is int and 0 <= o < t.frames for o in t.damaged):
                return None
            fields = d["fields"]
            t.fields = {f: fields[f] if isinstance(fields.get(f), bytes) else {} for f in TERM_FIELDS}
            t._approx = sum(len(v) for v in t.fields.values() if type(v) is bytes)
            return t
        except (ValueError, KeyError, TypeError, msgpack.UnpackException):
            return None

    def approx_bytes(self) -> int:
        """A cheap running estimate of the memory held (for the readers' cache budget)."""
        return self._approx


def _post(idx: dict, value, pair: tuple[int, int]) -> None:
    a = idx.get(value)
    if a is None:
        idx[value] = array("I", pair)
    else:
        if type(a) is bytes:
            b = array("I")
            b.frombytes(a)
            a = idx[value] = b
        a.extend(pair)
