"""An independent verifier of an auditlog data dir, written from docs/FORMAT.md alone.

It deliberately imports nothing from the project (only the standard library,
msgpack, xxhash and zstandard): it is the "auditor's own script" the format
document promises is possible.  Section numbers below refer to docs/FORMAT.md.

    python tests/format_verifier.py DATA_DIR       # exit 0 intact, 1 otherwise
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import msgpack
import xxhash
import zstandard

GENESIS = bytes(32)
SEG_FIXED = struct.Struct("<8sHHIQq8s32s32sB")  # 3.1, 105 bytes
FRAME_HEADER = struct.Struct("<4sIIIQqqQ")  # 4.1, 48 bytes
MAC_LEN = 32
FRAME_OVERHEAD = FRAME_HEADER.size + MAC_LEN  # 80
MAX_PAYLOAD = 16 * 1024 * 1024
#: 3.1 and 10: segment format versions, each with its header MAC label and frame magic
SEG_HEADER_LABELS = {v: b"auditlog segment header v%d" % v for v in (1, 2, 3)}
FRAME_MAGICS = {1: b"ALF1", 2: b"ALF2", 3: b"ALF3"}
#: 4.2: from version 3 the stored payload is a zstd frame; never decompressed past this
COMPRESSED_FROM = 3
MAX_PLAIN = 16 * 1024 * 1024
#: 4.1: the flags bits a frame may carry in each version (2: bit 0, the commit continues)
FRAME_FLAGS = {1: 0, 2: 1, 3: 1}
KEY_ID_LABEL = b"auditlog key-id v1"
SIG_TRAILER = b"\xc4\x20"  # bin8, 32 bytes
PURGE_ACTION = "audit.retention_purge"


class Problem(NamedTuple):
    kind: str
    seq_from: int | None
    seq_to: int | None
    segment: str
    detail: str


class Result(NamedTuple):
    problems: list[Problem]
    #: entries whose chained signature was recomputed and matched
    entries_verified: int
    #: seq -> signature as recomputed here (for every entry whose predecessor was known)
    signatures: dict[int, bytes]


def _seq_from_name(name: str) -> int | None:
    stem = name[:-4] if name.endswith(".seg") else ""
    return int(stem) if len(stem) == 20 and stem.isdigit() else None


def _hmac(key: bytes, *parts: bytes) -> bytes:
    return hmac.new(key, b"".join(parts), hashlib.sha256).digest()


@dataclass
class _SegEnd:
    """What the next segment's header must link to (3.1, step 3.5)."""

    name: str
    first_seq: int
    last_seq: int
    last_mac: bytes | None  # None: unknown (file ends inside a frame / corrupt stretch)
    last_sig: bytes | None  # None: unknown (last frame damaged)


@dataclass
class _Header:
    first_seq: int
    key_id: bytes
    prev_sig: bytes
    prev_mac: bytes
    node: str
    size: int
    mac: bytes
    flags: int
    version: int


class _HeaderError(Exception):
    def __init__(self, kind: str, detail: str):
        super().__init__(detail)
        self.kind, self.detail = kind, detail


def _parse_header(data: bytes, key: bytes, key_id: bytes) -> _Header:
    """Steps 3.1-3.3: structure, key id, MAC, flags."""
    if len(data) < SEG_FIXED.size:
        raise _HeaderError("header_corrupt", f"file holds {len(data)} bytes, a header needs at least 105")
    (magic, version, flags, size, first_seq, _created, kid, prev_sig, prev_mac, node_len) = SEG_FIXED.unpack_from(data)
    if magic != b"AUDITSEG":
        raise _HeaderError("header_corrupt", f"bad magic {magic!r}")
    if version not in SEG_HEADER_LABELS:
        raise _HeaderError("header_corrupt", f"unknown format version {version}")
    if node_len > 63 or size != SEG_FIXED.size + node_len + MAC_LEN or len(data) < size:
        raise _HeaderError("header_corrupt", "header length fields are inconsistent")
    try:
        node = data[SEG_FIXED.size : SEG_FIXED.size + node_len].decode("utf-8")
    except UnicodeDecodeError:
        raise _HeaderError("header_corrupt", "node id is not UTF-8") from None
    if kid != key_id:
        raise _HeaderError("foreign_segment", "key id differs from the node key's")
    mac = data[size - MAC_LEN : size]
    if not hmac.compare_digest(_hmac(key, SEG_HEADER_LABELS[version], data[: size - MAC_LEN]), mac):
        raise _HeaderError("header_corrupt", "header MAC does not match")
    if flags != 0:
        raise _HeaderError("header_corrupt", f"flags {flags} set")
    return _Header(first_seq, kid, prev_sig, prev_mac, node, size, mac, flags, version)


