"""The SQLite request store: ``RequestStore`` over one file (WAL) through aiosqlite and one writer thread.

Every statement is a named query of ``sql.py``. Writes go through one writer task that commits
whatever is queued in a single transaction (group commit: one fsync for many requests under load),
each work item in its own savepoint; reads use a second connection, so they never see uncommitted
rows. ``claim_due`` is one work item (UPDATE … RETURNING under BEGIN IMMEDIATE): two daemons sharing
the file never claim the same row. sqlite3 errors are re-raised as ``StoreError``.

Beyond the protocol it keeps the station enrollment and stock ledgers (``enrollment``, ``cnsctl
stock``) and the read-only connection auditors and reports use (``connect_readonly``, ``read_audit``).
Opening an older database migrates it (columns, the ``request_holders`` table and its one-time
back-fill from the issuance payloads).

Imports aiosqlite, ``records``, ``sql``, ``ca.base``, ``errors``, ``guard`` (the cross-process write lock) and the rules' key fingerprint;
must not import grpc, proto, the outbox or the CA's implementations.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import datetime as _dt
import functools
import json
import sqlite3
import time
from pathlib import Path

import aiosqlite

from personalizer.ca.base import CertRef, CertState, CertStatusInfo, IssuedCertificate
from personalizer.errors import StoreError
from personalizer.guard import WriteLock
from personalizer.records import (LANE_PRIORITY, LANES, STATE_DONE, STATE_ISSUED, STATE_PENDING,
                                  STATE_RECEIVED, AuditEntry, AuditFilter, CertificateRow, Claimed, FoundCertificate,
                                  HolderRecord, KeyAlreadyCertified, KeyBinding, OutboxPayload, RequestRecord,
                                  StockEntry, cut, stock_balance, MAX_ERROR_TEXT)
from personalizer.rules.registrations import Registration
from personalizer.rules.validation import certificate_key_sha256
from personalizer.store import sql as q
from personalizer.store.migrations import migrate_sqlite

CHAIN_SEPARATOR_LEN = 4   # chain stored as length-prefixed DER blobs
WRITE_LOCK_SUFFIX = ".writelock"


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



def _audit_params(a: AuditEntry, now: float) -> tuple:
    return (a.at or now, cut(a.actor, "actor"), cut(a.station_id, "station_id"), cut(a.operation, "operation"),
            cut(a.request_id, "request_id"), cut(a.target, "target"), cut(a.result, "result"),
            cut(a.detail, "detail"), cut(a.operator_id, "operator_id"), cut(a.request_id, "request_id"),
            cut(a.card_id, "card_id") or None, cut(a.holder_cf, "holder_cf") or None)


class _Writer:
    """The one writing connection, owned by one thread: every group commit is ONE call on it.

    aiosqlite hands each statement to its thread separately; a group commit of
    16 requests (≈ 100 statements with their savepoints) then costs ~100 thread
    handoffs, which capped issuance at ~200/s. Here the whole transaction runs
    as one function on the writer's own thread. Reads stay on aiosqlite.
    """

    def __init__(self, path: Path, shared: bool = False):
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="store-writer")
        self._path = path
        self.conn: sqlite3.Connection | None = None
        # several daemon processes on this file ([server] processes > 1): writers queue on a flock
        self._lock = WriteLock(path.with_name(path.name + WRITE_LOCK_SUFFIX)) if shared else None

    def _locked(self, fn, *args):
        with self._lock:
            return fn(*args)

    async def run(self, fn, *args):
        if self._lock is not None:
            return await asyncio.get_running_loop().run_in_executor(self._pool, self._locked, fn, *args)
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    def connect_sync(self) -> None:
        self.conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)

    def close_sync(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    async def close(self) -> None:
        await self.run(self.close_sync)
        self._pool.shutdown(wait=True)
        if self._lock is not None:
            self._lock.close()


def _open_writer_sync(w: _Writer, synchronous: str) -> None:
    w.connect_sync()
    c = w.conn
    c.execute(f"PRAGMA busy_timeout = {q.BUSY_TIMEOUT_MS}")
    c.execute("PRAGMA journal_mode = WAL")
    c.execute(f"PRAGMA synchronous = {synchronous}")
    c.execute("PRAGMA foreign_keys = ON")
    c.executescript(q.SCHEMA)
    for table, column, kind in q.MIGRATIONS:
        names = {row[0] for row in c.execute(q.Q_TABLE_COLUMNS, (table,)).fetchall()}
        if column not in names:
            c.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")   # names from q.MIGRATIONS only
    for statement in q.INDEXES:
        c.execute(statement)
    c.execute(q.Q_SET_SCHEMA_VERSION, (str(q.SCHEMA_VERSION),))
    migrate_sqlite(c)   # versioned changes after the baseline (personalizer/store/migrations/sqlite)
    _backfill_keys_sync(c)
    _backfill_once_sync(c, q.Q_HOLDERS_BACKFILLED, q.Q_BACKFILL_HOLDERS, q.Q_MARK_HOLDERS_BACKFILLED)


def _backfill_keys_sync(c: sqlite3.Connection) -> None:
    """Once per database: bind the keys of certificates issued before ``certified_keys`` existed."""
    if c.execute(q.Q_KEYS_BACKFILLED).fetchone():
        return
    c.execute("BEGIN IMMEDIATE")
    try:
        now = time.time()
        for der, cf, profile, request_id in c.execute(q.Q_CERTIFICATES_TO_BIND).fetchall():
            try:
                digest = certificate_key_sha256(der)
            except ValueError:   # unreadable DER: nothing to bind (the row stays as it was)
                continue
            c.execute(q.Q_BACKFILL_KEY, (digest, cf, profile, request_id, now))
        c.execute(q.Q_MARK_KEYS_BACKFILLED, (str(now),))
        c.execute("COMMIT")
    except BaseException:
        c.execute("ROLLBACK")
        raise


def _backfill_once_sync(c: sqlite3.Connection, done: str, fill: str, mark: str) -> None:
    """Once per database (a meta flag): one back-fill statement, in its own transaction."""
    if c.execute(done).fetchone():
        return
    c.execute("BEGIN IMMEDIATE")
    try:
        c.execute(fill)
        c.execute(mark, (str(time.time()),))
        c.execute("COMMIT")
    except BaseException:
        c.execute("ROLLBACK")
        raise


def _claim_sync(conn: sqlite3.Connection, params: dict) -> list[Claimed]:
    """claim_due's work item (runs inside the group commit's transaction): claim, mark PENDING, read back."""
    ids = [r[0] for r in conn.execute(q.Q_CLAIM_DUE, params).fetchall()]
    out = []
    for rid in ids:
        conn.execute(q.Q_REQUEST_PENDING, (params["now"], rid))
        out.append(Claimed(_record(conn.execute(q.Q_SELECT_REQUEST, (rid,)).fetchone()),
                           OutboxPayload(*conn.execute(q.Q_SELECT_PAYLOAD, (rid,)).fetchone())))
    out.sort(key=lambda c: (c.record.lane != LANE_PRIORITY, c.record.next_attempt_at))
    return out


def _run_then_read(conn: sqlite3.Connection, statements: list, request_id: str) -> RequestRecord | None:
    """A work item: the statements, then the request row as they leave it (same transaction)."""
    for sql, params in statements:
        conn.execute(sql, params)
    row = conn.execute(q.Q_SELECT_REQUEST, (request_id,)).fetchone()
    return _record(row) if row is not None else None


def _run_if_created_then_read(conn: sqlite3.Connection, statements: list, first: int, then: list,
                              request_id: str) -> RequestRecord | None:
    """enqueue_issued's work item: the intake statements; if they created the request, the completing ones
    and the request as they leave it (same savepoint); None, with nothing else run, if the id existed."""
    changed = [conn.execute(sql, params).rowcount for sql, params in statements]
    if changed[first] != 1:
        return None
    return _run_then_read(conn, then, request_id)


def _record(row) -> RequestRecord:
    return RequestRecord(*row[:15], certificate_der=row[15], chain_der=_unpack_chain(row[16]), lane=row[17],
                         outbox_status=row[18], attempts=row[19] or 0, next_attempt_at=row[20] or 0.0,
                         last_error=row[21])


def _commit_sync(conn: sqlite3.Connection, work: list) -> list:
    """One transaction for all items, each in its own savepoint: [(changed rowcounts | None, error | None)].

    An item whose statements fail is rolled back alone; a failing COMMIT raises (all items fail).
    """
    out = []
    conn.execute("BEGIN IMMEDIATE")
    try:
        for statements in work:
            conn.execute("SAVEPOINT item")
            try:
                if callable(statements):   # a work item that reads what it wrote (claim_due)
                    changed = statements(conn)
                else:
                    changed = [conn.execute(sql, params).rowcount for sql, params in statements]
                conn.execute("RELEASE item")
                out.append((changed, None))
            except sqlite3.Error as exc:
                conn.execute("ROLLBACK TO item")
                conn.execute("RELEASE item")
                out.append((None, exc))
        conn.execute("COMMIT")
    except BaseException:
        try:
            conn.execute("ROLLBACK")
        except sqlite3.Error:
            pass
        raise
    return out


def _item_error(exc: sqlite3.Error) -> StoreError:
    if isinstance(exc, sqlite3.IntegrityError) and q.KEY_CONSTRAINT in str(exc):
        return KeyAlreadyCertified("the public key is already certified by another request")
    return StoreError(f"write failed: {exc}")


class SqliteRequestStore:
    """The ``RequestStore`` protocol over one SQLite file (WAL), plus the station and stock ledgers.

    ``commits``/``writes`` count transactions and work items (the queue benchmark reads them)."""

    def __init__(self, writer: _Writer, reader: aiosqlite.Connection, clock=time.time):
        self._w = writer
        self._r = reader
        self._clock = clock
        self._queue: asyncio.Queue = asyncio.Queue()
        self._task = asyncio.create_task(self._writer_loop(), name="store-writer")
        self.commits = 0          # for the benchmark: transactions actually committed
        self.writes = 0
        # the embedded CA's index in this file (ca.index.CertificateIndex.open_in_store), set by the composition
        # root: complete_issue writes the CA's row of the certificate in the request's transaction
        self.ca_record_statement = None

    @classmethod
    async def open(cls, path: Path, *, synchronous: str = "FULL", clock=time.time,
                   shared: bool = False) -> "SqliteRequestStore":
        """``shared``: other processes of this daemon write the same file (their writes queue on a flock)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        writer = _Writer(path, shared)
        try:
            await writer.run(_open_writer_sync, writer, synchronous)
            reader = await aiosqlite.connect(path, isolation_level=None)
            await reader.execute(f"PRAGMA busy_timeout = {q.BUSY_TIMEOUT_MS}")
            await reader.execute("PRAGMA query_only = ON")
        except sqlite3.Error as exc:
            await writer.close()
            raise StoreError(f"cannot open request store {path}: {exc}") from exc
        return cls(writer, reader, clock)

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
        try:
            results = await self._w.run(_commit_sync, self._w.conn, [statements for statements, _ in work])
        except sqlite3.Error as exc:
            for _, fut in work:
                if not fut.done():
                    fut.set_exception(StoreError(f"commit failed: {exc}"))
            return
        self.commits += 1
        self.writes += len(work)
        for (_, fut), (changed, err) in zip(work, results):
            if fut.done():
                continue
            if err is not None:
                fut.set_exception(_item_error(err))
            else:
                fut.set_result(changed)

    async def _write(self, statements):
        """Run the statements atomically (one savepoint) in the next group commit; rowcount per statement."""
        fut = asyncio.get_running_loop().create_future()
        await self._queue.put((statements, fut))
        return await fut

    # Reads run as ONE call on the reader's thread (execute + fetch to the end). With a cursor
    # fetched in several calls, another read queued in between runs inside that cursor's still
    # open read transaction and sees an old snapshot: a request just committed looked missing.

    async def _one(self, sql: str, params: tuple):
        rows = await self._all(sql, params)
        return rows[0] if rows else None

    async def _all(self, sql: str, params: tuple):
        try:
            return list(await self._r.execute_fetchall(sql, params))
        except sqlite3.Error as exc:
            raise StoreError(f"read failed: {exc}") from exc

    async def data_version(self) -> int:
        """SQLite's ``PRAGMA data_version`` on the read connection: it changes when any other connection
        (another process's, or this store's writer) commits, and costs no disk I/O."""
        return (await self._one("PRAGMA data_version", ()))[0]

    # -- requests and outbox ----------------------------------------------------

    async def create_request(self, rec: RequestRecord) -> bool:
        """A request row alone (no outbox row): what older versions wrote before calling the CA."""
        now = self._clock()
        changed = await self._write([(q.Q_INSERT_REQUEST, (
            rec.request_id, rec.kind, rec.profile, rec.payload_sha256, rec.chamber_code, rec.station_id,
            rec.operator_id, STATE_RECEIVED, rec.issuer_dn, rec.serial_hex, now, now))])
        return changed[0] == 1

    async def enqueue(self, rec: RequestRecord, *, lane: str, payload: bytes, audit: AuditEntry,
                      claimer: str | None = None, key: KeyBinding | None = None, registration_id: str = "",
                      holder: HolderRecord | None = None) -> bool:
        """Request row + outbox row + audit row in one transaction; False (nothing written) if the id exists.

        ``key``: the public key the request certifies, bound to it in the same transaction; if another
        request holds it, nothing is written and ``KeyAlreadyCertified`` is raised. A retry (the id
        exists) binds nothing and raises nothing: the caller compares it with the stored request.

        ``registration_id``: a deferred issuance; the registration is marked used for this request's card
        (``audit.card_id``) in the same transaction (StoreError "registration already used", nothing
        written, if a request for another card was first).

        ``holder``: who the request certifies, on which card (issue, renew): kept for later renewals.

        ``claimer``: the row is written already claimed by that relay (``sending``, attempt 1, request
        PENDING), as ``claim_due`` would leave it; the caller delivers it now.
        """
        statements, first = self._enqueue_statements(rec, lane=lane, payload=payload, audit=audit, claimer=claimer,
                                                     key=key, registration_id=registration_id, holder=holder)
        changed = await self._write(statements)
        return changed[first] == 1

    def _enqueue_statements(self, rec: RequestRecord, *, lane: str, payload: bytes, audit: AuditEntry,
                            claimer: str | None, key: KeyBinding | None, registration_id: str,
                            holder: HolderRecord | None) -> tuple[list, int]:
        """enqueue's statements, and the index of the request's insert among them (changed = 1: created)."""
        claim = claimer is not None
        now = self._clock()
        statements = [(q.Q_FREE_KEY, (key.key_sha256,))] if key else []
        first = len(statements)
        statements.append(
            (q.Q_INSERT_REQUEST, (rec.request_id, rec.kind, rec.profile, rec.payload_sha256, rec.chamber_code,
                                rec.station_id, rec.operator_id, STATE_PENDING if claim else STATE_RECEIVED,
                                rec.issuer_dn, rec.serial_hex, now, now)))
        if key:
            statements.append((q.Q_BIND_KEY_IF_NEW, (key.key_sha256, key.holder_cf, key.profile, rec.request_id, now)))
        statements += [
            (q.Q_INSERT_OUTBOX_CLAIMED_IF_NEW, (rec.request_id, lane, rec.kind, payload, now, now, claimer)) if claim
            else (q.Q_INSERT_OUTBOX_IF_NEW, (rec.request_id, lane, rec.kind, payload, now, now)),
            (q.Q_INSERT_AUDIT_IF_NEW, _audit_params(audit, now)),
        ]
        if holder is not None:   # after the audit row: its changes() = 1 only for a new request
            statements.append((q.Q_INSERT_HOLDER_IF_NEW, (rec.request_id, holder.card_id, holder.codice_fiscale,
                                                        holder.given_name, holder.surname, holder.birth_date,
                                                        holder.card_model)))
        if registration_id:   # after the audit (or holder) row: its changes() = 1 only for a new request
            statements.append((q.Q_USE_REGISTRATION, (audit.actor, rec.operator_id, now, rec.request_id, audit.card_id,
                                                    registration_id)))
        return statements, first

    async def enqueue_issued(self, rec: RequestRecord, *, lane: str, payload: bytes, audit: AuditEntry, claimer: str,
                             issued: IssuedCertificate, done_audit: AuditEntry, card_id: str, holder_cf: str,
                             key: KeyBinding | None = None, registration_id: str = "",
                             holder: HolderRecord | None = None) -> RequestRecord | None:
        """``enqueue`` (claimed by ``claimer``) and ``complete_issue`` of a certificate already signed, in ONE
        work item of one transaction: the request as committed (ISSUED), or None when its id exists (then
        nothing is written and the certificate is given to no one). The immediate path of an embedded CA
        whose index is in this file (issue 16): the signature has no effect outside this transaction, so
        the request needs no commit of its own before it. Refusals as ``enqueue`` (KeyAlreadyCertified,
        registration already used)."""
        statements, first = self._enqueue_statements(rec, lane=lane, payload=payload, audit=audit, claimer=claimer,
                                                     key=key, registration_id=registration_id, holder=holder)
        completing = self._complete_statements(rec.request_id, issued, rec.profile, card_id=card_id,
                                               holder_cf=holder_cf, audit=done_audit)
        return await self._write(functools.partial(_run_if_created_then_read, statements=statements, first=first,
                                                   then=completing, request_id=rec.request_id))

    async def key_binding(self, key_sha256: bytes) -> KeyBinding | None:
        row = await self._one(q.Q_SELECT_KEY, (key_sha256,))
        return KeyBinding(key_sha256, row[0], row[1], row[2]) if row else None

    async def add_registration(self, reg: Registration, form: bytes, audit: AuditEntry) -> bool:
        """The registration (with its form) and its audit row, one transaction; False (nothing written)
        when the holder already has an open registration in that chamber (``open_registration``)."""
        now = self._clock()
        changed = await self._write([
            (q.Q_INSERT_REGISTRATION, (reg.registration_id, reg.chamber_code, reg.codice_fiscale, reg.given_name,
                                     reg.surname, reg.birth_date, reg.form_sha256, reg.form_type, form,
                                     reg.created_by, reg.created_at, reg.expires_at, reg.sex, reg.birth_town,
                                     reg.chamber_code, reg.codice_fiscale, reg.created_at)),
            (q.Q_INSERT_AUDIT_IF_NEW, _audit_params(audit, now))])
        return changed[0] == 1

    async def open_registration(self, chamber_code: str, codice_fiscale: str, now: float) -> Registration | None:
        row = await self._one(q.Q_OPEN_REGISTRATION, (chamber_code, codice_fiscale, now))
        return Registration(*row) if row else None

    async def cancel_registration(self, registration_id: str, *, by: str, audit: AuditEntry) -> bool:
        """Cancel an open or expired registration not yet bound to a card, with its audit row; False if not."""
        now = self._clock()
        changed = await self._write([(q.Q_CANCEL_REGISTRATION, (by, now, registration_id)),
                                     (q.Q_INSERT_AUDIT_IF_NEW, _audit_params(audit, now))])
        return changed[0] == 1

    async def get_registration(self, registration_id: str) -> Registration | None:
        row = await self._one(q.Q_SELECT_REGISTRATION, (registration_id,))
        return Registration(*row) if row else None

    async def list_registrations(self, chamber_code: str, *, include_closed: bool, now: float,
                                 limit: int) -> list[Registration]:
        rows = await self._all(q.Q_LIST_REGISTRATIONS, (chamber_code, chamber_code, int(include_closed), now, limit))
        return [Registration(*r) for r in rows]

    async def ensure_outbox(self, request_id: str, *, lane: str, kind: str, payload: bytes) -> None:
        """Give a request row left by an older version (no outbox row) its outbox row."""
        now = self._clock()
        await self._write([(q.Q_ENSURE_OUTBOX, (request_id, lane, kind, payload, now, now))])

    async def get_request(self, request_id: str) -> RequestRecord | None:
        row = await self._one(q.Q_SELECT_REQUEST, (request_id,))
        return _record(row) if row is not None else None

    async def get_holder(self, request_id: str) -> HolderRecord | None:
        row = await self._one(q.Q_SELECT_HOLDER, (request_id,))
        return HolderRecord(*row) if row else None

    async def get_payload(self, request_id: str) -> OutboxPayload | None:
        row = await self._one(q.Q_SELECT_PAYLOAD, (request_id,))
        return OutboxPayload(*row) if row else None

    async def claim_due(self, now: float, lanes: tuple[str, ...], limit: int, claimer: str) -> list[Claimed]:
        """Claim up to ``limit`` rows of ``lanes`` due at ``now`` (priority lane first, then oldest due), in
        ONE transaction: ``sending``, one more attempt, ``claimed_by`` = ``claimer``, request PENDING.
        Two stores (two daemons) on one file never claim the same row."""
        if not lanes or limit <= 0:
            return []
        return await self._write(functools.partial(_claim_sync, params=dict(
            now=now, lanes=json.dumps(list(lanes)), limit=limit, claimer=claimer)))

    async def next_due(self, lanes: tuple[str, ...]) -> float | None:
        if not lanes:
            return None
        row = await self._one(q.Q_NEXT_DUE % ",".join("?" * len(lanes)), tuple(lanes))
        return row[0] if row else None

    async def schedule_retry(self, request_id: str, at: float, error: str) -> None:
        await self._write([(q.Q_SCHEDULE_RETRY, (at, error[:MAX_ERROR_TEXT], self._clock(), request_id))])

    async def defer(self, request_ids: list[str], at: float, reason: str) -> None:
        """Move waiting rows (never claimed now) to ``at``: window closed, maintenance, breaker open."""
        now = self._clock()
        await self._write([(q.Q_DEFER, (at, reason[:MAX_ERROR_TEXT], now, rid)) for rid in request_ids])

    async def reset_sending(self, claimer: str) -> int:
        """At a relay's start: its claims left by a process that died become due now (they may have reached
        the CA). Another relay's claims stay (it may be delivering them); unnamed (older) claims reset."""
        now = self._clock()
        return (await self._write([(q.Q_RESET_SENDING, (now, now, claimer))]))[0]

    async def reclaim_stale(self, claimed_before: float, held: list[str], reason: str) -> int:
        """Rows claimed before ``claimed_before`` and not in ``held`` (the live deliveries): due now."""
        now = self._clock()
        return (await self._write([(q.Q_RECLAIM_STALE, (now, reason, now, claimed_before, json.dumps(held)))]))[0]

    async def renew_claims(self, claimer: str, request_ids: list[str]) -> int:
        """``claimer``'s live claims among ``request_ids`` are touched now: not stale for another bound."""
        if not request_ids:
            return 0
        now = self._clock()
        return (await self._write([(q.Q_RENEW_CLAIMS, (now, claimer, json.dumps(list(request_ids))))]))[0]

    async def release_claim(self, request_id: str, at: float, reason: str) -> None:
        """Give back a claim whose delivery did not call the CA (breaker opened meanwhile)."""
        now = self._clock()
        await self._write([(q.Q_RELEASE_CLAIM, (at, reason, now, request_id)),
                           (q.Q_REQUEST_RECEIVED_IF_UNSENT, (now, request_id, request_id))])

    def _complete_statements(self, request_id: str, issued: IssuedCertificate, profile: str, *, card_id: str,
                             holder_cf: str, audit: AuditEntry) -> list:
        """complete_issue's statements: the certificate (and the CA's row of it, ``ca_record_statement``), the
        request ISSUED, the outbox row done, the audit row, the issued key bound."""
        now = self._clock()
        statements = [
            (q.Q_INSERT_CERTIFICATE, (issued.ref.issuer_dn, issued.ref.serial_hex, request_id, profile,
                                    int(issued.not_before.timestamp()), int(issued.not_after.timestamp()),
                                    issued.certificate_der, _pack_chain(issued.chain_der), card_id, holder_cf)),
            (q.Q_COMPLETE_REQUEST, (STATE_ISSUED, issued.ref.issuer_dn, issued.ref.serial_hex, now, request_id)),
            (q.Q_OUTBOX_DONE, ("done", None, now, request_id)),
            (q.Q_INSERT_AUDIT, _audit_params(audit, now)),
        ]
        try:
            statements.append((q.Q_BIND_ISSUED_KEY, (certificate_key_sha256(issued.certificate_der), holder_cf or "",
                                                   profile, request_id, now)))
        except ValueError:   # not DER: the CA connector would have refused it; nothing to bind
            pass
        if self.ca_record_statement is not None:   # the CA's own record, committed with the request's
            statements.insert(0, self.ca_record_statement(
                serial_hex=issued.ref.serial_hex, issuer_dn=issued.ref.issuer_dn, request_id=request_id,
                profile=profile, not_before=issued.not_before, not_after=issued.not_after,
                certificate_der=issued.certificate_der))
        return statements

    async def complete_issue(self, request_id: str, issued: IssuedCertificate, profile: str, *, card_id: str,
                             holder_cf: str, audit: AuditEntry) -> RequestRecord | None:
        """Read back in the same transaction, on the writer's thread: the relay answers a waiting caller
        with it, without a read of its own (issue 16)."""
        statements = self._complete_statements(request_id, issued, profile, card_id=card_id, holder_cf=holder_cf,
                                               audit=audit)
        return await self._write(functools.partial(_run_then_read, statements=statements, request_id=request_id))

    async def complete_change(self, request_id: str, info: CertStatusInfo, *, audit: AuditEntry) -> None:
        now = self._clock()
        revoked_at = int(info.revoked_at.timestamp()) if info.revoked_at else None
        await self._write([
            (q.Q_UPDATE_CERT_STATUS, (info.state.value, info.revocation_reason or None, revoked_at,
                                    info.ref.issuer_dn, info.ref.serial_hex)),
            (q.Q_COMPLETE_REQUEST, (STATE_DONE, info.ref.issuer_dn, info.ref.serial_hex, now, request_id)),
            (q.Q_OUTBOX_DONE, ("done", None, now, request_id)),
            (q.Q_INSERT_AUDIT, _audit_params(audit, now)),
        ])

    async def fail_request(self, request_id: str, code: str, field: str, message: str, *,
                           audit: AuditEntry | None = None) -> None:
        now = self._clock()
        code, field, message = code[:64], (field or "")[:128], (message or "")[:MAX_ERROR_TEXT]
        statements = [(q.Q_FAIL_REQUEST, (code, field, message, now, request_id)),
                      (q.Q_OUTBOX_DONE, ("failed", f"{code}: {message}"[:MAX_ERROR_TEXT], now, request_id))]
        if audit is not None:
            statements.append((q.Q_INSERT_AUDIT, _audit_params(audit, now)))
        await self._write(statements)

    async def cancel(self, request_id: str, audit: AuditEntry) -> bool:
        """Cancel a request that never reached the CA: CANCELLED with error code CANCELLED (a refusal the
        caller can act on). A claimed row (``sending``) is never cancelled: the relay may be calling the CA."""
        now = self._clock()
        message = f"cancelled by central IT ({audit.actor}) before it reached the CA"
        changed = await self._write([(q.Q_CANCEL_OUTBOX, (now, request_id)),
                                     (q.Q_CANCEL_REQUEST, (message, now, request_id, request_id)),
                                     (q.Q_INSERT_AUDIT_IF_NEW, _audit_params(audit, now))])
        return changed[0] == 1

    async def retry_now(self, request_id: str, audit: AuditEntry, *, orphaned_claim: bool = False) -> bool:
        """Make a waiting row due now. ``orphaned_claim``: also a claimed row no live delivery holds
        (the caller checked with the relay); it becomes due like a reclaimed stale claim."""
        now = self._clock()
        sql = q.Q_RETRY_NOW_ORPHAN if orphaned_claim else q.Q_RETRY_NOW
        changed = await self._write([(sql, (now, now, request_id)),
                                     (q.Q_INSERT_AUDIT_IF_NEW, _audit_params(audit, now))])
        return changed[0] == 1

    async def queue_depth(self) -> dict[str, int]:
        depth = {lane: 0 for lane in LANES}
        depth.update({lane: n for lane, n in await self._all(q.Q_QUEUE_DEPTH, ())})
        return depth

    async def list_queue(self, limit: int) -> list[RequestRecord]:
        ids = [r[0] for r in await self._all(q.Q_LIST_QUEUE, (limit,))]
        return [rec for rec in [await self.get_request(i) for i in ids] if rec is not None]

    # -- certificates (the CertificateRegistry side) ------------------------------

    async def get_certificate_status(self, ref: CertRef) -> CertStatusInfo | None:
        row = await self._one(q.Q_SELECT_CERTIFICATE, (ref.issuer_dn, ref.serial_hex.upper()))
        if row is None:
            return None
        return CertStatusInfo(CertRef(row[0], row[1]), CertState(row[5]), _utc(row[3]), _utc(row[4]), row[2],
                              row[6] or "", _utc(row[7]) if row[7] else None)

    async def get_certificate(self, ref: CertRef) -> CertificateRow | None:
        row = await self._one(q.Q_SELECT_CERTIFICATE_ROW, (ref.issuer_dn, ref.serial_hex.upper()))
        if row is None:
            return None
        return CertificateRow(CertRef(row[0], row[1]), row[2], row[3], _utc(row[4]), _utc(row[5]), row[6], row[7],
                              _unpack_chain(row[8]), row[9], row[10])

    async def record_issued(self, request_id: str, profile: str, issued: IssuedCertificate, *,
                            card_id: str | None = None, holder_cf: str | None = None) -> None:
        """A CA without its own database records an issuance here before answering (durable, idempotent)."""
        await self._write([(q.Q_INSERT_CERTIFICATE, (
            issued.ref.issuer_dn, issued.ref.serial_hex, request_id, profile, int(issued.not_before.timestamp()),
            int(issued.not_after.timestamp()), issued.certificate_der, _pack_chain(issued.chain_der), card_id,
            holder_cf))])

    async def find_issued(self, request_id: str) -> list[IssuedCertificate]:
        rows = await self._all(q.Q_CERTIFICATES_BY_REQUEST, (request_id,))
        return [IssuedCertificate(CertRef(r[0], r[1]), r[2], _unpack_chain(r[3]), _utc(r[4]), _utc(r[5]))
                for r in rows]

    async def update_certificate_status(self, info: CertStatusInfo) -> None:
        revoked_at = int(info.revoked_at.timestamp()) if info.revoked_at else None
        await self._write([(q.Q_UPDATE_CERT_STATUS, (info.state.value, info.revocation_reason or None, revoked_at,
                                                   info.ref.issuer_dn, info.ref.serial_hex))])

    async def first_issued_for_card(self, card_id: str) -> _dt.datetime | None:
        row = await self._one(q.Q_FIRST_FOR_CARD, (card_id,))
        return _utc(row[0]) if row and row[0] is not None else None

    async def find_certificates(self, *, card_id: str = "", holder_cf: str = "",
                                limit: int = 1000) -> list[FoundCertificate]:
        """Every certificate issued for a card (EF_IDCarta serial) and/or a holder (codice fiscale), oldest
        first. At least one of the two is required (``ValueError``)."""
        if not card_id and not holder_cf:
            raise ValueError("give a card serial or a codice fiscale")
        rows = await self._all(q.Q_FIND_CERTIFICATES, (card_id, card_id, holder_cf.upper(), holder_cf.upper(), limit))
        return [FoundCertificate(CertStatusInfo(CertRef(r[0], r[1]), CertState(r[6]), _utc(r[4]), _utc(r[5]), r[2],
                                                r[7] or "", _utc(r[8]) if r[8] else None),
                                 r[3], r[9] or "", r[10] or "", r[11] or "", r[12]) for r in rows]

    async def recent_issuance_stats(self, seconds: float) -> tuple[int, float]:
        row = await self._one(q.Q_ISSUANCE_STATS, (self._clock() - seconds,))
        count, mean = row
        return int(count or 0), float(mean or 0.0) * 1000.0

    # -- maintenance and audit ------------------------------------------------------

    async def add_maintenance(self, id_: str, starts_at: float, ends_at: float, reason: str, source: str,
                              audit: AuditEntry | None = None) -> None:
        statements = [(q.Q_INSERT_MAINTENANCE, (id_, starts_at, ends_at, reason, source))]
        if audit is not None:
            statements.append((q.Q_INSERT_AUDIT, _audit_params(audit, self._clock())))
        await self._write(statements)

    async def list_maintenance(self, after: float) -> list[tuple[str, float, float, str, str]]:
        return [tuple(r) for r in await self._all(q.Q_LIST_MAINTENANCE, (after,))]

    async def record_breaker_event(self, at: float, state: str, detail: str = "") -> None:
        """The relay's circuit breaker moved to ``state`` (open, half_open, closed) at ``at``."""
        await self._write([(q.Q_INSERT_BREAKER_EVENT, (at, state[:16], (detail or "")[:MAX_ERROR_TEXT]))])

    async def add_stock(self, chamber_code: str, quantity: int, note: str, audit: AuditEntry, *,
                        device_model: str = "") -> StockEntry:
        """Append a ledger row (devices sent to a chamber; negative: taken back) with its audit row."""
        now = self._clock()
        await self._write([(q.Q_INSERT_STOCK, (now, chamber_code, device_model, quantity, audit.actor, note)),
                           (q.Q_INSERT_AUDIT, _audit_params(audit, now))])
        rows = await self._all(q.Q_LAST_STOCK, (chamber_code, now))
        return StockEntry(*rows[0])

    async def list_stock(self, chamber_code: str = "") -> list[StockEntry]:
        return [StockEntry(*r) for r in await self._all(q.Q_LIST_STOCK, (chamber_code, chamber_code))]

    async def stock_balance(self, before: float | None = None) -> dict[tuple[str, str], StockBalance]:
        """Per chamber and model: devices sent (ledger), used (cards first issued there), left = sent - used."""
        return stock_balance(await self.list_stock(),
                             await self._all(q.Q_STOCK_USED, (self._clock() if before is None else before,)),
                             before)

    # -- station enrollment (personalizer.enrollment) -----------------------------

    async def add_enrollment_code(self, code_sha256: str, chamber_code: str, station_id: str, expires_at: float,
                                  audit: AuditEntry) -> None:
        """A new one-time code for the station; an enrolled station stays enrolled until it uses it."""
        now = self._clock()
        await self._write([
            (q.Q_INSERT_ENROLLMENT_CODE, (code_sha256, chamber_code, station_id, now, expires_at, audit.actor)),
            (q.Q_STATION_PENDING, (chamber_code, station_id, now)),
            (q.Q_INSERT_AUDIT, _audit_params(audit, now))])

    async def find_enrollment_code(self, code_sha256: str) -> tuple | None:
        """(chamber_code, station_id, expires_at, used_at) of a code, or None."""
        row = await self._one(q.Q_SELECT_ENROLLMENT_CODE, (code_sha256,))
        return tuple(row) if row else None

    async def use_enrollment_code(self, code_sha256: str, now: float, serial_hex: str, not_after: float,
                                  audit: AuditEntry) -> bool:
        """Spend the code and record the certificate issued with it, in one commit; False if it was already
        used or has expired meanwhile (then nothing is recorded)."""
        changed = await self._write([
            (q.Q_USE_ENROLLMENT_CODE, (now, code_sha256, now)),
            (q.Q_INSERT_STATION_CERT_FOR_CODE_IF_USED, (serial_hex, now, not_after, code_sha256)),
            (q.Q_STATION_ENROLLED_FOR_CODE_IF_NEW, (now, code_sha256)),
            (q.Q_INSERT_AUDIT, _audit_params(audit, now))])
        return changed[0] == 1

    async def station_state(self, chamber_code: str, station_id: str) -> str | None:
        row = await self._one(q.Q_STATION_STATE, (chamber_code, station_id))
        return row[0] if row else None

    async def record_station_renewal(self, chamber_code: str, station_id: str, serial_hex: str, not_after: float,
                                     audit: AuditEntry) -> bool:
        """Record a renewed station certificate; False (nothing recorded) unless the station is enrolled."""
        now = self._clock()
        changed = await self._write([
            (q.Q_TOUCH_ENROLLED_STATION, (now, chamber_code, station_id)),
            (q.Q_INSERT_STATION_CERT_IF_NEW, (serial_hex, chamber_code, station_id, now, not_after)),
            (q.Q_INSERT_AUDIT, _audit_params(audit, now))])
        return changed[0] == 1

    async def station_serials(self, chamber_code: str, station_id: str) -> list[str]:
        """Serials of the station's certificates still valid (not expired), revoked or not."""
        rows = await self._all(q.Q_STATION_SERIALS, (chamber_code, station_id, self._clock()))
        return [r[0] for r in rows]

    async def mark_station_certificates_revoked(self, serials: list[str]) -> None:
        """Record that these station certificates are now in the client CRL (superseded by a renewal)."""
        now = self._clock()
        if serials:
            await self._write([(q.Q_REVOKE_STATION_CERT, (now, s)) for s in serials])

    async def revoke_station(self, chamber_code: str, station_id: str, audit: AuditEntry) -> bool:
        """Mark the station revoked, its certificates revoked and its unused codes spent; False if unknown."""
        now = self._clock()
        changed = await self._write([
            (q.Q_REVOKE_STATION, (now, chamber_code, station_id)),
            (q.Q_REVOKE_STATION_CERTS, (now, chamber_code, station_id)),
            (q.Q_SPEND_STATION_CODES, (now, chamber_code, station_id)),
            (q.Q_INSERT_AUDIT, _audit_params(audit, now))])
        return changed[0] == 1

    async def list_stations(self, chamber_code: str = "") -> list[tuple]:
        """(chamber, station, state, updated_at, newest serial, its not_after, revoked certificates) per station."""
        rows = await self._all(q.Q_LIST_STATIONS, (chamber_code, chamber_code))
        return [tuple(r) for r in rows]

    async def append_audit(self, entry: AuditEntry) -> None:
        await self._write([(q.Q_INSERT_AUDIT, _audit_params(entry, self._clock()))])

    async def list_audit(self, after_seq: int = 0, limit: int = 10_000) -> list[AuditEntry]:
        return [_audit_entry(r) for r in await self._all(q.Q_LIST_AUDIT, (after_seq, limit))]


