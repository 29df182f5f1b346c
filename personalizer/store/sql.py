"""The SQLite request store's schema and every statement it runs, by name (``sqlite.py`` runs them).

Statements that must only take effect for a new request end in ``WHERE changes() = 1``: they follow
the statement that inserted it, in the same savepoint, so a retried request writes nothing twice.
Pure data: imports nothing.
"""
SCHEMA_VERSION = 3
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
-- Who each issuance or renewal request certifies, on which device (a renewal reads it; schema 3).
CREATE TABLE IF NOT EXISTS request_holders (
    request_id      TEXT PRIMARY KEY REFERENCES requests(request_id),
    card_id         TEXT NOT NULL,
    codice_fiscale  TEXT NOT NULL,
    given_name      TEXT NOT NULL,
    surname         TEXT NOT NULL,
    birth_date      TEXT NOT NULL,
    card_model      TEXT NOT NULL DEFAULT ''
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
              ("audit", "operator_id", "TEXT"), ("audit", "card_id", "TEXT"), ("audit", "holder_cf", "TEXT"),
              # schema 3: which relay claimed a 'sending' row (claim_due; reset at that relay's restart)
              ("outbox", "claimed_by", "TEXT"))
INDEXES = ("CREATE INDEX IF NOT EXISTS certificates_by_card ON certificates(card_id)",
           "CREATE INDEX IF NOT EXISTS audit_by_card ON audit(card_id)",
           "CREATE INDEX IF NOT EXISTS audit_by_holder ON audit(holder_cf)")
Q_TABLE_COLUMNS = "SELECT name FROM pragma_table_info(?)"
Q_SET_SCHEMA_VERSION = "INSERT OR REPLACE INTO meta (key, value) VALUES ('schema_version', ?)"

Q_INSERT_REQUEST = """INSERT OR IGNORE INTO requests
    (request_id, kind, profile, payload_sha256, chamber_code, station_id, operator_id, state, issuer_dn, serial_hex,
     created_at, updated_at)
    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"""
# Only when the statement before changed one row (changes() = 1): the outbox and audit rows of a new
# request; the audit row of a cancel or retry that took effect.
Q_INSERT_OUTBOX_IF_NEW = """INSERT INTO outbox (request_id, lane, kind, payload, status, attempts, next_attempt_at, updated_at)
    SELECT ?, ?, ?, ?, 'queued', 0, ?, ? WHERE changes() = 1"""
# Claimed at acceptance: the relay delivers it right away (as claim_due would leave it, in the same commit).
Q_INSERT_OUTBOX_CLAIMED_IF_NEW = """INSERT INTO outbox
    (request_id, lane, kind, payload, status, attempts, next_attempt_at, updated_at, claimed_by)
    SELECT ?, ?, ?, ?, 'sending', 1, ?, ?, ? WHERE changes() = 1"""
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
# claim_due: ONE statement picks and claims (under BEGIN IMMEDIATE no other writer runs in between):
# a row is claimed by one relay, never two, whatever number of daemons share the file.
Q_CLAIM_DUE = """UPDATE outbox SET status = 'sending', attempts = attempts + 1, updated_at = :now, claimed_by = :claimer
    WHERE request_id IN (SELECT request_id FROM outbox WHERE status IN ('queued', 'retry')
                         AND lane IN (SELECT value FROM json_each(:lanes)) AND next_attempt_at <= :now
                         ORDER BY CASE lane WHEN 'priority' THEN 0 ELSE 1 END, next_attempt_at LIMIT :limit)
    AND status IN ('queued', 'retry')
    RETURNING request_id"""
Q_NEXT_DUE = "SELECT MIN(next_attempt_at) FROM outbox WHERE status IN ('queued', 'retry') AND lane IN (%s)"
Q_REQUEST_PENDING = "UPDATE requests SET state = 'PENDING', updated_at = ? WHERE request_id = ? AND state = 'RECEIVED'"
Q_SCHEDULE_RETRY = """UPDATE outbox SET status = 'retry', next_attempt_at = ?, last_error = ?, updated_at = ?
    WHERE request_id = ? AND status = 'sending'"""
