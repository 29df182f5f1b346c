"""The request store: SQLite (WAL) through aiosqlite. All SQL of the daemon lives here.

Tables: ``requests`` (one row per caller request id, any kind), ``outbox``
(one row per request to deliver to the CA: lane, payload, attempts,
``next_attempt_at``), ``certificates`` (what the CA issued and its state),
``audit`` (append-only: triggers refuse UPDATE and DELETE), ``maintenance``
(planned CA maintenance windows), ``ca_breaker_events`` (the relay's circuit breaker opening and
closing: the CA outages of the monthly report), ``stock_ledger`` (devices central IT sent to a chamber,
``cnsctl stock``; append-only like the audit), ``certified_keys`` (issue 10 item 6: the
SHA-256 of every public key an accepted issue or renew request certifies,
UNIQUE, with its holder, profile and request: a key is certified for one
holder, one profile, one request; it is freed only if that request ended
FAILED or CANCELLED without a certificate; ``complete_issue`` and the
one-time back-fill at open also bind keys of requests accepted before the
table existed; every issuance reaches the CA through this store's outbox,
so the CA's own index needs no second check).

Narrow interface used by the broker and the relay::

    RequestStore.open(path, synchronous, clock) / close()
    enqueue(rec, lane, payload, audit, key=) -> bool   request + key + outbox + audit rows, ONE transaction;
                                                KeyAlreadyCertified if another request holds the key
    key_binding(key_sha256) -> KeyBinding | None  who holds a key (the broker words the refusal)
    get_request(request_id) -> RequestRecord | None
    due(now, lanes, limit) / mark_sending(id, now) / schedule_retry(id, at, error)
    reclaim_stale(claimed_before, held, reason) / release_claim(id, at, reason)   claims whose holder is gone
    complete_issue(...) / complete_change(...) / fail_request(...)   request + outbox + audit, one transaction
    record_issued(...) / find_issued(request_id)   the CertificateRegistry side a CA may use
    find_certificates(card_id=, holder_cf=)       a card's or a holder's certificates (lost card, cnsctl cert find)
    list_queue / queue_depth / retry_now / cancel / maintenance / audit reads
    record_breaker_event(at, state, detail)       the relay's circuit transitions (CA outages)
    add_stock / list_stock / stock_balance        the device stock ledger (cnsctl stock, monthly report)
    add_registration / open_registration / get_registration / list_registrations / cancel_registration
                                                  deferred issuance (enqueue marks one used)
    connect_readonly(path)                        a read-only connection (audit, reports)

Outbox states: queued (never sent) → sending (claimed; an attempt may have
reached the CA) → retry (waiting for next_attempt_at) → done | failed;
queued → cancelled (QueueAdmin, only before any attempt; the request is CANCELLED with error code
CANCELLED). A claim whose holder is gone goes back to retry (``reclaim_stale``); one given back
before the CA was called goes back to queued/retry with one attempt fewer (``release_claim``).

Writes go through one writer task that commits whatever is queued in a single
transaction (group commit: one fsync for many requests under load); reads use
a second connection, so they never see uncommitted rows. sqlite3 errors are
re-raised as ``StoreError``. Must not import grpc, proto or the CA.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import datetime as _dt
import json
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

import aiosqlite

from cns_spec import requests
from personalizer.ca.base import CertRef, CertState, CertStatusInfo, IssuedCertificate
from personalizer.errors import StoreError
from personalizer.rules.registrations import Registration
from personalizer.rules.validation import certificate_key_sha256

SCHEMA_VERSION = 2
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
CREATE TABLE IF NOT EXISTS outbox (
    request_id       TEXT PRIMARY KEY REFERENCES requests(request_id),
    lane             TEXT NOT NULL,
    kind             TEXT NOT NULL,
    payload          BLOB NOT NULL,
    status           TEXT NOT NULL,
    attempts         INTEGER NOT NULL DEFAULT 0,
    next_attempt_at  REAL NOT NULL,
    last_error       TEXT,
    updated_at       REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS outbox_due ON outbox(status, lane, next_attempt_at);
CREATE TABLE IF NOT EXISTS audit (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    at           REAL NOT NULL,
    actor        TEXT NOT NULL,
    station_id   TEXT NOT NULL,
    operation    TEXT NOT NULL,
    request_id   TEXT,
    target       TEXT,
    result       TEXT NOT NULL,
    detail       TEXT
);
CREATE TRIGGER IF NOT EXISTS audit_no_update BEFORE UPDATE ON audit
    BEGIN SELECT RAISE(ABORT, 'audit is append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_no_delete BEFORE DELETE ON audit
    BEGIN SELECT RAISE(ABORT, 'audit is append-only'); END;
CREATE TABLE IF NOT EXISTS ca_breaker_events (
    seq    INTEGER PRIMARY KEY AUTOINCREMENT,
    at     REAL NOT NULL,
    state  TEXT NOT NULL,
    detail TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS stock_ledger (
    seq           INTEGER PRIMARY KEY AUTOINCREMENT,
    at            REAL NOT NULL,
    chamber_code  TEXT NOT NULL,
    device_model  TEXT NOT NULL DEFAULT '',
    quantity      INTEGER NOT NULL,
    actor         TEXT NOT NULL,
    note          TEXT NOT NULL DEFAULT ''
);
CREATE TRIGGER IF NOT EXISTS stock_no_update BEFORE UPDATE ON stock_ledger
    BEGIN SELECT RAISE(ABORT, 'the stock ledger is append-only'); END;
CREATE TRIGGER IF NOT EXISTS stock_no_delete BEFORE DELETE ON stock_ledger
    BEGIN SELECT RAISE(ABORT, 'the stock ledger is append-only'); END;
-- Deferred issuance (personalizer.rules.registrations): a holder registered by an IR, used once by one request.
CREATE TABLE IF NOT EXISTS registrations (
    registration_id   TEXT PRIMARY KEY,
    chamber_code      TEXT NOT NULL,
    codice_fiscale    TEXT NOT NULL,
    given_name        TEXT NOT NULL,
    surname           TEXT NOT NULL,
    birth_date        TEXT NOT NULL,
    form_sha256       TEXT NOT NULL,
    form_type         TEXT NOT NULL,
    form              BLOB NOT NULL,
    created_by        TEXT NOT NULL,
    created_at        REAL NOT NULL,
    expires_at        REAL NOT NULL,
    used_by           TEXT,
    used_operator_id  TEXT,
    used_at           REAL,
    request_id        TEXT,
    sex               TEXT NOT NULL DEFAULT '',
    birth_town        TEXT NOT NULL DEFAULT '',
    card_id           TEXT,
    cancelled_by      TEXT,
    cancelled_at      REAL
);
CREATE INDEX IF NOT EXISTS registrations_by_chamber ON registrations(chamber_code, created_at);
CREATE TRIGGER IF NOT EXISTS registration_used_once BEFORE UPDATE ON registrations
    WHEN OLD.card_id IS NOT NULL AND NEW.card_id IS NOT OLD.card_id
    BEGIN SELECT RAISE(ABORT, 'registration already used'); END;
CREATE TRIGGER IF NOT EXISTS registration_not_cancelled BEFORE UPDATE OF card_id ON registrations
    WHEN OLD.cancelled_at IS NOT NULL
    BEGIN SELECT RAISE(ABORT, 'registration cancelled'); END;
CREATE TRIGGER IF NOT EXISTS registration_holder_fixed BEFORE UPDATE OF registration_id, chamber_code,
    codice_fiscale, given_name, surname, birth_date, form_sha256, form, created_by, created_at ON registrations
    BEGIN SELECT RAISE(ABORT, 'a registration is not edited'); END;
CREATE TRIGGER IF NOT EXISTS registration_no_delete BEFORE DELETE ON registrations
    BEGIN SELECT RAISE(ABORT, 'registrations are kept'); END;
CREATE TABLE IF NOT EXISTS certified_keys (
    key_sha256  BLOB NOT NULL UNIQUE,   -- SHA-256 of the DER SubjectPublicKeyInfo
    holder_cf   TEXT NOT NULL,
    profile     TEXT NOT NULL,
    request_id  TEXT NOT NULL REFERENCES requests(request_id),
    bound_at    REAL NOT NULL
);
-- Station enrollment (personalizer.enrollment): one-time codes, stored as their SHA-256 only, bound to one
-- station of one chamber; the station certificates issued through them and by renewal.
CREATE TABLE IF NOT EXISTS enrollment_codes (
    code_sha256   TEXT PRIMARY KEY,
    chamber_code  TEXT NOT NULL,
    station_id    TEXT NOT NULL,
    created_at    REAL NOT NULL,
    expires_at    REAL NOT NULL,
    used_at       REAL,
    created_by    TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS stations (
    chamber_code  TEXT NOT NULL,
    station_id    TEXT NOT NULL,
    state         TEXT NOT NULL,          -- pending | enrolled | revoked
    updated_at    REAL NOT NULL,
    PRIMARY KEY (chamber_code, station_id)
);
CREATE TABLE IF NOT EXISTS station_certificates (
    serial_hex    TEXT PRIMARY KEY,
    chamber_code  TEXT NOT NULL,
    station_id    TEXT NOT NULL,
    issued_at     REAL NOT NULL,
    not_after     REAL NOT NULL,
    revoked_at    REAL
);
CREATE TABLE IF NOT EXISTS maintenance (
    id         TEXT PRIMARY KEY,
    starts_at  REAL NOT NULL,
    ends_at    REAL NOT NULL,
    reason     TEXT NOT NULL,
    source     TEXT NOT NULL
);
"""
# Columns added after schema 1 (ALTER TABLE when an older database is opened).
MIGRATIONS = (("certificates", "card_id", "TEXT"), ("certificates", "holder_cf", "TEXT"),
              # who and for whom (issue 9): the requester's operator, the card and its holder
              ("audit", "operator_id", "TEXT"), ("audit", "card_id", "TEXT"), ("audit", "holder_cf", "TEXT"))

