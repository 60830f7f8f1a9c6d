"""Device side of enrollment: the device's own key, its certificate, and renewal.

The daemon calls :func:`ensure_enrolled` before the publisher starts. It

* returns at once when the config names its own ``cert_file`` (hand-provisioned), or
  when nothing asks for enrollment (no claim, no certificate: a plain broker);
* otherwise makes sure ``{state_dir}/tls/`` holds a current certificate: it
  **enrolls** with the claim in ``{state_dir}/claim`` (one line, the token; put there
  by ``scanfleet enroll --claim`` or the SD image) or **renews** a certificate that has
  less than a third of its lifetime left, over the enrollment listener.

The private key is generated here, written 0600, and never leaves the device: the
request carries a CSR (public key plus signature) and, for renewal, the current
certificate and a signature of the new CSR by the current key.
The enrollment listener is verified against ``broker.ca_file`` (the fleet CA,
shipped with the image), so a claim is never sent to an impostor.
"""

from __future__ import annotations

import base64
import json
import logging
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from scanfleet.daemon.core.claims import Claim, ClaimError
from scanfleet.daemon.core.config import BrokerConfig, Config
from scanfleet.daemon.core.enrollment import (
    EnrollRequest,
    EnrollResponse,
    request_topic,
    response_topic,
)
from scanfleet.daemon.core.errors import BrokerConnectionError, EnrollmentError
from scanfleet.daemon.core.identity import Identity
from scanfleet.daemon.core.model import valid_name
from scanfleet.daemon.core.mqtt_client import Message, Session, TlsFiles, open_session
from scanfleet.daemon.core.statefiles import write_atomic

if TYPE_CHECKING:
    # cryptography (~9 MB resident) is imported where a key, CSR or certificate is
    # handled: a terminal that does not enroll never loads it.
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec

log = logging.getLogger(__name__)

CLAIM_FILE = "claim"
TLS_DIR = "tls"
REQUEST_RETRY = 5.0
"""Seconds before an unanswered request is sent again (the service answers the first;
a repeat of a consumed claim gets a refusal that arrives after the certificate)."""
RENEW_FRACTION = 1 / 3
"""Renew when less than this share of the certificate's lifetime is left."""


@dataclass(frozen=True)
class Enrolled:
    """What the daemon needs after :func:`ensure_enrolled`."""

    identity: Identity
    broker: BrokerConfig
    not_after: datetime | None
    """Expiry of the device certificate; None when enrollment is not in use."""


@dataclass(frozen=True)
class DeviceTLS:
    """The files of ``{state_dir}/tls``."""

    root: Path

    @property
    def key(self) -> Path:
        """Device private key (0600)."""
        return self.root / "device.key"

    @property
    def cert(self) -> Path:
        """Device certificate."""
        return self.root / "device.pem"

    @property
    def meta(self) -> Path:
        """Site, broker and enrollment addresses learned at enrollment."""
        return self.root / "enrollment.json"


def write_device_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    """Store the device key in *path*, created with mode 0600 (replacing any older one)."""
    from cryptography.hazmat.primitives import serialization

    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    write_atomic(path, pem, 0o600)


def load_device_key(path: Path) -> ec.EllipticCurvePrivateKey:
    """Load the device key from *path*."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = serialization.load_pem_private_key(path.read_bytes(), None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise EnrollmentError(f"{path} is not an EC private key")
    return key


def build_csr(
    key: ec.EllipticCurvePrivateKey, site: str, device: str
) -> x509.CertificateSigningRequest:
    """A CSR for ``{site}/{device}`` signed by *key*."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import NameOID

    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{site}/{device}")])
    return x509.CertificateSigningRequestBuilder().subject_name(name).sign(key, hashes.SHA256())


def needs_renewal(cert: x509.Certificate, now: datetime | None = None) -> bool:
    """True when less than :data:`RENEW_FRACTION` of *cert*'s lifetime remains."""
    now = now or datetime.now(UTC)
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    return cert.not_valid_after_utc - now < lifetime * RENEW_FRACTION


