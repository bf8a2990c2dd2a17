"""Frames: the unit of writing, checksumming and MAC verification.

Layout (little-endian), see docs/FORMAT.md::

    header  48 bytes  magic, payload_len u32, count u32, flags u32,
                      first_seq u64, min_ts i64, max_ts i64, payload_xxh64 u64
    payload           the stored payload: a msgpack array of `count` records,
                      zstd-compressed from format 3 on
    mac     32 bytes  HMAC(key, prev_mac || header || payload)

``prev_mac`` is the MAC of the previous frame in the same segment, or the
segment header's MAC for the first frame: one chain runs through every byte of
a segment after its header.  Checksum and MAC cover the payload as stored, so
a reader checks a frame before anything decompresses it
(:func:`plain_payload`), and never decompresses more than
:data:`HARD_MAX_PAYLOAD` bytes.

The magic names the segment format version the frame belongs to: ``ALF1``
(version 1: ``flags`` is always 0), ``ALF2`` (version 2: bit 0 of ``flags``,
:data:`FLAG_CONTINUES`, says that the commit this frame belongs to goes on in
the next frame, so recovery can tell a commit a crash interrupted from a
finished one) and ``ALF3`` (version 3: as 2, the payload compressed)"""

from __future__ import annotations

import struct
import threading
from typing import NamedTuple

import xxhash
import zstandard

from auditlog.engine.chain import NodeKey

#: frame magic of each segment format version
FRAME_MAGICS = {1: b"ALF1", 2: b"ALF2", 3: b"ALF3"}
CURRENT_VERSION = 3
#: the versions whose payloads are zstd-compressed
COMPRESSED_FROM = 3
#: zstd level of new frames (docs/FORMAT.md section 4.2: measured size and speed)
ZSTD_LEVEL = 3
FRAME_MAGIC = FRAME_MAGICS[CURRENT_VERSION]
#: flags bit: the commit goes on in the next frame (version 2 on)
FLAG_CONTINUES = 1
#: flags bits a frame of each version may carry
_VALID_FLAGS = {1: 0, 2: FLAG_CONTINUES, 3: FLAG_CONTINUES}
HEADER = struct.Struct("<4sIIIQqqQ")
HEADER_SIZE = HEADER.size  # 48
MAC_SIZE = 32
OVERHEAD = HEADER_SIZE + MAC_SIZE
#: records per frame are bounded by bytes; this is the default payload budget.
MAX_PAYLOAD = 64 * 1024
#: a frame is never larger than this (one oversized record alone may exceed
#: MAX_PAYLOAD; anything claiming more than this is structurally invalid).
HARD_MAX_PAYLOAD = 16 * 1024 * 1024
#: the fewest bytes a stored record takes (11 fields, the 34-byte signature among them):
#: a compressed frame cannot claim more records than its plain payload could hold
_MIN_RECORD = 36

_xxh64 = xxhash.xxh64_intdigest


class FrameHeader(NamedTuple):
    payload_len: int
    count: int
    flags: int
    first_seq: int
    min_ts: int
    max_ts: int
    checksum: int

    @property
    def last_seq(self) -> int:
        return self.first_seq + self.count - 1

    @property
    def total_size(self) -> int:
        return OVERHEAD + self.payload_len

    @property
    def continues(self) -> bool:
        """Whether the commit this frame belongs to goes on in the next frame."""
        return bool(self.flags & FLAG_CONTINUES)


class FrameError(Exception):
    """Structural problem with a frame (internal; readers turn it into a violation)."""

    def __init__(self, kind: str, detail: str):
        super().__init__(detail)
        self.kind = kind
        self.detail = detail


def array_header(count: int) -> bytes:
    if count < 16:
        return bytes([0x90 | count])
    if count < 0x10000:
        return b"\xdc" + count.to_bytes(2, "big")
    return b"\xdd" + count.to_bytes(4, "big")


_local = threading.local()


def _compressor() -> zstandard.ZstdCompressor:
    c = getattr(_local, "c", None)
    if c is None:
        c = _local.c = zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_content_size=True, write_checksum=False)
    return c


def _decompressor() -> zstandard.ZstdDecompressor:
    d = getattr(_local, "d", None)
    if d is None:
        d = _local.d = zstandard.ZstdDecompressor()
    return d


def encode_payload(records: list[bytes], version: int = CURRENT_VERSION) -> bytes:
    """The stored payload of a frame holding ``records`` (stored-record bytes)."""
    plain = array_header(len(records)) + b"".join(records)
    return _compressor().compress(plain) if version >= COMPRESSED_FROM else plain


