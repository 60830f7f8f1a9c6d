"""Revocation that takes effect by itself: registry, CRL, broker reload, open sessions.

Every path that revokes a certificate — re-enrollment, renewal (``fleet serve``),
``fleet revoke`` (CLI or web console) — goes through :meth:`Revoker.revoke`, which

1. marks the serials revoked in the registry and writes a new CRL;
2. runs the reload command (``systemctl reload mosquitto``): from now on a TLS
   handshake with a revoked certificate fails;
3. disconnects every open session of the revoked identities through the device
   broker's admin socket (:mod:`scanfleet.provisioning.dynsec`): mosquitto never
   re-checks open connections against a new CRL.

Step 3 disconnects *every* session of the CN, including the one of a device's new
certificate after a renewal: that device reconnects (with its new certificate) and
resumes its persistent session; nothing queued is lost. The reload command returns
after mosquitto received SIGHUP; the broker handles the signal in its next loop pass,
before it has read the admin client's CONNECT, so the disconnect meets the new CRL.
"""

from __future__ import annotations

import logging
import shlex
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from scanfleet.provisioning.ca import FleetCA
from scanfleet.provisioning.dynsec import DynsecError, admin_password, disconnect_identities

log = logging.getLogger(__name__)


def run_reload(command: str | None) -> bool:
    """Run the broker reload command (after a new CRL or ACL); False when it failed."""
    if not command:
        log.warning("the CRL/ACL changed: reload the broker (no --reload-command given)")
        return False
    result = subprocess.run(shlex.split(command), check=False, capture_output=True, text=True)
    if result.returncode != 0:
        log.error("reload command %r failed (%d): %s", command, result.returncode, result.stderr)
        return False
    return True


@dataclass
class Revoker:
    """Revokes certificates of one fleet and makes the broker enforce it at once."""

    ca: FleetCA
    reload_command: str | None = None
    admin_socket: Path | None = None
    """The device broker's admin socket; None: open sessions are not disconnected."""

    def revoke(self, serials: Iterable[int], reason: str = "unspecified") -> list[str]:
        """Revoke *serials*; return the CNs whose sessions were disconnected.

        Raises KeyError for an unknown serial (before anything is revoked).
        """
        serials = list(serials)
        certs = {c.serial: c for c in self.ca.registry.certs()}
        missing = [s for s in serials if s not in certs]
        if missing:
            raise KeyError(f"no certificate with serial {missing[0]:x}")
        for serial in serials:
            self.ca.registry.revoke(serial, reason)
        self.ca.write_crl()
        cns = sorted({certs[s].cn for s in serials})
        log.info("revoked %d certificate(s) of %s (%s)", len(serials), ", ".join(cns), reason)
        self.enforce(cns)
        return cns

    def enforce(self, cns: list[str]) -> None:
        """Reload the broker and disconnect the open sessions of *cns*."""
        run_reload(self.reload_command)
        if self.admin_socket is None:
            log.warning(
                "open sessions of %s stay connected: no broker admin socket configured",
                ", ".join(cns),
            )
            return
        try:
            disconnect_identities(self.admin_socket, admin_password(self.ca), cns)
        except DynsecError as err:
            log.error("could not disconnect %s: %s", ", ".join(cns), err)  # noqa: TRY400
