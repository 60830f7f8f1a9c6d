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
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from scanfleet.daemon.core.config import BrokerProtocol
from scanfleet.daemon.core.errors import BrokerConnectionError
from scanfleet.daemon.core.mqtt_client import Message, Session, TlsFiles, open_session
from scanfleet.provisioning.ca import FleetCA

log = logging.getLogger(__name__)

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

    def on_message(session: Session, msg: Message) -> None:
        last_message[0] = time.monotonic()
        levels = msg.topic.split("/")
        try:
            payload = json.loads(msg.payload)
        except ValueError:
            return
        if isinstance(payload, dict):
            states[(levels[2], levels[3])] = payload

    tls = None if ca_file is None else TlsFiles(ca_file, cert_file, key_file)
    deadline = time.monotonic() + timeout
    session = open_session(
        host,
        port,
        client_id=f"scanfleet-fleet-ls-{time.monotonic_ns() % 1_000_000}",
        protocol=protocol,
        tls=tls,
        timeout=timeout,
        on_message=on_message,
    )
    filters = [STATE_FILTER, *(f"scanfleet/v1/{s}/{d}/state" for s, d in devices)]
    try:
        session.subscribe(filters, timeout)
        last_message[0] = time.monotonic()
        session.wait(
            lambda: time.monotonic() - last_message[0] > quiet,
            max(0.0, deadline - time.monotonic()),
        )
    except TimeoutError:
        log.warning(
            "no SUBACK from %s:%d in %.0fs: the list may be incomplete", host, port, timeout
        )
    except BrokerConnectionError as err:
        raise ConnectionError(f"broker: {err.reason}") from err
    finally:
        session.close()
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