Q_DEFER = """UPDATE outbox SET next_attempt_at = ?, last_error = ?, updated_at = ?
    WHERE request_id = ? AND status IN ('queued', 'retry')"""
# At a relay's start: its own claims (and those of no named relay: older versions) are due again now.
Q_RESET_SENDING = """UPDATE outbox SET status = 'retry', next_attempt_at = ?, updated_at = ?
    WHERE status = 'sending' AND (claimed_by IS NULL OR claimed_by = ?)"""
# Stale claims (holder gone): due again now; attempts kept, so the next attempt looks up the CA first.
Q_RECLAIM_STALE = """UPDATE outbox SET status = 'retry', next_attempt_at = ?, last_error = ?, updated_at = ?
    WHERE status = 'sending' AND updated_at < ? AND request_id NOT IN (SELECT value FROM json_each(?))"""
# A live delivery renews its claim (a lease): another daemon's safety net never takes back a claim whose
# holder is alive, however long its CA call takes.
Q_RENEW_CLAIMS = """UPDATE outbox SET updated_at = ? WHERE status = 'sending' AND claimed_by = ?
    AND request_id IN (SELECT value FROM json_each(?))"""
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

# Holder and device of an issuance or renewal request: written with the request (only when it is new:
# after the audit row, changes() = 1), read by a renewal of the certificate it produced.
Q_INSERT_HOLDER_IF_NEW = """INSERT INTO request_holders
    (request_id, card_id, codice_fiscale, given_name, surname, birth_date, card_model)
    SELECT ?, ?, ?, ?, ?, ?, ? WHERE changes() = 1"""
Q_SELECT_HOLDER = """SELECT request_id, card_id, codice_fiscale, given_name, surname, birth_date, card_model
    FROM request_holders WHERE request_id = ?"""
Q_HOLDERS_BACKFILLED = "SELECT 1 FROM meta WHERE key = 'request_holders_backfilled'"
Q_MARK_HOLDERS_BACKFILLED = "INSERT INTO meta (key, value) VALUES ('request_holders_backfilled', ?)"
# Once, when a database older than schema 3 is opened: the holders its issuance payloads carry.
Q_BACKFILL_HOLDERS = """INSERT OR IGNORE INTO request_holders
    (request_id, card_id, codice_fiscale, given_name, surname, birth_date, card_model)
    SELECT request_id, COALESCE(json_extract(p, '$.card_id'), ''), COALESCE(json_extract(p, '$.codice_fiscale'), ''),
           COALESCE(json_extract(p, '$.given_name'), ''), COALESCE(json_extract(p, '$.surname'), ''),
           COALESCE(json_extract(p, '$.birth_date'), ''), COALESCE(json_extract(p, '$.card_model'), '')
    FROM (SELECT request_id, CAST(payload AS TEXT) AS p FROM outbox WHERE kind IN ('issue', 'renew'))
    WHERE json_valid(p) AND json_extract(p, '$.codice_fiscale') IS NOT NULL"""
Q_LAST_STOCK = """SELECT seq, at, chamber_code, device_model, quantity, actor, note FROM stock_ledger
    WHERE chamber_code = ? AND at = ? ORDER BY seq DESC LIMIT 1"""

# Station enrollment (personalizer.enrollment).
Q_INSERT_ENROLLMENT_CODE = """INSERT INTO enrollment_codes
    (code_sha256, chamber_code, station_id, created_at, expires_at, created_by) VALUES (?, ?, ?, ?, ?, ?)"""
Q_STATION_PENDING = """INSERT INTO stations (chamber_code, station_id, state, updated_at) VALUES (?, ?, 'pending', ?)
    ON CONFLICT (chamber_code, station_id) DO UPDATE SET updated_at = excluded.updated_at,
    state = CASE WHEN state = 'enrolled' THEN 'enrolled' ELSE 'pending' END"""
Q_SELECT_ENROLLMENT_CODE = """SELECT chamber_code, station_id, expires_at, used_at FROM enrollment_codes
    WHERE code_sha256 = ?"""
