"""The SQLite baseline the benchmarks compare against (SPEC section 10).

What it is, so the ratios mean something:

* WAL mode; ``synchronous=FULL`` for the durable-append comparison (every
  committed transaction is fsync'd before ``COMMIT`` returns, as our
  ``fsync="always"``).  The shared read data set is built with
  ``synchronous=OFF`` (data preparation, not measured).
* The same fields as the event model, one row per entry:
  ``seq`` (INTEGER PRIMARY KEY), ``ts``, ``user``, ``action``, ``target``,
  ``domain``, ``ip``, ``user_agent``, ``success``, ``details`` (msgpack blob,
  the cheapest faithful encoding), ``signature`` (32-byte blob).  The node id is
  the same for every row of a node's database, so, as in our segments, it is
  not stored per row.
* An index on ``ts``; for the selective query also indexes on ``user`` and
  ``ip`` (and ``ANALYZE``), which is what a fair SQLite design would have.
* Batched transactions: one ``BEGIN IMMEDIATE … COMMIT`` per batch.
* The SAME per-entry HMAC chain as the engine, computed in Python for every
  row: ``HMAC-SHA256(key, prev_sig || canonical_bytes(node, seq, ts, draft))``
  with :meth:`engine.chain.NodeKey.signer` and
  :func:`engine.entry.canonical_bytes`; ``ts`` is assigned once per batch at
  commit time, as the engine does.  The chain head is kept in memory (like our
  writer); with several threads they share one connection under a lock
  (SQLite serialises writers anyway).
"""

from __future__ import annotations

import csv
import json
import sqlite3
import threading
import time
from collections.abc import Sequence

import msgpack

from auditlog.engine.chain import GENESIS, NodeKey
from auditlog.engine.entry import EntryDraft, canonical_bytes

_COLUMNS = "seq, ts, user, action, target, domain, ip, user_agent, success, details, signature"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    seq        INTEGER PRIMARY KEY,
    ts         INTEGER NOT NULL,
    user       TEXT NOT NULL,
    action     TEXT NOT NULL,
    target     TEXT,
    domain     TEXT,
    ip         TEXT,
    user_agent TEXT,
    success    INTEGER NOT NULL,
    details    BLOB NOT NULL,
    signature  BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS events_ts ON events(ts);
