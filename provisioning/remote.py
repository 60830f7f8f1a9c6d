"""The IT staff's side of remote management: push config, send commands, read health.

One short-lived MQTT connection per CLI call (MQTT 5, or 3.1.1 where the broker
speaks nothing newer: commands then carry a ``request_id`` instead of correlation
data and are answered on their own response topic), as a fleet identity (``fleet.NAME``),
whose ACL lets it read and write ``config``, write ``cmd/+`` and read ``config/reported``,
``cmd/+/response``, ``state`` and ``health`` of every device.
"""

from __future__ import annotations

import base64
import difflib
import json
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from paho.mqtt.properties import Properties

from scanfleet.daemon.core.config import BrokerProtocol, Config
from scanfleet.daemon.core.desired_config import canonical, compose, parse_document
from scanfleet.daemon.core.mqtt_client import TlsFiles, open_session

FINAL_RESULTS = ("applied", "restart_required", "rejected", "rolled_back", "cleared", "unchanged")
RETAINED_WAIT = 2.0
"""Seconds to wait for retained messages after subscribing."""


def prefix(target: str) -> str:
    """``SITE/DEVICE`` → ``scanfleet/v1/SITE/DEVICE``."""
    parts = target.split("/")
    if len(parts) != 2 or not all(parts) or any(c in target for c in "+#"):
        raise ValueError(f"expected SITE/DEVICE, got {target!r}")
    return f"scanfleet/v1/{target}"


