"""What the publisher reports about itself: loop state, counters, the retained state.

Kept out of :mod:`scanfleet.daemon.publish.publisher` so that module holds only the
delivery loop.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from scanfleet.daemon.core.alarms import Alarm
from scanfleet.daemon.core.config import MqttVersion
from scanfleet.daemon.core.identity import Identity
from scanfleet.daemon.journal.reader import JournalStats
from scanfleet.daemon.publish.envelope import AlarmInfo, DeviceState, JournalSummary


class BrokerState(StrEnum):
    """Where the publisher's connection loop is."""

    STOPPED = "stopped"
    CONNECTING = "connecting"
    CONNECTED = "connected"
    BACKOFF = "backoff"
    STOPPING = "stopping"


@dataclass
class PublisherCounters:
    """Running totals since the publisher started."""

    batches_published: int = 0
    batches_acked: int = 0
    batches_refused: int = 0
    scans_published: int = 0
    scans_acked: int = 0
    acked_no_subscribers: int = 0
    live_batches_published: int = 0
    connects: int = 0
    connection_failures: int = 0


def compose_state(
    identity: Identity,
    *,
    online: bool,
    version: str,
    boot_id: str | None,
    stats: JournalStats | None,
    alarms: Sequence[Alarm],
    extra: dict[str, Any] | None = None,
    now: datetime | None = None,
    protocol: MqttVersion | None = None,
) -> DeviceState:
    """The retained state message: birth/periodic (*online*) or offline/will."""
    now = now or datetime.now(UTC)
    summary = None
    if stats is not None:
        oldest = stats.oldest_undelivered_time
        summary = JournalSummary(
            depth=stats.depth,
            last_seq=stats.last_seq,
            delivered_seq=stats.delivered_seq,
            oldest_undelivered_age_s=(
                round((now - oldest).total_seconds(), 3) if oldest is not None else None
            ),
        )
    return DeviceState(
        device=identity.device,
        site=identity.site,
        online=online,
        version=version,
        boot_id=boot_id,
        journal=summary,
        alarms=[AlarmInfo.model_validate(a.as_json()) for a in alarms],
        time=now,
        extra=extra,
        protocol=protocol,
    )
