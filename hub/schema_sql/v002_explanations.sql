-- scanfleet hub schema v2: declared losses as their own table, and a tampered record's bytes.

-- Seq ranges a device declared it cannot deliver (journal_loss records) or an operator
-- explained; the audit counts them as explained, never as missing.
CREATE TABLE explanations (
    device     text NOT NULL,
    site       text NOT NULL,
    from_seq   bigint NOT NULL,
    to_seq     bigint NOT NULL CHECK (to_seq >= from_seq),
    reason     text NOT NULL,
    record_id  text NOT NULL,          -- the journal_loss record, or 'operator:NAME'
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (device, from_seq, to_seq, record_id)
);

-- The bytes that arrived with a hash that does not match them (kept as evidence; such a
-- record is never stored in records, so the genuine one can still arrive by resend).
ALTER TABLE chain_breaks ADD COLUMN payload bytea;
