"""The PostgreSQL request store: ``RequestStore`` and ``StationStore`` over a replicated database (issue 17).

``[store] backend = "postgresql"``: both personalizer sites open this store on one Patroni-managed
database through a DSN listing both sites (``target_session_attrs=read-write``); ``personalizer.pg``
follows the primary across a failover. The schema is ``migrations/postgresql`` (applied at open, once,
under an advisory lock).

Every method is ONE transaction (request + outbox + audit rows together, or none); the one-shot writes
(``_exec``) share their transaction with concurrent callers' (``Database.write``, group commit) and reads
run without BEGIN/COMMIT. ``claim_due`` selects
with ``FOR UPDATE SKIP LOCKED``: two daemons on one database never claim one row, and neither waits for
the other's claim. A transaction whose connection broke is run again on the new primary (``pg.Database``),
so every write is idempotent: intake is insert-if-absent by request id (a retry whose first attempt did
commit answers "exists", which the broker already treats as a client's retry), the others are
compare-and-set updates by request id or inserts with ``ON CONFLICT DO NOTHING``. Where the SQLite store
chains statements with ``changes() = 1``, this one tests the row count in Python.

When the daemon's embedded CA keeps its index here (``ca_record_statement``, set by the composition root),
``complete_issue`` also writes the CA's record of the certificate, in the same statement: one commit (one
wait for the synchronous standby) per issuance, and a second certificate for a request is refused.

Statements identical in both dialects are taken from ``sql.py`` (placeholders converted); only the
dialect-specific ones are written here. Row decoding and the audit parameters are the SQLite store's.
Imports psycopg (through ``pg``), ``records``, ``sql``, ``sqlite``'s row helpers, ``ca.base`` and the rules'
key fingerprint; must not import grpc, proto, the outbox or the CA's implementations.
"""
from __future__ import annotations

import datetime as _dt
import time

from personalizer.ca.base import CertRef, CertState, CertStatusInfo, IssuedCertificate
from personalizer.errors import StoreError
from psycopg import errors as pgerrors

from personalizer.pg import Database
from personalizer.records import (LANE_PRIORITY, LANES, MAX_ERROR_TEXT, STATE_DONE, STATE_ISSUED, STATE_PENDING,
                                  STATE_RECEIVED, AuditEntry, CertificateRow, Claimed, FoundCertificate, HolderRecord,
                                  KeyAlreadyCertified, KeyBinding, OutboxPayload, RequestRecord, StockEntry,
                                  stock_balance)
from personalizer.rules.registrations import Registration
from personalizer.rules.validation import certificate_key_sha256
from personalizer.store import sql as q
from personalizer.store.migrations import migrate_postgresql
from personalizer.store.sqlite import _audit_entry, _audit_params, _pack_chain, _record, _unpack_chain, _utc


def pg(statement: str) -> str:
    """A statement of ``sql.py`` that is portable but for its ``?`` placeholders."""
    return statement.replace("%", "%%").replace("?", "%s")


_AUDIT_COLUMNS = q._AUDIT_COLUMNS
_AUDIT_VALUES = pg(q._AUDIT_VALUES)
Q_INSERT_AUDIT = f"INSERT INTO audit ({_AUDIT_COLUMNS}) VALUES ({_AUDIT_VALUES})"
Q_INSERT_REQUEST = pg(q.Q_INSERT_REQUEST.replace("INSERT OR IGNORE", "INSERT")) + " ON CONFLICT (request_id) DO NOTHING"
Q_INSERT_OUTBOX = """INSERT INTO outbox (request_id, lane, kind, payload, status, attempts, next_attempt_at, updated_at)
    VALUES (%s, %s, %s, %s, 'queued', 0, %s, %s)"""
Q_ENSURE_OUTBOX = Q_INSERT_OUTBOX + " ON CONFLICT (request_id) DO NOTHING"
Q_FREE_KEY = pg(q.Q_FREE_KEY)
Q_BIND_KEY = """INSERT INTO certified_keys (key_sha256, holder_cf, profile, request_id, bound_at)
    VALUES (%s, %s, %s, %s, %s)"""