class _Frame(NamedTuple):
    offset: int
    end: int
    first_seq: int
    count: int
    min_ts: int
    max_ts: int
    payload: bytes
    mac: bytes


def _plain(stored: bytes, version: int) -> bytes:
    """4.2: the records' msgpack array from the stored payload (ValueError if it does not
    decompress within 16 MiB)."""
    if version < COMPRESSED_FROM:
        return stored
    try:
        return zstandard.ZstdDecompressor().decompress(stored, max_output_size=MAX_PLAIN)
    except zstandard.ZstdError as e:
        raise ValueError(f"payload does not decompress: {e}") from None


def _plausible(fields, version: int) -> bool:
    magic, plen, count, flags, first_seq, min_ts, max_ts, _ck = fields
    if version >= COMPRESSED_FROM:
        # 4.1: a compressed payload may hold more records than it has bytes
        return (
            magic == FRAME_MAGICS[version]
            and 0 < plen <= MAX_PAYLOAD
            and 0 < count <= MAX_PLAIN // 36
            and not flags & ~FRAME_FLAGS[version]
            and first_seq >= 1
            and min_ts <= max_ts
        )
    return (
        magic == FRAME_MAGICS[version]
        and 0 < plen <= MAX_PAYLOAD
        and 0 < count <= plen
        and not flags & ~FRAME_FLAGS[version]
        and first_seq >= 1
        and min_ts <= max_ts
    )


def _frame_ok(data: bytes, off: int, fields, prev_mac: bytes, key: bytes) -> str | None:
    plen, ck = fields[1], fields[7]
    payload = data[off + 48 : off + 48 + plen]
    if xxhash.xxh64_intdigest(payload) != ck:
        return "checksum_mismatch"
    mac = data[off + 48 + plen : off + FRAME_OVERHEAD + plen]
    if not hmac.compare_digest(_hmac(key, prev_mac, data[off : off + 48], payload), mac):
        return "mac_mismatch"
    return None


def _resync(data: bytes, pos: int, key: bytes, version: int) -> int:
    """Next offset o >= 32 holding a frame that verifies with prev_mac = data[o-32:o] (4.1, 3.6)."""
    while True:
        o = data.find(FRAME_MAGICS[version], pos)
        if o < 0:
            return len(data)
        if o >= MAC_LEN and o + 48 <= len(data):
            fields = FRAME_HEADER.unpack_from(data, o)
            if (
                _plausible(fields, version)
                and o + FRAME_OVERHEAD + fields[1] <= len(data)
                and _frame_ok(data, o, fields, data[o - MAC_LEN : o], key) is None
            ):
                return o
        pos = o + 1


def _split_records(payload: bytes, count: int) -> list[tuple[tuple, bytes]]:
    """(decoded record, its raw bytes) for each record; ValueError if the payload is not 4.2."""
    up = msgpack.Unpacker(raw=False, use_list=False, strict_map_key=False)
    up.feed(payload)
    try:
        n = up.read_array_header()
        if n != count:
            raise ValueError(f"payload holds {n} records, header says {count}")
        out = []
        for _ in range(n):
            start = up.tell()
            rec = up.unpack()
            end = up.tell()
            raw = payload[start:end]
            if not (
                isinstance(rec, tuple)
                and len(rec) == 11
                and raw[:1] == b"\x9b"
                and raw[-34:-32] == SIG_TRAILER
                and isinstance(rec[10], bytes)
                and len(rec[10]) == 32
                and isinstance(rec[0], int)
                and isinstance(rec[1], int)
            ):
                raise ValueError("a record is not an 11-element array ending in a 32-byte signature")
            out.append((rec, raw))
        if up.tell() != len(payload):
            raise ValueError("bytes after the record array")
    except (msgpack.UnpackException, msgpack.OutOfData, ValueError, TypeError) as e:
        raise ValueError(str(e) or type(e).__name__) from None
    return out


