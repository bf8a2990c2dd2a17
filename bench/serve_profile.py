"""``python -m bench.serve_profile OUT AUDITLOG-ARGS...``: ``auditlog`` under cProfile.

For ``auditlog bench`` only (``AUDITLOG_BENCH_PROFILE=DIR``, see
:mod:`bench.servers`).  cProfile sees one thread, so every thread started in
the process (the service's executor, the writer) gets its own profiler; at exit
(SIGTERM -> clean shutdown) all are merged into ``OUT.pstats`` and the top of
the cumulative and self-time listings goes to ``OUT.txt``.  Times are per-thread
CPU seconds (``time.thread_time``), so GIL and lock waits do not count.
"""

from __future__ import annotations

import cProfile
import io
import pstats
import sys
import threading
import time

_profiles: list[cProfile.Profile] = []
_lock = threading.Lock()
_orig_run = threading.Thread.run


def _new_profile() -> cProfile.Profile:
    # per-thread CPU time: with the default wall clock, a thread waiting for the GIL
    # charges that wait to whatever C call it was in (hashlib's update, a socket send)
    return cProfile.Profile(time.thread_time)


def _profiled_run(self) -> None:
    p = _new_profile()
    with _lock:
        _profiles.append(p)
    p.enable()
    try:
        _orig_run(self)
    finally:
        p.disable()


def main(argv: list[str]) -> int:
    out, args = argv[0], argv[1:]
    threading.Thread.run = _profiled_run
    main_prof = _new_profile()
    sys.argv = ["auditlog", *args]
    from auditlog.cli.main import main as auditlog_main

    code = 0
    main_prof.enable()
    try:
        auditlog_main()
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:
        main_prof.disable()
        with _lock:
            profs = list(_profiles)
        stats = pstats.Stats(main_prof)
        for p in profs:
            try:
                stats.add(p)
            except (TypeError, ValueError):  # a thread still running: its profile is partial
                pass
        stats.dump_stats(out + ".pstats")
        buf = io.StringIO()
        s = pstats.Stats(out + ".pstats", stream=buf)
        s.sort_stats("tottime").print_stats(40)
        s.sort_stats("cumulative").print_stats(60)
        with open(out + ".txt", "w") as f:
            f.write(buf.getvalue())
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
