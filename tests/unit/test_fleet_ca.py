"""The fleet CA: certificate profiles, revocation list, file permissions."""

from __future__ import annotations

import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from scanfleet.daemon.remote.enroll import build_csr
from scanfleet.provisioning.ca import (
    CAError,
    FleetCA,
    Role,
    device_common_name,
    new_private_key,
    role_common_name,
)


@pytest.fixture
def ca(tmp_path: Path) -> FleetCA:
    return FleetCA.init(tmp_path / "fleet")


def cn_of(cert: x509.Certificate) -> str:
    return str(cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)


def test_ca_key_is_private_and_ca_cannot_be_overwritten(ca: FleetCA, tmp_path: Path) -> None:
    assert stat.S_IMODE(ca.paths.ca_key.stat().st_mode) == 0o600
    constraints = ca.cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert constraints.ca
    with pytest.raises(CAError, match="already exists"):
        FleetCA.init(tmp_path / "fleet")


def test_missing_ca_is_reported_with_the_command_that_makes_one(tmp_path: Path) -> None:
    with pytest.raises(CAError, match="fleet ca init"):
        FleetCA(tmp_path / "nothing")


def test_device_certificate_names_site_and_device_whatever_the_csr_says(ca: FleetCA) -> None:
    key = new_private_key()
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "other-site/admin")]))
        .sign(key, hashes.SHA256())
    )
    cert = ca.sign_device_csr(csr, "pharmacy-1", "sf-0123456789ab", days=30)
    assert cn_of(cert) == "pharmacy-1/sf-0123456789ab"
    assert cert.public_key() == key.public_key()
    usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    ca.verify_issued(cert)
    assert [c.cn for c in ca.registry.certs(kind="device")] == ["pharmacy-1/sf-0123456789ab"]


@pytest.mark.parametrize(
    ("site", "device"), [("a/b", "dev"), ("site", "+"), ("site", "#"), ("", "dev"), ("s", "a b")]
)
def test_names_that_would_break_topics_or_acls_are_refused(site: str, device: str) -> None:
    with pytest.raises(CAError):
        device_common_name(site, device)


def test_role_names_can_never_look_like_a_device(ca: FleetCA) -> None:
    assert role_common_name(Role.BACKEND, "trace") == "backend.trace"
    assert "/" not in role_common_name(Role.FLEET, "ops")
    with pytest.raises(CAError):
        role_common_name(Role.FLEET, "site/dev")
    cert_path, key_path = ca.issue_role(Role.FLEET, "ops")
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    assert cn_of(x509.load_pem_x509_certificate(cert_path.read_bytes())) == "fleet.ops"


def test_server_certificate_names_every_host(ca: FleetCA) -> None:
    cert_path, _ = ca.issue_server(["broker.example.org", "10.0.0.5"])
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["broker.example.org"]
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["10.0.0.5"]
    usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [ExtendedKeyUsageOID.SERVER_AUTH]


def test_revoked_serial_is_in_the_crl_and_fails_verification(ca: FleetCA) -> None:
    key = new_private_key()
    cert = ca.sign_device_csr(build_csr(key, "s", "d"), "s", "d")
    ca.revoke(cert.serial_number, "key_compromise")
    crl = x509.load_pem_x509_crl(ca.paths.crl.read_bytes())
    assert crl.is_signature_valid(ca.cert.public_key())  # type: ignore[arg-type]
    assert crl.get_revoked_certificate_by_serial_number(cert.serial_number) is not None
    with pytest.raises(CAError, match="revoked"):
        ca.verify_issued(cert)


def test_crl_numbers_increase(ca: FleetCA) -> None:
    first = ca.write_crl().extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    second = ca.write_crl().extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    assert second > first


def test_crl_is_due_for_renewal_well_before_next_update(ca: FleetCA) -> None:
    now = datetime.now(UTC)
    ca.write_crl(days=7, now=now)
    assert not ca.crl_due(now=now)
    assert not ca.crl_due(now=now + timedelta(days=3, hours=23))
    assert ca.crl_due(now=now + timedelta(days=4, hours=1))
    assert ca.renew_crl_if_due() is False


def test_certificate_of_another_ca_does_not_verify(ca: FleetCA, tmp_path: Path) -> None:
    other = FleetCA.init(tmp_path / "other")
    cert = other.sign_device_csr(build_csr(new_private_key(), "s", "d"), "s", "d")
    with pytest.raises(CAError, match="not issued by this fleet CA"):
        ca.verify_issued(cert)


def test_expired_certificate_does_not_verify(ca: FleetCA) -> None:
    old = datetime.now(UTC) - timedelta(days=10)
    cert = ca.sign_device_csr(build_csr(new_private_key(), "s", "d"), "s", "d", days=1, now=old)
    with pytest.raises(CAError, match="expired"):
        ca.verify_issued(cert)
