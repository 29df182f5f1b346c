-- How many status transitions (suspension, reactivation, revocation) the CA index has committed, counted by
-- each transition's own statement (personalizer.ca.index_postgres): the CRL publisher of every process and
-- site reads it and republishes when it moved, so a revocation made elsewhere is on its CRL within a bound.
CREATE TABLE ca_status_changes (
    issuer_key TEXT PRIMARY KEY,
    changes    BIGINT NOT NULL CHECK (changes > 0)
);