def _cert_identity(cert: x509.Certificate) -> tuple[str, str]:
    from cryptography.x509.oid import NameOID

    cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    cn = str(cns[0].value) if cns else ""
    site, _, device = cn.partition("/")
    if not (valid_name(site) and valid_name(device)):
        raise EnrollmentError(f"device certificate has an unexpected CN {cn!r}")
    return site, device


def ensure_enrolled(
    config: Config,
    identity: Identity,
    *,
    timeout: float = 30.0,
    force: bool = False,
    renew: bool = False,
) -> Enrolled:
    """Make sure the device holds a current certificate; return identity and broker to use.

    With *force*, enroll with the claim file even when a current certificate exists
    (``scanfleet enroll --claim``: re-enrollment, e.g. into another site). With *renew*,
    renew a current certificate now (the ``rotate-cert`` command) and raise if that fails.

    Raises :class:`EnrollmentError` when enrollment is needed and fails (and no
    still-valid certificate remains to carry on with).
    """
    if config.broker.cert_file is not None:
        return Enrolled(identity, config.broker, None)
    state = config.paths.state_dir
    tls = DeviceTLS(state / TLS_DIR)
    claim_path = state / CLAIM_FILE
    meta = _read_meta(tls.meta)
    cert = _read_cert(tls.cert)
    now = datetime.now(UTC)
    reenroll = force and claim_path.exists()
    if cert is not None and meta is not None and cert.not_valid_after_utc > now and not reenroll:
        if renew or needs_renewal(cert, now):
            try:
                cert = _renew(config, identity, tls, cert, meta, timeout)
            except EnrollmentError as err:
                if renew:
                    raise
                log.warning("certificate renewal failed, carrying on with the current one: %s", err)
        return _enrolled(config, tls, cert, meta)
    if not claim_path.exists():
        if cert is not None:
            raise EnrollmentError(
                f"the device certificate in {tls.cert} has expired and there is no claim in "
                f"{claim_path} to enroll again"
            )
        return Enrolled(identity, config.broker, None)
    try:
        claim = Claim.parse(claim_path.read_text(encoding="utf-8"))
    except (ClaimError, OSError, UnicodeDecodeError) as err:
        raise EnrollmentError(f"{claim_path}: {err}") from err
    meta = {"enroll_host": claim.enroll_host, "enroll_port": claim.enroll_port}
    # The new key is written only once a certificate for it arrives: a refused
    # re-enrollment must leave the current key and certificate working.
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    csr = build_csr(key, claim.site, identity.device)
    request = EnrollRequest(
        kind="enroll",
        site=claim.site,
        device=identity.device,
        nonce=secrets.token_hex(8),
        csr=csr.public_bytes(serialization.Encoding.PEM).decode(),
        claim=claim.secret,
    )
    response = exchange(config.broker, meta, request, timeout)
    _refuse_unless_ok(response)
    write_device_key(tls.key, key)
    cert, meta = _store(tls, response, meta)
    claim_path.unlink()
    log.info("enrolled as %s/%s", claim.site, identity.device)
    return _enrolled(config, tls, cert, meta)


def _renew(
    config: Config,
    identity: Identity,
    tls: DeviceTLS,
    cert: x509.Certificate,
    meta: dict[str, Any],
    timeout: float,
) -> x509.Certificate:
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    site, device = _cert_identity(cert)
    old_key = load_device_key(tls.key)
    new_key = ec.generate_private_key(ec.SECP256R1())
    csr = build_csr(new_key, site, device)
    csr_der = csr.public_bytes(serialization.Encoding.DER)
    request = EnrollRequest(
        kind="renew",
        site=site,
        device=device,
        nonce=secrets.token_hex(8),
        csr=csr.public_bytes(serialization.Encoding.PEM).decode(),
        cert=cert.public_bytes(serialization.Encoding.PEM).decode(),
        proof=base64.b64encode(old_key.sign(csr_der, ec.ECDSA(hashes.SHA256()))).decode(),
    )
    response = exchange(config.broker, meta, request, timeout)
    _refuse_unless_ok(response)
    # Key first, then certificate: a crash in between leaves a key without its
    # certificate, and the next start needs a device-bound claim; the reverse order
    # would leave a certificate whose key is lost for good.
    write_device_key(tls.key, new_key)
    new_cert, _ = _store(tls, response, meta)
    log.info("renewed the device certificate of %s/%s", site, device)
    return new_cert