def _record_seq_range(payload: bytes) -> tuple[int, int] | None:
    """(first seq, count) of a payload's records if they decode with contiguous seqs."""
    try:
        recs = msgpack.unpackb(payload, raw=False, use_list=False, strict_map_key=False)
    except (msgpack.UnpackException, ValueError, TypeError):
        return None
    if not (
        isinstance(recs, tuple)
        and recs
        and all(isinstance(r, tuple) and len(r) == 11 and type(r[0]) is int for r in recs)
    ):
        return None
    first = recs[0][0]
    if first < 1 or any(r[0] != first + i for i, r in enumerate(recs)):
        return None
    return first, len(recs)


def _writer_running(lock_path: Path) -> bool:
    """Does a process hold the writer's fcntl lock on LOCK? (1; tested with F_GETLK, never taken)."""
    try:
        import fcntl

        fd = os.open(lock_path, os.O_RDONLY)
    except (ImportError, OSError):
        return False
    try:
        req = struct.pack("hhqqi", fcntl.F_WRLCK, 0, 0, 0, 0)
        return struct.unpack("hhqqi", fcntl.fcntl(fd, fcntl.F_GETLK, req))[0] != fcntl.F_UNLCK
    except OSError:
        return False
    finally:
        os.close(fd)


class _Verifier:
    def __init__(self, data_dir: Path):
        self.root = Path(data_dir)
        self.node = (self.root / "node.id").read_text(encoding="utf-8").strip()
        self.key = (self.root / "node.key").read_bytes()
        if len(self.key) != 32:
            raise ValueError("node.key must hold exactly 32 bytes")
        self.key_id = _hmac(self.key, KEY_ID_LABEL)[:8]
        self.node_packed = msgpack.packb(self.node, use_bin_type=True)
        self.problems: list[Problem] = []
        self.signatures: dict[int, bytes] = {}
        self.verified = 0
        self.max_ts: int | None = None
        self.purge_rows: list = []

    def report(self, kind: str, seq_from, seq_to, segment: str, detail: str) -> None:
        self.problems.append(Problem(kind, seq_from, seq_to, segment, detail))

    # -- the walk (section 9) -------------------------------------------------

    def run(self) -> Result:
        seg_dir = self.root / "segments"
        names = sorted(n for n in os.listdir(seg_dir) if n.endswith(".seg")) if seg_dir.is_dir() else []
        writer = _writer_running(self.root / "LOCK")
        pred: _SegEnd | None = None
        head: tuple[str, _Header] | None = None
        unusable: list[int] = []  # self.problems indices of unusable headers since ``pred``
        for i, name in enumerate(names):
            data = (seg_dir / name).read_bytes()
            try:
                hdr = _parse_header(data, self.key, self.key_id)
            except _HeaderError as e:
                self.report(e.kind, _seq_from_name(name), None, name, e.detail)
                unusable.append(len(self.problems) - 1)
                continue
            if hdr.node != self.node:
                self.report(
                    "foreign_segment", hdr.first_seq, None, name, f"header names node {hdr.node!r}, not {self.node!r}"
                )
            if name != f"{hdr.first_seq:020d}.seg":
                self.report("segment_misnamed", hdr.first_seq, None, name, f"header first seq is {hdr.first_seq}")
            gap_from = 1 if pred is None else pred.last_seq + 1
            # 3.5: unusable segments named after the first missing seq account for the gap
            accounted = False
            if unusable and hdr.first_seq > gap_from:
                for j in unusable:  # they hold the seqs up to this segment
                    if self.problems[j].seq_to is None:
                        self.problems[j] = self.problems[j]._replace(seq_to=hdr.first_seq - 1)
                accounted = self.problems[unusable[0]].seq_from == gap_from
            unusable = []
            if pred is None:
                head = (name, hdr)
                if accounted:
                    head = None
                elif hdr.first_seq == 1 and (hdr.prev_sig != GENESIS or hdr.prev_mac != GENESIS):
                    self.report("chain_broken", 1, 1, name, "first segment does not start from GENESIS")
            elif not accounted:
                self.check_link(pred, hdr, name)
            pred = self.walk_segment(name, data, hdr, is_last=i == len(names) - 1, writer=writer)
        if head is not None and head[1].first_seq != 1 and not self.anchored(head[1]):
            self.report(
                "segment_missing",
                1,
                head[1].first_seq - 1,
                head[0],
                "log does not start at seq 1 and no retention purge entry anchors it",
            )
        return Result(self.problems, self.verified, self.signatures)

    def check_link(self, pred: _SegEnd, hdr: _Header, name: str) -> None:
        expected = pred.last_seq + 1
        if hdr.first_seq > expected:
            self.report(
                "segment_missing",
                expected,
                hdr.first_seq - 1,
                name,
                f"seq {expected}..{hdr.first_seq - 1} missing after {pred.name}",
            )
        elif hdr.first_seq < expected:
            self.report(
                "segment_duplicate",
                hdr.first_seq,
                expected - 1,
                name,
                f"starts at seq {hdr.first_seq}; {pred.name} already reached {expected - 1}",
            )
        elif (pred.last_mac is not None and hdr.prev_mac != pred.last_mac) or (
            pred.last_sig is not None and hdr.prev_sig != pred.last_sig
        ):
            self.report(
                "chain_broken",
                hdr.first_seq,
                hdr.first_seq,
                name,
                f"prev_sig/prev_mac do not link to the end of {pred.name}",
            )

    def anchored(self, hdr: _Header) -> bool:
        want = hdr.prev_sig.hex()
        return any(
            isinstance(r, (list, tuple)) and len(r) == 4 and r[2] == hdr.first_seq - 1 and r[3] == want
            for r in self.purge_rows
        )

    def walk_segment(self, name: str, data: bytes, hdr: _Header, is_last: bool, writer: bool) -> _SegEnd:
        pos = hdr.size
        prev_mac = hdr.mac
        prev_sig: bytes | None = hdr.prev_sig
        expected: int | None = hdr.first_seq
        last_seq = hdr.first_seq - 1
        last_mac: bytes | None = hdr.mac
        last_sig: bytes | None = hdr.prev_sig
        end = len(data)
        stretch: int | None = None  # index in self.problems of an open corrupt stretch
        stretch_claim: int | None = None  # its end when no frame after it closes it
        while pos < end:
            fields = FRAME_HEADER.unpack_from(data, pos) if end - pos >= 48 else None
            if fields is not None and not _plausible(fields, hdr.version):
                nxt = _resync(data, pos + 1, self.key, hdr.version)
                self.report("frame_corrupt", expected, None, name, f"bytes {pos}..{nxt - 1} are not a frame")
                stretch, stretch_claim = len(self.problems) - 1, None
                expected = None  # unknown across the stretch
                prev_sig = None
                last_mac = last_sig = None
                if nxt >= end:
                    break
                pos, prev_mac = nxt, data[nxt - MAC_LEN : nxt]
                continue
            if fields is None or pos + FRAME_OVERHEAD + fields[1] > end:
                if not (is_last and writer):
                    self.report(
                        "torn_tail" if is_last else "truncated",
                        expected,
                        None,
                        name,
                        f"file ends inside the frame at offset {pos}",
                    )
                last_mac = last_sig = None
                break
            _magic, plen, count, _flags, first_seq, min_ts, max_ts, _ck = fields
            if stretch is not None:
                # the stretch held what lies between the frames around it
                p = self.problems[stretch]
                if p.seq_from is not None and first_seq - 1 >= p.seq_from:
                    self.problems[stretch] = p._replace(seq_to=first_seq - 1)
                stretch = None
            fend = pos + FRAME_OVERHEAD + plen
            mac = data[fend - MAC_LEN : fend]
            last_mac = mac
            payload = data[pos + 48 : fend - MAC_LEN]
            bad = _frame_ok(data, pos, fields, prev_mac, self.key)
            if bad is None:
                try:
                    recs = _split_records(_plain(payload, hdr.version), count)
                except ValueError as e:
                    bad = "undecodable"
                    self.report(bad, first_seq, first_seq + count - 1, name, f"frame at offset {pos}: {e}")
            elif bad == "mac_mismatch" and hdr.version >= COMPRESSED_FROM:
                # checksum fine: the header (covered only by the MAC) is the suspect, and a
                # compressed payload is not opened unverified: the damage runs from the
                # expected seq to the next frame's first seq (or, with none after it in
                # this file, to the end the header claims if it starts where expected)
                claim = first_seq + count - 1 if first_seq == expected else None
                self.report(bad, expected, None, name, f"frame at offset {pos}")
                stretch, stretch_claim = len(self.problems) - 1, claim
                last_seq = first_seq + count - 1  # what the header claims (3.5 takes it)
                prev_sig = last_sig = None
                expected = None
                prev_mac, pos = mac, fend
                continue
            else:
                if bad == "mac_mismatch":
                    # checksum fine: the header (covered only by the MAC) is the suspect
                    first_seq, count = _record_seq_range(payload) or (first_seq, count)
                self.report(bad, first_seq, first_seq + count - 1, name, f"frame at offset {pos}")
            last_seq = first_seq + count - 1
            if bad is not None:
                prev_sig = None
                last_sig = None
                expected = first_seq + count
                prev_mac, pos = mac, fend
                continue
            if recs[0][0][0] != first_seq or any(not (min_ts <= r[1] <= max_ts) for r, _ in recs):
                self.report(
                    "frame_corrupt",
                    first_seq,
                    last_seq,
                    name,
                    f"frame at offset {pos}: header does not describe its records",
                )
            for rec, raw in recs:
                prev_sig, expected = self.check_entry(name, rec, raw, prev_sig, expected)
            last_sig = recs[-1][0][10]
            prev_mac, pos = mac, fend
        if stretch is not None and stretch_claim is not None:
            self.problems[stretch] = self.problems[stretch]._replace(seq_to=stretch_claim)
        return _SegEnd(name, hdr.first_seq, last_seq, last_mac, last_sig)

    def check_entry(
        self, name: str, rec: tuple, raw: bytes, prev_sig: bytes | None, expected: int | None
    ) -> tuple[bytes, int]:
        seq, ts, stored = rec[0], rec[1], rec[10]
        if expected is not None and seq != expected:
            self.report(
                "seq_gap", min(seq, expected), max(seq, expected), name, f"expected seq {expected}, found {seq}"
            )
        if self.max_ts is not None and ts < self.max_ts:
            self.report("timestamp_anomaly", seq, seq, name, f"ts {self.max_ts - ts} µs before its predecessor")
        self.max_ts = ts if self.max_ts is None else max(self.max_ts, ts)
        # 5.1: the signed bytes, sliced from the stored record ...
        canonical = b"\x9b" + self.node_packed + raw[1:-34]
        # ... which must equal re-encoding [node, *record[0:10]] with maps in stored order
        if msgpack.packb([self.node, *rec[:10]], use_bin_type=True) != canonical:
            self.report("undecodable", seq, seq, name, "record is not in canonical msgpack form")
        if prev_sig is not None:
            sig = _hmac(self.key, prev_sig, canonical)
            self.signatures[seq] = sig
            if hmac.compare_digest(sig, stored):
                self.verified += 1
                if rec[3] == PURGE_ACTION and rec[2] == "system" and isinstance(rec[9], dict):
                    self.purge_rows.extend(rec[9].get("segments") or ())
            else:
                self.report("signature_mismatch", seq, seq, name, "signature does not match the entry")
        return stored, seq + 1


def verify_data_dir(data_dir: str | Path) -> Result:
    """Verify every segment of one node's data dir (docs/FORMAT.md section 9)."""
    return _Verifier(Path(data_dir)).run()


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: format_verifier.py DATA_DIR", file=sys.stderr)
        return 2
    res = verify_data_dir(argv[1])
    for p in res.problems:
        rng = (
            ""
            if p.seq_from is None
            else f" seq {p.seq_from}" + ("" if p.seq_to in (None, p.seq_from) else f"..{p.seq_to}")
        )
        print(f"{p.kind}: {p.segment}{rng}: {p.detail}")
    print(f"{res.entries_verified} entries verified, {len(res.problems)} problems")
    return 0 if not res.problems else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
