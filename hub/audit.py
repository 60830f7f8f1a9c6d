"""The completeness proof: per site, device and day, what arrived and what is missing.

Everything is computed from ``records`` itself (never only from the ingest's own
bookkeeping): the seqs held, the ranges missing below the highest seq held or the
device's own ``delivered_seq``, which of those a ``journal_loss`` explains, and, with
verification on, whether every stored row still hashes to its ``hash`` and links to
the row before it. A stored row that no longer does is recorded as a chain break.
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from datetime import date, datetime
from typing import Any

import psycopg

from scanfleet.daemon.journal.codec import RecordError, record_hash
from scanfleet.hub.gaps import held_gaps
from scanfleet.hub.ranges import Range, intersect, size, subtract
from scanfleet.hub.store import alert

log = logging.getLogger(__name__)

Conn = psycopg.Connection[tuple[Any, ...]]


@dataclass
class DeviceAudit:
    """The audit of one device (the ``--json`` object; field names are an interface)."""

    site: str
    device: str
    records: int
    last_seq: int
    contiguous_seq: int
    gaps: list[list[int]]
    explained: list[list[Any]]
    chain_breaks: int
    completeness: float
    delivered_seq: int | None = None
    produced_seq: int | None = None
    expected: int = 0
    """Seqs the hub must hold: up to the highest held or the device's delivered_seq."""
    pending: int = 0
    """Produced by the device but not yet delivered (not a gap)."""
    repaired: int = 0
    """Gaps closed by records arriving late (redelivery or resend)."""
    resend_requests: int = 0
    last_seen: str | None = None
    days: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Day (in the audit's time zone) → records, scans by operation and by verdict."""

    @property
    def complete(self) -> bool:
        """No unexplained gap."""
        return not self.gaps


def audit(
    conn: Conn,
    *,
    site: str | None = None,
    device: str | None = None,
    since: date | None = None,
    timezone: str = "UTC",
    verify: bool = True,
) -> list[DeviceAudit]:
    """Audit every device matching *site*/*device*; days from *since* on."""
    devices = conn.execute(
        "SELECT device, site, delivered_seq, produced_seq, last_seen FROM devices"
        " WHERE (%(site)s::text IS NULL OR site = %(site)s)"
        " AND (%(device)s::text IS NULL OR device = %(device)s) ORDER BY site, device",
        {"site": site, "device": device},
    ).fetchall()
    out = []
    for name, dev_site, delivered, produced, last_seen in devices:
        if verify:
            verify_device(conn, name, dev_site, since)
        out.append(_device(conn, name, dev_site, delivered, produced, last_seen, since, timezone))
    conn.commit()
    return out


def _device(
    conn: Conn,
    device: str,
    site: str,
    delivered: int | None,
    produced: int | None,
    last_seen: datetime | None,
    since: date | None,
    timezone: str,
) -> DeviceAudit:
    missing, top, count = held_gaps(conn, device)
    expected = max(top, delivered or 0)
    if expected > top:
        missing.append((top + 1, expected))
    losses = conn.execute(
        "SELECT from_seq, to_seq, reason FROM explanations WHERE device = %s ORDER BY from_seq",
        (device,),
    ).fetchall()
    loss_ranges: list[Range] = [(int(a), int(b)) for a, b, _ in losses]
    open_gaps = subtract(missing, loss_ranges)
    explained: list[list[Any]] = []
    for a, b in intersect(missing, loss_ranges):
        reason = next((r for f, t, r in losses if f <= a and b <= t), "journal_loss")
        explained.append([a, b, reason])
    breaks = conn.execute(
        "SELECT count(*) FROM chain_breaks WHERE device = %s", (device,)
    ).fetchone()
    repaired, resends = conn.execute(
        "SELECT (SELECT count(*) FROM gaps WHERE device = %(d)s AND status = 'repaired'),"
        " (SELECT count(*) FROM resend_requests WHERE device = %(d)s)",
        {"d": device},
    ).fetchone() or (0, 0)
    return DeviceAudit(
        site=site,
        device=device,
        records=count,
        last_seq=top,
        contiguous_seq=(open_gaps[0][0] - 1) if open_gaps else top,
        gaps=[[a, b] for a, b in open_gaps],
        explained=explained,
        chain_breaks=int(breaks[0]) if breaks else 0,
        completeness=round((expected - size(open_gaps)) / expected, 6) if expected else 1.0,
        delivered_seq=delivered,
        produced_seq=produced,
        expected=expected,
        pending=max(0, (produced or 0) - expected),
        repaired=int(repaired),
        resend_requests=int(resends),
        last_seen=last_seen.isoformat() if last_seen else None,
        days=_days(conn, device, since, timezone, open_gaps),
    )


def _days(
    conn: Conn, device: str, since: date | None, timezone: str, open_gaps: list[Range]
) -> dict[str, dict[str, Any]]:
    """Per day: records, scans by operation and verdict, and the missing records.

    A missing record has no time; it is counted on the day of the last record held
    before its gap (or of the first after it, for a gap at the start), which is when
    the terminal produced it give or take the gap's own length.
    """
    days: dict[str, dict[str, Any]] = defaultdict(
        lambda: {"records": 0, "scans": 0, "missing": 0, "operation": {}, "verdict": {}}
    )
    for day, kind, operation, verdict, n in conn.execute(
        "SELECT (time AT TIME ZONE %(tz)s)::date AS day, type, operation, verdict, count(*)"
        " FROM records WHERE device = %(d)s"
        " AND (%(since)s::date IS NULL OR time >= (%(since)s::date::timestamp AT TIME ZONE %(tz)s))"
        " GROUP BY 1, 2, 3, 4 ORDER BY 1",
        {"tz": timezone, "d": device, "since": since},
    ):
        entry = days[day.isoformat()]
        entry["records"] += n
        if kind == "scan":
            entry["scans"] += n
            entry["operation"][operation] = entry["operation"].get(operation, 0) + n
            entry["verdict"][verdict] = entry["verdict"].get(verdict, 0) + n
    for first, last in open_gaps:
        row = conn.execute(
            "SELECT (time AT TIME ZONE %(tz)s)::date FROM records WHERE device = %(d)s"
            " AND seq IN (%(before)s, %(after)s) ORDER BY seq LIMIT 1",
            {"tz": timezone, "d": device, "before": first - 1, "after": last + 1},
        ).fetchone()
        if row is not None and (since is None or row[0] >= since):
            days[row[0].isoformat()]["missing"] += last - first + 1
    for entry in days.values():
        held = entry["records"]
        entry["completeness"] = round(held / (held + entry["missing"]), 6) if held else 0.0
    return dict(sorted(days.items()))


def verify_device(conn: Conn, device: str, site: str, since: date | None) -> int:
    """Re-hash every stored row of *device* (from *since*) and check its link; new breaks."""
    found = 0
    prev: tuple[int, str] | None = None
    losses = [
        (int(a), int(b))
        for a, b in conn.execute(
            "SELECT from_seq, to_seq FROM explanations WHERE device = %s", (device,)
        )
    ]
    with conn.cursor(name=f"verify_{abs(hash(device))}") as cur:
        cur.execute(
            "SELECT id, seq, hash, prev_hash, payload, type FROM records WHERE device = %s"
            " AND (%s::date IS NULL OR time >= %s::date) ORDER BY seq",
            (device, since, since),
        )
        problems: list[tuple[str, int, str, str | None, str]] = []
        for rid, seq, rhash, prev_hash, payload, kind in cur:
            actual = _rehash(bytes(payload), rhash)
            if actual != rhash:
                problems.append((rid, seq, "stored_mismatch", rhash, actual))
            elif (
                prev is not None
                and prev[0] == seq - 1
                and kind != "journal_loss"
                and prev_hash != prev[1]
                and not any(a - 1 <= seq <= b + 1 for a, b in losses)
            ):
                problems.append((rid, seq, "link_mismatch", prev[1], prev_hash))
            prev = (seq, rhash)
    for rid, seq, kind, expected, actual in problems:
        cur2 = conn.execute(
            "INSERT INTO chain_breaks (site, device, seq, record_id, kind, expected, actual)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
            (site, device, seq, rid, kind, expected, actual),
        )
        if cur2.rowcount:
            found += 1
            alert(conn, "chain_break", site, device, f"stored record {rid}: {kind}", id=rid)
    conn.commit()
    return found


def _rehash(payload: bytes, claimed: str) -> str:
    """The hash the stored bytes actually have (the record's own field must agree too)."""
    try:
        record = json.loads(payload)
        if not isinstance(record, dict) or record.get("hash") != claimed:
            return "bytes-disagree-with-hash-column"
        return record_hash({k: v for k, v in record.items() if k != "hash"})
    except (ValueError, RecordError):
        return "unparseable"


def as_json(item: DeviceAudit) -> str:
    """One ``--json`` line."""
    return json.dumps(asdict(item), ensure_ascii=False, sort_keys=False)