def _refuse_unless_ok(response: EnrollResponse) -> tuple[str, str]:
    """(certificate PEM, broker URL) of an accepted response; raise for a refusal."""
    if not response.ok or not response.cert or not response.broker_url:
        raise EnrollmentError(f"enrollment refused: {response.error or 'no certificate'}")
    return response.cert, response.broker_url


def _store(
    tls: DeviceTLS, response: EnrollResponse, meta: dict[str, Any]
) -> tuple[x509.Certificate, dict[str, Any]]:
    from cryptography import x509

    pem, broker_url = _refuse_unless_ok(response)
    cert = x509.load_pem_x509_certificate(pem.encode())
    write_atomic(tls.cert, pem.encode(), 0o644)
    meta = {**meta, "broker_url": broker_url}
    write_atomic(tls.meta, json.dumps(meta, sort_keys=True).encode(), 0o644)
    return cert, meta


def _enrolled(
    config: Config, tls: DeviceTLS, cert: x509.Certificate, meta: dict[str, Any]
) -> Enrolled:
    site, device = _cert_identity(cert)
    broker = BrokerConfig.model_validate(
        {
            **config.broker.model_dump(),
            "url": meta.get("broker_url", config.broker.url),
            "cert_file": tls.cert,
            "key_file": tls.key,
        }
    )
    return Enrolled(Identity(site, device), broker, cert.not_valid_after_utc)


def _read_cert(path: Path) -> x509.Certificate | None:
    try:
        pem = path.read_bytes()
    except FileNotFoundError:
        return None
    from cryptography import x509

    try:
        return x509.load_pem_x509_certificate(pem)
    except ValueError as err:
        log.warning("ignoring unreadable device certificate %s: %s", path, err)
        return None


def _read_meta(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as err:
        log.warning("ignoring unreadable %s: %s", path, err)
        return None
    return data if isinstance(data, dict) else None


def exchange(
    broker: BrokerConfig, meta: dict[str, Any], request: EnrollRequest, timeout: float
) -> EnrollResponse:
    """Send *request* over the enrollment listener and wait for the matching response."""
    if broker.ca_file is None:
        raise EnrollmentError("broker.ca_file must name the fleet CA certificate to enroll")
    client_id = f"enroll-{secrets.token_hex(6)}"
    host, port = str(meta["enroll_host"]), int(meta["enroll_port"])
    deadline = time.monotonic() + timeout

    def ours(message: Message) -> bool:
        try:
            response = EnrollResponse.model_validate_json(message.payload)
        except ValidationError:
            log.warning("ignoring a malformed enrollment response")
            return False
        return response.nonce == request.nonce

    session: Session | None = None
    try:
        session = open_session(
            host,
            port,
            client_id=client_id,
            protocol=broker.protocol,
            tls=TlsFiles(ca_file=broker.ca_file),
            timeout=timeout,
        )
        # Requests are not queued for a service that is (re)starting: ask again.
        reply = session.exchange(
            request_topic(client_id),
            request.model_dump_json(by_alias=True).encode(),
            response_topic(client_id),
            ours,
            max(0.0, deadline - time.monotonic()),
            resend_every=REQUEST_RETRY,
        )
    except BrokerConnectionError as err:
        if session is not None:  # connected, then lost
            raise EnrollmentError(f"enrollment connection lost: {err.reason}") from err
        raise EnrollmentError(f"enrollment listener {host}:{port}: {err}") from err
    except OSError as err:  # unreachable, TLS, no SUBACK in time
        raise EnrollmentError(f"enrollment listener {host}:{port}: {err}") from err
    finally:
        if session is not None:
            session.close()
    if reply is None:
        raise EnrollmentError(
            "no enrollment response in time (is 'scanfleet fleet serve' running?)"
        )
    return EnrollResponse.model_validate_json(reply.payload)
