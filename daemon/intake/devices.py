"""Device workers: one thread per configured device that keeps it bound.

A worker opens its driver, reads frames into the pipeline's bounded queue, and
when the device goes away (cable pulled, port vanished) reports it, closes the
driver and waits for the device to come back: a udev event, an inotify event on the
configured path's folder, or a slow safety poll (:mod:`scanfleet.drivers.hotplug`);
without any event source, the old capped, jittered backoff. An idle worker sleeps: a
bound interruptible driver is read without a timeout, an absent device waits for an
event, and stop() wakes either at once.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from scanfleet.daemon.core.alarms import AlarmSet, Severity
from scanfleet.daemon.core.backoff import Backoff
from scanfleet.daemon.core.errors import DeviceGoneError, DriverError, DriverUnavailableError

if TYPE_CHECKING:
    from scanfleet.daemon.core.config import DeviceConfig
    from scanfleet.drivers.base import Driver, DriverProblem, Read, Signal
    from scanfleet.drivers.hotplug import DeviceWatch

log = logging.getLogger(__name__)

BACKOFF_FIRST = 0.5
BACKOFF_CAP = 2.0
"""Retry pace right after a hotplug event (and the polling pace where no event source
sees the device): a failed reopen costs a stat and an open."""
UNAVAILABLE_RETRY = 60.0
"""A missing driver library does not appear by itself; retry rarely."""
READ_TIMEOUT = 0.5
"""Read timeout for drivers that cannot be interrupted (their stop() latency)."""
PROBLEM_QUIET_SECONDS = 600.0
"""A device-problem alarm clears after this long without a new problem."""


class DeviceState(StrEnum):
    """What a worker's device is doing now."""

    STARTING = "starting"
    BOUND = "bound"
    ABSENT = "absent"
    UNAVAILABLE = "unavailable"
    STOPPED = "stopped"


@dataclass(frozen=True)
class Incoming:
    """A frame read by a worker, on its way to the pipeline."""

    worker: DeviceWorker
    read: Read


