"""Issuing and redeeming claims against the fleet registry, and drawing them as QR codes.

The token format itself (:class:`~scanfleet.daemon.core.claims.Claim`) is shared with
the terminal and lives in :mod:`scanfleet.daemon.core.claims`.
"""

from __future__ import annotations

import io
import secrets
from datetime import UTC, datetime, timedelta

import segno

from scanfleet.daemon.core.claims import Claim, ClaimError, new_secret, secret_hash
from scanfleet.daemon.core.model import valid_name
from scanfleet.provisioning.registry import ClaimRecord, Registry

DEFAULT_TTL = timedelta(hours=24)


def _qr(claim: Claim) -> segno.QRCode:
    # Error level M (15 % recovery; segno raises it when the version has room) keeps a
    # ~60-character token at version 4-5: large modules, so a counter scanner reads it
    # off a phone screen or a smudged print. Byte mode keeps the token's case exact.
    return segno.make_qr(claim.token, error="m", encoding="utf-8")


def claim_qr_png(claim: Claim, *, scale: int = 8) -> bytes:
    """The claim's token as a QR code in PNG form (quiet zone included).

    The image holds the secret: whoever stores it stores a usable claim.
    """
    out = io.BytesIO()
    _qr(claim).save(out, kind="png", scale=scale, border=4)
    return out.getvalue()


def claim_qr_text(claim: Claim) -> str:
    """The claim's token as a QR code drawn with block characters for a terminal.

    Two module rows per text line (upper/lower half blocks), light modules drawn,
    so it reads on a dark terminal; the quiet zone is 2 modules, which scanners and
    phone cameras accept on screen.
    """
    out = io.StringIO()
    _qr(claim).terminal(out=out, compact=True, border=2)
    return out.getvalue()


def create_claim(
    registry: Registry,
    site: str,
    enroll_host: str,
    enroll_port: int,
    *,
    ttl: timedelta = DEFAULT_TTL,
    device: str | None = None,
    now: datetime | None = None,
) -> tuple[str, Claim]:
    """Create and record a claim; return (claim id, claim)."""
    if not valid_name(site):
        raise ClaimError(f"invalid site id {site!r}")
    if device is not None and not valid_name(device):
        raise ClaimError(f"invalid device id {device!r}")
    if ttl <= timedelta(0):
        raise ClaimError("a claim needs a positive lifetime")
    now = now or datetime.now(UTC)
    claim = Claim(site, new_secret(), enroll_host, enroll_port)
    claim_id = secrets.token_hex(4)
    registry.add_claim(claim_id, secret_hash(claim.secret), site, device, now + ttl)
    return claim_id, claim


def redeem_claim(
    registry: Registry,
    claim: Claim,
    device: str,
    *,
    existing_device: bool,
    now: datetime | None = None,
) -> ClaimRecord:
    """Check *claim* for enrolling *device* and consume it; raise :class:`ClaimError` if not.

    *existing_device* says whether the device id already holds a valid certificate:
    then only a claim bound to that device id may re-enroll it.
    """
    now = now or datetime.now(UTC)
    record = registry.find_claim(secret_hash(claim.secret))
    if record is None:
        raise ClaimError("unknown claim")
    if record.site != claim.site:
        raise ClaimError("claim is for another site")
    if record.used_at is not None:
        raise ClaimError("claim already used")
    if record.expires_at <= now:
        raise ClaimError("claim expired")
    if record.device is not None and record.device != device:
        raise ClaimError("claim is bound to another device")
    if existing_device and record.device != device:
        raise ClaimError(
            "device already enrolled: re-enroll it with a claim bound to it "
            "(fleet claim create --device) or renew with its current certificate"
        )
    if not registry.consume_claim(record.id, f"{claim.site}/{device}", now):
        # Lost a race with another request using the same claim.
        raise ClaimError("claim already used")
    return record
