"""The console's hands: the fleet functions of ``scanfleet.provisioning``, with its identity.

Nothing here implements a fleet action: commands, config pushes, claims and revocation are
the same functions ``scanfleet fleet …`` calls; this module only holds the console's fleet
identity (a ``fleet.NAME`` certificate) and the broker and enrollment addresses.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

from scanfleet.daemon.core.claims import Claim
from scanfleet.daemon.core.errors import ScanfleetError
from scanfleet.hub.console.web import Settings
from scanfleet.provisioning.ca import (
    CAError,
    FleetCA,
    Role,
    device_common_name,
    role_common_name,
)
from scanfleet.provisioning.claims import create_claim
from scanfleet.provisioning.registry import CertRecord, ClaimRecord
from scanfleet.provisioning.remote import FleetClient, build_document, diff
from scanfleet.provisioning.revocation import Revoker

COMMANDS = ("status", "diagnostics", "resend", "rebind", "restart")
"""Remote commands the device page offers (``resend`` takes a seq range)."""


class FleetUnavailable(ScanfleetError, RuntimeError):
    """The console was started without the fleet directory, broker or identity it needs."""


def _host_port(url: str | None, what: str) -> tuple[str, int]:
    parts = urlsplit(url or "")
    if parts.scheme != "mqtts" or not parts.hostname or parts.port is None:
        raise FleetUnavailable(f"{what}: expected mqtts://HOST:PORT, got {url!r}")
    return parts.hostname, parts.port


class Fleet:
    """The fleet CA, registry and MQTT identity the console acts with."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    @property
    def ca(self) -> FleetCA:
        """The fleet CA (its registry holds claims and certificates)."""
        if self.settings.fleet_dir is None:
            raise FleetUnavailable("the console was started without --fleet-dir")
        try:
            return FleetCA(self.settings.fleet_dir)
        except CAError as err:
            raise FleetUnavailable(str(err)) from err

    @contextmanager
    def client(self) -> Iterator[FleetClient]:
        """A short-lived MQTT connection as the console's fleet identity."""
        name = self.settings.identity
        if not name:
            raise FleetUnavailable("the console was started without --identity")
        ca = self.ca
        cn = name if name.startswith(f"{Role.FLEET.value}.") else role_common_name(Role.FLEET, name)
        cert, key = ca.paths.identity(cn)
        host, port = _host_port(self.settings.broker, "--broker")
        client = FleetClient(
            host, port, ca_file=str(ca.paths.ca_cert), cert_file=str(cert), key_file=str(key)
        )
        try:
            yield client
        finally:
            client.close()

    # -- devices ---------------------------------------------------------------------------

    def command(self, target: str, name: str, args: dict[str, Any]) -> dict[str, Any] | None:
        """Send remote command *name* to ``SITE/DEVICE``; its reply or None on timeout."""
        if name not in COMMANDS:
            raise ValueError(f"unknown command {name!r}")
        with self.client() as client:
            return client.command(target, name, args, self.settings.command_timeout_s)

    def preview(
        self, target: str, sections: dict[str, Any], probation_s: float
    ) -> tuple[dict[str, Any], str]:
        """Validate *sections* as the next config of *target*: (document, diff to now).

        Raises ``Rejected`` (with every problem) when the device would refuse it.
        """
        with self.client() as client:
            current = client.current_config(target)
        version = int((current or {}).get("version", 0)) + 1
        doc = build_document(sections, version, probation_s=probation_s)
        return doc, diff(current, doc)

    def push(self, target: str, doc: dict[str, Any]) -> dict[str, Any] | None:
        """Publish *doc* and wait for the device's final report (None on timeout)."""
        with self.client() as client:
            return client.push(target, doc, self.settings.push_timeout_s)

    def revoke_device(self, site: str, device: str, reason: str) -> int:
        """Revoke every unrevoked certificate of *device* (CRL, broker reload, disconnect).

        Returns how many were revoked (0: none was active).
        """
        ca = self.ca
        cn = device_common_name(site, device)
        serials = [c.serial for c in ca.registry.certs(cn=cn) if c.revoked_at is None]
        if serials:
            Revoker(ca, self.settings.reload_command, self.settings.admin_socket).revoke(
                serials, reason
            )
        return len(serials)

    def certificates(self, site: str, device: str) -> list[CertRecord]:
        """The device's certificates in the registry, newest first."""
        return self.ca.registry.certs(cn=device_common_name(site, device))

    # -- enrollment ------------------------------------------------------------------------

    def create_claim(self, site: str, ttl: timedelta, device: str | None) -> tuple[str, Claim]:
        """A new single-use claim for *site* (optionally bound to one device id)."""
        host, port = _host_port(self.settings.enroll_url, "--enroll-url")
        return create_claim(self.ca.registry, site, host, port, ttl=ttl, device=device)

    def claims(self) -> list[ClaimRecord]:
        """Every claim, newest first (never their secrets)."""
        return self.ca.registry.claims()
