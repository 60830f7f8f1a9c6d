"""Automatic gap repair: ask the device to ``resend`` what the hub is missing.

One worker of all (whoever holds a PostgreSQL advisory lock) repairs; the others
stand by and take over when its connection goes. A tick:

1. opens a gap wherever a device says it delivered more than the hub holds (every
   tick, from the devices table alone), and reconciles every device in full from
   ``records`` every ``sweep_interval`` (a full scan), so rows deleted behind the
   hub's back become open gaps too;
2. for every device whose oldest open gap is older than ``repair_after`` and lies at or
   below the device's own ``delivered_seq``, publishes the device's ``resend`` command
   (``docs/remote-management.md``) for that range, at most one per device per
   ``min_interval`` (the rate limit), and records it in ``resend_requests``;
3. alerts once for a gap still open after ``max_resends`` requests: it needs a person.

The records come back on the device's ordinary ``scans`` topic and close the gap like
any other arrival; the reply (on ``cmd/resend/response``) is stored with the request.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psycopg
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from scanfleet.daemon.remote.commands import MAX_RESEND
from scanfleet.hub.gaps import reconcile_device
from scanfleet.hub.store import alert, lock_devices

log = logging.getLogger(__name__)

REPAIR_LOCK = 0x5CF1_0002
"""pg_try_advisory_lock key: one repairing worker at a time."""

Publish = Callable[..., int]


@dataclass(frozen=True)
class RepairSettings:
    """Timing of gap repair (seconds)."""

    enabled: bool = True
    interval: float = 5.0
    """How often the repairing worker looks at the gaps."""
    repair_after: float = 30.0
    """An open gap younger than this is left alone (its records may be in flight)."""
    min_interval: float = 60.0
    """At most one resend request per device this often."""
    sweep_interval: float = 3600.0
    """How often every device is reconciled in full from the records table (a full scan)."""
    max_resends: int = 5
    """Requests for one gap before it is alerted as needing a person."""
    reply_timeout: float = 120.0


class Repairer:
    """The repair side of one worker (inactive unless it holds the repair lock)."""

    def __init__(
        self,
        db: psycopg.Connection[tuple[Any, ...]],
        publish: Publish,
        settings: RepairSettings,
    ) -> None:
        self.db = db
        self.publish = publish
        self.settings = settings
        self._next = 0.0
        # The first full scan waits one interval: a leader change must not rescan a
        # province's records at once; tails() covers what needs no scan.
        self._next_sweep = time.monotonic() + settings.sweep_interval
        self._leader = False

    def tick(self) -> None:
        """Do one round when it is due."""
        now = time.monotonic()
        if not self.settings.enabled or now < self._next:
            return
        self._next = now + self.settings.interval
        if not self._leader:
            row = self.db.execute("SELECT pg_try_advisory_lock(%s)", (REPAIR_LOCK,)).fetchone()
            self.db.commit()
            self._leader = bool(row and row[0])
            if not self._leader:
                return
            log.info("this worker repairs gaps")
        if now >= self._next_sweep:
            self._next_sweep = now + self.settings.sweep_interval
            sweep(self.db)
        else:
            tails(self.db)
        self.request_resends()

    def request_resends(self) -> int:
        """Publish the due resend requests; returns how many went out."""
        s = self.settings
        with self.db.transaction():
            self.db.execute(
                "UPDATE resend_requests SET status = 'timeout', answered_at = now()"
                " WHERE status = 'sent' AND requested_at < now() - make_interval(secs => %s)",
                (s.reply_timeout,),
            )
            due = self.db.execute(
                "SELECT DISTINCT ON (g.device) g.gap_id, g.site, g.device, g.from_seq,"
                " least(g.to_seq, d.delivered_seq), g.resends FROM gaps g"
                " JOIN devices d ON d.device = g.device"
                " WHERE g.status = 'open' AND g.from_seq <= coalesce(d.delivered_seq, 0)"
                " AND g.opened_at < now() - make_interval(secs => %s)"
                " AND NOT EXISTS (SELECT 1 FROM resend_requests r WHERE r.device = g.device"
                "   AND r.requested_at > now() - make_interval(secs => %s))"
                " ORDER BY g.device, g.from_seq",
                (s.repair_after, s.min_interval),
            ).fetchall()
            sent = 0
            for gap_id, site, device, first, last, resends in due:
                if resends >= s.max_resends:
                    if resends == s.max_resends:
                        alert(
                            self.db,
                            "gap_unrepaired",
                            site,
                            device,
                            f"gap {first}..{last} of {device} still open after {resends} resends",
                            gap_id=gap_id,
                        )
                        self.db.execute(
                            "UPDATE gaps SET resends = resends + 1 WHERE gap_id = %s", (gap_id,)
                        )
                    continue
                last = min(int(last), int(first) + MAX_RESEND - 1)
                request_id = note_resend(self.db, site, device, int(first), last, gap_id=gap_id)
                props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
                topic = f"scanfleet/v1/{site}/{device}/cmd/resend"
                props.ResponseTopic = f"{topic}/response"
                props.CorrelationData = request_id.encode("ascii")
                payload = json.dumps({"from_seq": int(first), "to_seq": last}).encode()
                self.publish(topic, payload, properties=props)
                log.info("asked %s/%s to resend %d..%d", site, device, first, last)
                sent += 1
        return sent


def tails(db: psycopg.Connection[tuple[Any, ...]]) -> int:
    """Open a gap for every device that says it delivered more than the hub holds.

    Cheap (the devices table only), so it runs every tick: records a broker accepted
    for nobody (the ``$share`` restart loss) are found even when the device publishes
    nothing after them.
    """
    due = db.execute(
        "SELECT device, site FROM devices d WHERE delivered_seq > last_seq"
        " AND NOT EXISTS (SELECT 1 FROM gaps g WHERE g.device = d.device"
        "   AND g.status = 'open' AND g.to_seq >= d.delivered_seq) ORDER BY device"
    ).fetchall()
    db.commit()
    for device, site in due:
        with db.transaction():
            lock_devices(db, {device: site})
            reconcile_device(db, device, site, [], tail=True)
    return len(due)


def sweep(db: psycopg.Connection[tuple[Any, ...]]) -> int:
    """Reconcile every device in full (one short transaction each); returns open gaps."""
    total = 0
    devices = db.execute("SELECT device, site FROM devices ORDER BY device").fetchall()
    db.commit()
    for device, site in devices:
        with db.transaction():
            lock_devices(db, {device: site})
            total += len(reconcile_device(db, device, site, [], full=True))
    return total


def note_resend(
    db: psycopg.Connection[tuple[Any, ...]],
    site: str,
    device: str,
    first: int,
    last: int,
    *,
    gap_id: int | None = None,
) -> str:
    """Book a resend of *first*..*last* (the hub's own or a person's); its request id.

    The open gap it repairs counts the resend (*gap_id*, or every open gap the range
    overlaps), so a gap it fills is ``repaired``, not mistaken for reordering; and
    ``resend_requests`` gets a row that the device's reply completes later.
    """
    if gap_id is None:
        hit = db.execute(
            "UPDATE gaps SET resends = resends + 1, last_resend_at = now()"
            " WHERE device = %s AND status = 'open' AND from_seq <= %s AND to_seq >= %s"
            " RETURNING gap_id",
            (device, last, first),
        ).fetchone()
        gap_id = hit[0] if hit else None
    else:
        db.execute(
            "UPDATE gaps SET resends = resends + 1, last_resend_at = now() WHERE gap_id = %s",
            (gap_id,),
        )
    request_id = uuid.uuid4().hex
    db.execute(
        "INSERT INTO resend_requests (request_id, site, device, gap_id, from_seq, to_seq)"
        " VALUES (%s, %s, %s, %s, %s, %s)",
        (request_id, site, device, gap_id, first, last),
    )
    return request_id
