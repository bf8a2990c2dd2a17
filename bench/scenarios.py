"""Benchmark scenarios, the synthetic data they run on, and the job entry point.

Every measurement runs as a *job* in a fresh interpreter
(``python -m bench.scenarios JOB_JSON RESULT_FILE``, started by
:mod:`bench.runner`), so the peak RSS a job reports
(``resource.getrusage(RUSAGE_SELF).ru_maxrss``) belongs to that one scenario and
one engine: ours and the SQLite baseline are always measured in separate jobs.

Data: :class:`EventGenerator` makes realistic events from a seeded
``random.Random`` (about 1000 users with a skewed activity, about 20 000 IPs,
IPv4 and some IPv6, each user mostly seen from a few "home" addresses, the
action taxonomy mix of a mail-security gateway, details of a few fields).
The same seed gives the same events, batch for batch, to both engines.

The read scenarios share one data set per size, built once (``fsync="none"``
for our log and ``synchronous=OFF`` for SQLite: that is data preparation, not
a measurement) and cached in ``/tmp/auditlog-bench-cache-<params hash>``.
"""

from __future__ import annotations

import bisect
import ipaddress
import itertools
import json
import os
import random
import resource
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from auditlog.engine.entry import EntryDraft, sort_details

#: Bump when the generator's output changes: it is part of the cache key.
GEN_VERSION = 2
SEED = 20260314
NODE_ID = "bench-node"
BUILD_BATCH = 1000
N_USERS = 1000
N_IPS = 20000

#: What an API-key client's events are: a client cannot write ``auth.api_key_used``
#: (the node records key use itself), so this stands in for it, with the same share
#: and details.
API_KEY_ACTION = "custom.api_request"

#: The action mix (weights in per mille).  auth.login 40 %, auth.login_failed 15 %.
#: Only actions a client may send (ingest refuses the node's own, see ingest.taxonomy).
ACTION_MIX: tuple[tuple[str, int], ...] = (
    ("auth.login", 400),
    ("auth.login_failed", 150),
    ("auth.logout", 90),
    (API_KEY_ACTION, 60),
    ("auth.totp_setup", 4),
    ("auth.totp_reset", 2),
    ("quarantine.release", 80),
    ("quarantine.discard", 50),
    ("quarantine.train_spam", 20),
    ("quarantine.train_ham", 10),
    ("config.filter_update", 20),
    ("config.filter_create", 8),
    ("config.filter_delete", 3),
    ("config.domain_add", 3),
    ("config.domain_remove", 1),
    ("config.rbl_enable", 2),
    ("config.rbl_disable", 1),
    ("config.dmarc_policy_change", 3),
    ("config.dkim_rotate", 2),
    ("config.dkim_rotate_confirm", 2),
    ("user.create", 5),
    ("user.update", 12),
    ("user.role_change", 4),
    ("user.password_reset", 8),
    ("user.delete", 2),
    ("security.rate_limit_hit", 40),
    ("security.brute_force_detected", 6),
    ("security.session_hijack_detected", 1),
    ("licence.activate", 1),
    ("backup.trigger", 3),
    ("licence.renew", 1),
    ("restore.execute", 1),
)

_FIRST = (
    "anna",
    "ben",
    "carla",
    "dev",
    "emma",
    "farid",
    "greta",
    "hugo",
    "ines",
    "jonas",
    "kim",
    "lena",
    "mehmet",
    "nora",
    "omar",
    "petra",
    "quentin",
    "rosa",
    "sven",
    "tara",
)
_LAST = (
    "adler",
    "berg",
    "costa",
    "dietz",
    "egger",
    "fuchs",
    "graf",
    "hahn",
    "iwan",
    "jung",
    "keller",
    "lang",
    "meyer",
    "novak",
    "otto",
    "peters",
    "richter",
    "schulz",
    "vogel",
    "wolf",
)
_BROWSERS = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_4) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/17.4 Safari/605.1.15",
    "Mozilla/5.0 (X11; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:124.0) Gecko/20100101 Firefox/124.0",
)
_API_AGENTS = ("python-requests/2.31.0", "curl/8.5.0", "splunk-addon/3.2")
_SUBJECTS = (
    "Invoice {n}",
    "Your parcel {n} is waiting",
    "Meeting notes week {n}",
    "RE: order #{n}",
    "Password expiry notice",
    "Quarterly report Q{q}",
    "Payment confirmation {n}",
    "Ihre Bestellung {n}",
)
_FILTER_NEW = ("block", "quarantine", "tag", "allow")


