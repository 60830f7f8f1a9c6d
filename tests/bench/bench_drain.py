"""Benchmark ``drain``: a 100 000-scan backlog to a real mosquitto, against plain paho.

The backlog is appended untimed through ``Journal.append`` (8 threads, group
committed) with the simulator's default code mix. The publisher (default settings:
500 scans / 256 KiB batches, window 8, strict seq order) is timed from its first
publish to the PUBACK that completes seq N. Meanwhile a live scan is appended every
50 ms and its latency from append to the PUBACK of the first batch carrying it is
recorded (``live_p99_ms_during_drain``): in strict order a live scan waits for the
whole backlog ahead of it. The same backlog (a copy of the file) is drained again
with ``live_lane=True`` (``live_lane_*`` fields), where live scans overtake it.

Baseline, same run, same broker: plain paho-mqtt (default client settings: MQTT
3.1.1, 20 in flight, unlimited queue) publishing N messages at QoS 1, each the
median size of one serialized scan, timed from the first publish to the last
PUBACK. The only addition is a bound of 60 000 messages outstanding: more would
collide on paho's 16-bit message ids (paho issue #377) and never be acknowledged.

Neither side has a subscriber (the broker answers "no matching subscribers"), so
both pay the same broker cost per message. ``ratio`` = scans_per_s / baseline;
target >= 2. SCANFLEET_BENCH_DRAIN_N overrides N.
"""

from __future__ import annotations

import os
import random
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from scanfleet.daemon.core.alarms import AlarmSet
from scanfleet.daemon.core.config import BrokerConfig
from scanfleet.daemon.core.identity import Identity
from scanfleet.daemon.journal.journal import Journal
from scanfleet.daemon.publish.publisher import Publisher
from support.broker import MOSQUITTO_DIRS, running_mosquitto
from support.scans import make_scan_body

SITE = "bench"
DEVICE = "sf-0000000d7a1b"
N = int(os.environ.get("SCANFLEET_BENCH_DRAIN_N", "100000"))
APPENDERS = 8
LIVE_INTERVAL = 0.05
PAHO_MID_BOUND = 60_000


def mosquitto_executable() -> str:
    """Path of mosquitto (the bench needs a real one)."""
    for directory in (*os.environ.get("PATH", "").split(os.pathsep), *MOSQUITTO_DIRS):
        candidate = Path(directory) / "mosquitto"
        if candidate.exists():
            return str(candidate)
    raise RuntimeError("mosquitto is not installed (make setup installs it)")


