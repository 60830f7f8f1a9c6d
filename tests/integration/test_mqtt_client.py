"""The one MQTT client factory (daemon/core/mqtt_client.py) against real mosquitto brokers:
failed TLS handshakes leave no socket behind, and the request/response helpers find
the reply meant for them under MQTT 5 (correlation data) and 3.1.1 (request_id)."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from scanfleet.daemon.core.errors import BrokerRefusedError
from scanfleet.daemon.core.mqtt_client import (
    REQUEST_ID_KEY,
    Message,
    MqttVersion,
    Session,
    TlsFiles,
    open_session,
)
from scanfleet.provisioning.ca import Role
from support.broker import Mosquitto
from support.pki import Fleet, FleetBroker, make_fleet

pytestmark = pytest.mark.integration


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_a_broker_certificate_from_another_ca_leaves_no_socket_open(
    fleet_broker: FleetBroker, fleet: Fleet, tmp_path: Path
) -> None:
    creds = fleet.role(Role.FLEET, "leak")
    rogue = make_fleet(tmp_path / "rogue")
    tls = TlsFiles(rogue.ca_file, creds.cert, creds.key)
    before = open_fds()
    for _ in range(20):
        with pytest.raises(BrokerRefusedError) as refused:
            open_session(fleet_broker.host, fleet_broker.port, client_id="leak", tls=tls)
        assert refused.value.cause == "tls"
    # paho 2.2 alone would hold one socket per failed handshake until a GC ran.
    assert open_fds() <= before + 2


def test_the_right_ca_connects_with_a_client_certificate(
    fleet_broker: FleetBroker, fleet: Fleet
) -> None:
    creds = fleet.role(Role.FLEET, "ok")
    fleet_broker.reload()  # the new identity needs its ACL block
    session = open_session(
        fleet_broker.host,
        fleet_broker.port,
        client_id=fleet.role_cn(Role.FLEET, "ok"),
        tls=TlsFiles(fleet.ca_file, creds.cert, creds.key),
    )
    try:
        assert session.connected
        assert session.mqtt5
    finally:
        session.close()
    assert not session.connected


def props(correlation: bytes, response_topic: str | None = None) -> Properties:
    out = Properties(PacketTypes.PUBLISH)
    out.CorrelationData = correlation
    if response_topic is not None:
        out.ResponseTopic = response_topic
    return out


@contextmanager
def responder(
    broker: Mosquitto, version: MqttVersion, *, ignore_first: bool = False
) -> Iterator[list[Message]]:
    """Answers requests on ``req/+`` the way the daemon's control channel does."""
    heard: list[Message] = []
    stop = threading.Event()

    def answer(session: Session, msg: Message) -> None:
        heard.append(msg)
        if ignore_first and len(heard) == 1:
            return
        body = json.loads(msg.payload)
        reply = json.dumps({"echo": body.get("n")}).encode()
        topic = getattr(msg.properties, "ResponseTopic", None)
        if topic:
            # A decoy first: same topic, another request's correlation data.
            decoy = json.dumps({"echo": "decoy"}).encode()
            session.publish(topic, decoy, properties=props(b"other"), timeout=None)
            correlation = getattr(msg.properties, "CorrelationData", b"")
            session.publish(topic, reply, properties=props(correlation), timeout=None)
        else:
            request_id = body[REQUEST_ID_KEY]
            session.publish(f"{msg.topic}/response/other", b'{"echo": "decoy"}', timeout=None)
            session.publish(f"{msg.topic}/response/{request_id}", reply, timeout=None)

    session = open_session(
        broker.host,
        broker.port,
        client_id=f"responder-{version}",
        protocol=version,
        on_message=answer,
    )
    session.subscribe("req/+")

    def run() -> None:
        while not stop.is_set():
            session.pump(0.05)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield heard
    finally:
        stop.set()
        thread.join(5)
        session.close()


@pytest.mark.parametrize("version", ["5", "3.1.1"])
def test_a_request_gets_the_reply_meant_for_it(mosquitto: Mosquitto, version: MqttVersion) -> None:
    with responder(mosquitto, version):
        session = open_session(
            mosquitto.host, mosquitto.port, client_id=f"asker-{version}", protocol=version
        )
        try:
            assert session.mqtt5 == (version == "5")
            assert session.request("req/a", {"n": 1}, 10) == {"echo": 1}
            assert session.request("req/b", {"n": 2}, 10) == {"echo": 2}
        finally:
            session.close()


def test_an_unanswered_request_is_sent_again(mosquitto: Mosquitto) -> None:
    with responder(mosquitto, "5", ignore_first=True) as heard:
        session = open_session(mosquitto.host, mosquitto.port, client_id="resender")
        try:
            reply = session.exchange(
                "req/x",
                b'{"n": 7}',
                "req/x/response",
                lambda m: json.loads(m.payload).get("echo") == 7,
                10,
                properties=props(b"any", "req/x/response"),
                resend_every=0.5,
            )
        finally:
            session.close()
    assert reply is not None
    assert len(heard) >= 2


def test_no_reply_is_none_not_a_hang(mosquitto: Mosquitto) -> None:
    session = open_session(mosquitto.host, mosquitto.port, client_id="lonely")
    try:
        assert session.request("nobody/listens", {}, 0.5) is None
    finally:
        session.close()
