"""Claim tokens: short-lived, single-use permissions to enroll one device into one site.

A claim is printed for IT staff or written onto the SD image as one line of text::

    scanfleet-claim://SITE:SECRET@ENROLL_HOST:PORT

``SECRET`` is 128 random bits (base32). The registry stores only its SHA-256, so a
copy of the registry does not hold usable claims. A claim may be bound to one
device id (``--device``): only such a claim can re-enroll a device that already
holds a valid certificate, so a site's ordinary claim cannot take over another
terminal's identity.

This module is the token format, shared by the terminal (which reads a claim from
the SD image or a scanned barcode) and the fleet side (which issues and redeems
claims against its registry: :mod:`scanfleet.provisioning.claims`).
"""

from __future__ import annotations

import base64
import hashlib
import secrets
from dataclasses import dataclass
from urllib.parse import urlsplit

from scanfleet.daemon.core.errors import ScanfleetError
from scanfleet.daemon.core.model import valid_name

SCHEME = "scanfleet-claim"


class ClaimError(ScanfleetError, ValueError):
    """A claim token is malformed, unknown, used, expired or for another site/device."""


def new_secret() -> str:
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
