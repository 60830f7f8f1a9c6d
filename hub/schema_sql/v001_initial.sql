-- scanfleet hub schema v1. Applied by `scanfleet hub db upgrade` in one transaction.
-- Table and column names are an interface (the web console and operators' queries read
-- them): later versions extend, they never rename.

-- Every record's idempotency key. The key lives outside the partitioned table because a
-- unique constraint on a partitioned table must contain the partition key (time), and the
-- same id with a different time is exactly the conflict that must not slip through.
CREATE TABLE record_ids (
    id          text PRIMARY KEY,
    device      text NOT NULL,
    seq         bigint NOT NULL,
    time        timestamptz NOT NULL,
    hash        text NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (device, seq)
);

-- Every record byte for byte (payload: the RFC 8785 bytes the device hashed, as received)
-- plus the columns people query. Partitioned by month of the record's own time, so old
-- months detach cheaply for archive; hub_ensure_partition() makes a month on first use.
CREATE TABLE records (
    id           text NOT NULL,
    site         text NOT NULL,
    device       text NOT NULL,
    seq          bigint NOT NULL,
    type         text NOT NULL,
    kind         text,
    value        text,
    verdict      text,
    operation    text,
    bill         text,
    time         timestamptz NOT NULL,
    identity_ref text,
    split_unit   integer,          -- 拆零: which unit of the pack this scan took (1-based)
    split_units  integer,          -- 拆零: how many units the pack holds
    duplicate_of bigint,           -- the device's own verdict: seq of its earlier scan
    hash         text NOT NULL,
    prev_hash    text NOT NULL,
    hash_ok      boolean NOT NULL, -- the hash recomputed at ingest matched
    payload      bytea NOT NULL,
    received_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (id, time)
) PARTITION BY RANGE (time);

CREATE INDEX records_device_seq ON records (device, seq);
CREATE INDEX records_site_time ON records (site, time);
CREATE INDEX records_value_operation ON records (value, operation) WHERE type = 'scan';

-- Same id, different bytes: never stored over the original; an alert is raised.
CREATE TABLE conflicts (
    conflict_id   bigserial PRIMARY KEY,
    id            text NOT NULL,
    site          text NOT NULL,
    device        text NOT NULL,
    seq           bigint NOT NULL,
    stored_hash   text NOT NULL,
    received_hash text NOT NULL,
    payload       bytea NOT NULL,
    topic         text,
    received_at   timestamptz NOT NULL DEFAULT now(),
    UNIQUE (id, received_hash)
);

-- Hash-chain breaks: a record whose hash does not match its bytes (hash_mismatch), or whose
-- prev_hash is not the hash of seq-1 held here (link_mismatch), or a stored row whose
-- bytes no longer match (stored_mismatch, found by the audit).
CREATE TABLE chain_breaks (
    break_id    bigserial PRIMARY KEY,
    site        text NOT NULL,
    device      text NOT NULL,
    seq         bigint NOT NULL,
    record_id   text NOT NULL,
    kind        text NOT NULL CHECK (kind IN ('hash_mismatch', 'link_mismatch', 'stored_mismatch')),
    expected    text,
    actual      text,
    detected_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (record_id, kind, actual)
);

-- Per device: what the hub holds and what the device says about itself.
CREATE TABLE devices (
    device         text PRIMARY KEY,
    site           text NOT NULL,
    contiguous_seq bigint NOT NULL DEFAULT 0,  -- the watermark: 1..contiguous_seq all held
    last_seq       bigint NOT NULL DEFAULT 0,  -- highest seq held
    records        bigint NOT NULL DEFAULT 0,  -- records held
    delivered_seq  bigint,                     -- from the device's retained state
    produced_seq   bigint,                     -- journal.last_seq from state/health
    online         boolean,
    version        text,
    boot_id        text,
    alarms         jsonb NOT NULL DEFAULT '[]'::jsonb,
    last_state     jsonb,
    last_seen      timestamptz,
    state_time     timestamptz,
    health_time    timestamptz,
    updated_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX devices_site ON devices (site);

-- Missing seq ranges. open: not held; repaired: arrived later (by resend or redelivery);
-- explained: a journal_loss record (or an operator) accounts for it.
CREATE TABLE gaps (
    gap_id       bigserial PRIMARY KEY,
    site         text NOT NULL,
    device       text NOT NULL,
    from_seq     bigint NOT NULL,
    to_seq       bigint NOT NULL CHECK (to_seq >= from_seq),
    status       text NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'repaired', 'explained')),
    reason       text,
    explained_by text,               -- record id of the journal_loss record, when one
    opened_at    timestamptz NOT NULL DEFAULT now(),
    closed_at    timestamptz,
    resends      integer NOT NULL DEFAULT 0,
    last_resend_at timestamptz
);
CREATE INDEX gaps_device_status ON gaps (device, status);
CREATE UNIQUE INDEX gaps_open_range ON gaps (device, from_seq, to_seq) WHERE status = 'open';

-- Every `resend` the hub asked a device for (automatic gap repair).
CREATE TABLE resend_requests (
    request_id   text PRIMARY KEY,
    site         text NOT NULL,
    device       text NOT NULL,
    gap_id       bigint REFERENCES gaps (gap_id) ON DELETE SET NULL,
    from_seq     bigint NOT NULL,
    to_seq       bigint NOT NULL,
    requested_at timestamptz NOT NULL DEFAULT now(),
    status       text NOT NULL DEFAULT 'sent' CHECK (status IN ('sent', 'ok', 'error', 'timeout')),
    response     jsonb,
    answered_at  timestamptz
);
CREATE INDEX resend_requests_device ON resend_requests (device, requested_at);

-- The health messages as received (the latest per device is also summarised in devices).
CREATE TABLE health (
    device      text NOT NULL,
    site        text NOT NULL,
    time        timestamptz NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now(),
    payload     jsonb NOT NULL,
    PRIMARY KEY (device, time)
);

-- What needs a person: conflicts, chain breaks, gaps that repair could not close.
CREATE TABLE alerts (
    alert_id        bigserial PRIMARY KEY,
    kind            text NOT NULL,
    site            text,
    device          text,
    message         text NOT NULL,
    details         jsonb NOT NULL DEFAULT '{}'::jsonb,
    raised_at       timestamptz NOT NULL DEFAULT now(),
    acknowledged_at timestamptz
);
CREATE INDEX alerts_open ON alerts (raised_at) WHERE acknowledged_at IS NULL;

-- The month partition of records holding *ts*, created on first use. Concurrent ingest
-- workers serialise on an advisory lock so two never race to create the same month.
CREATE FUNCTION hub_ensure_partition(ts timestamptz) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    month_start timestamptz := date_trunc('month', ts AT TIME ZONE 'UTC') AT TIME ZONE 'UTC';
    name text := 'records_' || to_char(month_start AT TIME ZONE 'UTC', 'YYYYMM');
BEGIN
    IF to_regclass(name) IS NOT NULL THEN
        RETURN name;
    END IF;
    PERFORM pg_advisory_xact_lock(hashtext('scanfleet.hub.partition'));
    IF to_regclass(name) IS NULL THEN
        EXECUTE format(
            'CREATE TABLE %I PARTITION OF records FOR VALUES FROM (%L) TO (%L)',
            name, month_start, month_start + interval '1 month');
    END IF;
    RETURN name;
END;
$$;
