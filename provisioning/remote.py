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
import ssl
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from scanfleet.daemon.core.config import BrokerProtocol, Config, MqttVersion
from scanfleet.daemon.core.desired_config import canonical, compose, parse_document
from scanfleet.daemon.core.mqtt import open_client, paho_client

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

    *protocol* ``auto`` falls back to 3.1.1 when the broker refuses MQTT 5.
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
        self.messages: list[tuple[str, bytes, Properties | None]] = []
        self._cond = threading.Condition()
        self._subacks = 0

        def make(version: MqttVersion) -> mqtt.Client:
            client = paho_client(f"fleet-cli-{secrets.token_hex(4)}", version)
            if ca_file is not None:
                client.tls_set(
                    ca_certs=ca_file,
                    certfile=cert_file,
                    keyfile=key_file,
                    cert_reqs=ssl.CERT_REQUIRED,
                )
            client.on_message = self._on_message
            client.on_subscribe = self._on_subscribe
            return client

        self._client = open_client(make, host, port, protocol=protocol)
        self.mqtt5 = self._client.protocol == mqtt.MQTTv5
        self._client.loop_start()

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        with self._cond:
            self.messages.append((msg.topic, bytes(msg.payload), getattr(msg, "properties", None)))
            self._cond.notify_all()

    def _on_subscribe(self, *args: Any) -> None:
        with self._cond:
            self._subacks += 1
            self._cond.notify_all()

    def wait(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """Wait until *predicate* (called under the lock) holds."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.2))
            return True

    def subscribe(self, topic: str, timeout: float = 10.0) -> None:
        """QoS 1 subscribe; wait for the SUBACK."""
        with self._cond:
            before = self._subacks
        self._client.subscribe(topic, qos=1)
        if not self.wait(lambda: self._subacks > before, timeout):
            raise TimeoutError(f"no SUBACK for {topic}")

    def publish(
        self, topic: str, payload: bytes, *, retain: bool = False, props: Properties | None = None
    ) -> None:
        """QoS 1 publish; wait until it is sent."""
        info = self._client.publish(topic, payload, qos=1, retain=retain, properties=props)
        info.wait_for_publish(10.0)

    def json_on(self, topic: str) -> list[dict[str, Any]]:
        """Every JSON object received on *topic*, oldest first."""
        out: list[dict[str, Any]] = []
        for t, payload, _ in list(self.messages):
            if t == topic and payload:
                try:
                    value = json.loads(payload)
                except ValueError:
                    continue
                if isinstance(value, dict):
                    out.append(value)
        return out

    def close(self) -> None:
        """Disconnect."""
        self._client.disconnect()
        self._client.loop_stop()

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
        """Send command *name* and wait for the reply to this request.

        MQTT 5: the reply carries our correlation data. MQTT 3.1.1: the request
        carries a ``request_id`` and the reply comes on ``…/response/{request_id}``.
        """
        topic = f"{prefix(target)}/cmd/{name}"
        correlation = secrets.token_bytes(8)
        props: Properties | None = None
        if self.mqtt5:
            response_topic = f"{topic}/response"
            props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            props.ResponseTopic = response_topic
            props.CorrelationData = correlation
        else:
            response_topic = f"{topic}/response/{correlation.hex()}"
            args = {**args, "request_id": correlation.hex()}
        self.subscribe(response_topic)

        def reply() -> dict[str, Any] | None:
            for t, payload, p in self.messages:
                if t != response_topic:
                    continue
                if self.mqtt5 and getattr(p, "CorrelationData", None) != correlation:
                    continue
                value: dict[str, Any] = json.loads(payload)
                return value
            return None

        self.publish(topic, json.dumps(args).encode(), props=props)
        self.wait(lambda: reply() is not None, timeout)
        return reply()

    def health(self, wait_s: float) -> dict[str, dict[str, Any]]:
        """``SITE/DEVICE`` → latest health message heard within *wait_s*, plus retained states."""
        self.subscribe("scanfleet/v1/+/+/health")
        self.subscribe("scanfleet/v1/+/+/state")
        time.sleep(wait_s)
        out: dict[str, dict[str, Any]] = {}
        for topic, payload, _ in list(self.messages):
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