Q_INSERT_REQUEST = """INSERT OR IGNORE INTO requests
    (request_id, kind, profile, payload_sha256, chamber_code, station_id, operator_id, state, issuer_dn, serial_hex,
     created_at, updated_at)
    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"""
# Only when the statement before changed one row (changes() = 1): the outbox and audit rows of a new
# request; the audit row of a cancel or retry that took effect.
Q_INSERT_OUTBOX_IF_NEW = """INSERT INTO outbox (request_id, lane, kind, payload, status, attempts, next_attempt_at, updated_at)
    SELECT ?, ?, ?, ?, 'queued', 0, ?, ? WHERE changes() = 1"""
# Claimed at acceptance: the relay delivers it right away (same as queued + mark_sending, one commit).
Q_INSERT_OUTBOX_CLAIMED_IF_NEW = """INSERT INTO outbox
    (request_id, lane, kind, payload, status, attempts, next_attempt_at, updated_at)
    SELECT ?, ?, ?, ?, 'sending', 1, ?, ? WHERE changes() = 1"""
# operator_id NULL (AuditEntry.operator_id None, e.g. the relay's rows): the operator of the row's request.
_AUDIT_COLUMNS = "at, actor, station_id, operation, request_id, target, result, detail, operator_id, card_id, holder_cf"
_AUDIT_VALUES = ("?, ?, ?, ?, ?, ?, ?, ?, COALESCE(?, (SELECT operator_id FROM requests WHERE request_id = ?), ''), "
                 "?, ?")
# A key held by a request that ended without a certificate (cancelled, refused by the CA) is free again.
Q_FREE_KEY = """DELETE FROM certified_keys WHERE key_sha256 = ?
    AND request_id IN (SELECT request_id FROM requests WHERE state IN ('FAILED', 'CANCELLED'))
    AND NOT EXISTS (SELECT 1 FROM certificates c WHERE c.request_id = certified_keys.request_id)"""
# Only for a new request (changes() = 1 after Q_INSERT_REQUEST); a key held by another request fails the
# UNIQUE constraint and rolls the whole request back (KeyAlreadyCertified). Its own changes() = 1 lets the
# outbox and audit rows follow.
Q_BIND_KEY_IF_NEW = """INSERT INTO certified_keys (key_sha256, holder_cf, profile, request_id, bound_at)
    SELECT ?, ?, ?, ?, ? WHERE changes() = 1"""
Q_SELECT_KEY = "SELECT holder_cf, profile, request_id FROM certified_keys WHERE key_sha256 = ?"
Q_KEYS_BACKFILLED = "SELECT 1 FROM meta WHERE key = 'certified_keys_backfilled'"
Q_MARK_KEYS_BACKFILLED = "INSERT INTO meta (key, value) VALUES ('certified_keys_backfilled', ?)"
Q_CERTIFICATES_TO_BIND = "SELECT certificate_der, COALESCE(holder_cf, ''), profile, request_id FROM certificates"
Q_BACKFILL_KEY = """INSERT OR IGNORE INTO certified_keys (key_sha256, holder_cf, profile, request_id, bound_at)
    VALUES (?, ?, ?, ?, ?)"""
# At completion: the issued certificate's key, for requests accepted before this table existed (no-op otherwise).
Q_BIND_ISSUED_KEY = Q_BACKFILL_KEY
KEY_CONSTRAINT = "certified_keys.key_sha256"   # in sqlite's "UNIQUE constraint failed: ..." message
Q_INSERT_AUDIT_IF_NEW = f"INSERT INTO audit ({_AUDIT_COLUMNS}) SELECT {_AUDIT_VALUES} WHERE changes() = 1"
Q_ENSURE_OUTBOX = """INSERT OR IGNORE INTO outbox
    (request_id, lane, kind, payload, status, attempts, next_attempt_at, updated_at)
    VALUES (?, ?, ?, ?, 'queued', 0, ?, ?)"""
Q_INSERT_AUDIT = f"INSERT INTO audit ({_AUDIT_COLUMNS}) VALUES ({_AUDIT_VALUES})"
Q_SELECT_REQUEST = """SELECT r.request_id, r.kind, r.profile, r.payload_sha256, r.chamber_code, r.station_id,
    r.operator_id, r.state, r.error_code, r.error_field, r.error_message, r.issuer_dn, r.serial_hex,
    r.created_at, r.updated_at, c.certificate_der, c.chain_der,
    o.lane, o.status, o.attempts, o.next_attempt_at, o.last_error
    FROM requests r LEFT JOIN certificates c ON c.issuer_dn = r.issuer_dn AND c.serial_hex = r.serial_hex
    LEFT JOIN outbox o ON o.request_id = r.request_id
    WHERE r.request_id = ?"""
Q_SELECT_PAYLOAD = "SELECT lane, kind, payload, status, attempts FROM outbox WHERE request_id = ?"
Q_DUE = """SELECT request_id FROM outbox WHERE status IN ('queued', 'retry') AND lane = ? AND next_attempt_at <= ?
    ORDER BY next_attempt_at LIMIT ?"""
Q_NEXT_DUE = "SELECT MIN(next_attempt_at) FROM outbox WHERE status IN ('queued', 'retry') AND lane IN (%s)"
Q_MARK_SENDING = """UPDATE outbox SET status = 'sending', attempts = attempts + 1, updated_at = ?
    WHERE request_id = ? AND status IN ('queued', 'retry')"""
