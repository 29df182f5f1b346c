"""The request store: SQLite (WAL) through aiosqlite. All SQL of the daemon lives here.

Narrow interface used by the broker::

    RequestStore.open(path, synchronous) / close()
    create_request(rec) -> bool          False when the id exists (nothing written)
    get_request(request_id) -> RequestRecord | None
    complete_request(request_id, issued, profile)   request ISSUED + certificate row, one transaction
    fail_request(request_id, code, field, message)
    get_certificate_status(ref) -> CertStatusInfo | None   (the embedded CA's registry)
    recent_issuance_stats(seconds) -> (count, mean_ms)

Writes go through one writer task that commits whatever is queued in a single
transaction (group commit: one fsync for many requests under load); reads use
a second connection, so they never see uncommitted rows. sqlite3 errors are
re-raised as ``StoreError``. Must not import grpc, proto or the CA.
"""
from __future__ import annotations

import asyncio
import datetime as _dt
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

import aiosqlite

from personalizer.ca.base import CertRef, CertState, CertStatusInfo, IssuedCertificate
from personalizer.errors import StoreError

SCHEMA_VERSION = 1
BUSY_TIMEOUT_MS = 5000

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS requests (
    request_id      TEXT PRIMARY KEY,
    kind            TEXT NOT NULL,
    profile         TEXT NOT NULL,
    payload_sha256  BLOB NOT NULL,
    chamber_code    TEXT NOT NULL,
    station_id      TEXT NOT NULL,
    operator_id     TEXT NOT NULL,
    state           TEXT NOT NULL,
    error_code      TEXT,
    error_field     TEXT,
    error_message   TEXT,
    issuer_dn       TEXT,
    serial_hex      TEXT,
    created_at      REAL NOT NULL,
    updated_at      REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS certificates (
    issuer_dn          TEXT NOT NULL,
    serial_hex         TEXT NOT NULL,
    request_id         TEXT NOT NULL REFERENCES requests(request_id),
    profile            TEXT NOT NULL,
    not_before         INTEGER NOT NULL,
    not_after          INTEGER NOT NULL,
    status             TEXT NOT NULL,
    revocation_reason  TEXT,
    revoked_at         INTEGER,
    certificate_der    BLOB NOT NULL,
    chain_der          BLOB NOT NULL,
    PRIMARY KEY (issuer_dn, serial_hex)
);
CREATE INDEX IF NOT EXISTS certificates_by_request ON certificates(request_id);
CREATE INDEX IF NOT EXISTS requests_by_update ON requests(state, updated_at);
"""

Q_INSERT_REQUEST = """INSERT OR IGNORE INTO requests
    (request_id, kind, profile, payload_sha256, chamber_code, station_id, operator_id, state, created_at, updated_at)
    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"""
Q_SELECT_REQUEST = """SELECT r.request_id, r.kind, r.profile, r.payload_sha256, r.chamber_code, r.station_id,
    r.operator_id, r.state, r.error_code, r.error_field, r.error_message, r.issuer_dn, r.serial_hex,
    r.created_at, r.updated_at, c.certificate_der, c.chain_der
    FROM requests r LEFT JOIN certificates c ON c.issuer_dn = r.issuer_dn AND c.serial_hex = r.serial_hex
    WHERE r.request_id = ?"""
Q_COMPLETE_REQUEST = """UPDATE requests SET state = 'ISSUED', issuer_dn = ?, serial_hex = ?, updated_at = ?
    WHERE request_id = ?"""
Q_INSERT_CERTIFICATE = """INSERT INTO certificates
    (issuer_dn, serial_hex, request_id, profile, not_before, not_after, status, certificate_der, chain_der)
    VALUES (?, ?, ?, ?, ?, ?, 'active', ?, ?)"""
Q_FAIL_REQUEST = """UPDATE requests SET state = 'FAILED', error_code = ?, error_field = ?, error_message = ?,
    updated_at = ? WHERE request_id = ?"""
Q_SELECT_CERTIFICATE = """SELECT issuer_dn, serial_hex, request_id, not_before, not_after, status,
    revocation_reason, revoked_at FROM certificates WHERE issuer_dn = ? AND serial_hex = ?"""
Q_ISSUANCE_STATS = """SELECT COUNT(*), AVG(updated_at - created_at) FROM requests
    WHERE state = 'ISSUED' AND updated_at >= ?"""

STATE_RECEIVED = "RECEIVED"
STATE_PENDING = "PENDING"
STATE_ISSUED = "ISSUED"
STATE_FAILED = "FAILED"
TERMINAL_STATES = (STATE_ISSUED, STATE_FAILED)
CHAIN_SEPARATOR_LEN = 4   # chain stored as length-prefixed DER blobs


@dataclass(frozen=True)
class RequestRecord:
    request_id: str
    kind: str
    profile: str
    payload_sha256: bytes
    chamber_code: str
    station_id: str
    operator_id: str
    state: str = STATE_RECEIVED
    error_code: str | None = None
    error_field: str | None = None
    error_message: str | None = None
    issuer_dn: str | None = None
    serial_hex: str | None = None
    created_at: float = 0.0
    updated_at: float = 0.0
    certificate_der: bytes | None = None
    chain_der: tuple[bytes, ...] = ()

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL_STATES


def _pack_chain(chain: tuple[bytes, ...]) -> bytes:
    return b"".join(len(c).to_bytes(CHAIN_SEPARATOR_LEN, "big") + c for c in chain)


def _unpack_chain(blob: bytes | None) -> tuple[bytes, ...]:
    out, pos = [], 0
    while blob and pos < len(blob):
        n = int.from_bytes(blob[pos:pos + CHAIN_SEPARATOR_LEN], "big")
        pos += CHAIN_SEPARATOR_LEN
        out.append(blob[pos:pos + n])
        pos += n
    return tuple(out)


def _utc(ts: int) -> _dt.datetime:
    return _dt.datetime.fromtimestamp(ts, _dt.timezone.utc)


class RequestStore:
    def __init__(self, writer: aiosqlite.Connection, reader: aiosqlite.Connection):
        self._w = writer
        self._r = reader
        self._queue: asyncio.Queue = asyncio.Queue()
        self._task = asyncio.create_task(self._writer_loop(), name="store-writer")
        self.commits = 0          # for the benchmark: transactions actually committed
        self.writes = 0

    @classmethod
    async def open(cls, path: Path, *, synchronous: str = "FULL") -> "RequestStore":
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            writer = await aiosqlite.connect(path, isolation_level=None)
            await writer.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            await writer.execute("PRAGMA journal_mode = WAL")
            await writer.execute(f"PRAGMA synchronous = {synchronous}")
            await writer.execute("PRAGMA foreign_keys = ON")
            await writer.executescript(SCHEMA)
            await writer.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('schema_version', ?)",
                                 (str(SCHEMA_VERSION),))
            reader = await aiosqlite.connect(path, isolation_level=None)
            await reader.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            await reader.execute("PRAGMA query_only = ON")
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open request store {path}: {exc}") from exc
        return cls(writer, reader)

    async def close(self) -> None:
        await self._queue.put(None)
        await self._task
        await self._r.close()
        await self._w.close()

    # -- group commit ---------------------------------------------------------

    async def _writer_loop(self) -> None:
        while True:
            item = await self._queue.get()
            batch = [item]
            while not self._queue.empty():
                batch.append(self._queue.get_nowait())
            stop = None in batch
            work = [b for b in batch if b is not None]
            if work:
                await self._commit(work)
            if stop:
                return

    async def _commit(self, work) -> None:
        results = []
        try:
            await self._w.execute("BEGIN IMMEDIATE")
            for statements, fut in work:
                try:
                    changed = 0
                    for sql, params in statements:
                        cur = await self._w.execute(sql, params)
                        changed += cur.rowcount
                    results.append((fut, changed, None))
                except sqlite3.Error as exc:
                    results.append((fut, 0, StoreError(f"write failed: {exc}")))
            await self._w.execute("COMMIT")
            self.commits += 1
            self.writes += len(work)
        except sqlite3.Error as exc:
            try:
                await self._w.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            for _, fut in work:
                if not fut.done():
                    fut.set_exception(StoreError(f"commit failed: {exc}"))
            return
        for fut, changed, err in results:
            if fut.done():
                continue
            if err is not None:
                fut.set_exception(err)
            else:
                fut.set_result(changed)

    async def _write(self, statements: list[tuple[str, tuple]]) -> int:
        fut = asyncio.get_running_loop().create_future()
        await self._queue.put((statements, fut))
        return await fut

    # -- interface -------------------------------------------------------------

    async def create_request(self, rec: RequestRecord) -> bool:
        now = time.time()
        changed = await self._write([(Q_INSERT_REQUEST, (
            rec.request_id, rec.kind, rec.profile, rec.payload_sha256, rec.chamber_code, rec.station_id,
            rec.operator_id, STATE_RECEIVED, now, now))])
        return changed == 1

    async def get_request(self, request_id: str) -> RequestRecord | None:
        try:
            async with self._r.execute(Q_SELECT_REQUEST, (request_id,)) as cur:
                row = await cur.fetchone()
        except sqlite3.Error as exc:
            raise StoreError(f"read failed: {exc}") from exc
        if row is None:
            return None
        return RequestRecord(*row[:15], certificate_der=row[15], chain_der=_unpack_chain(row[16]))

    async def complete_request(self, request_id: str, issued: IssuedCertificate, profile: str) -> None:
        await self._write([
            (Q_INSERT_CERTIFICATE, (issued.ref.issuer_dn, issued.ref.serial_hex, request_id, profile,
                                    int(issued.not_before.timestamp()), int(issued.not_after.timestamp()),
                                    issued.certificate_der, _pack_chain(issued.chain_der))),
            (Q_COMPLETE_REQUEST, (issued.ref.issuer_dn, issued.ref.serial_hex, time.time(), request_id)),
        ])

    async def fail_request(self, request_id: str, code: str, field: str, message: str) -> None:
        await self._write([(Q_FAIL_REQUEST, (code, field, message, time.time(), request_id))])

    async def get_certificate_status(self, ref: CertRef) -> CertStatusInfo | None:
        try:
            async with self._r.execute(Q_SELECT_CERTIFICATE, (ref.issuer_dn, ref.serial_hex.upper())) as cur:
                row = await cur.fetchone()
        except sqlite3.Error as exc:
            raise StoreError(f"read failed: {exc}") from exc
        if row is None:
            return None
        return CertStatusInfo(CertRef(row[0], row[1]), CertState(row[5]), _utc(row[3]), _utc(row[4]), row[2],
                              row[6] or "", _utc(row[7]) if row[7] else None)

    async def recent_issuance_stats(self, seconds: float) -> tuple[int, float]:
        async with self._r.execute(Q_ISSUANCE_STATS, (time.time() - seconds,)) as cur:
            count, mean = await cur.fetchone()
        return int(count or 0), float(mean or 0.0) * 1000.0
