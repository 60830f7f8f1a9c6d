"""``scanfleet run``: the daemon's supervisor.

It wires the parts together (journal, publisher, pipeline, one worker per device),
turns signals into control flow (SIGTERM/SIGINT stop, SIGHUP reloads), and shuts
down in a bounded time: stop reading, finish queued reads, let the publisher flush,
close the journal.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from scanfleet.daemon import __version__
from scanfleet.daemon.core import redact
from scanfleet.daemon.core.alarms import ALARMS_FILE, AlarmSet
from scanfleet.daemon.core.config import Config, DeviceConfig, load_config
from scanfleet.daemon.core.desired_config import ConfigReport
from scanfleet.daemon.core.errors import ConfigError, EnrollmentError
from scanfleet.daemon.core.identity import Identity, resolve_identity
from scanfleet.daemon.core.redact import Redactor
from scanfleet.daemon.core.statefiles import secure_state_dir
from scanfleet.daemon.intake.devices import DeviceState, DeviceWorker
from scanfleet.daemon.intake.pipeline import ALARM_THREAD, Pipeline
from scanfleet.daemon.journal.journal import Journal
from scanfleet.daemon.publish.broker_protocol import FILE_NAME as PROTOCOL_FILE
from scanfleet.daemon.publish.publisher import Publisher
from scanfleet.daemon.publish.status import STATUS_FILE
from scanfleet.daemon.remote.claim_intake import ClaimEnroller
from scanfleet.daemon.remote.commands import RecentLog, RemoteCommands
from scanfleet.daemon.remote.config import RemoteConfig, StoredOverlay, compose_stored
from scanfleet.daemon.remote.control import ControlChannel
from scanfleet.daemon.remote.enroll import CLAIM_FILE, Enrolled, ensure_enrolled
from scanfleet.daemon.remote.health import HealthReporter
from scanfleet.daemon.station.duplicates import open_index, policy

if TYPE_CHECKING:
    # The local API (asyncio, websockets) is imported only when it is enabled.
    from scanfleet.daemon.local.api import LocalApi

log = logging.getLogger(__name__)

READY_TIMEOUT = 10.0
SHUTDOWN_TIMEOUT = 10.0
RENEWAL_CHECK_SECONDS = 6 * 3600.0
RESTART_EXIT_CODE = 75
"""Exit status after a remote ``restart`` (EX_TEMPFAIL): ``Restart=on-failure`` restarts."""
SUPERVISE_INTERVAL = 5.0
"""Seconds between supervise() rounds (dead threads, alarms acknowledged by the CLI):
an idle daemon sleeps; signals still end the wait at once."""
TICK_INTERVAL = 0.5
"""…and between rounds while a live view draws on the terminal."""
RESTART_SECTIONS = ("identity", "paths", "broker", "publisher", "journal")
"""Config sections a SIGHUP reload does not apply (the daemon says so)."""


class _Stop(Exception):
    """Raised in the main thread by SIGTERM/SIGINT."""


class _Reload(Exception):
    """Raised in the main thread by SIGHUP."""


def journal_path(config: Config) -> Path:
    """Where the journal of *config* lives."""
    return config.paths.journal_file


def config_secrets(config: Config) -> list[str | None]:
    """The secret values of *config*: broker password, local API token (also from its file)."""
    found = [config.broker.password, config.local_api.token]
    if config.local_api.token_file is not None:
        from scanfleet.daemon.local.api import read_token

        with contextlib.suppress(ConfigError):
            found.append(read_token(config.local_api))
    return found


@dataclass(frozen=True)
class Enrollment:
    """What enrolling before the start decided (:func:`build_daemon`)."""

    enrolled: Enrolled
    first_error: str | None = None
    """A claim that failed at the start: the claim enroller keeps retrying it."""
    from_claim_file: bool = False
    """Enrolled just now with the claim from the state dir (the journal records it)."""


def enroll_at_start(config: Config) -> Enrollment:
    """The device identity, enrolled (or renewed) when a claim or certificate asks for it.

    Network I/O: runs before the daemon is built, never in a constructor.
    """
    identity = resolve_identity(config)
    claim_path = config.paths.state_dir / CLAIM_FILE
    had_claim = claim_path.exists()
    try:
        enrolled = ensure_enrolled(config, identity)
    except EnrollmentError as err:
        if not claim_path.exists():
            raise
        # A claim that fails (service unreachable, claim refused) must not keep the
        # terminal from scanning: it journals locally and the enroller retries.
        return Enrollment(Enrolled(identity, config.broker, None), str(err))
    fresh = had_claim and enrolled.not_after is not None and not claim_path.exists()
    return Enrollment(enrolled, None, fresh)


@dataclass(frozen=True)
class Opened:
    """What :func:`build_daemon` read and opened for the :class:`Daemon` to wire."""

    running: Config
    """The configuration that runs: the file's, with the enrolled broker and the overlay."""
    alarms: AlarmSet
    overlay: StoredOverlay
    journal: Journal
    local_api_token: str | None
    """The local API's token (read only when the API is enabled)."""