Q_REQUEST_PENDING = "UPDATE requests SET state = 'PENDING', updated_at = ? WHERE request_id = ? AND state = 'RECEIVED'"
Q_SCHEDULE_RETRY = """UPDATE outbox SET status = 'retry', next_attempt_at = ?, last_error = ?, updated_at = ?
    WHERE request_id = ? AND status = 'sending'"""
Q_DEFER = """UPDATE outbox SET next_attempt_at = ?, last_error = ?, updated_at = ?
    WHERE request_id = ? AND status IN ('queued', 'retry')"""
Q_RESET_SENDING = "UPDATE outbox SET status = 'retry', next_attempt_at = ?, updated_at = ? WHERE status = 'sending'"
# Stale claims (holder gone): due again now; attempts kept, so the next attempt looks up the CA first.
Q_RECLAIM_STALE = """UPDATE outbox SET status = 'retry', next_attempt_at = ?, last_error = ?, updated_at = ?
    WHERE status = 'sending' AND updated_at < ? AND request_id NOT IN (SELECT value FROM json_each(?))"""
# A claim given back before the CA was called: one attempt fewer, queued again if none is left.
Q_RELEASE_CLAIM = """UPDATE outbox SET status = CASE WHEN attempts <= 1 THEN 'queued' ELSE 'retry' END,
    attempts = MAX(attempts - 1, 0), next_attempt_at = ?, last_error = ?, updated_at = ?
    WHERE request_id = ? AND status = 'sending'"""
Q_REQUEST_RECEIVED_IF_UNSENT = """UPDATE requests SET state = 'RECEIVED', updated_at = ? WHERE request_id = ?
    AND state = 'PENDING' AND EXISTS (SELECT 1 FROM outbox WHERE request_id = ? AND attempts = 0)"""
Q_OUTBOX_DONE = "UPDATE outbox SET status = ?, last_error = ?, updated_at = ? WHERE request_id = ?"
Q_COMPLETE_REQUEST = """UPDATE requests SET state = ?, issuer_dn = ?, serial_hex = ?, updated_at = ?
    WHERE request_id = ?"""
Q_INSERT_CERTIFICATE = """INSERT OR IGNORE INTO certificates
    (issuer_dn, serial_hex, request_id, profile, not_before, not_after, status, certificate_der, chain_der,
     card_id, holder_cf)
    VALUES (?, ?, ?, ?, ?, ?, 'active', ?, ?, ?, ?)"""
Q_FAIL_REQUEST = """UPDATE requests SET state = 'FAILED', error_code = ?, error_field = ?, error_message = ?,
    updated_at = ? WHERE request_id = ?"""
Q_CANCEL_OUTBOX = """UPDATE outbox SET status = 'cancelled', updated_at = ?
    WHERE request_id = ? AND status IN ('queued', 'retry') AND attempts = 0"""
Q_CANCEL_REQUEST = """UPDATE requests SET state = 'CANCELLED', error_code = 'CANCELLED', error_field = '',
    error_message = ?, updated_at = ? WHERE request_id = ?
    AND EXISTS (SELECT 1 FROM outbox WHERE request_id = ? AND status = 'cancelled')"""
Q_RETRY_NOW = """UPDATE outbox SET next_attempt_at = ?, updated_at = ?
    WHERE request_id = ? AND status IN ('queued', 'retry')"""
Q_RETRY_NOW_ORPHAN = """UPDATE outbox SET next_attempt_at = ?, updated_at = ?,
    status = CASE status WHEN 'sending' THEN 'retry' ELSE status END
    WHERE request_id = ? AND status IN ('queued', 'retry', 'sending')"""
Q_SELECT_CERTIFICATE = """SELECT issuer_dn, serial_hex, request_id, not_before, not_after, status,
    revocation_reason, revoked_at FROM certificates WHERE issuer_dn = ? AND serial_hex = ?"""
Q_SELECT_CERTIFICATE_ROW = """SELECT issuer_dn, serial_hex, request_id, profile, not_before, not_after, status,
    certificate_der, chain_der, card_id, holder_cf FROM certificates WHERE issuer_dn = ? AND serial_hex = ?"""
Q_CERTIFICATES_BY_REQUEST = """SELECT issuer_dn, serial_hex, certificate_der, chain_der, not_before, not_after
    FROM certificates WHERE request_id = ?"""
Q_FIRST_FOR_CARD = "SELECT MIN(not_before) FROM certificates WHERE card_id = ?"
# A card's certificates (by EF_IDCarta serial) or a holder's (by codice fiscale), with the requesting chamber.
Q_FIND_CERTIFICATES = """SELECT c.issuer_dn, c.serial_hex, c.request_id, c.profile, c.not_before, c.not_after, c.status,
    c.revocation_reason, c.revoked_at, c.card_id, c.holder_cf, r.chamber_code, c.certificate_der
    FROM certificates c LEFT JOIN requests r ON r.request_id = c.request_id
    WHERE (? = '' OR c.card_id = ?) AND (? = '' OR c.holder_cf = ?)
    ORDER BY c.not_before, c.serial_hex LIMIT ?"""
Q_UPDATE_CERT_STATUS = """UPDATE certificates SET status = ?, revocation_reason = ?, revoked_at = ?
    WHERE issuer_dn = ? AND serial_hex = ?"""
Q_ISSUANCE_STATS = """SELECT COUNT(*), AVG(updated_at - created_at) FROM requests
    WHERE state = 'ISSUED' AND updated_at >= ?"""
Q_QUEUE_DEPTH = "SELECT lane, COUNT(*) FROM outbox WHERE status IN ('queued', 'retry', 'sending') GROUP BY lane"
Q_LIST_QUEUE = """SELECT request_id FROM outbox WHERE status IN ('queued', 'retry', 'sending')
    ORDER BY CASE lane WHEN 'priority' THEN 0 ELSE 1 END, next_attempt_at LIMIT ?"""
Q_INSERT_MAINTENANCE = """INSERT OR REPLACE INTO maintenance (id, starts_at, ends_at, reason, source)
    VALUES (?, ?, ?, ?, ?)"""
Q_LIST_MAINTENANCE = "SELECT id, starts_at, ends_at, reason, source FROM maintenance WHERE ends_at > ? ORDER BY starts_at"
Q_INSERT_BREAKER_EVENT = "INSERT INTO ca_breaker_events (at, state, detail) VALUES (?, ?, ?)"
Q_INSERT_STOCK = """INSERT INTO stock_ledger (at, chamber_code, device_model, quantity, actor, note)
    VALUES (?, ?, ?, ?, ?, ?)"""
Q_LIST_STOCK = """SELECT seq, at, chamber_code, device_model, quantity, actor, note FROM stock_ledger
    WHERE (? = '' OR chamber_code = ?) ORDER BY seq"""
# Devices used per chamber and model: distinct cards first issued (kind issue, ISSUED) by that chamber's
# stations before a time, with the model the station reported (outbox payload; '' for older rows).
Q_STOCK_USED = """SELECT r.chamber_code, COALESCE(json_extract(CAST(o.payload AS TEXT), '$.card_model'), ''),
    COUNT(DISTINCT c.card_id) FROM requests r
    JOIN certificates c ON c.request_id = r.request_id LEFT JOIN outbox o ON o.request_id = r.request_id
    WHERE r.kind = 'issue' AND r.state = 'ISSUED' AND c.card_id IS NOT NULL AND r.updated_at < ?
    GROUP BY 1, 2"""
_REGISTRATION_COLUMNS = """registration_id, chamber_code, codice_fiscale, given_name, surname, birth_date, form_sha256,
    form_type, LENGTH(form), created_by, created_at, expires_at, used_by, used_operator_id, used_at, request_id,
    sex, birth_town, card_id, cancelled_by, cancelled_at"""
