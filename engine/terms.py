"""Term postings: which entries of a segment carry a given user, IP, action...

For each of the fields ``user``, ``action``, ``target``, ``domain``, ``ip`` and
``recipient`` (``details.recipient``, each address of a list), a segment's
postings say which entries carry a value, as seq offsets from the segment's
first seq.  They are held as packed integer arrays, never as a Python object
per value or per entry: per field a :class:`Table` of the distinct values'
32-bit hashes (sorted), where each value's postings end, and one array of u32
seq offsets (ascending per value; on disk each value's as msgpack deltas, about
1 to 2 bytes each for a value that recurs).  Two values may share a hash: a lookup then
returns the entries of both, and the reader confirms each record it reads
(:func:`record_matches`), so postings only ever say where to look.

Postings are derived data, built off the write path by readers from frames
that verified (:class:`TermBuilder`: records go into an open chunk until
:data:`CHUNK_RECORDS`, which is then packed into a :class:`Run` of tables), and
kept in a ``<seg>.terms`` sidecar (:func:`write_terms`, :class:`TermFile`):
the data area (every table, little-endian) is read in blocks of
:data:`BLOCK` bytes, each checked against its SHA-256 in the header when it
is read, and the header is MAC'd with a derived key and bound to the segment
(header MAC) and to the frames it covers (their count, where they end, the
MAC of the last one), so a sidecar can cover the active segment's first
frames too.  Only what a lookup touches is read, checked and kept in memory.

A frame that does not verify when the postings are built is not indexed but
listed in ``damaged``: every selective read whose window reaches it visits it
and reports what is wrong with it.
"""

from __future__ import annotations

import bisect
import hashlib
import heapq
import hmac
import os
import struct
import sys
from array import array
from collections import defaultdict
from collections.abc import Iterator
from itertools import accumulate, repeat
from operator import itemgetter, sub
from pathlib import Path

import msgpack
import xxhash

from auditlog.engine.chain import NodeKey
from auditlog.engine.entry import R_ACTION, R_DETAILS, R_DOMAIN, R_IP, R_TARGET, R_USER

TERMS_SUFFIX = ".terms"
# 5: each value's seq offsets stored as msgpack deltas; 4: as u32 (then rebuilt);
# 3: msgpack maps of values, offsets into a frame's plain payload
TERMS_VERSION = 5
TERM_FIELDS = ("user", "action", "target", "domain", "ip", "recipient")
FIELD_NO = {f: i for i, f in enumerate(TERM_FIELDS)}
#: where the first five fields sit in a stored record (``recipient`` comes from details)
_RECORD_POS = (R_USER, R_ACTION, R_TARGET, R_DOMAIN, R_IP)
_RECIPIENT = FIELD_NO["recipient"]
#: records of the open (dict) chunk before it is packed into a run
CHUNK_RECORDS = 4096
#: what one record of the open chunk costs in memory (its values' keys, lists and
#: int objects), measured with tracemalloc on the gateway mix, rounded up
OPEN_RECORD_BYTES = 320
#: bytes per checked block of a sidecar's data area
BLOCK = 16384
#: keys per fence entry: a lookup reads at most this many keys (4 KiB) of a table
FENCE_KEYS = 512
HASH_BITS = 32
#: seq offsets are u32: a segment of more entries is not indexed past that
MAX_SEQ_OFFSET = 2**32 - 1
MAGIC = b"ATRM"
_TRAILER = struct.Struct("<I4s")  # header length, magic
_MAC = 32
_DIGEST = 32
_BIG_ENDIAN = sys.byteorder == "big"
_first = itemgetter(0)

if array("I").itemsize != 4 or array("Q").itemsize != 8:  # pragma: no cover - every platform we run on
    raise ImportError("engine.terms needs 4-byte 'I' and 8-byte 'Q' arrays")


class TermsDamaged(Exception):
    """A sidecar's block does not match its digest (internal)."""


class TermsChanged(TermsDamaged):
    """A sidecar was replaced since its header was read (internal): read it again."""


def terms_path(seg_path: Path) -> Path:
    return seg_path.with_suffix(TERMS_SUFFIX)


# -- values ------------------------------------------------------------------------


