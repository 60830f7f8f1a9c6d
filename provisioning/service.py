"""``scanfleet fleet serve``: the enrollment service.

It connects to the enrollment broker's service listener with its ``fleet.*``
certificate (:mod:`scanfleet.provisioning.enroll_broker`; its client id there is its
CN, which no anonymous client can take), subscribes to
``scanfleet/v1/enroll/+/request`` — the requests devices publish on the anonymous
enrollment listener of that broker — and answers each on ``…/{client}/response``.
A request larger than :data:`MAX_REQUEST_BYTES` is dropped before it is parsed.

* ``enroll``: the claim must be known, for this site, unused and unexpired (it is
  consumed atomically); a device id that already holds a valid certificate can only
  be re-enrolled with a claim bound to it, and its older certificates are revoked;
* ``renew``: the current certificate must be from this CA, current and unrevoked,
  name the same site and device, and have signed the new CSR (proof of possession);
  the old certificate is revoked once the new one is issued.

Every revocation (re-enrollment, renewal) goes through
:class:`~scanfleet.provisioning.revocation.Revoker`: new CRL, ``--reload-command`` and
the open sessions of the old certificate disconnected, at once. The service also keeps
the CRL fresh: it rewrites it well before ``nextUpdate`` and runs the reload command.
"""

from __future__ import annotations

import base64
import logging
import time
from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from pydantic import ValidationError

from scanfleet.daemon.core.claims import Claim, ClaimError
from scanfleet.daemon.core.config import MqttVersion
from scanfleet.daemon.core.enrollment import EnrollRequest, EnrollResponse
from scanfleet.daemon.core.errors import BrokerConnectionError, ScanfleetError
from scanfleet.daemon.core.mqtt_client import (
    Message,
    Session,
    TlsFiles,
    open_session,
    reconnect_backoff,
)
from scanfleet.provisioning.ca import CAError, FleetCA, device_common_name
from scanfleet.provisioning.claims import redeem_claim
from scanfleet.provisioning.enroll_broker import ENROLL_CLIENT_PREFIX
from scanfleet.provisioning.revocation import Revoker, run_reload

log = logging.getLogger(__name__)

REQUEST_FILTER = "scanfleet/v1/enroll/+/request"
CRL_CHECK_INTERVAL = 3600.0
MAX_REQUEST_BYTES = 8 * 1024
"""Largest request the service parses; a real renewal request is under 3 KiB."""


class Refused(ScanfleetError):
    """An enrollment request is refused; the message goes back to the device."""


def handle_request(
    ca: FleetCA,
    payload: bytes | bytearray,
    broker_url: str,
    now: datetime | None = None,
    *,
    revoker: Revoker | None = None,
) -> EnrollResponse | None:
    """Answer one request payload; None when it is too malformed to answer (no nonce).

    *revoker* revokes superseded certificates (default: registry and CRL only, no
    broker reload: what the unit tests need).
    """
    now = now or datetime.now(UTC)
    revoker = revoker or Revoker(ca)
    if len(payload) > MAX_REQUEST_BYTES:
        log.warning("dropped an oversized enrollment request (%d bytes)", len(payload))
        return None
    try:
        request = EnrollRequest.model_validate_json(payload)
    except ValidationError as err:
        log.warning("malformed enrollment request: %d problem(s)", err.error_count())
        return None
    try:
        csr = x509.load_pem_x509_csr(request.csr.encode())
        if request.kind == "enroll":
            cert = _enroll(ca, request, csr, now, revoker)
        else:
            cert = _renew(ca, request, csr, now, revoker)
    except (Refused, ClaimError, CAError) as err:
        log.warning("refused %s of %s/%s: %s", request.kind, request.site, request.device, err)
        return EnrollResponse(nonce=request.nonce, ok=False, error=str(err))
    except ValueError as err:
        log.warning("refused %s of %s/%s: bad CSR", request.kind, request.site, request.device)
        return EnrollResponse(nonce=request.nonce, ok=False, error=f"bad CSR: {err}")
    return EnrollResponse(
        nonce=request.nonce,
        ok=True,
        cert=cert.public_bytes(serialization.Encoding.PEM).decode(),
        ca=ca.cert.public_bytes(serialization.Encoding.PEM).decode(),
        broker_url=broker_url,
    )


def _enroll(
    ca: FleetCA,
    request: EnrollRequest,
    csr: x509.CertificateSigningRequest,
    now: datetime,
    revoker: Revoker,
) -> x509.Certificate:
    if request.claim is None:
        raise Refused("enroll needs a claim")
    if not csr.is_signature_valid:
        # Checked before the claim is consumed: a broken request must not burn the claim.
        raise Refused("the CSR signature does not verify")
    cn = device_common_name(request.site, request.device)
    previous = ca.registry.active_certs(cn, now=now)
    claim = Claim(request.site, request.claim, "-", 0)
    redeem_claim(ca.registry, claim, request.device, existing_device=bool(previous), now=now)
    cert = ca.sign_device_csr(csr, request.site, request.device)
    if previous:
        revoker.revoke([old.serial for old in previous], "superseded")
    return cert