# Open: not bound to a card, not cancelled, not expired. One open registration per holder and chamber
# (an IR's retry or a second registration cannot issue a second card): the insert checks it itself.
_OPEN_FOR_HOLDER = """SELECT {cols} FROM registrations WHERE chamber_code = ? AND codice_fiscale = ?
    AND card_id IS NULL AND cancelled_at IS NULL AND expires_at > ?"""
Q_INSERT_REGISTRATION = f"""INSERT INTO registrations (registration_id, chamber_code, codice_fiscale, given_name,
    surname, birth_date, form_sha256, form_type, form, created_by, created_at, expires_at, sex, birth_town)
    SELECT ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ? WHERE NOT EXISTS ({_OPEN_FOR_HOLDER.format(cols="1")})"""
Q_OPEN_REGISTRATION = _OPEN_FOR_HOLDER.format(cols=_REGISTRATION_COLUMNS)
Q_CANCEL_REGISTRATION = """UPDATE registrations SET cancelled_by = ?, cancelled_at = ?
    WHERE registration_id = ? AND card_id IS NULL AND cancelled_at IS NULL"""
Q_SELECT_REGISTRATION = f"SELECT {_REGISTRATION_COLUMNS} FROM registrations WHERE registration_id = ?"
Q_LIST_REGISTRATIONS = f"""SELECT {_REGISTRATION_COLUMNS} FROM registrations
    WHERE (? = '' OR chamber_code = ?) AND (? OR (card_id IS NULL AND cancelled_at IS NULL AND expires_at > ?))
    ORDER BY created_at DESC LIMIT ?"""
# Last statement of a new issuance's commit (after its audit row: changes() = 1 only for a new request).
# A registration issues ONE card: its first request binds it to the card (the card's other keyset's
# request passes); the trigger registration_used_once aborts the whole request for another card.
Q_USE_REGISTRATION = """UPDATE registrations SET used_by = COALESCE(used_by, ?),
    used_operator_id = COALESCE(used_operator_id, ?), used_at = COALESCE(used_at, ?),
    request_id = COALESCE(request_id, ?), card_id = ?
    WHERE registration_id = ? AND changes() = 1"""
Q_LIST_AUDIT = """SELECT seq, at, actor, station_id, operation, request_id, target, result, detail, operator_id,
    card_id, holder_cf FROM audit WHERE seq > ? ORDER BY seq LIMIT ?"""

STATE_RECEIVED = requests.RECEIVED     # the vocabulary is cns_spec.requests'
STATE_PENDING = requests.PENDING
STATE_ISSUED = requests.ISSUED
STATE_DONE = requests.DONE
STATE_FAILED = requests.FAILED
STATE_CANCELLED = requests.CANCELLED
TERMINAL_STATES = requests.TERMINAL
LANE_PRIORITY = "priority"
LANE_STANDARD = "standard"
LANES = (LANE_PRIORITY, LANE_STANDARD)
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
    lane: str | None = None
    outbox_status: str | None = None
    attempts: int = 0
    next_attempt_at: float = 0.0
    last_error: str | None = None

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL_STATES


@dataclass(frozen=True)
class AuditEntry:
    actor: str            # identity URI from the client certificate, or "relay"
    station_id: str       # the requester's station, "" when none
    operation: str        # issue, renew, suspend, reactivate, revoke, queue-cancel, ...
    request_id: str | None
    target: str           # certificate "issuer_dn#serial" or card id, "" when none
    result: str           # accepted, done, failed:<code>, refused:<code>, ...
    detail: str = ""
    at: float = 0.0
    seq: int = 0
    operator_id: str | None = None   # the requester's operator; None: the operator of request_id's request
    card_id: str = ""                # the card concerned, when the writer knows it
    holder_cf: str = ""              # its holder's codice fiscale, when the writer knows it


@dataclass(frozen=True)
class StockEntry:
    seq: int
    at: float
    chamber_code: str
    device_model: str     # "" when central IT did not say which type
    quantity: int
    actor: str
    note: str


@dataclass(frozen=True)
class StockBalance:
    chamber_code: str
    device_model: str     # "": devices of no type, or of a type the ledger has no row for in that chamber
    sent: int
    used: int

    @property
    def left(self) -> int:
        return self.sent - self.used


def stock_balance(entries, used_rows, before: float | None = None) -> dict[tuple[str, str], StockBalance]:
    """Fold ledger rows and (chamber, model, used) rows into balances per (chamber, model), sorted. A card
    of a model the chamber's ledger does not name counts against the chamber's untyped row ("")."""
    sent: dict[tuple[str, str], int] = {}
    for e in entries:
        if before is None or e.at < before:
            sent[(e.chamber_code, e.device_model)] = sent.get((e.chamber_code, e.device_model), 0) + e.quantity
    used: dict[tuple[str, str], int] = {}
    for chamber, model, n in used_rows:
        key = (chamber, model) if (chamber, model) in sent else (chamber, "")
        used[key] = used.get(key, 0) + int(n)
    return {k: StockBalance(k[0], k[1], sent.get(k, 0), used.get(k, 0)) for k in sorted(set(sent) | set(used))}


@dataclass(frozen=True)
class KeyBinding:
    """A public key certified (or being certified) by one request, for one holder and profile."""

    key_sha256: bytes     # SHA-256 of the DER SubjectPublicKeyInfo
    holder_cf: str
    profile: str
    request_id: str = ""


class KeyAlreadyCertified(StoreError):
    """enqueue: another request holds the key (nothing was written)."""


@dataclass(frozen=True)
class OutboxPayload:
    lane: str
    kind: str
    payload: bytes
    status: str
    attempts: int


@dataclass(frozen=True)
class FoundCertificate:
    """One row of ``find_certificates``: the certificate's state and whom it was issued for."""
    info: CertStatusInfo
    profile: str
    card_id: str
    holder_cf: str
    chamber_code: str
    certificate_der: bytes


@dataclass(frozen=True)
class CertificateRow:
    ref: CertRef
    request_id: str
    profile: str
    not_before: _dt.datetime
    not_after: _dt.datetime
    status: str
    certificate_der: bytes
    chain_der: tuple[bytes, ...]
    card_id: str | None
    holder_cf: str | None


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


# Every text an audit row stores is bounded (issue 10): a caller cannot grow a row past these.
AUDIT_LIMITS = dict(actor=160, station_id=64, operation=40, request_id=128, target=600, result=64, detail=500,
                    operator_id=64, card_id=32, holder_cf=32)


MAX_ERROR_TEXT = 500   # a request's error message, an outbox row's last error (CA answers can be huge)


def _cut(value: str | None, field: str) -> str | None:
    return value if value is None or len(value) <= AUDIT_LIMITS[field] else value[:AUDIT_LIMITS[field]]


def _audit_params(a: AuditEntry, now: float) -> tuple:
    return (a.at or now, _cut(a.actor, "actor"), _cut(a.station_id, "station_id"), _cut(a.operation, "operation"),
            _cut(a.request_id, "request_id"), _cut(a.target, "target"), _cut(a.result, "result"),
            _cut(a.detail, "detail"), _cut(a.operator_id, "operator_id"), _cut(a.request_id, "request_id"),
            _cut(a.card_id, "card_id") or None, _cut(a.holder_cf, "holder_cf") or None)


class _Writer:
    """The one writing connection, owned by one thread: every group commit is ONE call on it.

    aiosqlite hands each statement to its thread separately; a group commit of
    16 requests (≈ 100 statements with their savepoints) then costs ~100 thread
    handoffs, which capped issuance at ~200/s. Here the whole transaction runs
    as one function on the writer's own thread. Reads stay on aiosqlite.
    """

    def __init__(self, path: Path):
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="store-writer")
        self._path = path
        self.conn: sqlite3.Connection | None = None

    async def run(self, fn, *args):
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


