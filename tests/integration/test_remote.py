"""Remote management against a real mosquitto running the generated TLS + ACL config.

The daemon runs in-process (real threads, real journal, a real pty as its serial
scanner) and enrolls at start from a claim in its state directory; IT staff and a
backend are real MQTT clients with their fleet-CA identities.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from scanfleet.daemon.core.config import Config
from scanfleet.daemon.intake.devices import DeviceState
from scanfleet.daemon.remote.enroll import CLAIM_FILE
from scanfleet.daemon.runner import Daemon, build_daemon
from scanfleet.drivers.serial import SerialDeviceConfig
from scanfleet.provisioning.ca import Role
from scanfleet.provisioning.claims import create_claim
from scanfleet.provisioning.service import EnrollmentService
from support.broker import MOSQUITTO_DIRS
from support.pki import Credentials, Fleet, FleetBroker, TLSClient, make_fleet
from support.prereq import require_executable

pytestmark = pytest.mark.integration

SITE = "pharmacy-7"
DEVICE = "sf-00000000000a"
PREFIX = f"scanfleet/v1/{SITE}/{DEVICE}"
NOT_AUTHORIZED = 0x87


def wait(predicate: Callable[[], bool], timeout: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


class Client(TLSClient):
    """A TLSClient that also keeps the MQTT 5 properties of what it receives."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        self.received: list[tuple[str, bytes, Properties | None]] = []
        super().__init__(*args, **kw)

    def _on_message(self, c: Any, u: Any, msg: mqtt.MQTTMessage) -> None:
        with self._cond:
            self.received.append((msg.topic, bytes(msg.payload), getattr(msg, "properties", None)))
        super()._on_message(c, u, msg)

    def request(self, topic: str, payload: bytes, correlation: bytes) -> int:
        props = Properties(PacketTypes.PUBLISH)
        props.CorrelationData = correlation
        props.ResponseTopic = f"{topic}/response"
        info = self.client.publish(topic, payload, qos=1, properties=props)
        assert self.wait(lambda: info.mid in self.pubacks), f"no PUBACK for {topic}"
        return self.pubacks[info.mid]

    def reply(self, correlation: bytes, timeout: float = 60.0) -> dict[str, Any]:
        def find() -> dict[str, Any] | None:
            for topic, payload, props in self.received:
                is_reply = topic.endswith("/response") and props is not None
                if is_reply and getattr(props, "CorrelationData", None) == correlation:
                    result: dict[str, Any] = json.loads(payload)
                    return result
            return None

        assert self.wait(lambda: find() is not None, timeout), f"no reply to {correlation!r}"
        found = find()
        assert found is not None
        return found

    def reports(self) -> list[dict[str, Any]]:
        return [json.loads(p) for t, p, _ in self.received if t.endswith("/config/reported") and p]