Q_BIND_ISSUED_KEY = Q_BIND_KEY + " ON CONFLICT (key_sha256) DO NOTHING"
# Pick and lock due rows, skipping rows another daemon has locked (it is claiming them), claim them, mark their
# requests PENDING and return what the delivery needs: ONE statement, one round trip for the whole batch.
# The CTEs share one snapshot, so the requests' new state and time come from the UPDATE's RETURNING.
Q_CLAIM_DUE = """WITH due AS (
        SELECT request_id FROM outbox WHERE status IN ('queued', 'retry') AND lane = ANY(%(lanes)s)
        AND next_attempt_at <= %(now)s
        ORDER BY CASE lane WHEN 'priority' THEN 0 ELSE 1 END, next_attempt_at LIMIT %(limit)s
        FOR UPDATE SKIP LOCKED),
    claimed AS (
        UPDATE outbox o SET status = 'sending', attempts = o.attempts + 1, updated_at = %(now)s,
            claimed_by = %(claimer)s
        FROM due WHERE o.request_id = due.request_id
        RETURNING o.request_id, o.lane, o.kind, o.payload, o.status, o.attempts, o.next_attempt_at, o.last_error),
    pending AS (
        UPDATE requests r SET state = 'PENDING', updated_at = %(now)s
        FROM claimed WHERE r.request_id = claimed.request_id AND r.state = 'RECEIVED'
        RETURNING r.request_id, r.state, r.updated_at)
    SELECT r.request_id, r.kind, r.profile, r.payload_sha256, r.chamber_code, r.station_id,
        r.operator_id, COALESCE(p.state, r.state), r.error_code, r.error_field, r.error_message, r.issuer_dn,
        r.serial_hex, r.created_at, COALESCE(p.updated_at, r.updated_at), c.certificate_der, c.chain_der,
        o.lane, o.status, o.attempts, o.next_attempt_at, o.last_error, o.kind, o.payload
    FROM claimed o JOIN requests r ON r.request_id = o.request_id
    LEFT JOIN pending p ON p.request_id = o.request_id
    LEFT JOIN certificates c ON c.issuer_dn = r.issuer_dn AND c.serial_hex = r.serial_hex"""
Q_NEXT_DUE = "SELECT MIN(next_attempt_at) FROM outbox WHERE status IN ('queued', 'retry') AND lane = ANY(%s)"
Q_RECLAIM_STALE = """UPDATE outbox SET status = 'retry', next_attempt_at = %s, last_error = %s, updated_at = %s
    WHERE status = 'sending' AND updated_at < %s AND request_id <> ALL(%s)"""
Q_RENEW_CLAIMS = """UPDATE outbox SET updated_at = %s WHERE status = 'sending' AND claimed_by = %s
    AND request_id = ANY(%s)"""
Q_RELEASE_CLAIM = pg(q.Q_RELEASE_CLAIM.replace("MAX(attempts - 1, 0)", "GREATEST(attempts - 1, 0)"))
Q_INSERT_CERTIFICATE = pg(q.Q_INSERT_CERTIFICATE.replace("INSERT OR IGNORE", "INSERT")) + " ON CONFLICT DO NOTHING"
Q_INSERT_MAINTENANCE = """INSERT INTO maintenance (id, starts_at, ends_at, reason, source) VALUES (%s, %s, %s, %s, %s)
    ON CONFLICT (id) DO UPDATE SET starts_at = excluded.starts_at, ends_at = excluded.ends_at,
    reason = excluded.reason, source = excluded.source"""
Q_INSERT_STOCK = pg(q.Q_INSERT_STOCK) + " RETURNING seq, at, chamber_code, device_model, quantity, actor, note"
Q_STOCK_USED = """SELECT r.chamber_code, COALESCE(json_or_null(o.payload) ->> 'card_model', ''),
    COUNT(DISTINCT c.card_id) FROM requests r
    JOIN certificates c ON c.request_id = r.request_id LEFT JOIN outbox o ON o.request_id = r.request_id
    WHERE r.kind = 'issue' AND r.state = 'ISSUED' AND c.card_id IS NOT NULL AND r.updated_at < %s
    GROUP BY 1, 2"""
Q_REGISTRATION_COLUMNS = q._REGISTRATION_COLUMNS.replace("LENGTH(form)", "octet_length(form)")
_OPEN_FOR_HOLDER = pg(q._OPEN_FOR_HOLDER)
Q_INSERT_REGISTRATION = f"""INSERT INTO registrations (registration_id, chamber_code, codice_fiscale, given_name,
    surname, birth_date, form_sha256, form_type, form, created_by, created_at, expires_at, sex, birth_town)
    SELECT %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s
    WHERE NOT EXISTS ({_OPEN_FOR_HOLDER.format(cols="1")})"""
Q_OPEN_REGISTRATION = _OPEN_FOR_HOLDER.format(cols=Q_REGISTRATION_COLUMNS)
Q_SELECT_REGISTRATION = f"SELECT {Q_REGISTRATION_COLUMNS} FROM registrations WHERE registration_id = %s"
Q_LIST_REGISTRATIONS = f"""SELECT {Q_REGISTRATION_COLUMNS} FROM registrations
    WHERE (%s = '' OR chamber_code = %s) AND (%s OR (card_id IS NULL AND cancelled_at IS NULL AND expires_at > %s))
    ORDER BY created_at DESC LIMIT %s"""