def record_values(rec) -> Iterator[tuple[int, str]]:
    """``(field number, value)`` for every indexed value of a stored record.  Only
    strings: a filter's values are strings, so nothing else can match them."""
    for no, pos in enumerate(_RECORD_POS):
        v = rec[pos]
        if type(v) is str:
            yield no, v
    for v in recipients(rec[R_DETAILS]):
        yield _RECIPIENT, v


def recipients(details) -> Iterator[str]:
    """The addresses of ``details.recipient``: one, or each of a list (once)."""
    if type(details) is not dict:
        return
    r = details.get("recipient")
    if type(r) is str:
        yield r
    elif isinstance(r, (list, tuple)):  # a multi-recipient mail (query.filters agrees)
        yield from dict.fromkeys(x for x in r if type(x) is str)


def record_matches(rec, wanted: dict[int, frozenset[str]]) -> bool:
    """Whether a stored record carries, for every field in ``wanted`` (field number ->
    values), one of the values: what a posting promised, confirmed on the record."""
    for no, values in wanted.items():
        if no == _RECIPIENT:
            if not any(v in values for v in recipients(rec[R_DETAILS])):
                return False
        else:
            v = rec[_RECORD_POS[no]]
            if type(v) is not str or v not in values:
                return False
    return True


def wanted_fields(terms: dict[str, frozenset[str]]) -> dict[int, frozenset[str]]:
    """The constraints of ``terms`` on indexed fields, by field number (others ignored)."""
    return {FIELD_NO[f]: frozenset(v) for f, v in terms.items() if f in FIELD_NO}


class TermHash:
    """A value's hash in the tables: XXH3-64 of its UTF-8 bytes, seeded from the index
    key, cut to ``bits`` (32; fewer only to force collisions in tests).  A collision
    costs a record read and dropped, never a wrong answer."""

    __slots__ = ("seed", "bits", "_mask")

    def __init__(self, seed: int, bits: int = HASH_BITS):
        if not 1 <= bits <= 32:
            raise ValueError("hash bits must be 1 to 32")
        self.seed, self.bits, self._mask = seed, bits, (1 << bits) - 1

    @classmethod
    def for_key(cls, index_key: NodeKey, bits: int = HASH_BITS) -> TermHash:
        return cls(int.from_bytes(index_key.mac(b"terms value hash")[:8], "little"), bits)

    def with_bits(self, bits: int) -> TermHash:
        return self if bits == self.bits else TermHash(self.seed, bits)

    def __call__(self, value: str) -> int:
        return xxhash.xxh3_64_intdigest(value.encode("utf-8", "surrogatepass"), self.seed) & self._mask


# -- packed tables -------------------------------------------------------------------


class Table:
    """One field's postings over some frames: ``keys`` (distinct value hashes, sorted),
    ``ends`` (where each key's postings end in ``posts``), ``posts`` (u32 seq offsets,
    ascending per key)."""

    __slots__ = ("keys", "ends", "posts")

    def __init__(self, keys: array | None = None, ends: array | None = None, posts: array | None = None):
        self.keys = array("I") if keys is None else keys
        self.ends = array("I") if ends is None else ends
        self.posts = array("I") if posts is None else posts

    def seqs(self, h: int) -> array | None:
        keys = self.keys
        i = bisect.bisect_left(keys, h)
        if i == len(keys) or keys[i] != h:
            return None
        return self.posts[self.ends[i - 1] if i else 0 : self.ends[i]]

    def nbytes(self) -> int:
        """Memory held, in real bytes (the arrays' allocations)."""
        return sys.getsizeof(self.keys) + sys.getsizeof(self.ends) + sys.getsizeof(self.posts)

    def spans(self, tag: int) -> Iterator[tuple[int, int, int]]:
        """``(hash, tag, key index)`` in hash order, for :func:`merge_tables`."""
        return zip(self.keys, repeat(tag), range(len(self.keys)))