class Rig:
    """Fleet, broker, enrollment service, IT-staff client and one enrolled daemon."""

    def __init__(self, tmp_path: Path) -> None:
        self.fleet: Fleet = make_fleet(tmp_path)
        self.creds: dict[str, Credentials] = {
            "svc": self.fleet.role(Role.FLEET, "svc"),
            "ops": self.fleet.role(Role.FLEET, "ops"),
            "backend": self.fleet.role(Role.BACKEND, "trace"),
            "other": self.fleet.device(SITE, "sf-00000000000b"),
        }
        self.broker = FleetBroker(
            require_executable("mosquitto", *MOSQUITTO_DIRS), tmp_path / "broker", self.fleet
        )
        self.broker.start()
        self.service = EnrollmentService(
            self.fleet.ca,
            host=self.broker.host,
            port=self.broker.service_port,
            admin_socket=self.broker.admin_socket,
            reload_command=f"kill -HUP {self.broker.proc.pid if self.broker.proc else 0}",
            cert_file=str(self.creds["svc"].cert),
            key_file=str(self.creds["svc"].key),
            broker_url=f"mqtts://{self.broker.host}:{self.broker.port}",
        )
        self._service_thread = threading.Thread(target=self.service.run, daemon=True)
        self._service_thread.start()
        self.ops = self.client("ops", "ops")
        self.ops.subscribe(f"{PREFIX}/config/reported")
        self.ops.subscribe(f"{PREFIX}/cmd/+/response")
        self.master, self.slave = os.openpty()
        self.state_dir = tmp_path / "device"
        self.daemon: Daemon | None = None

    def client(self, who: str, client_id: str) -> Client:
        c = Client(self.broker.port, self.fleet.ca_file, self.creds[who], client_id=client_id)
        assert c.connected(), c.error
        return c

    def start_daemon(self, **sections: Any) -> Daemon:
        config = Config.model_validate(
            {
                "identity": {"site": SITE, "device": DEVICE},
                "paths": {"state_dir": str(self.state_dir)},
                # Replaced by the URL the enrollment service returns.
                "broker": {"url": "mqtts://127.0.0.1:1", "ca_file": str(self.fleet.ca_file)},
                "devices": [{"name": "scanner", "driver": "serial", "port": self.pty_path}],
                **sections,
            }
        )
        self.state_dir.mkdir(parents=True, exist_ok=True)
        _, claim = create_claim(
            self.fleet.ca.registry, SITE, self.broker.host, self.broker.enroll_port
        )
        (self.state_dir / CLAIM_FILE).write_text(claim.token + "\n", encoding="utf-8")
        daemon = build_daemon(config, health_interval=1.0)
        self.daemon = daemon
        daemon.start()
        assert wait(lambda: daemon.control.connected), "daemon never connected"
        assert wait(lambda: daemon.device_states().get("scanner") is DeviceState.BOUND)
        return daemon

    @property
    def pty_path(self) -> str:
        return os.ttyname(self.slave)

    def push(self, document: dict[str, Any] | None) -> int:
        payload = b"" if document is None else json.dumps(document).encode()
        return self.ops.publish(f"{PREFIX}/config", payload, retain=True)

    def report(self, version: int, result: str, timeout: float = 60.0) -> dict[str, Any]:
        def find() -> dict[str, Any] | None:
            for r in self.ops.reports():
                if r["version"] == version and r["result"] == result:
                    return r
            return None

        assert self.ops.wait(lambda: find() is not None, timeout), self.ops.reports()
        found = find()
        assert found is not None
        return found

    def close(self) -> None:
        if self.daemon is not None:
            self.daemon.shutdown()
        self.ops.close()
        self.service.stop()
        self._service_thread.join(10)
        self.broker.close()
        os.close(self.master)
        os.close(self.slave)


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    made = Rig(tmp_path)
    yield made
    made.close()


def test_daemon_enrolls_from_a_claim_and_applies_a_valid_push(rig: Rig) -> None:
    daemon = rig.start_daemon()
    assert not (rig.state_dir / CLAIM_FILE).exists(), "the claim was used at start"
    assert daemon.cert_not_after is not None
    document = {"version": 1, "probation_s": 1, "config": {"station": {"operation": "receiving"}}}
    assert rig.push(document) < 0x80
    assert rig.report(1, "probation")["active_version"] == 1
    assert rig.report(1, "applied")["errors"] == []
    assert str(daemon.config.station.operation) == "receiving"
    assert daemon.station.snapshot()["operation"] == "receiving"
    assert daemon.config.broker.url == f"mqtts://127.0.0.1:{rig.broker.port}", "broker kept"


def test_invalid_push_is_rejected_with_key_paths_and_the_old_config_kept(rig: Rig) -> None:
    daemon = rig.start_daemon()
    before = daemon.config
    bad = {"devices": [{"name": "scanner", "driver": "serial", "port": "/x", "baudrate": 1234}]}
    rig.push({"version": 1, "config": {**bad, "broker": {"url": "mqtt://elsewhere"}}})
    assert rig.report(1, "rejected")["errors"] == [
        {"key": "config.broker", "message": "cannot be set remotely"}
    ]
    rig.push({"version": 2, "config": bad})
    errors = rig.report(2, "rejected")["errors"]
    assert [e["key"] for e in errors] == ["config.devices[0].baudrate"]
    assert daemon.config == before
    assert daemon.remote.version is None


def test_push_that_breaks_the_scanner_binding_is_rolled_back_after_probation(
    rig: Rig, tmp_path: Path
) -> None:
    daemon = rig.start_daemon()
    gone = str(tmp_path / "no-such-scanner")
    rig.push(
        {
            "version": 1,
            "probation_s": 2,
            "config": {"devices": [{"name": "scanner", "driver": "serial", "port": gone}]},
        }
    )
    rig.report(1, "probation")
    rolled = rig.report(1, "rolled_back")
    assert [e["key"] for e in rolled["errors"]] == ["devices.scanner"]
    assert rolled["active_version"] is None
    device = daemon.config.devices[0]
    assert isinstance(device, SerialDeviceConfig)
    assert device.port == rig.pty_path
    assert wait(lambda: daemon.device_states().get("scanner") is DeviceState.BOUND)
    # The retained bad document is not applied again after a reconnect.
    assert daemon.remote.version is None


