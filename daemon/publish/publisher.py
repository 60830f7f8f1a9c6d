"""The publisher: journal records to the broker in seq order, at least once.

One thread runs the daemon's own reconnect loop (capped exponential backoff with
jitter, :class:`~scanfleet.daemon.core.backoff.Backoff`) and, while connected, cuts
batches from the journal in seq order and hands at most ``window`` of them to
paho at a time. A batch is delivered only when its PUBACK arrives with a reason
code below 0x80; the journal's watermark advances over the contiguous prefix of
delivered batches. Every new connection resends everything after the watermark:
the journal is the truth, paho and the broker hold nothing we rely on.

With the optional live lane, records journaled during a backlog drain also go
out at once, ahead of the backlog (and again in order later).

Brokers: ``[broker] url`` may list several URLs; a failed attempt or a lost
connection moves to the next one (ordered failover inside the same reconnect loop
and backoff). Each attempt speaks MQTT 5 or, when the broker refuses version 5 and
``protocol = "auto"``, MQTT 3.1.1 (:mod:`~scanfleet.daemon.publish.broker_protocol`). A
refusal that retrying will not fix (protocol, credentials, authorization, TLS, DNS)
raises ``broker_refused`` naming the cause at the first attempt.

Session choice: the device connects with ``clean_start=True`` and no session
expiry. It publishes QoS 1 only, so a broker-side session would hold nothing the
journal does not already resend; a clean start also means no stale in-flight state
can collide with new message ids. The control channel (``ControlLink``: pushed
config and commands) subscribes again at every connect on this same connection; the
desired config is retained, and a command sent while the device is offline is lost
(the fleet tool times out and asks again).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from paho.mqtt.properties import Properties

from scanfleet.daemon import __version__
from scanfleet.daemon.core.alarms import AlarmSet, Severity
from scanfleet.daemon.core.backoff import Backoff, listening, probe_delay, unreachable
from scanfleet.daemon.core.clock import boot_id
from scanfleet.daemon.core.config import BrokerConfig, MqttVersion
from scanfleet.daemon.core.errors import BrokerConnectionError, BrokerRefusedError, ScanfleetError
from scanfleet.daemon.core.identity import Identity
from scanfleet.daemon.core.mqtt import Connection, drain_wake
from scanfleet.daemon.journal.journal import Journal
from scanfleet.daemon.publish.broker_protocol import BrokerDialer
from scanfleet.daemon.publish.delivery import Ack, BatchCutter, DeliveryTracker, Gap
from scanfleet.daemon.publish.envelope import DeviceState, scans_topic, state_payload, state_topic
from scanfleet.daemon.publish.state import (
    BrokerState,
    PublisherCounters,
    compose_state,
)
from scanfleet.daemon.publish.status import StatusFile

log = logging.getLogger(__name__)

ALARM_REFUSED = "publish_refused"
ALARM_UNREACHABLE = "broker_unreachable"
ALARM_ERROR = "publisher_error"
ALARM_BROKER_REFUSED = "broker_refused"
LIVE_WINDOW = 2
"""Most live-lane batches awaiting their PUBACK at once."""
BUSY_PUMP = 0.5
"""Seconds one pump of the connection may sleep while something is in flight."""
IDLE_PUMP = 5.0
"""…and while nothing is (also capped at half the keepalive, for paho's PINGREQ): an
idle publisher wakes at this pace, well inside the watchdog's allowance."""
WATCH_IDLE = 60.0
"""The journal watcher's wait; appends and stop() end it at once."""


Outgoing = tuple[str, bytes, bool, Properties | None]
"""A control-channel message to publish: ``(topic, payload, retain, properties)``."""


class ControlLink(Protocol):
    """What the control channel (remote config, commands, health) plugs into the connection.

    The device keeps one MQTT connection; the publisher owns it, subscribes to the
    link's topics at every connect and hands received messages over. Every method is
    called on the publisher thread and must return quickly (queue, don't work).
    """

    def topics(self) -> list[str]:
        """Topics to subscribe to at every connect."""
        ...

    def deliver(self, topic: str, payload: bytes, properties: Properties | None) -> None:
        """A message arrived on one of :meth:`topics`."""
        ...

    def take_outgoing(self) -> list[Outgoing]:
        """Messages waiting to be published (responses, reports, health)."""
        ...

    def connection_changed(self, connected: bool) -> None:
        """The broker connection came up (True) or went away (False)."""
        ...


class Publisher:
    """Publishes a device's journal to ``scanfleet/v1/{site}/{device}/scans``.

    Args:
        journal: the device's open journal (the only source of what is sent).
        broker: where to connect (TLS, credentials, keepalive).
        identity: site and device; the client id is ``broker.client_id`` or the device id.
        alarms: raises ``publish_refused`` and ``broker_unreachable``; its changes are
            republished in the retained state.
        max_batch_scans: most records in one batch.
        max_batch_bytes: most bytes of one batch payload (a single larger record still
            goes out alone).
        window: most batches awaiting their PUBACK at once (paho issue #377: never let
            paho hold anywhere near 65 535 messages).
        version: software version for the state message.
        state_extra: extra figures for the state message, under ``extra``.
        state_interval: seconds between periodic state messages.
        status_path: where to keep ``status.json`` for ``scanfleet status``.
        backoff: reconnect policy (tests pass a short one).
        connect_timeout: seconds to wait for TCP connect plus CONNACK.
        unreachable_after: seconds without a broker before ``broker_unreachable``.
        live_lane: during a backlog drain, send newly journaled records at once, ahead
            of the backlog (they are sent again in order later: one duplicate each).
            Off by default: consumers then see strictly ascending seq.
        ack_listener: called as ``(first_seq, last_seq)`` on the publisher thread for every
            batch the broker accepted (benchmarks, tests); must return quickly.
        control: the control channel sharing this connection (may be set after
            construction, before :meth:`start`).
        protocol_memory: file remembering which MQTT version each broker URL speaks
            (``protocol = "auto"``); None keeps it in memory only.
    """

    def __init__(
        self,
        journal: Journal,
        broker: BrokerConfig,
        identity: Identity,
        alarms: AlarmSet,
        *,
        max_batch_scans: int = 500,
        max_batch_bytes: int = 256 * 1024,
        window: int = 8,
        version: str = __version__,
        state_extra: Callable[[], dict[str, Any]] | None = None,
        state_interval: float = 60.0,
        status_path: Path | None = None,
        backoff: Backoff | None = None,
        connect_timeout: float = 10.0,
        unreachable_after: float = 300.0,
        live_lane: bool = False,
        ack_listener: Callable[[int, int], None] | None = None,
        control: ControlLink | None = None,
        protocol_memory: Path | None = None,
    ) -> None:
        if window < 1:
            raise ValueError("window must be at least 1")
        self.journal = journal
        self.broker = broker
        self.identity = identity
        self.alarms = alarms
        self.window = window
        self.version = version
        self.state_extra = state_extra
        self.state_interval = state_interval
        self.connect_timeout = connect_timeout
        self.unreachable_after = unreachable_after
        self.live_lane = live_lane
        self.ack_listener = ack_listener
        self.control = control
        self.counters = PublisherCounters()
        self.boot_id = boot_id()
        self._cutter = BatchCutter(
            identity.device, max_scans=max_batch_scans, max_bytes=max_batch_bytes
        )
        self._tracker = DeliveryTracker(journal.delivered_seq)
        self._backoff = backoff or Backoff()
        self._status = StatusFile(status_path) if status_path is not None else None
        self._scans_topic = scans_topic(identity.site, identity.device)
        self._state_topic = state_topic(identity.site, identity.device)
        self._client_id = broker.client_id or identity.device
        self._dialer = BrokerDialer(broker, protocol_memory)

        self._state = BrokerState.STOPPED
        self._state_since = datetime.now(UTC)
        self._stop_deadline = 0.0
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None
        self._watcher: threading.Thread | None = None
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._delivered_cond = threading.Condition()

        # Per connection (reset in _session): the paho adapter and state-message ids.
        self._conn: Connection | None = None
        self._state_mids: set[int] = set()
        self._state_dirty = True
        self._last_state_sent = 0.0
        self._warned_no_subscribers = False
        self._healthy = False
        self._reached_broker = False
        self._unreachable = False
        """The last attempt found nothing listening: a probe may end the backoff early
        (never after a refusal by a listening broker, which would turn into a hot loop)."""
        self._live_through = 0
        self._reprobing = False
        self.last_progress = time.monotonic()
        """Monotonic time the publishing thread last turned its loop (the watchdog's cue)."""
        alarms.add_listener(self._on_alarms_changed)

    # -- public interface -------------------------------------------------------------------

    def start(self) -> None:
        """Start the publishing thread (and the one that wakes it on appends)."""
        if self._thread is not None:
            raise RuntimeError("publisher already started")
        if self._status is not None:
            self._status.prepare()
        self._thread = threading.Thread(target=self._run, name="publisher", daemon=True)
        self._watcher = threading.Thread(target=self._watch, name="publisher-watch", daemon=True)
        self._thread.start()
        self._watcher.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop cutting batches, wait up to *timeout* for outstanding PUBACKs, go offline.

        Publishes ``online: false`` and disconnects cleanly when connected. Idempotent.
        """
        if self._thread is None:
            self._close_wake()
            return
        self._stop_deadline = time.monotonic() + timeout
        self._stopped.set()
        self.wake()
        self.journal.wake_waiters()
        self._thread.join(timeout + self.connect_timeout + 5.0)
        if self._watcher is not None:
            self._watcher.join(5.0)
        if self._thread.is_alive():
            log.error("publisher thread did not stop in time")
            return
        self._close_wake()
        if self._status is not None:
            self._status.close()

    def wake(self) -> None:
        """Look at the journal now (a live scan was appended). Thread-safe, never blocks."""
        # BlockingIOError: a wake-up is already pending; OSError: closed during stop().
        with contextlib.suppress(BlockingIOError, OSError):
            self._wake_w.send(b"\0")

    @property
    def connected(self) -> bool:
        """True while connected to the broker."""
        return self._state is BrokerState.CONNECTED

    @property
    def broker_state(self) -> BrokerState:
        """Where the connection loop is."""
        return self._state

    @property
    def delivered_seq(self) -> int:
        """Every seq up to this one is acknowledged by the broker."""
        return self._tracker.delivered_seq

    def wait_delivered(self, seq: int, timeout: float) -> bool:
        """Block until *seq* is delivered (True) or *timeout* passes (False)."""
        with self._delivered_cond:
            return self._delivered_cond.wait_for(
                lambda: self._tracker.delivered_seq >= seq, timeout
            )

    # -- the reconnect loop -----------------------------------------------------------------

    def _run(self) -> None:
        disconnected_since = time.monotonic()
        try:
            while not self._stopped.is_set():
                self.last_progress = time.monotonic()
                self._set_state(BrokerState.CONNECTING)
                self._healthy = False
                try:
                    self._session()
                except BrokerRefusedError as err:
                    # A listening broker said no: probing it would only turn the
                    # backoff into a hot loop.
                    self._unreachable = False
                    self.counters.connection_failures += 1
                    self._refused(err)
                except (OSError, BrokerConnectionError) as err:
                    # OSError covers refused/unreachable TCP and timeouts. Only a connect
                    # nothing answered may be cut short by a probe; a broker that accepted
                    # and then dropped us keeps the exponential backoff.
                    self._unreachable = not self._reached_broker and unreachable(err)
                    self.counters.connection_failures += 1
                    log.warning("broker %s: %s", self.url, err)
                except Exception as err:
                    # Publishing must never stop for good while the daemon runs: anything
                    # unexpected (a journal read error, a bug) is logged, alarmed and
                    # retried after the backoff like a lost connection.
                    log.exception("publisher error; retrying after backoff")
                    self.alarms.raise_(ALARM_ERROR, f"publisher error: {err!r}", Severity.ERROR)
                finally:
                    self._end_session()
                if self._healthy:
                    self._backoff.reset()
                if self._reached_broker:
                    disconnected_since = time.monotonic()
                if self._stopped.is_set():
                    break
                if not self._reprobing:
                    self._dialer.next_url()
                offline_s = time.monotonic() - disconnected_since
                if offline_s >= self.unreachable_after:
                    self.alarms.raise_(
                        ALARM_UNREACHABLE,
                        f"no broker connection to {', '.join(self._dialer.urls)}",
                        Severity.WARNING,
                    )
                delay = self._backoff.next()
                self._set_state(BrokerState.BACKOFF)
                log.info("reconnecting to %s in %.1f s", self.url, delay)
                self._wait_backoff(delay)
        finally:
            self._set_state(BrokerState.STOPPED)

    @property
    def url(self) -> str:
        """The broker URL of the current (or next) connection attempt."""
        return self._dialer.url

    @property
    def protocol(self) -> MqttVersion | None:
        """The MQTT version of the current (or last) connection; None before the first."""
        return self._dialer.protocol

    def _refused(self, err: BrokerRefusedError) -> None:
        hint = ""
        if err.cause == "protocol_version" and self.broker.protocol != "auto":
            hint = f' ([broker] protocol = "{self.broker.protocol}"; "auto" falls back)'
        log.error(
            "broker %s refused the connection (%s): %s%s", self.url, err.cause, err.reason, hint
        )
        self.alarms.raise_(
            ALARM_BROKER_REFUSED,
            f"broker {self.url} refused the connection: {err.reason}{hint}",
            Severity.ERROR,
            cause=err.cause,
            url=self.url,
            reason_code=err.code,
        )

    def _end_session(self) -> None:
        # Acks and refusals that arrived before the connection broke still count
        # (mosquitto 2.0.11 drops the connection right after a 0x87 PUBACK).
        try:
            self._settle()
        except (ScanfleetError, sqlite3.Error):
            log.exception("cannot record delivery through seq %d", self.delivered_seq)
        self._raise_refused_alarm()
        if self._conn is not None:
            self._conn.abort()
            self._conn = None
            if self.control is not None:
                self.control.connection_changed(False)

    def _wait_backoff(self, delay: float) -> None:
        # Wake-ups for live scans must not cut the backoff short; only stop() does, or,
        # when the broker could not even be reached, a TCP probe that finds it listening
        # again: the daemon reconnects within a probe interval of the broker's return
        # instead of after the rest of a long backoff.
        deadline = time.monotonic() + delay
        probe_at = time.monotonic() + probe_delay()
        while not self._stopped.wait(min(1.0, max(deadline - time.monotonic(), 0.0))):
            now = time.monotonic()
            self.last_progress = now
            self._write_status()
            if now >= deadline:
                return
            if self._unreachable and now >= probe_at:
                target = self.broker.at(self.url)
                if listening(target.host, target.port):
                    log.info("broker %s listens again: reconnecting now", self.url)
                    return
                probe_at = time.monotonic() + probe_delay()

    # -- one connection ---------------------------------------------------------------------

    def _session(self) -> None:
        """One connection, until it is lost, refuses a batch or the publisher stops."""
        self._reached_broker = False
        self._tracker.restart()
        self._live_through = self.journal.last_seq  # what is journaled now is backlog
        self._state_mids.clear()
        self._warned_no_subscribers = False
        self._reprobing = False
        conn = self._dialer.dial(self._new_connection, self.connect_timeout)
        if self.control is not None:
            conn.subscribe(self.control.topics())
            self.control.connection_changed(True)
        self._reached_broker = True
        self._unreachable = False
        connected_at = time.monotonic()
        delivered_at_connect = self._tracker.delivered_seq
        self.counters.connects += 1
        self._set_state(BrokerState.CONNECTED)
        self.alarms.clear(ALARM_UNREACHABLE)
        self.alarms.clear(ALARM_ERROR)
        self.alarms.clear(ALARM_BROKER_REFUSED)
        log.info("connected to %s as %s (MQTT %s)", self.url, self._client_id, conn.protocol)
        self._publish_state()
        while True:
            if self._reprobe_due():
                # Nothing in flight: a clean disconnect loses nothing, and the next
                # attempt tries MQTT 5 first.
                log.info("probing %s for MQTT 5 again", self.url)
                self._reprobing = True
                conn.disconnect()
                return
            if self._stopped.is_set():
                outstanding = self._tracker.inflight + self._tracker.live_inflight
                if outstanding == 0 or time.monotonic() >= self._stop_deadline:
                    self._go_offline(conn)
                    return
            else:
                self._fill_window(conn)
                self._send_control(conn)
                if self._state_dirty or (
                    time.monotonic() - self._last_state_sent >= self.state_interval
                ):
                    self._publish_state()
            # Bookkeeping comes after the sends, so that a wake-up for a live scan goes
            # from pump() straight to _fill_window().
            self._write_status()
            if (
                self._tracker.delivered_seq > delivered_at_connect
                or time.monotonic() - connected_at > 30.0
            ):
                # A working connection: the backoff after it starts small again. A broker
                # that accepts the connection but refuses every batch never gets here.
                self._healthy = True
            conn.pump(self._pump_timeout(), self._wake_r)
            self._settle()
            self.last_progress = time.monotonic()
            if self._tracker.refusals:
                self._handle_refusals(conn)
                return

    def _new_connection(self, broker: BrokerConfig, protocol: MqttVersion) -> Connection:
        self._conn = Connection(
            broker,
            self._client_id,
            inflight=self.window + LIVE_WINDOW + 2,  # + live lane + state messages
            will=(self._state_topic, state_payload(self._compose_state(online=False))),
            on_ack=self._on_ack,
            on_message=self.control.deliver if self.control is not None else None,
            protocol=protocol,
        )
        return self._conn

    def _pump_timeout(self) -> float:
        """How long one pump may sleep: short while anything is in flight or stopping,
        else until the keepalive needs a look (journal appends, state changes, control
        messages and stop() wake it through the wake socket at once)."""
        if self._stopped.is_set() or self._state_mids or self._tracker.inflight:
            return BUSY_PUMP
        if self._tracker.live_inflight:
            return BUSY_PUMP
        return min(IDLE_PUMP, self.broker.keepalive / 2)

    def _reprobe_due(self) -> bool:
        return (
            self._tracker.inflight + self._tracker.live_inflight == 0
            and not self._state_mids
            and self._dialer.reprobe_due()
        )

    def _fill_window(self, conn: Connection) -> None:
        tracker = self._tracker
        while True:
            if self.live_lane:
                # Between in-order batches too: cutting a full window takes a while.
                self._send_live(conn)
            if tracker.inflight >= self.window or self.journal.last_seq < tracker.next_seq:
                return
            batch = self._cutter.cut(self.journal, tracker.next_seq)
            if batch is None:
                return
            if isinstance(batch, Gap):
                log.warning(
                    "seq %d..%d are declared lost (journal_loss): stepping over them",
                    batch.first_seq,
                    batch.last_seq,
                )
                tracker.skip(batch)
                continue
            # Read what already arrived first: a broker that refused a batch (mosquitto
            # then closes the connection) must be heard before the next write fails on
            # the closed socket and loses the refusal with it.
            conn.pump(0)
            if tracker.refusals:
                return
            mid = conn.publish(self._scans_topic, batch.payload)
            tracker.sent(mid, batch)
            self.counters.batches_published += 1
            self.counters.scans_published += batch.count
            log.debug(
                "published seq %d..%d (%d bytes) as mid %d",
                batch.first_seq,
                batch.last_seq,
                len(batch.payload),
                mid,
            )

    def _send_control(self, conn: Connection) -> None:
        if self.control is None:
            return
        for topic, payload, retain, properties in self.control.take_outgoing():
            # Tracked like state messages: a refusal is logged, nothing is retried
            # (responses and reports are answers to this connection's requests).
            mid = conn.publish(topic, payload, retain=retain, properties=properties)
            self._state_mids.add(mid)

    def _send_live(self, conn: Connection) -> None:
        newest = self.journal.last_seq
        if newest <= self._live_through:
            return
        tracker = self._tracker
        start = max(self._live_through + 1, tracker.next_seq)
        behind = start >= tracker.next_seq + self._cutter.max_scans
        if not behind and tracker.inflight < self.window:
            # The next in-order batch carries these records anyway.
            self._live_through = newest
            return
        if tracker.live_inflight >= LIVE_WINDOW:
            return
        batch = self._cutter.cut(self.journal, start)
        if batch is None or isinstance(batch, Gap):
            return
        mid = conn.publish(self._scans_topic, batch.payload)
        tracker.sent_live(mid, batch)
        self._live_through = batch.last_seq
        self.counters.live_batches_published += 1
        log.debug("live seq %d..%d ahead of the backlog", batch.first_seq, batch.last_seq)

    def _on_ack(self, mid: int, code: int, reason: str) -> None:
        # Runs inside Connection.pump(), on this thread, with paho's locks held: record only.
        if mid in self._state_mids:
            self._state_mids.discard(mid)
            if code >= 0x80:
                log.warning("state message refused by the broker: %s (%d)", reason, code)
            return
        span = self._tracker.span(mid)
        outcome = self._tracker.acked(mid, code, reason)
        if span is None or outcome is Ack.UNKNOWN:
            return
        if outcome is Ack.REFUSED:
            self.counters.batches_refused += 1
            return
        self.counters.batches_acked += 1
        self.counters.scans_acked += span[1] - span[0] + 1
        if self.ack_listener is not None:
            self.ack_listener(span[0], span[1])
        if outcome is Ack.NO_SUBSCRIBERS:
            self.counters.acked_no_subscribers += 1
            if not self._warned_no_subscribers:
                self._warned_no_subscribers = True
                log.warning(
                    "broker knows no subscriber of %s (seq %d..%d delivered to the broker "
                    "all the same): is a backend listening with a persistent session?",
                    self._scans_topic,
                    span[0],
                    span[1],
                )

    def _settle(self) -> None:
        if not self._tracker.advance():
            return
        self.journal.mark_delivered(self._tracker.delivered_seq)
        if ALARM_REFUSED in self.alarms:
            self.alarms.clear(ALARM_REFUSED)
        with self._delivered_cond:
            self._delivered_cond.notify_all()

    def _raise_refused_alarm(self) -> None:
        if not self._tracker.refusals:
            return
        first = self._tracker.refusals[0]
        log.error(
            "broker refused seq %d..%d on %s: %s (0x%02x); keeping them, backing off",
            first.first_seq,
            first.last_seq,
            self._scans_topic,
            first.reason,
            first.code,
        )
        self.alarms.raise_(
            ALARM_REFUSED,
            f"broker refuses publishes on {self._scans_topic}: {first.reason}",
            Severity.ERROR,
            reason_code=first.code,
            reason=first.reason,
            first_seq=first.first_seq,
        )
        self._tracker.refusals.clear()

    def _handle_refusals(self, conn: Connection) -> None:
        self._raise_refused_alarm()
        # Let the state (now carrying the alarm) reach the broker before backing off.
        # mosquitto 2.0.11 closes the connection right after a 0x87 PUBACK, so this
        # often fails; the birth message of the next connection carries the alarm too.
        try:
            self._publish_state()
            self._await_state_acks(conn, 2.0)
        except BrokerConnectionError as err:
            log.debug("state after a refusal not sent: %s", err)
        conn.disconnect()

    def _go_offline(self, conn: Connection) -> None:
        self._set_state(BrokerState.STOPPING)
        self._publish_state(online=False)
        self._await_state_acks(conn, 2.0)
        conn.disconnect()
        log.info(
            "disconnected from %s, delivered through seq %d",
            self.url,
            self._tracker.delivered_seq,
        )

    def _await_state_acks(self, conn: Connection, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self._state_mids and time.monotonic() < deadline:
            conn.pump(0.1)
            self._settle()

    # -- state and status -------------------------------------------------------------------

    def _on_alarms_changed(self) -> None:
        # Called from whichever thread changed an alarm: only flag and wake.
        self._state_dirty = True
        self.wake()

    def _publish_state(self, *, online: bool = True) -> None:
        if self._conn is None:
            return
        self._state_dirty = False
        self._last_state_sent = time.monotonic()
        payload = state_payload(self._compose_state(online=online))
        self._state_mids.add(self._conn.publish(self._state_topic, payload, retain=True))
        self._write_status(force=True)

    def _compose_state(self, *, online: bool) -> DeviceState:
        return compose_state(
            self.identity,
            online=online,
            version=self.version,
            boot_id=self.boot_id,
            stats=self.journal.stats() if online else None,
            alarms=self.alarms.active() if online else [],
            protocol=self.protocol,
            extra=self.state_extra() if (online and self.state_extra) else None,
        )

    def _set_state(self, state: BrokerState) -> None:
        if state is not self._state:
            self._state = state
            self._state_since = datetime.now(UTC)
            self._write_status(force=True)

    def status_snapshot(self) -> dict[str, Any]:
        """What ``status.json`` holds (journal figures come from the journal itself)."""
        return {
            "pid": os.getpid(),
            "boot_id": self.boot_id,
            "device": self.identity.device,
            "site": self.identity.site,
            "version": self.version,
            "broker": {
                "url": self.url,
                "protocol": self.protocol,
                "state": str(self._state),
                "since": self._state_since.isoformat(),
            },
            "delivered_seq": self._tracker.delivered_seq,
            "inflight_batches": self._tracker.inflight,
            "counters": asdict(self.counters),
            "alarms": [a.as_json() for a in self.alarms.active()],
        }

    def _write_status(self, *, force: bool = False) -> None:
        if self._status is not None:
            self._status.update(self.status_snapshot(), force=force)

    # -- helpers ----------------------------------------------------------------------------

    def _watch(self) -> None:
        # Turns the journal's append notifications into wake-ups of the select() loop,
        # so live scans go out even when the caller never calls wake().
        seen = self.journal.last_seq
        while not self._stopped.is_set():
            if self.journal.wait_for_records(seen, WATCH_IDLE):
                seen = self.journal.last_seq
                self.wake()
            else:
                # A closed journal returns at once; do not spin until stop() comes.
                self._stopped.wait(0.05)

    def _close_wake(self) -> None:
        if self._wake_r.fileno() < 0:
            return  # already closed by an earlier stop()
        drain_wake(self._wake_r)
        self._wake_r.close()
        self._wake_w.close()
