"""One transaction per batch of messages: records, chain checks, device state, gaps.

A batch first inserts its records, then takes the row locks of the devices it
touches, in device order, for everything that reads what other workers store (chain
links, watermarks, gaps). N ingest workers that received messages of the same device
(a shared subscription spreads one device's messages over all of them) therefore
store records in parallel and serialise only on the short bookkeeping; whichever of
two neighbouring batches takes the lock second sees the other's committed records and
checks the link between them. Uniqueness is PostgreSQL's: ``record_ids`` holds the
key (inserted in id order, so two batches never wait on each other's
keys in a cycle), ``records`` (the month-partitioned table) only rows whose bytes
match the key's hash.
"""

from __future__ import annotations

import dataclasses
import logging
import operator
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from scanfleet.daemon.core.errors import ScanfleetError
from scanfleet.hub.gaps import reconcile_device
from scanfleet.hub.records import COPY_COLUMNS, COPY_TYPES, Row, Topic, message_time

log = logging.getLogger(__name__)

Conn = psycopg.Connection[tuple[Any, ...]]


@dataclass
class Batch:
    """What one transaction stores."""

    rows: list[Row] = field(default_factory=list)
    states: list[tuple[Topic, dict[str, Any]]] = field(default_factory=list)
    healths: list[tuple[Topic, dict[str, Any]]] = field(default_factory=list)
    responses: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    """``(request_id, reply)`` of resend commands."""


@dataclass
class StoreResult:
    """What a stored batch changed."""

    inserted: int = 0
    duplicates: int = 0
    conflicts: int = 0
    breaks: int = 0


_COLS = sql.SQL(", ").join(sql.Identifier(c) for c in COPY_COLUMNS)
# Binary: the client sends bytes, integers and times as they are instead of formatting
# (and the server parsing) text, hex-escaped payloads included; ~1.5 µs a row instead of ~5.
_COPY_RECORDS = sql.SQL("COPY records ({}) FROM STDIN (FORMAT BINARY)").format(_COLS)
_COPY_KEYS = "COPY record_ids (id, device, seq, time, hash) FROM STDIN (FORMAT BINARY)"
_KEY_TYPES = ("text", "text", "int8", "timestamptz", "text")
_key_values = operator.attrgetter("id", "device", "seq", "time", "hash")
_row_id = operator.attrgetter("id")
_INSERT_RECORD = sql.SQL("INSERT INTO records ({}) VALUES ({}) ON CONFLICT DO NOTHING").format(
    _COLS, sql.SQL(", ").join([sql.Placeholder()] * len(COPY_COLUMNS))
)


def lock_devices(conn: Conn, devices: dict[str, str]) -> None:
    """Create missing device rows and lock all of *devices* (name → site) in name order."""
    names = sorted(devices)
    conn.execute(
        "INSERT INTO devices (device, site) SELECT * FROM unnest(%s::text[], %s::text[])"
        " ON CONFLICT (device) DO NOTHING",
        (names, [devices[n] for n in names]),
    )
    conn.execute(
        "SELECT device FROM devices WHERE device = ANY(%s) ORDER BY device FOR UPDATE", (names,)
    )


def alert(
    conn: Conn,
    alert_kind: str,
    site: str | None,
    device: str | None,
    message: str,
    **details: Any,
) -> None:
    """Raise an alert (a row in ``alerts`` and a warning in the log)."""
    log.warning("alert %s: %s", alert_kind, message)
    conn.execute(
        "INSERT INTO alerts (kind, site, device, message, details) VALUES (%s, %s, %s, %s, %s)",
        (alert_kind, site, device, message, Jsonb(details)),
    )


class _KnownKey(ScanfleetError):
    """The key COPY met an id already held: the batch goes the ``ON CONFLICT`` way."""