Q_USE_ENROLLMENT_CODE = """UPDATE enrollment_codes SET used_at = ?
    WHERE code_sha256 = ? AND used_at IS NULL AND expires_at > ?"""
Q_INSERT_STATION_CERT_FOR_CODE_IF_USED = """INSERT INTO station_certificates
    (serial_hex, chamber_code, station_id, issued_at, not_after)
    SELECT ?, chamber_code, station_id, ?, ? FROM enrollment_codes WHERE code_sha256 = ? AND changes() = 1"""
Q_STATION_ENROLLED_FOR_CODE_IF_NEW = """UPDATE stations SET state = 'enrolled', updated_at = ?
    WHERE (chamber_code, station_id) = (SELECT chamber_code, station_id FROM enrollment_codes WHERE code_sha256 = ?)
    AND changes() = 1"""
Q_STATION_STATE = "SELECT state FROM stations WHERE chamber_code = ? AND station_id = ?"
Q_TOUCH_ENROLLED_STATION = """UPDATE stations SET updated_at = ?
    WHERE chamber_code = ? AND station_id = ? AND state = 'enrolled'"""
Q_INSERT_STATION_CERT_IF_NEW = """INSERT INTO station_certificates
    (serial_hex, chamber_code, station_id, issued_at, not_after) SELECT ?, ?, ?, ?, ? WHERE changes() = 1"""
Q_STATION_SERIALS = """SELECT serial_hex FROM station_certificates WHERE chamber_code = ? AND station_id = ?
    AND not_after > ? ORDER BY issued_at"""
Q_REVOKE_STATION_CERT = "UPDATE station_certificates SET revoked_at = ? WHERE serial_hex = ? AND revoked_at IS NULL"
Q_REVOKE_STATION = "UPDATE stations SET state = 'revoked', updated_at = ? WHERE chamber_code = ? AND station_id = ?"
Q_REVOKE_STATION_CERTS = """UPDATE station_certificates SET revoked_at = ?
    WHERE chamber_code = ? AND station_id = ? AND revoked_at IS NULL"""
Q_SPEND_STATION_CODES = """UPDATE enrollment_codes SET used_at = ?
    WHERE chamber_code = ? AND station_id = ? AND used_at IS NULL"""
Q_LIST_STATIONS = """SELECT s.chamber_code, s.station_id, s.state, s.updated_at,
    (SELECT serial_hex FROM station_certificates c WHERE c.chamber_code = s.chamber_code
     AND c.station_id = s.station_id ORDER BY issued_at DESC LIMIT 1),
    (SELECT MAX(not_after) FROM station_certificates c WHERE c.chamber_code = s.chamber_code
     AND c.station_id = s.station_id),
    (SELECT COUNT(*) FROM station_certificates c WHERE c.chamber_code = s.chamber_code
     AND c.station_id = s.station_id AND revoked_at IS NOT NULL)
    FROM stations s WHERE ? = '' OR s.chamber_code = ? ORDER BY s.chamber_code, s.station_id"""

# Audit reads by criteria (AuditFilter): requests and certificates of a card (or of a holder): rows naming
# them directly, rows of the same request id, rows whose target is one of their certificates, and the
# change requests of those.
AUDIT_OF = """(a.{col} = :v
    OR a.request_id IN (SELECT request_id FROM audit WHERE {col} = :v AND request_id IS NOT NULL)
    OR a.request_id IN (SELECT request_id FROM certificates WHERE {col} = :v)
    OR a.target IN (SELECT issuer_dn || '#' || serial_hex FROM certificates WHERE {col} = :v)
    OR a.request_id IN (SELECT r.request_id FROM requests r JOIN certificates c
                        ON c.issuer_dn = r.issuer_dn AND c.serial_hex = r.serial_hex WHERE c.{col} = :v))"""
Q_AUDIT_BY = """SELECT a.seq, a.at, a.actor, a.station_id, a.operation, a.request_id, a.target, a.result, a.detail,
    a.operator_id, a.card_id, a.holder_cf FROM audit a WHERE {where} ORDER BY a.seq LIMIT :limit"""
