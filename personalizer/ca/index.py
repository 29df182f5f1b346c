"""The embedded CA's own database (``ca.db``): certificate index, revocations, CRL numbers.

A CA owns its records, so the embedded CA keeps them next to its keys rather
than in the daemon's request store. SQLite in WAL mode with synchronous=FULL,
reached through aiosqlite on one connection (one writer; statements are
serialised by aiosqlite's worker thread). Every SQL statement of the CA lives
in this module. ``sqlite3`` errors are re-raised as ``CAError``.

Rows::

    certificates(serial_hex PK, issuer_dn, request_id UNIQUE, profile, not_before, not_after,
                 status ∈ {active, suspended, revoked}, revocation_reason, revoked_at, certificate_der)
    meta(key PK, value)      crl_number

``request_id`` is UNIQUE: the index itself refuses a second certificate for
one request. Must not import grpc, proto, the store or the broker.
"""
from __future__ import annotations

import datetime as _dt
import sqlite3
from dataclasses import dataclass
from pathlib import Path

import aiosqlite

from personalizer.errors import CAError

DB_NAME = "ca.db"
SCHEMA_VERSION = 1
BUSY_TIMEOUT_MS = 5000
MEMORY = ":memory:"

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


class CertificateIndex:
    """Open with ``await CertificateIndex.open(path_or_MEMORY)``; close with ``await close()``."""

    def __init__(self, conn: aiosqlite.Connection, path: str):
        self._conn = conn
        self.path = path

    @classmethod
    async def open(cls, path: Path | str) -> "CertificateIndex":
        target = str(path)
        try:
            if target != MEMORY:
                Path(target).parent.mkdir(parents=True, exist_ok=True)
            conn = await aiosqlite.connect(target, isolation_level=None)
            await conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            await conn.execute("PRAGMA journal_mode = WAL")
            await conn.execute("PRAGMA synchronous = FULL")
            await conn.executescript(SCHEMA)
            await conn.execute("INSERT OR IGNORE INTO meta (key, value) VALUES (?, ?)",
                               (META_SCHEMA, str(SCHEMA_VERSION)))
        except (sqlite3.Error, OSError) as exc:
            raise CAError(f"cannot open the CA database {target}: {exc}") from exc
        return cls(conn, target)

    async def close(self) -> None:
        await self._conn.close()

    async def _one(self, sql: str, args: tuple) -> tuple | None:
        # execute + fetch in ONE call on the connection's thread: a cursor fetched in several calls
        # keeps a read transaction open, and statements queued in between would run inside it.
        try:
            rows = await self._conn.execute_fetchall(sql, args)
            return rows[0] if rows else None
        except sqlite3.Error as exc:
            raise CAError(f"CA database read failed: {exc}") from exc

    async def record(self, *, serial_hex: str, issuer_dn: str, request_id: str, profile: str,
                     not_before: _dt.datetime, not_after: _dt.datetime, certificate_der: bytes) -> IndexRow:
        """Record an issued certificate; if ``request_id`` already has one, return that one instead."""
        try:
            cur = await self._conn.execute(Q_INSERT, (serial_hex, issuer_dn, request_id, profile, _ts(not_before),
                                                      _ts(not_after), certificate_der))
            inserted = cur.rowcount == 1   # an INSERT runs to completion: no read transaction stays open
        except sqlite3.Error as exc:
            raise CAError(f"CA database write failed: {exc}") from exc
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
        """Compare-and-set the status; False when the row was not in ``from_status``."""
        try:
            cur = await self._conn.execute(Q_SET_STATUS, (to_status, reason, _ts(at) if at else None,
                                                          serial_hex, from_status))
            return cur.rowcount == 1
        except sqlite3.Error as exc:
            raise CAError(f"CA database write failed: {exc}") from exc

    async def not_active(self) -> list[IndexRow]:
        try:
            return [IndexRow.from_sql(r) for r in await self._conn.execute_fetchall(Q_NOT_ACTIVE, ())]
        except sqlite3.Error as exc:
            raise CAError(f"CA database read failed: {exc}") from exc

    async def next_crl_number(self) -> int:
        """Increment and return the CRL number (durable before the CRL is published).

        One statement (upsert … RETURNING): atomic on its own, so no explicit transaction is
        held open on the shared connection while other coroutines' statements interleave.
        """
        try:
            rows = await self._conn.execute_fetchall(Q_NEXT_CRL_NUMBER, (META_CRL_NUMBER,))
            return int(rows[0][0])
        except (sqlite3.Error, IndexError, ValueError) as exc:
            raise CAError(f"CA database write failed: {exc}") from exc
