"""One segment file: its header and the walk over its frames.

A segment is ``<first_seq:020d>.seg``: a header, then frames back to back.
The header links the segment to its predecessor (last entry signature and last
frame MAC) and is itself MAC'd, so every byte of a segment is covered by a
checksum, a MAC or a structural check.
"""

from __future__ import annotations

import bisect
import mmap
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import msgpack

from auditlog.engine.chain import NodeKey
from auditlog.engine.frame import (
    CURRENT_VERSION,
    FRAME_MAGICS,
    HEADER_SIZE,
    MAC_SIZE,
    FrameError,
    FrameHeader,
    check_frame,
    parse_header,
    plain_payload,
)

SEGMENT_MAGIC = b"AUDITSEG"
#: the version new segments are written in; every version in FORMAT_VERSIONS is read
FORMAT_VERSION = CURRENT_VERSION
FORMAT_VERSIONS = (1, 2, 3)
SEGMENT_SUFFIX = ".seg"
# magic, version u16, flags u16, header_len u32, first_seq u64, created_us i64,
# key_id 8s, prev_sig 32s, prev_mac 32s, node_len u8
_FIXED = struct.Struct("<8sHHIQq8s32s32sB")
_HEADER_MAC_LABELS = {v: b"auditlog segment header v%d" % v for v in FORMAT_VERSIONS}
MAX_HEADER = _FIXED.size + 63 + MAC_SIZE


def segment_name(first_seq: int) -> str:
    return f"{first_seq:020d}{SEGMENT_SUFFIX}"


def seq_from_name(name: str) -> int | None:
    stem = name[: -len(SEGMENT_SUFFIX)] if name.endswith(SEGMENT_SUFFIX) else ""
    return int(stem) if stem.isdigit() and len(stem) == 20 else None


@dataclass(frozen=True)
class SegmentHeader:
    node: str
    first_seq: int
    created_us: int
    key_id: bytes
    prev_sig: bytes
    prev_mac: bytes
    mac: bytes
    size: int
    version: int = FORMAT_VERSION

    @staticmethod
    def build(
        key: NodeKey,
        node: str,
        first_seq: int,
        created_us: int,
        prev_sig: bytes,
        prev_mac: bytes,
        version: int = FORMAT_VERSION,
    ) -> tuple[bytes, SegmentHeader]:
        nb = node.encode()
        size = _FIXED.size + len(nb) + MAC_SIZE
        body = (
            _FIXED.pack(SEGMENT_MAGIC, version, 0, size, first_seq, created_us, key.key_id, prev_sig, prev_mac, len(nb))
            + nb
        )
        mac = key.mac(_HEADER_MAC_LABELS[version], body)
        return body + mac, SegmentHeader(
            node, first_seq, created_us, key.key_id, prev_sig, prev_mac, mac, size, version
        )


class SegmentHeaderError(Exception):
    def __init__(self, kind: str, detail: str):
        super().__init__(detail)
        self.kind = kind
        self.detail = detail


def parse_segment_header(buf: bytes, key: NodeKey | None) -> SegmentHeader:
    """Parse a segment header; with a key, check its MAC and key id."""
    if len(buf) < _FIXED.size:
        raise SegmentHeaderError("header_corrupt", f"segment header cut short ({len(buf)} bytes)")
    (magic, version, flags, size, first_seq, created, key_id, prev_sig, prev_mac, node_len) = _FIXED.unpack_from(buf)
    if magic != SEGMENT_MAGIC:
        raise SegmentHeaderError("header_corrupt", f"not a segment file (magic {magic[:8]!r})")
    if version not in FORMAT_VERSIONS:
        raise SegmentHeaderError("header_corrupt", f"unsupported segment format version {version}")
    if size != _FIXED.size + node_len + MAC_SIZE or node_len > 63 or len(buf) < size:
        raise SegmentHeaderError("header_corrupt", "segment header length fields are inconsistent")
    body = buf[: size - MAC_SIZE]
    mac = bytes(buf[size - MAC_SIZE : size])
    try:
        node = bytes(buf[_FIXED.size : _FIXED.size + node_len]).decode()
    except UnicodeDecodeError:
        raise SegmentHeaderError("header_corrupt", "segment header node id is not UTF-8") from None
    if key is not None:
        if key_id != key.key_id:
            raise SegmentHeaderError("foreign_segment", "segment was written under another node key")
        if key.mac(_HEADER_MAC_LABELS[version], body) != mac:
            raise SegmentHeaderError("header_corrupt", "segment header MAC does not match")
    if flags != 0:
        raise SegmentHeaderError("header_corrupt", f"unknown segment header flags {flags}")
    return SegmentHeader(node, first_seq, created, key_id, prev_sig, prev_mac, mac, size, version)


@dataclass
class FrameRead:
    """One frame as walked: where it is, what it claims, and whether it checks out."""

    offset: int
    header: FrameHeader | None
    payload: bytes | None
    mac: bytes | None
    problem: str | None = None  # violation kind, None when intact
    detail: str = ""
    end: int = 0  # offset just past this frame (or resync point)
    version: int = FORMAT_VERSION

    def plain(self) -> bytes:
        """The payload's records as one msgpack array (decompressed from format 3 on;
        FrameError ``undecodable`` when it does not decompress)."""
        return plain_payload(self.payload, self.version)

    def records(self) -> list:
        return msgpack.unpackb(self.plain(), use_list=False, raw=False, strict_map_key=True)