def _audit_entry(r) -> AuditEntry:
    return AuditEntry(actor=r[2], station_id=r[3], operation=r[4], request_id=r[5], target=r[6] or "", result=r[7],
                      detail=r[8] or "", at=r[1], seq=r[0], operator_id=r[9] or "", card_id=r[10] or "",
                      holder_cf=r[11] or "")


def audit_query(f: AuditFilter) -> tuple[str, list[tuple[str, dict]]]:
    """The SELECT for ``f`` and its named parameters (one dict: sqlite3 named style)."""
    where, params = ["a.seq > :after"], {"after": f.after_seq, "limit": f.limit}
    for col, value in (("operator_id", f.operator_id), ("station_id", f.station_id)):
        if value is not None:
            where.append(f"a.{col} = :{col}")
            params[col] = value
    for col, value, key in (("card_id", f.card_id, "card"), ("holder_cf", f.holder_cf, "cf")):
        if value is not None:
            where.append(q.AUDIT_OF.format(col=col).replace(":v", f":{key}"))
            params[key] = value
    if f.since is not None:
        where.append("a.at >= :since")
        params["since"] = f.since
    if f.until is not None:
        where.append("a.at < :until")
        params["until"] = f.until
    sql = q.Q_AUDIT_BY.format(where=" AND ".join(where))
    return sql, params


