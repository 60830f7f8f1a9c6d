"""Helpers for hub tests: chained records as a terminal makes them, ingest processes, queries."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import psycopg
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from scanfleet.daemon.core.model import GENESIS_HASH
from scanfleet.daemon.journal.codec import format_time, seal
from scanfleet.daemon.publish.envelope import build_batch, scans_topic


class Chain:
    """A device's records made with the daemon's own sealing code (hash, prev_hash, id)."""

    def __init__(self, site: str, device: str, start: datetime | None = None) -> None:
        self.site = site
        self.device = device
        self.prev = GENESIS_HASH
        self.seq = 0
        self.payloads: dict[int, bytes] = {}
        self.start = start or datetime(2026, 12, 1, 8, 0, tzinfo=UTC)

    def add(self, **body: Any) -> bytes:
        """Seal the next record (a scan unless *body* says otherwise)."""
        self.seq += 1
        fields: dict[str, Any] = {
            "schema": "scanfleet.scan/1",
            "type": "scan",
            "time": format_time(self.start + timedelta(seconds=len(self.payloads) + 1)),
            "kind": "drug_standard_code",
            "value": f"8{self.seq:019d}",
            "verdict": "accepted",
            "operation": "retail_sale",
        }
        fields.update(body)
        record, payload = seal(fields, self.device, self.seq, self.prev)
        self.prev = record["hash"]
        self.payloads[self.seq] = payload
        return payload

    def batch(self, first: int, last: int) -> bytes:
        """The envelope of records *first* … *last*."""
        return build_batch(self.device, first, [self.payloads[s] for s in range(first, last + 1)])

    @property
    def topic(self) -> str:
        """This device's scans topic."""
        return scans_topic(self.site, self.device)


def hub_command(*args: str) -> list[str]:
    """``python -m scanfleet.daemon hub ARGS`` (the installed CLI, this interpreter)."""
    return [sys.executable, "-m", "scanfleet.daemon", "--log-level", "debug", "hub", *args]


def start_ingest(
    dsn: str, broker_url: str, tmp: Path, *extra: str, name: str = "ingest"
) -> subprocess.Popen[bytes]:
    """A ``scanfleet hub ingest`` process logging to ``tmp/NAME.log``."""
    with (tmp / f"{name}.log").open("ab") as log:
        return subprocess.Popen(
            hub_command("ingest", "--database", dsn, "--broker", broker_url, *extra),
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )


def stop(proc: subprocess.Popen[bytes], timeout: float = 30.0) -> int:
    """SIGTERM *proc* and wait for it."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    return proc.wait(timeout)


def query(dsn: str, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
    """Run *sql* in its own autocommit connection; the rows."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        cur = conn.execute(sql, params)
        return cur.fetchall() if cur.description else []


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll *predicate* until true; fail with *what* after *timeout* seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.1)


class Publisher:
    """A plain MQTT 5 client that publishes what a terminal would (QoS 1, waits for PUBACK)."""

    def __init__(self, host: str, port: int, client_id: str = "test-terminal") -> None:
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, protocol=MQTTProtocolVersion.MQTTv5
        )
        self.client.connect(host, port)
        self.client.loop_start()

    def send(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        """Publish and wait until the broker acknowledged."""
        self.client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(10)

    def close(self) -> None:
        """Disconnect."""
        self.client.disconnect()
        self.client.loop_stop()


def state_message(device: str, site: str, *, last_seq: int, delivered_seq: int) -> dict[str, Any]:
    """A terminal's retained state (scanfleet.state/1) with these journal figures."""
    return {
        "schema": "scanfleet.state/1",
        "device": device,
        "site": site,
        "online": True,
        "version": "0.1.0",
        "boot_id": None,
        "journal": {
            "depth": last_seq - delivered_seq,
            "last_seq": last_seq,
            "delivered_seq": delivered_seq,
            "oldest_undelivered_age_s": None,
        },
        "alarms": [],
        "time": "2026-12-07T10:00:00Z",
    }
