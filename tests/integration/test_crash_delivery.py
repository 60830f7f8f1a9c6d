"""Nothing is lost when the publishing process is SIGKILLed and the broker restarts.

A child process journals scans and publishes them; it is killed with SIGKILL at
random moments (and restarted on the same journal) at least 20 times, while the
broker is restarted with SIGTERM (persistence on) several times. A backend-style
subscriber with a persistent session collects everything. At the end every record
whose append returned has arrived, seq has no gaps, duplicates only repeat an id
with the same bytes, the chain links, and the journal verifies.
"""

from __future__ import annotations

import hashlib
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import rfc8785

from scanfleet.daemon.core.alarms import AlarmSet
from scanfleet.daemon.core.backoff import Backoff
from scanfleet.daemon.core.config import BrokerConfig
from scanfleet.daemon.core.identity import Identity
from scanfleet.daemon.core.model import GENESIS_HASH
from scanfleet.daemon.journal.journal import Journal
from scanfleet.daemon.publish.envelope import DeviceState, ScanBatch
from scanfleet.daemon.publish.publisher import Publisher
from support.broker import Mosquitto
from support.mqtt import Collector

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CHILD = Path(__file__).resolve().parent.parent / "support" / "publisher_child.py"
SITE = "crash-site"
DEVICE = "sf-00000000dead"
KILLS = 22
BROKER_RESTART_EVERY = 3


def reported_seqs(report: Path) -> set[int]:
    """Seqs the child promised durable (a torn last line is ignored)."""
    text = report.read_text(encoding="ascii") if report.exists() else ""
    return {int(line) for line in text.split("\n")[:-1] if line}


def connections(child_log: Path) -> int:
    """How often the child logged a successful connect."""
    return child_log.read_text(encoding="utf-8", errors="replace").count("connected to ")


def test_every_acknowledged_scan_arrives_despite_kills_and_broker_restarts(
    mosquitto_factory: Callable[..., Mosquitto], tmp_path: Path
) -> None:
    broker = mosquitto_factory()
    journal_path = tmp_path / "state" / "journal.sqlite3"
    report = tmp_path / "appended.txt"
    collector = Collector(broker.host, broker.port, "scanfleet/#", client_id="backend-crash")
    collector.client.reconnect_delay_set(1, 2)
    rng = random.Random(20261125)
    restarts = 0
    try:
        for kill in range(KILLS):
            with (tmp_path / f"child{kill}.log").open("wb") as log:
                child = subprocess.Popen(
                    [
                        sys.executable,
                        str(CHILD),
                        str(journal_path),
                        broker.url,
                        str(report),
                        str(kill),
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=log,
                )
                try:
                    time.sleep(rng.uniform(0.05, 1.4))
                    if kill % BROKER_RESTART_EVERY == BROKER_RESTART_EVERY - 1:
                        # SIGTERM (persistence saved) and a backlog builds while the broker
                        # is down; once the child is back and draining, the broker is
                        # restarted again under it, and the kill comes after that.
                        child_log = tmp_path / f"child{kill}.log"
                        broker.stop(signal.SIGTERM)
                        time.sleep(rng.uniform(0.5, 1.5))
                        connects = connections(child_log)
                        broker.start()
                        restarts += 1
                        deadline = time.monotonic() + 10
                        while connections(child_log) == connects and time.monotonic() < deadline:
                            time.sleep(0.002)
                        time.sleep(rng.uniform(0.0, 0.005))
                        broker.restart(signal.SIGTERM)
                        restarts += 1
                        time.sleep(rng.uniform(0.0, 0.6))
                finally:
                    child.send_signal(signal.SIGKILL)
                    child.wait(30)
            assert child.returncode == -signal.SIGKILL, (tmp_path / f"child{kill}.log").read_text()
        promised = reported_seqs(report)
        assert len(promised) > KILLS, "the children journaled scans between the kills"

        # A last, clean run drains whatever the killed children left undelivered.
        alarms = AlarmSet()
        with Journal.open(journal_path, DEVICE, alarms=alarms) as journal:
            publisher = Publisher(
                journal,
                BrokerConfig(url=broker.url),
                Identity(SITE, DEVICE),
                alarms,
                backoff=Backoff(initial=0.1, maximum=0.5),
            )
            publisher.start()
            try:
                assert publisher.wait_delivered(journal.last_seq, 60), "final drain"
            finally:
                publisher.stop(10)
            last_seq = journal.last_seq
            stored = {
                r.seq: r.payload for r in journal.read_after(0, limit=10**7, max_bytes=1 << 40)
            }
            verdict = journal.verify(full=True)
        assert verdict.ok, str(verdict)
        cli = subprocess.run(
            [
                sys.executable,
                "-m",
                "scanfleet.daemon",
                "verify",
                "--full",
                "--journal",
                str(journal_path),
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert cli.returncode == 0, cli.stdout + cli.stderr
        assert promised <= set(range(1, last_seq + 1))

        def have_all() -> bool:
            seen: set[int] = set()
            for topic, payload, _ in collector.messages:
                if topic.endswith("/scans"):
                    seen.update(s["seq"] for s in ScanBatch.model_validate_json(payload).scans)
            return seen >= set(range(1, last_seq + 1))

        assert collector.wait_for(have_all, 60), "every journaled record reaches the subscriber"
    finally:
        collector.close()

    with collector._cond:
        messages = list(collector.messages)
    by_seq: dict[int, list[dict[str, Any]]] = {}
    for topic, payload, _ in messages:
        if not topic.endswith("/scans"):
            continue
        batch = ScanBatch.model_validate_json(payload)  # contiguous, one device, in order
        for scan in batch.scans:
            assert stored[scan["seq"]] in payload, "records travel byte-identical"
            by_seq.setdefault(scan["seq"], []).append(scan)

    assert sorted(by_seq) == list(range(1, last_seq + 1)), "no gaps"
    assert promised <= set(by_seq), "every promised record arrived"
    prev = GENESIS_HASH
    for seq in range(1, last_seq + 1):
        copies = by_seq[seq]
        assert all(c == copies[0] for c in copies), f"duplicates of {seq} differ"
        record = copies[0]
        assert record["id"] == f"{DEVICE}:{seq}"
        assert rfc8785.dumps(record) == stored[seq]
        body = {k: v for k, v in record.items() if k != "hash"}
        assert hashlib.sha256(rfc8785.dumps(body)).hexdigest() == record["hash"]
        assert record["prev_hash"] == prev, f"chain broken at {seq}"
        prev = record["hash"]
    assert restarts >= 6
    duplicates = sum(len(c) - 1 for c in by_seq.values())
    print(f"crash test: {last_seq} records, {duplicates} duplicates", file=sys.stderr)
    final_state = [
        DeviceState.model_validate_json(p) for t, p, _ in messages if t.endswith("/state")
    ]
    assert final_state, "the retained state was published"
    assert any(not s.online and s.journal is None for s in final_state), (
        "a killed publisher's will (online: false, no journal figures) reached the backend"
    )
    assert final_state[-1].online is False, "a clean stop leaves the device offline"