class EventGenerator:
    """Deterministic synthetic events (as pre-validated ``EntryDraft`` values)."""

    def __init__(self, seed: int = SEED, n_users: int = N_USERS, n_ips: int = N_IPS):
        r = random.Random(seed)
        self._r = r
        users: list[str] = []
        seen: set[str] = set()
        n_api = max(1, n_users // 50)
        for _ in range(n_users - n_api - 1):
            name = f"{r.choice(_FIRST)}.{r.choice(_LAST)}"
            while name in seen:
                name = f"{r.choice(_FIRST)}.{r.choice(_LAST)}{r.randrange(10, 1000)}"
            seen.add(name)
            users.append(name)
        users.insert(3, "system")
        for i in range(n_api):
            users.insert(1 + 7 * i, f"apikey:siem-{i:02d}")
        #: users in activity rank order (rank 0 is the busiest)
        self.users = users
        # Zipf-like activity (s = 0.9): a few admins and API keys do most of the work.
        cw = list(itertools.accumulate(1.0 / (i + 1) ** 0.9 for i in range(len(users))))
        self._user_cw = cw
        self._user_total = cw[-1]

        ips: list[str] = []
        seen_ip: set[str] = set()
        while len(ips) < n_ips:
            if r.random() < 0.12:
                a = ipaddress.IPv6Address((0x20010DB8 << 96) | (r.getrandbits(16) << 64) | r.getrandbits(64))
            else:
                a = ipaddress.IPv4Address(r.randrange(0x01000000, 0xDF000000))
            s = str(a)  # ipaddress's normal form, as ingest stores it
            if s not in seen_ip:
                seen_ip.add(s)
                ips.append(s)
        self.ips = ips
        #: each user's "home" addresses (office, VPN, home, phone)
        self.user_ips = [[ips[r.randrange(n_ips)] for _ in range(r.randint(1, 8))] for _ in users]
        self._user_agent = [
            (r.choice(_API_AGENTS) if u.startswith("apikey:") else None if u == "system" else r.choice(_BROWSERS))
            for u in users
        ]
        self.domains = [f"{r.choice(('mail', 'corp', 'shop', 'news', 'bank'))}{i}.example" for i in range(150)]
        acw = list(itertools.accumulate(w for _, w in ACTION_MIX))
        self._actions = [a for a, _ in ACTION_MIX]
        self._action_cw = acw
        self._action_total = acw[-1]
        #: the selective query's (user, ip): a median-activity user and its first home IP
        rank = len(users) // 2
        self.query_user = users[rank]
        self.query_ip = self.user_ips[rank][0]
        self.matches = 0  # events generated so far that the selective query finds

    def draft(self) -> EntryDraft:
        r = self._r
        rnd = r.random
        u = bisect.bisect_left(self._user_cw, rnd() * self._user_total)
        if u >= len(self.users):
            u = len(self.users) - 1
        a = self._actions[bisect.bisect_left(self._action_cw, rnd() * self._action_total)]
        user = self.users[u]
        if user.startswith("apikey:"):
            a = API_KEY_ACTION  # API keys do nothing else
        elif a == API_KEY_ACTION:
            a = "auth.login"
        homes = self.user_ips[u]
        if a == "auth.login_failed" and rnd() < 0.6:
            ip = self.ips[r.randrange(len(self.ips))]  # password spraying from anywhere
        elif rnd() < 0.92:
            ip = homes[r.randrange(len(homes))]
        else:
            ip = self.ips[r.randrange(len(self.ips))]
        ua = self._user_agent[u]
        success = True
        target = domain = None
        family = a.split(".", 1)[0]
        if a == API_KEY_ACTION:
            details = {
                "endpoint": ("/api/v1/events", "/api/v1/export", "/api/v1/cluster")[r.randrange(3)],
                "key_id": f"k{u:04d}",
            }
        elif family == "auth":
            if a == "auth.login_failed":
                success = False
                details = {"reason": ("bad_password", "unknown_user", "totp_invalid", "locked")[r.randrange(4)]}
            else:
                details = {
                    "method": ("password", "totp", "sso")[r.randrange(3)],
                    "session": f"{r.getrandbits(64):016x}",
                }
        elif family == "quarantine":
            domain = self.domains[r.randrange(len(self.domains))]
            mail_id = f"{r.getrandbits(64):016X}"
            target = mail_id
            subj = _SUBJECTS[r.randrange(len(_SUBJECTS))].format(n=r.randrange(100000), q=1 + r.randrange(4))
            details = {
                "mail_id": mail_id,
                "recipient": f"u{r.randrange(20000)}@{domain}",
                "sender": f"news{r.randrange(5000)}@sender{r.randrange(400)}.example",
                "subject": subj,
            }
        elif family == "config":
            if "domain" in a or "dkim" in a or "dmarc" in a:
                domain = self.domains[r.randrange(len(self.domains))]
                target = domain
            else:
                target = f"filter-{r.randrange(2000)}"
            if a == "config.dkim_rotate_confirm":
                details = {"confirms": f"{NODE_ID}:{1 + r.randrange(1_000_000)}"}
            else:
                details = {"new": _FILTER_NEW[r.randrange(4)], "old": _FILTER_NEW[r.randrange(4)]}
        elif family == "user":
            target = self.users[r.randrange(len(self.users))]
            details = {"new": "admin", "old": "operator"} if a == "user.role_change" else {}
        elif family == "security":
            details = {"attempts": 5 + r.randrange(200), "window_s": 60}
            user = "system"
            ua = None
        else:
            details = {"job": f"job-{r.randrange(10000)}"}
        if user == self.query_user and ip == self.query_ip:
            self.matches += 1
        # what ingest's validation hands the writer: details in canonical (sorted) form
        return EntryDraft(user, a, target, domain, ip, ua, success, sort_details(details) if details else details)

    def batch(self, n: int) -> list[EntryDraft]:
        d = self.draft
        return [d() for _ in range(n)]


def draft_to_event(d: EntryDraft) -> dict:
    """The wire form of a draft (what a client would send)."""
    return {
        "user": d.user,
        "action": d.action,
        "target": d.target,
        "domain": d.domain,
        "ip": d.ip,
        "user_agent": d.user_agent,
        "success": d.success,
        "details": d.details,
    }


def validated(drafts: list[EntryDraft]) -> list[EntryDraft]:
    """Run the drafts through ingest validation (as the write path would), in ≤ max_batch chunks."""
    from auditlog.ingest.event import validate_batch

    out: list[EntryDraft] = []
    for i in range(0, len(drafts), 5000):
        out.extend(validate_batch([draft_to_event(d) for d in drafts[i : i + 5000]]))
    if out != drafts:
        raise AssertionError("bench generator produced events that ingest normalises differently")
    return out


# --------------------------------------------------------------------------- helpers


def on_terminal() -> bool:
    return sys.stderr.isatty()


class Progress:
    """Progress of a long step: a line on stderr when it is a terminal, or, with
    ``path``, "done total" written to that file for the runner to show (used when
    two jobs run side by side)."""

    def __init__(self, label: str, total: int, path: str | None = None):
        self.label, self.total, self.path = label, total, path
        self.on = path is not None or on_terminal()
        self.t0 = time.perf_counter()
        self._last = 0.0

    def update(self, done: int) -> None:
        if not self.on:
            return
        now = time.perf_counter()
        if now - self._last < 0.5 and done < self.total:
            return
        self._last = now
        if self.path is not None:
            tmp = self.path + ".tmp"
            with open(tmp, "w") as f:
                f.write(f"{done} {self.total}")
            os.replace(tmp, self.path)
            return
        pct = 100.0 * done / self.total if self.total else 100.0
        sys.stderr.write(f"\r  {self.label}: {done:,}/{self.total:,} ({pct:4.1f} %, {now - self.t0:5.1f} s)\x1b[K")
        sys.stderr.flush()

    def done(self) -> None:
        if self.on and self.path is None:
            sys.stderr.write("\r\x1b[K")
            sys.stderr.flush()


def peak_rss_mb() -> float:
    """Peak resident set of this process, MB (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def rss_anon_mb() -> float:
    """Current anonymous (heap) resident memory, MB; mmap'd file pages excluded."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return 0.0


def median(xs: list[float]) -> float:
    return float(statistics.median(xs))


class Clock:
    """Wall time and this process's CPU time (all threads) of one timed step.

    Wall time is what the results report; CPU time is given beside it because
    on a shared, busy machine it is the steadier of the two (it leaves out the
    time other processes had the CPU, and time spent waiting for fsync).
    """

    __slots__ = ("w0", "c0", "wall", "cpu")

    def __enter__(self) -> Clock:
        self.w0, self.c0 = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc) -> None:
        self.wall = time.perf_counter() - self.w0
        self.cpu = max(time.process_time() - self.c0, 1e-9)


def _open_log(data_dir: str):
    from auditlog.engine.datadir import DataDir
    from auditlog.engine.log import NodeLog

    dd = DataDir(Path(data_dir))
    node = dd.open()
    return dd, node, NodeLog(dd, node)


def _meta(cache_dir: str) -> dict:
    return json.loads((Path(cache_dir) / "meta.json").read_text())


