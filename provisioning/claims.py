"""Claim tokens: short-lived, single-use permissions to enroll one device into one site.

A claim is printed for IT staff or written onto the SD image as one line of text::

    scanfleet-claim://SITE:SECRET@ENROLL_HOST:PORT

``SECRET`` is 128 random bits (base32). The registry stores only its SHA-256, so a
copy of the registry does not hold usable claims. A claim may be bound to one
device id (``--device``): only such a claim can re-enroll a device that already
holds a valid certificate, so a site's ordinary claim cannot take over another
terminal's identity.
"""

from __future__ import annotations

import base64
import hashlib
import io
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit

import segno

from scanfleet.daemon.errors import ScanfleetError
from scanfleet.daemon.model import valid_name
from scanfleet.provisioning.registry import ClaimRecord, Registry

SCHEME = "scanfleet-claim"
DEFAULT_TTL = timedelta(hours=24)


class ClaimError(ScanfleetError, ValueError):
    """A claim token is malformed, unknown, used, expired or for another site/device."""


def _new_secret() -> str:
    return base64.b32encode(secrets.token_bytes(16)).decode().rstrip("=").lower()


def secret_hash(secret: str) -> str:
    """What the registry stores instead of the secret."""
    return hashlib.sha256(secret.encode()).hexdigest()


@dataclass(frozen=True)
class Claim:
    """A parsed claim token."""

    site: str
    secret: str
    enroll_host: str
    enroll_port: int

    @property
    def token(self) -> str:
        """The printable one-line form."""
        host = f"[{self.enroll_host}]" if ":" in self.enroll_host else self.enroll_host
        return f"{SCHEME}://{self.site}:{self.secret}@{host}:{self.enroll_port}"

    @classmethod
    def parse(cls, text: str) -> Claim:
        """Parse a token; raise :class:`ClaimError` when it is not one."""
        parts = urlsplit(text.strip())
        try:
            port = parts.port
        except ValueError as err:
            raise ClaimError("claim: invalid port") from err
        if parts.scheme != SCHEME or not parts.username or not parts.password:
            raise ClaimError(f"not a claim token (expected {SCHEME}://SITE:SECRET@HOST:PORT)")
        if not valid_name(parts.username) or not parts.hostname or port is None:
            raise ClaimError("claim: bad site or enrollment address")
        return cls(parts.username, parts.password, parts.hostname, port)

    def __repr__(self) -> str:
        # Keep the secret out of logs and tracebacks.
        return f"Claim(site={self.site!r}, enroll={self.enroll_host}:{self.enroll_port})"


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
    claim = Claim(site, _new_secret(), enroll_host, enroll_port)
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


_CLAIM_MARK = f"{SCHEME}://".encode()


def claim_in_read(data: bytes) -> str | None:
    """The claim token in a scanner read, or None when the read is not a claim barcode.

    Anything around the token that a scanner adds (STX, an AIM identifier such as
    ``]Q1``, CR/LF/TAB/ETX terminators) is dropped. A read that names the scheme but is
    not a valid token is still returned, so the caller refuses it *as a claim*: it may
    hold a secret and must never be journaled as a scan.
    """
    start = data.find(_CLAIM_MARK)
    if start < 0:
        return None
    return data[start:].rstrip(b"\r\n\t\x03").decode("utf-8", errors="replace")
