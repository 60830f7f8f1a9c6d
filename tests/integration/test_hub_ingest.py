"""``scanfleet hub ingest`` against a real mosquitto and a private PostgreSQL.

Records are sealed with the daemon's own code (tests/support/hub.py ``Chain``) and
published as a terminal publishes them; the hub runs as its real CLI process.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from paho.mqtt.client import MQTTMessage
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from scanfleet.daemon.journal.codec import canonical
from scanfleet.daemon.publish.envelope import build_batch
from scanfleet.hub.db import connect, upgrade
from support.broker import Mosquitto
from support.hub import Chain, Publisher, query, start_ingest, state_message, stop, wait_for
from support.postgres import PostgresCluster

pytestmark = pytest.mark.integration

SITE = "site-a"
DEVICE = "sf-00000000000a"


@dataclass
class Hub:
    """The system under test: broker, database, ingest process, a terminal's publisher."""

    dsn: str
    broker: Mosquitto
    ingest: subprocess.Popen[bytes]
    pub: Publisher
    tmp: Path

    def count(self, sql: str = "SELECT count(*) FROM records") -> int:
        return int(query(self.dsn, sql)[0][0])

    def log(self) -> str:
        return (self.tmp / "ingest.log").read_text(errors="replace")


@pytest.fixture
def hub(hub_database: str, mosquitto: Mosquitto, tmp_path: Path) -> Iterator[Hub]:
    with connect(hub_database) as conn:
        upgrade(conn)
    url = f"mqtt://{mosquitto.host}:{mosquitto.port}"
    proc = start_ingest(hub_database, url, tmp_path, "--workers", "2", "--no-repair")
    pub = Publisher(mosquitto.host, mosquitto.port)
    h = Hub(hub_database, mosquitto, proc, pub, tmp_path)
    # Subscribed: a retained state published now comes back through the plain subscription.
    wait_for(lambda: "subscribed" in h.log() and h.log().count("subscribed") >= 2, 30, "2 workers")
    yield h
    pub.close()
    assert stop(proc) == 0, h.log()


def test_every_record_is_stored_once_byte_for_byte_by_two_workers(hub: Hub) -> None:
    chain = Chain(SITE, DEVICE)
    for _ in range(120):
        chain.add()
    for first in range(1, 121, 10):
        hub.pub.send(chain.topic, chain.batch(first, first + 9))
    # Redelivery and a terminal's live lane both repeat records: no-ops.
    hub.pub.send(chain.topic, chain.batch(1, 60))
    wait_for(lambda: hub.count() == 120, 30, "120 records")
    wait_for(
        lambda: query(hub.dsn, "SELECT contiguous_seq FROM devices")[0][0] == 120, 10, "watermark"
    )
    rows = query(hub.dsn, "SELECT seq, payload, site, operation FROM records ORDER BY seq")
    assert [r[0] for r in rows] == list(range(1, 121))
    assert all(bytes(r[1]) == chain.payloads[r[0]] for r in rows)
    assert {r[2] for r in rows} == {SITE}
    assert {r[3] for r in rows} == {"retail_sale"}
    assert hub.count("SELECT count(*) FROM conflicts") == 0
    assert hub.count("SELECT count(*) FROM chain_breaks") == 0
    assert hub.count("SELECT count(*) FROM gaps WHERE status = 'open'") == 0


def test_same_id_with_other_bytes_goes_to_conflicts_and_raises_an_alert(hub: Hub) -> None:
    chain = Chain(SITE, DEVICE)
    chain.add()
    hub.pub.send(chain.topic, chain.batch(1, 1))
    wait_for(lambda: hub.count() == 1, 30, "the original")
    other = Chain(SITE, DEVICE)
    other.add(value="80000000000000099999")  # same id, a different (validly sealed) record
    hub.pub.send(other.topic, other.batch(1, 1))
    wait_for(lambda: hub.count("SELECT count(*) FROM conflicts") == 1, 30, "the conflict")
    (stored,) = query(hub.dsn, "SELECT payload FROM records")
    assert bytes(stored[0]) == chain.payloads[1]
    assert hub.count("SELECT count(*) FROM alerts WHERE kind = 'conflict'") == 1


