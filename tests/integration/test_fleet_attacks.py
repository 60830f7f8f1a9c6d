"""Attacks on the generated fleet brokers, on real mosquitto processes, as an attacker
would run them: session takeover by client id, oversized publishes, a revoked
certificate that stays connected."""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from scanfleet.daemon.core.config import Config
from scanfleet.daemon.core.identity import Identity
from scanfleet.daemon.remote.enroll import CLAIM_FILE, DeviceTLS, ensure_enrolled
from scanfleet.provisioning.ca import Role
from scanfleet.provisioning.claims import create_claim
from scanfleet.provisioning.enroll_broker import MAX_ENROLL_PACKET
from scanfleet.provisioning.service import EnrollmentService
from support.pki import Credentials, Fleet, FleetBroker, TLSClient

pytestmark = pytest.mark.integration

SITE = "site-1"
A = f"scanfleet/v1/{SITE}/dev-a"
SCANS = 5
SESSION = 3600


@pytest.fixture
def creds(fleet: Fleet) -> dict[str, Credentials]:
    return {
        "a": fleet.device(SITE, "dev-a"),
        "b": fleet.device(SITE, "dev-b"),
        "backend": fleet.role(Role.BACKEND, "trace"),
        "svc": fleet.role(Role.FLEET, "svc"),
    }