def _batch_range(meta: dict, first_batch: int, n_batches: int, key: str) -> tuple[int, int, int]:
    """(from_us, to_us, expected entries) for batches [first_batch, first_batch + n_batches)."""
    ts = meta[key]
    last = first_batch + n_batches
    to_us = ts[last] if last < len(ts) else ts[-1] + 1
    return ts[first_batch], to_us, n_batches * meta["batch"]


def scan_slice(meta: dict) -> tuple[int, int]:
    """The middle slice the ``scan`` scenario reads: (first batch, batch count)."""
    nb = len(meta["log_batch_ts"])
    want = max(1, min(nb // 2, 2_000_000 // meta["batch"]))
    return (nb - want) // 2, want


def csv_slice(meta: dict, rows: int = 200_000) -> tuple[int, int]:
    nb = len(meta["log_batch_ts"])
    want = max(1, min(nb, rows // meta["batch"]))
    return (nb - want) // 2, want


# --------------------------------------------------------------------------- data builds


def job_build_log(cache_dir: str, n: int, seed: int, batch: int, progress_file: str | None = None) -> dict:
    """Write the shared read-scenario log (fsync="none": data preparation, not measured)."""
    from auditlog.engine.datadir import DataDir
    from auditlog.engine.settings import StoreSettings
    from auditlog.engine.writer import LogWriter

    root = Path(cache_dir) / "log"
    if root.exists():
        shutil.rmtree(root)
    dd = DataDir(root)
    node = dd.init(NODE_ID)
    gen = EventGenerator(seed)
    validated(gen.batch(min(n, 5000)))  # the generator's events pass ingest validation
    gen = EventGenerator(seed)
    batch_ts: list[int] = []
    prog = Progress("building our log (fsync=none)", n, progress_file)
    t0 = time.perf_counter()
    with LogWriter(dd, node, StoreSettings(fsync="none")) as w:
        done = 0
        while done < n:
            k = min(batch, n - done)
            res = w.append_batch(gen.batch(k), canonical=True)
            batch_ts.append(res.ts)
            done += k
            prog.update(done)
    prog.done()
    size = sum(p.stat().st_size for p in dd.segments.iterdir())
    return {
        "batch_ts": batch_ts,
        "matches": gen.matches,
        "query_user": gen.query_user,
        "query_ip": gen.query_ip,
        "seconds": time.perf_counter() - t0,
        "bytes": size,
    }


def job_build_sqlite(cache_dir: str, n: int, seed: int, batch: int, progress_file: str | None = None) -> dict:
    from auditlog.bench.baseline_sqlite import SqliteBaseline

    path = Path(cache_dir) / "baseline.sqlite"
    for suffix in ("", "-wal", "-shm"):
        p = Path(str(path) + suffix)
        if p.exists():
            p.unlink()
    gen = EventGenerator(seed)
    prog = Progress("building the SQLite baseline (synchronous=OFF)", n, progress_file)
    t0 = time.perf_counter()
    db = SqliteBaseline(str(path), NODE_ID, _bench_key(), synchronous="OFF")
    batch_ts: list[int] = []
    done = 0
    while done < n:
        k = min(batch, n - done)
        batch_ts.append(db.append_batch(gen.batch(k)))
        done += k
        prog.update(done)
    prog.done()
    db.create_query_indexes()
    db.close()
    size = sum(Path(str(path) + s).stat().st_size for s in ("", "-wal") if Path(str(path) + s).exists())
    return {"batch_ts": batch_ts, "matches": gen.matches, "seconds": time.perf_counter() - t0, "bytes": size}


def _bench_key():
    """A fixed key for the SQLite baseline's chain (the cost is the same for any key)."""
    from auditlog.engine.chain import NodeKey

    return NodeKey(bytes(range(32)))


# --------------------------------------------------------------------------- append


def _append_data(events: int, batch: int, seed: int) -> list[list[EntryDraft]]:
    gen = EventGenerator(seed + 1)
    drafts = validated(gen.batch(events))  # pre-validated, outside the timing
    return [drafts[i : i + batch] for i in range(0, len(drafts), batch)]


def job_append(events: int, batch: int, threads: int, reps: int, seed: int, workdir: str) -> dict:
    """Durable appends (fsync="always") on a fresh data dir per run, through append_batch."""
    from auditlog.engine.datadir import DataDir
    from auditlog.engine.settings import StoreSettings
    from auditlog.engine.writer import LogWriter

    batches = _append_data(events, batch, seed)
    runs: list[float] = []
    cpu_runs: list[float] = []
    fsyncs: list[int] = []
    for _ in range(reps):
        d = Path(tempfile.mkdtemp(prefix="append-", dir=workdir))
        try:
            dd = DataDir(d / "data")
            node = dd.init(NODE_ID)
            w = LogWriter(dd, node, StoreSettings(fsync="always")).open()
            commits = [0]

            def on_commit(n, dt, c=commits):
                c[0] += 1

            w.on_commit = on_commit
            with Clock() as c:
                _drive(lambda b: w.append_batch(b, canonical=True), batches, threads)  # noqa: B023 (called now, in this round)
            w.close()
            runs.append(events / c.wall)
            cpu_runs.append(events / c.cpu)
            fsyncs.append(commits[0])
        finally:
            shutil.rmtree(d, ignore_errors=True)
    return {"value": median(runs), "runs": runs, "commits": fsyncs, "cpu_value": median(cpu_runs)}


def _drive(append: Callable[[list], Any], batches: list, threads: int) -> float:
    """Append every batch, from ``threads`` threads (round-robin split); wall seconds."""
    if threads <= 1:
        t0 = time.perf_counter()
        for b in batches:
            append(b)
        return time.perf_counter() - t0
    shares = [batches[i::threads] for i in range(threads)]
    barrier = threading.Barrier(threads + 1)
    errors: list[BaseException] = []

    def work(share):
        barrier.wait()
        try:
            for b in share:
                append(b)
        except BaseException as e:  # reported below
            errors.append(e)

    ts = [threading.Thread(target=work, args=(s,)) for s in shares]
    for t in ts:
        t.start()
    barrier.wait()
    t0 = time.perf_counter()
    for t in ts:
        t.join()
    elapsed = time.perf_counter() - t0
    if errors:
        raise errors[0]
    return elapsed


# --------------------------------------------------------------------------- reads


def job_scan(cache_dir: str, reps: int) -> dict:
    """Verified time-range scan of the middle slice via NodeLog.scan(from_us, to_us)."""
    meta = _meta(cache_dir)
    first, nb = scan_slice(meta)
    lo, hi, expected = _batch_range(meta, first, nb, "log_batch_ts")
    _, _, log = _open_log(str(Path(cache_dir) / "log"))
    # Open the segments once (sidecar indexes, the active segment's index), untimed.
    for _ in log.scan(lo, lo + 1):
        pass
    runs, cpu_runs, count, bad = [], [], 0, 0
    prog = Progress("scan", reps * expected)
    for rep in range(reps):
        n = 0
        with Clock() as c:
            for _e in log.scan(lo, hi):
                n += 1
        runs.append(n / c.wall)
        cpu_runs.append(n / c.cpu)
        count = n
        prog.update((rep + 1) * expected)
    prog.done()
    for e in log.scan(lo, hi):
        if e.integrity != "ok":
            bad += 1
    return {
        "value": median(runs),
        "runs": runs,
        "count": count,
        "expected": expected,
        "violations": bad,
        "cpu_value": median(cpu_runs),
    }


def job_selective(cache_dir: str, cold_reps: int, warm_reps: int) -> dict:
    """One user + one IP over the whole log via scan_node(Filter(users=, ips=))."""
    from auditlog.query.filters import Filter
    from auditlog.query.scan import scan_node

    meta = _meta(cache_dir)
    flt = Filter(users=(meta["query_user"],), ips=(meta["query_ip"],))
    root = str(Path(cache_dir) / "log")
    cold, warm, cold_cpu, warm_cpu = [], [], [], []
    count = 0
    log = None
    for _ in range(cold_reps):
        _, _, log = _open_log(root)  # a fresh NodeLog: nothing cached in-process
        with Clock() as c:
            rows = list(scan_node(log, flt))
        cold.append(c.wall)
        cold_cpu.append(c.cpu)
        count = len(rows)
    for _ in range(warm_reps):
        with Clock() as c:
            rows = list(scan_node(log, flt))
        warm.append(c.wall)
        warm_cpu.append(c.cpu)
        count = len(rows)
    frames, decoded, total = _selective_read_stats(log, flt.index_terms())
    return {
        "cold": median(cold),
        "warm": median(warm),
        "cold_runs": cold,
        "warm_runs": warm,
        "cold_cpu": median(cold_cpu),
        "warm_cpu": median(warm_cpu),
        "count": count,
        "expected": meta["matches"],
        "violations": sum(1 for e in rows if e.integrity != "ok"),
        "frames_read": frames,
        "frames_total": total,
        "entries_decoded": decoded,
    }


def _selective_read_stats(log, terms) -> tuple[int | None, int | None, int | None]:
    """What the term index makes the selective scan read (untimed): (frames read,
    entries decoded, frames in the log).  The engine's index API moves; when it is
    not one this knows, the counts are None rather than a failed scenario."""
    try:
        from auditlog.engine.segment import SegmentData

        frames = decoded = total = 0
        infos = log.segment_infos()
        for info in infos:
            idx = info.index
            if idx is None:
                continue
            n = len(idx.frames)
            total += n
            if hasattr(idx, "frames_matching"):  # term postings in the .idx (v1)
                hits = idx.frames_matching(terms)
            else:  # postings in engine.terms (v2)
                with SegmentData(info.path) as sd:
                    found = log.postings.hits(info, sd.data, terms, n, info is not infos[-1])
                hits = found[0] if found is not None else None
            if isinstance(hits, list):  # point reads of single entries (seqs)
                frames += len({idx.frame_of_seq(h if isinstance(h, int) else h[0]) for h in hits})
                decoded += len(hits)
                continue
            for o in range(n) if hits is None else hits:
                frames += 1
                decoded += idx.frames[o].count
        return frames, decoded, total
    except Exception:  # noqa: BLE001 - statistics only
        return None, None, None


class _Counted:
    def __init__(self, it: Iterator):
        self.it, self.n = it, 0

    def __iter__(self):
        for x in self.it:
            self.n += 1
            yield x


def job_csv(cache_dir: str, reps: int, rows: int) -> dict:
    """iter_csv over scan_node of a ~200k-entry range, UTF-8 encoded into /dev/null."""
    from auditlog.export.csv import iter_csv
    from auditlog.query.filters import Filter
    from auditlog.query.scan import scan_node

    meta = _meta(cache_dir)
    first, nb = csv_slice(meta, rows)
    lo, hi, expected = _batch_range(meta, first, nb, "log_batch_ts")
    _, _, log = _open_log(str(Path(cache_dir) / "log"))
    for _ in log.scan(lo, lo + 1):
        pass
    flt = Filter(from_us=lo, to_us=hi)
    runs, cpu_runs, count, nbytes = [], [], 0, 0
    with open(os.devnull, "wb") as out:
        for _ in range(reps):
            src = _Counted(scan_node(log, flt))
            nbytes = 0
            with Clock() as c:
                for chunk in iter_csv(src):
                    b = chunk.encode("utf-8")
                    nbytes += len(b)
                    out.write(b)
            runs.append(src.n / c.wall)
            cpu_runs.append(src.n / c.cpu)
            count = src.n
    return {
        "value": median(runs),
        "runs": runs,
        "count": count,
        "expected": expected,
        "bytes": nbytes,
        "cpu_value": median(cpu_runs),
    }


def job_scan_rss(cache_dir: str, which: str) -> dict:
    """Scan a small range or the whole log, sampling heap RSS: memory must stay flat."""
    meta = _meta(cache_dir)
    nb = len(meta["log_batch_ts"])
    if which == "small":
        k = max(1, min(nb, 10_000 // meta["batch"]))
        lo, hi, expected = _batch_range(meta, (nb - k) // 2, k, "log_batch_ts")
    else:
        lo, hi, expected = None, None, meta["n"]
    base_anon = rss_anon_mb()
    _, _, log = _open_log(str(Path(cache_dir) / "log"))
    log.segment_infos()  # what opening the log costs in memory (indexes)
    open_anon = rss_anon_mb()
    peak_anon = open_anon
    prog = Progress(f"scan_rss ({which} range)", expected)
    n = 0
    t0 = time.perf_counter()
    for _e in log.scan(lo, hi):
        n += 1
        if not n & 0xFFFF:
            peak_anon = max(peak_anon, rss_anon_mb())
            prog.update(n)
    dt = time.perf_counter() - t0
    prog.done()
    peak_anon = max(peak_anon, rss_anon_mb())
    return {
        "count": n,
        "seconds": dt,
        "peak_anon_mb": peak_anon,
        "base_anon_mb": base_anon,
        "index_anon_mb": open_anon - base_anon,
    }


# --------------------------------------------------------------------------- SQLite jobs


def job_sqlite_append(events: int, batch: int, threads: int, reps: int, seed: int, workdir: str) -> dict:
    from auditlog.bench.baseline_sqlite import SqliteBaseline

    batches = _append_data(events, batch, seed)
    runs, cpu_runs = [], []
    for _ in range(reps):
        d = Path(tempfile.mkdtemp(prefix="sqlite-append-", dir=workdir))
        try:
            db = SqliteBaseline(
                str(d / "baseline.sqlite"), NODE_ID, _bench_key(), synchronous="FULL", threadsafe=threads > 1
            )
            with Clock() as c:
                _drive(db.append_batch, batches, threads)
            db.close()
            runs.append(events / c.wall)
            cpu_runs.append(events / c.cpu)
        finally:
            shutil.rmtree(d, ignore_errors=True)
    return {"value": median(runs), "runs": runs, "cpu_value": median(cpu_runs)}


def job_sqlite_scan(cache_dir: str, reps: int) -> dict:
    from auditlog.bench.baseline_sqlite import SqliteBaseline

    meta = _meta(cache_dir)
    first, nb = scan_slice(meta)
    lo, hi, expected = _batch_range(meta, first, nb, "sqlite_batch_ts")
    db = SqliteBaseline.open_existing(str(Path(cache_dir) / "baseline.sqlite"), NODE_ID, _bench_key())
    runs, cpu_runs, count = [], [], 0
    for _ in range(reps):
        with Clock() as c:
            count = db.scan_count(lo, hi)
        runs.append(count / c.wall)
        cpu_runs.append(count / c.cpu)
    # Extra, once: the same range with the per-row HMAC chain re-verified in Python.
    t0 = time.perf_counter()
    vcount, vbad = db.scan_verify(lo, hi)
    verified = vcount / (time.perf_counter() - t0)
    db.close()
    return {
        "value": median(runs),
        "runs": runs,
        "count": count,
        "expected": expected,
        "verified_value": verified,
        "verified_bad": vbad,
        "cpu_value": median(cpu_runs),
    }


def job_sqlite_selective(cache_dir: str, cold_reps: int, warm_reps: int) -> dict:
    from auditlog.bench.baseline_sqlite import SqliteBaseline

    meta = _meta(cache_dir)
    path = str(Path(cache_dir) / "baseline.sqlite")
    cold, warm, cold_cpu, warm_cpu, count = [], [], [], [], 0
    db = None
    for _ in range(cold_reps):
        if db is not None:
            db.close()
        db = SqliteBaseline.open_existing(path, NODE_ID, _bench_key())
        with Clock() as c:
            count = len(db.selective(meta["query_user"], meta["query_ip"]))
        cold.append(c.wall)
        cold_cpu.append(c.cpu)
    for _ in range(warm_reps):
        with Clock() as c:
            count = len(db.selective(meta["query_user"], meta["query_ip"]))
        warm.append(c.wall)
        warm_cpu.append(c.cpu)
    plan = db.selective_plan(meta["query_user"], meta["query_ip"])
    db.close()
    return {
        "cold": median(cold),
        "warm": median(warm),
        "count": count,
        "plan": plan,
        "cold_cpu": median(cold_cpu),
        "warm_cpu": median(warm_cpu),
    }


def job_sqlite_csv(cache_dir: str, reps: int, rows: int) -> dict:
    from auditlog.bench.baseline_sqlite import SqliteBaseline

    meta = _meta(cache_dir)
    first, nb = csv_slice(meta, rows)
    lo, hi, expected = _batch_range(meta, first, nb, "sqlite_batch_ts")
    db = SqliteBaseline.open_existing(str(Path(cache_dir) / "baseline.sqlite"), NODE_ID, _bench_key())
    runs, cpu_runs, count = [], [], 0
    for _ in range(reps):
        with Clock() as c:
            count = db.export_csv(lo, hi, os.devnull)
        runs.append(count / c.wall)
        cpu_runs.append(count / c.cpu)
    db.close()
    return {"value": median(runs), "runs": runs, "count": count, "cpu_value": median(cpu_runs)}


# --------------------------------------------------------------------------- HTTP (real server)


def _pct(xs: list[float], q: float) -> float:
    """The q-quantile (0..1) of xs, nearest rank."""
    s = sorted(xs)
    if not s:
        return float("nan")
    k = min(len(s) - 1, max(0, int(round(q * len(s) + 0.5)) - 1))
    return s[k]


def _encode_bodies(batches: list[list[EntryDraft]], fmt: str) -> list[bytes]:
    import msgpack

    if fmt == "msgpack":
        pack = msgpack.Packer(use_bin_type=True).pack
        return [pack([draft_to_event(d) for d in b]) for b in batches]
    dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
    return [dumps([draft_to_event(d) for d in b]).encode("utf-8") for b in batches]


_CTYPE = {"json": "application/json", "msgpack": "application/msgpack"}


async def _warm_connections(session, base: str, conns: int) -> None:
    """Open ``conns`` keep-alive connections (concurrent GET /healthz), untimed."""
    import asyncio

    async def one():
        async with session.get(base + "/healthz") as r:
            await r.read()

    await asyncio.gather(*(one() for _ in range(conns)))


async def _post_all(base: str, token: str, bodies: list[bytes], ctype: str, conns: int, srv) -> dict:
    import asyncio

    import aiohttp

    headers = {"Authorization": f"Bearer {token}", "Content-Type": ctype}
    url = base + "/api/v1/events"
    state = {"next": 0, "appended": 0}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=conns)) as s:
        await _warm_connections(s, base, conns)

        async def worker():
            while state["next"] < len(bodies):
                i = state["next"]
                state["next"] += 1
                async with s.post(url, data=bodies[i], headers=headers) as r:
                    raw = await r.read()
                    if r.status != 201:
                        raise RuntimeError(f"POST /api/v1/events: HTTP {r.status}: {raw[:300]!r}")
                    state["appended"] += json.loads(raw)["appended"]

        cpu0 = srv.cpu_seconds()
        with Clock() as c:
            await asyncio.gather(*(worker() for _ in range(conns)))
        cpu1 = srv.cpu_seconds()
    return {"wall": c.wall, "client_cpu": c.cpu, "server_cpu": cpu1 - cpu0, "appended": state["appended"]}


def job_http_ingest(events: int, batch: int, conns: int, reps: int, seed: int, workdir: str, fmt: str = "json") -> dict:
    """POST pre-built batches to a real ``auditlog serve`` (fsync="always", fresh data dir
    per run) over ``conns`` keep-alive loopback connections; events/s over the whole load."""
    import asyncio

    from auditlog.bench import servers

    batches = _append_data(events, batch, seed)  # the same events as the append scenario
    bodies = _encode_bodies(batches, fmt)
    runs, cpu_runs, client_cpu, rss, walls = [], [], [], [], []
    for _ in range(reps):
        root = Path(tempfile.mkdtemp(prefix=f"http-{fmt}-", dir=workdir))
        srv = None
        try:
            srv = servers.single_node(root, role="writer", fsync="always")
            out = asyncio.run(_post_all(srv.base, srv.keys["writer"], bodies, _CTYPE[fmt], conns, srv))
            srv.stop()
            if out["appended"] != events:
                raise RuntimeError(f"appended {out['appended']} of {events} events")
            walls.append(out["wall"])
            runs.append(events / out["wall"])
            cpu_runs.append(events / max(out["server_cpu"], 1e-9))
            client_cpu.append(out["client_cpu"])
            rss.append(srv.peak_rss_mb)
        finally:
            if srv is not None:
                srv.kill()
            shutil.rmtree(root, ignore_errors=True)
    return {
        "value": median(runs),
        "runs": runs,
        "cpu_value": median(cpu_runs),
        "client_cpu_s": median(client_cpu),
        "server_peak_rss_mb": max(r or 0 for r in rss),
        "body_bytes": sum(len(b) for b in bodies) // len(bodies),
        "walls": walls,
        "profiled": servers.profile_dir() is not None,
    }


async def _paced_posts(session, url: str, headers: dict, bodies: list[bytes], rate: float, conns: int) -> dict:
    """Open-loop-ish pacing: request i is due at t0 + i/rate; ``conns`` workers (one
    keep-alive connection each) take every conns-th request.  A worker that is late
    sends at once; latency is measured from the send and, also, from the due time."""
    import asyncio

    loop = asyncio.get_running_loop()
    n = len(bodies)
    sent = [0.0] * n
    done = [0.0] * n
    errors = []
    t0 = loop.time() + 0.02

    async def worker(w: int):
        for i in range(w, n, conns):
            due = t0 + i / rate
            d = due - loop.time()
            if d > 0:
                await asyncio.sleep(d)
            ts = loop.time()
            async with session.post(url, data=bodies[i], headers=headers) as r:
                raw = await r.read()
                if r.status != 201:
                    errors.append(f"HTTP {r.status}: {raw[:200]!r}")
            sent[i], done[i] = ts, loop.time()

    await asyncio.gather(*(worker(w) for w in range(conns)))
    lat = [(done[i] - sent[i]) * 1e3 for i in range(n)]
    lat_due = [(done[i] - (t0 + i / rate)) * 1e3 for i in range(n)]
    span = max(done) - t0
    return {"lat": lat, "lat_due": lat_due, "span": span, "errors": errors}


def job_http_latency(rate: float, seconds: float, conns: int, seed: int, workdir: str) -> dict:
    """Single-event POSTs at a paced ``rate`` for ``seconds`` (after an untimed warm-up at
    the same rate), fsync="always": per-request latency percentiles."""
    import asyncio

    import aiohttp

    from auditlog.bench import servers

    n = max(conns, int(rate * seconds))
    warm_n = max(conns, int(rate * min(1.0, seconds / 4)))
    gen = EventGenerator(seed + 2)
    drafts = validated(gen.batch(n + warm_n))
    bodies = _encode_bodies([[d] for d in drafts], "json")
    root = Path(tempfile.mkdtemp(prefix="http-latency-", dir=workdir))
    srv = None
    try:
        srv = servers.single_node(root, role="writer", fsync="always")
        headers = {"Authorization": f"Bearer {srv.keys['writer']}", "Content-Type": "application/json"}

        async def go():
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=conns)) as s:
                await _warm_connections(s, srv.base, conns)
                await _paced_posts(s, srv.base + "/api/v1/events", headers, bodies[:warm_n], rate, conns)
                cpu0 = srv.cpu_seconds()
                with Clock() as c:
                    out = await _paced_posts(s, srv.base + "/api/v1/events", headers, bodies[warm_n:], rate, conns)
                out["server_cpu"] = srv.cpu_seconds() - cpu0
                out["client_cpu"] = c.cpu
                return out

        out = asyncio.run(go())
        srv.stop()
    finally:
        if srv is not None:
            srv.kill()
        shutil.rmtree(root, ignore_errors=True)
    if out["errors"]:
        raise RuntimeError(f"{len(out['errors'])} failed POSTs, e.g. {out['errors'][0]}")
    lat, lat_due = out["lat"], out["lat_due"]
    return {
        "p50_ms": _pct(lat, 0.50),
        "p90_ms": _pct(lat, 0.90),
        "p99_ms": _pct(lat, 0.99),
        "max_ms": max(lat),
        "p50_from_due_ms": _pct(lat_due, 0.50),
        "p99_from_due_ms": _pct(lat_due, 0.99),
        "requests": n,
        "warmup_requests": warm_n,
        "achieved_rate": n / out["span"],
        "seconds": out["span"],
        "server_cpu_s": out["server_cpu"],
        "client_cpu_s": out["client_cpu"],
        "server_peak_rss_mb": srv.peak_rss_mb,
        "profiled": servers.profile_dir() is not None,
    }


# --------------------------------------------------------------------------- merge (3 real nodes)

MERGE_NODES = ("bench-n1", "bench-n2", "bench-n3")
#: events per commit when building a merge node's log.  The three nodes' commits take
#: turns in time, 1 ms apart, so the merged stream switches node every this many entries,
#: as in a busy cluster whose nodes all take events at once (group commits of ~100)
MERGE_COMMIT = 100
_MERGE_STEP_US = 1000


def _merge_seed(seed: int, i: int) -> int:
    return seed + 100 + i


def _merge_schedule(per_node: int, commit: int, now: int) -> list[tuple[int, int]]:
    """(batch size, ts of node 0's commit) per round; node i commits ``i`` steps later."""
    sizes = [min(commit, per_node - k) for k in range(0, per_node, commit)]
    t0 = now - (len(sizes) + 1) * len(MERGE_NODES) * _MERGE_STEP_US
    return [(n, t0 + r * len(MERGE_NODES) * _MERGE_STEP_US) for r, n in enumerate(sizes)]


def _load_nodes(data_dirs: list[Path], seed: int, per_node: int, commit: int) -> None:
    """Every node's log written in-process (fsync off: an untimed fixture), the nodes'
    commits interleaved in time by :func:`_merge_schedule`."""
    from auditlog.engine.clock import now_us
    from auditlog.engine.datadir import DataDir
    from auditlog.engine.settings import StoreSettings
    from auditlog.engine.writer import LogWriter

    writers, gens = [], []
    try:
        for i, d in enumerate(data_dirs):
            dd = DataDir(d)
            writers.append(LogWriter(dd, dd.open(), StoreSettings(fsync="none")).open())
            gens.append(EventGenerator(_merge_seed(seed, i)))
        for n, t in _merge_schedule(per_node, commit, now_us()):
            for i, w in enumerate(writers):
                w.seed_history(gens[i].batch(n), t + i * _MERGE_STEP_US)
    finally:
        for w in writers:
            w.close()


async def _stream_ndjson(session, url: str, headers: dict) -> dict:
    """GET a merged NDJSON answer to the end: time to first body byte, total, lines."""
    t0 = time.perf_counter()
    first = None
    lines = nbytes = 0
    tail = b""
    async with session.get(url, headers=headers) as r:
        if r.status != 200:
            raise RuntimeError(f"GET {url}: HTTP {r.status}: {(await r.read())[:300]!r}")
        async for chunk in r.content.iter_any():
            if first is None:
                first = time.perf_counter() - t0
            lines += chunk.count(b"\n")
            nbytes += len(chunk)
            tail = (tail + chunk)[-65536:]
    total = time.perf_counter() - t0
    status_lines = tail.count(b'\n{"node_status"') + tail.startswith(b'{"node_status"')
    return {
        "ttfb": first if first is not None else total,
        "seconds": total,
        "lines": lines - status_lines,
        "status_lines": status_lines,
        "bytes": nbytes,
    }


async def _first_byte(url: str, headers: dict) -> float:
    """Time to the first body byte of a fresh connection's GET; then hang up."""
    import aiohttp

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as s:
        t0 = time.perf_counter()
        async with s.get(url, headers=headers) as r:
            if r.status != 200:
                raise RuntimeError(f"GET {url}: HTTP {r.status}")
            await r.content.readany()
            dt = time.perf_counter() - t0
            r.close()
    return dt


async def _json_query(session, url: str, headers: dict) -> tuple[float, dict]:
    t0 = time.perf_counter()
    async with session.get(url, headers=headers) as r:
        raw = await r.read()
        if r.status != 200:
            raise RuntimeError(f"GET {url}: HTTP {r.status}: {raw[:300]!r}")
    return time.perf_counter() - t0, json.loads(raw)


def job_merge(
    events: int,
    reps: int,
    ttfb_reps: int,
    query_reps: int,
    seed: int,
    workdir: str,
    peer_timeout: float = 2.0,
    commit: int = MERGE_COMMIT,
) -> dict:
    """3 real nodes (mTLS), N/3 events each, their commits interleaved in time; the
    merged NDJSON stream from node 1, first-byte times, then one node SIGKILLed."""
    import asyncio

    import aiohttp

    from auditlog.bench import servers

    per_node = events // len(MERGE_NODES)
    root = Path(tempfile.mkdtemp(prefix="merge-", dir=workdir))
    cluster = servers.Cluster(root, list(MERGE_NODES), peer_timeout=peer_timeout)
    out: dict[str, Any] = {"per_node": per_node, "profiled": servers.profile_dir() is not None}
    try:
        t0 = time.perf_counter()
        cluster.build()
        _load_nodes([n.data_dir for n in cluster.nodes], seed, per_node, commit)
        n1 = cluster[0]
        n1.new_key("reader")
        out["build_seconds"] = time.perf_counter() - t0
        cluster.start()
        headers = {"Authorization": f"Bearer {n1.keys['reader']}"}
        heads = {r["node"]: r["head_seq"] for r in n1.get_json("/api/v1/cluster")["nodes"]}
        expected = sum(heads.values())
        out["heads"] = heads
        out["expected"] = expected
        stream_url = n1.base + "/api/v1/audit-log?format=ndjson"
        query_url = n1.base + "/api/v1/audit-log?limit=100"

        def cpu_all() -> list[float]:
            return [n.cpu_seconds() for n in cluster.nodes]

        async def healthy_part():
            res: dict[str, Any] = {"runs": [], "stream_ttfb": [], "server_cpu": [], "client_cpu": []}
            async with aiohttp.ClientSession() as s:
                warm = await _stream_ndjson(s, stream_url, headers)  # untimed warm-up
                res["warmup"] = warm
                for _ in range(reps):
                    c0 = cpu_all()
                    with Clock() as c:
                        r = await _stream_ndjson(s, stream_url, headers)
                    c1 = cpu_all()
                    if r["lines"] != expected or r["status_lines"]:
                        raise RuntimeError(
                            f"merged stream had {r['lines']} entries and "
                            f"{r['status_lines']} node_status lines, expected {expected}"
                        )
                    res["runs"].append(r["lines"] / r["seconds"])
                    res["stream_ttfb"].append(r["ttfb"])
                    res["server_cpu"].append([b - a for a, b in zip(c0, c1)])
                    res["client_cpu"].append(c.cpu)
                    res["bytes"] = r["bytes"]
                res["ttfb"] = []
                for _ in range(ttfb_reps):
                    await asyncio.sleep(0.3)  # let the servers notice the last hang-up
                    res["ttfb"].append(await _first_byte(stream_url, headers))
                await asyncio.sleep(0.3)
                await _json_query(s, query_url, headers)  # warm-up
                res["healthy_query"] = []
                for _ in range(query_reps):
                    dt, body = await _json_query(s, query_url, headers)
                    res["healthy_query"].append(dt)
                    if len(body["events"]) != 100:
                        raise RuntimeError(f"limit=100 query returned {len(body['events'])} events")
            return res

        out.update(asyncio.run(healthy_part()))
        out["first_read"] = out["warmup"]["lines"] / out["warmup"]["seconds"]
        out["disk"] = {
            suffix: sum(p.stat().st_size for n in cluster.nodes for p in (n.data_dir / "segments").glob("*" + suffix))
            for suffix in (".seg", ".idx", ".terms")
        }
        for n in cluster.nodes:
            n.note_rss()
        victim = cluster[-1]
        victim.kill()

        async def degraded_part():
            res: dict[str, Any] = {"degraded_query": [], "victim_status": None}
            async with aiohttp.ClientSession() as s:
                for _ in range(query_reps):
                    dt, body = await _json_query(s, query_url, headers)
                    res["degraded_query"].append(dt)
                    res["victim_status"] = body["nodes"].get(victim.node_id)
                    res["degraded_events"] = len(body["events"])
            return res

        out.update(asyncio.run(degraded_part()))
        out["victim"] = victim.node_id
        n1.note_rss()
        out["serving_peak_rss_mb"] = n1.peak_rss_mb
        out["peer_peak_rss_mb"] = [n.peak_rss_mb for n in cluster.nodes[1:]]
        out["merge_stage"] = _merge_stage([n.data_dir for n in cluster.nodes], reps)
    finally:
        cluster.close()
        shutil.rmtree(root, ignore_errors=True)
    out["value"] = median(out["runs"])
    out["ttfb_ms"] = median(out["ttfb"]) * 1e3
    sc = [sum(x) for x in out["server_cpu"]]
    # (a tiny smoke-test read can cost less than the 10 ms the kernel counts CPU time in)
    out["cpu_value"] = expected / max(median(sc), 1e-3)
    out["serving_cpu_value"] = expected / max(median([x[0] for x in out["server_cpu"]]), 1e-3)
    healthy = median(out["healthy_query"])
    out["healthy_query_s"] = healthy
    out["added_s"] = [d - healthy for d in out["degraded_query"]]
    return out


def _merge_stage(data_dirs: list[Path], reps: int) -> list[float]:
    """The serving node's own stage alone, in this process: the three nodes' lines,
    rendered beforehand (untimed) in the chunks a peer sends, ordered by merge_lines."""
    import asyncio

    from auditlog.engine.datadir import DataDir
    from auditlog.engine.log import NodeLog
    from auditlog.query.filters import Filter
    from auditlog.query.linemerge import LineSource, merge_lines, node_ranks
    from auditlog.query.lines import line_marks
    from auditlog.query.scan import read_node
    from auditlog.query.sources import LineTaker

    per_node = {}
    for d in data_dirs:
        dd = DataDir(d)
        node = dd.open()
        log = NodeLog(dd, node)
        taker = LineTaker(read_node(log, Filter()), None, None, "asc")
        chunks = []
        while (got := taker.take(2000)) is not None:
            ts, lens, blob, _ = got
            chunks.append((ts, line_marks(lens), blob))
        per_node[node.node_id] = chunks

    class Replay(LineSource):
        def __init__(self, node, chunks):
            super().__init__(node)
            self.it = iter(chunks)

        async def next_lines(self):
            return next(self.it, None)

    async def once() -> float:
        sources = [Replay(n, c) for n, c in per_node.items()]
        n = 0
        with Clock() as c:
            async for k, parts in merge_lines(sources, "asc", node_ranks(per_node)):
                b"".join(parts)  # as the answer is written
                n += k
        return n / c.wall

    return [asyncio.run(once()) for _ in range(reps)]


def job_sqlite_merge(events: int, reps: int, seed: int, workdir: str, commit: int = MERGE_COMMIT) -> dict:
    """The same three data sets in three SQLite DBs (built with synchronous=OFF, untimed),
    merged in one process with heapq.merge over three ``ORDER BY ts, seq`` cursors; every
    merged row rendered as the same NDJSON line (export.ndjson) and counted."""
    import heapq

    import msgpack

    from auditlog.bench.baseline_sqlite import _COLUMNS, SqliteBaseline
    from auditlog.engine.entry import Entry
    from auditlog.export.ndjson import iter_ndjson

    per_node = events // len(MERGE_NODES)
    d = Path(tempfile.mkdtemp(prefix="sqlite-merge-", dir=workdir))
    from auditlog.engine.clock import now_us

    schedule = _merge_schedule(per_node, commit, now_us())
    try:
        paths = []
        for i, node in enumerate(MERGE_NODES):
            path = str(d / f"{node}.sqlite")
            db = SqliteBaseline(path, node, _bench_key(), synchronous="OFF")
            gen = EventGenerator(_merge_seed(seed, i))
            for n, t in schedule:  # the same commits and timestamps
                db.append_batch(gen.batch(n), at_us=t + i * _MERGE_STEP_US)
            db.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            db.close()
            paths.append(path)

        def cursors():
            conns = [sqlite3_connect(p) for p in paths]
            its = []
            for node, conn in zip(MERGE_NODES, conns):
                cur = conn.execute(f"SELECT {_COLUMNS} FROM events ORDER BY ts, seq")
                its.append((r[1], node, r[0], r) for r in cur)
            return conns, its

        unpackb = msgpack.unpackb
        runs, cpu_runs, bare, count, ttfb = [], [], [], 0, []
        for _ in range(reps):
            conns, its = cursors()
            n = 0
            first = None
            with open(os.devnull, "wb") as out, Clock() as c:

                def entries():
                    for ts, node, seq, r in heapq.merge(*its):  # noqa: B023 (consumed in this round)
                        yield Entry.of(
                            node,
                            seq,
                            ts,
                            r[2],
                            r[3],
                            r[4],
                            r[5],
                            r[6],
                            r[7],
                            bool(r[8]),
                            unpackb(r[9], raw=False),
                            r[10],
                            "ok",
                            None,
                        )

                for text in iter_ndjson(entries()):
                    b = text.encode("utf-8")
                    if first is None:
                        first = time.perf_counter() - c.w0
                    n += b.count(b"\n")
                    out.write(b)
            for conn in conns:
                conn.close()
            runs.append(n / c.wall)
            cpu_runs.append(n / c.cpu)
            ttfb.append(first or 0.0)
            count = n
            conns, its = cursors()
            with Clock() as c:
                m = sum(1 for _ in heapq.merge(*its))
            for conn in conns:
                conn.close()
            bare.append(m / c.wall)
    finally:
        shutil.rmtree(d, ignore_errors=True)
    return {
        "value": median(runs),
        "runs": runs,
        "cpu_value": median(cpu_runs),
        "count": count,
        "merge_only_value": median(bare),
        "first_line_ms": median(ttfb) * 1e3,
    }


def job_soak_rss(**kwargs: Any) -> dict:
    """A real server under sustained paced ingest and a periodic reader (``bench.soak``)."""
    from auditlog.bench.soak import job_soak_rss as run

    return run(**kwargs)


def job_disk_bytes(**kwargs: Any) -> dict:
    """A real server's data dir after ingest and reads, counted (``bench.disk``)."""
    from auditlog.bench.disk import job_disk_bytes as run

    return run(**kwargs)


def job_bundle(**kwargs: Any) -> dict:
    """An evidence bundle written and verified by the real CLI (``bench.bundle``)."""
    from auditlog.bench.bundle import job_bundle as run

    return run(**kwargs)


def job_archive(**kwargs: Any) -> dict:
    """The archive against a real local S3 server: upload, then a read from it (``bench.archive``)."""
    from auditlog.bench.archive import job_archive as run

    return run(**kwargs)


def job_sqlite_disk_bytes(**kwargs: Any) -> dict:
    from auditlog.bench.disk import job_sqlite_disk_bytes as run

    return run(**kwargs)


def sqlite3_connect(path: str):
    import sqlite3

    return sqlite3.connect(f"file:{path}?mode=ro", uri=True)


JOBS: dict[str, Callable[..., dict]] = {
    "build_log": job_build_log,
    "build_sqlite": job_build_sqlite,
    "append": job_append,
    "scan": job_scan,
    "selective": job_selective,
    "csv": job_csv,
    "scan_rss": job_scan_rss,
    "sqlite_append": job_sqlite_append,
    "sqlite_scan": job_sqlite_scan,
    "sqlite_selective": job_sqlite_selective,
    "sqlite_csv": job_sqlite_csv,
    "http_ingest": job_http_ingest,
    "http_latency": job_http_latency,
    "merge": job_merge,
    "sqlite_merge": job_sqlite_merge,
    "soak_rss": job_soak_rss,
    "disk_bytes": job_disk_bytes,
    "bundle": job_bundle,
    "archive": job_archive,
    "sqlite_disk_bytes": job_sqlite_disk_bytes,
}


def main(argv: list[str]) -> int:
    """``python -m bench.scenarios '{"job": ..., "kwargs": {...}}' RESULT_FILE``."""
    spec = json.loads(argv[0])
    result = JOBS[spec["job"]](**spec["kwargs"])
    result["peak_rss_mb"] = peak_rss_mb()
    tmp = argv[1] + ".tmp"
    with open(tmp, "w") as f:
        json.dump(result, f)
    os.replace(tmp, argv[1])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