def test_tampered_records_are_reported_as_chain_breaks(hub: Hub) -> None:
    chain = Chain(SITE, DEVICE)
    for _ in range(3):
        chain.add()
    hub.pub.send(chain.topic, chain.batch(1, 1))
    # Seq 2 altered on the way: its hash no longer matches its bytes; not stored.
    record = json.loads(chain.payloads[2])
    record["value"] = "80000000000000066666"
    hub.pub.send(chain.topic, build_batch(DEVICE, 2, [canonical(record)]))
    wait_for(lambda: hub.count("SELECT count(*) FROM chain_breaks") == 1, 30, "hash mismatch")
    assert query(hub.dsn, "SELECT kind, seq FROM chain_breaks") == [("hash_mismatch", 2)]
    # Seq 3 forged by someone who recomputed its hash but not the chain: a link break.
    forged = Chain(SITE, DEVICE)
    for _ in range(3):
        forged.add(value="80000000000000077777")
    hub.pub.send(chain.topic, chain.batch(2, 2))
    hub.pub.send(forged.topic, forged.batch(3, 3))
    wait_for(lambda: hub.count() == 3, 30, "3 records")
    wait_for(lambda: hub.count("SELECT count(*) FROM chain_breaks") == 2, 30, "link mismatch")
    assert ("link_mismatch", 3) in query(hub.dsn, "SELECT kind, seq FROM chain_breaks")


def test_a_journal_loss_record_explains_its_gap(hub: Hub) -> None:
    chain = Chain(SITE, DEVICE)
    for _ in range(10):
        chain.add()
    chain.seq = 15  # 11..15 lost with a damaged journal
    chain.add(
        schema="scanfleet.journal-loss/1",
        type="journal_loss",
        lost=[{"first_seq": 11, "last_seq": 15}],
        lost_count=5,
        salvaged=0,
        reason="data page damaged",
        quarantined_file="journal.sqlite3.corrupt-x",
        epoch=0,
        anchor_seq=10,
    )
    hub.pub.send(chain.topic, chain.batch(1, 10))
    hub.pub.send(chain.topic, build_batch(DEVICE, 16, [chain.payloads[16]]))
    wait_for(lambda: hub.count() == 11, 30, "11 records")
    wait_for(
        lambda: (
            query(
                hub.dsn,
                "SELECT status, from_seq, to_seq, reason FROM gaps WHERE status = 'explained'",
            )
            == [("explained", 11, 15, "data page damaged")]
        ),
        10,
        "the explained gap",
    )
    assert hub.count("SELECT count(*) FROM gaps WHERE status = 'open'") == 0
    assert hub.count("SELECT count(*) FROM chain_breaks") == 0
    assert query(hub.dsn, "SELECT contiguous_seq FROM devices") == [(16,)]


def test_retained_state_gives_the_devices_delivered_seq(hub: Hub) -> None:
    state = state_message(DEVICE, SITE, last_seq=42, delivered_seq=40)
    hub.pub.send(f"scanfleet/v1/{SITE}/{DEVICE}/state", json.dumps(state).encode(), retain=True)
    wait_for(
        lambda: (
            query(hub.dsn, "SELECT delivered_seq, produced_seq, online FROM devices")
            == [(40, 42, True)]
        ),
        30,
        "the device's state",
    )


def test_database_restart_loses_nothing(hub: Hub, postgres_cluster: PostgresCluster) -> None:
    chain = Chain(SITE, DEVICE)
    for _ in range(200):
        chain.add()
    hub.pub.send(chain.topic, chain.batch(1, 50))
    wait_for(lambda: hub.count() == 50, 30, "the first 50")
    postgres_cluster.stop("immediate")  # a crash: open transactions are lost
    for first in range(51, 201, 25):
        hub.pub.send(chain.topic, chain.batch(first, first + 24))
    postgres_cluster.start()
    wait_for(lambda: hub.count() == 200, 60, "all 200 after the restart")
    assert hub.count("SELECT count(DISTINCT id) FROM records") == 200