def build_document(
    sections: dict[str, Any],
    version: int,
    *,
    mode: str = "overlay",
    probation_s: float = 60.0,
    sign_key: Path | None = None,
) -> dict[str, Any]:
    """A desired-config document, validated locally (raises Rejected) and optionally signed."""
    doc: dict[str, Any] = {
        "schema": "scanfleet.desired-config/1",
        "version": version,
        "mode": mode,
        "probation_s": probation_s,
        "config": sections,
    }
    parsed = parse_document(json.dumps(doc).encode(), None)
    compose(Config(), parsed)  # the same model the device uses, on a default base
    if sign_key is not None:
        key = serialization.load_pem_private_key(sign_key.read_bytes(), password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise ValueError(f"{sign_key}: not an Ed25519 private key")
        doc["signature"] = base64.b64encode(key.sign(canonical(doc))).decode()
    return doc


def diff(old: dict[str, Any] | None, new: dict[str, Any]) -> str:
    """Unified diff of the ``config`` part of two documents."""

    def lines(doc: dict[str, Any] | None) -> list[str]:
        body = doc.get("config", {}) if doc else {}
        return json.dumps(body, indent=2, sort_keys=True).splitlines(keepends=True)

    return "".join(difflib.unified_diff(lines(old), lines(new), "device now", "pushed"))


class FleetClient:
    """A fleet identity's MQTT connection (TLS with a client certificate, or plain).

    *protocol* ``auto`` falls back to 3.1.1 when the broker refuses MQTT 5. Driven from
    the caller's thread (:class:`~scanfleet.daemon.core.mqtt_client.Session`): one thread
    uses a client.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        ca_file: str | None,
        cert_file: str | None,
        key_file: str | None,
        protocol: BrokerProtocol = "auto",
    ):
        tls = None if ca_file is None else TlsFiles(ca_file, cert_file, key_file)
        self._session = open_session(
            host, port, client_id=f"fleet-cli-{secrets.token_hex(4)}", protocol=protocol, tls=tls
        )
        self.mqtt5 = self._session.mqtt5

    @property
    def messages(self) -> list[tuple[str, bytes, Properties | None]]:
        """Every message received so far, oldest first: (topic, payload, properties)."""
        return [(m.topic, m.payload, m.properties) for m in self._session.messages]

    def wait(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """Process traffic until *predicate* holds (True) or *timeout* passes (False)."""
        return self._session.wait(predicate, timeout)

    def subscribe(self, topic: str, timeout: float = 10.0) -> None:
        """QoS 1 subscribe; wait for the SUBACK."""
        self._session.subscribe(topic, timeout)

    def publish(
        self, topic: str, payload: bytes, *, retain: bool = False, props: Properties | None = None
    ) -> None:
        """QoS 1 publish; wait until it is acknowledged (10 s at most)."""
        self._session.publish(topic, payload, retain=retain, properties=props)

    def json_on(self, topic: str) -> list[dict[str, Any]]:
        """Every JSON object received on *topic*, oldest first."""
        out: list[dict[str, Any]] = []
        for message in self._session.messages:
            if message.topic == topic and message.payload:
                try:
                    value = json.loads(message.payload)
                except ValueError:
                    continue
                if isinstance(value, dict):
                    out.append(value)
        return out

    def close(self) -> None:
        """Disconnect."""
        self._session.close()

    # -- operations -------------------------------------------------------------------------

    def current_config(self, target: str) -> dict[str, Any] | None:
        """The retained desired config of *target* (None when there is none)."""
        topic = f"{prefix(target)}/config"
        self.subscribe(topic)
        self.wait(lambda: bool(self.json_on(topic)), RETAINED_WAIT)
        docs = self.json_on(topic)
        return docs[-1] if docs else None

    def push(self, target: str, doc: dict[str, Any], timeout: float) -> dict[str, Any] | None:
        """Publish *doc* (retained) and wait for the device's final report on it."""
        reported = f"{prefix(target)}/config/reported"
        self.subscribe(reported)

        def final() -> dict[str, Any] | None:
            reports: list[dict[str, Any]] = self.json_on(reported)
            for report in reversed(reports):
                final_result = report.get("result") in FINAL_RESULTS
                if report.get("version") == doc["version"] and final_result:
                    return dict(report)
            return None

        self.publish(f"{prefix(target)}/config", json.dumps(doc).encode(), retain=True)
        self.wait(lambda: final() is not None, timeout)
        return final()

    def command(
        self, target: str, name: str, args: dict[str, Any], timeout: float
    ) -> dict[str, Any] | None:
        """Send command *name* and wait for the reply to this request (None: no reply).

        MQTT 5: the reply carries our correlation data. MQTT 3.1.1: the request
        carries a ``request_id`` and the reply comes on ``…/response/{request_id}``.
        """
        return self._session.request(f"{prefix(target)}/cmd/{name}", args, timeout)

    def health(self, wait_s: float) -> dict[str, dict[str, Any]]:
        """``SITE/DEVICE`` → latest health message heard within *wait_s*, plus retained states."""
        self.subscribe("scanfleet/v1/+/+/health")
        self.subscribe("scanfleet/v1/+/+/state")
        self.wait(lambda: False, wait_s)
        out: dict[str, dict[str, Any]] = {}
        for topic, payload, _ in self.messages:
            parts = topic.split("/")
            if len(parts) != 5 or parts[4] not in ("health", "state"):
                continue
            try:
                value = json.loads(payload)
            except ValueError:
                continue
            out.setdefault(f"{parts[2]}/{parts[3]}", {})[parts[4]] = value
        return out


def problems(entry: dict[str, Any]) -> list[str]:
    """What is wrong with one device, from its health and state messages."""
    found: list[str] = []
    state, health = entry.get("state"), entry.get("health")
    if state is not None and not state.get("online", False):
        found.append("offline")
    if health is None:
        found.append("no health")
        return found
    found += [
        f"device {n} {s}" for n, s in sorted(health.get("devices", {}).items()) if s != "bound"
    ]
    found += [a.get("code", "?") for a in health.get("alarms", [])]
    if health.get("clock") == "unsynced":
        found.append("clock unsynced")
    age = health.get("journal", {}).get("oldest_undelivered_age_s")
    if age is not None and age > 300:
        found.append(f"undelivered {age:.0f}s")
    return found


def health_table(entries: dict[str, dict[str, Any]]) -> str:
    """A table of devices, those with problems first."""
    rows = []
    for target, entry in entries.items():
        found = problems(entry)
        health = entry.get("health") or {}
        journal = health.get("journal", {})
        rows.append(
            (
                0 if found else 1,
                target,
                str(journal.get("depth", "-")),
                str(health.get("config_version", "-")),
                ", ".join(found) or "ok",
            )
        )
    rows.sort()
    header = ("DEVICE", "DEPTH", "CONFIG", "PROBLEMS")
    table = [header, *[r[1:] for r in rows]]
    widths = [max(len(row[i]) for row in table) for i in range(3)]
    return "\n".join(
        "  ".join([*(c.ljust(w) for c, w in zip(row[:3], widths, strict=True)), row[3]])
        for row in table
    )


def missing_ranges(
    received: list[tuple[int, int]], last_seq: int, since: int = 1
) -> list[tuple[int, int]]:
    """Seq ranges in ``since``…``last_seq`` not covered by the *received* ranges."""
    gaps: list[tuple[int, int]] = []
    cursor = since
    for first, last in sorted(received):
        if last < cursor:
            continue
        if first > cursor:
            gaps.append((cursor, min(first - 1, last_seq)))
        cursor = max(cursor, last + 1)
        if cursor > last_seq:
            break
    if cursor <= last_seq:
        gaps.append((cursor, last_seq))
    return [(a, b) for a, b in gaps if a <= b]


def reported_last_seq(states: dict[str, dict[str, Any]]) -> dict[str, int]:
    """``SITE/DEVICE`` → newest last seq the device reported (health or retained state)."""
    out: dict[str, int] = {}
    for target, entry in states.items():
        for kind in ("state", "health"):
            journal = (entry.get(kind) or {}).get("journal") or {}
            seq = journal.get("last_seq")
            if isinstance(seq, int) and seq > out.get(target, -1):
                out[target] = seq
    return out
