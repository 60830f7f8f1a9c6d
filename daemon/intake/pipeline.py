"""The scan pipeline: read → classify → station context → journal → feedback.

One thread takes frames from the device workers' bounded queue. A good-read
signal is sent only after the journal has durably committed the record; a read
that cannot be recorded (journal full or failing) gets a bad-read signal, so the
operator knows to rescan. The publisher only reads from the journal; the
pipeline merely wakes it.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from scanfleet.daemon.core.alarms import AlarmSet
from scanfleet.daemon.core.claims import claim_in_read
from scanfleet.daemon.core.clock import ClockState, boot_id
from scanfleet.daemon.core.config import Config, DeviceConfig
from scanfleet.daemon.core.errors import JournalDiskFullError, JournalError, JournalFullError
from scanfleet.daemon.core.model import Kind, ParseResult, Verdict
from scanfleet.daemon.core.records import (
    ReadSource,
    RecordBody,
    ScanBody,
    Stamp,
    StationContext,
)
from scanfleet.daemon.intake.classify import classify, gs1_refusal
from scanfleet.daemon.intake.devices import Incoming
from scanfleet.daemon.intake.pairing import IdentityWindow, is_card_read
from scanfleet.daemon.journal.journal import Journal
from scanfleet.daemon.station.station import Station
from scanfleet.drivers.base import Signal

log = logging.getLogger(__name__)

QUEUE_SIZE = 256
ALARM_PIPELINE = "pipeline_error"
ALARM_THREAD = "thread_died"


@dataclass
class PipelineCounters:
    """What the pipeline has done since start (for status, health and the watchdog)."""

    accepted: int = 0
    refused: int = 0
    unrecorded: int = 0
    feedback_missed: int = 0
    failures: int = 0
    """Reads that failed unexpectedly (a store on the read path, a bug): bad-read signal."""
    last_progress: float = field(default_factory=time.monotonic)
    waiting: bool = False
    """True while the thread waits for a read: an idle pipeline sleeps and is not stalled."""

    def progress_at(self, now: float) -> float:
        """When the loop last turned, for the watchdog; *now* while it waits for work."""
        return now if self.waiting else self.last_progress


class Pipeline:
    """Turns device reads into journal records and operator feedback."""

    def __init__(
        self,
        journal: Journal,
        config: Config,
        alarms: AlarmSet,
        *,
        wake_publisher: Callable[[], None] = lambda: None,
        clock: ClockState | None = None,
    ) -> None:
        self.journal = journal
        self.queue: queue.Queue[Incoming | None] = queue.Queue(QUEUE_SIZE)
        """Reads from the device workers; None only wakes the thread (stop)."""
        self.counters = PipelineCounters()
        self._config = config
        self._alarms = alarms
        self._wake_publisher = wake_publisher
        self._clock = clock or ClockState()
        self._boot_id = boot_id()
        self._listeners: list[Callable[[dict[str, Any]], None]] = []
        self.identity = IdentityWindow(config.identity_check)
        """The station's identity window (ID-card reads pair with controlled drugs)."""
        self.station = Station(config, self._record, self._now_stamp, alarms=alarms)
        """Operation, bill, operator and the per-scan checks (the runner adds the index)."""
        self.claim_handler: Callable[[str], tuple[str | None, str | None]] | None = None
        """Takes a scanned claim token; returns (its site, refusal reason or None)."""
        self._stop = threading.Event()
        self._last_failure: str | None = None
        self._thread = threading.Thread(target=self._run, name="pipeline", daemon=True)

    def add_listener(self, listener: Callable[[dict[str, Any]], None]) -> None:
        """Call *listener* with every committed record (live view)."""
        self._listeners.append(listener)

    def update_config(self, config: Config) -> None:
        """Use a reloaded configuration for the next reads."""
        self._config = config
        self.identity.update_config(config.identity_check)
        self.station.update_config(config)

    def start(self) -> None:
        """Restore the station's saved context (before the first read), start the thread."""
        self.station.restore(self.journal)
        self._thread.start()

    @property
    def running(self) -> bool:
        """True while the pipeline thread is alive."""
        return self._thread.is_alive()

    def stop(self, timeout: float = 5.0) -> None:
        """Finish the reads already queued (within *timeout*), then stop."""
        deadline = time.monotonic() + timeout
        self._stop.set()
        with contextlib.suppress(queue.Full):  # full: the thread is busy and sees _stop
            self.queue.put(None, timeout=timeout)
        self._thread.join(max(0.0, deadline - time.monotonic()))
        if self._thread.is_alive():
            log.error("pipeline did not finish within %.1f s", timeout)

    def ensure_running(self) -> bool:
        """Restart the pipeline thread if it died (the supervisor calls this); True if it did."""
        if self._thread.is_alive() or self._stop.is_set() or self._thread.ident is None:
            return False
        log.error("the pipeline thread died; starting a new one")
        self._alarms.raise_(ALARM_THREAD, "the pipeline thread died and was restarted")
        self._thread = threading.Thread(target=self._run, name="pipeline", daemon=True)
        self._thread.start()
        return True

    def _run(self) -> None:
        while True:
            if self._stop.is_set() and self.queue.empty():
                return
            self.counters.waiting = True
            incoming = self.queue.get()  # no timeout: an idle pipeline sleeps
            self.counters.waiting = False
            self.counters.last_progress = time.monotonic()
            if incoming is None:
                continue
            try:
                self.handle(incoming)
            except Exception as err:  # noqa: BLE001 - one bad read must never stop every later one
                self._unexpected(incoming, err)
            self.counters.last_progress = time.monotonic()

    def _unexpected(self, incoming: Incoming, err: Exception) -> None:
        self._failed(incoming, err, ALARM_PIPELINE, traceback=True)

    def _failed(
        self, incoming: Incoming, err: Exception, alarm: str | None, *, traceback: bool = False
    ) -> None:
        """A read that was not recorded: bad-read signal, alarm, and a log line only when
        the failure differs from the last one (then a counter): a failing store must not
        flood the log, and a full disk, with one line or traceback per read."""
        self.counters.unrecorded += 1
        self.counters.failures += 1
        text = f"{type(err).__name__}: {err}"
        if text != self._last_failure:
            self._last_failure = text
            log.error(
                "read from %s not recorded: %s (logged once until it changes)",
                incoming.worker.config.name,
                text,
                exc_info=err if traceback else None,
            )
        if alarm is not None:
            # No counter in the alarm: an alarm that changes per read republishes state.
            self._alarms.raise_(alarm, f"reads are not recorded: {err}")
        self._feedback(incoming, Signal.BAD_READ)

    def handle(self, incoming: Incoming) -> dict[str, Any] | None:
        """Classify, journal and acknowledge one read; returns the record, or None."""
        read = incoming.read
        device = incoming.worker.config
        if is_card_read(read):
            # An ID-card read: its own record; it ends the previous customer's window.
            self.identity.close("next ID card read")
            identity_body = self.identity.identity_body(
                read,
                self._stamp(incoming, device),
                self._station_context(device),
                self._config.station.name,
            )
            return self._commit(incoming, device, lambda: ([self._record(identity_body)], None))
        token = claim_in_read(read.data)
        if token is not None:
            return self._claim_read(incoming, device, token)
        result = classify(
            read.data, aim=read.aim, fnc1_substitute=self._config.classify.fnc1_substitute
        )
        if self.station.is_control(result.value):
            stamp = self._stamp(incoming, device)
            return self._commit(
                incoming,
                device,
                lambda: self.station.control_read(result.value, result.raw, stamp),
            )
        verdict, reason = self._decide(result)
        pairing = self.identity.pair(result, read.t_mono)
        if verdict is Verdict.ACCEPTED and pairing.refusal is not None:
            verdict, reason = Verdict.REFUSED, pairing.refusal
        body = ScanBody(
            stamp=self._stamp(incoming, device),
            context=self._station_context(device),
            station=self._config.station.name,
            raw=result.raw,
            aim=result.aim,
            kind=result.kind,
            value=result.value,
            fields=result.fields,
            problems=result.problems,
            verdict=verdict,
            reason=reason,
            identity_ref=pairing.identity_ref,
        )
        fixed = device.operation is not None
        return self._commit(
            incoming, device, lambda: ([self.station.scan(body, fixed_operation=fixed)], None)
        )

    def _claim_read(
        self, incoming: Incoming, device: DeviceConfig, token: str
    ) -> dict[str, Any] | None:
        # A claim barcode holds a secret: it is handed over, never classified, logged or
        # journaled; its record (an ``enroll`` control) carries the site at most.
        handler = self.claim_handler
        site: str | None = None
        refused: str | None = "this daemon does not enroll from scanned claims"
        if handler is not None:
            site, refused = handler(token)
        stamp = self._stamp(incoming, device)
        log.info("claim barcode read on %s: %s", device.name, refused or "enrolling")
        return self._commit(
            incoming,
            device,
            lambda: (
                [self.station.enrollment(site, "barcode", refused=refused, stamp=stamp)],
                refused is None,
            ),
        )

    def _record(self, body: RecordBody) -> dict[str, Any]:
        """Journal *body*, wake the publisher and tell the listeners (any record type)."""
        record = self.journal.append(body)
        self._wake_publisher()
        for listener in self._listeners:
            listener(record)
        return record

    def _commit(
        self,
        incoming: Incoming,
        device: DeviceConfig,
        write: Callable[[], tuple[list[dict[str, Any]], bool | None]],
    ) -> dict[str, Any] | None:
        """Run *write* (which journals); signal good only when it committed and was accepted."""
        try:
            records, ok = write()
        except (JournalFullError, JournalDiskFullError) as err:
            self._failed(incoming, err, None)  # the journal raised its own alarm
            return None
        except JournalError as err:
            self._failed(incoming, err, "journal_error")
            return None
        self._alarms.clear("journal_error")
        if self._last_failure is not None:
            self._last_failure = None
            log.info("reads are recorded again (%d failed so far)", self.counters.failures)
            self._alarms.clear(ALARM_PIPELINE)
        record = records[-1]
        accepted = record.get("verdict") == Verdict.ACCEPTED if ok is None else ok
        if record["type"] == "identity_read" and accepted:
            self.identity.open(record["id"], incoming.read.t_mono)
        if accepted:
            self.counters.accepted += 1
            self._feedback(incoming, Signal.GOOD_READ)
        else:
            self.counters.refused += 1
            self._feedback(incoming, Signal.BAD_READ)
        return record

    def _decide(self, result: ParseResult) -> tuple[Verdict, str | None]:
        if result.kind not in self._config.station.accept_kinds:
            if result.kind is Kind.UNKNOWN:
                detail = "; ".join(result.problems) or "unrecognised code"
                return Verdict.REFUSED, f"not a trace code: {detail}"
            return Verdict.REFUSED, f"not a trace code ({result.kind}); scan the trace code"
        refusal = gs1_refusal(result, self._config.station.gs1_required_ais)
        if refusal is not None:
            return Verdict.REFUSED, refusal
        return Verdict.ACCEPTED, None

    def _stamp(self, incoming: Incoming, device: DeviceConfig) -> Stamp:
        """Time, clock and source of a read."""
        read = incoming.read
        return Stamp(
            time=read.time.isoformat(),
            clock=self._clock.sync_state(),
            t_mono=read.t_mono,
            boot_id=self._boot_id,
            source=ReadSource(
                driver=device.driver, device=device.name, port=read.port, vid_pid=read.vid_pid
            ),
        )

    def _station_context(self, device: DeviceConfig) -> StationContext:
        """Operation (the device's own, if it has one), bill and operator now."""
        current = self.station.context()
        if device.operation is not None:
            return StationContext(device.operation, current.bill, current.operator)
        return current

    def _now_stamp(self) -> Stamp:
        """Time and clock of a record that no read caused (local API, remote)."""
        return Stamp(
            time=datetime.now(UTC).isoformat(),
            clock=self._clock.sync_state(),
            t_mono=time.monotonic(),
            boot_id=self._boot_id,
        )

    def _feedback(self, incoming: Incoming, signal: Signal) -> None:
        if not incoming.worker.signal(signal):
            self.counters.feedback_missed += 1
