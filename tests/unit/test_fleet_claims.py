"""Claims and the enrollment service's decisions (no broker: the request handler alone)."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from scanfleet.daemon.core.claims import Claim, ClaimError, secret_hash
from scanfleet.daemon.core.enrollment import EnrollRequest
from scanfleet.daemon.remote.enroll import build_csr
from scanfleet.provisioning.ca import FleetCA, new_private_key
from scanfleet.provisioning.claims import create_claim
from scanfleet.provisioning.service import MAX_REQUEST_BYTES, handle_request

URL = "mqtts://broker.example:8883"


@pytest.fixture
def ca(tmp_path: Path) -> FleetCA:
    return FleetCA.init(tmp_path / "fleet")


def test_claim_token_round_trips_and_keeps_its_secret_out_of_repr(ca: FleetCA) -> None:
    _, claim = create_claim(ca.registry, "pharmacy-7", "fleet.example.org", 8884)
    parsed = Claim.parse(claim.token)
    assert parsed == claim
    assert claim.token.startswith("scanfleet-claim://pharmacy-7:")
    assert claim.secret not in repr(claim)
    assert len(claim.secret) >= 26  # 128 bits in base32


def test_registry_stores_only_the_hash_of_the_secret(ca: FleetCA) -> None:
    _, claim = create_claim(ca.registry, "s", "h", 1)
    raw = ca.paths.registry.read_bytes()
    assert claim.secret.encode() not in raw
    assert ca.registry.find_claim(secret_hash(claim.secret)) is not None


@pytest.mark.parametrize(
    "text",
    [
        "",
        "https://site:secret@host:1",
        "scanfleet-claim://site@host:1",
        "scanfleet-claim://bad/site:secret@host:1",
        "scanfleet-claim://site:secret@host",
        "scanfleet-claim://site:secret@host:99999",
    ],
)
def test_malformed_tokens_are_refused(text: str) -> None:
    with pytest.raises(ClaimError):
        Claim.parse(text)


def enroll_request(claim: Claim, device: str, *, site: str | None = None) -> bytes:
    key = new_private_key()
    request = EnrollRequest(
        kind="enroll",
        site=site or claim.site,
        device=device,
        nonce="n1",
        csr=build_csr(key, claim.site, device).public_bytes(serialization.Encoding.PEM).decode(),
        claim=claim.secret,
    )
    return request.model_dump_json(by_alias=True).encode()


def test_a_claim_enrolls_exactly_one_device(ca: FleetCA) -> None:
    _, claim = create_claim(ca.registry, "s1", "h", 1)
    first = handle_request(ca, enroll_request(claim, "dev-1"), URL)
    assert first is not None
    assert first.ok
    assert first.broker_url == URL
    assert first.cert is not None
    cert = x509.load_pem_x509_certificate(first.cert.encode())
    ca.verify_issued(cert)
    second = handle_request(ca, enroll_request(claim, "dev-2"), URL)
    assert second is not None
    assert not second.ok
    assert second.error == "claim already used"


def test_expired_claim_and_claim_for_another_site_are_refused(ca: FleetCA) -> None:
    past = datetime.now(UTC) - timedelta(days=2)
    _, old = create_claim(ca.registry, "s1", "h", 1, ttl=timedelta(hours=1), now=past)
    response = handle_request(ca, enroll_request(old, "dev-1"), URL)
    assert response is not None
    assert response.error == "claim expired"
    _, claim = create_claim(ca.registry, "s1", "h", 1)
    forged = Claim("s2", claim.secret, "h", 1)
    response = handle_request(ca, enroll_request(forged, "dev-1"), URL)
    assert response is not None
    assert response.error == "claim is for another site"
    # The refused attempt did not burn the claim.
    response = handle_request(ca, enroll_request(claim, "dev-1"), URL)
    assert response is not None
    assert response.ok


def test_device_bound_claim_enrolls_only_that_device(ca: FleetCA) -> None:
    _, claim = create_claim(ca.registry, "s1", "h", 1, device="dev-9")
    response = handle_request(ca, enroll_request(claim, "dev-8"), URL)
    assert response is not None
    assert response.error == "claim is bound to another device"


def test_oversized_request_is_dropped_before_parsing(
    ca: FleetCA, caplog: pytest.LogCaptureFixture
) -> None:
    _, claim = create_claim(ca.registry, "s1", "h", 1)
    request = json.loads(enroll_request(claim, "dev-1"))
    request["pad"] = "x" * MAX_REQUEST_BYTES  # otherwise valid, and the claim is good
    assert handle_request(ca, json.dumps(request).encode(), URL) is None
    assert "oversized" in caplog.text
    assert "malformed" not in caplog.text, "it was parsed"
    assert handle_request(ca, enroll_request(claim, "dev-1"), URL) is not None, "claim unused"


def test_garbage_gets_no_answer_and_bad_csr_gets_an_error(ca: FleetCA) -> None:
    assert handle_request(ca, b"\xff not json", URL) is None
    assert handle_request(ca, json.dumps({"kind": "enroll"}).encode(), URL) is None
    _, claim = create_claim(ca.registry, "s1", "h", 1)
    bad = EnrollRequest(
        kind="enroll", site="s1", device="d", nonce="n", csr="not a csr", claim=claim.secret
    )
    response = handle_request(ca, bad.model_dump_json(by_alias=True).encode(), URL)
    assert response is not None
    assert not response.ok
    assert response.nonce == "n"


def renew_request(
    cert: x509.Certificate, signer: ec.EllipticCurvePrivateKey, site: str, device: str
) -> bytes:
    new_key = new_private_key()
    csr = build_csr(new_key, site, device)
    proof = signer.sign(csr.public_bytes(serialization.Encoding.DER), ec.ECDSA(hashes.SHA256()))
    return (
        EnrollRequest(
            kind="renew",
            site=site,
            device=device,
            nonce="r",
            csr=csr.public_bytes(serialization.Encoding.PEM).decode(),
            cert=cert.public_bytes(serialization.Encoding.PEM).decode(),
            proof=base64.b64encode(proof).decode(),
        )
        .model_dump_json(by_alias=True)
        .encode()
    )


def test_renewal_needs_proof_by_the_current_key(ca: FleetCA) -> None:
    key = new_private_key()
    cert = ca.sign_device_csr(build_csr(key, "s1", "dev-1"), "s1", "dev-1")
    stolen_cert_only = handle_request(
        ca, renew_request(cert, new_private_key(), "s1", "dev-1"), URL
    )
    assert stolen_cert_only is not None
    assert not stolen_cert_only.ok
    other_device = handle_request(ca, renew_request(cert, key, "s1", "dev-2"), URL)
    assert other_device is not None
    assert other_device.error == "the current certificate is for another device"
    renewed = handle_request(ca, renew_request(cert, key, "s1", "dev-1"), URL)
    assert renewed is not None
    assert renewed.ok
    assert ca.registry.is_revoked(cert.serial_number)
    again = handle_request(ca, renew_request(cert, key, "s1", "dev-1"), URL)
    assert again is not None
    assert again.error == "certificate is revoked"
