"""Benchmark ``brokers``: the drain of ``bench_drain`` against every broker of the matrix.

One backlog of N scans is built once; a copy of it is drained (default publisher
settings, strict order, ``protocol = "auto"``) against a private mosquitto (MQTT 5),
RabbitMQ 3.10's MQTT plugin and NATS 2.9's MQTT listener (both 3.1.1). Against each
broker, in the same run, plain paho-mqtt publishes N messages of the median scan size
at QoS 1 (``bench_drain.paho_baseline``); ``ratio`` = scans_per_s / baseline. A broker
that is not installed is reported as skipped. SCANFLEET_BENCH_BROKERS_N overrides N.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from bench_drain import DEVICE, build_backlog, drain, median_record, paho_baseline

from scanfleet.daemon.journal.journal import Journal
from support.broker import MOSQUITTO_DIRS, running_mosquitto
from support.nats import running_nats
from support.rabbitmq import RABBITMQ_SERVER, running_rabbitmq

N = int(os.environ.get("SCANFLEET_BENCH_BROKERS_N", "50000"))


def _mosquitto(workdir: Path) -> contextlib.AbstractContextManager[Any]:
    executable = shutil.which("mosquitto", path=os.pathsep.join(MOSQUITTO_DIRS))
    if executable is None:
        raise FileNotFoundError("mosquitto")
    return running_mosquitto(executable, workdir)


def _rabbitmq(workdir: Path) -> contextlib.AbstractContextManager[Any]:
    if not os.access(RABBITMQ_SERVER, os.X_OK):
        raise FileNotFoundError(RABBITMQ_SERVER)
    return running_rabbitmq(workdir)


def _nats(workdir: Path) -> contextlib.AbstractContextManager[Any]:
    if shutil.which("nats-server") is None:
        raise FileNotFoundError("nats-server")
    return running_nats(workdir)


BROKERS: dict[str, tuple[str, Callable[[Path], contextlib.AbstractContextManager[Any]]]] = {
    "mosquitto": ("5", _mosquitto),
    "rabbitmq": ("3.1.1", _rabbitmq),
    "nats": ("3.1.1", _nats),
}


def run() -> Iterator[dict[str, Any]]:
    """One JSON line per broker: drain rate, paho baseline, ratio."""
    with tempfile.TemporaryDirectory(prefix="scanfleet-bench-brokers-") as tmp:
        workdir = Path(tmp)
        backlog = workdir / "backlog.sqlite3"
        with Journal.open(backlog, DEVICE, max_bytes=4 << 30) as journal:
            started = time.perf_counter()
            build_backlog(journal, N)
            print(
                f"bench brokers: backlog of {N} built in {time.perf_counter() - started:.1f} s",
                file=sys.stderr,
            )
            payload = median_record(journal)
        for name, (protocol, start) in BROKERS.items():
            copy = workdir / f"journal-{name}.sqlite3"
            shutil.copyfile(backlog, copy)
            try:
                context = start(workdir / name)
            except FileNotFoundError as err:
                yield {"broker": name, "skipped": f"not installed: {err}"}
                continue
            with context as broker:
                with Journal.open(copy, DEVICE, max_bytes=4 << 30) as journal:
                    result = drain(journal, broker.url)
                baseline = paho_baseline(broker.host, broker.port, payload, N)
            scans_per_s = N / result["elapsed"]
            yield {
                "broker": name,
                "protocol": protocol,
                "scans": N,
                "scans_per_s": round(scans_per_s),
                "drain_s": round(result["elapsed"], 3),
                "paho_baseline_msgs_per_s": round(baseline),
                "ratio": round(scans_per_s / baseline, 2),
            }
            copy.unlink()