Q_INSERT_STATION_CERT_FOR_CODE = """INSERT INTO station_certificates
    (serial_hex, chamber_code, station_id, issued_at, not_after)
    SELECT %s, chamber_code, station_id, %s, %s FROM enrollment_codes WHERE code_sha256 = %s"""
Q_STATION_ENROLLED_FOR_CODE = """UPDATE stations SET state = 'enrolled', updated_at = %s
    WHERE (chamber_code, station_id) = (SELECT chamber_code, station_id FROM enrollment_codes WHERE code_sha256 = %s)"""
Q_INSERT_STATION_CERT = """INSERT INTO station_certificates
    (serial_hex, chamber_code, station_id, issued_at, not_after) VALUES (%s, %s, %s, %s, %s)"""
Q_STATION_PENDING = pg(q.Q_STATION_PENDING).replace(
    "state = CASE WHEN state", "state = CASE WHEN stations.state")


def one_statement(statements: list[tuple[str, tuple]]) -> list[tuple[str, tuple]]:
    """INSERT/UPDATE statements that touch distinct rows and whose row counts nobody reads, as ONE statement
    (data-modifying CTEs): one parse/bind/execute instead of one per statement, same rows written."""
    sql = "WITH " + ", ".join(f"s{i} AS ({text})" for i, (text, _) in enumerate(statements)) + " SELECT 1"
    return [(sql, tuple(p for _, params in statements for p in params))]


def enqueue_statement(rec: RequestRecord, *, lane: str, payload: bytes, audit_params: tuple, claimer: str | None,
                      key: KeyBinding | None, registration_id: str, holder: HolderRecord | None, operator_id: str,
                      card_id: str, actor: str, now: float) -> tuple[str, tuple]:
    """A new request's rows as ONE statement (data-modifying CTEs), so that it can share a transaction with
    other callers' (``Database.write``) and nothing needs deciding in Python before the commit.

    The request row is inserted only if its id is new and (with ``key``) no request holds the key; every
    other row (key binding, outbox, audit, holder, registration used) only if the request row was. Its one
    result row: (request row inserted, id already stored, key free). A key bound by a concurrent transaction
    after the check fails the unique constraint (the caller refuses the request; ``Database.write`` reruns
    the other callers alone). Run after ``Q_FREE_KEY`` (a later statement sees its deletion)."""
    claim = claimer is not None
    params: list = []
    free = "TRUE"
    if key:
        free = "NOT EXISTS (SELECT 1 FROM certified_keys WHERE key_sha256 = %s)"
    ctes = ["""req AS (INSERT INTO requests (request_id, kind, profile, payload_sha256, chamber_code, station_id,
            operator_id, state, issuer_dn, serial_hex, created_at, updated_at)
        SELECT %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s WHERE """ + free + """
        ON CONFLICT (request_id) DO NOTHING RETURNING request_id)"""]
    params += [rec.request_id, rec.kind, rec.profile, rec.payload_sha256, rec.chamber_code, rec.station_id,
               rec.operator_id, STATE_PENDING if claim else STATE_RECEIVED, rec.issuer_dn, rec.serial_hex, now, now]
    if key:
        params.append(key.key_sha256)
        ctes.append("""bound AS (INSERT INTO certified_keys (key_sha256, holder_cf, profile, request_id, bound_at)
            SELECT %s, %s, %s, request_id, %s FROM req)""")
        params += [key.key_sha256, key.holder_cf, key.profile, now]
    if claim:
        ctes.append("""queued AS (INSERT INTO outbox
                (request_id, lane, kind, payload, status, attempts, next_attempt_at, updated_at, claimed_by)
            SELECT request_id, %s, %s, %s, 'sending', 1, %s, %s, %s FROM req)""")
        params += [lane, rec.kind, payload, now, now, claimer]
    else:
        ctes.append("""queued AS (INSERT INTO outbox
                (request_id, lane, kind, payload, status, attempts, next_attempt_at, updated_at)
            SELECT request_id, %s, %s, %s, 'queued', 0, %s, %s FROM req)""")
        params += [lane, rec.kind, payload, now, now]
    ctes.append(f"audited AS (INSERT INTO audit ({_AUDIT_COLUMNS}) SELECT {_AUDIT_VALUES} FROM req)")
    params += list(audit_params)
    if holder is not None:
        ctes.append("""held AS (INSERT INTO request_holders
                (request_id, card_id, codice_fiscale, given_name, surname, birth_date, card_model)
            SELECT request_id, %s, %s, %s, %s, %s, %s FROM req)""")
        params += [holder.card_id, holder.codice_fiscale, holder.given_name, holder.surname, holder.birth_date,
                   holder.card_model]
    if registration_id:   # the registration rules (trigger) refuse a registration used for another card
        ctes.append("""used AS (UPDATE registrations SET used_by = COALESCE(used_by, %s),
                used_operator_id = COALESCE(used_operator_id, %s), used_at = COALESCE(used_at, %s),
                request_id = COALESCE(registrations.request_id, req.request_id), card_id = %s
            FROM req WHERE registration_id = %s)""")
        params += [actor, operator_id, now, card_id, registration_id]
    sql = ("WITH " + ",\n    ".join(ctes) +
           "\nSELECT EXISTS (SELECT 1 FROM req), EXISTS (SELECT 1 FROM requests WHERE request_id = %s), " + free)
    params.append(rec.request_id)
    if key:
        params.append(key.key_sha256)
    return sql, tuple(params)