def build_daemon(
    config: Config,
    *,
    config_path: Path | None = None,
    health_interval: float | None = None,
) -> Daemon:
    """Do the start's I/O in order, then wire the daemon; unwind what was opened on failure.

    State directory, redaction, enrollment (network), alarms, the stored overlay,
    the journal; after wiring, the enrollment record and the duplicate index.
    """
    state_dir = config.paths.state_dir
    # The process umask is set by 'scanfleet run' (statefiles.restrict_umask); the
    # state dir is tightened here too, for an earlier run that left it open.
    secure_state_dir(state_dir)
    redactor = Redactor(config_secrets(config))
    # Installed before enrolling, so nothing logged on the way leaks a secret.
    redact.install(redactor)
    # Enrollment (a claim in the state dir) or renewal happens before anything
    # connects; without a claim or fleet certificate it changes nothing.
    enrollment = enroll_at_start(config)
    # Critical alarms (a quarantined journal, declared losses) outlive restarts.
    alarms = AlarmSet.load(state_dir / ALARMS_FILE)
    # A pushed config overlay (state dir) runs on top of the file from the start.
    overlay = StoredOverlay.load(state_dir)
    running = compose_stored(
        config.model_copy(update={"broker": enrollment.enrolled.broker}), overlay.running
    )
    redactor.add(*config_secrets(running))
    token = None
    if running.local_api.enabled:
        from scanfleet.daemon.local.api import read_token  # websockets only when enabled

        token = read_token(running.local_api)
    with contextlib.ExitStack() as undo:
        journal = Journal.open(
            journal_path(running),
            enrollment.enrolled.identity.device,
            max_bytes=running.journal.max_bytes,
            retention_days=running.journal.retention_days,
            alarms=alarms,
        )
        undo.callback(journal.close)
        daemon = Daemon(
            config,
            enrollment,
            Opened(running, alarms, overlay, journal, token),
            redactor=redactor,
            config_path=config_path,
            health_interval=health_interval,
        )
        undo.callback(daemon.detach)
        daemon.remote.settle()
        if enrollment.from_claim_file:
            # Enrolled just now with the claim from the state dir (boot partition or
            # `enroll --claim` before a start): the journal says so, as for a retry.
            identity = daemon.identity
            daemon.station.enrollment(f"{identity.site}/{identity.device}", "config")
        index = open_index(state_dir, journal, **policy(running))
        undo.callback(index.close)
        daemon.station.index = index
        undo.pop_all()
    return daemon


