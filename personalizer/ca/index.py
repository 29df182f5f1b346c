"""The embedded CA's own database (``ca.db``): certificate index, revocations, CRL numbers.

A CA owns its records, so the embedded CA keeps them next to its keys rather
than in the daemon's request store. SQLite in WAL mode with synchronous=FULL,
on one connection owned by one thread (``_Connection``): every call is one
hand-off to it, and the calls queued while it works run as one batch, the
writes among them in ONE transaction (group commit: one fsync for every
certificate signed meanwhile, each write in its own savepoint, committed
before any of them returns). With ``shared`` (several daemon processes on the
file) each write transaction holds ``guard.WriteLock``. Every SQL statement of
the CA lives in this module. ``sqlite3`` errors are re-raised as ``CAError``.

Rows::

    certificates(serial_hex PK, issuer_dn, request_id UNIQUE, profile, not_before, not_after,
                 status ∈ {active, suspended, revoked}, revocation_reason, revoked_at, certificate_der)
    meta(key PK, value)      crl_number, status_changes (one more with every status transition, in its
                             transaction: the CRL publisher's cheap "did anything change?" across processes)

``request_id`` is UNIQUE: the index itself refuses a second certificate for
one request. ``CAIndex`` is the protocol every index implements (this one,
``index_postgres.PgCertificateIndex``); each declares ``recorded_by_store``:
whether the request store writes the CA's row of a certificate in the request's
own transaction (then the CA does not record it), here False. Must not import
grpc, proto, the store or the broker.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import datetime as _dt
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

from personalizer.errors import CAError
from personalizer.guard import WriteLock

DB_NAME = "ca.db"
SCHEMA_VERSION = 1
BUSY_TIMEOUT_MS = 5000
MEMORY = ":memory:"
WRITE_LOCK_SUFFIX = ".writelock"

STATUS_ACTIVE = "active"
STATUS_SUSPENDED = "suspended"
STATUS_REVOKED = "revoked"

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS certificates (
    serial_hex         TEXT PRIMARY KEY,
    issuer_dn          TEXT NOT NULL,
    request_id         TEXT NOT NULL UNIQUE,
    profile            TEXT NOT NULL,
    not_before         INTEGER NOT NULL,
    not_after          INTEGER NOT NULL,
    status             TEXT NOT NULL CHECK (status IN ('active', 'suspended', 'revoked')),
    revocation_reason  TEXT,
    revoked_at         INTEGER,
    certificate_der    BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS certificates_revoked ON certificates(status) WHERE status != 'active';
"""

_COLUMNS = ("serial_hex, issuer_dn, request_id, profile, not_before, not_after, status, revocation_reason, "
            "revoked_at, certificate_der")
Q_INSERT = f"INSERT OR IGNORE INTO certificates ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, 'active', NULL, NULL, ?)"
Q_BY_REQUEST = f"SELECT {_COLUMNS} FROM certificates WHERE request_id = ?"
Q_BY_SERIAL = f"SELECT {_COLUMNS} FROM certificates WHERE serial_hex = ?"
Q_SET_STATUS = """UPDATE certificates SET status = ?, revocation_reason = ?, revoked_at = ?
    WHERE serial_hex = ? AND status = ?"""
Q_NOT_ACTIVE = f"SELECT {_COLUMNS} FROM certificates WHERE status != 'active' ORDER BY revoked_at, serial_hex"
Q_GET_META = "SELECT value FROM meta WHERE key = ?"
Q_PUT_META = "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value"
Q_NEXT_CRL_NUMBER = """INSERT INTO meta (key, value) VALUES (?, '1')
    ON CONFLICT(key) DO UPDATE SET value = CAST(CAST(value AS INTEGER) + 1 AS TEXT) RETURNING value"""
META_CRL_NUMBER = "crl_number"
META_STATUS_CHANGES = "status_changes"
Q_COUNT_CHANGE = """INSERT INTO meta (key, value) VALUES (?, '1')
    ON CONFLICT(key) DO UPDATE SET value = CAST(CAST(value AS INTEGER) + 1 AS TEXT)"""
META_SCHEMA = "schema_version"


def _ts(value: _dt.datetime) -> int:
    return int(value.timestamp())


def _utc(ts: int | None) -> _dt.datetime | None:
    return None if ts is None else _dt.datetime.fromtimestamp(ts, _dt.timezone.utc)


@dataclass(frozen=True)
class IndexRow:
    serial_hex: str
    issuer_dn: str
    request_id: str
    profile: str
    not_before: _dt.datetime
    not_after: _dt.datetime
    status: str
    revocation_reason: str | None
    revoked_at: _dt.datetime | None
    certificate_der: bytes

    @classmethod
    def from_sql(cls, r: tuple) -> "IndexRow":
        return cls(r[0], r[1], r[2], r[3], _utc(r[4]), _utc(r[5]), r[6], r[7], _utc(r[8]), bytes(r[9]))


