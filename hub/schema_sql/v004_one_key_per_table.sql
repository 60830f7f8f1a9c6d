-- scanfleet hub schema v4: one index entry fewer per record in each of record_ids and records.
-- A record's id is "{device}:{seq}" (the ingest refuses a record whose id says otherwise),
-- so the id and the pair (device, seq) identify the same record: one unique index per
-- table is enough, and every stored record costs two index entries less to write.

-- record_ids: the primary key (id) already keeps (device, seq) unique.
ALTER TABLE record_ids DROP CONSTRAINT record_ids_device_seq_key;

-- records: the primary key (id, time) and the index (device, seq) become one primary key
-- (device, seq, time): the same rows are unique as before, and what looked rows up by
-- device and seq (chain links, gaps, the audit, the console) uses its prefix.
ALTER TABLE records DROP CONSTRAINT records_pkey;
ALTER TABLE records ADD PRIMARY KEY (device, seq, time);
DROP INDEX records_device_seq;