def plain_payload(stored, version: int) -> bytes:
    """A frame's records as one msgpack array: the stored payload, decompressed for
    format 3 on (never past :data:`HARD_MAX_PAYLOAD`).  Call it on a frame whose
    checksum and MAC verified, or be ready for FrameError (``undecodable``)."""
    if version < COMPRESSED_FROM:
        return stored
    try:
        return _decompressor().decompress(bytes(stored), max_output_size=HARD_MAX_PAYLOAD)
    except zstandard.ZstdError as e:
        raise FrameError("undecodable", f"payload does not decompress ({e})") from None


def seal_frame(
    stored: bytes,
    count: int,
    first_seq: int,
    min_ts: int,
    max_ts: int,
    key: NodeKey,
    prev_mac: bytes,
    *,
    continues: bool = False,
    version: int = CURRENT_VERSION,
) -> tuple[bytes, bytes]:
    """A frame around an encoded payload (:func:`encode_payload`); returns (frame bytes,
    its mac).  ``continues``: more frames of the same commit follow (version 2 on)."""
    if continues and not _VALID_FLAGS[version] & FLAG_CONTINUES:
        raise ValueError(f"segment format {version} frames cannot say that a commit continues")
    header = HEADER.pack(
        FRAME_MAGICS[version],
        len(stored),
        count,
        FLAG_CONTINUES if continues else 0,
        first_seq,
        min_ts,
        max_ts,
        _xxh64(stored),
    )
    mac = key.mac(prev_mac, header, stored)
    return header + stored + mac, mac


def build_frame(
    records: list[bytes],
    first_seq: int,
    min_ts: int,
    max_ts: int,
    key: NodeKey,
    prev_mac: bytes,
    *,
    continues: bool = False,
    version: int = CURRENT_VERSION,
) -> tuple[bytes, bytes]:
    """Encode one frame from stored-record bytes; returns (frame bytes, its mac)."""
    return seal_frame(
        encode_payload(records, version),
        len(records),
        first_seq,
        min_ts,
        max_ts,
        key,
        prev_mac,
        continues=continues,
        version=version,
    )


def parse_header(buf: bytes, version: int = CURRENT_VERSION) -> FrameHeader:
    """Parse and sanity-check a 48-byte frame header of a segment of format
    ``version`` (no MAC check)."""
    if len(buf) < HEADER_SIZE:
        raise FrameError("truncated", f"frame header cut short ({len(buf)} of {HEADER_SIZE} bytes)")
    magic, plen, count, flags, first_seq, min_ts, max_ts, checksum = HEADER.unpack_from(buf)
    if magic != FRAME_MAGICS[version]:
        raise FrameError("frame_corrupt", f"bad frame magic {bytes(magic)!r}")
    most = HARD_MAX_PAYLOAD // _MIN_RECORD if version >= COMPRESSED_FROM else plen
    if plen == 0 or plen > HARD_MAX_PAYLOAD or count == 0 or count > most or flags & ~_VALID_FLAGS[version]:
        raise FrameError(
            "frame_corrupt", f"implausible frame header (payload {plen} bytes, count {count}, flags {flags})"
        )
    if first_seq < 1 or min_ts > max_ts:
        raise FrameError("frame_corrupt", f"implausible frame header (first seq {first_seq}, ts {min_ts}..{max_ts})")
    return FrameHeader(plen, count, flags, first_seq, min_ts, max_ts, checksum)


def check_frame(
    header_bytes: bytes, hdr: FrameHeader, payload: bytes, mac: bytes, key: NodeKey, prev_mac: bytes
) -> str | None:
    """Return None when the frame is intact, else the violation kind."""
    if _xxh64(payload) != hdr.checksum:
        return "checksum_mismatch"
    if key.mac(prev_mac, header_bytes, payload) != mac:
        return "mac_mismatch"
    return None


def check_frame_at(data, off: int, version: int, key: NodeKey):
    """``(header, payload, mac, problem)`` of the frame at ``off`` of a segment of format
    ``version``: ``problem`` is None when its checksum and chained MAC (from the 32 bytes
    in front of it) verify, ``"truncated"`` when the data ends inside it.  FrameError:
    no frame header there."""
    hbytes = data[off : off + HEADER_SIZE]
    hdr = parse_header(hbytes, version)
    end = off + HEADER_SIZE + hdr.payload_len
    payload = data[off + HEADER_SIZE : end]
    mac = data[end : end + MAC_SIZE]
    if len(mac) != MAC_SIZE:
        return hdr, payload, mac, "truncated"
    return hdr, payload, mac, check_frame(hbytes, hdr, payload, mac, key, data[off - MAC_SIZE : off])
