-- The request store (personalizer.store.postgres), the same tables and rules as the SQLite store's schema 3.
-- Times are epoch seconds (DOUBLE PRECISION, as SQLite's REAL); DER and digests are BYTEA.
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE requests (
    request_id      TEXT PRIMARY KEY,
    kind            TEXT NOT NULL,
    profile         TEXT NOT NULL,
    payload_sha256  BYTEA NOT NULL,
    chamber_code    TEXT NOT NULL,
    station_id      TEXT NOT NULL,
    operator_id     TEXT NOT NULL,
    state           TEXT NOT NULL,
    error_code      TEXT,
    error_field     TEXT,
    error_message   TEXT,
    issuer_dn       TEXT,
    serial_hex      TEXT,
    created_at      DOUBLE PRECISION NOT NULL,
    updated_at      DOUBLE PRECISION NOT NULL
);
CREATE INDEX requests_by_update ON requests(state, updated_at);
CREATE TABLE certificates (
    issuer_dn          TEXT NOT NULL,
    serial_hex         TEXT NOT NULL,
    request_id         TEXT NOT NULL REFERENCES requests(request_id),
    profile            TEXT NOT NULL,
    not_before         BIGINT NOT NULL,
    not_after          BIGINT NOT NULL,
    status             TEXT NOT NULL,
    revocation_reason  TEXT,
    revoked_at         BIGINT,
    certificate_der    BYTEA NOT NULL,
    chain_der          BYTEA NOT NULL,
    card_id            TEXT,
    holder_cf          TEXT,
    PRIMARY KEY (issuer_dn, serial_hex)
);
CREATE INDEX certificates_by_request ON certificates(request_id);
CREATE INDEX certificates_by_card ON certificates(card_id);
CREATE TABLE outbox (
    request_id       TEXT PRIMARY KEY REFERENCES requests(request_id),
    lane             TEXT NOT NULL,
    kind             TEXT NOT NULL,
    payload          BYTEA NOT NULL,
    status           TEXT NOT NULL,
    attempts         INTEGER NOT NULL DEFAULT 0,
    next_attempt_at  DOUBLE PRECISION NOT NULL,
    last_error       TEXT,
    updated_at       DOUBLE PRECISION NOT NULL,
    claimed_by       TEXT
);
CREATE INDEX outbox_due ON outbox(status, lane, next_attempt_at);

CREATE FUNCTION refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN RAISE EXCEPTION '%', TG_ARGV[0] USING ERRCODE = 'restrict_violation'; END $$;

CREATE TABLE audit (
    seq          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at           DOUBLE PRECISION NOT NULL,
    actor        TEXT NOT NULL,
    station_id   TEXT NOT NULL,
    operation    TEXT NOT NULL,
    request_id   TEXT,
    target       TEXT,
    result       TEXT NOT NULL,
    detail       TEXT,
    operator_id  TEXT,
    card_id      TEXT,
    holder_cf    TEXT
);
CREATE INDEX audit_by_card ON audit(card_id);
CREATE INDEX audit_by_holder ON audit(holder_cf);
CREATE TRIGGER audit_append_only BEFORE UPDATE OR DELETE ON audit
    FOR EACH ROW EXECUTE FUNCTION refuse_change('audit is append-only');
CREATE TRIGGER audit_no_truncate BEFORE TRUNCATE ON audit
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_change('audit is append-only');
CREATE TABLE ca_breaker_events (
    seq    BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at     DOUBLE PRECISION NOT NULL,
    state  TEXT NOT NULL,
    detail TEXT NOT NULL DEFAULT ''
);
CREATE TABLE stock_ledger (
    seq           BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at            DOUBLE PRECISION NOT NULL,
    chamber_code  TEXT NOT NULL,
    device_model  TEXT NOT NULL DEFAULT '',
    quantity      INTEGER NOT NULL,
    actor         TEXT NOT NULL,
    note          TEXT NOT NULL DEFAULT ''
);
CREATE TRIGGER stock_append_only BEFORE UPDATE OR DELETE ON stock_ledger
    FOR EACH ROW EXECUTE FUNCTION refuse_change('the stock ledger is append-only');
-- Deferred issuance (personalizer.rules.registrations): a holder registered by an IR, used once by one request.
CREATE TABLE registrations (
    registration_id   TEXT PRIMARY KEY,
    chamber_code      TEXT NOT NULL,
    codice_fiscale    TEXT NOT NULL,
    given_name        TEXT NOT NULL,
    surname           TEXT NOT NULL,
    birth_date        TEXT NOT NULL,
    form_sha256       TEXT NOT NULL,
    form_type         TEXT NOT NULL,
    form              BYTEA NOT NULL,
    created_by        TEXT NOT NULL,
    created_at        DOUBLE PRECISION NOT NULL,
    expires_at        DOUBLE PRECISION NOT NULL,
    used_by           TEXT,
    used_operator_id  TEXT,
    used_at           DOUBLE PRECISION,
    request_id        TEXT,
    sex               TEXT NOT NULL DEFAULT '',
    birth_town        TEXT NOT NULL DEFAULT '',
    card_id           TEXT,
    cancelled_by      TEXT,
    cancelled_at      DOUBLE PRECISION
);
CREATE INDEX registrations_by_chamber ON registrations(chamber_code, created_at);
CREATE FUNCTION registration_rules() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        RAISE EXCEPTION 'registrations are kept' USING ERRCODE = 'restrict_violation';
    END IF;
    IF OLD.card_id IS NOT NULL AND NEW.card_id IS DISTINCT FROM OLD.card_id THEN
        RAISE EXCEPTION 'registration already used' USING ERRCODE = 'restrict_violation';
    END IF;
    IF OLD.cancelled_at IS NOT NULL AND NEW.card_id IS DISTINCT FROM OLD.card_id THEN
        RAISE EXCEPTION 'registration cancelled' USING ERRCODE = 'restrict_violation';
    END IF;
    IF (NEW.registration_id, NEW.chamber_code, NEW.codice_fiscale, NEW.given_name, NEW.surname, NEW.birth_date,
        NEW.form_sha256, NEW.form, NEW.created_by, NEW.created_at)
       IS DISTINCT FROM (OLD.registration_id, OLD.chamber_code, OLD.codice_fiscale, OLD.given_name, OLD.surname,
        OLD.birth_date, OLD.form_sha256, OLD.form, OLD.created_by, OLD.created_at) THEN
        RAISE EXCEPTION 'a registration is not edited' USING ERRCODE = 'restrict_violation';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER registration_rules BEFORE UPDATE OR DELETE ON registrations
    FOR EACH ROW EXECUTE FUNCTION registration_rules();
CREATE TABLE certified_keys (
    key_sha256  BYTEA NOT NULL UNIQUE,   -- SHA-256 of the DER SubjectPublicKeyInfo
    holder_cf   TEXT NOT NULL,
    profile     TEXT NOT NULL,
    request_id  TEXT NOT NULL REFERENCES requests(request_id),
    bound_at    DOUBLE PRECISION NOT NULL
);
-- Station enrollment (personalizer.enrollment): one-time codes as their SHA-256, stations, station certificates.
CREATE TABLE enrollment_codes (
    code_sha256   TEXT PRIMARY KEY,
    chamber_code  TEXT NOT NULL,
    station_id    TEXT NOT NULL,
    created_at    DOUBLE PRECISION NOT NULL,
    expires_at    DOUBLE PRECISION NOT NULL,
    used_at       DOUBLE PRECISION,
    created_by    TEXT NOT NULL
);
CREATE TABLE stations (
    chamber_code  TEXT NOT NULL,
    station_id    TEXT NOT NULL,
    state         TEXT NOT NULL,          -- pending | enrolled | revoked
    updated_at    DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (chamber_code, station_id)
);
CREATE TABLE station_certificates (
    serial_hex    TEXT PRIMARY KEY,
    chamber_code  TEXT NOT NULL,
    station_id    TEXT NOT NULL,
    issued_at     DOUBLE PRECISION NOT NULL,
    not_after     DOUBLE PRECISION NOT NULL,
    revoked_at    DOUBLE PRECISION
);
-- Who each issuance or renewal request certifies, on which device (a renewal reads it).
CREATE TABLE request_holders (
    request_id      TEXT PRIMARY KEY REFERENCES requests(request_id),
    card_id         TEXT NOT NULL,
    codice_fiscale  TEXT NOT NULL,
    given_name      TEXT NOT NULL,
    surname         TEXT NOT NULL,
    birth_date      TEXT NOT NULL,
    card_model      TEXT NOT NULL DEFAULT ''
);
CREATE TABLE maintenance (
    id         TEXT PRIMARY KEY,
    starts_at  DOUBLE PRECISION NOT NULL,
    ends_at    DOUBLE PRECISION NOT NULL,
    reason     TEXT NOT NULL,
    source     TEXT NOT NULL
);
-- An outbox payload as JSON when it is JSON, else NULL (the stock report reads the station's card model).
CREATE FUNCTION json_or_null(data BYTEA) RETURNS jsonb LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN RETURN convert_from(data, 'UTF8')::jsonb; EXCEPTION WHEN others THEN RETURN NULL; END $$;