def store(conn: Conn, batch: Batch) -> StoreResult:
    """Store *batch* in one transaction (the caller acks its messages after this returns).

    First as if every record were new (the keys COPYed, the cheapest way in); when one
    was not (a redelivery, a repeat within the batch), that transaction holds nothing
    else yet, so it is rolled back and the batch stored again the way that sorts out
    known ids.
    """
    try:
        return _store(conn, batch, all_new=True)
    except _KnownKey:
        return _store(conn, batch, all_new=False)


def _store(conn: Conn, batch: Batch, *, all_new: bool) -> StoreResult:
    result = StoreResult()
    good = [r for r in batch.rows if r.hash_ok]
    if good:
        # A month's partition in a transaction of its own: creating it locks ``records``
        # exclusively, which must never be held while waiting for a device lock.
        with conn.transaction():
            for month in sorted({(r.time.year, r.time.month) for r in good}):
                conn.execute(
                    "SELECT hub_ensure_partition(%s)", (f"{month[0]:04d}-{month[1]:02d}-01Z",)
                )
    with conn.transaction():
        inserted = _insert_rows(conn, good, result, all_new=all_new) if good else []
        devices = {r.device: r.site for r in batch.rows}
        devices.update({t.device: t.site for t, _ in batch.states + batch.healths})
        if devices:
            lock_devices(conn, devices)
        for row in batch.rows:
            if not row.hash_ok:
                result.breaks += _break(conn, row, "hash_mismatch", None, row.hash, row.payload)
        new_by_device: dict[str, list[Row]] = defaultdict(list)
        for row in inserted:
            new_by_device[row.device].append(row)
        if inserted:
            result.breaks += _check_links(conn, inserted)
            _explain(conn, inserted)
        _advance(conn, devices, new_by_device)
        for topic, state in batch.states:
            _state(conn, topic, state)
        for topic, health in batch.healths:
            _health(conn, topic, health)
        for request_id, reply in batch.responses:
            _resend_reply(conn, request_id, reply)
    return result


def _advance(conn: Conn, devices: dict[str, str], new: dict[str, list[Row]]) -> None:
    """Move each device's figures past its new records; the gap logic only where needed.

    The common case (records arrive in order, no open gap, no declared loss) is one
    UPDATE for all such devices; everything else goes through reconcile_device.
    """
    touched = sorted(d for d in devices if new.get(d))
    if not touched:
        return
    figures = {
        d: (int(last), int(contiguous))
        for d, last, contiguous in conn.execute(
            "SELECT device, last_seq, contiguous_seq FROM devices WHERE device = ANY(%s)",
            (touched,),
        )
    }
    with_gaps = {
        row[0]
        for row in conn.execute(
            "SELECT DISTINCT device FROM gaps WHERE status = 'open' AND device = ANY(%s)",
            (touched,),
        )
    }
    fast: list[tuple[int, int, str]] = []
    for device in touched:
        rows = new[device]
        seqs = sorted(r.seq for r in rows)
        last, contiguous = figures.get(device, (0, 0))
        in_order = seqs == list(range(last + 1, last + len(seqs) + 1)) and contiguous == last
        if in_order and device not in with_gaps and not any(r.losses for r in rows):
            fast.append((seqs[-1], len(seqs), device))
        else:
            reconcile_device(conn, device, devices[device], seqs)
    if fast:
        # One statement for all of them: one UPDATE per device cost the server ~40 µs each.
        conn.execute(
            "UPDATE devices d SET last_seq = n.top, contiguous_seq = n.top,"
            " records = d.records + n.count, last_seen = now(), updated_at = now()"
            " FROM unnest(%s::text[], %s::bigint[], %s::bigint[]) AS n(device, top, count)"
            " WHERE d.device = n.device",
            (
                [device for _, _, device in fast],
                [top for top, _, _ in fast],
                [count for _, count, _ in fast],
            ),
        )


