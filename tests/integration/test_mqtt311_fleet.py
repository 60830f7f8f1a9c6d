"""Fleet operations over MQTT 3.1.1 (issue 18): RabbitMQ 3.10, and enrollment on mosquitto.

A real daemon process connects (``protocol = "auto"`` falls back to 3.1.1); the
fleet tool's client sends commands without correlation data (a ``request_id`` and a
response topic of that request alone), and ``fleet ls``'s state collection finds the
device although RabbitMQ delivers retained messages only to exact-topic
subscriptions. Enrollment and the fleet service are run with ``protocol = "3.1.1"``
against the product-generated mosquitto (TLS, enrollment listener), which speaks both.
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

import pytest

from scanfleet.daemon.core.config import Config
from scanfleet.daemon.core.identity import Identity
from scanfleet.daemon.remote.enroll import CLAIM_FILE, ensure_enrolled
from scanfleet.provisioning.claims import create_claim
from scanfleet.provisioning.inventory import collect_states
from scanfleet.provisioning.remote import FleetClient
from support.daemon import DaemonProcess, write_config
from support.enroll_service import running_service
from support.pki import Fleet, FleetBroker

pytestmark = pytest.mark.integration

SITE = "site-311"


def test_commands_and_inventory_work_over_mqtt_3_1_1(rabbitmq: Any, tmp_path: Path) -> None:
    device = f"sf-{secrets.token_hex(4)}"
    config = write_config(
        tmp_path / "scanfleet.toml",
        f"""
[identity]
site = "{SITE}"
device = "{device}"

[paths]
state_dir = "{tmp_path / "state"}"

[broker]
url = "{rabbitmq.url}"
""",
    )
    daemon = DaemonProcess(config, tmp_path / "daemon.log").start()
    fleet: FleetClient | None = None
    try:
        assert daemon.wait_log("(MQTT 3.1.1)", 60), daemon.log()
        fleet = FleetClient(
            rabbitmq.host, rabbitmq.port, ca_file=None, cert_file=None, key_file=None
        )
        assert not fleet.mqtt5
        reply = fleet.command(f"{SITE}/{device}", "status", {}, 15)
        assert reply is not None, daemon.log()
        assert reply["ok"] is True
        assert reply["request_id"]
        assert reply["result"]["device"] == device
        refused = fleet.command(f"{SITE}/{device}", "resend", {"from_seq": 0}, 15)
        assert refused is not None
        assert refused["ok"] is False
        assert refused["error"]["code"] == "bad_request"

        states = collect_states(
            rabbitmq.host,
            rabbitmq.port,
            ca_file=None,
            cert_file=None,
            key_file=None,
            devices=[(SITE, device)],
        )
        assert states[(SITE, device)]["online"] is True
        assert states[(SITE, device)]["protocol"] == "3.1.1"
    finally:
        if fleet is not None:
            fleet.close()
        assert daemon.stop() == 0


def test_enrollment_and_the_fleet_service_work_over_mqtt_3_1_1(
    tmp_path: Path, fleet: Fleet, fleet_broker: FleetBroker
) -> None:
    with running_service(fleet, fleet_broker, name="svc311", protocol="3.1.1") as service:
        config = Config.model_validate(
            {
                "identity": {"site": SITE},
                "paths": {"state_dir": str(tmp_path / "device")},
                "broker": {
                    "url": "mqtts://127.0.0.1:1",
                    "ca_file": str(fleet.ca_file),
                    "protocol": "3.1.1",
                },
            }
        )
        _, claim = create_claim(
            fleet.ca.registry, SITE, fleet_broker.host, fleet_broker.enroll_port
        )
        config.paths.state_dir.mkdir(parents=True)
        (config.paths.state_dir / CLAIM_FILE).write_text(claim.token + "\n", encoding="utf-8")
        enrolled = ensure_enrolled(config, Identity(SITE, "sf-0000000e3111"), timeout=20)
        assert enrolled.identity == Identity(SITE, "sf-0000000e3111")
        assert enrolled.broker.protocol == "3.1.1"
        assert service.answered == 1
