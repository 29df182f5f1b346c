"""The embedded CA's certificate index (SQLite): certificates, revocations, CRL numbers.

A CA owns its records. Two layouts, one code: the CA's own file ``ca.db`` (tables ``certificates``,
``meta``; ``CertificateIndex.open``: a CA used on its own, and older deployments), or the CA's tables
inside the SQLite request store's file (``ca_certificates``, ``ca_meta``; ``open_in_store``, what the
daemon uses since issue 16). In the store's file the index is ``recorded_by_store``: the store's
``complete_issue`` writes each certificate's row (``record_statement``) in the request's own
transaction, so an issuance is ONE commit (one fsync) instead of two on two files, and the request is
ISSUED exactly when the CA's record of its certificate exists. An existing ``ca.db`` is imported into
the store's file once, atomically, on open (``_import_ca_db``); serial numbers stay unique (PRIMARY
KEY), the CRL number and the count of status changes continue from ca.db's.

SQLite in WAL mode with synchronous=FULL, on one connection owned by one thread (``_Connection``):
every call is one hand-off to it, and the calls queued while it works run as one batch, the writes
among them in ONE transaction (group commit: each write in its own savepoint, committed before any of
them returns). With ``shared`` (several daemon processes on the file) each write transaction holds
``guard.WriteLock`` (in the store's file: the store's own write lock file). Every SQL statement of the
CA lives in this module (``_Sql``). ``sqlite3`` errors are re-raised as ``CAError``.

Rows::

    certificates(serial_hex PK, issuer_dn, request_id UNIQUE, profile, not_before, not_after,
                 status ∈ {active, suspended, revoked}, revocation_reason, revoked_at, certificate_der)
    meta(key PK, value)      crl_number, status_changes (one more with every status transition, in its
                             transaction: the CRL publisher's cheap "did anything change?" across processes),
                             imported_ca_db (in the store's file: ca.db was imported)

``request_id`` is UNIQUE: the index itself refuses a second certificate for
one request. ``CAIndex`` is the protocol every index implements (this one,
``index_postgres.PgCertificateIndex``); each declares ``recorded_by_store``:
whether the request store writes the CA's row of a certificate in the request's
own transaction (then the CA does not record it). Must not import
grpc, proto, the store or the broker.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import datetime as _dt
import logging
import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

from personalizer.errors import CAError
from personalizer.guard import WriteLock

log = logging.getLogger(__name__)

DB_NAME = "ca.db"
SCHEMA_VERSION = 1
BUSY_TIMEOUT_MS = 5000
MEMORY = ":memory:"
WRITE_LOCK_SUFFIX = ".writelock"

STATUS_ACTIVE = "active"
STATUS_SUSPENDED = "suspended"
STATUS_REVOKED = "revoked"

# The two layouts: ``ca.db`` (the CA's own file: certificates, meta) and the CA's tables inside the SQLite
# request store's file (ca_certificates, ca_meta: the store has tables of its own named certificates and meta).
CA_DB_TABLES = ("certificates", "meta")
IN_STORE_TABLES = ("ca_certificates", "ca_meta")

_COLUMNS = ("serial_hex, issuer_dn, request_id, profile, not_before, not_after, status, revocation_reason, "
            "revoked_at, certificate_der")
META_CRL_NUMBER = "crl_number"
META_STATUS_CHANGES = "status_changes"
META_SCHEMA = "schema_version"
META_IMPORTED = "imported_ca_db"   # in the store's file: when and from where ca.db was imported (once)
IMPORTED_SUFFIX = ".imported"      # ca.db is renamed ca.db.imported once its rows are in the store's file


class _Sql:
    """Every statement of the index for one layout (``CA_DB_TABLES`` or ``IN_STORE_TABLES``)."""

    def __init__(self, tables: tuple[str, str]):
        certs, meta = tables
        self.tables = tables
        self.schema = f"""
