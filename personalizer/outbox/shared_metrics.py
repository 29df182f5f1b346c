"""CA call figures of every process of one daemon (``[server] processes`` > 1): ``SharedCAMetrics``.

``CAMetrics`` keeps the relay's CA calls (kind, milliseconds, ok) in this process's memory; with N
processes, GetCAStatus answered by one process and the Prometheus endpoint (the primary's) would each
see only their own relay's calls. ``SharedCAMetrics`` keeps the samples of the sliding window and the
totals since the daemon started in a small SQLite file of the data directory (``metrics.sqlite``,
``synchronous = OFF``: figures, not durable state; no fsync per CA call), which every process of the
daemon writes and reads, so every process answers the same figures. A process writes its samples in
one transaction every ``FLUSH_SECONDS`` (and before it reads), not one per CA call (issue 16: a
transaction per certificate cost ~0.2 ms of the event loop's CPU): another process's calls show
within ``FLUSH_SECONDS``, this process's at once. The primary opens it with
``reset=True`` before its helpers start (the totals count from the daemon's start, as with one
process). A failing file (locked longer than ``BUSY_TIMEOUT_MS``, disk full) falls back to this
process's memory, logged once: figures, never a failed request.

Imports ``outbox.metrics`` only.
"""
from __future__ import annotations

import asyncio
import collections
import logging
import sqlite3
import threading
import time
from pathlib import Path

from personalizer.outbox.metrics import WINDOW_SECONDS, CAMetrics, KindFigures, _quantile

log = logging.getLogger(__name__)

FILE_NAME = "metrics.sqlite"
BUSY_TIMEOUT_MS = 250
PRUNE_EVERY = 1000   # records between removals of the samples older than the window
FLUSH_SECONDS = 0.05  # a CA call shows in the other processes' figures within this (as broker.FOLLOW_SECONDS)

SCHEMA = """
CREATE TABLE IF NOT EXISTS ca_samples (at REAL NOT NULL, kind TEXT NOT NULL, ms REAL NOT NULL, ok INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS ca_samples_at ON ca_samples(at);
CREATE TABLE IF NOT EXISTS ca_totals (kind TEXT NOT NULL, result TEXT NOT NULL, n INTEGER NOT NULL,
                                      PRIMARY KEY (kind, result));
"""


class SharedCAMetrics(CAMetrics):
    def __init__(self, path: Path, *, reset: bool, window: float = WINDOW_SECONDS, clock=time.time):
        super().__init__(window=window, clock=clock)
        self.path = Path(path)
        self._lock = threading.Lock()   # the metrics server reads from its own thread
        self._records = 0
        self._failed = False
        self._buffer: list[tuple[float, str, float, int]] = []   # samples not yet written (see flush)
        self._flush_due = False
        self._conn = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False,
                                     timeout=BUSY_TIMEOUT_MS / 1000)
        try:
            self._conn.execute("PRAGMA journal_mode = WAL")
            self._conn.execute("PRAGMA synchronous = OFF")
            self._conn.executescript(SCHEMA)
            if reset:
                self._conn.executescript("BEGIN IMMEDIATE; DELETE FROM ca_samples; DELETE FROM ca_totals; COMMIT;")
        except BaseException:
            self._conn.close()
            raise

    def _fallback(self, exc: Exception) -> None:
        if not self._failed:
            log.warning("shared CA figures (%s) unavailable (%s): this process's own figures are shown",
                        self.path, exc)
        self._failed = True

    def record(self, kind: str, ms: float, ok: bool) -> None:
        """Buffered: written with the others of the next ``FLUSH_SECONDS`` (a timer on the running
        loop; without one, at once)."""
        with self._lock:
            self._buffer.append((self._clock(), kind, ms, int(ok)))
            if self._flush_due:
                return
            self._flush_due = True
        try:
            asyncio.get_running_loop().call_later(FLUSH_SECONDS, self.flush)
        except RuntimeError:   # no event loop in this thread: nothing would flush later
            self.flush()

    def flush(self) -> None:
        """Write the buffered samples in one transaction (the fallback: this process's memory)."""
        with self._lock:
            self._flush_locked()

    def _flush_locked(self) -> None:
        samples, self._buffer, self._flush_due = self._buffer, [], False
        if not samples:
            return
        totals = collections.Counter((kind, "ok" if ok else "error") for _, kind, _, ok in samples)
        try:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                self._conn.executemany("INSERT INTO ca_samples VALUES (?, ?, ?, ?)", samples)
                self._conn.executemany("INSERT INTO ca_totals VALUES (?, ?, ?) ON CONFLICT (kind, result)"
                                       " DO UPDATE SET n = n + excluded.n",
                                       [(k, r, n) for (k, r), n in totals.items()])
                before = self._records // PRUNE_EVERY
                self._records += len(samples)
                if self._records // PRUNE_EVERY != before:
                    self._conn.execute("DELETE FROM ca_samples WHERE at < ?", (samples[-1][0] - self.window,))
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            return
        except sqlite3.Error as exc:
            self._fallback(exc)
        for _, kind, ms, ok in samples:
            super().record(kind, ms, bool(ok))

    def _rows(self, sql: str, args: tuple):
        with self._lock:
            self._flush_locked()   # this process's own calls count at once
            try:
                return self._conn.execute(sql, args).fetchall()
            except sqlite3.Error as exc:
                self._fallback(exc)
                return None

    def per_kind(self) -> list[KindFigures]:
        rows = self._rows("SELECT kind, ms FROM ca_samples WHERE at >= ? ORDER BY kind, ms",
                          (self._clock() - self.window,))
        if rows is None:
            return super().per_kind()
        by: dict[str, list[float]] = collections.defaultdict(list)
        for kind, ms in rows:
            by[kind].append(ms)
        return [KindFigures(kind, _quantile(v, 0.50), _quantile(v, 0.95), len(v)) for kind, v in sorted(by.items())]

    def load(self) -> int:
        rows = self._rows("SELECT COUNT(*) FROM ca_samples WHERE at >= ?", (self._clock() - self.window,))
        return super().load() if rows is None else rows[0][0]

    def totals_now(self) -> collections.Counter:
        rows = self._rows("SELECT kind, result, n FROM ca_totals", ())
        return super().totals_now() if rows is None else collections.Counter({(k, r): n for k, r, n in rows})

    def close(self) -> None:
        with self._lock:
            self._flush_locked()
            self._conn.close()