def pack_values(values: dict, hasher: TermHash) -> Table:
    """A table of ``value -> ascending seq offsets`` (values of one hash merged; values
    that are not strings left out: a filter's values are strings)."""
    items = sorted(((hasher(v), p) for v, p in values.items() if type(v) is str), key=_first)
    t = Table()
    keys, ends, posts = t.keys, t.ends, t.posts
    last = -1
    for h, p in items:
        if h == last:  # two values, one hash: one key, their postings merged in seq order
            start = ends[-2] if len(ends) > 1 else 0
            merged = sorted(set(posts[start:].tolist() + p))
            del posts[start:]
            posts.extend(merged)
            ends[-1] = len(posts)
            continue
        keys.append(h)
        posts.extend(p)
        ends.append(len(posts))
        last = h
    return t


def merge_tables(tables: list[Table]) -> Table:
    """One table of several, given in seq order (so each key's postings stay ascending)."""
    if len(tables) == 1:
        return tables[0]
    out = Table()
    keys, ends, posts = out.keys, out.ends, out.posts
    last = -1
    for h, i, j in heapq.merge(*(t.spans(i) for i, t in enumerate(tables))):
        t = tables[i]
        if h != last:
            if keys:
                ends.append(len(posts))
            keys.append(h)
            last = h
        posts.extend(t.posts[t.ends[j - 1] if j else 0 : t.ends[j]])
    if keys:
        ends.append(len(posts))
    return out


class Run:
    """Packed postings of frames up to ``end_frame`` (from where the run before ends):
    one table per field."""

    __slots__ = ("end_frame", "tables")

    def __init__(self, end_frame: int, tables: list[Table]):
        self.end_frame = end_frame
        self.tables = tables

    def nbytes(self) -> int:
        return 64 + sum(t.nbytes() for t in self.tables)


# -- building ------------------------------------------------------------------------