def _insert_rows(
    conn: Conn, rows: Sequence[Row], result: StoreResult, *, all_new: bool
) -> list[Row]:
    """Insert the rows whose id is new (or whose stored row went missing); the stored rows.

    The common case, all ids new, is one COPY of the keys into ``record_ids`` and one
    COPY of the rows into ``records`` (*all_new*: :class:`_KnownKey` when an id is held
    already); otherwise a multi-row ``INSERT … ON CONFLICT`` of the keys, and the ids
    already known are looked at further (an identical redelivery, a conflict, a row
    deleted behind the hub's back).
    """
    # Keys in id order, the same total order in every worker: two batches never wait on
    # each other's keys in a cycle.
    ordered = sorted(rows, key=_row_id)
    if all_new:
        try:
            with conn.cursor() as cur, cur.copy(_COPY_KEYS) as copy:
                copy.set_types(_KEY_TYPES)
                for row in ordered:
                    copy.write_row(_key_values(row))
        except psycopg.errors.UniqueViolation as err:
            raise _KnownKey from err
        stored_rows = _copy_records(conn, ordered)
        result.inserted += len(stored_rows)
        result.duplicates += len(rows) - len(stored_rows)
        return stored_rows
    first: dict[str, Row] = {}
    repeats: list[Row] = []
    for row in ordered:
        if first.setdefault(row.id, row) is not row:
            repeats.append(row)
    unique = list(first.values())
    new_ids = {
        rid
        for (rid,) in conn.execute(
            "INSERT INTO record_ids (id, device, seq, time, hash)"
            " SELECT * FROM unnest(%b::text[], %b::text[], %b::bigint[], %b::timestamptz[],"
            " %b::text[]) ON CONFLICT DO NOTHING RETURNING id",
            (
                [r.id for r in unique],
                [r.device for r in unique],
                [r.seq for r in unique],
                [r.time for r in unique],
                [r.hash for r in unique],
            ),
        )
    }
    fresh = [r for r in unique if r.id in new_ids]
    known = [r for r in unique if r.id not in new_ids]
    restored: list[Row] = []
    if known or repeats:
        stored: dict[str, str] = dict(
            conn.execute(
                "SELECT id, hash FROM record_ids WHERE id = ANY(%s)",
                ([r.id for r in known + repeats],),
            ).fetchall()
        )
        _conflicts(conn, [r for r in known + repeats if stored.get(r.id, r.hash) != r.hash], result)
        restored = _restore(conn, [r for r in known if stored.get(r.id) == r.hash])
    stored_rows = _copy_records(conn, fresh) + restored
    result.inserted += len(stored_rows)
    result.duplicates += len(rows) - len(stored_rows)
    return stored_rows


def _copy_records(conn: Conn, rows: list[Row]) -> list[Row]:
    """COPY rows whose key this transaction just inserted straight into ``records``."""
    if not rows:
        return rows
    try:
        with conn.transaction(), conn.cursor() as cur, cur.copy(_COPY_RECORDS) as copy:
            copy.set_types(COPY_TYPES)
            for row in rows:
                copy.write_row(row.copy_tuple())
    except psycopg.errors.UniqueViolation:
        # A records row without its key (record_ids edited by hand): what is there stays.
        log.warning("records held rows whose key was missing; inserting the rest one by one")
        return _restore(conn, rows)
    return rows


def _restore(conn: Conn, rows: Sequence[Row]) -> list[Row]:
    """Insert rows whose key is already held with the same hash but whose row is missing."""
    if not rows:
        return []
    # By (device, seq), the primary key's prefix: the same record as its id.
    present = {
        rid
        for (rid,) in conn.execute(
            "SELECT r.id FROM records r JOIN unnest(%s::text[], %s::bigint[]) AS w(device, seq)"
            " ON r.device = w.device AND r.seq = w.seq",
            ([r.device for r in rows], [r.seq for r in rows]),
        )
    }
    out = []
    for row in rows:
        if row.id not in present and conn.execute(_INSERT_RECORD, row.copy_tuple()).rowcount:
            out.append(row)
    return out


