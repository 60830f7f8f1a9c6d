-- scanfleet fleet registry (fleet.sqlite3), schema version 1.
-- Loaded by scanfleet.provisioning.registry into a new database inside one transaction;
-- later versions add schema_vN.sql plus a migration step, never edit this file.
-- A registry written before the schema had a version (PRAGMA user_version 0) holds
-- exactly these tables and is adopted as version 1 when their columns match.

-- Every certificate the CA issued, and its revocation.
CREATE TABLE certs (
    serial      TEXT PRIMARY KEY,          -- hex
    cn          TEXT NOT NULL,
    kind        TEXT NOT NULL,             -- device | backend | fleet | server
    not_before  TEXT NOT NULL,
    not_after   TEXT NOT NULL,
    issued_at   TEXT NOT NULL,
    revoked_at  TEXT,
    reason      TEXT,
    pem         TEXT NOT NULL
);
CREATE INDEX certs_cn ON certs (cn);

-- Enrollment claims: only the hash of the secret is kept.
CREATE TABLE claims (
    id          TEXT PRIMARY KEY,
    secret_hash TEXT NOT NULL UNIQUE,
    site        TEXT NOT NULL,
    device      TEXT,                      -- set: the claim may only (re-)enroll this device
    created_at  TEXT NOT NULL,
    expires_at  TEXT NOT NULL,
    used_at     TEXT,
    used_by     TEXT
);

-- Counters (crl_number).
CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