@runtime_checkable
class CAIndex(Protocol):
    """What the embedded CA needs of its certificate index. ``recorded_by_store`` is declared by every
    index: True when the request store's ``complete_issue`` records each certificate's row in the
    request's transaction (the CA then neither records nor reads it before signing); False when the CA
    records it itself (``record``). The embedded CA refuses an index that does not say."""

    recorded_by_store: bool

    async def record(self, *, serial_hex: str, issuer_dn: str, request_id: str, profile: str,
                     not_before: _dt.datetime, not_after: _dt.datetime, certificate_der: bytes) -> "IndexRow": ...

    async def by_request(self, request_id: str) -> "IndexRow | None": ...

    async def by_serial(self, serial_hex: str) -> "IndexRow | None": ...

    async def transition(self, serial_hex: str, *, from_status: str, to_status: str, reason: str | None,
                         at: _dt.datetime | None) -> bool: ...

    async def status_changes(self) -> int: ...

    async def not_active(self) -> "list[IndexRow]": ...

    async def next_crl_number(self) -> int: ...

    async def close(self) -> None: ...


def _run_batch(conn: sqlite3.Connection, items: list, lock: WriteLock | None) -> list:
    """Run ``[(fn, writes)]`` on ``conn``: [(result | None, sqlite3.Error | None)]. The writes share one
    transaction, each in a savepoint (a failing one is undone alone); a failing COMMIT raises."""
    writing = any(w for _, w in items)
    if writing and lock is not None:
        lock.__enter__()
    try:
        if writing:
            conn.execute("BEGIN IMMEDIATE")
        out = []
        try:
            for fn, writes in items:
                if writes:
                    conn.execute("SAVEPOINT item")
                try:
                    result = fn(conn)
                    if writes:
                        conn.execute("RELEASE item")
                    out.append((result, None))
                except sqlite3.Error as exc:
                    if writes:
                        conn.execute("ROLLBACK TO item")
                        conn.execute("RELEASE item")
                    out.append((None, exc))
            if writing:
                conn.execute("COMMIT")
        except BaseException:
            if writing:
                try:
                    conn.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
            raise
        return out
    finally:
        if writing and lock is not None:
            lock.__exit__(None, None, None)


class _Connection:
    """ca.db's one sqlite3 connection and the thread that owns it. Calls queue up; while a batch runs on
    the thread the next ones gather, and a drain task (on the loop of the call that found it idle: the
    index is used from more than one event loop in tests) runs them as the next batch."""

    def __init__(self, conn: sqlite3.Connection, pool: concurrent.futures.ThreadPoolExecutor,
                 lock: WriteLock | None):
        self._conn, self._pool, self._lock = conn, pool, lock
        self._pending: list = []
        self._drainer: asyncio.Task | None = None
        self.commits = 0   # write transactions committed (tests and benchmarks read it)

    @classmethod
    async def open(cls, target: str, shared: bool) -> "_Connection":
        pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="ca-index")
        lock = WriteLock(Path(target + WRITE_LOCK_SUFFIX)) if shared and target != MEMORY else None

        def connect() -> sqlite3.Connection:
            conn = sqlite3.connect(target, isolation_level=None, check_same_thread=False)
            try:
                conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
                conn.execute("PRAGMA journal_mode = WAL")
                conn.execute("PRAGMA synchronous = FULL")
                if lock is not None:   # executescript commits on its own: no savepoint around it
                    lock.__enter__()
                try:
                    conn.executescript(SCHEMA)
                    conn.execute("INSERT OR IGNORE INTO meta (key, value) VALUES (?, ?)",
                                 (META_SCHEMA, str(SCHEMA_VERSION)))
                finally:
                    if lock is not None:
                        lock.__exit__(None, None, None)
            except BaseException:
                conn.close()
                raise
            return conn

        try:
            conn = await asyncio.get_running_loop().run_in_executor(pool, connect)
        except BaseException:
            pool.shutdown(wait=False)
            if lock is not None:
                lock.close()
            raise
        return cls(conn, pool, lock)

    async def call(self, fn, *, writes: bool):
        """``fn(conn)`` in the next batch (a write: inside its transaction); its result once committed."""
        fut = asyncio.get_running_loop().create_future()
        self._pending.append((fn, writes, fut))
        if self._drainer is None or self._drainer.done():
            self._drainer = asyncio.ensure_future(self._drain())
        result, exc = await fut
        if exc is not None:
            raise exc
        return result

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        while self._pending:
            work, self._pending = self._pending, []
            try:
                results = await loop.run_in_executor(self._pool, _run_batch, self._conn,
                                                     [(fn, w) for fn, w, _ in work], self._lock)
            except Exception as exc:   # BEGIN or COMMIT failed: every call of the batch failed
                results = [(None, exc)] * len(work)
            else:
                self.commits += any(w for _, w, _ in work)
            for (_, _, fut), outcome in zip(work, results):
                if not fut.done():
                    fut.set_result(outcome)

    async def close(self) -> None:
        if self._drainer is not None and not self._drainer.done():
            await self._drainer
        await asyncio.get_running_loop().run_in_executor(self._pool, self._conn.close)
        self._pool.shutdown(wait=True)
        if self._lock is not None:
            self._lock.close()


