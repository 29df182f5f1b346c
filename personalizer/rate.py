"""Token buckets shared by the processes of one daemon (``[server] processes`` > 1): ``SharedRate``.

With one process a rate limit is a dict in memory (``cardadmin.service.StationRate``). With N processes
on one port the kernel hands a station's connections to any of them, so N dicts would let a station
ask N times the limit. ``SharedRate`` keeps the buckets in a small SQLite file of the daemon's data
directory (``limits.sqlite``) that every process of the daemon opens: one ``INSERT … ON CONFLICT DO
UPDATE … RETURNING`` takes a token or refuses, atomically across processes (SQLite serializes the
writers). The file is not durable state (``synchronous = OFF``: no fsync; a crash at most refills
buckets), so a call costs one short write lock, no disk wait. If the file cannot be written (locked
longer than ``BUSY_TIMEOUT_MS``, disk full) the call falls back to this process's own bucket, so a
limit still holds per process and nothing fails for it.

Same interface as ``StationRate``: ``allow(key) -> bool``, ``per_minute`` answers per key and minute,
bursts up to the same number. Imports nothing of ours.
"""
from __future__ import annotations

import logging
import sqlite3
import threading
import time
from pathlib import Path

log = logging.getLogger(__name__)

FILE_NAME = "limits.sqlite"
BUSY_TIMEOUT_MS = 250
PRUNE_EVERY = 1000   # calls between removals of the buckets full again (keys quiet for a while)

SCHEMA = """
CREATE TABLE IF NOT EXISTS buckets (
    scope TEXT NOT NULL, key TEXT NOT NULL, tokens REAL NOT NULL, at REAL NOT NULL, ok INTEGER NOT NULL,
    PRIMARY KEY (scope, key));
"""
# the bucket refilled since ``at`` (never by a negative time, if the clock stepped back), capped at ``cap``;
# one token taken when there is one. SQLite evaluates every SET expression on the old row.
_REFILL = "MIN(:cap, tokens + MAX(0, :now - at) * :rate)"
Q_TAKE = f"""INSERT INTO buckets (scope, key, tokens, at, ok) VALUES (:scope, :key, :cap - 1, :now, 1)
    ON CONFLICT (scope, key) DO UPDATE SET
        tokens = {_REFILL} - ({_REFILL} >= 1), ok = {_REFILL} >= 1, at = :now
    RETURNING ok"""
Q_PRUNE = "DELETE FROM buckets WHERE scope = :scope AND at < :now - :cap / :rate"


class SharedRate:
    def __init__(self, path: Path, scope: str, per_minute: int, *, clock=time.time, fallback=None):
        """``scope``: whose buckets (e.g. ``card_admin``); ``fallback``: an object with ``allow(key)`` used
        when the file cannot be written (default: none, the call is allowed and logged)."""
        self.path, self.scope = Path(path), scope
        self._rate, self._cap = per_minute / 60.0, float(per_minute)
        self._clock = clock
        self._fallback = fallback
        self._lock = threading.Lock()
        self._calls = 0
        self._conn = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False,
                                     timeout=BUSY_TIMEOUT_MS / 1000)
        try:
            self._conn.execute("PRAGMA journal_mode = WAL")
            self._conn.execute("PRAGMA synchronous = OFF")
            self._conn.executescript(SCHEMA)
        except BaseException:
            self._conn.close()
            raise

    def allow(self, key: str) -> bool:
        args = {"scope": self.scope, "key": key, "cap": self._cap, "rate": self._rate, "now": self._clock()}
        with self._lock:
            try:
                ok = bool(self._conn.execute(Q_TAKE, args).fetchall()[0][0])   # stepped to the end: committed
                self._calls += 1
                if self._calls % PRUNE_EVERY == 0:
                    self._conn.execute(Q_PRUNE, args)
                return ok
            except sqlite3.Error as exc:
                log.warning("shared rate limits (%s) unavailable (%s): this process's own limit applies",
                            self.path, exc)
                return self._fallback.allow(key) if self._fallback is not None else True

    def close(self) -> None:
        with self._lock:
            self._conn.close()
