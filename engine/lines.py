"""Line files: each frame's records as rendered lines, kept beside the segment.

A read that renders whole frames into text lines (the NDJSON answer does,
on every node of a merged read) spends most of its time decoding records
and building lines.  A *line file*, ``<segment>.lines``, keeps what such a
read rendered, frame by frame, so later reads of the same frames send the
stored lines instead.  It is derived data like the other side files
(SPEC section 4): rebuildable from the ``.seg`` file, never trusted.

- Every block is MAC'd with a key derived from the node key, over the
  renderer's tag and the MAC of the frame it renders.  A block is used only
  after the frame itself has verified in the segment and the block's MAC
  matches that frame's MAC: an edited block, a block copied from another
  frame or node, or a block written by another renderer is never sent.  A
  damaged segment frame goes through the entry path, which flags it.
- Blocks are appended in frame order, by the process that writes the log
  (the server), while it reads: a frame is kept when the frame before it is.
  Other readers only read line files.
- A torn block (crash while appending) is cut off the next time the file is
  appended to; a block whose MAC fails is cut off with everything after it,
  and the frames are rendered again.  Deleting a line file is always safe.

The engine does not know what a line is: the ``render`` callback given to
:class:`LineFiles` turns a frame's record tuples into one ``\\n``-terminated
line each.  The layout is in docs/FORMAT.md ("Line files").
"""

from __future__ import annotations

import hmac
import os
import struct
import sys
import threading
from array import array
from collections import OrderedDict
from collections.abc import Callable
from itertools import accumulate
from pathlib import Path

from engine.chain import NodeKey
from engine.entry import R_TS

LINES_SUFFIX = ".lines"
MAGIC = b"AULN"
VERSION = 1
MAC_SIZE = 32
MAX_TAG = 255
#: bytes read at a time from a line file (a block or more), and how many files' reads are kept
READ_AHEAD = 256 * 1024
WINDOWS = 8
_FILE_HEADER = struct.Struct("<4sBB")  # magic, version, tag length; then the tag
_BLOCK = struct.Struct("<QQII")  # frame offset, frame end, count, lines length
_BIG_ENDIAN = sys.byteorder == "big"


def lines_path(seg_path: Path) -> Path:
    return seg_path.with_suffix(LINES_SUFFIX)


class RenderedFrame:
    """A whole verified frame as rendered lines: ``ts`` (µs, in scan order),
    ``lens`` (each line's length in bytes, an ``array`` of :data:`LEN_CODE`)
    and ``blob`` (the lines, each ending in ``\n``, one after the other)."""

    __slots__ = ("ts", "lens", "blob")

    def __init__(self, ts: list[int], lens: array, blob: bytes):
        self.ts = ts
        self.lens = lens
        self.blob = blob

    @classmethod
    def of_lines(cls, ts: list[int], lines: list[bytes]) -> RenderedFrame:
        return cls(ts, array(LEN_CODE, map(len, lines)), b"".join(lines))

    @property
    def lines(self) -> list[bytes]:
        return cut_lines(self.blob, line_marks(self.lens))

    def __len__(self) -> int:
        return len(self.ts)

    def reversed(self) -> RenderedFrame:
        return RenderedFrame.of_lines(self.ts[::-1], self.lines[::-1])


#: array type code of line lengths: 4-byte unsigned, little-endian on disk and on the wire
LEN_CODE = "I"
assert array(LEN_CODE).itemsize == 4


def line_marks(lens) -> list[int]:
    """``-1``, then the offset of each line's last byte (its ``\n``), from the lines'
    lengths: line ``k`` of the blob is ``blob[marks[k] + 1:marks[k + 1] + 1]``."""
    return list(accumulate(lens, initial=-1))


def cut_lines(blob: bytes, marks: list[int], p: int = 0, j: int | None = None) -> list[bytes]:
    """Lines ``p`` to ``j - 1`` (all by default) of ``blob``, one bytes object each."""
    bounds = [m + 1 for m in marks[p : None if j is None else j + 1]]  # line starts, then the end
    return list(map(blob.__getitem__, map(slice, bounds[:-1], bounds[1:])))


#: array type code of timestamps (µs): 8-byte signed, little-endian on disk and on the wire
TS_CODE = "q"


def le_bytes(code: str, values) -> bytes:
    """``values`` as a little-endian array of ``code`` (:data:`TS_CODE`, :data:`LEN_CODE`)."""
    a = array(code, values)
    if _BIG_ENDIAN:
        a.byteswap()
    return a.tobytes()


def le_array(code: str, raw) -> array:
    """The array :func:`le_bytes` wrote."""
    a = array(code)
    a.frombytes(raw)
    if _BIG_ENDIAN:
        a.byteswap()
    return a