def _open_writer_sync(w: _Writer, synchronous: str) -> None:
    w.connect_sync()
    c = w.conn
    c.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    c.execute("PRAGMA journal_mode = WAL")
    c.execute(f"PRAGMA synchronous = {synchronous}")
    c.execute("PRAGMA foreign_keys = ON")
    c.executescript(SCHEMA)
    for table, column, kind in MIGRATIONS:
        names = {row[1] for row in c.execute(f"PRAGMA table_info({table})").fetchall()}
        if column not in names:
            c.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")
    c.execute("CREATE INDEX IF NOT EXISTS certificates_by_card ON certificates(card_id)")
    c.execute("CREATE INDEX IF NOT EXISTS audit_by_card ON audit(card_id)")
    c.execute("CREATE INDEX IF NOT EXISTS audit_by_holder ON audit(holder_cf)")
    c.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
    _backfill_keys_sync(c)


def _backfill_keys_sync(c: sqlite3.Connection) -> None:
    """Once per database: bind the keys of certificates issued before ``certified_keys`` existed."""
    if c.execute(Q_KEYS_BACKFILLED).fetchone():
        return
    c.execute("BEGIN IMMEDIATE")
    try:
        now = time.time()
        for der, cf, profile, request_id in c.execute(Q_CERTIFICATES_TO_BIND).fetchall():
            try:
                digest = certificate_key_sha256(der)
            except ValueError:   # unreadable DER: nothing to bind (the row stays as it was)
                continue
            c.execute(Q_BACKFILL_KEY, (digest, cf, profile, request_id, now))
        c.execute(Q_MARK_KEYS_BACKFILLED, (str(now),))
        c.execute("COMMIT")
    except BaseException:
        c.execute("ROLLBACK")
        raise


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
    if isinstance(exc, sqlite3.IntegrityError) and KEY_CONSTRAINT in str(exc):
        return KeyAlreadyCertified("the public key is already certified by another request")
    return StoreError(f"write failed: {exc}")


