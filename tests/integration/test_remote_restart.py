"""``scanfleet run`` as a real process: the restart command and a pushed overlay across it."""

from __future__ import annotations

import json
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from scanfleet.daemon.runner import RESTART_EXIT_CODE
from support.broker import Mosquitto
from support.daemon import DaemonProcess, write_config
from support.mqtt import Collector

pytestmark = pytest.mark.integration

PREFIX = "scanfleet/v1/site-r/dev-r"


def request(broker: Mosquitto, topic: str, payload: bytes, *, retain: bool = False) -> None:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="ops", protocol=mqtt.MQTTv5)
    client.connect(broker.host, broker.port)
    client.loop_start()
    props = Properties(PacketTypes.PUBLISH)
    props.CorrelationData = b"c-" + topic.rsplit("/", 1)[-1].encode()
    client.publish(topic, payload, qos=1, retain=retain, properties=props).wait_for_publish(10)
    client.disconnect()
    client.loop_stop()


def test_restart_command_exits_for_systemd_and_the_overlay_survives(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    config = write_config(
        tmp_path / "scanfleet.toml",
        f"""
[identity]
site = "site-r"
device = "dev-r"

[paths]
state_dir = "{tmp_path / "state"}"

[broker]
url = "mqtt://{mosquitto.host}:{mosquitto.port}"
""",
    )
    watcher = Collector(mosquitto.host, mosquitto.port, f"{PREFIX}/#", client_id="watch")
    daemon = DaemonProcess(config, tmp_path / "daemon.log").start()
    try:
        assert daemon.wait_log("connected to"), daemon.run_log()
        doc = {"version": 4, "probation_s": 0, "config": {"station": {"operation": "receiving"}}}
        request(mosquitto, f"{PREFIX}/config", json.dumps(doc).encode(), retain=True)
        assert watcher.wait_for(
            lambda: any(
                t.endswith("/config/reported") and json.loads(p)["result"] == "applied"
                for t, p, _ in watcher.messages
            )
        )
        request(mosquitto, f"{PREFIX}/cmd/restart", b"")
        assert watcher.wait_for(
            lambda: any(t.endswith("/cmd/restart/response") for t, _, _ in watcher.messages)
        )
        assert daemon.proc is not None
        assert daemon.proc.wait(60) == RESTART_EXIT_CODE, daemon.run_log()

        # What systemd's Restart=on-failure does:
        daemon.start()
        assert daemon.wait_log("connected to"), daemon.run_log()
        before = len(watcher.messages)
        request(mosquitto, f"{PREFIX}/cmd/status", b"{}")
        assert watcher.wait_for(
            lambda: any(t.endswith("/cmd/status/response") for t, _, _ in watcher.messages[before:])
        )
        reply = next(
            json.loads(p)
            for t, p, _ in watcher.messages[before:]
            if t.endswith("/cmd/status/response")
        )
        assert reply["result"]["config_version"] == 4
        assert reply["result"]["station"]["operation"] == "receiving"
        # The retained document was seen again at reconnect and not re-applied.
        assert "pushed config v4 applied" not in daemon.run_log()
        assert daemon.stop() == 0
    finally:
        if daemon.alive():
            daemon.kill()
        watcher.close()