def build_backlog(journal: Journal, count: int, threads: int = APPENDERS) -> None:
    """Append *count* realistic scans through the normal, durable path."""
    per = [count // threads + (1 if k < count % threads else 0) for k in range(threads)]

    def work(k: int) -> None:
        rng = random.Random(k)
        for i in range(per[k]):
            journal.append(make_scan_body(k * count + i, rng))

    workers = [threading.Thread(target=work, args=(k,)) for k in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()


def median_record(journal: Journal) -> bytes:
    """The stored record of median size."""
    payloads = [r.payload for r in journal.read_after(0, limit=journal.last_seq, max_bytes=1 << 40)]
    payloads.sort(key=len)
    return payloads[len(payloads) // 2]


def drain(journal: Journal, url: str, *, live_lane: bool = False) -> dict[str, Any]:
    """Drain the backlog with the publisher; returns timing and live latencies.

    A live scan is appended every 50 ms from the first publish until the backlog is
    delivered; its latency runs from the start of its append to the PUBACK of the
    first batch that carried it.
    """
    backlog = journal.last_seq
    started_at: dict[int, float] = {}
    latencies: dict[int, float] = {}
    lock = threading.Lock()

    def on_ack(first_seq: int, last_seq: int) -> None:
        now = time.perf_counter()
        with lock:
            for seq in [s for s in started_at if first_seq <= s <= last_seq]:
                latencies[seq] = now - started_at.pop(seq)

    publisher = Publisher(
        journal,
        BrokerConfig(url=url),
        Identity(SITE, DEVICE),
        AlarmSet(),
        live_lane=live_lane,
        ack_listener=on_ack,
    )
    done = threading.Event()

    def live() -> None:
        rng = random.Random(4242)
        i = 0
        while not done.is_set():
            began = time.perf_counter()
            with lock:
                # Registered before the append returns: the ack may beat the return.
                started_at[journal.last_seq + 1] = began
            record = journal.append(make_scan_body(backlog + i, rng))
            with lock:
                if record["seq"] not in started_at and record["seq"] not in latencies:
                    started_at[record["seq"]] = began
            i += 1
            done.wait(max(0.0, LIVE_INTERVAL - (time.perf_counter() - began)))

    publisher.start()
    while publisher.counters.batches_published == 0:
        time.sleep(0.0002)
    first_publish = time.perf_counter()
    live_thread = threading.Thread(target=live, name="live-scans")
    live_thread.start()
    if not publisher.wait_delivered(backlog, 600):
        raise RuntimeError(f"drain incomplete: delivered {publisher.delivered_seq} of {backlog}")
    elapsed = time.perf_counter() - first_publish
    done.set()
    live_thread.join(10)
    if not publisher.wait_delivered(journal.last_seq, 60):
        raise RuntimeError("live scans not delivered after the drain")
    publisher.stop(10)
    return {
        "elapsed": elapsed,
        "batches": publisher.counters.batches_published,
        "live": sorted(latencies.values()),
    }


def percentile_ms(values: list[float], q: float) -> float | None:
    """The q-quantile of sorted *values* in ms (nearest rank), None when empty."""
    if not values:
        return None
    return round(values[min(len(values) - 1, int(len(values) * q))] * 1000, 1)


def paho_baseline(host: str, port: int, payload: bytes, count: int) -> float:
    """Messages per second of plain paho at QoS 1, first publish to last PUBACK."""
    acked = 0
    all_acked = threading.Event()
    slots = threading.BoundedSemaphore(PAHO_MID_BOUND)
    lock = threading.Lock()

    def on_publish(client: mqtt.Client, userdata: Any, mid: int, rc: Any, props: Any) -> None:
        nonlocal acked
        slots.release()
        with lock:
            acked += 1
            if acked == count:
                all_acked.set()

    connected = threading.Event()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="paho-baseline")
    client.on_publish = on_publish
    client.on_connect = lambda *args: connected.set()
    client.connect(host, port)
    client.loop_start()
    try:
        if not connected.wait(10):
            raise RuntimeError("baseline client did not connect")
        started = time.perf_counter()
        for _ in range(count):
            slots.acquire()
            client.publish("bench/baseline", payload, qos=1)
        if not all_acked.wait(600):
            raise RuntimeError(f"baseline: only {acked} of {count} PUBACKs")
        return count / (time.perf_counter() - started)
    finally:
        client.disconnect()
        client.loop_stop()


def run() -> Iterator[dict[str, Any]]:
    """One JSON line: the drain against the paho baseline, strict order and live lane."""
    with tempfile.TemporaryDirectory(prefix="scanfleet-bench-drain-") as tmp:
        workdir = Path(tmp)
        first, second = workdir / "journal.sqlite3", workdir / "journal-copy.sqlite3"
        with Journal.open(first, DEVICE, max_bytes=4 << 30) as journal:
            t = time.perf_counter()
            build_backlog(journal, N)
            print(
                f"bench drain: backlog of {N} built in {time.perf_counter() - t:.1f} s",
                file=sys.stderr,
            )
            payload = median_record(journal)
        # close() checkpointed the WAL: the file alone is the whole journal.
        shutil.copyfile(first, second)
        with running_mosquitto(mosquitto_executable(), workdir / "broker") as broker:
            with Journal.open(first, DEVICE, max_bytes=4 << 30) as journal:
                strict = drain(journal, broker.url)
            with Journal.open(second, DEVICE, max_bytes=4 << 30) as journal:
                lane = drain(journal, broker.url, live_lane=True)
            baseline = paho_baseline(broker.host, broker.port, payload, N)
    scans_per_s = N / strict["elapsed"]
    yield {
        "scans": N,
        "scans_per_s": round(scans_per_s),
        "drain_s": round(strict["elapsed"], 3),
        "batches": strict["batches"],
        "median_scan_bytes": len(payload),
        "paho_baseline_msgs_per_s": round(baseline),
        "ratio": round(scans_per_s / baseline, 2),
        "live_samples": len(strict["live"]),
        "live_p50_ms_during_drain": percentile_ms(strict["live"], 0.5),
        "live_p99_ms_during_drain": percentile_ms(strict["live"], 0.99),
        "live_lane_scans_per_s": round(N / lane["elapsed"]),
        "live_lane_samples": len(lane["live"]),
        "live_lane_p50_ms_during_drain": percentile_ms(lane["live"], 0.5),
        "live_lane_p99_ms_during_drain": percentile_ms(lane["live"], 0.99),
    }