def _conflicts(conn: Conn, rows: Sequence[Row], result: StoreResult) -> None:
    """Keep and report rows whose id is held with other bytes; the original stays."""
    for row in rows:
        found = conn.execute(
            "INSERT INTO conflicts (id, site, device, seq, stored_hash, received_hash, payload)"
            " SELECT %s, %s, %s, %s, k.hash, %s, %s FROM record_ids k WHERE k.id = %s"
            " ON CONFLICT (id, received_hash) DO NOTHING RETURNING stored_hash",
            (row.id, row.site, row.device, row.seq, row.hash, row.payload, row.id),
        ).fetchone()
        if found is None:
            continue
        result.conflicts += 1
        alert(
            conn,
            "conflict",
            row.site,
            row.device,
            f"record {row.id} arrived with different bytes than stored",
            id=row.id,
            stored_hash=found[0],
            received_hash=row.hash,
        )


def _break(
    conn: Conn, row: Row, kind: str, expected: str | None, actual: str, payload: bytes | None
) -> int:
    cur = conn.execute(
        "INSERT INTO chain_breaks (site, device, seq, record_id, kind, expected, actual, payload)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
        (row.site, row.device, row.seq, row.id, kind, expected, actual, payload),
    )
    if cur.rowcount:
        alert(
            conn,
            "chain_break",
            row.site,
            row.device,
            f"record {row.id}: {kind.replace('_', ' ')}",
            id=row.id,
            kind=kind,
        )
    return cur.rowcount


def _explained(conn: Conn, devices: Sequence[str]) -> dict[str, list[tuple[int, int]]]:
    out: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for device, first, last in conn.execute(
        "SELECT device, from_seq, to_seq FROM explanations WHERE device = ANY(%s)", (list(devices),)
    ):
        out[device].append((first, last))
    return out


def _check_links(conn: Conn, rows: Sequence[Row]) -> int:
    """Compare each new record's prev_hash with the held record it links to, both ways."""
    if not rows:
        return 0
    devices = sorted({r.device for r in rows})
    # Most links run between records of the same batch: only the ends of each device's
    # run need the database.
    mine = {(r.device, r.seq): r for r in rows}
    wanted: set[tuple[str, int]] = set()
    for row in rows:
        if row.link_seq is not None and (row.device, row.link_seq) not in mine:
            wanted.add((row.device, row.link_seq))
        if (row.device, row.seq + 1) not in mine:
            wanted.add((row.device, row.seq + 1))
    held: dict[tuple[str, int], tuple[str, str, str]] = {}
    if wanted:
        for device, seq, rhash, prev, kind in conn.execute(
            "SELECT r.device, r.seq, r.hash, r.prev_hash, r.type FROM records r"
            " JOIN unnest(%s::text[], %s::bigint[]) AS w(device, seq)"
            " ON r.device = w.device AND r.seq = w.seq",
            ([d for d, _ in wanted], [q for _, q in wanted]),
        ):
            held[(device, seq)] = (rhash, prev, kind)
    lost = _explained(conn, devices)

    def near_loss(device: str, seq: int) -> bool:
        return any(a - 1 <= seq <= b + 1 for a, b in lost.get(device, []))

    breaks = 0
    for row in rows:
        if row.link_seq is not None:
            key = (row.device, row.link_seq)
            prior = mine.get(key)
            expected = prior.hash if prior is not None else held.get(key, (None,))[0]
            if (
                expected is not None
                and expected != row.prev_hash
                and not (row.type != "journal_loss" and near_loss(row.device, row.seq))
            ):
                breaks += _break(conn, row, "link_mismatch", expected, row.prev_hash, None)
        # A following record of this batch checks its own link above (the same break:
        # same record, kind and value); only a held one is checked from this side.
        following = held.get((row.device, row.seq + 1))
        if (
            following
            and following[2] != "journal_loss"
            and following[1] != row.hash
            and not near_loss(row.device, row.seq + 1)
        ):
            nxt = dataclasses.replace(row, seq=row.seq + 1, id=f"{row.device}:{row.seq + 1}")
            breaks += _break(conn, nxt, "link_mismatch", row.hash, following[1], None)
    return breaks


