"""What the console reads from the hub's database (the tables of hub schema v1).

Every query takes the person's site scope (an empty tuple is every site), so a person
scoped to one site never sees another site's rows, whatever URL they type. Lists are
paged: the overview of 20 000 devices renders one page of them, problems first.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

from psycopg import Connection
from psycopg.rows import dict_row

Row = dict[str, Any]

_SCOPE = "(cardinality(%(sites)s::text[]) = 0 OR d.site = ANY(%(sites)s::text[]))"
_ONLINE = "(coalesce(d.online, false) AND d.last_seen > now() - %(offline_after)s)"
_SEVERITY_COUNTS = ", ".join(
    f"(SELECT count(*) FROM jsonb_array_elements(d.alarms) a WHERE a->>'severity' = '{s}') AS {s}"
    for s in ("critical", "error", "warning")
)


@dataclass(frozen=True)
class Filter:
    """The overview's filter: site, device text, alarm text, online state, page."""

    site: str = ""
    q: str = ""
    alarm: str = ""
    status: str = ""  # '', 'online', 'offline'
    page: int = 0


def _rows(db: Connection[Any], sql: str, params: dict[str, Any]) -> list[Row]:
    with db.cursor(row_factory=dict_row) as cur:
        cur.execute(sql.encode(), params)
        return list(cur.fetchall())


# Midnight today in the person's zone, as a timestamptz expression.
_DAY_START = "(date_trunc('day', now() AT TIME ZONE %(tz)s) AT TIME ZONE %(tz)s)"


def sites(
    db: Connection[Any], scope: tuple[str, ...], tz: str, offline_after: timedelta
) -> list[Row]:
    """Per site: devices, online, alarms by severity, open gaps, today's completeness."""
    sql = f"""
    WITH dev AS (
        SELECT d.site, {_ONLINE} AS is_online, {_SEVERITY_COUNTS}
        FROM devices d WHERE {_SCOPE}
    ), today AS (
        -- One range scan of the (site, time) index per site: far cheaper than scanning
        -- today's rows of every site, which is what a filter on time alone would do.
        SELECT s.site, t.held
        FROM (SELECT DISTINCT site FROM dev) s
        CROSS JOIN LATERAL (
            SELECT count(*) AS held FROM records r
            WHERE r.site = s.site AND r.time >= {_DAY_START}
        ) t
    ), missing AS (
        SELECT g.site, sum(g.to_seq - g.from_seq + 1) AS missing, count(*) AS open_gaps
        FROM gaps g WHERE g.status = 'open'
          AND (cardinality(%(sites)s::text[]) = 0 OR g.site = ANY(%(sites)s::text[]))
        GROUP BY g.site
    )
    SELECT dev.site, count(*) AS devices, count(*) FILTER (WHERE is_online) AS online,
           sum(critical) AS critical, sum(error) AS error, sum(warning) AS warning,
           coalesce(max(today.held), 0) AS held_today,
           coalesce(max(missing.missing), 0) AS missing,
           coalesce(max(missing.open_gaps), 0) AS open_gaps
    FROM dev LEFT JOIN today USING (site) LEFT JOIN missing USING (site)
    GROUP BY dev.site ORDER BY dev.site
    """
    rows = _rows(db, sql, {"sites": list(scope), "tz": tz, "offline_after": offline_after})
    for row in rows:
        total = row["held_today"] + row["missing"]
        row["completeness"] = 1.0 if total == 0 else row["held_today"] / total
    return rows


def devices(
    db: Connection[Any],
    scope: tuple[str, ...],
    flt: Filter,
    offline_after: timedelta,
    page_size: int,
) -> tuple[list[Row], int]:
    """One page of devices matching *flt*, problems first; and how many match in all."""
    where = [_SCOPE]
    params: dict[str, Any] = {
        "sites": list(scope),
        "offline_after": offline_after,
        "limit": page_size,
        "offset": flt.page * page_size,
    }
    if flt.site:
        where.append("d.site = %(site)s")
        params["site"] = flt.site
    if flt.q:
        where.append("(d.device ILIKE %(q)s OR d.site ILIKE %(q)s)")
        params["q"] = f"%{flt.q}%"
    if flt.alarm:
        where.append(
            "EXISTS (SELECT 1 FROM jsonb_array_elements(d.alarms) a"
            " WHERE a->>'code' ILIKE %(alarm)s OR a->>'severity' = %(alarm_exact)s)"
        )
        params["alarm"] = f"%{flt.alarm}%"
        params["alarm_exact"] = flt.alarm
    if flt.status == "online":
        where.append(_ONLINE)
    elif flt.status == "offline":
        where.append(f"NOT {_ONLINE}")
    cond = " AND ".join(where)
    total_row = _rows(db, f"SELECT count(*) AS n FROM devices d WHERE {cond}", params)
    # The page is chosen first; health and gap figures are looked up for its rows only.
    sql = f"""
    SELECT p.*,
           coalesce(h.payload->'journal', p.state_journal)->>'depth' AS depth,
           coalesce(h.payload->'journal', p.state_journal)->>'oldest_undelivered_age_s'
               AS oldest_age,
           (SELECT count(*) FROM gaps g WHERE g.device = p.device AND g.status = 'open')
               AS open_gaps
    FROM (
        SELECT d.site, d.device, {_ONLINE} AS is_online, d.last_seen, d.version,
               d.last_state->'journal' AS state_journal,
               jsonb_array_length(d.alarms) AS alarm_count, {_SEVERITY_COUNTS}
        FROM devices d
        WHERE {cond}
        ORDER BY {_ONLINE}, jsonb_array_length(d.alarms) = 0, d.site, d.device
        LIMIT %(limit)s OFFSET %(offset)s
    ) p
    LEFT JOIN LATERAL (
        SELECT payload FROM health WHERE health.device = p.device ORDER BY time DESC LIMIT 1
    ) h ON true
    ORDER BY p.is_online, p.alarm_count = 0, p.site, p.device
    """
    return _rows(db, sql, params), int(total_row[0]["n"])