"""
_INSERT = f"INSERT INTO events ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"

#: What the baseline does, for the results' params.
DESCRIPTION = (
    "SQLite WAL, same fields, index on ts, one transaction per batch, "
    "per-row HMAC-SHA256 chain in Python (same signer and canonical encoding)"
)


class SqliteBaseline:
    """One node's events in SQLite, chained and signed like the engine's."""

    def __init__(
        self,
        path: str,
        node: str,
        key: NodeKey,
        synchronous: str = "FULL",
        threadsafe: bool = False,
        create: bool = True,
    ):
        self.path = path
        self.node = node
        self.conn = sqlite3.connect(path, isolation_level=None, check_same_thread=not threadsafe)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute(f"PRAGMA synchronous={synchronous}")
        self.synchronous = synchronous
        if create:
            self.conn.executescript(_SCHEMA)
        self._sign = key.signer()
        self._pack = msgpack.Packer(use_bin_type=True).pack
        self._lock = threading.Lock()
        row = self.conn.execute("SELECT seq, ts, signature FROM events ORDER BY seq DESC LIMIT 1").fetchone()
        self.next_seq, self.last_ts, self.prev = (row[0] + 1, row[1], row[2]) if row else (1, 0, GENESIS)

    @classmethod
    def open_existing(cls, path: str, node: str, key: NodeKey) -> SqliteBaseline:
        return cls(path, node, key, synchronous="FULL", create=False)

    def close(self) -> None:
        self.conn.close()

    # -- writing -------------------------------------------------------------

    def append_batch(self, drafts: Sequence[EntryDraft], at_us: int | None = None) -> int:
        """Sign and insert one batch in one transaction; returns the batch's ts
        (now, or ``at_us`` as the merge bench's schedule gives it)."""
        with self._lock:
            ts = max(time.time_ns() // 1000 if at_us is None else at_us, self.last_ts)
            node, sign, pack = self.node, self._sign, self._pack
            seq, prev = self.next_seq, self.prev
            rows = []
            append = rows.append
            for d in drafts:
                sig = sign(prev, canonical_bytes(node, seq, ts, d))
                append((seq, ts) + d[:7] + (pack(d[7]), sig))
                prev = sig
                seq += 1
            cur = self.conn.cursor()
            cur.execute("BEGIN IMMEDIATE")
            try:
                cur.executemany(_INSERT, rows)
                cur.execute("COMMIT")
            except BaseException:
                cur.execute("ROLLBACK")
                raise
            self.next_seq, self.prev, self.last_ts = seq, prev, ts
            return ts

    def create_query_indexes(self) -> None:
        """Indexes for the selective query (user, ip), statistics, WAL folded into the db."""
        self.conn.executescript("""
            CREATE INDEX IF NOT EXISTS events_user ON events(user);
            CREATE INDEX IF NOT EXISTS events_ip ON events(ip);
            ANALYZE;
        """)
        self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    # -- reading -------------------------------------------------------------

    def scan_count(self, lo: int, hi: int) -> int:
        """``SELECT <all columns> WHERE ts >= ? AND ts < ?``, iterating the row tuples.

        Rows are materialised as Python tuples; details stay a msgpack blob and
        the HMAC chain is NOT re-verified (see :meth:`scan_verify`).
        """
        n = 0
        for _ in self.conn.execute(f"SELECT {_COLUMNS} FROM events WHERE ts >= ? AND ts < ?", (lo, hi)):
            n += 1
        return n

    def scan_verify(self, lo: int, hi: int) -> tuple[int, int]:
        """The same range with every row's signature and chain link re-checked in Python."""
        node, sign = self.node, self._sign
        unpackb = msgpack.unpackb
        n = bad = 0
        prev = None
        for row in self.conn.execute(f"SELECT {_COLUMNS} FROM events WHERE ts >= ? AND ts < ? ORDER BY seq", (lo, hi)):
            seq = row[0]
            if prev is None:
                r = self.conn.execute("SELECT signature FROM events WHERE seq = ?", (seq - 1,)).fetchone()
                prev = r[0] if r else GENESIS
            draft = row[2:8] + (bool(row[8]), unpackb(row[9], raw=False))
            if sign(prev, canonical_bytes(node, seq, row[1], draft)) != row[10]:
                bad += 1
            prev = row[10]
            n += 1
        return n, bad

    def selective(self, user: str, ip: str) -> list[tuple]:
        return self.conn.execute(
            f"SELECT {_COLUMNS} FROM events WHERE user = ? AND ip = ? ORDER BY seq", (user, ip)
        ).fetchall()

    def selective_plan(self, user: str, ip: str) -> str:
        rows = self.conn.execute(
            f"EXPLAIN QUERY PLAN SELECT {_COLUMNS} FROM events WHERE user = ? AND ip = ? ORDER BY seq", (user, ip)
        ).fetchall()
        return "; ".join(r[-1] for r in rows)

    def export_csv(self, lo: int, hi: int, path: str) -> int:
        """The range as CSV (same 13 columns as export.csv) with the stdlib csv.writer."""
        from auditlog.export.csv import CSV_COLUMNS, TimestampFormatter

        fmt = TimestampFormatter().format
        dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), sort_keys=True).encode
        unpackb = msgpack.unpackb
        node = self.node
        n = 0
        with open(path, "w", encoding="utf-8", newline="") as f:
            f.write("\ufeff")
            w = csv.writer(f, lineterminator="\r\n")
            w.writerow(CSV_COLUMNS)
            for seq, ts, user, action, target, domain, ip, ua, success, details, sig in self.conn.execute(
                f"SELECT {_COLUMNS} FROM events WHERE ts >= ? AND ts < ?", (lo, hi)
            ):
                w.writerow(
                    (
                        fmt(ts),
                        node,
                        seq,
                        user,
                        action,
                        target,
                        domain,
                        ip,
                        ua,
                        "true" if success else "false",
                        dumps(unpackb(details, raw=False)),
                        sig.hex(),
                        "ok",
                    )
                )
                n += 1
        return n
