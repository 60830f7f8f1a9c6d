"""Addresses, limits and shared settings of the two generated mosquitto processes."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from scanfleet.provisioning.ca import FleetPaths

DEFAULT_MAX_QUEUED = 1_000_000
"""Per-client queue of a disconnected persistent session (a backend catching up after
an outage must not lose scans; mosquitto's default of 1000 would drop them)."""
DEFAULT_MAX_PACKET = 1 << 20
"""Largest MQTT packet the device broker accepts: the default 256 KiB scan batch plus
envelope and topic fit four times over (a site that raises ``publisher.max_batch_bytes``
raises ``--max-packet-size`` with it)."""
DEFAULT_MAX_QUEUED_BYTES = 2 << 30
"""Bytes queued for one disconnected session: a backend away for a day of a large fleet
still fits, but one session can no longer grow without bound."""


@dataclass(frozen=True)
class BrokerLayout:
    """Addresses and storage of the generated brokers."""

    device_port: int = 8883
    enroll_port: int = 8884
    service_port: int = 8885
    """The enrollment broker's listener for ``fleet serve`` (certificate required)."""
    bind_address: str | None = None
    """None listens on every interface."""
    service_bind: str = "127.0.0.1"
    """``fleet serve`` runs on the broker host: its listener stays on loopback."""
    persistence_dir: Path = Path("/var/lib/mosquitto")
    max_queued_messages: int = DEFAULT_MAX_QUEUED
    max_queued_bytes: int = DEFAULT_MAX_QUEUED_BYTES
    max_packet_size: int = DEFAULT_MAX_PACKET
    max_enroll_connections: int = 200
    """Concurrent clients on the anonymous enrollment listener."""
    admin_socket: Path = Path("/run/mosquitto/scanfleet-admin.sock")
    log_file: Path | None = None
    """None logs to syslog (where the Debian package's mosquitto logs)."""
    user: str | None = None
    """The account mosquitto drops to when started as root (its default: ``mosquitto``).
    That account must be able to read the server key."""

    @property
    def enroll_log_file(self) -> Path | None:
        """The enrollment broker's log, beside the device broker's."""
        return (
            self.log_file.with_name(f"{self.log_file.stem}-enroll.log") if self.log_file else None
        )


def common_settings(layout: BrokerLayout, log_file: Path | None) -> str:
    """Process-wide settings both brokers share (account, logging)."""
    user = f"user {layout.user}\n" if layout.user else ""
    log_dest = f"log_dest file {log_file}" if log_file else "log_dest syslog"
    return f"""{user}set_tcp_nodelay true
{log_dest}
log_type error
log_type warning
log_type notice
log_type information
connection_messages true"""


def certificate_listener(port: int, bind: str | None, paths: FleetPaths, acl_file: Path) -> str:
    """A TLS listener that requires a fleet certificate (CRL-checked), names the client
    by its CN (username *and* client id, whatever it sent) and applies *acl_file*."""
    where = f" {bind}" if bind else ""
    return f"""listener {port}{where}
protocol mqtt
cafile {paths.ca_cert}
certfile {paths.server_cert}
keyfile {paths.server_key}
crlfile {paths.crl}
require_certificate true
use_identity_as_username true
use_username_as_clientid true
tls_version tlsv1.2
allow_anonymous false
acl_file {acl_file}"""