class PostgresRequestStore:
    """Open with ``await PostgresRequestStore.open(dsn)``; ``await close()``. ``database`` is shared with the
    embedded CA's index (``PgCertificateIndex.over(store.database)``): one pool, one replicated database."""

    def __init__(self, db: Database, clock=time.time):
        self.database = db
        self._clock = clock
        # set by the composition root when the embedded CA's index shares this database and leaves recording
        # to complete_issue (PgCertificateIndex.record_statement): the CA's row in the request's transaction
        self.ca_record_statement = None

    @classmethod
    async def open(cls, dsn: str, *, clock=time.time, max_connections: int = 8,
                   failover_timeout: float | None = None) -> "PostgresRequestStore":
        extra = {"failover_timeout": failover_timeout} if failover_timeout else {}
        db = await Database.open(dsn, error_cls=StoreError, max_size=max_connections, migrate=migrate_postgresql,
                                 **extra)
        return cls(db, clock)

    async def close(self) -> None:
        await self.database.close()

    @property
    def commits(self) -> int:
        """Transactions committed on the shared database (the request store's and the CA index's): the queue
        benchmark reads it, as the SQLite store's."""
        return self.database.transactions

    # -- plumbing ---------------------------------------------------------------------

    async def _tx(self, fn, *, pipeline: bool = False):
        return await self.database.run(fn, what="the request store", pipeline=pipeline)

    async def _all(self, sql: str, params=()) -> list[tuple]:
        """One read statement: no BEGIN/COMMIT around it (one round trip)."""
        async def go(conn):
            return await (await conn.execute(sql, params)).fetchall()
        return await self.database.read(go, what="the request store")

    async def _one(self, sql: str, params=()) -> tuple | None:
        rows = await self._all(sql, params)
        return rows[0] if rows else None

    async def _exec(self, statements: list[tuple[str, tuple]]) -> list[int]:
        """The statements in one transaction (shared with concurrent callers': ``Database.write``); their
        row counts."""
        return [cur.rowcount for cur in await self.database.write(statements, what="the request store")]

    @staticmethod
    def _audit(a: AuditEntry, now: float) -> tuple[str, tuple]:
        return Q_INSERT_AUDIT, _audit_params(a, now)

    # -- intake -----------------------------------------------------------------------

    async def create_request(self, rec: RequestRecord) -> bool:
        now = self._clock()
        return (await self._exec([(Q_INSERT_REQUEST, (
            rec.request_id, rec.kind, rec.profile, rec.payload_sha256, rec.chamber_code, rec.station_id,
            rec.operator_id, STATE_RECEIVED, rec.issuer_dn, rec.serial_hex, now, now))]))[0] == 1

    async def enqueue(self, rec: RequestRecord, *, lane: str, payload: bytes, audit: AuditEntry,
                      claimer: str | None = None, key: KeyBinding | None = None, registration_id: str = "",
                      holder: HolderRecord | None = None) -> bool:
        """One statement (``enqueue_statement``, after ``Q_FREE_KEY``) in the group commit: concurrent
        intakes and completions share one commit and one wait for the synchronous standby."""
        now = self._clock()
        statements = [(Q_FREE_KEY, (key.key_sha256,))] if key else []
        statements.append(enqueue_statement(rec, lane=lane, payload=payload, audit_params=_audit_params(audit, now),
                                            claimer=claimer, key=key, registration_id=registration_id,
                                            holder=holder, operator_id=rec.operator_id, card_id=audit.card_id,
                                            actor=audit.actor, now=now))
        try:
            cursors = await self.database.write(statements, what="the request store")
        except StoreError as exc:
            cause = exc.__cause__
            if isinstance(cause, pgerrors.UniqueViolation) and "certified_keys" in (cause.diag.constraint_name or ""):
                # a concurrent transaction bound the key between our check and our insert: nothing written
                raise KeyAlreadyCertified("the public key is already certified by another request") from None
            raise
        inserted, existed, key_free = await cursors[-1].fetchone()
        if inserted:
            return True
        if existed or key_free:   # a known id (stored before, or by a concurrent commit): nothing is written
            return False          # (the caller compares)
        raise KeyAlreadyCertified("the public key is already certified by another request")   # nothing written

    async def ensure_outbox(self, request_id: str, *, lane: str, kind: str, payload: bytes) -> None:
        now = self._clock()
        await self._exec([(Q_ENSURE_OUTBOX, (request_id, lane, kind, payload, now, now))])

    async def key_binding(self, key_sha256: bytes) -> KeyBinding | None:
        row = await self._one(pg(q.Q_SELECT_KEY), (key_sha256,))
        return KeyBinding(key_sha256, row[0], row[1], row[2]) if row else None

    async def get_request(self, request_id: str) -> RequestRecord | None:
        row = await self._one(pg(q.Q_SELECT_REQUEST), (request_id,))
        return _record(row) if row is not None else None

    async def get_payload(self, request_id: str) -> OutboxPayload | None:
        row = await self._one(pg(q.Q_SELECT_PAYLOAD), (request_id,))
        return OutboxPayload(*row) if row else None

    async def get_holder(self, request_id: str) -> HolderRecord | None:
        row = await self._one(pg(q.Q_SELECT_HOLDER), (request_id,))
        return HolderRecord(*row) if row else None

    # -- delivery ---------------------------------------------------------------------

    async def claim_due(self, now: float, lanes: tuple[str, ...], limit: int, claimer: str) -> list[Claimed]:
        if not lanes or limit <= 0:
            return []

        async def go(conn):
            cur = await conn.execute(Q_CLAIM_DUE, dict(now=now, lanes=list(lanes), limit=limit, claimer=claimer))
            return await cur.fetchall()
        # one statement: its own transaction in autocommit, one round trip (the relay claims after every
        # delivery, mostly finding nothing: three round trips each were a third of the daemon's PG traffic)
        rows = await self.database.statement(go, what="the request store")
        out = [Claimed(_record(row[:22]), OutboxPayload(row[17], row[22], row[23], row[18], row[19])) for row in rows]
        out.sort(key=lambda c: (c.record.lane != LANE_PRIORITY, c.record.next_attempt_at))
        return out

    async def next_due(self, lanes: tuple[str, ...]) -> float | None:
        if not lanes:
            return None
        row = await self._one(Q_NEXT_DUE, (list(lanes),))
        return row[0] if row else None

    async def schedule_retry(self, request_id: str, at: float, error: str) -> None:
        await self._exec([(pg(q.Q_SCHEDULE_RETRY), (at, error[:MAX_ERROR_TEXT], self._clock(), request_id))])

    async def defer(self, request_ids: list[str], at: float, reason: str) -> None:
        now = self._clock()
        if request_ids:
            await self._exec([(pg(q.Q_DEFER), (at, reason[:MAX_ERROR_TEXT], now, rid)) for rid in request_ids])

    async def reset_sending(self, claimer: str) -> int:
        now = self._clock()
        return (await self._exec([(pg(q.Q_RESET_SENDING), (now, now, claimer))]))[0]

    async def reclaim_stale(self, claimed_before: float, held: list[str], reason: str) -> int:
        now = self._clock()
        return (await self._exec([(Q_RECLAIM_STALE, (now, reason, now, claimed_before, list(held)))]))[0]

    async def renew_claims(self, claimer: str, request_ids: list[str]) -> int:
        if not request_ids:
            return 0
        now = self._clock()
        return (await self._exec([(Q_RENEW_CLAIMS, (now, claimer, list(request_ids)))]))[0]

    async def release_claim(self, request_id: str, at: float, reason: str) -> None:
        now = self._clock()
        await self._exec([(Q_RELEASE_CLAIM, (at, reason, now, request_id)),
                          (pg(q.Q_REQUEST_RECEIVED_IF_UNSENT), (now, request_id, request_id))])

    async def complete_issue(self, request_id: str, issued: IssuedCertificate, profile: str, *, card_id: str,
                             holder_cf: str, audit: AuditEntry) -> RequestRecord | None:
        now = self._clock()
        statements = [
            (Q_INSERT_CERTIFICATE, (issued.ref.issuer_dn, issued.ref.serial_hex, request_id, profile,
                                    int(issued.not_before.timestamp()), int(issued.not_after.timestamp()),
                                    issued.certificate_der, _pack_chain(issued.chain_der), card_id, holder_cf)),
            (pg(q.Q_COMPLETE_REQUEST), (STATE_ISSUED, issued.ref.issuer_dn, issued.ref.serial_hex, now, request_id)),
            (pg(q.Q_OUTBOX_DONE), ("done", None, now, request_id)),
            self._audit(audit, now),
        ]
        try:
            statements.append((Q_BIND_ISSUED_KEY, (certificate_key_sha256(issued.certificate_der), holder_cf or "",
                                                   profile, request_id, now)))
        except ValueError:   # not DER: the CA connector would have refused it; nothing to bind
            pass
        if self.ca_record_statement is not None:   # the CA's own record, committed with the request's
            statements.insert(0, self.ca_record_statement(
                serial_hex=issued.ref.serial_hex, issuer_dn=issued.ref.issuer_dn, request_id=request_id,
                profile=profile, not_before=issued.not_before, not_after=issued.not_after,
                certificate_der=issued.certificate_der))
        # the request as committed, read in the same transaction: the relay answers without reading it again
        cursors = await self.database.write(one_statement(statements) + [(pg(q.Q_SELECT_REQUEST), (request_id,))],
                                            what="the request store")
        row = await cursors[-1].fetchone()
        return _record(row) if row is not None else None

    async def complete_change(self, request_id: str, info: CertStatusInfo, *, audit: AuditEntry) -> None:
        now = self._clock()
        revoked_at = int(info.revoked_at.timestamp()) if info.revoked_at else None
        await self._exec(one_statement([
            (pg(q.Q_UPDATE_CERT_STATUS), (info.state.value, info.revocation_reason or None, revoked_at,
                                          info.ref.issuer_dn, info.ref.serial_hex)),
            (pg(q.Q_COMPLETE_REQUEST), (STATE_DONE, info.ref.issuer_dn, info.ref.serial_hex, now, request_id)),
            (pg(q.Q_OUTBOX_DONE), ("done", None, now, request_id)),
            self._audit(audit, now),
        ]))

    async def fail_request(self, request_id: str, code: str, field: str, message: str, *,
                           audit: AuditEntry | None = None) -> None:
        now = self._clock()
        code, field, message = code[:64], (field or "")[:128], (message or "")[:MAX_ERROR_TEXT]
        statements = [(pg(q.Q_FAIL_REQUEST), (code, field, message, now, request_id)),
                      (pg(q.Q_OUTBOX_DONE), ("failed", f"{code}: {message}"[:MAX_ERROR_TEXT], now, request_id))]
        if audit is not None:
            statements.append(self._audit(audit, now))
        await self._exec(one_statement(statements))

    # -- certificates -----------------------------------------------------------------

    async def record_issued(self, request_id: str, profile: str, issued: IssuedCertificate, *,
                            card_id: str | None = None, holder_cf: str | None = None) -> None:
        await self._exec([(Q_INSERT_CERTIFICATE, (
            issued.ref.issuer_dn, issued.ref.serial_hex, request_id, profile, int(issued.not_before.timestamp()),
            int(issued.not_after.timestamp()), issued.certificate_der, _pack_chain(issued.chain_der), card_id,
            holder_cf))])

    async def find_issued(self, request_id: str) -> list[IssuedCertificate]:
        rows = await self._all(pg(q.Q_CERTIFICATES_BY_REQUEST), (request_id,))
        return [IssuedCertificate(CertRef(r[0], r[1]), r[2], _unpack_chain(r[3]), _utc(r[4]), _utc(r[5]))
                for r in rows]

    async def get_certificate_status(self, ref: CertRef) -> CertStatusInfo | None:
        row = await self._one(pg(q.Q_SELECT_CERTIFICATE), (ref.issuer_dn, ref.serial_hex.upper()))
        if row is None:
            return None
        return CertStatusInfo(CertRef(row[0], row[1]), CertState(row[5]), _utc(row[3]), _utc(row[4]), row[2],
                              row[6] or "", _utc(row[7]) if row[7] else None)

    async def get_certificate(self, ref: CertRef) -> CertificateRow | None:
        row = await self._one(pg(q.Q_SELECT_CERTIFICATE_ROW), (ref.issuer_dn, ref.serial_hex.upper()))
        if row is None:
            return None
        return CertificateRow(CertRef(row[0], row[1]), row[2], row[3], _utc(row[4]), _utc(row[5]), row[6], row[7],
                              _unpack_chain(row[8]), row[9], row[10])

    async def update_certificate_status(self, info: CertStatusInfo) -> None:
        revoked_at = int(info.revoked_at.timestamp()) if info.revoked_at else None
        await self._exec([(pg(q.Q_UPDATE_CERT_STATUS), (info.state.value, info.revocation_reason or None,
                                                        revoked_at, info.ref.issuer_dn, info.ref.serial_hex))])

    async def first_issued_for_card(self, card_id: str) -> _dt.datetime | None:
        row = await self._one(pg(q.Q_FIRST_FOR_CARD), (card_id,))
        return _utc(row[0]) if row and row[0] is not None else None

    async def find_certificates(self, *, card_id: str = "", holder_cf: str = "",
                                limit: int = 1000) -> list[FoundCertificate]:
        if not card_id and not holder_cf:
            raise ValueError("give a card serial or a codice fiscale")
        rows = await self._all(pg(q.Q_FIND_CERTIFICATES),
                               (card_id, card_id, holder_cf.upper(), holder_cf.upper(), limit))
        return [FoundCertificate(CertStatusInfo(CertRef(r[0], r[1]), CertState(r[6]), _utc(r[4]), _utc(r[5]), r[2],
                                                r[7] or "", _utc(r[8]) if r[8] else None),
                                 r[3], r[9] or "", r[10] or "", r[11] or "", r[12]) for r in rows]

    async def recent_issuance_stats(self, seconds: float) -> tuple[int, float]:
        count, mean = await self._one(pg(q.Q_ISSUANCE_STATS), (self._clock() - seconds,))
        return int(count or 0), float(mean or 0.0) * 1000.0

    # -- queue administration ---------------------------------------------------------

    async def queue_depth(self) -> dict[str, int]:
        depth = {lane: 0 for lane in LANES}
        depth.update({lane: n for lane, n in await self._all(q.Q_QUEUE_DEPTH)})
        return depth

    async def list_queue(self, limit: int) -> list[RequestRecord]:
        ids = [r[0] for r in await self._all(pg(q.Q_LIST_QUEUE), (limit,))]
        return [rec for rec in [await self.get_request(i) for i in ids] if rec is not None]

    async def retry_now(self, request_id: str, audit: AuditEntry, *, orphaned_claim: bool = False) -> bool:
        now = self._clock()
        sql = pg(q.Q_RETRY_NOW_ORPHAN if orphaned_claim else q.Q_RETRY_NOW)

        async def go(conn):
            if (await conn.execute(sql, (now, now, request_id))).rowcount != 1:
                return False
            await conn.execute(*self._audit(audit, now))
            return True
        return await self._tx(go)

    async def cancel(self, request_id: str, audit: AuditEntry) -> bool:
        now = self._clock()
        message = f"cancelled by central IT ({audit.actor}) before it reached the CA"

        async def go(conn):
            if (await conn.execute(pg(q.Q_CANCEL_OUTBOX), (now, request_id))).rowcount != 1:
                return False
            await conn.execute(pg(q.Q_CANCEL_REQUEST), (message, now, request_id, request_id))
            await conn.execute(*self._audit(audit, now))
            return True
        return await self._tx(go)

    # -- maintenance and the CA breaker -----------------------------------------------

    async def add_maintenance(self, id_: str, starts_at: float, ends_at: float, reason: str, source: str,
                              audit: AuditEntry | None = None) -> None:
        statements = [(Q_INSERT_MAINTENANCE, (id_, starts_at, ends_at, reason, source))]
        if audit is not None:
            statements.append(self._audit(audit, self._clock()))
        await self._exec(statements)

    async def list_maintenance(self, after: float) -> list[tuple[str, float, float, str, str]]:
        return [tuple(r) for r in await self._all(pg(q.Q_LIST_MAINTENANCE), (after,))]

    async def record_breaker_event(self, at: float, state: str, detail: str = "") -> None:
        await self._exec([(pg(q.Q_INSERT_BREAKER_EVENT), (at, state[:16], (detail or "")[:MAX_ERROR_TEXT]))])

    # -- registrations ----------------------------------------------------------------

    async def add_registration(self, reg: Registration, form: bytes, audit: AuditEntry) -> bool:
        now = self._clock()

        async def go(conn):
            cur = await conn.execute(Q_INSERT_REGISTRATION, (
                reg.registration_id, reg.chamber_code, reg.codice_fiscale, reg.given_name, reg.surname, reg.birth_date,
                reg.form_sha256, reg.form_type, form, reg.created_by, reg.created_at, reg.expires_at, reg.sex,
                reg.birth_town, reg.chamber_code, reg.codice_fiscale, reg.created_at))
            if cur.rowcount != 1:
                return False
            await conn.execute(*self._audit(audit, now))
            return True
        return await self._tx(go)

    async def open_registration(self, chamber_code: str, codice_fiscale: str, now: float) -> Registration | None:
        row = await self._one(Q_OPEN_REGISTRATION, (chamber_code, codice_fiscale, now))
        return Registration(*row) if row else None

    async def get_registration(self, registration_id: str) -> Registration | None:
        row = await self._one(Q_SELECT_REGISTRATION, (registration_id,))
        return Registration(*row) if row else None

    async def list_registrations(self, chamber_code: str, *, include_closed: bool, now: float,
                                 limit: int) -> list[Registration]:
        rows = await self._all(Q_LIST_REGISTRATIONS, (chamber_code, chamber_code, bool(include_closed), now, limit))
        return [Registration(*r) for r in rows]

    async def cancel_registration(self, registration_id: str, *, by: str, audit: AuditEntry) -> bool:
        now = self._clock()

        async def go(conn):
            if (await conn.execute(pg(q.Q_CANCEL_REGISTRATION), (by, now, registration_id))).rowcount != 1:
                return False
            await conn.execute(*self._audit(audit, now))
            return True
        return await self._tx(go)

    # -- stock ------------------------------------------------------------------------

    async def add_stock(self, chamber_code: str, quantity: int, note: str, audit: AuditEntry, *,
                        device_model: str = "") -> StockEntry:
        now = self._clock()

        async def go(conn):
            row = await (await conn.execute(Q_INSERT_STOCK, (now, chamber_code, device_model, quantity, audit.actor,
                                                             note))).fetchone()
            await conn.execute(*self._audit(audit, now))
            return StockEntry(*row)
        return await self._tx(go)

    async def list_stock(self, chamber_code: str = "") -> list[StockEntry]:
        return [StockEntry(*r) for r in await self._all(pg(q.Q_LIST_STOCK), (chamber_code, chamber_code))]

    async def stock_balance(self, before: float | None = None):
        used = await self._all(Q_STOCK_USED, (self._clock() if before is None else before,))
        return stock_balance(await self.list_stock(), used, before)

    # -- audit ------------------------------------------------------------------------

    async def append_audit(self, entry: AuditEntry) -> None:
        await self._exec([self._audit(entry, self._clock())])

    async def list_audit(self, after_seq: int = 0, limit: int = 10_000) -> list[AuditEntry]:
        return [_audit_entry(r) for r in await self._all(pg(q.Q_LIST_AUDIT), (after_seq, limit))]

    # -- station enrollment (StationStore) --------------------------------------------

    async def add_enrollment_code(self, code_sha256: str, chamber_code: str, station_id: str, expires_at: float,
                                  audit: AuditEntry) -> None:
        now = self._clock()
        await self._exec([
            (pg(q.Q_INSERT_ENROLLMENT_CODE), (code_sha256, chamber_code, station_id, now, expires_at, audit.actor)),
            (Q_STATION_PENDING, (chamber_code, station_id, now)),
            self._audit(audit, now)])

    async def find_enrollment_code(self, code_sha256: str) -> tuple | None:
        row = await self._one(pg(q.Q_SELECT_ENROLLMENT_CODE), (code_sha256,))
        return tuple(row) if row else None

    async def use_enrollment_code(self, code_sha256: str, now: float, serial_hex: str, not_after: float,
                                  audit: AuditEntry) -> bool:
        async def go(conn):
            used = (await conn.execute(pg(q.Q_USE_ENROLLMENT_CODE), (now, code_sha256, now))).rowcount == 1
            if used:
                await conn.execute(Q_INSERT_STATION_CERT_FOR_CODE, (serial_hex, now, not_after, code_sha256))
                await conn.execute(Q_STATION_ENROLLED_FOR_CODE, (now, code_sha256))
            await conn.execute(*self._audit(audit, now))
            return used
        return await self._tx(go)

    async def station_state(self, chamber_code: str, station_id: str) -> str | None:
        row = await self._one(pg(q.Q_STATION_STATE), (chamber_code, station_id))
        return row[0] if row else None

    async def record_station_renewal(self, chamber_code: str, station_id: str, serial_hex: str, not_after: float,
                                     audit: AuditEntry) -> bool:
        now = self._clock()

        async def go(conn):
            enrolled = (await conn.execute(pg(q.Q_TOUCH_ENROLLED_STATION), (now, chamber_code, station_id))).rowcount == 1
            if enrolled:
                await conn.execute(Q_INSERT_STATION_CERT, (serial_hex, chamber_code, station_id, now, not_after))
            await conn.execute(*self._audit(audit, now))
            return enrolled
        return await self._tx(go)

    async def station_serials(self, chamber_code: str, station_id: str) -> list[str]:
        rows = await self._all(pg(q.Q_STATION_SERIALS), (chamber_code, station_id, self._clock()))
        return [r[0] for r in rows]

    async def mark_station_certificates_revoked(self, serials: list[str]) -> None:
        now = self._clock()
        if serials:
            await self._exec([(pg(q.Q_REVOKE_STATION_CERT), (now, s)) for s in serials])

    async def revoke_station(self, chamber_code: str, station_id: str, audit: AuditEntry) -> bool:
        now = self._clock()
        changed = await self._exec([
            (pg(q.Q_REVOKE_STATION), (now, chamber_code, station_id)),
            (pg(q.Q_REVOKE_STATION_CERTS), (now, chamber_code, station_id)),
            (pg(q.Q_SPEND_STATION_CODES), (now, chamber_code, station_id)),
            self._audit(audit, now)])
        return changed[0] == 1

    async def list_stations(self, chamber_code: str = "") -> list[tuple]:
        return [tuple(r) for r in await self._all(pg(q.Q_LIST_STATIONS), (chamber_code, chamber_code))]
