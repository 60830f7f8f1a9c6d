"""``scanfleet simulate fleet``: many lightweight terminals in one process.

Each simulated terminal is its own MQTT 5 client (client id = device, will = offline
state) publishing valid, chained records with the daemon's own sealing
(:func:`~scanfleet.daemon.journal.codec.seal`), envelope
(:func:`~scanfleet.daemon.publish.envelope.build_batch`) and retained state model. Like the
daemon it keeps its records until the broker acknowledged them, counts an answer of
"no matching subscribers" as delivered, republishes what is unacknowledged after a
reconnect, and answers ``resend``. All clients share one thread and one epoll
selector, so a thousand terminals cost one process.
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
import selectors
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from scanfleet.daemon import __version__
from scanfleet.daemon.core.model import GENESIS_HASH
from scanfleet.daemon.core.mqtt_client import make_client
from scanfleet.daemon.journal.codec import format_time, seal
from scanfleet.daemon.publish.envelope import (
    DeviceState,
    JournalSummary,
    build_batch,
    scans_topic,
    state_payload,
    state_topic,
)

log = logging.getLogger(__name__)

OPERATIONS = ("retail_sale", "retail_sale", "retail_sale", "receiving", "sale_return_in")
MAX_BATCH = 100
WINDOW = 8


@dataclass(frozen=True)
class FleetSettings:
    """What to simulate."""

    host: str
    port: int
    devices: int = 100
    sites: int = 10
    rate: float = 0.5
    """Records per second per device."""
    duration: float = 60.0
    disconnect_every: float = 0.0
    """Mean seconds between one device's random connection drops (0: never)."""
    storm_every: float = 0.0
    """Every this many seconds all devices drop at once (0: never)."""
    prefix: str = "sim"
    seed: int = 0
    linger: float = 0.0
    """Seconds to stay connected after the last record, answering resend requests."""


@dataclass
class _Batch:
    mid: int
    last: int
    acked: bool = False


@dataclass
class SimDevice:
    """One simulated terminal's journal and connection."""

    site: str
    device: str
    records: list[bytes] = field(default_factory=list)
    prev: str = GENESIS_HASH
    delivered: int = 0
    sent: int = 0
    client: mqtt.Client | None = None
    connected: bool = False
    retry_at: float = 0.0
    attempts: int = 0
    inflight: deque[_Batch] = field(default_factory=deque)
    resent: int = 0
    sock: Any = None
    """The socket registered with the selector (paho may close it before we hear of it)."""

    @property
    def last_seq(self) -> int:
        """Highest seq produced."""
        return len(self.records)


