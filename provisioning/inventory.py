"""``scanfleet fleet ls``: the fleet as the broker and the CA see it.

Devices come from two places: the retained ``scanfleet/v1/{site}/{device}/state``
messages (online/offline, when, journal depth) and the registry of issued device
certificates (expiry, revocation). A device with a certificate but no state has
never connected; a state without a current certificate is shown too.
"""

from __future__ import annotations

import json
import ssl
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion

from scanfleet.provisioning.ca import FleetCA

STATE_FILTER = "scanfleet/v1/+/+/state"


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


def collect_states(
    host: str,
    port: int,
    *,
    ca_file: str,
    cert_file: str,
    key_file: str,
    quiet: float = 0.5,
    timeout: float = 10.0,
) -> dict[tuple[str, str], dict[str, Any]]:
    """Read every retained state message; stop after *quiet* seconds without a new one."""
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

    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=f"scanfleet-fleet-ls-{time.monotonic_ns() % 1_000_000}",
        protocol=MQTTProtocolVersion.MQTTv5,
        reconnect_on_failure=False,
    )
    client.tls_set(
        ca_certs=ca_file, certfile=cert_file, keyfile=key_file, cert_reqs=ssl.CERT_REQUIRED
    )
    client.on_message = on_message
    client.on_subscribe = on_subscribe
    client.connect(host, port, keepalive=30)
    client.subscribe(STATE_FILTER, qos=1)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if subscribed and time.monotonic() - last_message[0] > quiet:
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