class TermBuilder:
    """The postings of one segment, built frame by frame from verified payloads:
    packed runs of about :data:`CHUNK_RECORDS` records each, and the open chunk
    (``value -> seq offsets``) of the frames since the last run.  ``base``: a sidecar
    that covers the segment's first frames (the builder goes on after them)."""

    def __init__(
        self,
        name: str,
        header_mac: bytes,
        first_seq: int,
        hasher: TermHash,
        base: TermFile | None = None,
        chunk_records: int = CHUNK_RECORDS,
    ):
        self.name = name
        self.chunk_records = chunk_records
        self.header_mac = header_mac
        self.first_seq = first_seq
        self.hasher = hasher
        self.base: TermFile | None = None
        self.frames = 0
        #: ordinals of frames that did not verify when they were indexed
        self.damaged: set[int] = set()
        #: the first 8 bytes of the MAC each frame had when it was indexed: a frame
        #: rewritten in place (a rolled-back commit) is noticed
        self.macs = array("Q")
        self.runs: list[Run] = []
        #: records indexed since the base (in ``runs`` and the open chunk)
        self.new_records = 0
        #: False once the segment holds more entries than u32 offsets reach
        self.usable = True
        #: True once its sidecar could not be written (kept in memory instead)
        self.unwritable = False
        self._open: list[defaultdict] = [defaultdict(list) for _ in TERM_FIELDS]
        self._open_records = 0
        if base is not None:
            self.rebase(base)

    def rebase(self, base: TermFile) -> None:
        """Go on from ``base``, a sidecar covering every frame indexed here so far (or,
        for a new builder, the segment's first frames): what is in memory is dropped."""
        self.base = base
        self.frames = base.frames
        self.damaged = set(base.damaged)
        self.macs = array("Q", base.macs)
        self.runs = []
        self.new_records = 0
        self._open = [defaultdict(list) for _ in TERM_FIELDS]
        self._open_records = 0

    def add_frame(self, plain: bytes, mac: bytes) -> None:
        """Index the records of the next frame (its verified plain payload)."""
        recs = msgpack.unpackb(plain, raw=False, use_list=False, strict_map_key=True)
        if not (isinstance(recs, tuple) and all(type(r) is tuple and len(r) == 11 for r in recs)):
            raise ValueError("frame payload is not a list of records")
        if not recs:
            self._frame_done(0, mac)
            return
        cols = list(zip(*recs))
        first = self.first_seq
        seqs = cols[0]
        if not (all(type(q) is int for q in seqs) and 0 <= min(seqs) - first and max(seqs) - first <= MAX_SEQ_OFFSET):
            self.usable = False  # not indexable by u32 offsets (or not seqs): not used
            self._frame_done(len(recs), mac)
            return
        offsets = [q - first for q in seqs]
        opened = self._open
        for no, pos in enumerate(_RECORD_POS):
            d = opened[no]
            for so, v in zip(offsets, cols[pos]):
                d[v].append(so)  # every value here; only strings are kept when packed
        recipient = opened[_RECIPIENT]
        for so, det in zip(offsets, cols[R_DETAILS]):
            if type(det) is dict and "recipient" in det:
                for v in recipients(det):
                    recipient[v].append(so)
        self._frame_done(len(recs), mac)

    def _frame_done(self, n: int, mac: bytes) -> None:
        self._open_records += n
        self.new_records += n
        self.frames += 1
        self.macs.append(mac_prefix(mac))
        if self._open_records >= self.chunk_records:
            self.close_chunk()

    def skip_frame(self, mac: bytes | None) -> None:
        """The next frame did not verify: listed as damaged, not indexed."""
        self.damaged.add(self.frames)
        self.frames += 1
        self.macs.append(mac_prefix(mac))

    def close_chunk(self) -> None:
        """Pack the open chunk into a run."""
        if not self._open_records:
            return
        self.runs.append(Run(self.frames, [pack_values(d, self.hasher) for d in self._open]))
        self._open = [defaultdict(list) for _ in TERM_FIELDS]
        self._open_records = 0

    def add_seqs(self, no: int, values: frozenset[str], out: set[int], reader: BlockReader | None) -> None:
        """Add to ``out`` the seq offsets of every entry whose field ``no`` may hold one of
        ``values`` (a superset when hashes collide)."""
        if self.base is not None:
            self.base.add_seqs(no, values, out, reader)
        if self.runs:
            hashes = {self.hasher(v) for v in values}
            for run in self.runs:
                t = run.tables[no]
                for h in hashes:
                    a = t.seqs(h)
                    if a is not None:
                        out.update(a)
        d = self._open[no]
        for v in values:
            p = d.get(v)
            if p is not None:
                out.update(p)

    def write(self, path: Path, key: NodeKey, reader: BlockReader, size: int) -> None:
        """Write the sidecar of every frame indexed so far (``size``: where the last one
        ends).  The base's runs are kept as they are, but for the last ones that are no
        bigger than what is new: those are merged with it into one run, so that a
        sidecar holds a few runs of growing size (and one, once compacted)."""
        self.close_chunk()
        if self.frames == (self.base.frames if self.base is not None else 0):
            return  # nothing new to write
        new = [
            merge_tables([r.tables[no] for r in self.runs]) if self.runs else Table() for no in range(len(TERM_FIELDS))
        ]
        keep = len(self.base.runs) if self.base is not None else 0
        total = sum(len(t.posts) for t in new)
        while keep and self.base.runs[keep - 1].nposts <= total:
            keep -= 1
            total += self.base.runs[keep].nposts
        if self.base is not None and keep < len(self.base.runs):
            old = [self.base.run_tables(r, reader) for r in range(keep, len(self.base.runs))]
            new = [merge_tables([o[no] for o in old] + [new[no]]) for no in range(len(TERM_FIELDS))]
        write_terms(
            path,
            key,
            name=self.name,
            header_mac=self.header_mac,
            first_seq=self.first_seq,
            frames=self.frames,
            size=size,
            macs=self.macs,
            damaged=self.damaged,
            hash_bits=self.hasher.bits,
            runs=[(self.frames, new)],
            base=self.base,
            keep=keep,
            reader=reader,
        )

    def nbytes(self) -> int:
        """Memory held, in bytes: the packed runs' and MAC array's allocations, the open
        chunk at its measured cost per record, the base's header."""
        return (
            256
            + sys.getsizeof(self.macs)
            + sum(r.nbytes() for r in self.runs)
            + self._open_records * OPEN_RECORD_BYTES
            + (self.base.nbytes() if self.base is not None else 0)
        )


def mac_prefix(mac: bytes | None) -> int:
    """The first 8 bytes of a frame MAC as an int (0: not known)."""
    return int.from_bytes(mac[:8], "little") if mac is not None and len(mac) == _MAC else 0


# -- the sidecar -----------------------------------------------------------------------


