"""The periodic ``health`` message: what a fleet operator needs to see a terminal is well.

Published (not retained) on ``scanfleet/v1/{site}/{device}/health`` every
``interval`` seconds while connected: journal depth and age of the oldest undelivered
record, scans per minute by verdict, per-device state, alarms, clock sync, disk free,
CPU and resident memory, certificate expiry and the running config version.
"""

from __future__ import annotations

import collections
import logging
import os
import resource
import shutil
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from scanfleet.daemon import __version__
from scanfleet.daemon.core.clock import ClockState
from scanfleet.daemon.core.identity import Identity
from scanfleet.daemon.publish.envelope import AlarmInfo
from scanfleet.daemon.remote.host import (
    AlarmView,
    ConnectionView,
    JournalView,
    OverlayVersion,
    RunningState,
)

log = logging.getLogger(__name__)

HEALTH_SCHEMA = "scanfleet.health/1"
DEFAULT_INTERVAL = 60.0
RATE_WINDOW = 60.0


def health_topic(site: str, device: str) -> str:
    """``scanfleet/v1/{site}/{device}/health``."""
    return f"scanfleet/v1/{site}/{device}/health"


class HealthJournal(BaseModel):
    """Journal figures."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    depth: int = Field(ge=0, description="Undelivered records.")
    last_seq: int = Field(ge=0)
    delivered_seq: int = Field(ge=0)
    oldest_undelivered_age_s: float | None
    size_bytes: int = Field(ge=0)
    budget_bytes: int = Field(ge=0)


class HealthProcess(BaseModel):
    """The daemon process."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    cpu_percent: float = Field(ge=0, description="CPU use since the previous health message.")
    rss_bytes: int = Field(ge=0)
    uptime_s: float = Field(ge=0)


class Health(BaseModel):
    """The message on ``scanfleet/v1/{site}/{device}/health``."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    schema_: Literal["scanfleet.health/1"] = Field(default="scanfleet.health/1", alias="schema")
    device: str
    site: str
    version: str
    time: datetime
    journal: HealthJournal
    scans_per_min: dict[str, int] = Field(
        description="Records of the last 60 s by verdict (accepted, refused, …)."
    )
    devices: dict[str, str] = Field(description="Device name → state (bound, absent, …).")
    alarms: list[AlarmInfo]
    clock: Literal["synced", "unsynced", "unknown"]
    disk_free_bytes: int | None
    process: HealthProcess
    cert_not_after: datetime | None
    config_version: int | None


class VerdictRate:
    """Counts records by verdict over the last minute (fed by the pipeline's listener)."""

    def __init__(self, window: float = RATE_WINDOW) -> None:
        self.window = window
        self._events: collections.deque[tuple[float, str]] = collections.deque()
        self._lock = threading.Lock()

    def on_record(self, record: dict[str, Any]) -> None:
        """Count one committed record (scans only: control records have no verdict)."""
        verdict = record.get("verdict")
        if isinstance(verdict, str):
            with self._lock:
                self._events.append((time.monotonic(), verdict))

    def per_minute(self) -> dict[str, int]:
        """Verdict → records in the window."""
        cutoff = time.monotonic() - self.window
        with self._lock:
            while self._events and self._events[0][0] < cutoff:
                self._events.popleft()
            return dict(collections.Counter(v for _, v in self._events))


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm", encoding="ascii") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class HealthReporter:
    """Composes and (through *publish*) sends the health message every *interval* seconds."""

    def __init__(
        self,
        *,
        identity: Identity,
        state: RunningState,
        journal: JournalView,
        alarms: AlarmView,
        overlay: OverlayVersion,
        link: ConnectionView,
        publish: Callable[[str, bytes], None],
        interval: float = DEFAULT_INTERVAL,
    ) -> None:
        """Wire the views (no I/O, no thread: :meth:`start` starts it)."""
        self.identity = identity
        self.state = state
        self.journal = journal
        self.alarms = alarms
        self.overlay = overlay
        self.link = link
        self.interval = interval
        self.rate = VerdictRate()
        self._publish = publish
        self._clock = ClockState()
        self._started = time.monotonic()
        self._cpu_mark = (time.monotonic(), time.process_time())
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def compose(self) -> Health:
        """The health message now."""
        stats = self.journal.stats()
        age = None
        if stats.oldest_undelivered_time is not None:
            age = max(0.0, (datetime.now(UTC) - stats.oldest_undelivered_time).total_seconds())
        now, cpu = time.monotonic(), time.process_time()
        wall = now - self._cpu_mark[0]
        cpu_percent = 100.0 * (cpu - self._cpu_mark[1]) / wall if wall > 0 else 0.0
        self._cpu_mark = (now, cpu)
        try:
            disk_free: int | None = shutil.disk_usage(self.state.config.paths.state_dir).free
        except OSError:
            disk_free = None
        return Health(
            device=self.identity.device,
            site=self.identity.site,
            version=__version__,
            time=datetime.now(UTC),
            journal=HealthJournal(
                depth=stats.depth,
                last_seq=stats.last_seq,
                delivered_seq=stats.delivered_seq,
                oldest_undelivered_age_s=age,
                size_bytes=stats.size_bytes,
                budget_bytes=stats.budget_bytes,
            ),
            scans_per_min=self.rate.per_minute(),
            devices={n: str(s) for n, s in self.state.device_states().items()},
            alarms=[AlarmInfo.model_validate(a.as_json()) for a in self.alarms.active()],
            clock=str(self._clock.sync_state()),  # type: ignore[arg-type]
            disk_free_bytes=disk_free,
            process=HealthProcess(
                cpu_percent=max(0.0, cpu_percent),
                rss_bytes=_rss_bytes(),
                uptime_s=now - self._started,
            ),
            cert_not_after=self.state.cert_not_after,
            config_version=self.overlay.version,
        )

    def send(self) -> None:
        """Compose and queue one health message."""
        payload = self.compose().model_dump_json(by_alias=True).encode()
        self._publish(health_topic(self.identity.site, self.identity.device), payload)

    def start(self) -> None:
        """Send every *interval* seconds while connected."""
        self._thread = threading.Thread(target=self._run, name="health", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop sending."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5.0)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            if not self.link.connected:
                continue
            try:
                self.send()
            except Exception:
                # Health reporting must never take the daemon down (a journal read
                # error is itself visible in the next state message).
                log.exception("composing the health message failed")
