"""The publisher against a real mosquitto: order, state, refusals, status.

Every broker here is a real mosquitto process started by the fixtures; the
subscriber is a separate paho client with a persistent session, as the backend
contract asks of consumers.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from scanfleet.daemon.core.alarms import AlarmSet
from scanfleet.daemon.core.backoff import Backoff
from scanfleet.daemon.core.config import BrokerConfig
from scanfleet.daemon.core.identity import Identity
from scanfleet.daemon.journal.journal import Journal
from scanfleet.daemon.publish.envelope import DeviceState, ScanBatch
from scanfleet.daemon.publish.publisher import ALARM_REFUSED, Publisher
from scanfleet.daemon.publish.status import STATUS_FILE
from support.broker import Mosquitto
from support.mqtt import Collector
from support.scans import make_scan_body

pytestmark = pytest.mark.integration

SITE = "clinic-7"
DEVICE = "sf-00000000c0de"
SCANS = f"scanfleet/v1/{SITE}/{DEVICE}/scans"
STATE = f"scanfleet/v1/{SITE}/{DEVICE}/state"


@pytest.fixture
def broker(mosquitto_factory: Callable[..., Mosquitto]) -> Mosquitto:
    """A persistent mosquitto that can write its database."""
    return mosquitto_factory()


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[Journal]:
    """An empty journal file for DEVICE."""
    with Journal.open(tmp_path / "state" / "journal.sqlite3", DEVICE) as j:
        yield j


def append_scans(journal: Journal, count: int, seed: int = 1) -> None:
    rng = random.Random(seed)
    start = journal.last_seq
    for i in range(count):
        journal.append(make_scan_body(start + i, rng))


def make_publisher(
    journal: Journal, broker: Mosquitto, alarms: AlarmSet | None = None, **kwargs: Any
) -> Publisher:
    return Publisher(
        journal,
        BrokerConfig(url=broker.url, keepalive=10),
        Identity(SITE, DEVICE),
        alarms or AlarmSet(),
        backoff=Backoff(initial=0.2, maximum=1.0),
        status_path=journal.path.parent / STATUS_FILE,
        **kwargs,
    )


def envelopes(collector: Collector) -> list[tuple[bytes, ScanBatch]]:
    with collector._cond:
        raw = [p for t, p, _ in collector.messages if t == SCANS]
    return [(p, ScanBatch.model_validate_json(p)) for p in raw]


def states(collector: Collector) -> list[DeviceState]:
    with collector._cond:
        raw = [p for t, p, _ in collector.messages if t == STATE]
    return [DeviceState.model_validate_json(p) for p in raw]


def test_backlog_drains_in_seq_order_then_live_scans_go_out_one_per_batch(
    broker: Mosquitto, journal: Journal
) -> None:
    append_scans(journal, 3000)
    collector = Collector(broker.host, broker.port, "scanfleet/#", client_id="backend-1")
    publisher = make_publisher(journal, broker, max_batch_scans=100, window=4)
    publisher.start()
    try:
        assert publisher.wait_delivered(3000, 60)
        rng = random.Random(99)
        for i in range(5):
            record = journal.append(make_scan_body(3000 + i, rng))
            assert publisher.wait_delivered(record["seq"], 30)
        assert collector.wait_for(lambda: len(collector.scans()) >= 3005, 30)
    finally:
        publisher.stop(10)
        collector.close()
    batches = envelopes(collector)
    seqs = [scan["seq"] for _, batch in batches for scan in batch.scans]
    assert seqs == list(range(1, 3006)), "every record once, in seq order"
    assert max(b.last_seq - b.first_seq + 1 for _, b in batches) == 100
    assert all(b.first_seq == b.last_seq for _, b in batches[-5:]), "live: one scan per batch"
    assert journal.delivered_seq == 3005
    stored = journal.read_after(0, limit=3005, max_bytes=1 << 30)
    payloads = b"".join(raw for raw, _ in batches)
    assert all(r.payload in payloads for r in stored), "records arrive byte-identical"


def test_state_is_retained_online_with_journal_figures_then_offline_after_stop(
    broker: Mosquitto, journal: Journal
) -> None:
    append_scans(journal, 10)
    publisher = make_publisher(journal, broker)
    publisher.start()
    assert publisher.wait_delivered(10, 30)
    early = Collector(broker.host, broker.port, STATE, client_id="watcher-1")
    try:
        assert early.wait_for(lambda: any(s.online for s in states(early)), 10)
        birth = next(s for s in states(early) if s.online)
        assert birth.device == DEVICE
        assert birth.site == SITE
        assert birth.journal is not None
        assert birth.journal.last_seq == 10
        publisher.stop(10)
        assert early.wait_for(lambda: not states(early)[-1].online, 10)
    finally:
        publisher.stop(1)
        early.close()
    late = Collector(broker.host, broker.port, STATE, client_id="watcher-2", persistent=False)
    try:
        assert late.wait_for(lambda: bool(late.messages), 10)
        _topic, payload, retained = late.messages[0]
        assert retained, "state is a retained message"
        assert DeviceState.model_validate_json(payload).online is False
    finally:
        late.close()


def run_status(state_dir: Path) -> dict[str, Any]:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "scanfleet.daemon",
            "status",
            "--state-dir",
            str(state_dir),
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    result: dict[str, Any] = json.loads(out.stdout)
    return result


def test_refused_publishes_stay_undelivered_raise_an_alarm_and_drain_once_the_acl_allows(
    mosquitto_factory: Callable[..., Mosquitto], journal: Journal, tmp_path: Path
) -> None:
    acl = tmp_path / "acl"
    acl.write_text(f"topic read scanfleet/#\ntopic write {STATE}\n", encoding="utf-8")
    broker = mosquitto_factory(extra_config=f"acl_file {acl}")
    append_scans(journal, 50)
    alarms = AlarmSet()
    collector = Collector(broker.host, broker.port, "scanfleet/#", client_id="backend-acl")
    publisher = make_publisher(journal, broker, alarms, max_batch_scans=20)
    publisher.start()
    try:
        deadline = time.monotonic() + 30
        while publisher.counters.batches_refused < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert publisher.counters.batches_refused >= 3, "refused, backed off, retried"
        assert journal.delivered_seq == 0
        assert publisher.delivered_seq == 0
        assert ALARM_REFUSED in alarms
        alarm = next(a for a in alarms.active() if a.code == ALARM_REFUSED)
        assert alarm.details["reason_code"] == 0x87

        def state_shows_alarm() -> bool:
            return any(
                a.code == ALARM_REFUSED and a.details["reason_code"] == 0x87
                for s in states(collector)
                for a in s.alarms
            )

        assert collector.wait_for(state_shows_alarm, 30), "retained state carries the alarm"
        status: dict[str, Any] = {}
        for _ in range(50):
            status = run_status(journal.path.parent)
            if any(a["code"] == ALARM_REFUSED for a in status["alarms"]):
                break
            time.sleep(0.2)
        assert any(a["code"] == ALARM_REFUSED for a in status["alarms"])
        assert status["journal"]["depth"] == 50
        assert status["journal"]["delivered_seq"] == 0
        assert status["daemon"]["running"] is True
        assert not envelopes(collector), "mosquitto forwards nothing it refused"

        acl.write_text(f"topic read scanfleet/#\ntopic write scanfleet/v1/{SITE}/#\n")
        broker.reload()
        assert publisher.wait_delivered(50, 60), "everything drains after the ACL is fixed"
        assert collector.wait_for(lambda: len(collector.scans()) >= 50, 30)
        deadline = time.monotonic() + 10
        while ALARM_REFUSED in alarms and time.monotonic() < deadline:
            time.sleep(0.05)
        assert ALARM_REFUSED not in alarms
    finally:
        publisher.stop(10)
        collector.close()
    assert sorted({s["seq"] for s in collector.scans()}) == list(range(1, 51))
    assert not any(a.code == ALARM_REFUSED for a in states(collector)[-1].alarms)
    after = run_status(journal.path.parent)
    assert after["journal"]["depth"] == 0
    assert after["alarms"] == []


def test_status_says_the_daemon_is_not_running_once_the_publisher_is_gone(
    broker: Mosquitto, journal: Journal
) -> None:
    append_scans(journal, 3)
    publisher = make_publisher(journal, broker)
    publisher.start()
    assert publisher.wait_delivered(3, 30)
    publisher.stop(5)
    status_path = journal.path.parent / STATUS_FILE
    document = json.loads(status_path.read_text(encoding="utf-8"))
    document["pid"] = 2**22 + 1  # beyond pid_max on Linux: certainly not alive
    status_path.write_text(json.dumps(document), encoding="utf-8")
    status = run_status(journal.path.parent)
    assert status["daemon"]["running"] is False
    assert status["daemon"]["pid_alive"] is False
    assert status["journal"]["last_seq"] == 3
    assert status["journal"]["depth"] == 0
    assert status["broker"]["state_when_last_seen"] == "stopped"


def test_with_the_live_lane_a_live_scan_overtakes_the_backlog_and_arrives_twice(
    broker: Mosquitto, journal: Journal
) -> None:
    backlog = 8000
    workers = [
        threading.Thread(target=append_scans, args=(journal, backlog // 4, k)) for k in range(4)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    collector = Collector(broker.host, broker.port, SCANS, client_id="backend-live")
    # Two-scan batches, one in flight: the drain takes thousands of round trips.
    publisher = make_publisher(journal, broker, max_batch_scans=2, window=1, live_lane=True)
    publisher.start()
    try:
        deadline = time.monotonic() + 30
        while publisher.delivered_seq < 100 and time.monotonic() < deadline:
            time.sleep(0.001)
        live = journal.append(make_scan_body(backlog, random.Random(5)))
        assert publisher.delivered_seq < backlog, "precondition: the drain is still going"
        assert publisher.wait_delivered(live["seq"], 120)
        assert collector.wait_for(lambda: len(collector.scans()) >= backlog + 2, 30)
    finally:
        publisher.stop(10)
        collector.close()
    arrivals = [batch for _, batch in envelopes(collector)]
    carrying_live = [i for i, b in enumerate(arrivals) if b.first_seq <= live["seq"] <= b.last_seq]
    carrying_end = next(i for i, b in enumerate(arrivals) if b.first_seq <= backlog <= b.last_seq)
    assert len(carrying_live) == 2, "once ahead of the backlog, once in order"
    assert carrying_live[0] < carrying_end, "the live scan overtook the backlog"
    copies = [s for b in arrivals for s in b.scans if s["seq"] == live["seq"]]
    assert copies[0] == copies[1]
    in_order = [s["seq"] for i, b in enumerate(arrivals) if i != carrying_live[0] for s in b.scans]
    assert in_order == list(range(1, live["seq"] + 1))
    assert publisher.counters.live_batches_published == 1


def test_the_connection_sends_without_nagle_delay(mosquitto: Mosquitto) -> None:
    # A scan published right after a state message (or while a batch awaits its
    # PUBACK) must not wait for the broker's TCP ACK of the earlier packet.
    import socket

    from scanfleet.daemon.core.mqtt import connect_client, paho_client

    client = paho_client("nodelay-check", "5")
    connect_client(client, mosquitto.host, mosquitto.port, keepalive=30)
    try:
        sock = client.socket()
        assert isinstance(sock, socket.socket)
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
    finally:
        client.disconnect()
        sock = client.socket()
        if sock is not None:
            sock.close()
