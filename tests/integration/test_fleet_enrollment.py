"""Enrollment, access control and revocation against a real mosquitto running the
configuration ``scanfleet fleet broker-config`` generates."""

from __future__ import annotations

import base64
import stat
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from scanfleet.daemon.core.config import Config
from scanfleet.daemon.core.errors import EnrollmentError
from scanfleet.daemon.core.identity import Identity
from scanfleet.daemon.core.mqtt import Connection
from scanfleet.daemon.publish.envelope import scans_topic
from scanfleet.daemon.remote.enroll import (
    CLAIM_FILE,
    DeviceTLS,
    build_csr,
    ensure_enrolled,
    load_device_key,
)
from scanfleet.provisioning.ca import Role, cert_pem, write_public
from scanfleet.provisioning.claims import DEFAULT_TTL, create_claim
from scanfleet.provisioning.service import EnrollmentService
from support.enroll_service import running_service
from support.pki import Credentials, Fleet, FleetBroker, TLSClient

pytestmark = pytest.mark.integration

SITE = "pharmacy-12"


@pytest.fixture
def service(fleet: Fleet, fleet_broker: FleetBroker) -> Iterator[EnrollmentService]:
    with running_service(fleet, fleet_broker) as svc:
        yield svc


def device_config(tmp_path: Path, fleet: Fleet, name: str) -> Config:
    return Config.model_validate(
        {
            "identity": {"site": SITE},
            "paths": {"state_dir": str(tmp_path / name)},
            # The URL is replaced by the one the service returns at enrollment.
            "broker": {"url": "mqtts://127.0.0.1:1", "ca_file": str(fleet.ca_file)},
        }
    )


def put_claim(
    fleet: Fleet,
    fleet_broker: FleetBroker,
    config: Config,
    *,
    ttl: timedelta = DEFAULT_TTL,
    device: str | None = None,
    now: datetime | None = None,
) -> str:
    _, claim = create_claim(
        fleet.ca.registry,
        SITE,
        fleet_broker.host,
        fleet_broker.enroll_port,
        ttl=ttl,
        device=device,
        now=now,
    )
    config.paths.state_dir.mkdir(parents=True, exist_ok=True)
    (config.paths.state_dir / CLAIM_FILE).write_text(claim.token + "\n", encoding="utf-8")
    return claim.token


def enroll(
    tmp_path: Path, fleet: Fleet, fleet_broker: FleetBroker, device: str
) -> tuple[Config, Identity]:
    config = device_config(tmp_path, fleet, device)
    put_claim(fleet, fleet_broker, config)
    enrolled = ensure_enrolled(config, Identity(SITE, device), timeout=20)
    return config.model_copy(update={"broker": enrolled.broker}), enrolled.identity


def test_device_enrolls_with_a_claim_and_publishes_scans(
    tmp_path: Path, fleet: Fleet, fleet_broker: FleetBroker, service: EnrollmentService
) -> None:
    backend = TLSClient(
        fleet_broker.port, fleet.ca_file, fleet.role(Role.BACKEND, "trace"), client_id="backend"
    )
    fleet_broker.reload()
    config, identity = enroll(tmp_path, fleet, fleet_broker, "sf-000000000001")
    assert identity == Identity(SITE, "sf-000000000001")
    assert not (config.paths.state_dir / CLAIM_FILE).exists(), "a used claim is removed"
    assert config.broker.url == f"mqtts://127.0.0.1:{fleet_broker.port}"
    assert backend.connected(), backend.error
    backend.subscribe("scanfleet/v1/+/+/scans")

    # The daemon's own MQTT adapter, with the BrokerConfig enrollment returned.
    acks: list[int] = []
    conn = Connection(
        config.broker,
        identity.device,
        inflight=10,
        will=(f"scanfleet/v1/{SITE}/{identity.device}/state", b'{"online":false}'),
        on_ack=lambda mid, code, name: acks.append(code),
    )
    conn.open(timeout=10)
    conn.publish(scans_topic(SITE, identity.device), b'{"scans":[]}')
    while not acks:
        conn.pump(0.2)
    conn.disconnect()
    assert acks[0] < 0x80
    assert backend.wait(lambda: len(backend.messages) == 1)
    assert backend.messages[0][0] == scans_topic(SITE, identity.device)
    backend.close()


