"""systemd's notification protocol: readiness, status, watchdog, reload and stop.

Messages go through systemd-python's ``systemd.daemon.notify`` when it is
installed and ``NOTIFY_SOCKET`` is set; otherwise every call is a no-op, so the
daemon runs the same from a terminal, a container or a test.

What the messages mean here (the point of having them):

- ``READY=1`` only once the journal is open, every configured device is bound or
  reported absent, and the publisher's loop runs (:meth:`NotifySource.on_ready`).
- ``WATCHDOG=1`` only while the pipeline *and* the publisher keep turning their loops
  (their ``last_progress``). A thread stuck in the journal (storage that hangs) or in
  the publisher stops the pings, and systemd restarts the service after
  ``WatchdogSec=``. A thread that merely waits still counts as turning: the pipeline
  says when it waits for reads (it sleeps then), the publisher turns at least every
  few seconds (its keepalive pace) or every second while it waits to reconnect.
- ``STATUS=`` one line for ``systemctl status``: devices, journal depth, broker state.
- ``RELOADING=1`` (with ``MONOTONIC_USEC=``) before a SIGHUP reload and ``READY=1``
  after it; ``STOPPING=1`` when shutdown begins.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from scanfleet.daemon.intake.devices import DeviceState
from scanfleet.daemon.publish.state import BrokerState

log = logging.getLogger(__name__)

Sender = Callable[[str], bool]

STATUS_INTERVAL = 5.0
"""Seconds between STATUS= refreshes when there is no watchdog asking for more."""


def _systemd_sender() -> Sender | None:
    try:
        import systemd.daemon  # optional extra [systemd]
    except ImportError:
        return None

    def send(message: str) -> bool:
        return bool(systemd.daemon.notify(message))

    return send


def watchdog_interval(environ: Mapping[str, str]) -> float | None:
    """``WATCHDOG_USEC`` in seconds when the watchdog is meant for this process, else None."""
    usec = environ.get("WATCHDOG_USEC", "")
    pid = environ.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    if pid and pid != str(os.getpid()):
        return None  # set for a parent that started us, not for us
    return int(usec) / 1_000_000


class Notifier:
    """Sends sd_notify messages, or nothing when not started by systemd.

    Args:
        environ: where ``NOTIFY_SOCKET``/``WATCHDOG_USEC``/``WATCHDOG_PID`` are read.
        sender: sends one message (default: systemd-python's ``notify``); tests of the
            message logic pass their own.
    """

    def __init__(
        self, environ: Mapping[str, str] | None = None, *, sender: Sender | None = None
    ) -> None:
        env = os.environ if environ is None else environ
        self.socket = env.get("NOTIFY_SOCKET") or None
        self.watchdog_s = watchdog_interval(env)
        self._send: Sender | None = None
        if self.socket is not None:
            self._send = sender or _systemd_sender()
            if self._send is None:
                log.warning(
                    "NOTIFY_SOCKET is set but systemd-python is not installed: "
                    "systemd will not hear READY or WATCHDOG (install scanfleet[systemd])"
                )
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        """True when messages actually go to systemd."""
        return self._send is not None

    def notify(self, *assignments: str) -> bool:
        """Send ``VAR=value`` lines as one datagram; False when disabled or it failed."""
        if self._send is None:
            return False
        message = "\n".join(assignments)
        with self._lock:
            try:
                return self._send(message)
            except OSError as err:
                # systemd gone (e.g. during shutdown of the machine): nothing to tell.
                log.debug("sd_notify failed: %s", err)
                return False

    def ready(self, status: str) -> bool:
        """READY=1 with a status line."""
        return self.notify("READY=1", "STATUS=" + _one_line(status))

    def status(self, status: str) -> bool:
        """STATUS= only."""
        return self.notify("STATUS=" + _one_line(status))

    def reloading(self) -> bool:
        """RELOADING=1 with MONOTONIC_USEC (systemd ≥ 253 requires it for notify-reload)."""
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.notify("RELOADING=1", f"MONOTONIC_USEC={usec}", "STATUS=reloading")

    def stopping(self) -> bool:
        """STOPPING=1."""
        return self.notify("STOPPING=1", "STATUS=stopping: flushing the publisher")

    def watchdog(self) -> bool:
        """WATCHDOG=1."""
        return self.notify("WATCHDOG=1")


def _one_line(text: str) -> str:
    return " ".join(text.split())


@dataclass(frozen=True)
class Liveness:
    """One loop that must keep turning: its name, when it last turned, how long it may not."""

    name: str
    last_progress: Callable[[], float]
    allowance: float


def stalled(checks: Sequence[Liveness], now: float | None = None) -> list[tuple[str, float]]:
    """(name, seconds since its last turn) of every loop past its allowance."""
    now = time.monotonic() if now is None else now
    late = []
    for check in checks:
        age = now - check.last_progress()
        if age > check.allowance:
            late.append((check.name, age))
    return late


class Watchdog:
    """Thread that pings ``WATCHDOG=1`` while every loop turns, and refreshes STATUS=.

    It never touches the journal's database or the broker: a wedged journal or
    publisher must not wedge the thread that reports them.
    """

    def __init__(
        self,
        notifier: Notifier,
        checks: Sequence[Liveness],
        status: Callable[[], str],
        *,
        interval: float | None = None,
    ) -> None:
        self.notifier = notifier
        self.checks = list(checks)
        self.status = status
        wd = notifier.watchdog_s
        # Half the watchdog period, as sd_watchdog_enabled(3) advises; STATUS refreshes
        # need no watchdog, so without one the thread still runs at a slow pace.
        self.interval = interval or (min(wd / 2, STATUS_INTERVAL) if wd else STATUS_INTERVAL)
        self.pings = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._stalled: set[str] = set()
        self._last_status = ""

    def start(self) -> None:
        """Start pinging (only when systemd listens)."""
        if not self.notifier.enabled or self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="sd-watchdog", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop pinging (idempotent)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5.0)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.tick()
            self._stop.wait(self.interval)

    def tick(self) -> None:
        """One round: ping when healthy, say what is stuck when not, refresh STATUS=."""
        late = stalled(self.checks)
        names = {name for name, _ in late}
        for name, age in late:
            if name not in self._stalled:
                log.error(
                    "watchdog: %s made no progress for %.1f s; no more WATCHDOG=1 pings",
                    name,
                    age,
                )
        for name in self._stalled - names:
            log.warning("watchdog: %s turns again; WATCHDOG=1 pings resume", name)
        self._stalled = names
        if late:
            text = "stalled: " + ", ".join(f"{n} for {a:.0f} s" for n, a in late)
        else:
            if self.notifier.watchdog_s is not None and self.notifier.watchdog():
                self.pings += 1
            text = self.status()
        if text != self._last_status:
            self._last_status = text
            self.notifier.status(text)


class JournalHead(Protocol):
    """The journal's in-memory head and watermark (never a SQLite query)."""

    @property
    def last_seq(self) -> int: ...

    @property
    def delivered_seq(self) -> int: ...


class PublisherPulse(Protocol):
    """Where the publisher is and when its loop last turned."""

    @property
    def broker_state(self) -> BrokerState: ...

    @property
    def last_progress(self) -> float: ...

    @property
    def connect_timeout(self) -> float: ...


class Progress(Protocol):
    """A loop's last turn (monotonic time)."""

    def progress_at(self, now: float) -> float:
        """When the loop last turned; *now* while it waits for work."""
        ...


class PipelinePulse(Protocol):
    """The pipeline's counters, for its last turn."""

    @property
    def counters(self) -> Progress: ...


class NotifySource(Protocol):
    """What :class:`SystemdAdapter` reads of the running daemon and hooks into."""

    @property
    def journal(self) -> JournalHead: ...

    @property
    def publisher(self) -> PublisherPulse: ...

    @property
    def pipeline(self) -> PipelinePulse: ...

    @property
    def ready(self) -> threading.Event: ...

    def device_states(self) -> dict[str, DeviceState]: ...

    def on_ready(self, callback: Callable[[], None]) -> None: ...

    def on_reload(self, callback: Callable[[str], None]) -> None: ...

    def on_shutdown(self, callback: Callable[[], None]) -> None: ...


def summary(daemon: NotifySource) -> str:
    """One line for STATUS=: devices, journal depth, broker state.

    Uses in-memory figures only (no SQLite query), so it cannot hang on the journal.
    """
    states = [str(state) for state in daemon.device_states().values()]
    counts = {s: states.count(s) for s in sorted(set(states))}
    devices = f"{len(states)} device{'s' if len(states) != 1 else ''}"
    if counts:
        devices += " (" + ", ".join(f"{n} {s}" for s, n in counts.items()) + ")"
    journal = daemon.journal
    depth = max(0, journal.last_seq - journal.delivered_seq)
    return (
        f"{devices}; journal depth {depth} (last seq {journal.last_seq}); "
        f"broker {daemon.publisher.broker_state}"
    )


class SystemdAdapter:
    """Ties a daemon's life cycle (a :class:`NotifySource`) to systemd's notification protocol.

    ``attach()`` before ``serve()``: READY on readiness, the watchdog from then on,
    RELOADING/READY around reloads, STOPPING at shutdown. A no-op without systemd.
    """

    def __init__(self, daemon: NotifySource, notifier: Notifier | None = None) -> None:
        self.daemon = daemon
        self.notifier = notifier or Notifier()
        wd = self.notifier.watchdog_s or 30.0
        # A loop may stay away up to half the watchdog period; the publisher also
        # blocks for up to its connect timeout while a broker does not answer.
        stall_after = wd / 2
        publisher = daemon.publisher
        self.watchdog = Watchdog(
            self.notifier,
            [
                Liveness(
                    "pipeline",
                    lambda: daemon.pipeline.counters.progress_at(time.monotonic()),
                    stall_after,
                ),
                Liveness(
                    "publisher",
                    lambda: publisher.last_progress,
                    max(stall_after, publisher.connect_timeout + 2.0),
                ),
            ],
            lambda: summary(daemon),
        )

    def attach(self) -> None:
        """Register the hooks on the daemon."""
        if not self.notifier.enabled:
            return
        self.daemon.on_ready(self._on_ready)
        self.daemon.on_reload(self._on_reload)
        self.daemon.on_shutdown(self._on_shutdown)

    def _on_ready(self) -> None:
        self.notifier.ready(summary(self.daemon))
        log.info("told systemd READY=1")
        self.watchdog.start()

    def _on_reload(self, phase: str) -> None:
        if phase == "begin":
            self.notifier.reloading()
        elif self.daemon.ready.is_set():  # a SIGHUP before readiness must not claim it
            self.notifier.ready(summary(self.daemon))

    def _on_shutdown(self) -> None:
        self.watchdog.stop()
        self.notifier.stopping()