def _le(a: array) -> bytes:
    if _BIG_ENDIAN:
        a = array(a.typecode, a)
        a.byteswap()
    return a.tobytes()


def _from_le(code: str, raw: bytes) -> array:
    a = array(code)
    a.frombytes(raw)
    if _BIG_ENDIAN:
        a.byteswap()
    return a


class _BlockWriter:
    """Writes a sidecar's data area to ``fd``, taking every block's SHA-256 as it goes
    (from ``pos``, a block boundary up to which ``digests`` are already known)."""

    def __init__(self, fd: int, pos: int = 0, digests: bytes = b""):
        self.fd = fd
        self.pos = pos
        self.digests = bytearray(digests)
        self._block = hashlib.sha256()
        self._fill = 0

    def write(self, data: bytes) -> int:
        at = self.pos
        view = memoryview(data)
        while view:
            n = min(len(view), BLOCK - self._fill)
            self._block.update(view[:n])
            self._fill += n
            if self._fill == BLOCK:
                self.digests += self._block.digest()
                self._block = hashlib.sha256()
                self._fill = 0
            view = view[n:]
        _write_all(self.fd, data)
        self.pos += len(data)
        return at

    def finish(self) -> None:
        if self._fill:
            self.digests += self._block.digest()
            self._fill = 0


def _write_all(fd: int, data) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _copy_prefix(src: int, dst: int, n: int) -> None:
    """The first ``n`` bytes of ``src`` to ``dst`` (by the kernel where it can)."""
    done = 0
    try:
        while done < n:
            k = os.copy_file_range(src, dst, n - done, done, done)
            if k <= 0:
                break
            done += k
    except (AttributeError, OSError):
        pass
    while done < n:
        chunk = os.pread(src, min(1 << 20, n - done), done)
        if not chunk:
            raise TermsDamaged("sidecar shorter than its header says")
        os.pwrite(dst, chunk, done)
        done += len(chunk)
    os.lseek(dst, n, os.SEEK_SET)


def write_terms(
    path: Path,
    key: NodeKey,
    *,
    name: str,
    header_mac: bytes,
    first_seq: int,
    frames: int,
    size: int,
    macs: array,
    damaged: set[int] | frozenset[int],
    hash_bits: int,
    runs: list[tuple[int, list[Table]]],
    base: TermFile | None = None,
    keep: int = 0,
    reader: BlockReader | None = None,
) -> None:
    """Write a ``.terms`` sidecar via a temp file and a rename (derived data, not
    fsynced): the first ``keep`` runs of ``base`` as they are (their bytes copied,
    their digests kept, checked when read), then ``runs`` (``(end frame, one table
    per field)``), then the MAC'd header."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
    rows: list = []
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o644)
    try:
        w = _BlockWriter(fd)
        if base is not None and keep:
            if reader is None:
                raise ValueError("copying runs of a sidecar needs a reader")
            end = base.runs[keep].start if keep < len(base.runs) else base.data_len
            whole = end // BLOCK
            _copy_prefix(reader.fd(base), fd, whole * BLOCK)
            w = _BlockWriter(fd, whole * BLOCK, base.digests[: _DIGEST * whole])
            w.write(reader.read(base, whole * BLOCK, end, keep=False))  # checked as it is copied
            rows.extend(r.row for r in base.runs[:keep])
        for end_frame, tables in runs:
            fields = []
            for t in tables:
                coded, ends = encode_postings(t)
                keys_at = w.write(_le(t.keys))
                ends_at = w.write(_le(ends))
                posts_at = w.write(coded)
                fields.append(
                    [len(t.keys), len(t.posts), keys_at, ends_at, posts_at, len(coded), _le(t.keys[::FENCE_KEYS])]
                )
            rows.append([end_frame, fields])
        w.finish()
        header = msgpack.packb(
            {
                "v": TERMS_VERSION,
                "name": name,
                "header_mac": header_mac,
                "first_seq": first_seq,
                "frames": frames,
                "size": size,
                "macs": _le(macs),
                "damaged": sorted(damaged),
                "hash_bits": hash_bits,
                "block": BLOCK,
                "data_len": w.pos,
                "digests": bytes(w.digests),
                "runs": rows,
            },
            use_bin_type=True,
        )
        _write_all(fd, header + key.mac(b"terms", header) + _TRAILER.pack(len(header), MAGIC))
        os.close(fd)
        fd = -1
        os.replace(tmp, path)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def encode_postings(t: Table) -> tuple[bytes, array]:
    """A table's postings as stored: per key a msgpack array of the differences between
    its seq offsets (the first from 0), all keys' arrays one after the other; and where
    each key's array ends in those bytes (u32)."""
    pack = msgpack.Packer().pack
    posts, out, ends = t.posts, bytearray(), array("I")
    start = 0
    for end in t.ends:
        p = posts[start:end]
        out += pack([p[0], *map(sub, p[1:], p)] if p else [])
        ends.append(len(out))
        start = end
    return bytes(out), ends