def _renew(
    ca: FleetCA,
    request: EnrollRequest,
    csr: x509.CertificateSigningRequest,
    now: datetime,
    revoker: Revoker,
) -> x509.Certificate:
    if request.cert is None or request.proof is None:
        raise Refused("renew needs the current certificate and a proof")
    current = x509.load_pem_x509_certificate(request.cert.encode())
    ca.verify_issued(current, now=now)
    cn = device_common_name(request.site, request.device)
    names = current.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    if not names or names[0].value != cn:
        raise Refused("the current certificate is for another device")
    public_key = current.public_key()
    if not isinstance(public_key, ec.EllipticCurvePublicKey):
        raise Refused("the current certificate has no EC key")
    try:
        public_key.verify(
            base64.b64decode(request.proof, validate=True),
            csr.public_bytes(serialization.Encoding.DER),
            ec.ECDSA(hashes.SHA256()),
        )
    except (InvalidSignature, ValueError) as err:
        raise Refused("the proof does not verify with the current certificate's key") from err
    cert = ca.sign_device_csr(csr, request.site, request.device)
    revoker.revoke([current.serial_number], "superseded")
    return cert


class EnrollmentService:
    """The MQTT side of the service; :meth:`run` until :meth:`stop`."""

    def __init__(
        self,
        ca: FleetCA,
        *,
        host: str,
        port: int,
        cert_file: str,
        key_file: str,
        broker_url: str,
        reload_command: str | None = None,
        admin_socket: Path | None = None,
        client_id: str = f"{ENROLL_CLIENT_PREFIX}service",
        protocol: MqttVersion = "5",
    ) -> None:
        """*host*/*port*: the enrollment broker's service listener; *broker_url*: the
        device listener given to devices; *admin_socket*: the device broker's."""
        self.ca = ca
        self.host = host
        self.port = port
        self.broker_url = broker_url
        self.reload_command = reload_command
        self.revoker = Revoker(ca, reload_command, admin_socket)
        self._stopping = False
        self.answered = 0
        self._client_id = client_id
        self._protocol: MqttVersion = protocol  # 3.1.1: RabbitMQ, NATS (docs/brokers.md)
        self._tls = TlsFiles(ca.paths.ca_cert, cert_file, key_file)
        self.connected = False

    def _on_message(self, session: Session, msg: Message) -> None:
        levels = msg.topic.split("/")
        if len(levels) != 5 or levels[4] != "request":
            return
        response = handle_request(self.ca, msg.payload, self.broker_url, revoker=self.revoker)
        if response is None:
            return
        topic = "/".join([*levels[:4], "response"])
        session.publish(topic, response.model_dump_json(by_alias=True).encode(), timeout=None)
        self.answered += 1

    def stop(self) -> None:
        """Ask :meth:`run` to return (safe from a signal handler)."""
        self._stopping = True

    def _connect(self) -> Session:
        session = open_session(
            self.host,
            self.port,
            client_id=self._client_id,
            protocol=self._protocol,
            tls=self._tls,
            on_message=self._on_message,
        )
        try:
            session.subscribe(REQUEST_FILTER)
        except OSError:
            session.close()
            raise
        return session

    def _sleep(self, delay: float) -> None:
        deadline = time.monotonic() + delay
        while not self._stopping and time.monotonic() < deadline:
            time.sleep(min(0.2, max(0.0, deadline - time.monotonic())))

    def run(self) -> None:
        """Serve until :meth:`stop`, reconnecting with backoff; keep the CRL fresh.

        Every attempt is a fresh client (:func:`~scanfleet.daemon.core.mqtt_client.open_session`).
        """
        backoff = reconnect_backoff()
        next_crl_check = 0.0
        session: Session | None = None
        while not self._stopping:
            if time.monotonic() >= next_crl_check:
                self.check_crl()
                next_crl_check = time.monotonic() + CRL_CHECK_INTERVAL
            if session is None:
                try:
                    session = self._connect()
                except OSError as err:  # refused, TLS, unreachable, no SUBACK in time
                    delay = backoff.next()
                    log.warning(
                        "broker %s:%d: %s; retry in %.1fs", self.host, self.port, err, delay
                    )
                    self._sleep(delay)
                    continue
                self.connected = True
                backoff.reset()
                log.info("enrollment service connected to %s:%d", self.host, self.port)
            try:
                session.pump(0.5)
            except BrokerConnectionError as err:
                session.close()
                session = None
                self.connected = False
                delay = backoff.next()
                log.warning("broker connection: %s; retry in %.1fs", err.reason, delay)
                self._sleep(delay)
        if session is not None:
            session.close()
        self.connected = False

    def check_crl(self) -> None:
        """Renew the CRL when due and have the broker reload it."""
        if self.ca.renew_crl_if_due():
            run_reload(self.reload_command)
