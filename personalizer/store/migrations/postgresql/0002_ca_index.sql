-- The embedded CA's index in the replicated database (personalizer.ca.index_postgres): the site that
-- takes over continues the CRL sequence and never reuses a serial (PRIMARY KEY), one certificate per request.
CREATE TABLE ca_certificates (
    serial_hex         TEXT PRIMARY KEY,
    issuer_dn          TEXT NOT NULL,
    request_id         TEXT NOT NULL UNIQUE,
    profile            TEXT NOT NULL,
    not_before         BIGINT NOT NULL,
    not_after          BIGINT NOT NULL,
    status             TEXT NOT NULL CHECK (status IN ('active', 'suspended', 'revoked')),
    revocation_reason  TEXT,
    revoked_at         BIGINT,
    certificate_der    BYTEA NOT NULL
);
CREATE INDEX ca_certificates_not_active ON ca_certificates(status) WHERE status <> 'active';
-- One row per issuer: the last CRL number handed out (incremented in the transaction that returns it).
CREATE TABLE ca_crl_numbers (
    issuer_key  TEXT PRIMARY KEY,
    last_number BIGINT NOT NULL CHECK (last_number > 0)
);