@pytest.fixture
def service(
    fleet: Fleet, fleet_broker: FleetBroker, creds: dict[str, Credentials]
) -> Iterator[EnrollmentService]:
    fleet_broker.reload()  # the identities above need their ACL blocks
    assert fleet_broker.enroll.proc is not None
    svc = EnrollmentService(
        fleet.ca,
        host=fleet_broker.host,
        port=fleet_broker.service_port,
        cert_file=str(creds["svc"].cert),
        key_file=str(creds["svc"].key),
        broker_url=f"mqtts://{fleet_broker.host}:{fleet_broker.port}",
        reload_command=f"kill -HUP {fleet_broker.proc.pid if fleet_broker.proc else 0}",
        admin_socket=fleet_broker.admin_socket,
    )
    thread = threading.Thread(target=svc.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not svc.connected:
        assert time.monotonic() < deadline, "the fleet service did not connect"
        time.sleep(0.05)
    yield svc
    svc.stop()
    thread.join(10)


def client(
    clients: list[TLSClient],
    port: int,
    fleet: Fleet,
    creds: Credentials | None,
    client_id: str,
    **kw: object,
) -> TLSClient:
    made = TLSClient(port, fleet.ca_file, creds, client_id=client_id, **kw)  # type: ignore[arg-type]
    clients.append(made)
    return made


def backend_session(
    clients: list[TLSClient], broker: FleetBroker, fleet: Fleet, creds: Credentials, **kw: object
) -> TLSClient:
    backend = client(clients, broker.port, fleet, creds, "backend", session_expiry=SESSION, **kw)
    assert backend.connected(), backend.error
    return backend


def test_no_client_can_take_over_another_identitys_session(
    fleet: Fleet,
    fleet_broker: FleetBroker,
    creds: dict[str, Credentials],
    service: EnrollmentService,
    clients: list[TLSClient],
) -> None:
    backend_cn = fleet.role_cn(Role.BACKEND, "trace")
    fleet_cn = fleet.role_cn(Role.FLEET, "svc")
    backend = backend_session(clients, fleet_broker, fleet, creds["backend"])
    backend.subscribe(f"scanfleet/v1/{SITE}/+/scans")
    backend.close()  # away: the broker queues for its persistent session
    device_b = client(clients, fleet_broker.port, fleet, creds["b"], "dev-b")
    assert device_b.connected(), device_b.error
    device_a = client(clients, fleet_broker.port, fleet, creds["a"], "dev-a")
    assert device_a.connected(), device_a.error
    for n in range(SCANS):
        assert device_a.publish(f"{A}/scans", f"scan-{n}".encode()) < 0x80

    # Anonymous, on the enrollment port, with every authenticated client id there is:
    # refused at CONNECT (the enrollment broker admits only 'enroll-' ids).
    for victim in ("backend", backend_cn, "dev-b", f"{SITE}/dev-b", fleet_cn, "svc"):
        attacker = client(clients, fleet_broker.enroll_port, fleet, None, victim)
        assert not attacker.connected(timeout=10), victim
    # The id the service *sends* is accepted, but its session is its CN's: nothing happens.
    lookalike = client(clients, fleet_broker.enroll_port, fleet, None, "enroll-service")
    assert lookalike.connected(), lookalike.error
    lookalike.close()

    # A valid device certificate with another identity's client id, clean start: the
    # broker replaces the id with the certificate's own CN, so it only meets itself.
    for victim in ("backend", backend_cn, "dev-b", f"{SITE}/dev-b", fleet_cn):
        attacker = client(clients, fleet_broker.port, fleet, creds["a"], victim)
        assert attacker.connected(), attacker.error
        attacker.close()
        assert _thrown_off(device_a)
        device_a = client(clients, fleet_broker.port, fleet, creds["a"], "dev-a")
        assert device_a.connected(), device_a.error

    # The victims never noticed.
    assert device_b.error is None
    assert service.connected
    # And the backend's persistent session kept every queued record.
    back = backend_session(clients, fleet_broker, fleet, creds["backend"], clean_start=False)
    assert back.wait(lambda: len(back.messages) >= SCANS), back.messages
    assert sorted(p for _, p in back.messages) == [f"scan-{n}".encode() for n in range(SCANS)]


def _thrown_off(victim: TLSClient) -> bool:
    return victim.wait(lambda: victim.error is not None, timeout=10)


def _vm_hwm_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


def test_oversized_publish_on_the_enrollment_port_is_refused(
    fleet: Fleet, fleet_broker: FleetBroker, clients: list[TLSClient]
) -> None:
    victim = client(clients, fleet_broker.port, fleet, fleet.device(SITE, "dev-c"), "dev-c")
    assert victim.connected(), victim.error
    attacker = client(clients, fleet_broker.enroll_port, fleet, None, "enroll-big")
    assert attacker.connected(), attacker.error
    attacker.client.publish("scanfleet/v1/enroll/enroll-big/request", b"x" * (16 << 20), qos=1)
    assert attacker.wait(lambda: attacker.error is not None, timeout=60), "not disconnected"
    assert "enroll-big disconnected due to oversize packet" in fleet_broker.enroll.log()
    assert fleet_broker.enroll.proc is not None
    assert _vm_hwm_kib(fleet_broker.enroll.proc.pid) < 200 * 1024
    # A request just under the limit still goes through; the device broker is untouched.
    small = client(clients, fleet_broker.enroll_port, fleet, None, "enroll-small")
    assert small.connected(), small.error
    assert (
        small.publish("scanfleet/v1/enroll/enroll-small/request", b"x" * (MAX_ENROLL_PACKET // 2))
        < 0x80
    )
    assert victim.error is None


def test_anonymous_client_cannot_leave_retained_messages(
    fleet: Fleet, fleet_broker: FleetBroker, clients: list[TLSClient]
) -> None:
    # One retained 16 KiB message per made-up client id would pile up in memory.
    attacker = client(clients, fleet_broker.enroll_port, fleet, None, "enroll-pile")
    assert attacker.connected(), attacker.error
    attacker.client.publish("scanfleet/v1/enroll/enroll-pile/request", b"x", qos=1, retain=True)
    assert attacker.wait(lambda: attacker.error is not None, timeout=30), "retained accepted"


def test_old_certificate_is_refused_and_thrown_off_after_re_enrollment(
    tmp_path: Path,
    fleet: Fleet,
    fleet_broker: FleetBroker,
    service: EnrollmentService,
    clients: list[TLSClient],
) -> None:
    device = "sf-00000000000d"
    first = _enroll(tmp_path / "first", fleet, fleet_broker, device)
    saved = tmp_path / "stolen"
    shutil.copytree(first, saved)  # a thief's copy of the key and certificate
    stolen = Credentials(saved / "device.pem", saved / "device.key", 0)
    thief = client(clients, fleet_broker.port, fleet, stolen, device)
    assert thief.connected(), thief.error

    # The owner re-enrolls with a claim bound to the device; nobody reloads anything.
    started = time.monotonic()
    second = _enroll(tmp_path / "second", fleet, fleet_broker, device, bound=True)
    assert thief.wait(lambda: thief.error is not None, timeout=60), "old cert still connected"
    again = client(clients, fleet_broker.port, fleet, stolen, device)
    assert not again.connected(timeout=10)
    assert time.monotonic() - started < 60
    owner = client(
        clients,
        fleet_broker.port,
        fleet,
        Credentials(second / "device.pem", second / "device.key", 0),
        device,
    )
    assert owner.connected(), owner.error


def _enroll(
    state_dir: Path, fleet: Fleet, broker: FleetBroker, device: str, *, bound: bool = False
) -> Path:
    config = Config.model_validate(
        {
            "identity": {"site": SITE},
            "paths": {"state_dir": str(state_dir)},
            "broker": {"url": "mqtts://127.0.0.1:1", "ca_file": str(fleet.ca_file)},
        }
    )
    _, claim = create_claim(
        fleet.ca.registry, SITE, broker.host, broker.enroll_port, device=device if bound else None
    )
    state_dir.mkdir(parents=True, exist_ok=True)
    (state_dir / CLAIM_FILE).write_text(claim.token + "\n", encoding="utf-8")
    ensure_enrolled(config, Identity(SITE, device), timeout=20, force=bound)
    return DeviceTLS(state_dir / "tls").root
