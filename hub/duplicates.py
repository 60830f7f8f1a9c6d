"""The centre's duplicate view: the same code for the same operation, across the fleet.

A terminal refuses a repeat it can see itself; the centre sees every terminal. A
repeated accepted scan of one code for one operation is, in time order:

- ``split_pack`` when the record says which unit of how many it took (拆零) and the
  pack is not used up;
- ``after_return`` when a resetting operation of the same code came in between (sold,
  returned, sold again: the daemon's own :data:`~scanfleet.daemon.station.duplicates.RESETS`);
- ``duplicate`` otherwise: a real duplicate, typically on two terminals or sites.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from typing import Any

import psycopg

from scanfleet.daemon.core.model import Operation
from scanfleet.daemon.station.duplicates import RESETS


@dataclass(frozen=True)
class Repeat:
    """One accepted scan that repeats an earlier one of the same code and operation."""

    value: str
    operation: str
    site: str
    device: str
    seq: int
    time: str
    verdict: str
    """``split_pack``, ``after_return`` or ``duplicate``."""
    earlier_site: str
    earlier_device: str
    earlier_seq: int


def repeats(
    conn: psycopg.Connection[tuple[Any, ...]],
    *,
    site: str | None = None,
    since: date | None = None,
) -> list[Repeat]:
    """Every repeated accepted scan in the selection, classified."""
    rows = conn.execute(
        "WITH sel AS (SELECT value, operation, site, device, seq, time, split_unit, split_units"
        "   FROM records WHERE type = 'scan' AND verdict = 'accepted'"
        "   AND (%(site)s::text IS NULL OR site = %(site)s)"
        "   AND (%(since)s::date IS NULL OR time >= %(since)s::date))"
        " SELECT * FROM sel WHERE value IN"
        "   (SELECT value FROM sel GROUP BY value HAVING count(*) > 1)"
        " ORDER BY value, time, device, seq",
        {"site": site, "since": since},
    ).fetchall()
    out: list[Repeat] = []
    counting: dict[str, list[tuple[Any, ...]]] = {}
    cleared: dict[str, tuple[Any, ...]] = {}
    current = None
    for row in rows:
        value, operation, r_site, device, seq, when, unit, units = row
        if value != current:
            current, counting, cleared = value, {}, {}
        same = counting.setdefault(operation, [])
        earlier = same[-1] if same else cleared.get(operation)
        if earlier is not None:
            if not same:
                verdict = "after_return"
            elif units and unit and unit <= units and len(same) < units:
                verdict = "split_pack"
            else:
                verdict = "duplicate"
            out.append(
                Repeat(
                    value=value,
                    operation=operation,
                    site=r_site,
                    device=device,
                    seq=seq,
                    time=when.isoformat(),
                    verdict=verdict,
                    earlier_site=earlier[2],
                    earlier_device=earlier[3],
                    earlier_seq=earlier[4],
                )
            )
        same.append(row)
        for other in list(counting):
            if other != operation and _resets(operation, other) and counting[other]:
                cleared[other] = counting[other][-1]
                counting[other] = []
    return out


def _resets(later: str, earlier: str) -> bool:
    """True when a scan for *later* makes the code fresh again for *earlier*."""
    try:
        return Operation(later) in RESETS.get(Operation(earlier), frozenset())
    except ValueError:
        return False
