"""The embedded CA's index in PostgreSQL: the same interface as ``index.CertificateIndex``, replicated.

With ``[store] backend = "postgresql"`` both personalizer sites use this one: a site that takes over
continues the CRL number sequence (``ca_crl_numbers``, incremented in the transaction that returns it),
counts every status transition (``ca_status_changes``, migration ``0003``) so each site's and process's
CRL publisher follows revocations made elsewhere,
and can never record a serial twice (``ca_certificates.serial_hex`` PRIMARY KEY) or two certificates for
one request (``request_id`` UNIQUE). Its tables come from the store's migration ``0002_ca_index``
(``open`` expects them: the store opens first, or pass ``migrate=``).

With ``recorded_by_store`` (the daemon's composition: the index shares the request store's database) the
embedded CA does not record a certificate itself: the PostgreSQL store's ``complete_issue`` writes this
index's row (``record_statement``) in the request's own transaction, so an issuance commits (and waits
for the synchronous standby) once instead of twice, and the request is ISSUED exactly when the CA's
record of its certificate exists. That row is inserted if its serial is new (a re-run of the same
transaction writes nothing twice) and refused, failing the whole transaction, when the request already has a
certificate with another serial (``request_id`` UNIQUE): the store keeps the one certificate recorded first.

Every statement is idempotent under ``pg.Database.run``'s retry after a lost connection: ``record`` is an
insert-if-absent by request id, ``transition`` a compare-and-set, and a CRL number handed out by a
transaction whose commit was lost is skipped (CRL numbers must increase; gaps are allowed, RFC 5280
§5.2.3). Must not import grpc, proto, the store or the broker.
"""
from __future__ import annotations

import datetime as _dt

from personalizer.ca.index import IndexRow, _ts, _utc
from personalizer.errors import CAError
from personalizer.pg import Database

_COLUMNS = ("serial_hex, issuer_dn, request_id, profile, not_before, not_after, status, revocation_reason, "
            "revoked_at, certificate_der")
Q_INSERT = f"""INSERT INTO ca_certificates ({_COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s, 'active', NULL, NULL, %s)
    ON CONFLICT (request_id) DO NOTHING"""
# the row written by the store's complete_issue (recorded_by_store): a re-run (same serial) does nothing; another
# serial for a request that already has one violates request_id UNIQUE and fails the transaction
Q_INSERT_BY_SERIAL = f"""INSERT INTO ca_certificates ({_COLUMNS})
    VALUES (%s, %s, %s, %s, %s, %s, 'active', NULL, NULL, %s) ON CONFLICT (serial_hex) DO NOTHING"""
Q_BY_REQUEST = f"SELECT {_COLUMNS} FROM ca_certificates WHERE request_id = %s"
Q_BY_SERIAL = f"SELECT {_COLUMNS} FROM ca_certificates WHERE serial_hex = %s"
# the compare-and-set and its count in ONE statement (a data-modifying CTE): the counter row is written only
# when the status moved, so the cursor's rowcount is 1 for a change and 0 for a refused compare-and-set
Q_SET_STATUS = """WITH changed AS (
        UPDATE ca_certificates SET status = %s, revocation_reason = %s, revoked_at = %s
        WHERE serial_hex = %s AND status = %s RETURNING 1)
    INSERT INTO ca_status_changes (issuer_key, changes) SELECT %s, 1 FROM changed
    ON CONFLICT (issuer_key) DO UPDATE SET changes = ca_status_changes.changes + 1"""
Q_STATUS_CHANGES = "SELECT changes FROM ca_status_changes WHERE issuer_key = %s"
Q_NOT_ACTIVE = f"SELECT {_COLUMNS} FROM ca_certificates WHERE status <> 'active' ORDER BY revoked_at, serial_hex"
Q_NEXT_CRL_NUMBER = """INSERT INTO ca_crl_numbers (issuer_key, last_number) VALUES (%s, 1)
    ON CONFLICT (issuer_key) DO UPDATE SET last_number = ca_crl_numbers.last_number + 1 RETURNING last_number"""
CRL_KEY = "embedded"


