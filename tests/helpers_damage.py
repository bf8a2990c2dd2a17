"""Random structural damage to a multi-segment log, and every read path that must not be fooled.

A plain module for ``tests/test_random_damage.py`` (``tests/`` is on ``sys.path``).

* :func:`build_pristine` writes one log (node ``gw1``, several sealed segments
  and an active one, commits of 1-5 events a second apart from
  2026-03-01T00:00:00Z, before the tests' frozen clock), from a fixed plan
  (:func:`log_plan`), and keeps two copies of it: without derived files, and
  with every derived file built (``.idx``, ``.terms``).
* The damage classes (:class:`DeleteSegment`, :class:`FlipBytes`,
  :class:`EditRecord`, ...) do to a copy what someone with write access to the
  data dir but without ``node.key`` can do (docs/FORMAT.md): delete, cut,
  rename, copy or overwrite files, flip bytes, and rewrite a record with the
  frame's keyless fields (``payload_len``, xxHash64 ``checksum``, ``min_ts``,
  ``max_ts``) recomputed.  The frame MAC and entry signatures need the key and
  are left alone.  Damage is aimed by the seq of a pristine entry, so an
  explicit example can name "the frame holding seq 57" before the log exists.
* :class:`Query` is a time window plus optional filters; :func:`expected`
  is the oracle (pristine entries that match, written here, not taken from
  the product's filter code).
* The path runners (:func:`run_cli_query`, :func:`run_cli_export`,
  :func:`run_http`, :func:`run_cli_four_eyes`) return :class:`Answer` objects,
  and :func:`check_answer` / :func:`check_four_eyes` list what is wrong with
  them: the property is that an answer either returns exactly the pristine
  matches or reports a violation, and never crashes.

Paths that run a writer (the CLI export, which records ``audit.export``, and
the HTTP service) let it recover the log first: a cut in the middle of the
active segment's last frames is then cut back and recorded as
``audit.recovery`` (the documented crash path).  Those paths are expected to
answer for the log as the writer left it: the seqs it cut are not expected.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import gc
import io
import json
import logging
import random
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack
import xxhash
from helpers_engine import drop_derived, frames_of, init_dir, invoke_cli, segment_header, settings

from auditlog.engine.clock import FrozenClock
from auditlog.engine.datadir import DataDir
from auditlog.engine.entry import EntryDraft
from auditlog.engine.frame import FRAME_MAGICS
from auditlog.engine.log import NodeLog
from auditlog.engine.segment import list_segments
from auditlog.engine.writer import LogWriter

NODE = "gw1"
#: 2026-03-01T00:00:00Z: the log lies before the tests' frozen clock (2026-03-14T09:00Z), so
#: entries a writer adds while a test reads (audit.export, audit.recovery, ...) fall after
#: every window the tests query
T0_US = 1_772_323_200_000_000
STEP_US = 1_000_000
SEGMENT_MAX = 4096
N_COMMITS = 70
TAIL_COMMITS = 6
PLAN_SEED = 20260301

USERS = ("alice", "bruno", "carla", "dmitr", "erika")  # one length: an edit can swap them
IPS = ("192.0.2.10", "192.0.2.11", "192.0.2.12", "198.51.100.7")
RECIPIENTS = ("anna@example.com", "ben@example.com", "cleo@example.net")
TARGETS = ("filter-1", "filter-2", "example.org", "mail-1")
ACTIONS = (
    "auth.login",
    "auth.login_failed",
    "config.filter_update",
    "quarantine.release",
    "user.update",
    "config.dkim_rotate",
    "config.dkim_rotate_confirm",
)
ACTION_QUERIES = ACTIONS + ("config.*", "auth.*", "quarantine.*")
ROTATE, CONFIRM = "config.dkim_rotate", "config.dkim_rotate_confirm"

HEADER = struct.Struct("<4sIIIQqqQ")  # the frame header (docs/FORMAT.md 4.1)
FRAME_HEADER_SIZE = HEADER.size
FRAME_MAC_SIZE = 32
#: entries per JSON page when following next_cursor (several pages per answer)
PAGE = 40


# =============================================================================== the log


def log_plan() -> list[list[dict]]:
    """The commits written to the log: lists of EntryDraft fields, seqs 1.. in order.

    Fixed (seeded), so explicit examples can name seqs: :data:`ROTATIONS` lists
    the seqs of the ``config.dkim_rotate`` entries.
    """
    rnd = random.Random(PLAN_SEED)
    commits: list[list[dict]] = []
    seq = 0
    due: list[tuple[int, dict]] = []  # (commit index, confirmation event)
    for c in range(N_COMMITS):
        batch = []
        for _ in range(rnd.randint(1, 5)):
            seq += 1
            if due and due[0][0] <= c:
                batch.append(due.pop(0)[1])
                continue
            user = rnd.choice(USERS)
            ip = rnd.choice(IPS + (None,))
            r = rnd.random()
            if r < 0.07 and c < N_COMMITS - 5:
                ev = dict(
                    user=user,
                    action=ROTATE,
                    target="example.org",
                    domain="example.org",
                    ip=ip,
                    details={"old": f"k{seq}", "new": f"k{seq + 1}"},
                )
                fate = rnd.random()
                later = c + rnd.randint(1, 12)
                if fate < 0.55:  # a second admin confirms (sometimes twice)
                    other = rnd.choice([u for u in USERS if u != user])
                    due.append(
                        (
                            later,
                            dict(
                                user=other,
                                action=CONFIRM,
                                target="example.org",
                                ip=ip,
                                details={"confirms": f"{NODE}:{seq}"},
                            ),
                        )
                    )
                    if fate < 0.15:
                        third = rnd.choice([u for u in USERS if u not in (user, other)])
                        due.append(
                            (
                                later + 2,
                                dict(
                                    user=third,
                                    action=CONFIRM,
                                    target="example.org",
                                    details={"confirms": f"{NODE}:{seq}"},
                                ),
                            )
                        )
                elif fate < 0.8:  # confirmed only by the same admin
                    due.append(
                        (
                            later,
                            dict(
                                user=user,
                                action=CONFIRM,
                                target="example.org",
                                ip=ip,
                                details={"confirms": f"{NODE}:{seq}"},
                            ),
                        )
                    )
                due.sort(key=lambda d: d[0])
            elif r < 0.3:
                rc = rnd.choice(RECIPIENTS)
                rcpt: Any = [rc, rnd.choice(RECIPIENTS)] if rnd.random() < 0.2 else rc
                ev = dict(
                    user=user,
                    action="quarantine.release",
                    target="mail-1",
                    domain="example.com",
                    ip=ip,
                    details={
                        "mail_id": f"m{seq}",
                        "recipient": rcpt,
                        "sender": "news@example.net",
                        "subject": f"offer {seq}",
                    },
                )
            elif r < 0.5:
                ev = dict(
                    user=user,
                    action=rnd.choice(("auth.login", "auth.login_failed")),
                    ip=ip,
                    user_agent="Mozilla/5.0 (X11)",
                    success=rnd.random() < 0.8,
                )
            elif r < 0.85:
                t = rnd.choice(TARGETS[:2])
                ev = dict(
                    user=user,
                    action="config.filter_update",
                    target=t,
                    domain="example.org",
                    ip=ip,
                    details={"old": "spam>5", "new": f"spam>{seq % 9}"},
                )
            else:
                ev = dict(user=user, action="user.update", target=rnd.choice(USERS), ip=ip, details={"role": "admin"})
            batch.append(ev)
        commits.append(batch)
    # confirmations still due go into one last commit
    if due:
        last = []
        for _, ev in due:
            seq += 1
            last.append(ev)
        commits.append(last)
    # one orphan confirmation (confirms an id that was never a rotation)
    seq += 1
    commits.append(
        [dict(user="erika", action=CONFIRM, target="example.org", details={"confirms": f"{NODE}:{seq - 1}"})]
    )
    # and a few logins, so that the active segment holds several frames
    for _ in range(TAIL_COMMITS):
        commits.append(
            [dict(user=rnd.choice(USERS), action="auth.login", ip=rnd.choice(IPS)) for _ in range(rnd.randint(1, 3))]
        )
    return commits


PLAN = log_plan()
PLAN_EVENTS = [ev for batch in PLAN for ev in batch]
N_ENTRIES = len(PLAN_EVENTS)
ROTATIONS = [i + 1 for i, ev in enumerate(PLAN_EVENTS) if ev["action"] == ROTATE]
CONFIRMATIONS = [i + 1 for i, ev in enumerate(PLAN_EVENTS) if ev["action"] == CONFIRM]


@dataclass
class FrameLayout:
    offset: int
    end: int
    first_seq: int
    count: int

    @property
    def last_seq(self) -> int:
        return self.first_seq + self.count - 1


@dataclass
class SegmentLayout:
    name: str
    header_len: int
    size: int
    frames: list[FrameLayout]

    @property
    def first_seq(self) -> int:
        return self.frames[0].first_seq

    @property
    def last_seq(self) -> int:
        return self.frames[-1].last_seq


@dataclass(repr=False)
class Pristine:
    """The undamaged log: its two copies on disk, its entries, its file layout."""

    plain: Path  # data dir without derived files
    derived: Path  # the same with .idx and .terms built
    entries: list[dict]  # wire dicts, seq order (seq i at index i-1)
    ts_us: list[int]  # ts of seq i at index i-1
    raw: list[dict]  # id -> stored fields for the oracle (ts int, details as read)
    segments: list[SegmentLayout]
    signatures: list[bytes]
    four_eyes_cache: dict = field(default_factory=dict)

    def __repr__(self) -> str:
        return f"Pristine({self.plain.parent}, {len(self.entries)} entries, {len(self.segments)} segments)"

    def by_id(self) -> dict[str, dict]:
        return {e["id"]: e for e in self.entries}

    def segment_of(self, seq: int) -> SegmentLayout:
        for s in self.segments:
            if s.first_seq <= seq <= s.last_seq:
                return s
        raise AssertionError(f"seq {seq} in no segment")

    def frame_of(self, seq: int) -> tuple[SegmentLayout, FrameLayout]:
        s = self.segment_of(seq)
        for f in s.frames:
            if f.first_seq <= seq <= f.last_seq:
                return s, f
        raise AssertionError(f"seq {seq} in no frame")

    def sealed_of(self, seq: int) -> SegmentLayout:
        """The segment holding ``seq``, or the one before it when that is the newest."""
        s = self.segment_of(seq)
        if s is self.segments[-1]:
            return self.segments[-2]
        return s

    @property
    def active(self) -> SegmentLayout:
        return self.segments[-1]


def build_pristine(root: Path) -> Pristine:
    """Write the log of :data:`PLAN` under ``root`` and describe it."""
    plain = root / "plain"
    dd, node = init_dir(plain, NODE)
    with LogWriter(dd, node, settings(SEGMENT_MAX), clock=FrozenClock(T0_US, step_us=STEP_US)) as w:
        for batch in PLAN:
            w.append_batch([EntryDraft(**ev) for ev in batch])
    log = NodeLog(dd, node)
    found = list(log.scan())
    assert [e.seq for e in found] == list(range(1, N_ENTRIES + 1)), "the writer added entries of its own"
    assert all(e.integrity == "ok" for e in found)
    assert [(e.user, e.action) for e in found] == [(ev["user"], ev["action"]) for ev in PLAN_EVENTS]
    ts = [e.ts for e in found]
    assert len(set(ts)) == len(PLAN) or all(a <= b for a, b in zip(ts, ts[1:]))
    drop_derived(dd)
    segs = []
    for p in list_segments(dd.segments):
        hdr = segment_header(p, node)
        frames = [FrameLayout(f.offset, f.end, f.first_seq, f.count) for f in frames_of(p, node)]
        segs.append(SegmentLayout(p.name, hdr.size, p.stat().st_size, frames))
    assert len(segs) >= 5 and all(s.frames for s in segs), [s.name for s in segs]
    assert len(segs[-1].frames) >= 3, "the active segment should hold several frames"
    derived = root / "derived"
    shutil.copytree(plain, derived)
    build_derived(derived)
    assert list((derived / "segments").glob("*.terms")) and list((derived / "segments").glob("*.idx"))
    return Pristine(
        plain,
        derived,
        [e.to_wire() for e in found],
        ts,
        [dict(user=e.user, action=e.action, target=e.target, ip=e.ip, details=e.details) for e in found],
        segs,
        [e.signature for e in found],
    )


def build_derived(data_dir: Path) -> None:
    """Build every derived file the way the node does: a full scan (``.idx`` of sealed
    segments), an NDJSON read as a server answers it, and the ``.terms`` of every
    segment (a selective query, then the server's background build)."""
    from auditlog.query.sources import LineTaker

    dd = DataDir(data_dir)
    node = dd.open()
    log = NodeLog(dd, node)

    taker = LineTaker(log.read(), None, None, "asc")
    while taker.take(1 << 20) is not None:
        pass
    for _ in log.scan(terms={"user": frozenset(["alice"])}, predicate=lambda e: e.user == "alice"):
        pass
    log.build_missing_terms(limit=1000)


# =============================================================================== damage
#
# Every damage is aimed by the seq of a pristine entry; ``apply`` returns one line saying
# what it did to which file (or that it did nothing, when an earlier damage removed its
# target).  Nothing here needs the node key.


def _seg_path(d: Path, name: str) -> Path:
    return d / "segments" / name


def _locate_frame(data: bytes, pristine_file: bytes, f: FrameLayout) -> int | None:
    """Offset of a pristine frame in a (possibly edited) file: its header bytes, else its
    first_seq/min_ts/max_ts fields behind the frame magic, else None."""
    hdr = pristine_file[f.offset : f.offset + FRAME_HEADER_SIZE]
    if data[f.offset : f.offset + FRAME_HEADER_SIZE] == hdr:
        return f.offset
    pos = data.find(hdr)
    if pos >= 0:
        return pos
    tail = hdr[16:40]
    pos = data.find(tail)
    while pos >= 16:
        if bytes(data[pos - 16 : pos - 12]) in _MAGICS:
            return pos - 16
        pos = data.find(tail, pos + 1)
    return None


@dataclass(frozen=True)
class DeleteSegment:
    """Delete the (sealed) segment holding ``seq``; never the newest."""

    seq: int

    def apply(self, d: Path, p: Pristine) -> str:
        s = p.sealed_of(self.seq)
        path = _seg_path(d, s.name)
        if not path.exists():
            return f"delete {s.name}: already gone"
        path.unlink()
        return f"deleted {s.name} (seq {s.first_seq}..{s.last_seq})"


@dataclass(frozen=True)
class TruncateSealed:
    """Cut the sealed segment holding ``seq`` at ``at`` (a fraction of its size)."""

    seq: int
    at: float

    def apply(self, d: Path, p: Pristine) -> str:
        s = p.sealed_of(self.seq)
        path = _seg_path(d, s.name)
        if not path.exists():
            return f"truncate {s.name}: gone"
        size = path.stat().st_size
        cut = min(max(1, int(self.at * size)), size - 1)
        with open(path, "r+b") as fh:
            fh.truncate(cut)
        return f"truncated {s.name} at offset {cut} of {size}"


@dataclass(frozen=True)
class CutActive:
    """Cut the active segment inside a frame (never exactly at a frame boundary: that
    is the undetectable rollback of the newest commits, a documented limit)."""

    at: float

    def apply(self, d: Path, p: Pristine) -> str:
        s = p.active
        path = _seg_path(d, s.name)
        if not path.exists():
            return f"cut {s.name}: gone"
        size = path.stat().st_size
        # never leave it ending at the end of its header or of a frame, as the file is now
        # (an earlier damage may have cut it or changed a frame's length)
        boundaries = {s.header_len} | set(_frame_ends(path.read_bytes(), s.header_len))
        inside = [c for c in range(s.header_len + 1, size) if c not in boundaries]
        if not inside:
            return f"cut {s.name}: no frame left to cut into"
        cut = inside[min(int(self.at * len(inside)), len(inside) - 1)]
        with open(path, "r+b") as fh:
            fh.truncate(cut)
        frame = next((f for f in s.frames if f.offset < cut < f.end), None)
        where = f"inside frame seq {frame.first_seq}..{frame.last_seq}" if frame else "mid-frame"
        return f"cut active {s.name} at offset {cut} of {size} ({where})"


#: the frame magic of every segment format (a damaged file keeps its own)
_MAGICS = frozenset(FRAME_MAGICS.values())


def _frame_ends(data: bytes, pos: int) -> list[int]:
    """Where the frames of a segment end, by their magic and length fields alone."""
    ends = []
    while pos + FRAME_HEADER_SIZE <= len(data) and bytes(data[pos : pos + 4]) in _MAGICS:
        pos += FRAME_HEADER_SIZE + HEADER.unpack_from(data, pos)[1] + FRAME_MAC_SIZE
        if pos > len(data):
            break
        ends.append(pos)
    return ends


FLIP_REGIONS = ("header", "frame_header", "payload", "mac", "anywhere")


@dataclass(frozen=True)
class FlipBytes:
    """XOR ``mask`` into ``n`` consecutive bytes of the segment holding ``seq`` (sealed
    or active), in ``region`` of the frame holding ``seq`` (or the segment header)."""

    seq: int
    region: str
    at: float
    mask: int = 0xFF
    n: int = 1

    def apply(self, d: Path, p: Pristine) -> str:
        s, f = p.frame_of(self.seq)
        path = _seg_path(d, s.name)
        if not path.exists():
            return f"flip in {s.name}: gone"
        data = bytearray(path.read_bytes())
        start, end = {
            "header": (0, s.header_len),
            "frame_header": (f.offset, f.offset + FRAME_HEADER_SIZE),
            "payload": (f.offset + FRAME_HEADER_SIZE, f.end - FRAME_MAC_SIZE),
            "mac": (f.end - FRAME_MAC_SIZE, f.end),
            "anywhere": (0, len(data)),
        }[self.region]
        end = min(end, len(data))
        if start >= end:
            return f"flip in {s.name}: region {self.region} beyond the end of the file"
        pos = start + min(int(self.at * (end - start)), end - start - 1)
        stop = min(pos + self.n, len(data))
        for i in range(pos, stop):
            data[i] ^= self.mask
        path.write_bytes(bytes(data))
        return (
            f"flipped {stop - pos} byte(s) at offset {pos} ({self.region} of frame seq "
            f"{f.first_seq}..{f.last_seq}) in {s.name} with mask {self.mask:#04x}"
        )


@dataclass(frozen=True)
class SwapNames:
    """Swap the names of the segments holding ``seq`` and ``other``."""

    seq: int
    other: int

    def apply(self, d: Path, p: Pristine) -> str:
        a, b = p.segment_of(self.seq), p.segment_of(self.other)
        if a is b:
            i = p.segments.index(a)
            b = p.segments[i - 1] if i > 0 else p.segments[i + 1]
        pa, pb = _seg_path(d, a.name), _seg_path(d, b.name)
        if not (pa.exists() and pb.exists()):
            return f"swap {a.name} and {b.name}: one is gone"
        tmp = pa.with_name("swap.partial")
        pa.rename(tmp)
        pb.rename(pa)
        tmp.rename(pb)
        return f"swapped the names of {a.name} and {b.name}"


COPY_TARGETS = ("between", "after", "before")


@dataclass(frozen=True)
class CopySegment:
    """Copy the segment holding ``seq`` under another segment name: between two real
    ones, after the newest (the copy becomes the last file), or before the first."""

    seq: int
    to: str

    def apply(self, d: Path, p: Pristine) -> str:
        s = p.segment_of(self.seq)
        src = _seg_path(d, s.name)
        if not src.exists():
            return f"copy {s.name}: gone"
        name = _free_name(d, p, self.to, s)
        shutil.copyfile(src, _seg_path(d, name))
        return f"copied {s.name} to {name}"


GARBAGE_NAMES = ("max", "between", "zero")
GARBAGE_KINDS = ("random", "zeros", "magic")


@dataclass(frozen=True)
class GarbageSegment:
    """Write a file that is not a segment under a segment's kind of name:
    ``99999999999999999999.seg``, a name between two real ones (after the segment
    holding ``seq``), or ``00000000000000000000.seg``."""

    name: str
    kind: str
    size: int
    seq: int = 1
    seed: int = 0

    def apply(self, d: Path, p: Pristine) -> str:
        if self.name == "max":
            name = "9" * 20 + ".seg"
        elif self.name == "zero":
            name = "0" * 20 + ".seg"
        else:
            name = _free_name(d, p, "between", p.segment_of(self.seq))
        rnd = random.Random(self.seed)
        if self.kind == "zeros":
            body = bytes(self.size)
        elif self.kind == "magic":  # starts like a segment header, then noise
            body = b"AUDITSEG\x01\x00" + bytes(rnd.getrandbits(8) for _ in range(self.size))
        else:
            body = bytes(rnd.getrandbits(8) for _ in range(self.size))
        _seg_path(d, name).write_bytes(body)
        return f"wrote {len(body)} bytes of {self.kind} as {name}"


def _free_name(d: Path, p: Pristine, where: str, s: SegmentLayout) -> str:
    taken = {x.name for x in (d / "segments").glob("*.seg")}
    if where == "after":
        n = p.active.last_seq + 1000
    elif where == "before":
        n = 0
    else:
        n = s.first_seq + 1
    while f"{n:020d}.seg" in taken:
        n += 1
    return f"{n:020d}.seg"


EDIT_FIELDS = ("user", "ip", "success", "ts_shift", "seq_str", "ts_float", "sig_str", "details_list")


@dataclass(frozen=True)
class EditRecord:
    """Rewrite the record of ``seq`` in its frame and fix the frame header's keyless
    fields (payload_len, xxHash64 checksum, min/max ts) as an attacker would; the
    frame MAC and the entry signature stay as they were (they need the key)."""

    seq: int
    field: str

    def apply(self, d: Path, p: Pristine) -> str:
        s, f = p.frame_of(self.seq)
        path = _seg_path(d, s.name)
        if not path.exists():
            return f"edit seq {self.seq} in {s.name}: gone"
        data = bytearray(path.read_bytes())
        pristine_file = _seg_path(p.plain, s.name).read_bytes()
        off = _locate_frame(bytes(data), pristine_file, f)
        if off is None:
            return f"edit seq {self.seq} in {s.name}: frame no longer found"
        magic, plen, count, flags, first_seq, min_ts, max_ts, _ = HEADER.unpack_from(data, off)
        payload = bytes(data[off + FRAME_HEADER_SIZE : off + FRAME_HEADER_SIZE + plen])
        try:
            up = msgpack.Unpacker(raw=False, use_list=True, strict_map_key=False)
            up.feed(payload)
            n = up.read_array_header()
            spans, recs, pos = [], [], up.tell()
            for _ in range(n):
                recs.append(up.unpack())
                spans.append((pos, up.tell()))
                pos = up.tell()
            i = self.seq - first_seq
            rec = recs[i]
        except Exception:  # an earlier damage made it unreadable: nothing to edit
            return f"edit seq {self.seq} in {s.name}: frame no longer decodes"
        old = rec[_FIELD_INDEX[self.field]]
        rec[_FIELD_INDEX[self.field]] = _edited(self.field, old)
        new_raw = msgpack.packb(rec, use_bin_type=True)
        new_payload = payload[: spans[i][0]] + new_raw + payload[spans[i][1] :]
        tss = [r[1] for r in recs if type(r[1]) is int]
        lo, hi = (min(tss), max(tss)) if tss else (min_ts, max_ts)
        new_header = HEADER.pack(
            magic, len(new_payload), count, flags, first_seq, lo, hi, xxhash.xxh64_intdigest(new_payload)
        )
        data[off : off + FRAME_HEADER_SIZE + plen] = new_header + new_payload
        path.write_bytes(bytes(data))
        return (
            f"edited seq {self.seq} {self.field}: {old!r} -> {rec[_FIELD_INDEX[self.field]]!r} "
            f"in frame at offset {off} of {s.name}, checksum recomputed"
        )


_FIELD_INDEX = {
    "user": 2,
    "ip": 6,
    "success": 8,
    "ts_shift": 1,
    "seq_str": 0,
    "ts_float": 1,
    "sig_str": 10,
    "details_list": 9,
}


def _edited(what: str, old):
    if what == "user":
        return USERS[(USERS.index(old) + 1) % len(USERS)] if old in USERS else "mallo"
    if what == "ip":
        if not isinstance(old, str):
            return "192.0.2.99"
        return old[:-1] + str((int(old[-1]) + 3) % 10) if old[-1].isdigit() else old + "0"
    if what == "success":
        return not old
    if what == "ts_shift":
        return old + STEP_US if isinstance(old, int) else old
    if what == "seq_str":
        return str(old)
    if what == "ts_float":
        return float(old) if isinstance(old, int) else old
    if what == "sig_str":
        return old.hex() if isinstance(old, bytes) else str(old)
    if what == "details_list":
        return list(old) if isinstance(old, dict) else [old]
    raise AssertionError(what)


SIDECARS = ("terms", "idx", "all")


@dataclass(frozen=True)
class DropSidecar:
    """Delete a derived file of the segment holding ``seq`` (always allowed: never needed)."""

    seq: int
    which: str

    def apply(self, d: Path, p: Pristine) -> str:
        s = p.segment_of(self.seq)
        stem = s.name[:-4]
        gone = []
        for ext in ("terms", "idx") if self.which == "all" else (self.which,):
            f = d / "segments" / f"{stem}.{ext}"
            if f.exists():
                f.unlink()
                gone.append(f.name)
        return f"deleted {', '.join(gone) or 'no derived file'} of {s.name}"


def damage_copy(p: Pristine, damage: tuple, derived: bool, dest: Path) -> list[str]:
    """A copy of the pristine log (with or without derived files) at ``dest``, damaged;
    returns what each damage did."""
    assert not [f for f in (p.plain / "segments").iterdir() if f.suffix in (".idx", ".terms")], (
        "something read the pristine copy in place (reads write derived files): read a copy"
    )
    shutil.copytree(p.derived if derived else p.plain, dest)
    return [dmg.apply(dest, p) for dmg in damage]


# =============================================================================== queries


@dataclass(frozen=True)
class Query:
    """A time window and optional filters.

    ``window``: ``("all",)``; ``("seqs", a, da, b, db)`` = [ts(a) + da, ts(b) + db) in µs;
    ``("segment", s)`` / ``("frame", s)`` = the time span of the pristine segment /
    frame holding seq ``s``.  A filter value that is an int means "the value the
    pristine entry with that seq has" (for explicit examples).
    """

    window: tuple = ("all",)
    user: tuple = ()
    ip: tuple = ()
    action: tuple = ()
    recipient: tuple = ()
    target: tuple = ()


@dataclass
class Resolved:
    from_us: int
    to_us: int
    users: tuple[str, ...]
    ips: tuple[str, ...]
    actions: tuple[str, ...]
    recipients: tuple[str, ...]
    targets: tuple[str, ...]

    def params(self) -> dict[str, str]:
        out = {"from": rfc3339(self.from_us), "to": rfc3339(self.to_us)}
        for name, vals in (
            ("user", self.users),
            ("ip", self.ips),
            ("action", self.actions),
            ("recipient", self.recipients),
            ("target", self.targets),
        ):
            if vals:
                out[name] = ",".join(vals)
        return out

    def cli_args(self) -> list[str]:
        args = []
        for k, v in self.params().items():
            args += [f"--{k}", v]
        return args

    def describe(self) -> str:
        return " ".join(f"{k}={v}" for k, v in self.params().items())

    def matches(self, raw: dict, ts: int) -> bool:
        if not self.from_us <= ts < self.to_us:
            return False
        if self.users and raw["user"] not in self.users:
            return False
        if self.ips and raw["ip"] not in self.ips:
            return False
        if self.targets and raw["target"] not in self.targets:
            return False
        if self.actions and not any(
            raw["action"] == a or (a.endswith(".*") and raw["action"].startswith(a[:-1])) for a in self.actions
        ):
            return False
        if self.recipients:
            rc = raw["details"].get("recipient") if isinstance(raw["details"], dict) else None
            have = set(rc) if isinstance(rc, (list, tuple)) else {rc}
            if not have & set(self.recipients):
                return False
        return True


def rfc3339(us: int) -> str:
    secs, micros = divmod(us, 1_000_000)
    import datetime as dt

    t = dt.datetime(1970, 1, 1) + dt.timedelta(seconds=secs)
    return f"{t:%Y-%m-%dT%H:%M:%S}.{micros:06d}Z"


def resolve(q: Query, p: Pristine) -> Resolved:
    ts = p.ts_us
    kind = q.window[0]
    if kind == "all":
        lo, hi = T0_US - 86_400_000_000, ts[-1] + 1
    elif kind == "seqs":
        _, a, da, b, db = q.window
        lo, hi = ts[a - 1] + da, ts[b - 1] + db
    elif kind == "segment":
        s = p.segment_of(q.window[1])
        lo, hi = ts[s.first_seq - 1], ts[s.last_seq - 1] + 1
    elif kind == "frame":
        _, f = p.frame_of(q.window[1])
        lo, hi = ts[f.first_seq - 1], ts[f.last_seq - 1] + 1
    else:
        raise AssertionError(q.window)
    # never past the log's last entry: a writer appends its own entries after it
    hi = min(hi, ts[-1] + 1)
    if hi <= lo:
        hi = lo + 1

    def vals(field_: str, given: tuple) -> tuple[str, ...]:
        out = []
        for v in given:
            if isinstance(v, int):  # the value pristine entry v has
                raw = p.raw[v - 1]
                v = raw[field_] if field_ != "recipient" else raw["details"].get("recipient")
                if isinstance(v, (list, tuple)):
                    v = v[0]
            if isinstance(v, str) and v not in out:
                out.append(v)
        return tuple(out)

    return Resolved(
        lo,
        hi,
        vals("user", q.user),
        vals("ip", q.ip),
        vals("action", q.action),
        vals("recipient", q.recipient),
        vals("target", q.target),
    )


def expected(p: Pristine, r: Resolved) -> list[dict]:
    """The pristine entries the query matches, ascending."""
    return [e for e, raw, ts in zip(p.entries, p.raw, p.ts_us) if r.matches(raw, ts)]


# =============================================================================== answers

#: fields compared between a returned entry and the pristine one (what every format carries)
FULL_FIELDS = (
    "id",
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
)


@dataclass
class Answer:
    """What one read path returned, normalised: rows as wire-like dicts."""

    path: str
    rows: list[dict] = field(default_factory=list)
    reported: bool = False
    problems: list[str] = field(default_factory=list)  # failures by themselves (crashes, ...)
    fields: tuple[str, ...] = FULL_FIELDS
    #: seqs a writer cut back before this path read (torn tail recovery)
    cut: frozenset = frozenset()
    order: str = "asc"
    info: str = ""
    #: no answer to check (a crash, an error status, a cut or abandoned stream): the
    #: problems say why, and the content is not compared
    fatal: bool = False

    def fail(self, problem: str) -> None:
        self.problems.append(problem)
        self.fatal = True


def check_answer(ans: Answer, exp: list[dict], p: Pristine, r: Resolved) -> list[str]:
    """What is wrong with an answer (empty: the property holds)."""
    out = [f"{ans.path}: {x}" for x in ans.problems]
    if ans.fatal:
        return out
    pristine = p.by_id()
    raw_by_id = {e["id"]: (raw, ts) for e, raw, ts in zip(p.entries, p.raw, p.ts_us)}
    ok_rows = [row for row in ans.rows if row.get("integrity") == "ok"]
    for row in ok_rows:
        orig = pristine.get(row.get("id"))
        if orig is None:
            out.append(f"{ans.path}: returned {row.get('id')!r} as ok, but no such entry is in the log: {row}")
            continue
        diff = {k: (row.get(k), orig[k]) for k in ans.fields if row.get(k) != orig[k]}
        if diff:
            out.append(
                f"{ans.path}: returned {row['id']} as ok with fields that are not the original's "
                f"(returned, original): {diff}"
            )
            continue
        raw, ts = raw_by_id[row["id"]]
        if not r.matches(raw, ts):
            out.append(f"{ans.path}: returned {row['id']} as ok, but it does not match the query")
    if not ans.reported:
        want = [e["id"] for e in exp if e["seq"] not in ans.cut]
        if ans.order == "desc":
            want.reverse()
        got = [row.get("id") for row in ok_rows]
        if got != want:
            missing = [i for i in want if i not in set(got)]
            extra = [i for i in got if i not in set(want)]
            twice = sorted({i for i in got if got.count(i) > 1}, key=got.index)
            what = []
            if missing:
                what.append(f"missing {_ids(missing)}")
            if extra:
                what.append(f"unexpected {_ids(extra)}")
            if twice:
                what.append(f"returned more than once: {_ids(twice)}")
            if not missing and not extra and not twice:
                what.append("the order differs")
            out.append(
                f"{ans.path}: no violation reported, but {len(got)} ok entries returned instead of "
                f"the {len(want)} pristine matches: {'; '.join(what)}"
            )
        bad = [row for row in ans.rows if row.get("integrity") != "ok"]
        if bad:
            out.append(f"{ans.path}: rows not ok ({bad[:2]}) but the answer does not report a violation")
    return out


def _ids(ids: list[str]) -> str:
    return ", ".join(ids[:8]) + (f" (+{len(ids) - 8} more)" if len(ids) > 8 else "")


def _traceback_in(text: str) -> bool:
    return "Traceback (most recent call last)" in (text or "")


def _exc(e: BaseException) -> str:
    tb = traceback.extract_tb(e.__traceback__)
    where = f" at {tb[-1].filename.rsplit('/', 2)[-1]}:{tb[-1].lineno}" if tb else ""
    return f"{type(e).__name__}: {str(e)[:200]}{where}"


# -- parsing the formats -------------------------------------------------------------


def rows_from_ndjson(text: str, what: str, ans: Answer) -> list[dict]:
    if text and not text.endswith("\n"):
        ans.fail(f"{what} ends with a cut line: {text[-80:]!r}")
    rows = []
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError:
            ans.problems.append(f"{what} line is not JSON: {line[:120]!r}")
            continue
        if "node_status" in obj:  # this node gave up part way (an error, not a violation)
            ans.fail(f"{what} carries a node status line: {line[:200]}")
            continue
        rows.append(obj)
    return rows


def rows_from_ecs(text: str, what: str, ans: Answer) -> list[dict]:
    out = []
    for doc in rows_from_ndjson(text, what, ans):
        try:
            ev = doc["event"]
            out.append(
                {
                    "id": ev["id"],
                    "seq": ev["sequence"],
                    "ts": doc["@timestamp"],
                    "user": doc["user"]["name"],
                    "action": ev["action"],
                    "target": doc["auditlog"]["target"],
                    "domain": doc["auditlog"]["domain"],
                    "ip": doc.get("source", {}).get("ip"),
                    "user_agent": doc.get("user_agent", {}).get("original"),
                    "success": ev["outcome"] == "success",
                    "details": doc["auditlog"]["details"],
                    "signature": ev["hash"],
                    "integrity": doc["labels"]["integrity"],
                }
            )
        except (KeyError, TypeError) as e:
            ans.problems.append(f"{what}: document without {e}: {json.dumps(doc)[:200]}")
    return out


def rows_from_csv(text: str, what: str, ans: Answer) -> list[dict]:
    from auditlog.export.csv import CSV_COLUMNS

    text = text.lstrip("\ufeff")
    if text and not text.endswith("\r\n"):
        ans.fail(f"{what} ends with a cut line: {text[-80:]!r}")
    rd = csv.reader(io.StringIO(text, newline=""))
    out = []
    header = next(rd, None)
    if header != list(CSV_COLUMNS):
        ans.fail(f"{what}: header {header!r}")
        return out
    for cells in rd:
        if len(cells) != len(CSV_COLUMNS):
            ans.problems.append(f"{what}: row with {len(cells)} cells: {cells!r}")
            continue
        c = dict(zip(CSV_COLUMNS, cells))
        try:
            details = json.loads(c["details"]) if c["details"] else None
        except ValueError:
            details = c["details"]
        try:
            seq = int(c["seq"])
        except ValueError:
            seq = c["seq"]
        out.append(
            {
                "id": f"{c['node_id']}:{c['seq']}",
                "seq": seq,
                "ts": c["timestamp"],
                "user": c["user"],
                "action": c["action"],
                "target": c["target"] or None,
                "domain": c["domain"] or None,
                "ip": c["ip_address"] or None,
                "user_agent": c["user_agent"] or None,
                "success": {"true": True, "false": False}.get(c["success"], c["success"]),
                "details": details,
                "signature": c["signature"],
                # a CSV reports a violation by any integrity cell that is not "ok"
                "integrity": "ok" if c["integrity"] == "ok" else "violation",
            }
        )
    return out


_PDF_ROW = re.compile(r"^\s*(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z)\s+(gw1:\S+)")


def rows_from_pdf(pdf: bytes, what: str, ans: Answer) -> tuple[list[dict], bool]:
    """(rows with id and ts, whether the text names a violation) of a PDF report."""
    if not pdf.startswith(b"%PDF"):
        ans.fail(f"{what}: not a PDF: {pdf[:80]!r}")
        return [], False
    proc = subprocess.run(["pdftotext", "-layout", "-", "-"], input=pdf, capture_output=True, timeout=60)
    if proc.returncode != 0:
        ans.fail(f"{what}: pdftotext failed: {proc.stderr[:200]!r}")
        return [], False
    text = proc.stdout.decode("utf-8", "replace")
    violation = "VIOLATION" in text or "FAILED verification" in text
    rows = []
    for line in text.splitlines():
        m = _PDF_ROW.match(line)
        if m:
            rows.append({"id": m.group(2), "ts": m.group(1), "integrity": "violation" if "VIOLATION" in line else "ok"})
    m = re.search(r"Integrity: all (\d+) entries verified", text)
    if not violation and (m is None or int(m.group(1)) != len(rows)):
        ans.problems.append(f"{what}: {len(rows)} rows read, but the status line says {m.group(0) if m else 'nothing'}")
    return rows, violation


# =============================================================================== the CLI


def run_cli_query(d: Path, r: Resolved, fmt: str) -> Answer:
    """``auditlog query --format FMT`` (in-process CLI) on data dir ``d``."""
    ans = Answer(f"cli query --format {fmt}")
    try:
        res = invoke_cli(d, "query", "--format", fmt, *r.cli_args())
    except Exception as e:  # noqa: BLE001 - a crash is what we report
        ans.fail(f"crashed: {_exc(e)}")
        return ans
    _cli_outcome(ans, res.exit_code, res.stderr)
    stdout = res.stdout_bytes.decode("utf-8", "replace")  # (.stdout turns CRLF into LF)
    if fmt == "json":
        try:
            ans.rows = json.loads(stdout)
        except ValueError:
            ans.fail(f"output is not JSON: {stdout[-200:]!r}")
    elif fmt == "ndjson":
        ans.rows = rows_from_ndjson(stdout, "output", ans)
    else:
        ans.rows = rows_from_csv(stdout, "output", ans)
    _cli_reported(ans, res.exit_code)
    return ans


def _cli_outcome(ans: Answer, code: int, stderr: str) -> None:
    ans.info = f"exit {code}"
    if _traceback_in(stderr):
        ans.problems.append(f"traceback on stderr: {stderr[-400:]}")
    if code not in (0, 1):
        ans.fail(f"exit code {code}: {stderr.strip()[-300:]}")


def _cli_reported(ans: Answer, code: int) -> None:
    flagged = any(row.get("integrity") != "ok" for row in ans.rows)
    if code == 1 and not flagged:
        ans.problems.append("exit code 1 but no row marked as a violation")
    if code == 0 and flagged:
        ans.problems.append("rows marked as violations but exit code 0")
    ans.reported = code == 1 and flagged


def run_cli_export(d: Path, r: Resolved, fmt: str, out_dir: Path, damaged: Path, p: Pristine) -> Answer:
    """``auditlog export FMT -o FILE`` (in-process CLI) on data dir ``d`` (it takes the
    writer: ``d`` is a copy of its own)."""
    ans = Answer(f"cli export {fmt}")
    out = out_dir / f"export.{fmt}"
    try:
        res = invoke_cli(d, "export", fmt, *r.cli_args(), "-o", str(out))
    except Exception as e:  # noqa: BLE001
        ans.fail(f"crashed: {_exc(e)}")
        return ans
    _cli_outcome(ans, res.exit_code, res.stderr)
    ans.cut = writer_cut_seqs(_recovery_entries(d), damaged, p)
    if not out.exists():
        if res.exit_code in (0, 1):
            ans.fail(f"exit code {res.exit_code} but no file written")
        return ans
    if fmt == "pdf":
        ans.rows, named = rows_from_pdf(out.read_bytes(), "file", ans)
        ans.fields = ("id", "ts")
        if named != (res.exit_code == 1):
            ans.problems.append(
                f"exit code {res.exit_code} but the PDF {'names' if named else 'does not name'} a violation"
            )
        ans.reported = named and res.exit_code == 1
        return ans
    text = out.read_bytes().decode("utf-8", "replace")
    if fmt == "csv":
        if not text.startswith("\ufeff"):
            ans.problems.append("CSV export without its BOM")
        ans.rows = rows_from_csv(text, "file", ans)
    elif fmt == "ndjson":
        ans.rows = rows_from_ndjson(text, "file", ans)
    else:
        ans.rows = rows_from_ecs(text, "file", ans)
    _cli_reported(ans, res.exit_code)
    return ans


def run_cli_four_eyes(d: Path, r: Resolved) -> tuple[dict | None, list[str]]:
    """``auditlog report four-eyes --json`` over the query's window: (report, problems)."""
    try:
        res = invoke_cli(d, "report", "four-eyes", "--json", "--from", rfc3339(r.from_us), "--to", rfc3339(r.to_us))
    except Exception as e:  # noqa: BLE001
        return None, [f"crashed: {_exc(e)}"]
    problems = []
    if _traceback_in(res.stderr):
        problems.append(f"traceback on stderr: {res.stderr[-400:]}")
    if res.exit_code not in (0, 1):
        return None, problems + [f"exit code {res.exit_code}: {res.stderr.strip()[-300:]}"]
    try:
        rep = json.loads(res.stdout)
    except ValueError:
        return None, problems + [f"output is not JSON: {res.stdout[-200:]!r}"]
    if (res.exit_code == 0) != bool(rep.get("ok")):
        problems.append(f"exit code {res.exit_code} but ok={rep.get('ok')!r}")
    return rep, problems


# =============================================================================== the writer's recovery


def _recovery_entries(d: Path) -> list[dict]:
    """``audit.recovery`` details a writer recorded in data dir ``d`` (the pristine log has none)."""
    try:
        dd = DataDir(d)
        log = NodeLog(dd, dd.open())
        return [
            e.details
            for e in log.scan(check_structure=False)
            if e.action == "audit.recovery" and e.integrity == "ok" and isinstance(e.details, dict)
        ]
    except Exception:  # noqa: BLE001 - the reads under test say what is wrong with the log
        return []


def _signatures_in(damaged: Path, data: bytes, cut: int):
    """The entry signatures in the frames of segment bytes ``data`` before offset ``cut``
    and from it on.  Frames are read by their headers alone (checksums and MACs are
    the reads' business) and decompressed, as format 3 stores them; a frame that does
    not decode holds none."""
    from auditlog.engine.entry import R_SIG
    from auditlog.engine.segment import MAX_HEADER, parse_segment_header, walk_frames

    node = DataDir(damaged).open()
    try:
        hdr = parse_segment_header(data[:MAX_HEADER], node.key)
    except Exception:  # noqa: BLE001 - a damaged header: search the raw bytes instead
        return data[:cut], data[cut:]  # (``sig in`` bytes: a substring search)

    def sigs(frames) -> set[bytes]:
        out = set()
        for fr in frames:
            if fr.payload is None:
                continue
            try:
                out.update(bytes(r[R_SIG]) for r in fr.records())
            except Exception:  # noqa: BLE001 - undecodable: nothing to find there
                continue
        return out

    head = sigs(walk_frames(data[:cut], hdr.size, hdr.mac, node.key, verify=False, version=hdr.version))
    tail = sigs(walk_frames(data, cut, data[cut - 32 : cut], node.key, verify=False, version=hdr.version))
    return head, tail


def writer_cut_seqs(recoveries: list[dict], damaged: Path, p: Pristine) -> frozenset:
    """Pristine seqs that a writer's torn-tail cut removed from the log.

    ``damaged`` is the damaged log as it was before the writer ran.  A cut of
    segment S at offset O removes what S held from O on; what the damage had
    already cut from S is gone as well.  So: the pristine entries of S whose
    signature is not in the damaged S before O, and every entry whose signature
    is in the damaged S after O.
    """
    cut: set[int] = set()
    for rec in recoveries:
        if "cut_offset" not in rec or not isinstance(rec.get("segment"), str):
            continue
        path = damaged / "segments" / rec["segment"]
        try:
            data = path.read_bytes()
        except OSError:
            continue
        head, tail = _signatures_in(damaged, data, rec["cut_offset"])
        names = {s.name for s in p.segments}
        for seq, sig in enumerate(p.signatures, 1):
            if sig in tail:
                cut.add(seq)
            elif rec["segment"] in names and p.segment_of(seq).name == rec["segment"] and sig not in head:
                cut.add(seq)
    return frozenset(cut)


# =============================================================================== HTTP


def reader_token(service) -> str:
    """A reader API key for ``service`` (made the way tests/helpers_http.make_keys makes them)."""
    return service.keys.create("damage-reader", "reader")[1]


class _Errors(logging.Handler):
    """Collects error records (with their tracebacks) logged while the server runs."""

    def __init__(self):
        super().__init__(logging.ERROR)
        self.records: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if record.exc_info and record.exc_info[1] is not None:
            text += f" ({_exc(record.exc_info[1])})"
        self.records.append(f"{record.name}: {text}")


async def _http_session(
    d: Path, r: Resolved, four_eyes: bool, only_four_eyes: bool
) -> tuple[list[Answer], Any, list[str], dict]:
    import aiohttp
    from aiohttp import web

    from auditlog.engine.settings import StoreSettings
    from auditlog.query.http.app import create_app
    from auditlog.query.node import NodeConfig, build_node

    dd = DataDir(d)
    problems: list[str] = []
    try:
        service = build_node(NodeConfig(StoreSettings(fsync="none", segment_max_bytes=SEGMENT_MAX)), dd)
    except Exception as e:  # noqa: BLE001
        return [], None, [f"http: the service does not start on this data dir: {_exc(e)}"], {}
    recovery = service.writer.recovery
    answers: list[Answer] = []
    report = None
    runner = web.AppRunner(create_app(service), handle_signals=False)
    try:
        token = reader_token(service)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        base = f"http://127.0.0.1:{port}"
        headers = {"Authorization": f"Bearer {token}"}
        timeout = aiohttp.ClientTimeout(total=60)
        connector = aiohttp.TCPConnector(force_close=True)  # a broken answer spoils no other
        async with aiohttp.ClientSession(base, headers=headers, timeout=timeout, connector=connector) as http:
            if four_eyes or only_four_eyes:
                report = await _four_eyes(http, r, problems)
            if only_four_eyes:
                return answers, report, problems, recovery or {}
            for order in ("asc", "desc"):
                answers.append(await _json_pages(http, r, order))
            answers.append(
                await _stream(
                    http, "/api/v1/audit-log", {**r.params(), "format": "ndjson"}, "http ndjson", rows_from_ndjson
                )
            )
            answers.append(
                await _stream(http, "/api/v1/audit-log", {**r.params(), "format": "ecs"}, "http ecs", rows_from_ecs)
            )
            answers.append(await _stream(http, "/api/v1/audit-log/export.csv", r.params(), "http csv", rows_from_csv))
            answers.append(await _pdf(http, r))
    except Exception as e:  # noqa: BLE001
        problems.append(f"http: {_exc(e)}")
    finally:
        await runner.cleanup()
        service.close()
    return answers, report, problems, recovery or {}


async def _get(http, ans: Answer, path: str, params: dict) -> tuple[bytes | None, Any]:
    """(body, headers) of a 200 answer; None (and ``ans`` failed) for anything else."""
    import aiohttp

    try:
        async with http.get(path, params=params) as resp:
            body = await resp.read()
            if resp.status != 200:
                ans.fail(f"HTTP {resp.status}: {body[:300]!r}")
                return None, None
            return body, resp.headers
    except (TimeoutError, aiohttp.ClientError) as e:
        ans.fail(f"the response broke off: {_exc(e)}")
        return None, None


async def _json_pages(http, r: Resolved, order: str) -> Answer:
    ans = Answer(f"http json (order={order})", order=order)
    params = {**r.params(), "limit": str(PAGE), "order": order}
    for _ in range(200):
        body, _ = await _get(http, ans, "/api/v1/audit-log", params)
        if body is None:
            return ans
        page = json.loads(body)
        events = page["events"]
        n_bad = sum(1 for e in events if e.get("integrity") != "ok")
        if page.get("integrity_violations") != n_bad:
            ans.problems.append(
                f"integrity_violations={page.get('integrity_violations')} on a page with {n_bad} violation events"
            )
        if page.get("integrity_violations"):
            ans.reported = True
        st = page.get("nodes", {}).get(NODE, {})
        if st.get("status") != "ok":
            ans.fail(f"node status {st}")
        ans.rows += events
        if page.get("next_cursor") is None:
            return ans
        params["cursor"] = page["next_cursor"]
    ans.fail("next_cursor never ends (200 pages)")
    return ans


async def _stream(http, path: str, params: dict, what: str, parse) -> Answer:
    ans = Answer(what)
    body, headers = await _get(http, ans, path, params)
    if body is None:
        return ans
    nodes = headers.get("X-Auditlog-Nodes")
    if nodes and json.loads(nodes).get(NODE, {}).get("status") != "ok":
        ans.fail(f"node status {nodes}")
    ans.rows = parse(body.decode("utf-8", "replace"), "body", ans)
    ans.reported = any(row.get("integrity") != "ok" for row in ans.rows)
    return ans


async def _pdf(http, r: Resolved) -> Answer:
    ans = Answer("http pdf", fields=("id", "ts"))
    body, _ = await _get(http, ans, "/api/v1/audit-log/export.pdf", r.params())
    if body is None:
        return ans
    ans.rows, ans.reported = rows_from_pdf(body, "body", ans)
    return ans


async def _four_eyes(http, r: Resolved, problems: list[str]) -> dict | None:
    params = {"from": rfc3339(r.from_us), "to": rfc3339(r.to_us)}
    ans = Answer("http four-eyes")
    body, _ = await _get(http, ans, "/api/v1/reports/four-eyes", params)
    if body is None:
        problems.extend(f"http four-eyes: {x}" for x in ans.problems)
        return None
    rep = json.loads(body)
    st = rep.pop("nodes", {}).get(NODE, {})
    if st.get("status") != "ok":
        problems.append(f"http four-eyes: node status {st}")
    return rep


@dataclass
class HttpRun:
    answers: list[Answer]
    four_eyes: dict | None  # the four-eyes report (without its "nodes"), when asked for
    problems: list[str]  # of the whole run: the service not starting, errors it logged
    cut: frozenset  # pristine seqs its writer cut back when it started


def run_http(
    d: Path, r: Resolved, damaged: Path, p: Pristine, four_eyes: bool = False, only_four_eyes: bool = False
) -> HttpRun:
    """Serve data dir ``d`` (a copy of its own: the service runs a writer) with the real
    node (``query.node.build_node``) and aiohttp app on 127.0.0.1, and read it every way (``four_eyes``: the
    four-eyes report too; ``only_four_eyes``: nothing else)."""
    errors = _Errors()
    root = logging.getLogger()
    root.addHandler(errors)
    try:
        answers, report, problems, recovery = asyncio.run(_http_session(d, r, four_eyes, only_four_eyes))
    finally:
        root.removeHandler(errors)
    cut = writer_cut_seqs([recovery] if recovery else [], damaged, p)
    for a in answers:
        a.cut = cut
    problems += [f"http: logged on the server: {x}" for x in errors.records]
    return HttpRun(answers, report, problems, cut)


# =============================================================================== four-eyes


def pristine_four_eyes(p: Pristine, r: Resolved, cut: frozenset = frozenset()) -> dict | None:
    """The four-eyes report of the undamaged log for this window (the CLI's, cached).

    ``cut``: seqs a writer cut back from the end of the log before the report was
    made; the report is then the one of the pristine log without them (None when
    they are not whole frames at the end of the log: no prediction)."""
    key = (r.from_us, r.to_us, cut)
    if key not in p.four_eyes_cache:
        frame = None
        if cut:
            k = min(cut)
            frame = next((f for f in p.active.frames if f.first_seq == k), None)
            if cut != frozenset(range(k, N_ENTRIES + 1)) or frame is None:
                return None
        # on a copy: a read writes derived files, and the pristine copies must stay as built
        with tempfile.TemporaryDirectory(dir=p.plain.parent) as tmp:
            d = fresh_copy(p.plain, Path(tmp), "log")
            if frame is not None:
                with open(d / "segments" / p.active.name, "r+b") as fh:
                    fh.truncate(frame.offset)
            rep, problems = run_cli_four_eyes(d, r)
        assert rep is not None and not problems, problems
        p.four_eyes_cache[key] = rep
    return p.four_eyes_cache[key]


def four_eyes_oracle(p: Pristine, r: Resolved) -> list[tuple[str, str, bool, list[str]]]:
    """(id, user, ok, confirmed_by) of each rotation in the window, from the plan alone."""
    out = []
    for seq in ROTATIONS:
        if not r.from_us <= p.ts_us[seq - 1] < r.to_us:
            continue
        rid, user = f"{NODE}:{seq}", p.raw[seq - 1]["user"]
        by = []
        for c in CONFIRMATIONS:
            raw = p.raw[c - 1]
            if (
                raw["details"].get("confirms") == rid
                and raw["user"] != user
                and raw["user"] not in by
                and p.ts_us[c - 1] >= r.from_us
            ):
                by.append(raw["user"])
        out.append((rid, user, bool(by), by))
    return out


def check_four_eyes(path: str, rep: dict | None, problems: list[str], pristine: dict | None) -> list[str]:
    """A four-eyes report on the damaged log either equals the pristine one, or says it is
    not ok and lists the violations it met (and then claims nothing the pristine one
    does not).  ``pristine`` None: not predictable (only crashes count)."""
    out = [f"{path}: {x}" for x in problems]
    if rep is None or pristine is None:
        return out
    rep = dict(rep)
    violations = rep.get("violations")
    base = {k: v for k, v in pristine.items() if not (k == "violations" and not v)}
    if violations == [] and "violations" not in base:
        rep.pop("violations")
    if rep == base:
        return out
    listed = (
        isinstance(violations, list)
        and violations
        and all(isinstance(v, dict) and (v.get("kind") or v.get("violation")) for v in violations)
    )
    if rep.get("ok") is not False or not listed:
        diff = _report_diff(rep, base)
        out.append(
            f"{path}: the report differs from the pristine one ({diff}) but does not say it met "
            f"violations (ok={rep.get('ok')!r}, violations={violations!r})"
        )
        return out
    before = {a["id"]: a for a in base.get("rotations", [])}
    for a in rep.get("rotations", []):
        if not a.get("ok"):
            continue
        b = before.get(a.get("id"))
        if (
            b is None
            or not b["ok"]
            or any(a.get(k) != b[k] for k in ("user", "target", "ts"))
            or not set(a.get("confirmed_by", [])) <= set(b["confirmed_by"])
        ):
            out.append(f"{path}: rotation {a.get('id')} reported ok, pristine: {b}")
    return out


def _report_diff(rep: dict, base: dict) -> str:
    parts = []
    for k in sorted(set(rep) | set(base)):
        if k == "rotations":
            ra = {a.get("id"): a for a in rep.get(k, [])}
            rb = {a.get("id"): a for a in base.get(k, [])}
            if ra == rb and rep.get(k) != base.get(k):
                parts.append(f"rotations in another order: {list(ra)} (pristine {list(rb)})")
            for i in sorted(set(ra) | set(rb)):
                if ra.get(i) != rb.get(i):
                    a, b = ra.get(i) or {}, rb.get(i) or {}
                    keys = [x for x in sorted(set(a) | set(b)) if a.get(x) != b.get(x)]
                    parts.append(
                        f"rotation {i}: " + ", ".join(f"{x} {a.get(x)!r} (pristine {b.get(x)!r})" for x in keys)
                    )
        elif rep.get(k) != base.get(k):
            parts.append(f"{k}: {rep.get(k)!r} (pristine {base.get(k)!r})")
    return "; ".join(parts)[:1500]


# =============================================================================== one example

CLI_QUERY_FORMATS = ("json", "ndjson", "csv")
EXPORT_FORMATS = ("csv", "ndjson", "ecs", "pdf")


def fresh_copy(src: Path, base: Path, name: str) -> Path:
    dst = base / name
    shutil.copytree(src, dst)
    return dst


class Example:
    """One damaged log in a temporary directory; the paths each read their own copy."""

    def __init__(self, p: Pristine, damage: tuple, derived: bool, base: Path):
        self.p = p
        self.tmp = tempfile.TemporaryDirectory(dir=base)
        self.root = Path(self.tmp.name)
        self.damaged = self.root / "damaged"
        self.done = damage_copy(p, damage, derived, self.damaged)
        self._n = 0

    def copy(self) -> Path:
        self._n += 1
        return fresh_copy(self.damaged, self.root, f"copy{self._n}")

    def close(self) -> None:
        self.tmp.cleanup()

    def __enter__(self) -> Example:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@contextlib.contextmanager
def unclosed():
    """Collects what the reads left for the garbage collector to clean up with a
    complaint (an unclosed file after a crash, say), so that it counts against the
    test that leaked it and not against whatever test happens to run next.  (Hypothesis
    keeps a failing example's exception, and with it what the crash left open, for a
    while: the complaint may come in a later example of the same test.)"""
    found: list[str] = []
    before = sys.unraisablehook
    sys.unraisablehook = lambda u: found.append(
        f"left behind for the garbage collector (by this example or an earlier one): "
        f"{u.err_msg or 'Exception ignored in'} {u.object!r}: {type(u.exc_value).__name__}: {u.exc_value}"
    )
    try:
        yield found
        gc.collect()
    finally:
        sys.unraisablehook = before


def describe_failure(damage: tuple, derived: bool, done: list[str], r: Resolved, failures: list[str]) -> str:
    lines = [f"derived files before the damage: {'built' if derived else 'none'}", "damage:"]
    lines += [f"  {d!r}: {what}" for d, what in zip(damage, done)]
    lines.append(f"query: {r.describe()}")
    lines.append("failures:")
    lines += [f"  - {f}" for f in failures]
    return "\n".join(lines)