def test_resend_command_fills_an_artificial_gap_at_a_subscriber(rig: Rig) -> None:
    daemon = rig.start_daemon()
    for n in range(5):
        os.write(rig.master, f"0100000000000{n}21ABC{n}\r".encode())
    assert wait(lambda: daemon.journal.last_seq >= 5)
    assert daemon.publisher.wait_delivered(daemon.journal.last_seq, 60)
    last = daemon.journal.last_seq
    # The backend (re)subscribes after the records went out: it has a gap 1..last.
    backend = rig.client("backend", "backend-trace")
    backend.subscribe(f"scanfleet/v1/{SITE}/+/scans")
    assert backend.request(f"{PREFIX}/cmd/resend", b'{"from_seq": 1, "to_seq": 5}', b"r1") < 0x80

    def seqs() -> set[int]:
        got: set[int] = set()
        for topic, payload, _ in backend.received:
            if topic.endswith("/scans"):
                got.update(s["seq"] for s in json.loads(payload)["scans"])
        return got

    assert backend.wait(lambda: set(range(1, min(5, last) + 1)) <= seqs(), 60), seqs()
    backend.close()


def test_commands_answer_with_correlation_data_and_errors_never_crash(rig: Rig) -> None:
    daemon = rig.start_daemon()
    rig.ops.request(f"{PREFIX}/cmd/status", b"", b"s1")
    status = rig.ops.reply(b"s1")
    assert status["ok"] is True
    assert status["result"]["device"] == DEVICE
    rig.ops.request(f"{PREFIX}/cmd/devices", b"{}", b"d1")
    assert rig.ops.reply(b"d1")["result"]["devices"]["scanner"]["state"] == "bound"
    rig.ops.request(f"{PREFIX}/cmd/no-such", b"{}", b"u1")
    assert rig.ops.reply(b"u1")["error"]["code"] == "unknown_command"
    for i, junk in enumerate([b"\xff\x00", b"[1,2", b'{"from_seq": null}', b"9" * 5000]):
        rig.ops.request(f"{PREFIX}/cmd/resend", junk, f"j{i}".encode())
        assert rig.ops.reply(f"j{i}".encode())["ok"] is False
    rig.ops.request(f"{PREFIX}/cmd/status", b"", b"s2")
    assert rig.ops.reply(b"s2")["ok"] is True, "still answering after the junk"
    assert daemon.control.connected


def test_health_is_published_periodically(rig: Rig) -> None:
    daemon = rig.start_daemon()
    watcher = rig.client("ops", "ops-health")
    watcher.subscribe(f"{PREFIX}/health")
    assert watcher.wait(lambda: bool(watcher.received), 60)
    health = json.loads(watcher.received[-1][1])
    assert health["schema"] == "scanfleet.health/1"
    assert health["devices"] == {"scanner": "bound"}
    assert health["cert_not_after"] is not None
    assert health["journal"]["last_seq"] == daemon.journal.last_seq
    assert health["clock"] in {"synced", "unsynced", "unknown"}
    assert health["process"]["rss_bytes"] > 0
    watcher.close()


def test_a_device_cannot_push_config_or_commands_to_another_device(rig: Rig) -> None:
    daemon = rig.start_daemon()
    other = rig.client("other", "sf-00000000000b")
    payload = json.dumps({"version": 9, "config": {"devices": []}}).encode()
    assert other.publish(f"{PREFIX}/config", payload, retain=True) == NOT_AUTHORIZED
    assert other.request(f"{PREFIX}/cmd/restart", b"", b"x") == NOT_AUTHORIZED
    assert other.request(f"{PREFIX}/cmd/resend", b'{"from_seq":1,"to_seq":1}', b"y") == (
        NOT_AUTHORIZED
    )
    # Positive control: the operator's own request after the forged ones is answered,
    # and the forged config never reached the daemon.
    rig.ops.request(f"{PREFIX}/cmd/status", b"", b"after")
    assert rig.ops.reply(b"after")["result"]["config_version"] is None
    assert [d.name for d in daemon.config.devices] == ["scanner"]
    # The channel thread counts a message after handle() returns, and the reply (queued
    # inside handle()) may reach us first: wait for the count, then check it is exact.
    assert wait(lambda: daemon.control.handled >= 1, 5)
    assert daemon.control.handled == 1
    other.close()


