"""``scanfleet fleet ls``: the fleet as the broker and the CA see it.

Devices come from two places: the retained ``scanfleet/v1/{site}/{device}/state``
messages (online/offline, when, journal depth) and the registry of issued device
certificates (expiry, revocation). A device with a certificate but no state has
never connected; a state without a current certificate is shown too.

Some brokers deliver retained messages only to subscriptions on the exact topic
(RabbitMQ 3.10's MQTT plugin ignores them for ``+/+/state``), so besides the
wildcard the inventory subscribes to the state topic of every device it knows of:
today the CA registry's issued certificates (:func:`known_devices`); the hub's
device table is the place to add once a hub database exists (pass its devices to
:func:`collect_states` the same way).
"""

from __future__ import annotations

import json
import ssl
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import MQTTErrorCode

from scanfleet.daemon.core.config import BrokerProtocol, MqttVersion
from scanfleet.daemon.core.mqtt import open_client, paho_client
from scanfleet.provisioning.ca import FleetCA

STATE_FILTER = "scanfleet/v1/+/+/state"
SUBSCRIBE_CHUNK = 100
"""Topic filters per SUBSCRIBE packet (a fleet of thousands must not make one huge one)."""


@dataclass
class DeviceRow:
    """One line of the inventory."""

    site: str
    device: str
    online: bool | None = None
    """None: no retained state (never connected, or state cleared)."""
    state_time: str | None = None
    journal_depth: int | None = None
    version: str | None = None
    cert_expiry: datetime | None = None
    revoked: bool = False


def known_devices(ca: FleetCA) -> list[tuple[str, str]]:
    """``(site, device)`` of every device certificate the CA issued."""
    found = {cert.cn.partition("/")[::2] for cert in ca.registry.certs(kind="device")}
    return sorted(found)


def collect_states(
    host: str,
    port: int,
    *,
    ca_file: str | None,
    cert_file: str | None,
    key_file: str | None,
    devices: Sequence[tuple[str, str]] = (),
    protocol: BrokerProtocol = "auto",
    quiet: float = 0.5,
    timeout: float = 10.0,
) -> dict[tuple[str, str], dict[str, Any]]:
    """Read every retained state message; stop after *quiet* seconds without a new one.

    *devices* are subscribed to one by one as well (brokers that keep retained
    messages from wildcard subscriptions). Without *ca_file* the connection is plain.
    """
    states: dict[tuple[str, str], dict[str, Any]] = {}
    last_message = [time.monotonic()]
    subscribed: list[bool] = []

    def on_message(client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        last_message[0] = time.monotonic()
        levels = msg.topic.split("/")
        try:
            payload = json.loads(msg.payload)
        except ValueError:
            return
        if isinstance(payload, dict):
            states[(levels[2], levels[3])] = payload

    def on_subscribe(*args: Any) -> None:
        last_message[0] = time.monotonic()
        subscribed.append(True)

    def make(version: MqttVersion) -> mqtt.Client:
        client = paho_client(f"scanfleet-fleet-ls-{time.monotonic_ns() % 1_000_000}", version)
        if ca_file is not None:
            client.tls_set(
                ca_certs=ca_file, certfile=cert_file, keyfile=key_file, cert_reqs=ssl.CERT_REQUIRED
            )
        client.on_message = on_message
        client.on_subscribe = on_subscribe
        return client

    client = open_client(make, host, port, protocol=protocol, timeout=timeout)
    filters = [STATE_FILTER, *(f"scanfleet/v1/{s}/{d}/state" for s, d in devices)]
    chunks = [filters[i : i + SUBSCRIBE_CHUNK] for i in range(0, len(filters), SUBSCRIBE_CHUNK)]
    for chunk in chunks:
        client.subscribe([(topic, 1) for topic in chunk])
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if len(subscribed) >= len(chunks) and time.monotonic() - last_message[0] > quiet:
                break
            rc = client.loop(timeout=0.1)
            if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                raise ConnectionError(f"broker: {mqtt.error_string(rc)}")
    finally:
        client.disconnect()
    return states


def inventory(ca: FleetCA, states: dict[tuple[str, str], dict[str, Any]]) -> list[DeviceRow]:
    """Join retained states with issued device certificates, sorted by site and device."""
    rows: dict[tuple[str, str], DeviceRow] = {}
    # Oldest first, so the newest certificate of a device wins.
    for cert in reversed(ca.registry.certs(kind="device")):
        site, _, device = cert.cn.partition("/")
        row = rows.setdefault((site, device), DeviceRow(site, device))
        row.cert_expiry = cert.not_after
        row.revoked = cert.revoked_at is not None
    for (site, device), state in states.items():
        row = rows.setdefault((site, device), DeviceRow(site, device))
        row.online = bool(state.get("online"))
        row.state_time = str(state.get("time")) if state.get("time") else None
        row.version = str(state.get("version")) if state.get("version") else None
        journal = state.get("journal")
        if isinstance(journal, dict) and isinstance(journal.get("depth"), int):
            row.journal_depth = journal["depth"]
    return [rows[key] for key in sorted(rows)]


def render_table(rows: list[DeviceRow], now: datetime | None = None) -> str:
    """The inventory as a fixed-width text table."""
    now = now or datetime.now(UTC)
    header = ("SITE", "DEVICE", "STATE", "SINCE", "DEPTH", "CERT EXPIRES", "VERSION")
    lines = [header]
    for row in rows:
        state = {None: "never seen", True: "online", False: "offline"}[row.online]
        if row.cert_expiry is None:
            expiry = "-"
        elif row.revoked:
            expiry = "revoked"
        else:
            days = (row.cert_expiry - now).days
            expiry = f"{row.cert_expiry:%Y-%m-%d} ({days}d)" if days >= 0 else "EXPIRED"
        lines.append(
            (
                row.site,
                row.device,
                state,
                row.state_time or "-",
                "-" if row.journal_depth is None else str(row.journal_depth),
                expiry,
                row.version or "-",
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip()
        for line in lines
    )