def _rowcount(sql: str, args: tuple):
    return lambda conn: conn.execute(sql, args).rowcount


def _fetchall(sql: str, args: tuple):
    return lambda conn: conn.execute(sql, args).fetchall()


def missing_members(index) -> list[str]:
    """The ``CAIndex`` members ``index`` lacks (empty: it implements the protocol)."""
    names = list(CAIndex.__annotations__) + [n for n, v in vars(CAIndex).items()
                                             if callable(v) and not n.startswith("_")]
    return [n for n in names if not hasattr(index, n)]


class CertificateIndex:
    """Open with ``await CertificateIndex.open(path_or_MEMORY)``; close with ``await close()``."""

    recorded_by_store = False   # the CA records every certificate here itself (CAIndex)

    def __init__(self, conn: _Connection, path: str):
        self._conn = conn
        self.path = path

    @classmethod
    async def open(cls, path: Path | str, *, shared: bool = False) -> "CertificateIndex":
        """``shared``: other processes of this daemon write the same file (their writes queue on a flock)."""
        target = str(path)
        try:
            if target != MEMORY:
                Path(target).parent.mkdir(parents=True, exist_ok=True)
            conn = await _Connection.open(target, shared)
        except (sqlite3.Error, OSError) as exc:
            raise CAError(f"cannot open the CA database {target}: {exc}") from exc
        return cls(conn, target)

    async def close(self) -> None:
        await self._conn.close()

    @property
    def commits(self) -> int:
        """Write transactions committed on this connection (one per batch of writes: group commit)."""
        return self._conn.commits

    async def _read(self, sql: str, args: tuple) -> list:
        try:
            return await self._conn.call(_fetchall(sql, args), writes=False)
        except sqlite3.Error as exc:
            raise CAError(f"CA database read failed: {exc}") from exc

    async def _write(self, fn):
        try:
            return await self._conn.call(fn, writes=True)
        except sqlite3.Error as exc:
            raise CAError(f"CA database write failed: {exc}") from exc

    async def _one(self, sql: str, args: tuple) -> tuple | None:
        rows = await self._read(sql, args)
        return rows[0] if rows else None

    async def record(self, *, serial_hex: str, issuer_dn: str, request_id: str, profile: str,
                     not_before: _dt.datetime, not_after: _dt.datetime, certificate_der: bytes) -> IndexRow:
        """Record an issued certificate (committed when this returns); if ``request_id`` already has one,
        return that one instead."""
        inserted = await self._write(_rowcount(Q_INSERT, (serial_hex, issuer_dn, request_id, profile,
                                                          _ts(not_before), _ts(not_after), certificate_der))) == 1
        if inserted:   # the row is exactly what was written (timestamps at the stored one-second precision)
            return IndexRow(serial_hex, issuer_dn, request_id, profile, _utc(_ts(not_before)), _utc(_ts(not_after)),
                            "active", None, None, bytes(certificate_der))
        row = await self.by_request(request_id)
        if row is None:
            raise CAError(f"CA database lost the record of request {request_id!r}")
        return row

    async def by_request(self, request_id: str) -> IndexRow | None:
        r = await self._one(Q_BY_REQUEST, (request_id,))
        return IndexRow.from_sql(r) if r else None

    async def by_serial(self, serial_hex: str) -> IndexRow | None:
        r = await self._one(Q_BY_SERIAL, (serial_hex,))
        return IndexRow.from_sql(r) if r else None

    async def transition(self, serial_hex: str, *, from_status: str, to_status: str, reason: str | None,
                         at: _dt.datetime | None) -> bool:
        """Compare-and-set the status; False when the row was not in ``from_status``. A change counts in
        ``status_changes`` in the same transaction."""
        args = (to_status, reason, _ts(at) if at else None, serial_hex, from_status)

        def change(conn: sqlite3.Connection) -> int:
            n = conn.execute(Q_SET_STATUS, args).rowcount
            if n:
                conn.execute(Q_COUNT_CHANGE, (META_STATUS_CHANGES,))
            return n
        return await self._write(change) == 1

    async def status_changes(self) -> int:
        """How many status transitions this index has committed, by any process (0 before the first)."""
        r = await self._one(Q_GET_META, (META_STATUS_CHANGES,))
        return int(r[0]) if r else 0

    async def not_active(self) -> list[IndexRow]:
        return [IndexRow.from_sql(r) for r in await self._read(Q_NOT_ACTIVE, ())]

    async def next_crl_number(self) -> int:
        """Increment and return the CRL number (durable before the CRL is published): one upsert …
        RETURNING in the batch's transaction."""
        try:
            rows = await self._write(_fetchall(Q_NEXT_CRL_NUMBER, (META_CRL_NUMBER,)))
            return int(rows[0][0])
        except (IndexError, ValueError) as exc:
            raise CAError(f"CA database write failed: {exc}") from exc
