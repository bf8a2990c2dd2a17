"""What the writer may and may not do to a log it finds after a crash.

The rule: only bytes that can be an unfinished write are ever cut.  The writer
appends whole frames, a commit at a time (one ``write`` of all its frames, then
``fdatasync``), and acknowledges a commit only after that; a crash can leave
the last commit's bytes partly on disk, or the file extended with zeros or
stale blocks.  So recovery may cut:

* a *torn tail*: the bytes after the last whole frame, when nothing in them is
  (or was) a whole frame: :func:`whole_frame_in` looks for one, also under a
  damaged header, by its checksum.  A tail holding a whole frame is damage:
  kept, reported, and writing goes on in a new segment;
* an *interrupted commit*: format 2 frames say whether their commit goes on in
  the next frame (``FLAG_CONTINUES``).  When the log ends in a frame that says
  so, the commit never finished and was never acknowledged: its frames are cut
  back, including those in segments it rolled into (:func:`interrupted_commit`),
  so a batch is durable whole or not at all and a retry appends it once.

Files in ``segments/`` that would stop the writer (named after the last
segment it can continue from, but not a segment of this log there) are
*set aside*: moved to ``<data-dir>/quarantine/``, never deleted, recorded in
the ``audit.recovery`` entry and reported by ``verify``.  Seqs that a
set-aside file shows to be used (in frames that verify under the node key)
are never given out again.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import msgpack
import xxhash

from auditlog.engine.catalog import SegmentInfo, index_segment
from auditlog.engine.chain import NodeKey
from auditlog.engine.datadir import DataDir, fsync_dir, side_files
from auditlog.engine.frame import (
    COMPRESSED_FROM,
    FRAME_MAGICS,
    HEADER,
    HEADER_SIZE,
    MAC_SIZE,
    OVERHEAD,
    FrameError,
    check_frame,
    parse_header,
)
from auditlog.engine.segment import (
    MAX_HEADER,
    SegmentData,
    SegmentHeaderError,
    list_segments,
    parse_segment_header,
    segment_name,
    seq_from_name,
)

QUARANTINE = "quarantine"


@dataclass
class KeptTail:
    """Bytes after the last whole frame that hold a whole frame: damage, not a torn write."""

    detail: str
    #: records in the whole frames found there (their seqs are never given out again)
    records: int


def whole_frame_in(data, start: int, end: int, version: int, key: NodeKey) -> KeptTail | None:
    """Where ``data[start:end]`` (the bytes after the last whole frame) shows a whole
    frame, if anywhere, or None when it can be an unfinished write.

    A whole frame is recognised by its payload's checksum (the xxHash64 in its
    header, over the payload its length field or the end of the data delimits),
    or by a MAC that verifies against the 32 bytes in front of it.  A torn
    write is a prefix of what was written, or zeros or stale blocks: neither
    has a payload that matches a checksum.
    """
    found: list[tuple[int, bytes, str]] = []  # (offset, payload, how)
    size = end - start
    if size >= OVERHEAD:
        # the first header with any of its fields damaged, the frame ending at the end
        checksum = HEADER.unpack_from(data, start)[7]
        payload = data[start + HEADER_SIZE : end - MAC_SIZE]
        if xxhash.xxh64_intdigest(payload) == checksum:
            found.append((start, payload, "its payload matches its checksum"))
    magic = FRAME_MAGICS[version]
    pos = start
    while True:
        i = data.find(magic, pos, end)
        if i < 0:
            break
        if i + HEADER_SIZE <= end and not any(o == i for o, _, _ in found):
            (_, plen, _, _, _, _, _, checksum) = HEADER.unpack_from(data, i)
            fend = i + OVERHEAD + plen
            if 0 < plen and fend <= end:
                payload = data[i + HEADER_SIZE : fend - MAC_SIZE]
                if xxhash.xxh64_intdigest(payload) == checksum:
                    found.append((i, payload, "its payload matches its checksum"))
                else:
                    try:
                        hdr = parse_header(data[i : i + HEADER_SIZE], version)
                        if (
                            i >= MAC_SIZE
                            and check_frame(
                                data[i : i + HEADER_SIZE],
                                hdr,
                                payload,
                                data[fend - MAC_SIZE : fend],
                                key,
                                data[i - MAC_SIZE : i],
                            )
                            is None
                        ):
                            found.append((i, payload, "its MAC verifies"))
                    except FrameError:
                        pass
        pos = i + 1
    if not found:
        return None
    off, _, how = found[0]
    return KeptTail(
        f"a whole frame at offset {off} ({how})", sum(_record_count(data, o, p, version) for o, p, _ in found)
    )


def _record_count(data, off: int, payload, version: int) -> int:
    """How many records a whole frame holds (at least 1).  A plain payload is counted
    by decoding it; a compressed one is never decompressed unverified, so its header's
    count stands (authentic when the frame's MAC verified)."""
    if version >= COMPRESSED_FROM:
        return max(1, HEADER.unpack_from(data, off)[2])
    try:
        recs = msgpack.unpackb(payload, raw=False, use_list=False, strict_map_key=False)
    except (ValueError, TypeError, msgpack.UnpackException):
        return 1
    return len(recs) if isinstance(recs, tuple) and recs else 1


@dataclass
class InterruptedCommit:
    """Frames of a commit that never finished: from ``offset`` in ``segment`` to the end
    of the log (``later``: segments the commit rolled into, entirely its own)."""

    segment: Path
    offset: int
    later: list[Path]
    seq_from: int
    seq_to: int


def interrupted_commit(infos: list[SegmentInfo]) -> InterruptedCommit | None:
    """The commit the log ends in, if its last frame says the commit goes on."""
    seq_to = None
    later: list[Path] = []
    for info in reversed(infos):
        if not info.usable or info.tail is not None or info.index.damaged:
            return None
        if info.version < 2:
            return None  # format 1 frames do not say where a commit ends
        frames = info.index.frames
        if not frames:
            later.append(info.path)
            continue
        flags = _frame_flags(info)
        if flags is None:
            return None
        if seq_to is None:
            if not flags[-1]:
                return None  # the log ends where a commit ends
            seq_to = info.last_seq
        # walk back to the first frame of the commit: the one after a frame that ends one
        o = len(frames) - 1
        while o > 0 and flags[o - 1]:
            o -= 1
        if o > 0 or not _previous_continues(infos, info):
            return InterruptedCommit(info.path, frames[o].offset, later[::-1], frames[o].first_seq, seq_to)
        later.append(info.path)  # the commit began in an earlier segment
    return None


def _previous_continues(infos: list[SegmentInfo], info: SegmentInfo) -> bool:
    """Whether the segment before ``info`` (that has frames) ends in a frame whose commit goes on."""
    i = infos.index(info)
    for prev in reversed(infos[:i]):
        if not prev.usable or prev.version < 2:
            return False
        if prev.index.frames:
            flags = _frame_flags(prev)
            return bool(flags and flags[-1])
    return False


def _frame_flags(info: SegmentInfo) -> list[bool] | None:
    """Each frame's "commit goes on" flag, read from the frame headers."""
    out = []
    try:
        with open(info.path, "rb") as f:
            for row in info.index.frames:
                f.seek(row.offset)
                out.append(parse_header(f.read(HEADER_SIZE), info.version).continues)
    except (OSError, FrameError):
        return None
    return out


def cut_back(commit: InterruptedCommit) -> dict:
    """Remove an interrupted commit's frames; what was removed, for ``audit.recovery``."""
    removed = []
    for p in reversed(commit.later):
        removed.append(p.name)
        drop_segment_files(p)
    size = commit.segment.stat().st_size
    with open(commit.segment, "r+b") as f:
        f.truncate(commit.offset)
        f.flush()
        os.fsync(f.fileno())
    for side in side_files(commit.segment):
        try:
            os.unlink(side)  # they describe the frames cut
        except FileNotFoundError:
            pass
    fsync_dir(commit.segment.parent)
    return {
        "segment": commit.segment.name,
        "cut_offset": commit.offset,
        "cut_bytes": size - commit.offset,
        "removed_segments": removed[::-1],
        "seqs": [commit.seq_from, commit.seq_to],
    }


def drop_segment_files(path: Path) -> None:
    for p in (path, *side_files(path)):
        try:
            os.unlink(p)
        except FileNotFoundError:
            pass


def verified_claims(path: Path, key: NodeKey, node: str) -> int:
    """The highest seq held by a frame of ``path`` that verifies under ``key`` (the
    frames chain from the stored header MAC bytes even if the header is damaged);
    0 when none does.  Authentic: a frame cannot be forged without the key."""
    try:
        with SegmentData(path) as sd:
            data = sd.data
            try:
                h = parse_segment_header(data[:MAX_HEADER], None)
                start, version = h.size, h.version
            except SegmentHeaderError:
                start = 105 + len(node.encode()) + MAC_SIZE
                version = 2
            best = 0
            for v in dict.fromkeys((version, *FRAME_MAGICS)):
                magic = FRAME_MAGICS[v]
                i = data.find(magic, start)
                while i >= 0:
                    try:
                        hdr = parse_header(data[i : i + HEADER_SIZE], v)
                        fend = i + OVERHEAD + hdr.payload_len
                        if (
                            i >= MAC_SIZE
                            and fend <= len(data)
                            and check_frame(
                                data[i : i + HEADER_SIZE],
                                hdr,
                                data[i + HEADER_SIZE : fend - MAC_SIZE],
                                data[fend - MAC_SIZE : fend],
                                key,
                                data[i - MAC_SIZE : i],
                            )
                            is None
                        ):
                            best = max(best, hdr.last_seq)
                    except FrameError:
                        pass
                    i = data.find(magic, i + 1)
            return best
    except (OSError, ValueError):
        return 0


def set_aside_blocking(data_dir: DataDir, key: NodeKey, node: str) -> tuple[list[dict], int]:
    """Move out of ``segments/`` the files after the last usable segment that cannot be
    the next segment of this log; returns (what was set aside, the highest seq any of
    them shows in use)."""
    paths = list_segments(data_dir.segments)
    last_ok = -1
    for i in range(len(paths) - 1, -1, -1):
        if _header_usable(paths[i], key, node):
            last_ok = i
            break
    trailing = paths[last_ok + 1 :]
    if not trailing:
        return [], 0
    if last_ok >= 0:
        expected = index_segment(paths[last_ok], key, node).last_seq + 1
    else:
        expected = 1
    keep_first = seq_from_name(trailing[0].name) == expected
    moved = []
    claimed = 0
    for j, p in enumerate(trailing):
        if j == 0 and keep_first:
            continue  # a segment of this log whose header is damaged: kept where it is
        claimed = max(claimed, verified_claims(p, key, node))
        moved.append(
            quarantine(
                data_dir,
                p,
                f"cannot follow {segment_name(expected - 1) if expected > 1 else 'the start of the log'}"
                " as a segment of this log",
            )
        )
    return moved, claimed


def _header_usable(path: Path, key: NodeKey, node: str) -> bool:
    try:
        with open(path, "rb") as f:
            h = parse_segment_header(f.read(MAX_HEADER), key)
    except (OSError, SegmentHeaderError):
        return False
    return h.node == node and seq_from_name(path.name) == h.first_seq


def quarantine(data_dir: DataDir, path: Path, reason: str) -> dict:
    """Move ``path`` (and nothing else) into ``<data-dir>/quarantine/``; never deletes."""
    qdir = data_dir.root / QUARANTINE
    qdir.mkdir(mode=0o700, exist_ok=True)
    raw = path.read_bytes()
    dest = qdir / path.name
    n = 1
    while dest.exists():
        dest = qdir / f"{path.name}.{n}"
        n += 1
    os.replace(path, dest)
    for side in side_files(path):
        try:
            os.unlink(side)  # derived from the file just moved
        except FileNotFoundError:
            pass
    fsync_dir(qdir)
    fsync_dir(path.parent)
    return {
        "file": path.name,
        "moved_to": f"{QUARANTINE}/{dest.name}",
        "bytes": len(raw),
        "sha256": hashlib.sha256(raw).hexdigest(),
        "reason": reason,
    }


def quarantined(data_dir: DataDir) -> list[Path]:
    try:
        return sorted((data_dir.root / QUARANTINE).iterdir())
    except FileNotFoundError:
        return []
