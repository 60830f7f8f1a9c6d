"""Per device: the contiguous watermark and the gaps table, kept true to ``records``.

A batch reconciles incrementally (only the ranges its new seqs can change); the
repair sweep reconciles in full from ``records`` itself, so a row deleted behind the
hub's back, or records the device says it delivered that never arrived (its
``delivered_seq`` above what is held), become open gaps too. Gap rows are history:
an open gap that changes is closed (``repaired`` when records arrived in it,
``explained`` when a declared loss covers it) and what is still missing opens again
with the original ``opened_at``, so the repair clock keeps running.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import psycopg

from scanfleet.hub.ranges import Range, from_points, intersect, subtract

log = logging.getLogger(__name__)

REORDER_GRACE_S = 60.0
"""A gap closed by ordinary arrivals this soon after it opened leaves no ``repaired`` row."""

Conn = psycopg.Connection[tuple[Any, ...]]


def held_gaps(conn: Conn, device: str) -> tuple[list[Range], int, int]:
    """Missing ranges below the highest held seq, that seq, and the records held."""
    row = conn.execute(
        "SELECT coalesce(max(seq), 0), count(*), coalesce(min(seq), 0) FROM records"
        " WHERE device = %s",
        (device,),
    ).fetchone()
    top, count, low = (int(v) for v in row) if row else (0, 0, 0)
    missing: list[Range] = [(1, low - 1)] if low > 1 else []
    missing += [
        (int(a), int(b))
        for a, b in conn.execute(
            "SELECT seq + 1, nxt - 1 FROM (SELECT seq, lead(seq) OVER (ORDER BY seq) AS nxt"
            " FROM records WHERE device = %s) t WHERE nxt > seq + 1 ORDER BY seq",
            (device,),
        )
    ]
    return missing, top, count


def reconcile_device(
    conn: Conn,
    device: str,
    site: str,
    new_seqs: Sequence[int],
    *,
    full: bool = False,
    tail: bool = False,
) -> list[Range]:
    """Bring *device*'s gaps and figures up to date (its row is locked); returns open gaps.

    *full* recomputes from ``records``; *tail* adds what the device says it delivered
    above the highest seq held (both are the repair loop's, never a batch's).
    """
    dev = conn.execute(
        "SELECT last_seq, records, coalesce(delivered_seq, 0) FROM devices WHERE device = %s",
        (device,),
    ).fetchone()
    if dev is None:
        return []
    last_seq, count, delivered = int(dev[0]), int(dev[1]), int(dev[2])
    open_rows = conn.execute(
        "SELECT gap_id, from_seq, to_seq, opened_at, resends, last_resend_at FROM gaps"
        " WHERE device = %s AND status = 'open' ORDER BY from_seq",
        (device,),
    ).fetchall()
    if not full and not new_seqs and not tail:
        return [(int(r[1]), int(r[2])) for r in open_rows]
    explained = [
        (int(a), int(b))
        for a, b in conn.execute(
            "SELECT from_seq, to_seq FROM explanations WHERE device = %s", (device,)
        )
    ]
    if full:
        missing, last_seq, count = held_gaps(conn, device)
        if delivered > last_seq:
            missing.append((last_seq + 1, delivered))
    else:
        fresh = from_points(new_seqs)
        missing = subtract([(int(r[1]), int(r[2])) for r in open_rows], fresh)
        top = max(new_seqs, default=0)
        if top > last_seq + 1:
            missing += subtract([(last_seq + 1, top - 1)], fresh)
        last_seq = max(last_seq, top)
        count += len(new_seqs)
        if tail and delivered > last_seq:
            missing = subtract(missing, [(last_seq + 1, delivered)])
            missing.append((last_seq + 1, delivered))
    missing.sort()
    want_open = subtract(missing, explained)
    want_explained = intersect(missing, explained)
    _sync(conn, device, site, open_rows, want_open, want_explained, explained)
    contiguous = (want_open[0][0] - 1) if want_open else max(last_seq, 0)
    conn.execute(
        "UPDATE devices SET last_seq = %s, records = %s, contiguous_seq = %s,"
        " last_seen = CASE WHEN %s THEN greatest(last_seen, now()) ELSE last_seen END,"
        " updated_at = now() WHERE device = %s",
        (last_seq, count, min(contiguous, last_seq), bool(new_seqs), device),
    )
    return want_open


def _sync(
    conn: Conn,
    device: str,
    site: str,
    open_rows: Sequence[tuple[Any, ...]],
    want_open: list[Range],
    want_explained: list[Range],
    explained: list[Range],
) -> None:
    covered: list[Range] = []
    for gap_id, first, last, opened_at, resends, last_resend in open_rows:
        gap = (int(first), int(last))
        still = intersect([gap], want_open)
        if still == [gap]:
            covered.append(gap)
            continue
        by_loss = intersect([gap], explained)
        status = "explained" if by_loss and not subtract([gap], explained + still) else "repaired"
        gone = 0
        if status == "repaired" and not resends:
            # Workers commit one device's batches in any order; a hole that fills within
            # the grace time without a resend was reordering, not a loss: no history row.
            gone = conn.execute(
                "DELETE FROM gaps WHERE gap_id = %s AND opened_at > now() - %s * interval '1 s'",
                (gap_id, REORDER_GRACE_S),
            ).rowcount
        if not gone:
            conn.execute(
                "UPDATE gaps SET status = %s, closed_at = now() WHERE gap_id = %s",
                (status, gap_id),
            )
            log.info("gap %s %d..%d of %s is %s", gap_id, gap[0], gap[1], device, status)
        for a, b in still:
            conn.execute(
                "INSERT INTO gaps (site, device, from_seq, to_seq, opened_at, resends,"
                " last_resend_at) VALUES (%s, %s, %s, %s, %s, %s, %s)"
                " ON CONFLICT DO NOTHING",
                (site, device, a, b, opened_at, resends, last_resend),
            )
            covered.append((a, b))
    for a, b in subtract(want_open, covered):
        log.debug("gap %d..%d of %s opened", a, b, device)
        conn.execute(
            "INSERT INTO gaps (site, device, from_seq, to_seq) VALUES (%s, %s, %s, %s)"
            " ON CONFLICT DO NOTHING",
            (site, device, a, b),
        )
    if want_explained:
        have = [
            (int(a), int(b))
            for a, b in conn.execute(
                "SELECT from_seq, to_seq FROM gaps WHERE device = %s AND status = 'explained'",
                (device,),
            )
        ]
        for a, b in subtract(want_explained, have):
            reason = conn.execute(
                "SELECT reason, record_id FROM explanations WHERE device = %s"
                " AND from_seq <= %s AND to_seq >= %s LIMIT 1",
                (device, b, a),
            ).fetchone()
            conn.execute(
                "INSERT INTO gaps (site, device, from_seq, to_seq, status, reason, explained_by,"
                " closed_at) VALUES (%s, %s, %s, %s, 'explained', %s, %s, now())",
                (site, device, a, b, reason[0] if reason else None, reason[1] if reason else None),
            )
