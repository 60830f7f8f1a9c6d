-- scanfleet journal, schema version 2.
-- Same tables as version 1; what changed is what meta's head_seq/head_hash mean: the
-- head of the chain is the newest record (or the pruning anchor when none is left), and
-- meta keeps a head the journal once had (a lower bound, moved with the delivered
-- watermark), so an append writes one table page, not also the meta page.
-- Loaded by scanfleet.daemon.journal.store into a new database inside one transaction;
-- later versions add schema_vN.sql plus a migration step, never edit this file.

-- Small key/value facts: device, delivered watermark, pruning anchor, a recorded head.
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;

-- Preset DEFLATE dictionaries; a record names the one it was compressed with.
CREATE TABLE dictionaries (
    id   INTEGER PRIMARY KEY,
    data BLOB NOT NULL
);

-- One row per record. seq is the rowid (gapless per device, no extra index);
-- payload is the raw-DEFLATE of the record's RFC 8785 canonical JSON, hash included.
CREATE TABLE records (
    seq     INTEGER PRIMARY KEY,
    time_us INTEGER NOT NULL,  -- the record's "time", microseconds since 1970-01-01 UTC
    dict    INTEGER NOT NULL REFERENCES dictionaries (id),
    payload BLOB NOT NULL
);

-- Records are append-only: only pruning of delivered history deletes, nothing rewrites.
CREATE TRIGGER records_append_only BEFORE UPDATE ON records
BEGIN
    SELECT RAISE(ABORT, 'journal records are append-only');
END;

PRAGMA user_version = 2;