def device(db: Connection[Any], device_id: str, offline_after: timedelta) -> Row | None:
    """One device with its latest health message."""
    rows = _rows(
        db,
        f"""SELECT d.*, {_ONLINE} AS is_online, h.payload AS health, h.time AS health_at
        FROM devices d LEFT JOIN LATERAL (
            SELECT payload, time FROM health WHERE health.device = d.device
            ORDER BY time DESC LIMIT 1) h ON true
        WHERE d.device = %(device)s""",
        {"device": device_id, "offline_after": offline_after},
    )
    return rows[0] if rows else None


def acks(db: Connection[Any], site: str, device_id: str) -> dict[tuple[str, str], Row]:
    """(alarm code, since) → who acknowledged it and when."""
    rows = _rows(
        db,
        "SELECT code, since, acked_by, acked_at FROM console_alarm_acks"
        " WHERE site = %(site)s AND device = %(device)s",
        {"site": site, "device": device_id},
    )
    return {(r["code"], r["since"]): r for r in rows}


def gaps(db: Connection[Any], device_id: str, limit: int = 50) -> list[Row]:
    """The device's gaps, open ones first, newest first."""
    return _rows(
        db,
        "SELECT gap_id, from_seq, to_seq, status, reason, opened_at, closed_at, resends"
        " FROM gaps WHERE device = %(device)s"
        " ORDER BY status <> 'open', gap_id DESC LIMIT %(limit)s",
        {"device": device_id, "limit": limit},
    )


def recent_records(db: Connection[Any], device_id: str, limit: int = 30) -> list[Row]:
    """The device's newest records (identity references masked by the caller)."""
    return _rows(
        db,
        "SELECT seq, type, kind, value, verdict, operation, bill, time, identity_ref, hash_ok"
        " FROM records WHERE device = %(device)s ORDER BY seq DESC LIMIT %(limit)s",
        {"device": device_id, "limit": limit},
    )


def chain_breaks(db: Connection[Any], device_id: str, limit: int = 20) -> list[Row]:
    """The device's hash-chain breaks, newest first."""
    return _rows(
        db,
        "SELECT seq, kind, detected_at FROM chain_breaks WHERE device = %(device)s"
        " ORDER BY break_id DESC LIMIT %(limit)s",
        {"device": device_id, "limit": limit},
    )


def pushes(db: Connection[Any], site: str, device_id: str, limit: int = 20) -> list[Row]:
    """Configurations pushed to the device from the console, newest first."""
    return _rows(
        db,
        "SELECT id, version, diff, pushed_by, pushed_at, result, report"
        " FROM console_config_pushes WHERE site = %(site)s AND device = %(device)s"
        " ORDER BY id DESC LIMIT %(limit)s",
        {"site": site, "device": device_id, "limit": limit},
    )


def audit_days(db: Connection[Any], site: str, since: date, until: date, tz: str) -> list[Row]:
    """Per day of *site* (in zone *tz*): records by verdict, devices heard, chain breaks."""
    return _rows(
        db,
        """
        SELECT (r.time AT TIME ZONE %(tz)s)::date AS day, count(*) AS records,
               count(*) FILTER (WHERE r.verdict = 'accepted') AS accepted,
               count(*) FILTER (WHERE r.verdict = 'refused') AS refused,
               count(DISTINCT r.device) AS devices,
               count(*) FILTER (WHERE NOT r.hash_ok) AS bad_hashes
        FROM records r
        WHERE r.site = %(site)s
          AND r.time >= (%(since)s::date::timestamp AT TIME ZONE %(tz)s)
          AND r.time < ((%(until)s::date + 1)::timestamp AT TIME ZONE %(tz)s)
        GROUP BY 1 ORDER BY 1 DESC
        """,
        {"site": site, "since": since, "until": until, "tz": tz},
    )


def audit_log(db: Connection[Any], limit: int = 200) -> list[Row]:
    """The newest lines of the console's own audit log."""
    return _rows(
        db,
        "SELECT at, username, address, action, target, detail, result FROM console_audit"
        " ORDER BY id DESC LIMIT %(limit)s",
        {"limit": limit},
    )


def change_mark(db: Connection[Any]) -> str:
    """A value that changes whenever the overview would: for the live-update stream."""
    rows = _rows(
        db,
        "SELECT (SELECT max(updated_at) FROM devices)::text AS d,"
        " (SELECT max(gap_id)::text || ':' || count(*) FILTER (WHERE status = 'open')"
        "  FROM gaps) AS g",
        {},
    )
    return f"{rows[0]['d']}|{rows[0]['g']}"