def _explain(conn: Conn, rows: Sequence[Row]) -> None:
    for row in rows:
        for loss in row.losses:
            conn.execute(
                "INSERT INTO explanations (device, site, from_seq, to_seq, reason, record_id)"
                " VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
                (row.device, row.site, loss.from_seq, loss.to_seq, loss.reason, loss.record_id),
            )
        if row.losses:
            alert(
                conn,
                "journal_loss",
                row.site,
                row.device,
                f"{row.device} declared {sum(x.to_seq - x.from_seq + 1 for x in row.losses)} "
                "seqs lost",
                id=row.id,
                ranges=[[x.from_seq, x.to_seq] for x in row.losses],
            )


def _journal_figures(message: dict[str, Any]) -> tuple[int | None, int | None]:
    journal = message.get("journal")
    if not isinstance(journal, dict):
        return None, None
    delivered, last = journal.get("delivered_seq"), journal.get("last_seq")
    return (
        delivered if isinstance(delivered, int) else None,
        last if isinstance(last, int) else None,
    )


def _state(conn: Conn, topic: Topic, state: dict[str, Any]) -> None:
    when = message_time(state)
    delivered, produced = _journal_figures(state)
    alarms = state.get("alarms") if isinstance(state.get("alarms"), list) else []
    # Only a newer state replaces an older one (redelivery, retained copies, N workers).
    conn.execute(
        "UPDATE devices SET site = %(site)s, online = %(online)s,"
        " version = coalesce(%(version)s, version), boot_id = coalesce(%(boot)s, boot_id),"
        " delivered_seq = coalesce(%(delivered)s, delivered_seq),"
        " produced_seq = coalesce(%(produced)s, produced_seq),"
        " alarms = CASE WHEN %(has_journal)s THEN %(alarms)s ELSE alarms END,"
        " last_state = %(state)s, state_time = %(time)s,"
        " last_seen = greatest(last_seen, now()), updated_at = now()"
        " WHERE device = %(device)s AND (state_time IS NULL OR state_time <= %(time)s)",
        {
            "site": topic.site,
            "online": bool(state.get("online")),
            "version": state.get("version") if isinstance(state.get("version"), str) else None,
            "boot": state.get("boot_id") if isinstance(state.get("boot_id"), str) else None,
            "delivered": delivered,
            "produced": produced,
            "has_journal": produced is not None,
            "alarms": Jsonb(alarms),
            "state": Jsonb(state),
            "time": when,
            "device": topic.device,
        },
    )


def _health(conn: Conn, topic: Topic, health: dict[str, Any]) -> None:
    when = message_time(health)
    conn.execute(
        "INSERT INTO health (device, site, time, payload) VALUES (%s, %s, %s, %s)"
        " ON CONFLICT DO NOTHING",
        (topic.device, topic.site, when, Jsonb(health)),
    )
    delivered, produced = _journal_figures(health)
    alarms = health.get("alarms") if isinstance(health.get("alarms"), list) else []
    conn.execute(
        "UPDATE devices SET health_time = %(time)s, alarms = %(alarms)s,"
        " delivered_seq = CASE WHEN state_time IS NULL OR state_time <= %(time)s"
        "   THEN coalesce(%(delivered)s, delivered_seq) ELSE delivered_seq END,"
        " produced_seq = greatest(produced_seq, %(produced)s),"
        " last_seen = greatest(last_seen, now()), updated_at = now()"
        " WHERE device = %(device)s AND (health_time IS NULL OR health_time <= %(time)s)",
        {
            "time": when,
            "alarms": Jsonb(alarms),
            "delivered": delivered,
            "produced": produced,
            "device": topic.device,
        },
    )


def _resend_reply(conn: Conn, request_id: str, reply: dict[str, Any]) -> None:
    # scanfleet.cmd-response/1 (daemon/remote/control.py): ``ok`` says whether it ran.
    status = "ok" if reply.get("ok") is True else "error"
    conn.execute(
        "UPDATE resend_requests SET status = %s, response = %s, answered_at = now()"
        " WHERE request_id = %s",
        (status, Jsonb(reply), request_id),
    )