def decode_postings(raw: bytes) -> array:
    """One key's seq offsets from their stored differences (ascending, u32)."""
    try:
        deltas = msgpack.unpackb(raw, use_list=True)
        if type(deltas) is not list or (deltas and min(deltas) < 0):
            raise TypeError
        return array("I", accumulate(deltas))
    except (ValueError, TypeError, OverflowError, msgpack.UnpackException) as e:
        raise TermsDamaged(f"postings that do not decode: {type(e).__name__}") from None


class _FieldMeta:
    __slots__ = ("nkeys", "nposts", "keys_at", "ends_at", "posts_at", "posts_len", "fence")

    def __init__(self, nkeys, nposts, keys_at, ends_at, posts_at, posts_len, fence):
        self.nkeys, self.nposts = nkeys, nposts
        self.keys_at, self.ends_at, self.posts_at, self.posts_len = keys_at, ends_at, posts_at, posts_len
        self.fence = fence


class _FileRun:
    """One run of a sidecar: the frames it ends at, where its tables lie."""

    __slots__ = ("end_frame", "fields", "start", "nposts")

    def __init__(self, end_frame: int, fields: list[_FieldMeta]):
        self.end_frame = end_frame
        self.fields = fields
        self.start = fields[0].keys_at
        self.nposts = sum(m.nposts for m in fields)

    @property
    def row(self) -> list:
        """As stored in a header (to copy the run into a new sidecar)."""
        return [
            self.end_frame,
            [[m.nkeys, m.nposts, m.keys_at, m.ends_at, m.posts_at, m.posts_len, _le(m.fence)] for m in self.fields],
        ]


def _nat(x) -> bool:
    return type(x) is int and x >= 0