class PgCertificateIndex:
    """``await PgCertificateIndex.open(dsn)`` (or ``over(database)`` to share the store's pool)."""

    path = "postgresql"
    recorded_by_store: bool = False   # ca.index.CAIndex: set per composition (``over``)

    def __init__(self, db: Database, owned: bool, recorded_by_store: bool = False):
        self._db = db
        self._owned = owned
        self.recorded_by_store = recorded_by_store

    @classmethod
    async def open(cls, dsn: str, *, migrate=None, failover_timeout: float | None = None) -> "PgCertificateIndex":
        extra = {"failover_timeout": failover_timeout} if failover_timeout else {}
        return cls(await Database.open(dsn, error_cls=CAError, max_size=4, migrate=migrate, **extra), owned=True)

    @classmethod
    def over(cls, db: Database, *, recorded_by_store: bool = False) -> "PgCertificateIndex":
        """The index on the store's pool. ``recorded_by_store``: the store's ``complete_issue`` writes each
        certificate's row (``record_statement``) and the CA does not (see the module's docstring)."""
        return cls(db, owned=False, recorded_by_store=recorded_by_store)

    @staticmethod
    def record_statement(*, serial_hex: str, issuer_dn: str, request_id: str, profile: str,
                         not_before: _dt.datetime, not_after: _dt.datetime,
                         certificate_der: bytes) -> tuple[str, tuple]:
        """The statement that records an issued certificate, for the store to run in its own transaction."""
        return Q_INSERT_BY_SERIAL, (serial_hex, issuer_dn, request_id, profile, _ts(not_before), _ts(not_after),
                                    certificate_der)

    async def close(self) -> None:
        if self._owned:
            await self._db.close()

    async def _rows(self, sql: str, args: tuple, *, write: bool = False) -> list[tuple]:
        """One statement; a read runs without BEGIN/COMMIT (one round trip)."""
        async def go(conn):
            cur = await conn.execute(sql, args)
            return await cur.fetchall()
        if write:
            return await self._db.run(go, what="the CA index", pipeline=True)
        return await self._db.read(go, what="the CA index")

    async def record(self, *, serial_hex: str, issuer_dn: str, request_id: str, profile: str,
                     not_before: _dt.datetime, not_after: _dt.datetime, certificate_der: bytes) -> IndexRow:
        """Record an issued certificate; if ``request_id`` already has one, return that one instead."""
        cursors = await self._db.write([   # one transaction, shared with concurrent writers (group commit)
            (Q_INSERT, (serial_hex, issuer_dn, request_id, profile, _ts(not_before), _ts(not_after),
                        certificate_der)),
            (Q_BY_REQUEST, (request_id,))], what="the CA index")
        row = await cursors[1].fetchone()   # already received
        if row is None:
            raise CAError(f"CA database lost the record of request {request_id!r}")
        return IndexRow.from_sql(row)

    async def by_request(self, request_id: str) -> IndexRow | None:
        rows = await self._rows(Q_BY_REQUEST, (request_id,))
        return IndexRow.from_sql(rows[0]) if rows else None

    async def by_serial(self, serial_hex: str) -> IndexRow | None:
        rows = await self._rows(Q_BY_SERIAL, (serial_hex,))
        return IndexRow.from_sql(rows[0]) if rows else None

    async def transition(self, serial_hex: str, *, from_status: str, to_status: str, reason: str | None,
                         at: _dt.datetime | None) -> bool:
        """Compare-and-set the status; False when the row was not in ``from_status``."""
        cursors = await self._db.write([(Q_SET_STATUS, (to_status, reason, _ts(at) if at else None, serial_hex,
                                                         from_status, CRL_KEY))], what="the CA index")
        return cursors[0].rowcount == 1

    async def status_changes(self) -> int:
        """How many status transitions this index has committed, by any process or site (0 before the first):
        the CRL publisher's cheap "did anything change?" (``EmbeddedCA.revocation_version``)."""
        rows = await self._rows(Q_STATUS_CHANGES, (CRL_KEY,))
        return int(rows[0][0]) if rows else 0

    async def not_active(self) -> list[IndexRow]:
        return [IndexRow.from_sql(r) for r in await self._rows(Q_NOT_ACTIVE, ())]

    async def next_crl_number(self) -> int:
        """Increment and return the CRL number; durable (and on the synchronous standby) before it is used."""
        rows = await self._rows(Q_NEXT_CRL_NUMBER, (CRL_KEY,), write=True)
        return int(rows[0][0])