class RequestStore:
    def __init__(self, writer: _Writer, reader: aiosqlite.Connection, clock=time.time):
        self._w = writer
        self._r = reader
        self._clock = clock
        self._queue: asyncio.Queue = asyncio.Queue()
        self._task = asyncio.create_task(self._writer_loop(), name="store-writer")
        self.commits = 0          # for the benchmark: transactions actually committed
        self.writes = 0

    @classmethod
    async def open(cls, path: Path, *, synchronous: str = "FULL", clock=time.time) -> "RequestStore":
        path.parent.mkdir(parents=True, exist_ok=True)
        writer = _Writer(path)
        try:
            await writer.run(_open_writer_sync, writer, synchronous)
            reader = await aiosqlite.connect(path, isolation_level=None)
            await reader.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
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

    async def _write(self, statements: list[tuple[str, tuple]]) -> list[int]:
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

    # -- requests and outbox ----------------------------------------------------

    async def create_request(self, rec: RequestRecord) -> bool:
        """A request row alone (no outbox row): what older versions wrote before calling the CA."""
        now = self._clock()
        changed = await self._write([(Q_INSERT_REQUEST, (
            rec.request_id, rec.kind, rec.profile, rec.payload_sha256, rec.chamber_code, rec.station_id,
            rec.operator_id, STATE_RECEIVED, rec.issuer_dn, rec.serial_hex, now, now))])
        return changed[0] == 1

    async def enqueue(self, rec: RequestRecord, *, lane: str, payload: bytes, audit: AuditEntry,
                      claim: bool = False, key: KeyBinding | None = None, registration_id: str = "") -> bool:
        """Request row + outbox row + audit row in one transaction; False (nothing written) if the id exists.

        ``key``: the public key the request certifies, bound to it in the same transaction; if another
        request holds it, nothing is written and ``KeyAlreadyCertified`` is raised. A retry (the id
        exists) binds nothing and raises nothing: the caller compares it with the stored request.

        ``registration_id``: a deferred issuance; the registration is marked used for this request's card
        (``audit.card_id``) in the same transaction (StoreError "registration already used", nothing
        written, if a request for another card was first).

        ``claim``: the row is written already claimed by the relay (``sending``, attempt 1, request
        PENDING), as ``mark_sending`` would leave it; the caller delivers it now.
        """
        now = self._clock()
        statements = [(Q_FREE_KEY, (key.key_sha256,))] if key else []
        first = len(statements)
        statements.append(
            (Q_INSERT_REQUEST, (rec.request_id, rec.kind, rec.profile, rec.payload_sha256, rec.chamber_code,
                                rec.station_id, rec.operator_id, STATE_PENDING if claim else STATE_RECEIVED,
                                rec.issuer_dn, rec.serial_hex, now, now)))
        if key:
            statements.append((Q_BIND_KEY_IF_NEW, (key.key_sha256, key.holder_cf, key.profile, rec.request_id, now)))
        statements += [
            (Q_INSERT_OUTBOX_CLAIMED_IF_NEW if claim else Q_INSERT_OUTBOX_IF_NEW,
             (rec.request_id, lane, rec.kind, payload, now, now)),
            (Q_INSERT_AUDIT_IF_NEW, _audit_params(audit, now)),
        ]
        if registration_id:   # after the audit row: its changes() = 1 only for a new request
            statements.append((Q_USE_REGISTRATION, (audit.actor, rec.operator_id, now, rec.request_id, audit.card_id,
                                                    registration_id)))
        changed = await self._write(statements)
        return changed[first] == 1

    async def key_binding(self, key_sha256: bytes) -> KeyBinding | None:
        row = await self._one(Q_SELECT_KEY, (key_sha256,))
        return KeyBinding(key_sha256, row[0], row[1], row[2]) if row else None

    async def add_registration(self, reg: Registration, form: bytes, audit: AuditEntry) -> bool:
        """The registration (with its form) and its audit row, one transaction; False (nothing written)
        when the holder already has an open registration in that chamber (``open_registration``)."""
        now = self._clock()
        changed = await self._write([
            (Q_INSERT_REGISTRATION, (reg.registration_id, reg.chamber_code, reg.codice_fiscale, reg.given_name,
                                     reg.surname, reg.birth_date, reg.form_sha256, reg.form_type, form,
                                     reg.created_by, reg.created_at, reg.expires_at, reg.sex, reg.birth_town,
                                     reg.chamber_code, reg.codice_fiscale, reg.created_at)),
            (Q_INSERT_AUDIT_IF_NEW, _audit_params(audit, now))])
        return changed[0] == 1

    async def open_registration(self, chamber_code: str, codice_fiscale: str, now: float) -> Registration | None:
        row = await self._one(Q_OPEN_REGISTRATION, (chamber_code, codice_fiscale, now))
        return Registration(*row) if row else None

    async def cancel_registration(self, registration_id: str, *, by: str, audit: AuditEntry) -> bool:
        """Cancel an open or expired registration not yet bound to a card, with its audit row; False if not."""
        now = self._clock()
        changed = await self._write([(Q_CANCEL_REGISTRATION, (by, now, registration_id)),
                                     (Q_INSERT_AUDIT_IF_NEW, _audit_params(audit, now))])
        return changed[0] == 1

    async def get_registration(self, registration_id: str) -> Registration | None:
        row = await self._one(Q_SELECT_REGISTRATION, (registration_id,))
        return Registration(*row) if row else None

    async def list_registrations(self, chamber_code: str, *, include_closed: bool, now: float,
                                 limit: int) -> list[Registration]:
        rows = await self._all(Q_LIST_REGISTRATIONS, (chamber_code, chamber_code, int(include_closed), now, limit))
        return [Registration(*r) for r in rows]

    async def ensure_outbox(self, request_id: str, *, lane: str, kind: str, payload: bytes) -> None:
        """Give a request row left by an older version (no outbox row) its outbox row."""
        now = self._clock()
        await self._write([(Q_ENSURE_OUTBOX, (request_id, lane, kind, payload, now, now))])

    async def get_request(self, request_id: str) -> RequestRecord | None:
        row = await self._one(Q_SELECT_REQUEST, (request_id,))
        if row is None:
            return None
        return RequestRecord(*row[:15], certificate_der=row[15], chain_der=_unpack_chain(row[16]), lane=row[17],
                             outbox_status=row[18], attempts=row[19] or 0, next_attempt_at=row[20] or 0.0,
                             last_error=row[21])

    async def get_payload(self, request_id: str) -> OutboxPayload | None:
        row = await self._one(Q_SELECT_PAYLOAD, (request_id,))
        return OutboxPayload(*row) if row else None

    async def due(self, now: float, lane: str, limit: int) -> list[str]:
        return [r[0] for r in await self._all(Q_DUE, (lane, now, limit))]

    async def next_due(self, lanes: tuple[str, ...]) -> float | None:
        if not lanes:
            return None
        row = await self._one(Q_NEXT_DUE % ",".join("?" * len(lanes)), tuple(lanes))
        return row[0] if row else None

    async def mark_sending(self, request_id: str) -> bool:
        """Claim a due row before calling the CA (committed first: after a crash we know it may have reached it)."""
        now = self._clock()
        changed = await self._write([(Q_MARK_SENDING, (now, request_id)), (Q_REQUEST_PENDING, (now, request_id))])
        return changed[0] == 1

    async def schedule_retry(self, request_id: str, at: float, error: str) -> None:
        await self._write([(Q_SCHEDULE_RETRY, (at, error[:MAX_ERROR_TEXT], self._clock(), request_id))])

    async def defer(self, request_ids: list[str], at: float, reason: str) -> None:
        """Move waiting rows (never claimed now) to ``at``: window closed, maintenance, breaker open."""
        now = self._clock()
        await self._write([(Q_DEFER, (at, reason[:MAX_ERROR_TEXT], now, rid)) for rid in request_ids])

    async def reset_sending(self) -> int:
        """At relay start: rows claimed by a process that died become due now (they may have reached the CA)."""
        now = self._clock()
        return (await self._write([(Q_RESET_SENDING, (now, now))]))[0]

    async def reclaim_stale(self, claimed_before: float, held: list[str], reason: str) -> int:
        """Rows claimed before ``claimed_before`` and not in ``held`` (the live deliveries): due now."""
        now = self._clock()
        return (await self._write([(Q_RECLAIM_STALE, (now, reason, now, claimed_before, json.dumps(held)))]))[0]

    async def release_claim(self, request_id: str, at: float, reason: str) -> None:
        """Give back a claim whose delivery did not call the CA (breaker opened meanwhile)."""
        now = self._clock()
        await self._write([(Q_RELEASE_CLAIM, (at, reason, now, request_id)),
                           (Q_REQUEST_RECEIVED_IF_UNSENT, (now, request_id, request_id))])

    async def complete_issue(self, request_id: str, issued: IssuedCertificate, profile: str, *, card_id: str,
                             holder_cf: str, audit: AuditEntry) -> None:
        now = self._clock()
        statements = [
            (Q_INSERT_CERTIFICATE, (issued.ref.issuer_dn, issued.ref.serial_hex, request_id, profile,
                                    int(issued.not_before.timestamp()), int(issued.not_after.timestamp()),
                                    issued.certificate_der, _pack_chain(issued.chain_der), card_id, holder_cf)),
            (Q_COMPLETE_REQUEST, (STATE_ISSUED, issued.ref.issuer_dn, issued.ref.serial_hex, now, request_id)),
            (Q_OUTBOX_DONE, ("done", None, now, request_id)),
            (Q_INSERT_AUDIT, _audit_params(audit, now)),
        ]
        try:
            statements.append((Q_BIND_ISSUED_KEY, (certificate_key_sha256(issued.certificate_der), holder_cf or "",
                                                   profile, request_id, now)))
        except ValueError:   # not DER: the CA connector would have refused it; nothing to bind
            pass
        await self._write(statements)

    async def complete_change(self, request_id: str, info: CertStatusInfo, *, audit: AuditEntry) -> None:
        now = self._clock()
        revoked_at = int(info.revoked_at.timestamp()) if info.revoked_at else None
        await self._write([
            (Q_UPDATE_CERT_STATUS, (info.state.value, info.revocation_reason or None, revoked_at,
                                    info.ref.issuer_dn, info.ref.serial_hex)),
            (Q_COMPLETE_REQUEST, (STATE_DONE, info.ref.issuer_dn, info.ref.serial_hex, now, request_id)),
            (Q_OUTBOX_DONE, ("done", None, now, request_id)),
            (Q_INSERT_AUDIT, _audit_params(audit, now)),
        ])

    async def fail_request(self, request_id: str, code: str, field: str, message: str, *,
                           audit: AuditEntry | None = None) -> None:
        now = self._clock()
        code, field, message = code[:64], (field or "")[:128], (message or "")[:MAX_ERROR_TEXT]
        statements = [(Q_FAIL_REQUEST, (code, field, message, now, request_id)),
                      (Q_OUTBOX_DONE, ("failed", f"{code}: {message}"[:MAX_ERROR_TEXT], now, request_id))]
        if audit is not None:
            statements.append((Q_INSERT_AUDIT, _audit_params(audit, now)))
        await self._write(statements)

    async def cancel(self, request_id: str, audit: AuditEntry) -> bool:
        """Cancel a request that never reached the CA: CANCELLED with error code CANCELLED (a refusal the
        caller can act on). A claimed row (``sending``) is never cancelled: the relay may be calling the CA."""
        now = self._clock()
        message = f"cancelled by central IT ({audit.actor}) before it reached the CA"
        changed = await self._write([(Q_CANCEL_OUTBOX, (now, request_id)),
                                     (Q_CANCEL_REQUEST, (message, now, request_id, request_id)),
                                     (Q_INSERT_AUDIT_IF_NEW, _audit_params(audit, now))])
        return changed[0] == 1

    async def retry_now(self, request_id: str, audit: AuditEntry, *, orphaned_claim: bool = False) -> bool:
        """Make a waiting row due now. ``orphaned_claim``: also a claimed row no live delivery holds
        (the caller checked with the relay); it becomes due like a reclaimed stale claim."""
        now = self._clock()
        sql = Q_RETRY_NOW_ORPHAN if orphaned_claim else Q_RETRY_NOW
        changed = await self._write([(sql, (now, now, request_id)),
                                     (Q_INSERT_AUDIT_IF_NEW, _audit_params(audit, now))])
        return changed[0] == 1

    async def queue_depth(self) -> dict[str, int]:
        depth = {lane: 0 for lane in LANES}
        depth.update({lane: n for lane, n in await self._all(Q_QUEUE_DEPTH, ())})
        return depth

    async def list_queue(self, limit: int) -> list[RequestRecord]:
        ids = [r[0] for r in await self._all(Q_LIST_QUEUE, (limit,))]
        return [rec for rec in [await self.get_request(i) for i in ids] if rec is not None]

    # -- certificates (the CertificateRegistry side) ------------------------------

    async def get_certificate_status(self, ref: CertRef) -> CertStatusInfo | None:
        row = await self._one(Q_SELECT_CERTIFICATE, (ref.issuer_dn, ref.serial_hex.upper()))
        if row is None:
            return None
        return CertStatusInfo(CertRef(row[0], row[1]), CertState(row[5]), _utc(row[3]), _utc(row[4]), row[2],
                              row[6] or "", _utc(row[7]) if row[7] else None)

    async def get_certificate(self, ref: CertRef) -> CertificateRow | None:
        row = await self._one(Q_SELECT_CERTIFICATE_ROW, (ref.issuer_dn, ref.serial_hex.upper()))
        if row is None:
            return None
        return CertificateRow(CertRef(row[0], row[1]), row[2], row[3], _utc(row[4]), _utc(row[5]), row[6], row[7],
                              _unpack_chain(row[8]), row[9], row[10])

    async def record_issued(self, request_id: str, profile: str, issued: IssuedCertificate, *,
                            card_id: str | None = None, holder_cf: str | None = None) -> None:
        """A CA without its own database records an issuance here before answering (durable, idempotent)."""
        await self._write([(Q_INSERT_CERTIFICATE, (
            issued.ref.issuer_dn, issued.ref.serial_hex, request_id, profile, int(issued.not_before.timestamp()),
            int(issued.not_after.timestamp()), issued.certificate_der, _pack_chain(issued.chain_der), card_id,
            holder_cf))])

    async def find_issued(self, request_id: str) -> list[IssuedCertificate]:
        rows = await self._all(Q_CERTIFICATES_BY_REQUEST, (request_id,))
        return [IssuedCertificate(CertRef(r[0], r[1]), r[2], _unpack_chain(r[3]), _utc(r[4]), _utc(r[5]))
                for r in rows]

    async def update_certificate_status(self, info: CertStatusInfo) -> None:
        revoked_at = int(info.revoked_at.timestamp()) if info.revoked_at else None
        await self._write([(Q_UPDATE_CERT_STATUS, (info.state.value, info.revocation_reason or None, revoked_at,
                                                   info.ref.issuer_dn, info.ref.serial_hex))])

    async def first_issued_for_card(self, card_id: str) -> _dt.datetime | None:
        row = await self._one(Q_FIRST_FOR_CARD, (card_id,))
        return _utc(row[0]) if row and row[0] is not None else None

    async def find_certificates(self, *, card_id: str = "", holder_cf: str = "",
                                limit: int = 1000) -> list[FoundCertificate]:
        """Every certificate issued for a card (EF_IDCarta serial) and/or a holder (codice fiscale), oldest
        first. At least one of the two is required (``ValueError``)."""
        if not card_id and not holder_cf:
            raise ValueError("give a card serial or a codice fiscale")
        rows = await self._all(Q_FIND_CERTIFICATES, (card_id, card_id, holder_cf.upper(), holder_cf.upper(), limit))
        return [FoundCertificate(CertStatusInfo(CertRef(r[0], r[1]), CertState(r[6]), _utc(r[4]), _utc(r[5]), r[2],
                                                r[7] or "", _utc(r[8]) if r[8] else None),
                                 r[3], r[9] or "", r[10] or "", r[11] or "", r[12]) for r in rows]

    async def recent_issuance_stats(self, seconds: float) -> tuple[int, float]:
        row = await self._one(Q_ISSUANCE_STATS, (self._clock() - seconds,))
        count, mean = row
        return int(count or 0), float(mean or 0.0) * 1000.0

    # -- maintenance and audit ------------------------------------------------------

    async def add_maintenance(self, id_: str, starts_at: float, ends_at: float, reason: str, source: str,
                              audit: AuditEntry | None = None) -> None:
        statements = [(Q_INSERT_MAINTENANCE, (id_, starts_at, ends_at, reason, source))]
        if audit is not None:
            statements.append((Q_INSERT_AUDIT, _audit_params(audit, self._clock())))
        await self._write(statements)

    async def list_maintenance(self, after: float) -> list[tuple[str, float, float, str, str]]:
        return [tuple(r) for r in await self._all(Q_LIST_MAINTENANCE, (after,))]

    async def record_breaker_event(self, at: float, state: str, detail: str = "") -> None:
        """The relay's circuit breaker moved to ``state`` (open, half_open, closed) at ``at``."""
        await self._write([(Q_INSERT_BREAKER_EVENT, (at, state[:16], (detail or "")[:MAX_ERROR_TEXT]))])

    async def add_stock(self, chamber_code: str, quantity: int, note: str, audit: AuditEntry, *,
                        device_model: str = "") -> StockEntry:
        """Append a ledger row (devices sent to a chamber; negative: taken back) with its audit row."""
        now = self._clock()
        await self._write([(Q_INSERT_STOCK, (now, chamber_code, device_model, quantity, audit.actor, note)),
                           (Q_INSERT_AUDIT, _audit_params(audit, now))])
        rows = await self._all("SELECT seq, at, chamber_code, device_model, quantity, actor, note FROM stock_ledger "
                               "WHERE chamber_code = ? AND at = ? ORDER BY seq DESC LIMIT 1", (chamber_code, now))
        return StockEntry(*rows[0])

    async def list_stock(self, chamber_code: str = "") -> list[StockEntry]:
        return [StockEntry(*r) for r in await self._all(Q_LIST_STOCK, (chamber_code, chamber_code))]

    async def stock_balance(self, before: float | None = None) -> dict[tuple[str, str], StockBalance]:
        """Per chamber and model: devices sent (ledger), used (cards first issued there), left = sent - used."""
        return stock_balance(await self.list_stock(),
                             await self._all(Q_STOCK_USED, (self._clock() if before is None else before,)),
                             before)

    # -- station enrollment (personalizer.enrollment) -----------------------------

    async def add_enrollment_code(self, code_sha256: str, chamber_code: str, station_id: str, expires_at: float,
                                  audit: AuditEntry) -> None:
        """A new one-time code for the station; an enrolled station stays enrolled until it uses it."""
        now = self._clock()
        await self._write([
            ("INSERT INTO enrollment_codes (code_sha256, chamber_code, station_id, created_at, expires_at, created_by)"
             " VALUES (?, ?, ?, ?, ?, ?)", (code_sha256, chamber_code, station_id, now, expires_at, audit.actor)),
            ("INSERT INTO stations (chamber_code, station_id, state, updated_at) VALUES (?, ?, 'pending', ?) "
             "ON CONFLICT (chamber_code, station_id) DO UPDATE SET updated_at = excluded.updated_at, "
             "state = CASE WHEN state = 'enrolled' THEN 'enrolled' ELSE 'pending' END", (chamber_code, station_id, now)),
            (Q_INSERT_AUDIT, _audit_params(audit, now))])

    async def find_enrollment_code(self, code_sha256: str) -> tuple | None:
        """(chamber_code, station_id, expires_at, used_at) of a code, or None."""
        row = await self._one("SELECT chamber_code, station_id, expires_at, used_at FROM enrollment_codes "
                              "WHERE code_sha256 = ?", (code_sha256,))
        return tuple(row) if row else None

    async def use_enrollment_code(self, code_sha256: str, now: float, serial_hex: str, not_after: float,
                                  audit: AuditEntry) -> bool:
        """Spend the code and record the certificate issued with it, in one commit; False if it was already
        used or has expired meanwhile (then nothing is recorded)."""
        changed = await self._write([
            ("UPDATE enrollment_codes SET used_at = ? WHERE code_sha256 = ? AND used_at IS NULL AND expires_at > ?",
             (now, code_sha256, now)),
            ("INSERT INTO station_certificates (serial_hex, chamber_code, station_id, issued_at, not_after) "
             "SELECT ?, chamber_code, station_id, ?, ? FROM enrollment_codes WHERE code_sha256 = ? AND changes() = 1",
             (serial_hex, now, not_after, code_sha256)),
            ("UPDATE stations SET state = 'enrolled', updated_at = ? WHERE (chamber_code, station_id) = "
             "(SELECT chamber_code, station_id FROM enrollment_codes WHERE code_sha256 = ?) AND changes() = 1",
             (now, code_sha256)),
            (Q_INSERT_AUDIT, _audit_params(audit, now))])
        return changed[0] == 1

    async def station_state(self, chamber_code: str, station_id: str) -> str | None:
        row = await self._one("SELECT state FROM stations WHERE chamber_code = ? AND station_id = ?",
                              (chamber_code, station_id))
        return row[0] if row else None

    async def record_station_renewal(self, chamber_code: str, station_id: str, serial_hex: str, not_after: float,
                                     audit: AuditEntry) -> bool:
        """Record a renewed station certificate; False (nothing recorded) unless the station is enrolled."""
        now = self._clock()
        changed = await self._write([
            ("UPDATE stations SET updated_at = ? WHERE chamber_code = ? AND station_id = ? AND state = 'enrolled'",
             (now, chamber_code, station_id)),
            ("INSERT INTO station_certificates (serial_hex, chamber_code, station_id, issued_at, not_after) "
             "SELECT ?, ?, ?, ?, ? WHERE changes() = 1", (serial_hex, chamber_code, station_id, now, not_after)),
            (Q_INSERT_AUDIT, _audit_params(audit, now))])
        return changed[0] == 1

    async def station_serials(self, chamber_code: str, station_id: str) -> list[str]:
        """Serials of the station's certificates still valid (not expired), revoked or not."""
        rows = await self._all("SELECT serial_hex FROM station_certificates WHERE chamber_code = ? AND station_id = ? "
                               "AND not_after > ? ORDER BY issued_at", (chamber_code, station_id, self._clock()))
        return [r[0] for r in rows]

    async def mark_station_certificates_revoked(self, serials: list[str]) -> None:
        """Record that these station certificates are now in the client CRL (superseded by a renewal)."""
        now = self._clock()
        await self._write([("UPDATE station_certificates SET revoked_at = ? WHERE serial_hex = ? AND revoked_at IS NULL",
                            (now, s)) for s in serials] or [("SELECT 1", ())])

    async def revoke_station(self, chamber_code: str, station_id: str, audit: AuditEntry) -> bool:
        """Mark the station revoked, its certificates revoked and its unused codes spent; False if unknown."""
        now = self._clock()
        changed = await self._write([
            ("UPDATE stations SET state = 'revoked', updated_at = ? WHERE chamber_code = ? AND station_id = ?",
             (now, chamber_code, station_id)),
            ("UPDATE station_certificates SET revoked_at = ? WHERE chamber_code = ? AND station_id = ? "
             "AND revoked_at IS NULL", (now, chamber_code, station_id)),
            ("UPDATE enrollment_codes SET used_at = ? WHERE chamber_code = ? AND station_id = ? AND used_at IS NULL",
             (now, chamber_code, station_id)),
            (Q_INSERT_AUDIT, _audit_params(audit, now))])
        return changed[0] == 1

    async def list_stations(self, chamber_code: str = "") -> list[tuple]:
        """(chamber, station, state, updated_at, newest serial, its not_after, revoked certificates) per station."""
        rows = await self._all(
            "SELECT s.chamber_code, s.station_id, s.state, s.updated_at, "
            "(SELECT serial_hex FROM station_certificates c WHERE c.chamber_code = s.chamber_code "
            " AND c.station_id = s.station_id ORDER BY issued_at DESC LIMIT 1), "
            "(SELECT MAX(not_after) FROM station_certificates c WHERE c.chamber_code = s.chamber_code "
            " AND c.station_id = s.station_id), "
            "(SELECT COUNT(*) FROM station_certificates c WHERE c.chamber_code = s.chamber_code "
            " AND c.station_id = s.station_id AND revoked_at IS NOT NULL) "
            "FROM stations s WHERE ? = '' OR s.chamber_code = ? ORDER BY s.chamber_code, s.station_id",
            (chamber_code, chamber_code))
        return [tuple(r) for r in rows]

    async def append_audit(self, entry: AuditEntry) -> None:
        await self._write([(Q_INSERT_AUDIT, _audit_params(entry, self._clock()))])

    async def list_audit(self, after_seq: int = 0, limit: int = 10_000) -> list[AuditEntry]:
        return [_audit_entry(r) for r in await self._all(Q_LIST_AUDIT, (after_seq, limit))]