class _LineFile:
    """What is known of one segment's line file: its blocks by frame offset."""

    __slots__ = ("path", "blocks", "walked", "next_frame", "usable", "cut")

    def __init__(self, path: Path):
        self.path = path
        #: frame offset -> (file position, frame end, count, lines length)
        self.blocks: dict[int, tuple[int, int, int, int]] = {}
        self.walked = 0  # file position up to which blocks were read
        self.next_frame: int | None = None  # the frame after the last block
        self.usable = True  # False: a foreign header (another renderer or version)
        self.cut = False  # True once this process cut the file to ``walked``

    def reset(self) -> None:
        """Forget the file (it is gone): it is started afresh from the first frame."""
        self.blocks.clear()
        self.walked, self.next_frame, self.usable, self.cut = 0, None, True, False


class LineFiles:
    """The line files of one node's segments (one instance per ``NodeLog``).

    ``tag`` names the renderer (and what it depends on, such as the node id):
    a file written under another tag is not used, and is started afresh when
    this process keeps lines.  ``keep``: whether this process appends blocks
    (only the process that holds the writer lock does).
    """

    def __init__(self, key: NodeKey, tag: str, render: Callable[[tuple], list[bytes]], *, keep: bool):
        tag_bytes = tag.encode("utf-8")
        if not tag_bytes or len(tag_bytes) > MAX_TAG:
            raise ValueError("a line file tag is 1 to 255 bytes")
        self._key = key.derive(b"lines")
        self._tag = tag_bytes
        self._header = _FILE_HEADER.pack(MAGIC, VERSION, len(tag_bytes)) + tag_bytes
        self._render = render
        self.keep = keep
        self._files: dict[str, _LineFile] = {}
        self._windows: OrderedDict[str, tuple[int, bytes]] = OrderedDict()
        self._lock = threading.Lock()
        #: what reads found (not exact under concurrent reads; for tests and diagnosis)
        self.hits = 0
        self.rendered = 0
        self.rejected = 0

    # -- the read path ----------------------------------------------------------

    def frame(
        self, seg_path: Path, index: int, offset: int, end: int, frame_mac: bytes, records: Callable[[], tuple]
    ) -> RenderedFrame:
        """The lines of a frame that verified: from the line file when a block
        for it checks out, else rendered from ``records()`` (and kept)."""
        got = self._lookup(seg_path, offset, frame_mac)
        if got is not None:
            self.hits += 1
            return got
        recs = records()
        lines = self._render(recs)
        ts = [r[R_TS] for r in recs]
        self.rendered += 1
        rendered = RenderedFrame.of_lines(ts, lines)
        if self.keep:
            self._append(seg_path, index, offset, end, frame_mac, rendered)
        return rendered

    def begin(self, seg_path: Path) -> None:
        """A scan starts on this segment: nothing it reads comes from an earlier read-ahead."""
        with self._lock:
            self._windows.pop(lines_path(seg_path).name, None)

    def _file(self, seg_path: Path) -> _LineFile:
        name = seg_path.name
        with self._lock:
            lf = self._files.get(name)
            if lf is None:
                lf = self._files[name] = _LineFile(lines_path(seg_path))
            return lf

    def _lookup(self, seg_path: Path, offset: int, frame_mac: bytes) -> RenderedFrame | None:
        lf = self._file(seg_path)
        b = lf.blocks.get(offset)
        if b is None:
            if not lf.usable or (lf.next_frame is not None and offset < lf.next_frame):
                return None
            with self._lock:
                self._walk(lf)
            b = lf.blocks.get(offset)
            if b is None:
                return None
        pos, _, count, nbytes = b
        size = _BLOCK.size + 12 * count + nbytes + MAC_SIZE
        view = self._read(lf, pos, size)
        if view is None:
            return None
        if len(view) != size or not hmac.compare_digest(
            self._key.mac(self._tag, frame_mac, view[:-MAC_SIZE]), view[-MAC_SIZE:]
        ):
            self._reject(lf, offset)
            return None
        t_end = _BLOCK.size + 8 * count
        l_end = t_end + 4 * count
        # the MAC vouches for the block as kept: lengths that add up to the lines
        return RenderedFrame(
            le_array(TS_CODE, view[_BLOCK.size : t_end]).tolist(),
            le_array(LEN_CODE, view[t_end:l_end]),
            bytes(view[l_end : size - MAC_SIZE]),
        )

    def _read(self, lf: _LineFile, pos: int, size: int) -> memoryview | None:
        """``size`` bytes of the file at ``pos`` (fewer at its end), through a window read
        ahead: the blocks of small frames are read many at a time, not one call each."""
        win = self._windows.get(lf.path.name)
        if win is not None and win[0] <= pos and pos + size <= win[0] + len(win[1]):
            return memoryview(win[1])[pos - win[0] : pos - win[0] + size]
        try:
            fd = os.open(lf.path, os.O_RDONLY)
        except FileNotFoundError:
            with self._lock:
                lf.reset()  # deleted under us: kept again from the first frame
                self._forget_window(lf)
            return None
        except OSError:
            return None
        try:
            data = os.pread(fd, max(size, READ_AHEAD), pos)
        except OSError:
            return None
        finally:
            os.close(fd)
        with self._lock:
            self._windows[lf.path.name] = (pos, data)
            self._windows.move_to_end(lf.path.name)
            while len(self._windows) > WINDOWS:
                self._windows.popitem(last=False)
        return memoryview(data)[:size]

    def _forget_window(self, lf: _LineFile) -> None:
        """(under the lock) The file changed here: what was read ahead is stale."""
        self._windows.pop(lf.path.name, None)

    def _reject(self, lf: _LineFile, offset: int) -> None:
        """A block that does not check out: forget it and all after it (kept
        again from there when this process keeps lines)."""
        self.rejected += 1
        with self._lock:
            self._forget_window(lf)
            b = lf.blocks.get(offset)
            if b is None:
                return
            pos = b[0]
            for off in [o for o, v in lf.blocks.items() if v[0] >= pos]:
                del lf.blocks[off]
            lf.walked = pos
            lf.next_frame = offset
            if self.keep:
                try:
                    os.truncate(lf.path, pos)
                    lf.cut = True
                except OSError:
                    lf.usable = False

    def _walk(self, lf: _LineFile) -> None:
        """Read block headers past ``lf.walked`` (under the lock)."""
        try:
            with open(lf.path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                if lf.walked == 0:
                    head = f.read(len(self._header))
                    if len(head) < len(self._header):
                        return  # empty or torn header: nothing to use yet
                    if head != self._header:
                        lf.usable = False
                        return
                    lf.walked = len(self._header)
                pos = lf.walked
                while pos + _BLOCK.size <= size:
                    f.seek(pos)
                    off, fend, count, nbytes = _BLOCK.unpack(f.read(_BLOCK.size))
                    total = _BLOCK.size + 12 * count + nbytes + MAC_SIZE
                    if (
                        pos + total > size
                        or count == 0
                        or fend <= off
                        or (lf.next_frame is not None and off != lf.next_frame)
                    ):
                        break
                    lf.blocks[off] = (pos, fend, count, nbytes)
                    lf.next_frame = fend
                    pos += total
                lf.walked = pos
        except FileNotFoundError:
            lf.reset()
            self._forget_window(lf)
        except OSError:
            return

    # -- keeping lines ----------------------------------------------------------

    def _append(
        self, seg_path: Path, index: int, offset: int, end: int, frame_mac: bytes, rendered: RenderedFrame
    ) -> None:
        ts, lens, blob = rendered.ts, rendered.lens, rendered.blob
        # kept only if the lengths cut the blob at its only line breaks (LF, and no CR)
        if blob.count(b"\n") != len(lens) or b"\r" in blob or not all(blob[e - 1] == 10 for e in accumulate(lens)):
            return
        lf = self._file(seg_path)
        with self._lock:
            if lf.usable:
                self._walk(lf)
            in_order = (offset == lf.next_frame) if lf.next_frame is not None else index == 0
            if not in_order and lf.usable:
                return
            try:
                fd = os.open(lf.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError:
                return
            self._forget_window(lf)
            try:
                if not lf.usable or lf.walked == 0:
                    if index != 0:
                        return
                    os.ftruncate(fd, 0)
                    os.pwrite(fd, self._header, 0)
                    lf.blocks.clear()
                    lf.walked, lf.next_frame, lf.usable, lf.cut = len(self._header), None, True, True
                elif not lf.cut:
                    os.ftruncate(fd, lf.walked)  # a torn block from an earlier crash
                    lf.cut = True
                body = b"".join(
                    (
                        _BLOCK.pack(offset, end, len(lens), len(blob)),
                        le_bytes(TS_CODE, ts),
                        le_bytes(LEN_CODE, lens),
                        blob,
                    )
                )
                mac = self._key.mac(self._tag, frame_mac, body)
                os.pwrite(fd, body + mac, lf.walked)
                lf.blocks[offset] = (lf.walked, end, len(lens), len(blob))
                lf.walked += len(body) + MAC_SIZE
                lf.next_frame = end
            except OSError:
                lf.usable = False  # e.g. disk full: reads go on rendering
            finally:
                os.close(fd)

    def forget(self, keep_names: set[str]) -> None:
        """Drop what is known of segments no longer listed."""
        with self._lock:
            for name in [n for n in self._files if n not in keep_names]:
                del self._files[name]
            for name in [n for n in self._windows if n[: -len(LINES_SUFFIX)] + ".seg" not in keep_names]:
                del self._windows[name]

    def __repr__(self) -> str:
        return f"LineFiles(tag={self._tag.decode()!r}, keep={self.keep})"