def test_device_key_is_made_on_the_device_0600_and_never_sent(
    tmp_path: Path, fleet: Fleet, fleet_broker: FleetBroker, service: EnrollmentService
) -> None:
    spy = TLSClient(
        fleet_broker.service_port,
        fleet.ca_file,
        fleet.role(Role.FLEET, "spy"),
        client_id="enroll-spy",
    )
    fleet_broker.reload()
    assert spy.connected(), spy.error
    spy.subscribe("scanfleet/v1/enroll/+/request")
    config, _ = enroll(tmp_path, fleet, fleet_broker, "sf-000000000002")

    tls = DeviceTLS(config.paths.state_dir / "tls")
    assert stat.S_IMODE(tls.key.stat().st_mode) == 0o600
    key = load_device_key(tls.key)
    cert = x509.load_pem_x509_certificate(tls.cert.read_bytes())
    assert cert.public_key() == key.public_key()

    assert spy.wait(lambda: len(spy.messages) >= 1)
    sent = b"".join(payload for _, payload in spy.messages)
    scalar = key.private_numbers().private_value
    der = key.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    secret_forms = [
        tls.key.read_bytes().strip(),
        der,
        base64.b64encode(der),
        scalar.to_bytes(32, "big"),
        base64.b64encode(scalar.to_bytes(32, "big")),
        format(scalar, "x").encode(),
        format(scalar, "X").encode(),
        str(scalar).encode(),
    ]
    for form in secret_forms:
        assert form not in sent
    # What is sent is a CSR for that key: public only.
    assert b"BEGIN CERTIFICATE REQUEST" in sent
    spy.close()


def test_reused_or_expired_claim_is_refused(
    tmp_path: Path, fleet: Fleet, fleet_broker: FleetBroker, service: EnrollmentService
) -> None:
    config = device_config(tmp_path, fleet, "first")
    token = put_claim(fleet, fleet_broker, config)
    ensure_enrolled(config, Identity(SITE, "sf-000000000003"), timeout=20)

    second = device_config(tmp_path, fleet, "second")
    second.paths.state_dir.mkdir(parents=True)
    (second.paths.state_dir / CLAIM_FILE).write_text(token, encoding="utf-8")
    with pytest.raises(EnrollmentError, match="claim already used"):
        ensure_enrolled(second, Identity(SITE, "sf-000000000004"), timeout=20)

    third = device_config(tmp_path, fleet, "third")
    put_claim(
        fleet,
        fleet_broker,
        third,
        ttl=timedelta(hours=1),
        now=datetime.now(UTC) - timedelta(hours=2),
    )
    with pytest.raises(EnrollmentError, match="claim expired"):
        ensure_enrolled(third, Identity(SITE, "sf-000000000005"), timeout=20)
    assert not (third.paths.state_dir / "tls" / "device.pem").exists()


def test_enrolled_device_cannot_be_taken_over_with_an_ordinary_claim(
    tmp_path: Path, fleet: Fleet, fleet_broker: FleetBroker, service: EnrollmentService
) -> None:
    enroll(tmp_path, fleet, fleet_broker, "sf-000000000006")
    thief = device_config(tmp_path, fleet, "thief")
    put_claim(fleet, fleet_broker, thief)
    with pytest.raises(EnrollmentError, match="already enrolled"):
        ensure_enrolled(thief, Identity(SITE, "sf-000000000006"), timeout=20)

    # A claim bound to the device re-enrolls it and revokes the old certificate.
    owner = device_config(tmp_path, fleet, "reinstalled")
    put_claim(fleet, fleet_broker, owner, device="sf-000000000006")
    ensure_enrolled(owner, Identity(SITE, "sf-000000000006"), timeout=20)
    certs = fleet.ca.registry.certs(cn=f"{SITE}/sf-000000000006")
    assert [c.revoked_at is None for c in certs] == [True, False]


def test_certificate_is_renewed_before_expiry_with_a_new_key(
    tmp_path: Path, fleet: Fleet, fleet_broker: FleetBroker, service: EnrollmentService
) -> None:
    config, identity = enroll(tmp_path, fleet, fleet_broker, "sf-000000000007")
    tls = DeviceTLS(config.paths.state_dir / "tls")
    # Replace the certificate with one for the same key that is past two thirds of its life.
    old_key = load_device_key(tls.key)
    aged = fleet.ca.sign_device_csr(
        build_csr(old_key, SITE, identity.device),
        SITE,
        identity.device,
        days=3,
        now=datetime.now(UTC) - timedelta(days=2, hours=12),
    )
    write_public(tls.cert, cert_pem(aged))

    fresh = device_config(tmp_path, fleet, "sf-000000000007")
    renewed = ensure_enrolled(fresh, identity, timeout=20)

    new_cert = x509.load_pem_x509_certificate(tls.cert.read_bytes())
    assert new_cert.serial_number != aged.serial_number
    assert renewed.not_after == new_cert.not_valid_after_utc
    new_key = load_device_key(tls.key)
    assert isinstance(new_key, ec.EllipticCurvePrivateKey)
    assert new_key.private_numbers() != old_key.private_numbers()
    assert stat.S_IMODE(tls.key.stat().st_mode) == 0o600
    assert fleet.ca.registry.is_revoked(aged.serial_number)
    client = TLSClient(
        fleet_broker.port,
        fleet.ca_file,
        _creds(tls),
        client_id=identity.device,
    )
    assert client.connected(), client.error
    client.close()


def _creds(tls: DeviceTLS) -> Credentials:
    serial = x509.load_pem_x509_certificate(tls.cert.read_bytes()).serial_number
    return Credentials(tls.cert, tls.key, serial)
