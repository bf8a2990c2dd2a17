"""A real writer process for the crash, failed-write and lock tests (not a test module).

    crash_writer.py loop DATA_DIR START_N SEGMENT_MAX_BYTES FSYNC SEED [MAX_BATCHES [PAUSE_MS]]
        Open the writer (recovery runs), print ``ready <next_seq>``, then append
        batches of 1-50 events until killed (or MAX_BATCHES is reached: print
        ``done``), pausing PAUSE_MS milliseconds after each.  Before each ``append_batch`` it prints ``try <first_n>
        <last_n>``, after it returns ``ack <first_seq> <last_seq> <first_n>
        <last_n>``; event n carries ``details = expected_details(n)``.

    crash_writer.py fsize DATA_DIR SEGMENT_MAX_BYTES LIMIT SCENARIO
        Run under ``RLIMIT_FSIZE = LIMIT`` with SIGXFSZ ignored, so a write past
        LIMIT fails with EFBIG.  Appends single events until the active segment
        is close to the limit, then one batch that cannot fit (printing
        ``failed <first_n> <last_n> <message>`` and the sizes before and after),
        then single events again until one fails.  SCENARIO ``plain`` fails in
        the active segment; ``roll`` fails in the segment the batch rolled into;
        ``create`` applies LIMIT only for that batch (which fails creating the
        segment it rolls into), then lifts it for three more appends.

Every line is flushed at once: what was printed was acknowledged.

Time is not the system's: each writer process stamps from a frozen clock that
starts a day before the tests' epoch (or just after the log's last entry) and
moves 1 µs per reading, so runs do not depend on the date and a test process
continuing the log (its clock starts at the epoch) never sees time go back.
"""

from __future__ import annotations

import random
import resource
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from auditlog.engine.clock import FrozenClock  # noqa: E402
from auditlog.engine.datadir import DataDir  # noqa: E402
from auditlog.engine.entry import EntryDraft  # noqa: E402
from auditlog.engine.errors import WriteFailedError  # noqa: E402
from auditlog.engine.log import NodeLog  # noqa: E402
from auditlog.engine.segment import list_segments  # noqa: E402
from auditlog.engine.settings import StoreSettings  # noqa: E402
from auditlog.engine.writer import LogWriter  # noqa: E402

#: the tests' epoch (tests/conftest.py TEST_EPOCH_US) less one day
CLOCK_START_US = 1_773_478_800_000_000 - 86_400_000_000


def writer_clock(dd: DataDir, node) -> FrozenClock:
    """A frozen clock for this process: after the log's last entry, 1 µs per reading."""
    _, last_ts = NodeLog(dd, node).head()
    return FrozenClock(max(CLOCK_START_US, (last_ts or 0) + 1), step_us=1)


def expected_details(n: int) -> dict:
    """Deterministic content of event n (the pad makes batches span frames and pages)."""
    return {"n": n, "pad": "x" * (n * 37 % 300)}


def event(n: int, pad: int | None = None) -> EntryDraft:
    d = expected_details(n) if pad is None else {"n": n, "pad": "y" * pad}
    return EntryDraft("crash", "config.filter_update", target=f"t-{n}", details=d)


def say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def loop(
    data_dir: str, start_n: int, seg_max: int, fsync: str, seed: int, max_batches: int | None, pause_ms: float = 0
) -> None:
    dd = DataDir(Path(data_dir))
    node = dd.open()
    rng = random.Random(seed)
    w = LogWriter(dd, node, StoreSettings(segment_max_bytes=seg_max, fsync=fsync), clock=writer_clock(dd, node)).open()
    say(f"ready {w.next_seq}")
    n = start_n
    batches = 0
    while max_batches is None or batches < max_batches:
        k = rng.randint(1, 50)
        say(f"try {n} {n + k - 1}")
        res = w.append_batch([event(i) for i in range(n, n + k)])
        say(f"ack {res.first_seq} {res.last_seq} {n} {n + k - 1}")
        n += k
        batches += 1
        if pause_ms:
            time.sleep(pause_ms / 1000)
    w.close()
    say("done")


def active_size(dd: DataDir) -> int:
    return list_segments(dd.segments)[-1].stat().st_size


def fsize(data_dir: str, seg_max: int, limit: int, scenario: str) -> None:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    if scenario != "create":
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    dd = DataDir(Path(data_dir))
    node = dd.open()
    w = LogWriter(dd, node, StoreSettings(segment_max_bytes=seg_max), clock=writer_clock(dd, node)).open()
    say(f"ready {w.next_seq}")
    n = 0
    # fill the active segment: "plain" to just below the limit (a single event, at
    # most ~600 bytes, still fits after that); "roll" until a 4 KiB frame no longer
    # fits in the segment (LIMIT must leave room for one more single event)
    fill_to = limit - 1200 if scenario == "plain" else seg_max - 4150
    while active_size(dd) < fill_to:
        res = w.append_batch([event(n)])
        say(f"ack {res.first_seq} {res.last_seq} {n} {n}")
        n += 1
    before = active_size(dd)
    segs_before = len(list_segments(dd.segments))
    if scenario == "create":
        # no file may grow past LIMIT (< a segment header): the batch rolls, and
        # creating the new segment fails
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    if scenario == "plain":
        batch = [event(i) for i in range(n, n + 30)]
    else:
        # the first frame does not fit in the active segment: the batch rolls to a
        # new segment, and the write fails there
        batch = [event(n, pad=4000)] + [event(i) for i in range(n + 1, n + 60)]
    try:
        res = w.append_batch(batch)
        say(f"ack {res.first_seq} {res.last_seq} {n} {n + len(batch) - 1}")
    except WriteFailedError as e:
        say(f"failed {n} {n + len(batch) - 1} {e}")
    say(f"sizes {before} {active_size(dd)} segments {segs_before} {len(list_segments(dd.segments))}")
    n += len(batch)
    if scenario == "create":
        # lift the limit again: the same writer object carries on
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        for _ in range(3):
            res = w.append_batch([event(n)])
            say(f"ack {res.first_seq} {res.last_seq} {n} {n}")
            n += 1
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    # the writer keeps working for what still fits
    while True:
        try:
            res = w.append_batch([event(n)])
        except WriteFailedError as e:
            say(f"failed {n} {n} {e}")
            break
        say(f"ack {res.first_seq} {res.last_seq} {n} {n}")
        n += 1
    w.close()
    say("done")


def main(argv: list[str]) -> None:
    mode = argv[1]
    if mode == "loop":
        loop(
            argv[2],
            int(argv[3]),
            int(argv[4]),
            argv[5],
            int(argv[6]),
            int(argv[7]) if len(argv) > 7 else None,
            float(argv[8]) if len(argv) > 8 else 0,
        )
    elif mode == "fsize":
        fsize(argv[2], int(argv[3]), int(argv[4]), argv[5])
    else:
        raise SystemExit(f"unknown mode {mode}")


if __name__ == "__main__":
    main(sys.argv)
