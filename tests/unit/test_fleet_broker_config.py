"""The generated mosquitto configuration and ACLs (their behaviour is tested on a real
mosquitto in tests/integration/test_fleet_access.py)."""

from __future__ import annotations

from pathlib import Path

from scanfleet.provisioning.broker import BrokerLayout, write_broker_config
from scanfleet.provisioning.ca import FleetCA, Role


def directives(text: str) -> list[str]:
    return [line for line in text.splitlines() if line and not line.startswith("#")]


def test_device_listener_requires_certificates_and_enrollment_listener_does_not(
    tmp_path: Path,
) -> None:
    ca = FleetCA.init(tmp_path / "fleet")
    ca.issue_server(["broker.example"])
    layout = BrokerLayout(persistence_dir=tmp_path / "var")
    files = write_broker_config(ca, tmp_path / "out", layout)
    lines = directives(files.conf.read_text())
    assert lines[0] == "per_listener_settings true"
    device = lines[lines.index("listener 8883") : lines.index(f"listener 0 {layout.admin_socket}")]
    admin = lines[lines.index(f"listener 0 {layout.admin_socket}") :]
    for required in (
        "require_certificate true",
        "use_identity_as_username true",
        "use_username_as_clientid true",
        "allow_anonymous false",
        f"crlfile {ca.paths.crl}",
        f"cafile {ca.paths.ca_cert}",
        f"acl_file {files.device_acl}",
    ):
        assert required in device
    assert "allow_anonymous false" in admin
    assert f"plugin_opt_config_file {files.dynsec}" in admin
    assert "persistence true" in lines
    assert "max_queued_messages 1000000" in lines
    assert "max_packet_size 1048576" in lines
    assert not any(line.startswith("listener 8884") for line in lines)

    # Enrollment is another process with its own client-id namespace.
    lines = directives(files.enroll_conf.read_text())
    enroll = lines[lines.index("listener 8884") : lines.index("listener 8885 127.0.0.1")]
    service = lines[lines.index("listener 8885 127.0.0.1") :]
    assert "require_certificate false" in enroll
    assert "allow_anonymous true" in enroll
    assert "max_connections 200" in enroll
    assert f"acl_file {files.enroll_acl}" in enroll
    for required in ("require_certificate true", "use_username_as_clientid true"):
        assert required in service
    assert f"acl_file {files.service_acl}" in service
    for required in ("persistence false", "clientid_prefixes enroll-", "max_packet_size 16384"):
        assert required in lines
    assert "MemoryMax=256M" in files.enroll_unit.read_text()


def test_acls_confine_devices_by_pattern_and_list_role_identities(tmp_path: Path) -> None:
    ca = FleetCA.init(tmp_path / "fleet")
    ca.issue_server(["b"])
    ca.issue_role(Role.BACKEND, "trace")
    ca.issue_role(Role.FLEET, "ops")
    ca.issue_role(Role.FLEET, "old")
    ca.revoke(ca.registry.certs(cn="fleet.old")[0].serial)
    files = write_broker_config(ca, tmp_path / "out", BrokerLayout(persistence_dir=tmp_path))
    acl = directives(files.device_acl.read_text())
    assert "pattern write scanfleet/v1/%u/scans" in acl
    assert "pattern read scanfleet/v1/%u/config" in acl
    assert "pattern read scanfleet/v1/%u/cmd/+" in acl
    assert "pattern write scanfleet/v1/%u/config" not in acl  # desired config: fleet only
    assert "user backend.trace" in acl
    assert "user fleet.ops" in acl
    assert "user fleet.old" not in acl
    enroll = directives(files.enroll_acl.read_text())
    assert enroll == [
        "pattern write scanfleet/v1/enroll/%c/request",
        "pattern read scanfleet/v1/enroll/%c/response",
    ]
    service = directives(files.service_acl.read_text())
    assert "user fleet.ops" in service
    assert "user backend.trace" not in service
    assert "user fleet.old" not in service