def _audit_entry(r) -> AuditEntry:
    return AuditEntry(actor=r[2], station_id=r[3], operation=r[4], request_id=r[5], target=r[6] or "", result=r[7],
                      detail=r[8] or "", at=r[1], seq=r[0], operator_id=r[9] or "", card_id=r[10] or "",
                      holder_cf=r[11] or "")


@dataclass(frozen=True)
class AuditFilter:
    """What an auditor asks for; every given criterion must hold. Card and codice fiscale also find the
    rows of the same requests, of the card's certificates and of changes to them."""

    after_seq: int = 0
    operator_id: str | None = None
    station_id: str | None = None
    card_id: str | None = None
    holder_cf: str | None = None
    since: float | None = None
    until: float | None = None
    limit: int = 10_000


# Requests and certificates of a card (or of a holder): rows naming them directly, rows of the same
# request id, rows whose target is one of their certificates, and the change requests of those.
_AUDIT_OF = """(a.{col} = :v
    OR a.request_id IN (SELECT request_id FROM audit WHERE {col} = :v AND request_id IS NOT NULL)
    OR a.request_id IN (SELECT request_id FROM certificates WHERE {col} = :v)
    OR a.target IN (SELECT issuer_dn || '#' || serial_hex FROM certificates WHERE {col} = :v)
    OR a.request_id IN (SELECT r.request_id FROM requests r JOIN certificates c
                        ON c.issuer_dn = r.issuer_dn AND c.serial_hex = r.serial_hex WHERE c.{col} = :v))"""