class DeviceWorker:
    """Keeps one configured device bound and feeds its reads into *out*."""

    def __init__(
        self,
        config: DeviceConfig,
        out: queue.Queue[Incoming | None],
        alarms: AlarmSet,
        *,
        opener: Callable[..., Driver[Any]] | None = None,
    ) -> None:
        self.config = config
        self.name = config.name
        self._out = out
        self._alarms = alarms
        self._opener = opener
        self._stop = threading.Event()
        self._driver_lock = threading.Lock()
        self._driver: Driver[Any] | None = None
        self._watch: DeviceWatch | None = None
        self._thread = threading.Thread(target=self._run, name=f"device-{self.name}", daemon=True)
        self.state = DeviceState.STARTING
        self.reads = 0
        self.problems = 0
        self.last_problem: str | None = None
        self._last_problem_at = 0.0
        self.bound_once = threading.Event()
        """Set when the device was first bound or first found absent (readiness)."""

    def start(self) -> None:
        """Start the worker thread."""
        self._thread.start()

    @property
    def died(self) -> bool:
        """True when the worker thread ended without being asked to stop."""
        return (
            self._thread.ident is not None
            and not self._thread.is_alive()
            and not (self._stop.is_set())
        )

    def stop(self, timeout: float = 5.0) -> None:
        """Stop reading, close the device and wait for the thread."""
        self._stop.set()
        with self._driver_lock:
            if self._driver is not None:
                self._driver.interrupt()
            if self._watch is not None:
                self._watch.wake()
        self._thread.join(timeout)
        self.state = DeviceState.STOPPED

    def signal(self, signal: Signal) -> bool:
        """Send operator feedback to the device; False when it is not bound right now."""
        with self._driver_lock:
            driver = self._driver
            if driver is None:
                return False
            try:
                driver.signal(signal)
            except DriverError as err:
                log.warning("device %s: feedback %s failed: %s", self.name, signal, err)
                return False
            return True

    def _run(self) -> None:
        from scanfleet.drivers.hotplug import DeviceWatch

        paths = [getattr(self.config, key, None) for key in ("port", "path")]
        watch = DeviceWatch(self.config.driver, [p for p in paths if isinstance(p, str)])
        with self._driver_lock:
            self._watch = watch
        try:
            self._keep_bound(watch)
        finally:
            with self._driver_lock:
                self._watch = None
            watch.close()

    def _keep_bound(self, watch: DeviceWatch) -> None:
        delays = Backoff(BACKOFF_FIRST, BACKOFF_CAP)
        while not self._stop.is_set():
            watch.arm()  # before the attempt: an event during it is not lost
            try:
                driver = self._open()
            except DriverUnavailableError as err:
                self._set_state(DeviceState.UNAVAILABLE, str(err))
                self._stop.wait(UNAVAILABLE_RETRY)
                continue
            except (DeviceGoneError, DriverError, OSError) as err:
                self._set_state(DeviceState.ABSENT, str(err))
                if self._stop.is_set():
                    return
                failing = not isinstance(err, DeviceGoneError)
                why = watch.wait(delays.next(), time.monotonic(), failing=failing)
                if why is not None and why != "wake":
                    log.debug("device %s: %s; opening", self.name, why)
                    delays.reset()
                continue
            watch.disarm()
            delays.reset()
            self._set_state(DeviceState.BOUND)
            try:
                self._read_loop(driver)
            finally:
                with self._driver_lock:
                    self._driver = None
                driver.close()

    def _open(self) -> Driver[Any]:
        if self._opener is not None:
            driver = self._opener(self.config, on_problem=self._on_problem)
        else:
            from scanfleet.drivers.registry import open_driver

            driver = open_driver(self.config, on_problem=self._on_problem)
        with self._driver_lock:
            self._driver = driver
        return driver

    def _read_loop(self, driver: Driver[Any]) -> None:
        while not self._stop.is_set():
            self._expire_problem_alarm()
            try:
                read = driver.read(self._read_timeout(driver))
            except (DeviceGoneError, OSError) as err:
                log.warning("device %s gone: %s", self.name, err)
                self._set_state(DeviceState.ABSENT, str(err))
                return
            except DriverError as err:
                log.error("device %s failed: %s; reopening", self.name, err)  # noqa: TRY400 - expected, no traceback wanted
                self._set_state(DeviceState.ABSENT, str(err))
                return
            if read is None:
                continue
            self.reads += 1
            self._put(Incoming(self, read))

    def _read_timeout(self, driver: Driver[Any]) -> float | None:
        """None (block) for an interruptible driver unless a problem alarm is due to clear."""
        if not driver.interruptible:
            return READ_TIMEOUT
        if self._last_problem_at:
            due = self._last_problem_at + PROBLEM_QUIET_SECONDS - time.monotonic()
            return max(0.0, due) + 0.01
        return None

    def _put(self, item: Incoming) -> None:
        # The queue is bounded; a stalled pipeline must not make the reader block
        # forever (stop() has to work), but a read that arrived is always offered to
        # the pipeline, which keeps running until the workers have stopped.
        while True:
            try:
                self._out.put(item, timeout=0.5)
            except queue.Full:
                if self._stop.is_set():
                    msg = "device %s: stopping with an unqueued read (no feedback)"
                    log.error(msg, self.name)  # noqa: TRY400 - no traceback wanted
                    return
                log.warning("device %s: pipeline queue full, holding a read", self.name)
            else:
                return

    def _on_problem(self, problem: DriverProblem) -> None:
        self.problems += 1
        self.last_problem = f"{problem.code}: {problem.message}"
        self._last_problem_at = time.monotonic()
        log.warning(
            "device %s: %s (%s) %d bytes: %r",
            self.name,
            problem.code,
            problem.message,
            len(problem.data),
            problem.data[:64],
        )
        self._alarms.raise_(
            f"device_problem:{self.name}",
            f"{self.name}: {problem.message}",
            Severity.WARNING,
            device=self.name,
            problem=problem.code,
            count=self.problems,
        )

    def _expire_problem_alarm(self) -> None:
        if (
            self._last_problem_at
            and time.monotonic() - self._last_problem_at > PROBLEM_QUIET_SECONDS
        ):
            self._last_problem_at = 0.0
            self._alarms.clear(f"device_problem:{self.name}")

    def _set_state(self, state: DeviceState, reason: str = "") -> None:
        if state != self.state:
            log.info("device %s: %s%s", self.name, state, f" ({reason})" if reason else "")
        self.state = state
        code = f"device_absent:{self.name}"
        if state is DeviceState.BOUND:
            self._alarms.clear(code)
        elif state in (DeviceState.ABSENT, DeviceState.UNAVAILABLE):
            self._alarms.raise_(code, f"{self.name} is {state}: {reason}", device=self.name)
        self.bound_once.set()