def fleet_cli(rig: Rig, *args: str) -> subprocess.CompletedProcess[str]:
    broker = f"mqtts://127.0.0.1:{rig.broker.port}"
    common = ["--broker", broker, "--identity", "ops"]
    argv = [sys.executable, "-m", "scanfleet.daemon", "fleet", "--fleet-dir", str(rig.fleet.root)]
    return subprocess.run(
        [*argv, args[0], *args[1:2], *common, *args[2:]]
        if args[0] == "config"
        else [*argv, args[0], *common, *args[1:]],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


def test_fleet_cli_pushes_config_with_a_diff_and_sends_commands(rig: Rig, tmp_path: Path) -> None:
    daemon = rig.start_daemon()
    sections = tmp_path / "station.json"
    bad = fleet_cli(rig, "config", "push", f"{SITE}/{DEVICE}", str(tmp_path / "missing.json"))
    assert bad.returncode == 1
    sections.write_text(json.dumps({"station": {"operation": "no-such-op"}}), encoding="utf-8")
    invalid = fleet_cli(rig, "config", "push", f"{SITE}/{DEVICE}", str(sections))
    assert invalid.returncode == 1
    assert "config.station.operation" in invalid.stderr, "validated locally, never pushed"
    assert daemon.remote.version is None

    sections.write_text(json.dumps({"station": {"operation": "dispatch"}}), encoding="utf-8")
    pushed = fleet_cli(rig, "config", "push", f"{SITE}/{DEVICE}", str(sections), "--probation", "1")
    assert pushed.returncode == 0, pushed.stderr
    assert '+    "operation": "dispatch"' in pushed.stdout
    report = json.loads(pushed.stdout[pushed.stdout.rindex("\n{\n") :])
    assert report["result"] == "applied"
    assert str(daemon.config.station.operation) == "dispatch"

    status = fleet_cli(rig, "cmd", f"{SITE}/{DEVICE}", "status")
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["result"]["config_version"] == 1
    refused = fleet_cli(rig, "cmd", f"{SITE}/{DEVICE}", "resend", "from_seq=5", "to_seq=1")
    assert refused.returncode == 1
    assert json.loads(refused.stdout)["error"]["code"] == "bad_request"

    health = fleet_cli(rig, "health", "--wait", "3")
    assert health.returncode == 0, health.stderr
    assert f"{SITE}/{DEVICE}" in health.stdout


def test_fleet_gaps_finds_a_backend_gap_and_requests_the_resend(rig: Rig, tmp_path: Path) -> None:
    daemon = rig.start_daemon()
    backend = rig.client("backend", "backend-gaps")
    backend.subscribe(f"scanfleet/v1/{SITE}/+/scans")
    for n in range(6):
        os.write(rig.master, f"0100000000000{n}21GAP{n}\r".encode())
    assert wait(lambda: daemon.journal.last_seq >= 6)
    assert daemon.publisher.wait_delivered(daemon.journal.last_seq, 60)
    last = daemon.journal.last_seq

    def copies(seq: int) -> int:
        return sum(
            1
            for topic, payload, _ in backend.received
            if topic.endswith("/scans")
            for s in json.loads(payload)["scans"]
            if s["seq"] == seq
        )

    assert backend.wait(lambda: copies(last) == 1, 60)
    # The six scans follow the start's own records (the enrollment is journaled).
    first = last - 5
    # The backend lost the 2nd and 3rd scan (a consumer crashed before committing them).
    received = tmp_path / "received.json"
    ranges = [[1, first], [first + 3, last]]
    received.write_text(json.dumps({f"{SITE}/{DEVICE}": ranges}), encoding="utf-8")
    out = fleet_cli(rig, "gaps", "--received", str(received), "--resend", "--wait", "3")
    assert out.returncode == 0, out.stderr
    gap = f"{first + 1}..{first + 2}"
    assert f"{SITE}/{DEVICE}  missing {gap}  resend requested" in out.stdout
    assert backend.wait(lambda: copies(first + 1) == 2 and copies(first + 2) == 2, 60)
    assert copies(first) == 1, "only the gap is resent"
    backend.close()


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
    database=None,
)
@given(
    name=st.sampled_from(["status", "devices", "resend", "rebind", "station", "bogus"]),
    payload=st.one_of(
        st.binary(max_size=64),
        st.dictionaries(
            st.sampled_from(["from_seq", "to_seq", "device", "operation", "bill"]),
            st.none() | st.integers() | st.text(max_size=8),
        ).map(lambda d: json.dumps(d).encode()),
    ),
    config=st.binary(max_size=64),
)
def test_fuzzed_payloads_through_the_broker_are_always_answered(
    rig: Rig, name: str, payload: bytes, config: bytes
) -> None:
    daemon = rig.daemon or rig.start_daemon()
    rig.ops.publish(f"{PREFIX}/config", config, retain=True)
    correlation = os.urandom(8)
    assert rig.ops.request(f"{PREFIX}/cmd/{name}", payload, correlation) < 0x80
    assert rig.ops.reply(correlation)["command"] == name
    assert daemon.control.connected


