"""The fleet certificate authority: one EC P-256 CA that signs device, role and broker certificates.

Layout of the fleet directory (``scanfleet fleet --fleet-dir DIR``)::

    ca/ca.key         CA private key (0600, never leaves the fleet host)
    ca/ca.pem         CA certificate (public: shipped on device images, given to the broker)
    ca/crl.pem        certificate revocation list (the broker's ``crlfile``)
    broker/server.*   the broker's server certificate and key
    identities/*.pem  backend and fleet-service client certificates and keys
    fleet.sqlite3     registry of issued certificates and claims (:mod:`.registry`)

Device certificates carry ``CN={site}/{device}``: with mosquitto's
``use_identity_as_username`` the CN becomes the MQTT username, and the ACL
pattern ``scanfleet/v1/%u/scans`` expands to exactly that device's topics.
Role identities (``backend.NAME``, ``fleet.NAME``) contain no ``/``, so they can
never expand to a device topic.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from scanfleet.daemon.core.errors import ScanfleetError
from scanfleet.daemon.core.model import valid_name
from scanfleet.daemon.core.statefiles import write_atomic
from scanfleet.provisioning.registry import Registry, RegistrySchemaError

log = logging.getLogger(__name__)

CA_DAYS = 3650
DEVICE_DAYS = 90
ROLE_DAYS = 365
SERVER_DAYS = 365
CRL_DAYS = 7
"""A CRL is valid this long; it is renewed well before (an expired CRL locks every device out)."""
CRL_RENEW_MARGIN = timedelta(days=3)


class Role(StrEnum):
    """Non-device identities with their own ACL blocks."""

    BACKEND = "backend"
    """Traceability backends: read every device's scans, state, health; request resends."""
    FLEET = "fleet"
    """Fleet service and IT tooling: enrollment, config push, commands, inventory."""


class CAError(ScanfleetError, ValueError):
    """The CA cannot do what was asked (missing CA, bad CSR, bad name)."""


def device_common_name(site: str, device: str) -> str:
    """The CN (and MQTT username) of a device certificate: ``{site}/{device}``."""
    if not (valid_name(site) and valid_name(device)):
        raise CAError(f"invalid site or device id: {site!r}/{device!r}")
    return f"{site}/{device}"


def role_common_name(role: Role, name: str) -> str:
    """The CN of a role certificate: ``{role}.{name}`` (no ``/``, unlike every device CN)."""
    if not valid_name(name):
        raise CAError(f"invalid identity name {name!r}")
    return f"{role.value}.{name}"


def new_private_key() -> ec.EllipticCurvePrivateKey:
    """A fresh EC P-256 key (accepted by mosquitto 2.0 / OpenSSL 3 and fast to make)."""
    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    """Unencrypted PKCS#8 PEM of *key* (the file holding it is 0600)."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def cert_pem(cert: x509.Certificate) -> bytes:
    """PEM of *cert*."""
    return cert.public_bytes(serialization.Encoding.PEM)


def write_private(path: Path, data: bytes) -> None:
    """Write a secret file atomically, created 0600 (never readable by others, not even briefly)."""
    # The directory keeps the default mode: ca/ also holds ca.pem and crl.pem, which
    # the broker's account must reach.
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, data, 0o600)


def write_public(path: Path, data: bytes) -> None:
    """Write a public file (certificate, CRL) atomically, mode 0644."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    tmp.chmod(0o644)
    os.replace(tmp, path)