def audit_query(f: AuditFilter) -> tuple[str, list[tuple[str, dict]]]:
    """The SELECT for ``f`` and its named parameters (one dict: sqlite3 named style)."""
    where, params = ["a.seq > :after"], {"after": f.after_seq, "limit": f.limit}
    for col, value in (("operator_id", f.operator_id), ("station_id", f.station_id)):
        if value is not None:
            where.append(f"a.{col} = :{col}")
            params[col] = value
    for col, value, key in (("card_id", f.card_id, "card"), ("holder_cf", f.holder_cf, "cf")):
        if value is not None:
            where.append(_AUDIT_OF.format(col=col).replace(":v", f":{key}"))
            params[key] = value
    if f.since is not None:
        where.append("a.at >= :since")
        params["since"] = f.since
    if f.until is not None:
        where.append("a.at < :until")
        params["until"] = f.until
    sql = (f"SELECT a.seq, a.at, a.actor, a.station_id, a.operation, a.request_id, a.target, a.result, a.detail, "
           f"a.operator_id, a.card_id, a.holder_cf FROM audit a WHERE {' AND '.join(where)} ORDER BY a.seq LIMIT :limit")
    return sql, params


def connect_readonly(path: Path, what: str = "the request store") -> sqlite3.Connection:
    """A read-only connection to the store at ``path`` (see ``read_audit`` for why immutable when idle)."""
    running = path.with_name(path.name + "-wal").exists()
    uri = path.resolve().as_uri() + ("?mode=ro" if running else "?mode=ro&immutable=1")
    try:
        conn = sqlite3.connect(uri, uri=True)
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
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