CREATE TABLE IF NOT EXISTS {meta} (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS {certs} (
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
CREATE INDEX IF NOT EXISTS {certs}_revoked ON {certs}(status) WHERE status != 'active';
"""
        self.insert = (f"INSERT OR IGNORE INTO {certs} ({_COLUMNS}) "
                       f"VALUES (?, ?, ?, ?, ?, ?, 'active', NULL, NULL, ?)")
        # the row the request store writes in complete_issue's transaction (in-store layout): a re-run with the
        # same serial writes nothing; another serial for a request that has one fails request_id UNIQUE (and
        # with it the whole completing transaction: the certificate recorded first is kept)
        self.insert_by_serial = (f"INSERT INTO {certs} ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, 'active', NULL, NULL, ?) "
                                 f"ON CONFLICT(serial_hex) DO NOTHING")
        self.by_request = f"SELECT {_COLUMNS} FROM {certs} WHERE request_id = ?"
        self.by_serial = f"SELECT {_COLUMNS} FROM {certs} WHERE serial_hex = ?"
        self.set_status = (f"UPDATE {certs} SET status = ?, revocation_reason = ?, revoked_at = ? "
                           f"WHERE serial_hex = ? AND status = ?")
        self.not_active = f"SELECT {_COLUMNS} FROM {certs} WHERE status != 'active' ORDER BY revoked_at, serial_hex"
        self.get_meta = f"SELECT value FROM {meta} WHERE key = ?"
        self.put_meta_if_new = f"INSERT OR IGNORE INTO {meta} (key, value) VALUES (?, ?)"
        self.next_crl_number = (f"INSERT INTO {meta} (key, value) VALUES (?, '1') ON CONFLICT(key) DO UPDATE "
                                f"SET value = CAST(CAST(value AS INTEGER) + 1 AS TEXT) RETURNING value")
        self.count_change = (f"INSERT INTO {meta} (key, value) VALUES (?, '1') ON CONFLICT(key) DO UPDATE "
                             f"SET value = CAST(CAST(value AS INTEGER) + 1 AS TEXT)")


CA_DB_SQL = _Sql(CA_DB_TABLES)
IN_STORE_SQL = _Sql(IN_STORE_TABLES)
SCHEMA = CA_DB_SQL.schema


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


def _import_ca_db(conn: sqlite3.Connection, sql: "_Sql", old: Path) -> None:
    """Once per store file: the rows of an older deployment's ``ca.db`` (certificates, CRL number, count of
    status changes) copied into the store's CA tables in ONE transaction with the mark that says so, then
    ``ca.db`` renamed ``ca.db.imported`` (kept, never read again). A crash before the commit leaves nothing
    half-copied (the next open imports again); after it, the mark makes the next open only finish the rename."""
    if not old.exists():
        return
    if conn.execute(sql.get_meta, (META_IMPORTED,)).fetchone() is None:
        conn.execute("ATTACH DATABASE ? AS old", (str(old),))
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                if conn.execute(sql.get_meta, (META_IMPORTED,)).fetchone() is None:   # not by another process meanwhile
                    _copy_rows(conn, sql, old)
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        finally:
            conn.execute("DETACH DATABASE old")
        _move_aside(old)
    elif not old.with_name(old.name + IMPORTED_SUFFIX).exists():   # imported, then a crash before the rename
        _move_aside(old)
    else:   # a ca.db put back after the import (a restored backup?): never merged twice, never overwritten
        log.warning("%s is not imported again: the store's CA tables already hold an import (%s); "
                    "the CA reads the store's file only", old, conn.execute(sql.get_meta, (META_IMPORTED,)).fetchone()[0])


def _move_aside(old: Path) -> None:
    os.replace(old, old.with_name(old.name + IMPORTED_SUFFIX))
    for side in ("-wal", "-shm"):   # empty once the last connection to ca.db closed (WAL checkpointed)
        extra = old.with_name(old.name + side)
        if extra.exists() and extra.stat().st_size == 0:
            extra.unlink()


def _copy_rows(conn: sqlite3.Connection, sql: "_Sql", old: Path) -> None:
    certs, meta = sql.tables
    tables = {r[0] for r in conn.execute("SELECT name FROM old.sqlite_master WHERE type = 'table'")}
    if {"certificates", "meta"} <= tables:
        conn.execute(f"INSERT OR IGNORE INTO {certs} ({_COLUMNS}) SELECT {_COLUMNS} FROM old.certificates")
        clashing = conn.execute(f"""SELECT count(*) FROM old.certificates o LEFT JOIN {certs} n
            ON n.serial_hex = o.serial_hex AND n.request_id = o.request_id WHERE n.serial_hex IS NULL""").fetchone()[0]
        if clashing:
            raise CAError(f"cannot import {old}: {clashing} of its certificates clash with ones already in the store's "
                          f"CA tables (same serial or request, other certificate); move {old} away and restart")
        for key, combine in ((META_CRL_NUMBER, "MAX"), (META_STATUS_CHANGES, "SUM")):
            row = conn.execute("SELECT value FROM old.meta WHERE key = ?", (key,)).fetchone()
            if row is None:
                continue
            mine = conn.execute(sql.get_meta, (key,)).fetchone()
            value = int(row[0]) if mine is None else (max(int(row[0]), int(mine[0])) if combine == "MAX"
                                                      else int(row[0]) + int(mine[0]))
            conn.execute(f"INSERT INTO {meta} (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE "
                         f"SET value = excluded.value", (key, str(value)))
    conn.execute(sql.put_meta_if_new, (META_IMPORTED, f"{old} at {_dt.datetime.now(_dt.timezone.utc).isoformat()}"))


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
    async def open(cls, target: str, shared: bool, sql: "_Sql" = CA_DB_SQL,
                   import_from: Path | None = None) -> "_Connection":
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
                    conn.executescript(sql.schema)
                    conn.execute(sql.put_meta_if_new, (META_SCHEMA, str(SCHEMA_VERSION)))
                    if import_from is not None:
                        _import_ca_db(conn, sql, import_from)
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
    """Open with ``await CertificateIndex.open(path_or_MEMORY)``; close with ``await close()``.

    ``in_store`` (``open_in_store``): the CA's tables inside the SQLite request store's file; the store's
    ``complete_issue`` writes each certificate's row (``record_statement``) in the request's own
    transaction, so ``recorded_by_store`` is True and the CA neither records nor commits per certificate."""

    recorded_by_store = False   # ca.db: the CA records every certificate here itself (CAIndex)

    def __init__(self, conn: _Connection, path: str, sql: _Sql = CA_DB_SQL):
        self._conn = conn
        self.path = path
        self._sql = sql
        self.recorded_by_store = sql is IN_STORE_SQL

    @classmethod
    async def open(cls, path: Path | str, *, shared: bool = False) -> "CertificateIndex":
        """``shared``: other processes of this daemon write the same file (their writes queue on a flock)."""
        return await cls._open(str(path), shared, CA_DB_SQL, None)

    @classmethod
    async def open_in_store(cls, store_path: Path | str, *, shared: bool = False,
                            import_from: Path | None = None) -> "CertificateIndex":
        """The index in the SQLite request store's file (its tables ``IN_STORE_TABLES``). ``import_from``:
        an older deployment's ``ca.db``, imported once (``_import_ca_db``) if it is there."""
        return await cls._open(str(store_path), shared, IN_STORE_SQL, Path(import_from) if import_from else None)

    @classmethod
    async def _open(cls, target: str, shared: bool, sql: _Sql, import_from: Path | None) -> "CertificateIndex":
        try:
            if target != MEMORY:
                Path(target).parent.mkdir(parents=True, exist_ok=True)
            conn = await _Connection.open(target, shared, sql, import_from)
        except (sqlite3.Error, OSError) as exc:
            raise CAError(f"cannot open the CA database {target}: {exc}") from exc
        return cls(conn, target, sql)

    def record_statement(self, *, serial_hex: str, issuer_dn: str, request_id: str, profile: str,
                         not_before: _dt.datetime, not_after: _dt.datetime,
                         certificate_der: bytes) -> tuple[str, tuple]:
        """The statement recording an issued certificate, for the store to run in its own transaction."""
        return self._sql.insert_by_serial, (serial_hex, issuer_dn, request_id, profile, _ts(not_before),
                                            _ts(not_after), certificate_der)

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
        inserted = await self._write(_rowcount(self._sql.insert, (serial_hex, issuer_dn, request_id, profile,
                                                          _ts(not_before), _ts(not_after), certificate_der))) == 1
        if inserted:   # the row is exactly what was written (timestamps at the stored one-second precision)
            return IndexRow(serial_hex, issuer_dn, request_id, profile, _utc(_ts(not_before)), _utc(_ts(not_after)),
                            "active", None, None, bytes(certificate_der))
        row = await self.by_request(request_id)
        if row is None:
            raise CAError(f"CA database lost the record of request {request_id!r}")
        return row

    async def by_request(self, request_id: str) -> IndexRow | None:
        r = await self._one(self._sql.by_request, (request_id,))
        return IndexRow.from_sql(r) if r else None

    async def by_serial(self, serial_hex: str) -> IndexRow | None:
        r = await self._one(self._sql.by_serial, (serial_hex,))
        return IndexRow.from_sql(r) if r else None

    async def transition(self, serial_hex: str, *, from_status: str, to_status: str, reason: str | None,
                         at: _dt.datetime | None) -> bool:
        """Compare-and-set the status; False when the row was not in ``from_status``. A change counts in
        ``status_changes`` in the same transaction."""
        args = (to_status, reason, _ts(at) if at else None, serial_hex, from_status)
        q = self._sql

        def change(conn: sqlite3.Connection) -> int:
            n = conn.execute(q.set_status, args).rowcount
            if n:
                conn.execute(q.count_change, (META_STATUS_CHANGES,))
            return n
        return await self._write(change) == 1

    async def status_changes(self) -> int:
        """How many status transitions this index has committed, by any process (0 before the first)."""
        r = await self._one(self._sql.get_meta, (META_STATUS_CHANGES,))
        return int(r[0]) if r else 0

    async def not_active(self) -> list[IndexRow]:
        return [IndexRow.from_sql(r) for r in await self._read(self._sql.not_active, ())]

    async def next_crl_number(self) -> int:
        """Increment and return the CRL number (durable before the CRL is published): one upsert …
        RETURNING in the batch's transaction."""
        try:
            rows = await self._write(_fetchall(self._sql.next_crl_number, (META_CRL_NUMBER,)))
            return int(rows[0][0])
        except (IndexError, ValueError) as exc:
            raise CAError(f"CA database write failed: {exc}") from exc