def test_rotate_cert_renews_the_enrolled_certificate_early(rig: Rig) -> None:
    daemon = rig.start_daemon()
    cert_path = rig.state_dir / "tls" / "device.pem"
    before = cert_path.read_bytes()
    (rig.state_dir / "old.pem").write_bytes(before)
    (rig.state_dir / "old.key").write_bytes((rig.state_dir / "tls" / "device.key").read_bytes())
    rig.ops.request(f"{PREFIX}/cmd/rotate-cert", b"", b"rot")
    reply = rig.ops.reply(b"rot", timeout=90)
    assert reply["ok"] is True, reply
    assert cert_path.read_bytes() != before, "a new certificate (and key) on disk"
    assert reply["result"]["not_after"] == daemon.cert_not_after.isoformat()  # type: ignore[union-attr]
    # The old certificate is revoked: its session was thrown off, and the daemon is
    # back on the broker with the renewed files.
    old = Client(
        rig.broker.port,
        rig.fleet.ca_file,
        Credentials(rig.state_dir / "old.pem", rig.state_dir / "old.key", 0),
        client_id="old",
    )
    rig.ops.request(f"{PREFIX}/cmd/status", b"", b"after-rot")
    assert rig.ops.reply(b"after-rot")["ok"] is True
    assert not old.connected(timeout=10)
    old.close()


OLD_TOKEN = "old-token-0123456789abcdef"  # noqa: S105 - test token
NEW_TOKEN = "new-token-fedcba9876543210"  # noqa: S105 - test token


def _hello(path: Path, token: str) -> tuple[socket.socket, dict[str, Any]]:
    sock = socket.socket(socket.AF_UNIX)
    sock.settimeout(10)
    sock.connect(str(path))
    sock.sendall(json.dumps({"op": "hello", "token": token}).encode() + b"\n")
    reply = json.loads(sock.makefile("rb").readline())
    return sock, reply


def test_pushed_local_api_token_takes_effect_at_once(rig: Rig) -> None:
    api = {"enabled": True, "token": OLD_TOKEN}
    daemon = rig.start_daemon(local_api=api)
    path = rig.state_dir / "local.sock"
    session, hello = _hello(path, OLD_TOKEN)
    assert hello["type"] == "hello"

    document = {
        "version": 1,
        "probation_s": 0,
        "config": {"local_api": {**api, "token": NEW_TOKEN}},
    }
    assert rig.push(document) < 0x80
    assert rig.report(1, "applied")["restart_required"] == []
    # The session authenticated with the old token is closed; the old token is refused.
    while session.recv(65536):  # a timeout here: the old session stayed open
        pass
    session.close()
    refused, reply = _hello(path, OLD_TOKEN)
    refused.close()
    assert reply == {"type": "error", "error": "unauthorized"}
    accepted, reply = _hello(path, NEW_TOKEN)
    accepted.close()
    assert reply["type"] == "hello"

    # Where the API listens cannot change live: the report says so, never 'applied'.
    moved = {**api, "token": NEW_TOKEN, "websocket_port": 0}
    assert rig.push({"version": 2, "probation_s": 0, "config": {"local_api": moved}}) < 0x80
    report = rig.report(2, "restart_required")
    assert report["restart_required"] == ["local_api.websocket_port"]
    assert daemon.local_api is not None
    assert daemon.local_api.websocket_port is None

    # Diagnostics (config, recent log lines) name neither the old nor the new token.
    assert rig.ops.request(f"{PREFIX}/cmd/diagnostics", b"{}", b"diag") < 0x80
    diagnostics = json.dumps(rig.ops.reply(b"diag"))
    assert '"ok": true' in diagnostics
    assert OLD_TOKEN not in diagnostics
    assert NEW_TOKEN not in diagnostics
