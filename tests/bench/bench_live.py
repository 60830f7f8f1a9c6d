"""Benchmark ``live``: how soon a live scan reaches the broker at 20 scans/s (goal p95 <= 5 ms).

``publisher``: one process holds a journal (FULL sync, as the daemon) and a publisher
with the daemon's default settings connected to a private mosquitto. A producer
thread journals one scan every 50 ms through ``Journal.append`` and wakes the
publisher as the pipeline does. Per scan: ``commit_to_puback`` runs from the moment
``append`` returned (the record is committed and fsynced) to the PUBACK of the
batch that carried it, as the publisher's ack listener sees it (0 when the PUBACK
came first); ``append_to_puback`` includes the commit itself.

Baseline, same run, same broker (``paho_*``): plain paho-mqtt (its own network
thread, default settings) publishing a message of the same size at QoS 1 every 50 ms,
timed from ``publish()`` to ``on_publish``: the floor any publisher on this machine
and broker could reach, and a gauge of how much of the tail is the machine's load.
``ratio_p95`` = commit_to_puback p95 / paho p95.

``daemon`` (the view from outside): a real ``scanfleet run`` with one serial scanner
on a pseudo-terminal. A scan is written to the pty every 50 ms; a QoS 1 subscriber
on the device's scans topic timestamps each arrival. ``pty_to_subscriber`` runs from
the write to the arrival of the first message carrying that scan (the broker
forwards it to the subscriber as it sends the PUBACK to the daemon); it is split at
the record's ``t_mono`` (when the driver read the frame) into ``pty_to_read`` and
``read_to_subscriber``.

SCANFLEET_BENCH_LIVE_N overrides the number of scans per case (default 400, 20 s).
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from bench_drain import DEVICE, SITE, mosquitto_executable, percentile_ms
from paho.mqtt.enums import CallbackAPIVersion

from scanfleet.daemon.core.alarms import AlarmSet
from scanfleet.daemon.core.config import BrokerConfig, PublisherConfig
from scanfleet.daemon.core.identity import Identity
from scanfleet.daemon.journal.journal import Journal
from scanfleet.daemon.publish.publisher import Publisher
from support.broker import Mosquitto, running_mosquitto
from support.scans import make_scan_body

N = int(os.environ.get("SCANFLEET_BENCH_LIVE_N", "400"))
INTERVAL = 0.05
WARMUP = 10
"""Scans sent before measuring (first connection, first-use imports, caches)."""


def _summary(prefix: str, values: list[float]) -> dict[str, Any]:
    ordered = sorted(values)
    return {
        f"{prefix}_p50_ms": percentile_ms(ordered, 0.5),
        f"{prefix}_p95_ms": percentile_ms(ordered, 0.95),
        f"{prefix}_p99_ms": percentile_ms(ordered, 0.99),
        f"{prefix}_max_ms": percentile_ms(ordered, 1.0),
    }


def publisher_case(workdir: Path, broker: Mosquitto) -> dict[str, Any]:
    """Journal commit to PUBACK, in one process, at 20 scans/s."""
    committed: dict[int, tuple[float, float]] = {}
    acked: dict[int, float] = {}
    lock = threading.Lock()

    def on_ack(first_seq: int, last_seq: int) -> None:
        now = time.perf_counter()
        with lock:
            for seq in range(first_seq, last_seq + 1):
                acked.setdefault(seq, now)

    defaults = PublisherConfig()
    with Journal.open(workdir / "journal.sqlite3", DEVICE, max_bytes=1 << 30) as journal:
        publisher = Publisher(
            journal,
            BrokerConfig(url=broker.url),
            Identity(SITE, DEVICE),
            AlarmSet(),
            live_lane=defaults.live_lane,
            max_batch_scans=defaults.max_batch_scans,
            max_batch_bytes=defaults.max_batch_bytes,
            ack_listener=on_ack,
        )
        publisher.start()
        try:
            deadline = time.monotonic() + 15
            while not publisher.connected:
                if time.monotonic() > deadline:
                    raise RuntimeError("publisher did not connect")
                time.sleep(0.01)
            rng = random.Random(20)
            next_at = time.perf_counter()
            for i in range(WARMUP + N):
                began = time.perf_counter()
                record = journal.append(make_scan_body(i, rng))
                done = time.perf_counter()
                publisher.wake()  # what the pipeline does after every append
                if i >= WARMUP:
                    with lock:
                        committed[record["seq"]] = (began, done)
                next_at += INTERVAL
                time.sleep(max(0.0, next_at - time.perf_counter()))
            if not publisher.wait_delivered(journal.last_seq, 30):
                raise RuntimeError("live scans not delivered")
            last = journal.read_after(journal.last_seq - 1, limit=1, max_bytes=1 << 20)
            payload_size = len(last[0].payload)
        finally:
            publisher.stop(10)
    commit_to_ack = [max(0.0, acked[s] - done) for s, (_, done) in committed.items()]
    append_to_ack = [acked[s] - began for s, (began, _) in committed.items()]
    append = [done - began for began, done in committed.values()]
    baseline = paho_baseline(broker, payload_size, len(committed))
    ours = _summary("commit_to_puback", commit_to_ack)
    floor = _summary("paho", baseline)
    return {
        "case": "publisher",
        "scans": len(committed),
        "rate_per_s": round(1 / INTERVAL),
        **ours,
        **_summary("append_to_puback", append_to_ack),
        **_summary("append", append),
        **floor,
        "ratio_p95": round(ours["commit_to_puback_p95_ms"] / max(floor["paho_p95_ms"], 0.1), 2),
    }


def paho_baseline(broker: Mosquitto, payload_size: int, count: int) -> list[float]:
    """publish() to PUBACK of plain paho at QoS 1, one message every INTERVAL."""
    started: dict[int, float] = {}
    latencies: list[float] = []
    lock = threading.Lock()
    connected = threading.Event()

    def on_publish(client: mqtt.Client, userdata: Any, mid: int, rc: Any, props: Any) -> None:
        now = time.perf_counter()
        with lock:
            began = started.pop(mid, None)
            if began is not None:
                latencies.append(now - began)

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-live-paho")
    client.on_publish = on_publish
    client.on_connect = lambda *args: connected.set()
    client.connect(broker.host, broker.port)
    client.loop_start()
    try:
        if not connected.wait(10):
            raise RuntimeError("baseline client did not connect")
        payload = b"x" * payload_size
        next_at = time.perf_counter()
        for i in range(WARMUP + count):
            with lock:
                began = time.perf_counter()
                info = client.publish("bench/live-baseline", payload, qos=1)
                if i >= WARMUP:
                    started[info.mid] = began
            next_at += INTERVAL
            time.sleep(max(0.0, next_at - time.perf_counter()))
        deadline = time.monotonic() + 10
        while started and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        client.disconnect()
        client.loop_stop()
    return latencies


def _trace_code(i: int) -> str:
    return f"81{i:018d}"


def daemon_case(workdir: Path, broker: Mosquitto) -> dict[str, Any]:
    """pty write to the subscriber's receipt, through a real daemon, at 20 scans/s."""
    master, slave = os.openpty()
    config = workdir / "scanfleet.toml"
    config.write_text(
        f'[identity]\nsite = "{SITE}"\ndevice = "{DEVICE}"\n\n'
        f'[paths]\nstate_dir = "{workdir / "state"}"\n\n'
        f'[broker]\nurl = "{broker.url}"\n\n'
        f'[[devices]]\nname = "counter"\ndriver = "serial"\nport = "{os.ttyname(slave)}"\n'
        'framing = "cr"\n',
        encoding="utf-8",
    )
    arrived: dict[str, float] = {}
    read_at: dict[str, float] = {}
    lock = threading.Lock()
    subscribed = threading.Event()

    def on_message(client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        now = time.perf_counter()
        with lock:
            for scan in json.loads(msg.payload)["scans"]:
                arrived.setdefault(scan.get("value") or "", now)
                read_at.setdefault(scan.get("value") or "", scan.get("t_mono") or now)

    subscriber = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-live-subscriber")
    subscriber.on_message = on_message
    subscriber.on_subscribe = lambda *args: subscribed.set()
    subscriber.connect(broker.host, broker.port)
    subscriber.subscribe(f"scanfleet/v1/{SITE}/{DEVICE}/scans", qos=1)
    subscriber.loop_start()
    log_path = workdir / "daemon.log"
    argv = [sys.executable, "-m", "scanfleet.daemon", "run", "--config", str(config)]
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [*argv, "--view", "off"], stdin=subprocess.DEVNULL, stdout=log, stderr=log
        )
    written: dict[str, float] = {}
    try:
        if not subscribed.wait(10):
            raise RuntimeError("subscriber not subscribed")
        deadline = time.monotonic() + 60
        while b"ready:" not in log_path.read_bytes():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"daemon not ready: {log_path.read_text()[-2000:]}")
            time.sleep(0.05)
        next_at = time.perf_counter()
        for i in range(WARMUP + N):
            code = _trace_code(i)
            began = time.perf_counter()
            os.write(master, code.encode() + b"\r")
            if i >= WARMUP:
                written[code] = began
            next_at += INTERVAL
            time.sleep(max(0.0, next_at - time.perf_counter()))
        deadline = time.monotonic() + 30
        while True:
            with lock:
                if all(code in arrived for code in written):
                    break
            if time.monotonic() > deadline:
                raise RuntimeError("not every scan reached the subscriber")
            time.sleep(0.05)
    finally:
        proc.terminate()
        proc.wait(30)
        subscriber.loop_stop()
        subscriber.disconnect()
        os.close(master)
        os.close(slave)
    latencies = [arrived[code] - began for code, began in written.items()]
    return {
        "case": "daemon",
        "scans": len(latencies),
        "rate_per_s": round(1 / INTERVAL),
        **_summary("pty_to_subscriber", latencies),
        # The split at the driver's read time (the record's t_mono: CLOCK_MONOTONIC,
        # as perf_counter here): framing on one side, pipeline + journal + publish on
        # the other.
        **_summary("pty_to_read", [read_at[c] - began for c, began in written.items()]),
        **_summary("read_to_subscriber", [arrived[c] - read_at[c] for c in written]),
    }


def run() -> Iterator[dict[str, Any]]:
    """Two JSON lines: in-process commit to PUBACK, and a real daemon seen from outside."""
    with tempfile.TemporaryDirectory(prefix="scanfleet-bench-live-") as tmp:
        workdir = Path(tmp)
        with running_mosquitto(mosquitto_executable(), workdir / "broker") as broker:
            yield publisher_case(workdir, broker)
            yield daemon_case(workdir, broker)