def connect_readonly(path: Path, what: str = "the request store") -> sqlite3.Connection:
    """A read-only connection to the store at ``path`` (see ``read_audit`` for why immutable when idle)."""
    running = path.with_name(path.name + "-wal").exists()
    uri = path.resolve().as_uri() + ("?mode=ro" if running else "?mode=ro&immutable=1")
    try:
        conn = sqlite3.connect(uri, uri=True)
        conn.execute(f"PRAGMA busy_timeout = {q.BUSY_TIMEOUT_MS}")
    except sqlite3.Error as exc:
        raise StoreError(f"cannot read {what} in {path}: {exc}") from exc
    return conn


def read_audit(path: Path, f: AuditFilter) -> list[AuditEntry]:
    """The audit rows matching ``f``, read with a read-only connection (an auditor needs no write access).

    With the daemon running, its WAL side files exist and are shared read-only. Without them nothing is
    writing the store, and it is read as immutable: a read-only connection would otherwise create
    ``-wal``/``-shm`` files owned by the auditor (root, say) that the daemon's user then cannot open."""
    sql, params = audit_query(f)
    conn = connect_readonly(path, "the audit trail")
    try:
        return [_audit_entry(r) for r in conn.execute(sql, params).fetchall()]
    except sqlite3.Error as exc:
        raise StoreError(f"cannot read the audit trail in {path}: {exc}") from exc
    finally:
        conn.close()