class TermFile:
    """A ``.terms`` sidecar whose header verified: what it covers, and where each run's
    tables lie in its data area (read through a :class:`BlockReader`)."""

    __slots__ = (
        "path",
        "ident",
        "name",
        "header_mac",
        "first_seq",
        "frames",
        "size",
        "macs",
        "damaged",
        "hasher",
        "data_len",
        "digests",
        "runs",
        "_nbytes",
    )

    @classmethod
    def open(cls, path: Path, key: NodeKey, hasher: TermHash) -> TermFile | None:
        """The sidecar at ``path`` if its header is there, whole and MAC'd with ``key``
        (a version 4 header of a sane shape); None otherwise."""
        try:
            with open(path, "rb") as f:
                st = os.fstat(f.fileno())
                total = st.st_size
                if total < _MAC + _TRAILER.size:
                    return None
                f.seek(total - _TRAILER.size)
                hlen, magic = _TRAILER.unpack(f.read(_TRAILER.size))
                if magic != MAGIC or hlen > total - _MAC - _TRAILER.size:
                    return None
                f.seek(total - _TRAILER.size - _MAC - hlen)
                blob = f.read(hlen + _MAC)
        except OSError:
            return None
        header, mac = blob[:hlen], blob[hlen:]
        if len(mac) != _MAC or not hmac.compare_digest(key.mac(b"terms", header), mac):
            return None
        try:
            return cls._parse(path, st, header, total - _TRAILER.size - _MAC - hlen, hasher)
        except (ValueError, KeyError, TypeError, IndexError, msgpack.UnpackException):
            return None

    @classmethod
    def _parse(cls, path: Path, st: os.stat_result, header: bytes, data_len: int, hasher: TermHash) -> TermFile | None:
        d = msgpack.unpackb(header, raw=False)
        if not isinstance(d, dict) or d.get("v") != TERMS_VERSION:
            return None
        t = cls()
        t.path = path
        t.ident = (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        t.name, t.header_mac, t.first_seq = d["name"], d["header_mac"], d["first_seq"]
        t.frames, t.size, macs = d["frames"], d["size"], d["macs"]
        bits = d["hash_bits"]
        if not (
            type(t.name) is str
            and type(t.header_mac) is bytes
            and type(macs) is bytes
            and len(macs) == 8 * t.frames
            and all(_nat(x) for x in (t.first_seq, t.frames, t.size, d["data_len"]))
            and type(bits) is int
            and 1 <= bits <= 32
            and d["block"] == BLOCK
            and d["data_len"] == data_len
        ):
            return None
        t.hasher = hasher.with_bits(bits)
        t.macs = _from_le("Q", macs)
        t.data_len = data_len
        t.digests = d["digests"]
        if type(t.digests) is not bytes or len(t.digests) != _DIGEST * -(-data_len // BLOCK):
            return None
        damaged = d["damaged"]
        if not isinstance(damaged, (list, tuple)) or not all(_nat(o) and o < t.frames for o in damaged):
            return None
        t.damaged = frozenset(damaged)
        t.runs = []
        prev_end, prev_at = 0, 0
        for row in d["runs"]:
            end_frame, frows = row
            if not (_nat(end_frame) and prev_end < end_frame <= t.frames and len(frows) == len(TERM_FIELDS)):
                return None
            metas = []
            for nkeys, nposts, keys_at, ends_at, posts_at, posts_len, fence in frows:
                if not (
                    all(_nat(x) for x in (nkeys, nposts, keys_at, ends_at, posts_at, posts_len))
                    and type(fence) is bytes
                    and prev_at <= keys_at
                    and keys_at + 4 * nkeys <= ends_at
                    and ends_at + 4 * nkeys <= posts_at
                    and posts_at + posts_len <= data_len
                    and len(fence) == 4 * -(-nkeys // FENCE_KEYS)
                ):
                    return None
                prev_at = posts_at + posts_len
                metas.append(_FieldMeta(nkeys, nposts, keys_at, ends_at, posts_at, posts_len, _from_le("I", fence)))
            t.runs.append(_FileRun(end_frame, metas))
            prev_end = end_frame
        if prev_end != t.frames and t.frames != 0:
            return None
        t._nbytes = (
            1024
            + sys.getsizeof(t.digests)
            + sys.getsizeof(t.macs)
            + sys.getsizeof(t.damaged)
            + sum(200 + sum(sys.getsizeof(m.fence) + 120 for m in r.fields) for r in t.runs)
        )
        return t

    def nbytes(self) -> int:
        """Memory held by the header (fences, digests, damaged list, runs), in bytes."""
        return self._nbytes

    def add_seqs(self, no: int, values: frozenset[str], out: set[int], reader: BlockReader | None) -> None:
        """Add to ``out`` the seq offsets of every entry whose field ``no`` may hold one of
        ``values`` (a superset when hashes collide)."""
        if reader is None:
            raise TermsDamaged("no reader for the sidecar")
        hashes = {self.hasher(v) for v in values}
        for run in self.runs:
            m = run.fields[no]
            for h in hashes:
                a = self._seqs(m, h, no, reader)
                if a is not None:
                    out.update(a)

    def _seqs(self, m: _FieldMeta, h: int, no: int, reader: BlockReader) -> array | None:
        j = bisect.bisect_right(m.fence, h) - 1
        if j < 0:
            return None
        lo = j * FENCE_KEYS
        hi = min(lo + FENCE_KEYS, m.nkeys)
        keys = reader.array(self, "I", m.keys_at + 4 * lo, m.keys_at + 4 * hi)
        i = bisect.bisect_left(keys, h)
        if i == len(keys) or keys[i] != h:
            return None
        g = lo + i
        if g:
            s, e = reader.array(self, "I", m.ends_at + 4 * (g - 1), m.ends_at + 4 * (g + 1))
        else:
            s, e = 0, reader.array(self, "I", m.ends_at, m.ends_at + 4)[0]
        if not s <= e <= m.posts_len:
            raise TermsDamaged(f"{self.path.name}: postings of field {TERM_FIELDS[no]} out of place")
        return decode_postings(reader.read(self, m.posts_at + s, m.posts_at + e))

    def run_tables(self, r: int, reader: BlockReader) -> list[Table]:
        """Run ``r``'s tables, read whole and checked (to merge them into a new run)."""
        out = []
        for no, m in enumerate(self.runs[r].fields):
            keys = reader.array(self, "I", m.keys_at, m.keys_at + 4 * m.nkeys, keep=False)
            coded_ends = reader.array(self, "I", m.ends_at, m.ends_at + 4 * m.nkeys, keep=False)
            coded = reader.read(self, m.posts_at, m.posts_at + m.posts_len, keep=False)
            if any(coded_ends[i] > coded_ends[i + 1] for i in range(len(coded_ends) - 1)) or (
                coded_ends and coded_ends[-1] != m.posts_len
            ):
                raise TermsDamaged(f"{self.path.name}: postings of field {TERM_FIELDS[no]} out of place")
            posts, ends, start = array("I"), array("I"), 0
            for end in coded_ends:
                posts.extend(decode_postings(coded[start:end]))
                ends.append(len(posts))
                start = end
            if len(posts) != m.nposts:
                raise TermsDamaged(f"{self.path.name}: postings of field {TERM_FIELDS[no]} out of place")
            out.append(Table(keys, ends, posts))
        return out


class BlockReader:
    """Reads checked blocks of sidecars, through ``cache`` (``get(key)`` /
    ``put(key, bytes)``), keeping one open file per sidecar until :meth:`close`."""

    def __init__(self, cache):
        self._cache = cache
        self._fds: dict[int, tuple[TermFile, int]] = {}

    def fd(self, tf: TermFile) -> int:
        got = self._fds.get(id(tf))
        if got is not None:
            return got[1]
        try:
            fd = os.open(tf.path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        except OSError as e:
            raise TermsChanged(f"{tf.path.name}: {e.strerror}") from None
        st = os.fstat(fd)
        if (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns) != tf.ident:
            os.close(fd)
            raise TermsChanged(f"{tf.path.name} changed since its header was read")
        self._fds[id(tf)] = (tf, fd)
        return fd

    def block(self, tf: TermFile, b: int, keep: bool = True) -> bytes:
        ck = (tf.name, tf.ident, b)
        got = self._cache.get(ck)
        if got is not None:
            return got
        at = b * BLOCK
        n = min(BLOCK, tf.data_len - at)
        if n <= 0:
            raise TermsDamaged(f"{tf.path.name}: block {b} out of range")
        raw = os.pread(self.fd(tf), n, at)
        if len(raw) != n or hashlib.sha256(raw).digest() != tf.digests[_DIGEST * b : _DIGEST * (b + 1)]:
            raise TermsDamaged(f"{tf.path.name}: block {b} does not match its digest")
        if keep:
            self._cache.put(ck, raw)
        return raw

    def read(self, tf: TermFile, start: int, end: int, keep: bool = True) -> bytes:
        if end <= start:
            return b""
        first, last = start // BLOCK, (end - 1) // BLOCK
        if first == last:
            off = first * BLOCK
            return self.block(tf, first, keep)[start - off : end - off]
        raw = b"".join(self.block(tf, b, keep) for b in range(first, last + 1))
        off = first * BLOCK
        return raw[start - off : end - off]

    def array(self, tf: TermFile, code: str, start: int, end: int, keep: bool = True) -> array:
        return _from_le(code, self.read(tf, start, end, keep))

    def close(self) -> None:
        for _, fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

    def __enter__(self) -> BlockReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def lookup(
    postings: TermFile | TermBuilder, wanted: dict[int, frozenset[str]], reader: BlockReader
) -> list[int] | None:
    """Seq offsets that may match every constraint of ``wanted`` (field number -> values),
    ascending; None when nothing in ``wanted`` is indexed."""
    if not wanted:
        return None
    result: set[int] | None = None
    for no, values in wanted.items():
        hits: set[int] = set()
        postings.add_seqs(no, values, hits, reader)
        result = hits if result is None else (result & hits)
        if not result:
            return []
    return sorted(result) if result is not None else None