class FleetSimulator:
    """Drive every device from one thread until the duration is over."""

    def __init__(self, settings: FleetSettings, stop: threading.Event | None = None) -> None:
        self.s = settings
        self.stop = stop or threading.Event()
        self.rng = random.Random(settings.seed)  # noqa: S311 - workload, not cryptography
        self.sel = selectors.DefaultSelector()
        width = max(3, len(str(settings.devices)))
        self.devices = [
            SimDevice(
                site=f"{settings.prefix}-site-{i % settings.sites:03d}",
                device=f"{settings.prefix}-{i:0{width}d}",
            )
            for i in range(settings.devices)
        ]
        self.connects = 0
        self.drops = 0

    # -- records --------------------------------------------------------------------

    def _produce(self, dev: SimDevice) -> None:
        seq = dev.last_seq + 1
        body = {
            "schema": "scanfleet.scan/1",
            "type": "scan",
            "time": format_time(datetime.now(UTC)),
            "clock": "synced",
            "t_mono": round(time.monotonic(), 6),
            "source": {"driver": "virtual", "device": "sim"},
            "raw": f"8{self.rng.randrange(10**19):019d}",
            "aim": None,
            "kind": "drug_standard_code",
            "fields": {},
            "problems": [],
            "verdict": "accepted",
            "operation": self.rng.choice(OPERATIONS),
        }
        body["value"] = body["raw"]
        record, payload = seal(body, dev.device, seq, dev.prev)
        dev.prev = record["hash"]
        dev.records.append(payload)

    # -- MQTT -----------------------------------------------------------------------

    def _connect(self, dev: SimDevice, now: float) -> None:
        client = make_client("5", dev.device, userdata=dev)
        client.max_inflight_messages_set(WINDOW + 4)
        will = self._state(dev, online=False)
        client.will_set(state_topic(dev.site, dev.device), will, qos=1, retain=True)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        try:
            client.connect(self.s.host, self.s.port, keepalive=30, clean_start=True)
        except OSError:
            dev.attempts += 1
            dev.retry_at = now + self.rng.uniform(0.5, min(30.0, 0.5 * 2**dev.attempts))
            return
        dev.client = client
        dev.sock = client.socket()
        if dev.sock is not None:
            self.sel.register(dev.sock, selectors.EVENT_READ, dev)

    def _state(self, dev: SimDevice, *, online: bool) -> bytes:
        journal = (
            JournalSummary(
                depth=dev.last_seq - dev.delivered,
                last_seq=dev.last_seq,
                delivered_seq=dev.delivered,
                oldest_undelivered_age_s=None,
            )
            if online
            else None
        )
        state = DeviceState(
            device=dev.device,
            site=dev.site,
            online=online,
            version=__version__,
            boot_id=None,
            journal=journal,
            time=datetime.now(UTC),
        )
        return state_payload(state)

    def _on_connect(self, client: mqtt.Client, dev: SimDevice, *args: Any) -> None:
        rc = args[1]
        if rc.is_failure:
            return
        dev.connected = True
        dev.attempts = 0
        dev.sent = dev.delivered  # republish whatever was not acknowledged
        dev.inflight.clear()
        self.connects += 1
        client.subscribe(f"scanfleet/v1/{dev.site}/{dev.device}/cmd/resend", qos=1)
        client.publish(
            state_topic(dev.site, dev.device), self._state(dev, online=True), qos=1, retain=True
        )

    def _on_disconnect(self, client: mqtt.Client, dev: SimDevice, *args: Any) -> None:
        self._drop(dev, time.monotonic(), clean=False)

    def _on_publish(
        self, client: mqtt.Client, dev: SimDevice, mid: int, rc: Any, props: Any
    ) -> None:
        # 0x10 "no matching subscribers" is a success, as it is for the daemon.
        for batch in dev.inflight:
            if batch.mid == mid:
                batch.acked = True
        while dev.inflight and dev.inflight[0].acked:
            dev.delivered = max(dev.delivered, dev.inflight.popleft().last)

    def _on_message(self, client: mqtt.Client, dev: SimDevice, msg: mqtt.MQTTMessage) -> None:
        try:
            args = json.loads(msg.payload)
            first, last = int(args["from_seq"]), min(int(args["to_seq"]), dev.last_seq)
        except (ValueError, KeyError, TypeError):
            return
        sent = 0
        for start in range(max(first, 1), last + 1, MAX_BATCH):
            end = min(start + MAX_BATCH - 1, last)
            payload = build_batch(dev.device, start, dev.records[start - 1 : end])
            client.publish(scans_topic(dev.site, dev.device), payload, qos=1)
            sent += end - start + 1
        dev.resent += sent
        props = getattr(msg, "properties", None)
        reply = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        correlation = getattr(props, "CorrelationData", None)
        if correlation:
            reply.CorrelationData = correlation
        topic = getattr(props, "ResponseTopic", None) or f"{msg.topic}/response"
        body = {
            "schema": "scanfleet.cmd-response/1",
            "device": dev.device,
            "command": "resend",
            "ok": True,
            "result": {"from_seq": first, "to_seq": last, "records": sent},
            "time": format_time(datetime.now(UTC)),
        }
        client.publish(topic, json.dumps(body).encode(), qos=1, properties=reply)

    def _drop(self, dev: SimDevice, now: float, *, clean: bool) -> None:
        client, dev.client = dev.client, None
        was = dev.connected
        dev.connected = False
        if client is None:
            return
        if dev.sock is not None:
            with contextlib.suppress(KeyError, ValueError, OSError):
                self.sel.unregister(dev.sock)
            dev.sock = None
        sock = client.socket()
        if sock is not None:
            if clean:
                client.disconnect()
                client.loop_write()
            sock.close()
        if was:
            self.drops += 1
        dev.attempts += 1
        dev.retry_at = now + self.rng.uniform(0.2, min(30.0, 0.5 * 2**dev.attempts))

    def _pump(self, dev: SimDevice) -> None:
        client = dev.client
        if client is None:
            return
        rc = MQTTErrorCode.MQTT_ERR_SUCCESS
        if client.want_write():
            rc = client.loop_write()
        if rc == MQTTErrorCode.MQTT_ERR_SUCCESS:
            rc = client.loop_misc()
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS and dev.client is not None:
            self._drop(dev, time.monotonic(), clean=False)

    def _send(self, dev: SimDevice) -> None:
        client = dev.client
        if client is None or not dev.connected:
            return
        while len(dev.inflight) < WINDOW and dev.sent < dev.last_seq:
            first = dev.sent + 1
            last = min(dev.last_seq, dev.sent + MAX_BATCH)
            payload = build_batch(dev.device, first, dev.records[first - 1 : last])
            info = client.publish(scans_topic(dev.site, dev.device), payload, qos=1)
            if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                return
            dev.inflight.append(_Batch(info.mid, last))
            dev.sent = last

    # -- the loop -------------------------------------------------------------------

    def _read(self, now: float) -> None:
        for key, _ in self.sel.select(timeout=0.02):
            dev = key.data
            if dev.client is not None and dev.client.loop_read() != MQTTErrorCode.MQTT_ERR_SUCCESS:
                self._drop(dev, now, clean=False)

    def _tend(self, dev: SimDevice, now: float) -> None:
        """Reconnect when due, else send what is pending and keep the connection alive."""
        if dev.client is None:
            if now >= dev.retry_at:
                self._connect(dev, now)
            return
        self._send(dev)
        self._pump(dev)

    def _publish_states(self) -> None:
        for dev in self.devices:
            if dev.client is not None and dev.connected:
                topic = state_topic(dev.site, dev.device)
                dev.client.publish(topic, self._state(dev, online=True), qos=1, retain=True)
                dev.client.loop_write()

    def run(self) -> dict[str, Any]:
        """Simulate for the configured duration (and linger), then disconnect; the summary."""
        start = time.monotonic()
        end = start + self.s.duration
        credit = 0.0
        next_storm = start + self.s.storm_every if self.s.storm_every else float("inf")
        last_tick = start
        drop_p = 1.0 / self.s.disconnect_every if self.s.disconnect_every else 0.0
        next_state = start + 10.0
        while not self.stop.is_set():
            now = time.monotonic()
            if now >= end + self.s.linger:
                break
            self._read(now)
            dt, last_tick = now - last_tick, now
            if now < end:
                credit += dt * self.s.rate * len(self.devices)
            while credit >= 1.0:
                credit -= 1.0
                self._produce(self.rng.choice(self.devices))
            storm = now >= next_storm
            if storm:
                next_storm = now + self.s.storm_every
                log.info("restart storm: every device drops its connection")
            for dev in self.devices:
                dropping = storm or (drop_p and self.rng.random() < drop_p * dt)
                if dev.client is not None and now < end and dropping:
                    self._drop(dev, now, clean=False)
                else:
                    self._tend(dev, now)
            if now >= next_state:
                next_state = now + 10.0
                self._publish_states()
        return self._finish()

    def _finish(self) -> dict[str, Any]:
        # A last chance to deliver what is in flight, then a clean goodbye.
        deadline = time.monotonic() + 30.0
        while time.monotonic() < deadline and any(
            d.delivered < d.last_seq or not d.connected for d in self.devices
        ):
            now = time.monotonic()
            self._read(now)
            for dev in self.devices:
                self._tend(dev, now)
        self._publish_states()
        time.sleep(0.5)
        for dev in self.devices:
            if dev.client is not None:
                dev.client.loop_read()
        summary = {
            "devices": len(self.devices),
            "produced": sum(d.last_seq for d in self.devices),
            "delivered": sum(d.delivered for d in self.devices),
            "resent": sum(d.resent for d in self.devices),
            "connects": self.connects,
            "drops": self.drops,
        }
        for dev in self.devices:
            self._drop(dev, time.monotonic(), clean=True)
        self.sel.close()
        return summary