@dataclass(frozen=True)
class FleetPaths:
    """Where the files of a fleet directory live."""

    root: Path

    @property
    def ca_key(self) -> Path:
        """CA private key."""
        return self.root / "ca" / "ca.key"

    @property
    def ca_cert(self) -> Path:
        """CA certificate."""
        return self.root / "ca" / "ca.pem"

    @property
    def crl(self) -> Path:
        """Current CRL (PEM)."""
        return self.root / "ca" / "crl.pem"

    @property
    def server_cert(self) -> Path:
        """Broker server certificate."""
        return self.root / "broker" / "server.pem"

    @property
    def server_key(self) -> Path:
        """Broker server key."""
        return self.root / "broker" / "server.key"

    def identity(self, common_name: str) -> tuple[Path, Path]:
        """(certificate, key) paths of a role identity."""
        return (
            self.root / "identities" / f"{common_name}.pem",
            self.root / "identities" / f"{common_name}.key",
        )

    @property
    def registry(self) -> Path:
        """The SQLite registry of certificates and claims."""
        return self.root / "fleet.sqlite3"


def _now() -> datetime:
    return datetime.now(UTC)


class FleetCA:
    """A loaded fleet CA: signs certificates, revokes them, keeps the CRL current."""

    def __init__(self, root: Path) -> None:
        # Absolute: the paths end up in mosquitto.conf.
        self.paths = FleetPaths(root.resolve())
        try:
            key = serialization.load_pem_private_key(self.paths.ca_key.read_bytes(), None)
            self.cert = x509.load_pem_x509_certificate(self.paths.ca_cert.read_bytes())
        except FileNotFoundError as err:
            raise CAError(f"no fleet CA in {root} (run 'scanfleet fleet ca init')") from err
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise CAError(f"{self.paths.ca_key} is not an EC key")
        self._key = key
        try:
            self.registry = Registry(self.paths.registry)
        except (RegistrySchemaError, sqlite3.DatabaseError) as err:
            raise CAError(f"fleet registry {self.paths.registry}: {err}") from err

    @classmethod
    def init(cls, root: Path, *, name: str = "scanfleet fleet CA", days: int = CA_DAYS) -> FleetCA:
        """Create a new CA (key, self-signed certificate, empty CRL); refuse to overwrite one."""
        paths = FleetPaths(root)
        if paths.ca_key.exists():
            raise CAError(f"a fleet CA already exists in {root}")
        key = new_private_key()
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = _now()
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5))
            .not_valid_after(now + timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .sign(key, hashes.SHA256())
        )
        write_private(paths.ca_key, key_pem(key))
        write_public(paths.ca_cert, cert_pem(cert))
        ca = cls(root)
        ca.write_crl()
        log.info("created fleet CA %r in %s", name, root)
        return ca

    # -- signing ---------------------------------------------------------------------------

    def _sign(
        self,
        public_key: ec.EllipticCurvePublicKey,
        common_name: str,
        *,
        days: int,
        usage: x509.ObjectIdentifier,
        san: Sequence[x509.GeneralName] = (),
        now: datetime | None = None,
    ) -> x509.Certificate:
        now = now or _now()
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .issuer_name(self.cert.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            # A few minutes of slack for devices whose clock runs slightly behind.
            .not_valid_before(now - timedelta(minutes=5))
            .not_valid_after(min(now + timedelta(days=days), self.cert.not_valid_after_utc))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=True,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()), False
            )
        )
        if san:
            builder = builder.add_extension(x509.SubjectAlternativeName(list(san)), False)
        return builder.sign(self._key, hashes.SHA256())

    def sign_device_csr(
        self,
        csr: x509.CertificateSigningRequest,
        site: str,
        device: str,
        *,
        days: int = DEVICE_DAYS,
        now: datetime | None = None,
    ) -> x509.Certificate:
        """Certify the key in *csr* as ``{site}/{device}``; the CSR's own subject is ignored."""
        if not csr.is_signature_valid:
            raise CAError("the CSR signature does not verify")
        public_key = csr.public_key()
        if not isinstance(public_key, ec.EllipticCurvePublicKey):
            raise CAError("device keys must be EC keys")
        cn = device_common_name(site, device)
        cert = self._sign(public_key, cn, days=days, usage=ExtendedKeyUsageOID.CLIENT_AUTH, now=now)
        self.registry.add_cert(cert, cn, kind="device")
        log.info("issued device certificate %s serial %x", cn, cert.serial_number)
        return cert

    def issue_role(self, role: Role, name: str, *, days: int = ROLE_DAYS) -> tuple[Path, Path]:
        """Create a key and client certificate for a backend or fleet identity; return paths."""
        cn = role_common_name(role, name)
        key = new_private_key()
        cert = self._sign(key.public_key(), cn, days=days, usage=ExtendedKeyUsageOID.CLIENT_AUTH)
        cert_path, key_path = self.paths.identity(cn)
        write_private(key_path, key_pem(key))
        write_public(cert_path, cert_pem(cert))
        self.registry.add_cert(cert, cn, kind=role.value)
        return cert_path, key_path

    def issue_server(self, hosts: Sequence[str], *, days: int = SERVER_DAYS) -> tuple[Path, Path]:
        """Create the broker's server key and certificate for *hosts* (names or IP addresses)."""
        if not hosts:
            raise CAError("the broker certificate needs at least one host name or address")
        san: list[x509.GeneralName] = []
        for host in hosts:
            try:
                san.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                san.append(x509.DNSName(host))
        key = new_private_key()
        cert = self._sign(
            key.public_key(), hosts[0], days=days, usage=ExtendedKeyUsageOID.SERVER_AUTH, san=san
        )
        write_private(self.paths.server_key, key_pem(key))
        write_public(self.paths.server_cert, cert_pem(cert))
        self.registry.add_cert(cert, hosts[0], kind="server")
        return self.paths.server_cert, self.paths.server_key

    # -- verification ----------------------------------------------------------------------

    def verify_issued(self, cert: x509.Certificate, *, now: datetime | None = None) -> None:
        """Raise :class:`CAError` unless *cert* is from this CA, current and not revoked."""
        now = now or _now()
        try:
            cert.verify_directly_issued_by(self.cert)
        except (ValueError, TypeError, InvalidSignature) as err:
            raise CAError("certificate was not issued by this fleet CA") from err
        if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
            raise CAError("certificate is expired or not yet valid")
        if self.registry.is_revoked(cert.serial_number):
            raise CAError("certificate is revoked")

    # -- revocation ------------------------------------------------------------------------

    def revoke(self, serial: int, reason: str = "unspecified") -> None:
        """Revoke one certificate and rewrite the CRL (then reload the broker)."""
        self.registry.revoke(serial, reason)
        self.write_crl()

    def write_crl(
        self, *, days: int = CRL_DAYS, now: datetime | None = None
    ) -> x509.CertificateRevocationList:
        """Sign a new CRL listing every revoked serial, valid *days*, and write it."""
        now = now or _now()
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(self.cert.subject)
            .last_update(now - timedelta(minutes=5))
            .next_update(now + timedelta(days=days))
            .add_extension(x509.CRLNumber(self.registry.next_crl_number()), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()), False
            )
        )
        for serial, revoked_at in self.registry.revoked():
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder()
                .serial_number(serial)
                .revocation_date(revoked_at)
                .build()
            )
        crl = builder.sign(self._key, hashes.SHA256())
        write_public(self.paths.crl, crl.public_bytes(serialization.Encoding.PEM))
        return crl

    def crl_due(self, *, margin: timedelta = CRL_RENEW_MARGIN, now: datetime | None = None) -> bool:
        """True when the CRL is missing or its nextUpdate is less than *margin* away."""
        now = now or _now()
        try:
            crl = x509.load_pem_x509_crl(self.paths.crl.read_bytes())
        except FileNotFoundError:
            return True
        next_update = crl.next_update_utc
        return next_update is None or next_update - now < margin

    def renew_crl_if_due(self, *, margin: timedelta = CRL_RENEW_MARGIN) -> bool:
        """Rewrite the CRL when :meth:`crl_due`; True when it was rewritten (reload the broker)."""
        if not self.crl_due(margin=margin):
            return False
        self.write_crl()
        log.info("renewed the CRL in %s", self.paths.crl)
        return True
