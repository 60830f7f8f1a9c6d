"""The ``scanfleet fleet`` and ``scanfleet enroll`` commands end to end, as IT staff run
them: real processes, the generated mosquitto.conf started with ``mosquitto -c``."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509

from scanfleet.daemon.publish.envelope import DeviceState, state_payload
from support.broker import MOSQUITTO_DIRS, Mosquitto, free_port
from support.pki import Credentials, TLSClient
from support.prereq import require_executable

pytestmark = pytest.mark.integration

SCANFLEET = [sys.executable, "-m", "scanfleet.daemon.cli"]


def scanfleet(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [*SCANFLEET, *args], capture_output=True, text=True, timeout=60, check=False
    )
    if check:
        assert result.returncode == 0, result.stderr
    return result


class GeneratedBroker(Mosquitto):
    """mosquitto started on a file 'fleet broker-config' wrote, untouched."""

    def __init__(self, executable: str, workdir: Path, port: int, name: str) -> None:
        super().__init__(executable, workdir, port=port)
        self.conf_path = workdir / f"{name}.conf"
        self.log_path = workdir / f"{name}.log"

    def write_config(self) -> None:
        pass


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[dict[str, object]]:
    executable = require_executable("mosquitto", *MOSQUITTO_DIRS)
    fleet = tmp_path / "fleet"
    out = tmp_path / "broker"
    device_port, enroll_port, service_port = free_port(), free_port(), free_port()
    admin_socket = Path(tempfile.mkdtemp(prefix="sf-cli-")) / "admin.sock"
    scanfleet("fleet", "--fleet-dir", str(fleet), "ca", "init")
    scanfleet("fleet", "--fleet-dir", str(fleet), "identity", "--role", "fleet", "--name", "ops")
    user = ["--user", "root"] if os.geteuid() == 0 else []
    scanfleet(
        "fleet", "--fleet-dir", str(fleet), "broker-config", "--out", str(out),
        "--host", "127.0.0.1", "--bind", "127.0.0.1",
        "--device-port", str(device_port), "--enroll-port", str(enroll_port),
        "--service-port", str(service_port), "--admin-socket", str(admin_socket),
        "--persistence-dir", str(out), "--log-file", str(out / "mosquitto.log"), *user,
    )  # fmt: skip
    broker = GeneratedBroker(executable, out, device_port, "mosquitto")
    broker.start()
    enroll_broker = GeneratedBroker(executable, out, enroll_port, "mosquitto-enroll")
    enroll_broker.start()
    serve = subprocess.Popen(
        [*SCANFLEET, "fleet", "--fleet-dir", str(fleet), "serve",
         "--broker", f"mqtts://127.0.0.1:{service_port}", "--identity", "ops",
         "--public-broker-url", f"mqtts://127.0.0.1:{device_port}",
         "--admin-socket", str(admin_socket)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    yield {
        "fleet": fleet,
        "device_port": device_port,
        "enroll_port": enroll_port,
        "broker": broker,
        "serve": serve,
        "admin_socket": admin_socket,
    }
    if serve.poll() is None:
        serve.kill()
        serve.wait()
    assert serve.stderr is not None
    serve.stderr.close()
    broker.stop()
    enroll_broker.stop()
    shutil.rmtree(admin_socket.parent, ignore_errors=True)


def test_it_staff_enroll_a_terminal_list_it_and_revoke_it(
    tmp_path: Path, setup: dict[str, object]
) -> None:
    fleet = str(setup["fleet"])
    device_port = setup["device_port"]
    created = scanfleet(
        "fleet", "--fleet-dir", fleet, "claim", "create", "--site", "clinic-3",
        "--enroll-url", f"mqtts://127.0.0.1:{setup['enroll_port']}",
    )  # fmt: skip
    token = created.stdout.strip()
    assert token.startswith("scanfleet-claim://clinic-3:")

    state_dir = tmp_path / "device-state"
    config = tmp_path / "scanfleet.toml"
    config.write_text(
        f'[identity]\nsite = "clinic-3"\n\n[paths]\nstate_dir = "{state_dir}"\n\n'
        f'[broker]\nurl = "mqtts://127.0.0.1:1"\nca_file = "{setup["fleet"]}/ca/ca.pem"\n',
        encoding="utf-8",
    )
    enrolled = scanfleet("enroll", "--config", str(config), "--claim", token, "--timeout", "20")
    assert "enrolled as clinic-3/" in enrolled.stdout
    assert f"broker mqtts://127.0.0.1:{device_port}" in enrolled.stdout
    device = (state_dir / "device-id").read_text().strip()

    # The same claim a second time: refused.
    again = scanfleet(
        "enroll", "--config", str(config), "--claim", token, "--timeout", "20", check=False
    )
    assert again.returncode == 1
    assert "claim already used" in again.stderr

    # The terminal comes online (retained state), and the inventory shows it.
    tls = state_dir / "tls"
    creds = Credentials(tls / "device.pem", tls / "device.key", 0)
    terminal = TLSClient(
        int(str(device_port)), Path(fleet) / "ca" / "ca.pem", creds, client_id=device
    )
    assert terminal.connected(), terminal.error
    state = DeviceState.model_validate(
        {"device": device, "site": "clinic-3", "online": True, "version": "0.1.0",
         "boot_id": None, "time": "2026-01-01T00:00:00Z",
         "journal": {"depth": 4, "last_seq": 10, "delivered_seq": 6,
                     "oldest_undelivered_age_s": 1.5}}
    )  # fmt: skip
    assert (
        terminal.publish(f"scanfleet/v1/clinic-3/{device}/state", state_payload(state), retain=True)
        < 0x80
    )
    terminal.close()
    listed = scanfleet(
        "fleet", "--fleet-dir", fleet, "ls", "--broker", f"mqtts://127.0.0.1:{device_port}",
        "--identity", "ops", "--json",
    )  # fmt: skip
    rows = [json.loads(line) for line in listed.stdout.splitlines()]
    assert [(r["site"], r["device"], r["online"], r["journal_depth"]) for r in rows] == [
        ("clinic-3", device, True, 4)
    ]
    cert = x509.load_pem_x509_certificate((tls / "device.pem").read_bytes())
    assert rows[0]["cert_expiry"].startswith(f"{cert.not_valid_after_utc:%Y-%m-%d}")

    online = TLSClient(
        int(str(device_port)), Path(fleet) / "ca" / "ca.pem", creds, client_id=device
    )
    assert online.connected(), online.error
    revoked = scanfleet(
        "fleet", "--fleet-dir", fleet, "revoke", "--device", f"clinic-3/{device}",
        "--reason", "stolen", "--admin-socket", str(setup["admin_socket"]),
    )  # fmt: skip
    assert "revoked 1 certificate" in revoked.stdout
    # The open session of the revoked certificate is thrown off by the revoke itself.
    assert online.wait(lambda: online.error is not None), "revoked device still connected"
    online.close()
    crl = x509.load_pem_x509_crl((Path(fleet) / "ca" / "crl.pem").read_bytes())
    assert crl.get_revoked_certificate_by_serial_number(cert.serial_number) is not None

    serve = setup["serve"]
    assert isinstance(serve, subprocess.Popen)
    serve.send_signal(signal.SIGTERM)
    assert serve.wait(timeout=10) == 0