class SegmentData:
    """A read-only view of a segment file (mmap'd; the OS pages it in lazily).

    The view is fixed at the size the file had when opened: a reader sees a
    consistent prefix while the writer keeps appending.
    """

    def __init__(self, path: Path):
        self.path = path
        with open(path, "rb") as f:
            self.size = os.fstat(f.fileno()).st_size
            self.data = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if self.size else b""

    def close(self) -> None:
        if isinstance(self.data, mmap.mmap):
            self.data.close()

    def __enter__(self) -> SegmentData:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def walk_frames(
    data: bytes | mmap.mmap,
    start: int,
    prev_mac: bytes,
    key: NodeKey,
    end: int | None = None,
    verify: bool = True,
    version: int = FORMAT_VERSION,
) -> Iterator[FrameRead]:
    """Walk frames from ``start`` (a frame boundary) to ``end`` of ``data``, a
    segment of format ``version``.

    Intact frames come back with ``problem=None``.  A frame failing its
    checksum or MAC comes back with its kind; when the header itself is not
    a frame header the walk looks ahead for the next frame that verifies
    against the 32 bytes in front of it and reports the damaged stretch as one
    ``frame_corrupt`` read (header None).  A frame cut short by the end of the
    data is reported as ``truncated``.
    """
    end = len(data) if end is None else end
    pos = start
    mv = data
    while pos < end:
        try:
            hdr = parse_header(bytes(mv[pos : pos + HEADER_SIZE]), version)
        except FrameError as e:
            if e.kind == "truncated":
                yield FrameRead(pos, None, None, None, "truncated", e.detail, end)
                return
            nxt = _resync(data, pos + 1, end, key, version)
            yield FrameRead(pos, None, None, None, "frame_corrupt", e.detail, nxt)
            if nxt >= end:
                return
            pos = nxt
            prev_mac = bytes(mv[nxt - MAC_SIZE : nxt])
            continue
        fend = pos + HEADER_SIZE + hdr.payload_len + MAC_SIZE
        if fend > end:
            yield FrameRead(
                pos,
                hdr,
                None,
                None,
                "truncated",
                f"frame at offset {pos} needs {fend - pos} bytes, only {end - pos} present",
                end,
            )
            return
        hbytes = bytes(mv[pos : pos + HEADER_SIZE])
        payload = bytes(mv[pos + HEADER_SIZE : fend - MAC_SIZE])
        mac = bytes(mv[fend - MAC_SIZE : fend])
        problem = check_frame(hbytes, hdr, payload, mac, key, prev_mac) if verify else None
        yield FrameRead(
            pos,
            hdr,
            payload,
            mac,
            problem,
            "" if problem is None else f"frame at offset {pos}: {problem.replace('_', ' ')}",
            fend,
            version,
        )
        prev_mac = mac
        pos = fend


def _resync(data, pos: int, end: int, key: NodeKey, version: int) -> int:
    """Offset of the next frame that verifies against its predecessor's MAC bytes, or ``end``."""
    magic = FRAME_MAGICS[version]
    while True:
        i = data.find(magic, pos, end)
        if i < 0 or i < MAC_SIZE:
            return end
        try:
            hdr = parse_header(bytes(data[i : i + HEADER_SIZE]), version)
            fend = i + HEADER_SIZE + hdr.payload_len + MAC_SIZE
            if (
                fend <= end
                and check_frame(
                    bytes(data[i : i + HEADER_SIZE]),
                    hdr,
                    bytes(data[i + HEADER_SIZE : fend - MAC_SIZE]),
                    bytes(data[fend - MAC_SIZE : fend]),
                    key,
                    bytes(data[i - MAC_SIZE : i]),
                )
                is None
            ):
                return i
        except FrameError:
            pass
        pos = i + 1


def list_segments(seg_dir: Path) -> list[Path]:
    """Segment files in log order (their names sort in seq order).

    One listing of a directory in which files are created and renamed meanwhile
    (a writer's new segment, readers' sidecars) is no snapshot: it may miss a
    name that was there all along.  Readers that need every segment complete it
    with :func:`insert_successor` and :func:`with_head`."""
    try:
        names = sorted(n for n in os.listdir(seg_dir) if n.endswith(SEGMENT_SUFFIX))
    except FileNotFoundError:
        return []
    return [seg_dir / n for n in names]


def insert_successor(seg_dir: Path, paths: list[Path], next_seq: int, at: int | None = None) -> bool:
    """Put the segment that follows one ending at ``next_seq - 1`` into ``paths``
    (sorted) when the listing missed it: it is named after ``next_seq``, so it is
    looked up by name.  True if it was missing and exists.  ``at``: where it
    belongs if the listing has it (the position after its predecessor)."""
    if next_seq < 1:
        return False
    name = segment_name(next_seq)
    if at is not None and at < len(paths) and paths[at].name == name:
        return False
    i = bisect.bisect_left(paths, name, key=lambda q: q.name)
    if i < len(paths) and paths[i].name == name:
        return False
    p = seg_dir / name
    if not p.exists():
        return False
    paths.insert(i, p)
    return True


def with_head(seg_dir: Path, paths: list[Path], known: str | None = None) -> list[Path]:
    """``paths`` with the log's first segment.  A listing that starts after seq 1
    (a log retention shortened, or a listing that missed its first name) looks up
    seq 1's segment by name, then is joined with a second listing unless it starts
    at ``known``, a head seen before."""
    if not paths or seq_from_name(paths[0].name) == 1 or paths[0].name == known:
        return paths
    if insert_successor(seg_dir, paths, 1):
        return paths
    names = {p.name for p in paths}
    more = [p for p in list_segments(seg_dir) if p.name not in names]
    return sorted(paths + more, key=lambda q: q.name) if more else paths