def test_broker_restart_subscribes_again(hub: Hub) -> None:
    chain = Chain(SITE, DEVICE)
    for _ in range(20):
        chain.add()
    hub.pub.send(chain.topic, chain.batch(1, 10))
    wait_for(lambda: hub.count() == 10, 30, "the first 10")
    hub.broker.restart()
    # mosquitto 2.0.11 forgets $share subscriptions across a restart: the hub must
    # subscribe again on reconnect, or these would go to "no matching subscribers".
    wait_for(lambda: hub.log().count("subscribed") >= 4, 30, "both workers back")
    hub.pub.client.reconnect()
    hub.pub.send(chain.topic, chain.batch(11, 20))
    wait_for(lambda: hub.count() == 20, 30, "the 10 sent after the restart")


def test_a_malformed_message_is_set_aside_with_an_alert_and_blocks_nothing(hub: Hub) -> None:
    chain = Chain(SITE, DEVICE)
    chain.add()
    hub.pub.send(chain.topic, b'{"schema":"scanfleet.scan-batch/1","scans":[{"broken"')
    hub.pub.send(f"scanfleet/v1/{SITE}/{DEVICE}/health", b"[1, 2]")
    hub.pub.send(chain.topic, chain.batch(1, 1))
    wait_for(lambda: hub.count() == 1, 30, "the good record after the bad ones")
    wait_for(
        lambda: hub.count("SELECT count(*) FROM alerts WHERE kind = 'bad_message'") == 2,
        30,
        "two bad_message alerts",
    )
    (details,) = query(
        hub.dsn, "SELECT details->>'payload' FROM alerts WHERE details->>'topic' LIKE '%%/scans'"
    )[0]
    assert '"broken"' in details


def test_records_the_broker_gave_nobody_are_fetched_by_resend(
    hub_database: str, mosquitto: Mosquitto, tmp_path: Path
) -> None:
    """The device delivered 1..15 but only 1..10 arrived; nothing else follows."""
    with connect(hub_database) as conn:
        upgrade(conn)
    chain = Chain(SITE, DEVICE)
    for _ in range(15):
        chain.add()
    prefix = f"scanfleet/v1/{SITE}/{DEVICE}"
    device = Publisher(mosquitto.host, mosquitto.port, DEVICE)
    requests: list[tuple[dict[str, object], Properties | None]] = []

    def on_message(client: object, userdata: object, msg: MQTTMessage) -> None:
        requests.append((json.loads(msg.payload), msg.properties))

    device.client.on_message = on_message
    device.client.subscribe(f"{prefix}/cmd/resend", qos=1)
    url = f"mqtt://{mosquitto.host}:{mosquitto.port}"
    proc = start_ingest(
        hub_database, url, tmp_path, "--repair-after", "0.5", "--repair-interval", "60"
    )
    try:
        wait_for(lambda: "subscribed" in (tmp_path / "ingest.log").read_text(), 30, "the hub")
        device.send(chain.topic, chain.batch(1, 10))
        state = state_message(DEVICE, SITE, last_seq=15, delivered_seq=15)
        device.send(f"{prefix}/state", json.dumps(state).encode(), retain=True)
        wait_for(lambda: bool(requests), 30, "a resend request")
        (args, props), *more = requests
        assert args == {"from_seq": 11, "to_seq": 15}
        assert more == []  # rate limited: one request per device per interval
        # Answer as a terminal does: the records on the scans topic, then the reply.
        device.send(chain.topic, chain.batch(11, 15))
        reply = Properties(PacketTypes.PUBLISH)
        reply.CorrelationData = getattr(props, "CorrelationData", None)
        body = {
            "schema": "scanfleet.cmd-response/1",
            "device": DEVICE,
            "command": "resend",
            "ok": True,
            "result": {"records": 5},
            "time": "2026-12-07T10:00:01Z",
        }
        topic = getattr(props, "ResponseTopic", None)
        assert isinstance(topic, str)
        device.client.publish(
            topic,
            json.dumps(body).encode(),
            qos=1,
            properties=reply,
        ).wait_for_publish(10)
        wait_for(lambda: query(hub_database, "SELECT count(*) FROM records") == [(15,)], 30, "15")
        wait_for(
            lambda: (
                query(hub_database, "SELECT status, from_seq, to_seq FROM resend_requests")
                == [("ok", 11, 15)]
            ),
            30,
            "the reply recorded",
        )
        assert query(hub_database, "SELECT status, from_seq, to_seq FROM gaps") == [
            ("repaired", 11, 15)
        ]
    finally:
        device.close()
        assert stop(proc) == 0