class Daemon:
    """One running scanfleet daemon; :func:`build_daemon` makes one.

    The constructor only wires the parts it is given (no I/O, no thread).
    """

    def __init__(
        self,
        config: Config,
        enrollment: Enrollment,
        opened: Opened,
        *,
        redactor: Redactor,
        config_path: Path | None = None,
        health_interval: float | None = None,
    ) -> None:
        self.file_config = config
        """The configuration as loaded; ``config`` is what runs (enrolled broker settings)."""
        self.redactor = redactor
        """Every log line, diagnostics and command reply goes through it."""
        self.config_path = config_path
        self.alarms = opened.alarms
        enrolled, first_error = enrollment.enrolled, enrollment.first_error
        self.identity: Identity = enrolled.identity
        self.cert_not_after = enrolled.not_after
        self._apply_lock = threading.RLock()
        self.workers: dict[str, DeviceWorker] = {}
        self.remote = RemoteConfig(
            config.paths.state_dir,
            self.identity.device,
            opened.overlay,
            apply=lambda new: self.apply_config(new, source="a pushed config"),
            bound_devices=self._bound_devices,
            report=self._report_config,
        )
        self.config = config = opened.running
        self.journal = opened.journal
        self.publisher = Publisher(
            self.journal,
            config.broker,
            self.identity,
            self.alarms,
            version=__version__,
            state_extra=self._state_extra,
            status_path=config.paths.state_dir / STATUS_FILE,
            protocol_memory=config.paths.state_dir / PROTOCOL_FILE,
            live_lane=config.publisher.live_lane,
            max_batch_scans=config.publisher.max_batch_scans,
            max_batch_bytes=config.publisher.max_batch_bytes,
        )
        self.pipeline = Pipeline(
            self.journal, config, self.alarms, wake_publisher=self.publisher.wake
        )
        self.station = self.pipeline.station
        """Operation, bill, operator: remote commands and the local API call its methods."""
        self.enroller = ClaimEnroller(
            self.file_config,
            self.identity,
            self.alarms,
            self.station,
            enrolled=enrolled.not_after is not None or config.broker.cert_file is not None,
            on_enrolled=self.request_restart,
            first_error=first_error,
        )
        self.pipeline.claim_handler = self.enroller.offer
        self.local_api: LocalApi | None = None
        if opened.local_api_token is not None:
            from scanfleet.daemon.local.api import LocalApi

            self.local_api = LocalApi(
                self.station,
                config.local_api,
                config.paths.state_dir,
                token=opened.local_api_token,
            )
            self.pipeline.add_listener(self.local_api.on_record)
        self.recent_log = RecentLog(
            {self.identity.site: "<site>", self.identity.device: "<device>"}
        )
        logging.getLogger().addHandler(self.recent_log)
        redact.install(self.redactor)
        self.commands = RemoteCommands(
            identity=self.identity,
            supervisor=self,
            journal=self.journal,
            alarms=self.alarms,
            station=self.station,
            overlay=self.remote,
            broker=self.publisher,
            publish=lambda topic, payload: self.control.publish(topic, payload),
            redactor=self.redactor,
            recent_log=self.recent_log,
        )
        self.control = ControlChannel(
            self.identity.site,
            self.identity.device,
            commands=self.commands.run,
            on_config=self._on_pushed_config,
            wake=self.publisher.wake,
            on_connection=self.remote.connection_changed,
        )
        self.publisher.control = self.control
        self.health = HealthReporter(
            identity=self.identity,
            state=self,
            journal=self.journal,
            alarms=self.alarms,
            overlay=self.remote,
            link=self.control,
            publish=lambda topic, payload: self.control.publish(topic, payload),
            interval=health_interval or config.publisher.health_interval_s,
        )
        self.pipeline.add_listener(self.health.rate.on_record)
        self.restart_requested = False
        """Set by the ``restart`` command: :meth:`serve` then exits with RESTART_EXIT_CODE."""
        self.ready = threading.Event()
        self._stopping = threading.Event()
        self._on_ready: list[Callable[[], None]] = []
        self._on_reload: list[Callable[[str], None]] = []
        self._on_shutdown: list[Callable[[], None]] = []

    def detach(self) -> None:
        """Release what wiring took (log handler, the publisher's wake-up sockets).

        For a build that fails after wiring, before :meth:`start`.
        """
        self.publisher.stop()  # never started: only closes its wake-up socket pair
        logging.getLogger().removeHandler(self.recent_log)

    def on_ready(self, callback: Callable[[], None]) -> None:
        """Call *callback* once journal, devices and publisher are set up."""
        self._on_ready.append(callback)

    def on_reload(self, callback: Callable[[str], None]) -> None:
        """Call *callback* with ``"begin"`` before a SIGHUP reload and ``"end"`` after it."""
        self._on_reload.append(callback)

    def on_shutdown(self, callback: Callable[[], None]) -> None:
        """Call *callback* when shutdown begins (before anything stops)."""
        self._on_shutdown.append(callback)

    def _bound_devices(self) -> set[str]:
        return {n for n, w in self.workers.items() if w.state is DeviceState.BOUND}

    def _report_config(self, report: ConfigReport) -> None:
        topic = f"{self.control.prefix}/config/reported"
        self.control.publish(topic, report.model_dump_json(by_alias=True).encode(), retain=True)

    def _on_pushed_config(self, payload: bytes) -> None:
        self.remote.handle(payload, self.file_config)

    def renew_certificate(self) -> datetime | None:
        """Renew the device certificate now (``rotate-cert``); returns the new expiry."""
        enrolled = ensure_enrolled(self.file_config, self.identity, renew=True)
        self.cert_not_after = enrolled.not_after
        log.info("device certificate renewed on request, valid until %s", enrolled.not_after)
        return enrolled.not_after

    def _state_extra(self) -> dict[str, Any]:
        return {
            "devices": {name: str(w.state) for name, w in self.workers.items()},
            **self.enroller.extra(),
        }

    def request_restart(self, *, delay: float = 0.0) -> None:
        """Stop cleanly and exit with RESTART_EXIT_CODE (systemd starts the daemon again).

        With *delay*, the stop comes that many seconds later (a command's reply goes out
        first).
        """
        self.restart_requested = True
        if delay <= 0:
            os.kill(os.getpid(), signal.SIGTERM)
            return
        timer = threading.Timer(delay, os.kill, (os.getpid(), signal.SIGTERM))
        timer.daemon = True
        timer.start()

    def _start_worker(self, device: DeviceConfig) -> None:
        worker = DeviceWorker(device, self.pipeline.queue, self.alarms)
        self.workers[device.name] = worker
        worker.start()

    def start(self) -> None:
        """Start publisher, pipeline and device workers; readiness follows."""
        log.info(
            "scanfleet %s starting: site %s, device %s, journal %s (last seq %d)",
            __version__,
            self.identity.site,
            self.identity.device,
            journal_path(self.config),
            self.journal.last_seq,
        )
        self.pipeline.start()
        self.control.start()
        self.publisher.start()
        self.health.start()
        if self.local_api is not None:
            self.local_api.start()
        for device in self.config.devices:
            self._start_worker(device)
        self.enroller.start()
        if not self.config.devices:
            log.warning("no devices configured: nothing will be scanned")
        threading.Thread(target=self._wait_ready, name="readiness", daemon=True).start()
        if self.cert_not_after is not None:
            threading.Thread(target=self._renewal_loop, name="cert-renewal", daemon=True).start()

    def _renewal_loop(self) -> None:
        # The publisher builds a new connection on every reconnect, so renewed files at
        # the same paths are used from the next reconnect on.
        while not self._stopping.wait(RENEWAL_CHECK_SECONDS):
            try:
                enrolled = ensure_enrolled(self.file_config, self.identity)
            except EnrollmentError as err:
                self.alarms.raise_("certificate_renewal", f"certificate renewal failed: {err}")
                continue
            self.alarms.clear("certificate_renewal")
            if enrolled.not_after != self.cert_not_after:
                log.info("device certificate renewed, valid until %s", enrolled.not_after)
                self.cert_not_after = enrolled.not_after

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        for worker in list(self.workers.values()):
            worker.bound_once.wait(max(0.0, deadline - time.monotonic()))
        self.ready.set()
        states = ", ".join(f"{n}={w.state}" for n, w in self.workers.items()) or "no devices"
        log.info("ready: %s; broker %s", states, self.publisher.broker_state)
        for callback in self._on_ready:
            callback()

    def reload(self) -> bool:
        """Re-read the config file; keep the old config (and say why) when the new one is bad."""
        if self.config_path is None:
            log.info("SIGHUP: no config file to reload (demo or built-in config)")
            return False
        try:
            new = load_config(self.config_path)
        except ConfigError as err:
            log.error("reload refused, keeping the running config: %s", err)  # noqa: TRY400 - message says all
            return False
        unchangeable = [
            section
            for section in RESTART_SECTIONS
            if getattr(new, section) != getattr(self.file_config, section)
        ]
        if unchangeable:
            log.warning(
                "reload: changes to [%s] take effect at the next restart", ", ".join(unchangeable)
            )
        self.file_config = new
        # The remote overlay (if any) stays on top of the file.
        self.apply_config(self.remote.compose(new), source=str(self.config_path))
        return True

    def apply_config(self, new: Config, *, source: str) -> list[str]:
        """Make *new* the running config: rebind changed devices, update pipeline and station.

        Sections in ``RESTART_SECTIONS`` keep their running values. Called by SIGHUP
        reloads and by remote config pushes (and their rollbacks). Returns the changed
        settings that only a restart applies (the push reports ``restart_required``).
        """
        with self._apply_lock:
            restart = self._apply_local_api(new)
            self._apply_config(new, source)
        if restart:
            log.warning("%s: %s take effect at the next restart", source, ", ".join(restart))
        return restart

    def _apply_local_api(self, new: Config) -> list[str]:
        """A new token at once; where and whether the API listens only at a restart."""
        self.redactor.add(*config_secrets(new))
        if self.local_api is not None:
            return self.local_api.update_config(new.local_api)
        return ["local_api.enabled"] if new.local_api.enabled else []

    def _apply_config(self, new: Config, source: str) -> None:
        old_devices = {d.name: d for d in self.config.devices}
        new_devices = {d.name: d for d in new.devices}
        for name, device in old_devices.items():
            if new_devices.get(name) != device:
                log.info("reload: unbinding %s", name)
                self.workers.pop(name).stop()
        # Sections that only a restart applies keep their running (e.g. enrolled) values.
        self.config = new.model_copy(update={s: getattr(self.config, s) for s in RESTART_SECTIONS})
        self.pipeline.update_config(self.config)
        if self.station.index is not None:
            self.station.index.configure(**policy(self.config))
        for name, device in new_devices.items():
            if name not in self.workers:
                log.info("reload: binding %s", name)
                self._start_worker(device)
        log.info("reload: configuration from %s applied", source)

    def rebind(self, name: str | None = None) -> list[str]:
        """Close and reopen device *name* (every device when None); returns the names."""
        with self._apply_lock:
            devices = {d.name: d for d in self.config.devices}
            names = [name] if name is not None else list(devices)
            for each in names:
                if each not in devices:
                    raise KeyError(each)
                worker = self.workers.pop(each, None)
                if worker is not None:
                    worker.stop()
                self._start_worker(devices[each])
            return names

    def shutdown(self, timeout: float = SHUTDOWN_TIMEOUT) -> None:
        """Stop reading, finish queued reads, flush the publisher, close the journal."""
        deadline = time.monotonic() + timeout
        self._stopping.set()
        log.info("stopping")
        for callback in self._on_shutdown:
            callback()
        self.health.stop()
        self.enroller.stop()
        self.control.stop(timeout=max(0.1, min(2.0, deadline - time.monotonic())))
        for worker in self.workers.values():
            worker.stop(timeout=max(0.1, min(2.0, deadline - time.monotonic())))
        self.pipeline.stop(timeout=max(0.1, min(3.0, deadline - time.monotonic())))
        if self.local_api is not None:
            self.local_api.stop(timeout=max(0.1, min(2.0, deadline - time.monotonic())))
        self.publisher.stop(timeout=max(0.1, deadline - time.monotonic() - 0.5))
        if self.station.index is not None:
            self.station.index.close()
        self.journal.close()
        logging.getLogger().removeHandler(self.recent_log)
        log.info("stopped")

    def supervise(self) -> None:
        """Replace worker threads that died; pick up alarms acknowledged by the CLI.

        serve() calls it every SUPERVISE_INTERVAL seconds (every 0.5 s while a live view
        draws). A publisher that stops turning is the systemd
        watchdog's to notice (no more WATCHDOG=1 pings, systemd restarts the daemon).
        """
        self.pipeline.ensure_running()
        for name, worker in list(self.workers.items()):
            if worker.died and not self._stopping.is_set():
                log.error("the worker thread of device %s died; rebinding it", name)
                self.alarms.raise_(
                    ALARM_THREAD, f"the worker thread of {name} died and was restarted"
                )
                self.rebind(name)
        self.alarms.sync()

    def device_states(self) -> dict[str, DeviceState]:
        """Configured device name → its current state (safe from any thread)."""
        # list(): one step under the GIL, while the main thread may rebind a device.
        return {name: worker.state for name, worker in list(self.workers.items())}

    def serve(self, *, tick: Callable[[], None] | None = None) -> int:
        """Run until SIGTERM/SIGINT; SIGHUP reloads. Returns the exit code."""

        def raise_stop(signum: int, frame: FrameType | None) -> None:
            raise _Stop

        def raise_reload(signum: int, frame: FrameType | None) -> None:
            raise _Reload

        previous = {
            sig: signal.signal(sig, handler)
            for sig, handler in (
                (signal.SIGTERM, raise_stop),
                (signal.SIGINT, raise_stop),
                (signal.SIGHUP, raise_reload),
            )
        }
        stop = threading.Event()
        reload_pending = False
        try:
            self.start()
            while True:
                try:
                    if reload_pending:
                        reload_pending = False
                        # A SIGHUP during a reload waits for it, then reloads again.
                        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP})
                        try:
                            for callback in self._on_reload:
                                callback("begin")
                            self.reload()
                        finally:
                            for callback in self._on_reload:
                                callback("end")
                            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGHUP})
                    while not stop.wait(SUPERVISE_INTERVAL if tick is None else TICK_INTERVAL):
                        self.supervise()
                        if tick is not None:
                            tick()
                except _Reload:
                    reload_pending = True
        except _Stop:
            pass
        finally:
            # A second signal during shutdown must not interrupt the flush.
            for sig in previous:
                signal.signal(sig, signal.SIG_IGN)
            self.shutdown()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return RESTART_EXIT_CODE if self.restart_requested else 0
