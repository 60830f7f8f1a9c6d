"""Device side of enrollment without a broker: when it enrolls, renews, or stays out of the way;
and the fleet inventory table."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from scanfleet.daemon.core.config import Config
from scanfleet.daemon.core.errors import EnrollmentError
from scanfleet.daemon.core.identity import Identity
from scanfleet.daemon.remote.enroll import (
    CLAIM_FILE,
    DeviceTLS,
    build_csr,
    ensure_enrolled,
    needs_renewal,
    write_device_key,
)
from scanfleet.provisioning.ca import FleetCA, cert_pem, new_private_key, write_public
from scanfleet.provisioning.inventory import inventory, render_table

IDENT = Identity("site-1", "sf-00000000000a")


def config(tmp_path: Path, **broker: object) -> Config:
    return Config.model_validate(
        {"paths": {"state_dir": str(tmp_path / "state")}, "broker": broker or {}}
    )


def test_without_claim_or_certificate_the_broker_config_is_used_as_is(tmp_path: Path) -> None:
    cfg = config(tmp_path, url="mqtt://localhost:1883")
    enrolled = ensure_enrolled(cfg, IDENT)
    assert enrolled.broker == cfg.broker
    assert enrolled.identity == IDENT
    assert enrolled.not_after is None


def test_hand_provisioned_certificate_in_the_config_wins(tmp_path: Path) -> None:
    cfg = config(tmp_path, url="mqtts://b:8883", cert_file="/etc/c.pem", key_file="/etc/k.pem")
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / CLAIM_FILE).write_text("scanfleet-claim://s:x@h:1")
    assert ensure_enrolled(cfg, IDENT).broker == cfg.broker


def test_enrolling_needs_the_fleet_ca_to_verify_the_service(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / CLAIM_FILE).write_text("scanfleet-claim://s:x@127.0.0.1:1")
    with pytest.raises(EnrollmentError, match="ca_file"):
        ensure_enrolled(cfg, IDENT, timeout=1)


def test_a_malformed_claim_file_is_reported(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / CLAIM_FILE).write_text("hello")
    with pytest.raises(EnrollmentError, match="not a claim token"):
        ensure_enrolled(cfg, IDENT, timeout=1)


def test_current_certificate_is_used_without_contacting_anyone(tmp_path: Path) -> None:
    ca = FleetCA.init(tmp_path / "fleet")
    tls = DeviceTLS(tmp_path / "state" / "tls")
    key = new_private_key()
    write_device_key(tls.key, key)
    cert = ca.sign_device_csr(build_csr(key, "site-1", "dev"), "site-1", "dev", days=90)
    write_public(tls.cert, cert_pem(cert))
    tls.meta.write_text(
        '{"broker_url": "mqtts://broker:8883", "enroll_host": "h", "enroll_port": 1}'
    )
    enrolled = ensure_enrolled(config(tmp_path, ca_file=str(ca.paths.ca_cert)), IDENT)
    assert enrolled.identity == Identity("site-1", "dev")
    assert enrolled.broker.url == "mqtts://broker:8883"
    assert enrolled.broker.cert_file == tls.cert
    assert enrolled.broker.key_file == tls.key
    assert enrolled.not_after == cert.not_valid_after_utc


def test_expired_certificate_without_a_claim_is_an_error(tmp_path: Path) -> None:
    ca = FleetCA.init(tmp_path / "fleet")
    tls = DeviceTLS(tmp_path / "state" / "tls")
    key = new_private_key()
    write_device_key(tls.key, key)
    old = datetime.now(UTC) - timedelta(days=30)
    cert = ca.sign_device_csr(build_csr(key, "s", "d"), "s", "d", days=1, now=old)
    write_public(tls.cert, cert_pem(cert))
    tls.meta.write_text('{"broker_url": "mqtts://b:1", "enroll_host": "h", "enroll_port": 1}')
    with pytest.raises(EnrollmentError, match="expired"):
        ensure_enrolled(config(tmp_path, ca_file=str(ca.paths.ca_cert)), IDENT)


def test_renewal_is_due_in_the_last_third_of_the_lifetime(tmp_path: Path) -> None:
    ca = FleetCA.init(tmp_path / "fleet")
    key = new_private_key()
    now = datetime.now(UTC)
    cert = ca.sign_device_csr(build_csr(key, "s", "d"), "s", "d", days=90, now=now)
    assert not needs_renewal(cert, now + timedelta(days=59))
    assert needs_renewal(cert, now + timedelta(days=61))


def test_inventory_joins_states_and_certificates(tmp_path: Path) -> None:
    ca = FleetCA.init(tmp_path / "fleet")
    for device in ("a", "b"):
        ca.sign_device_csr(build_csr(new_private_key(), "s", device), "s", device, days=30)
    revoked = ca.sign_device_csr(build_csr(new_private_key(), "s", "c"), "s", "c")
    ca.revoke(revoked.serial_number)
    states: dict[tuple[str, str], dict[str, Any]] = {
        ("s", "a"): {"online": True, "time": "2026-01-01T00:00:00Z", "journal": {"depth": 3}},
        ("s", "b"): {"online": False, "time": "2026-01-02T00:00:00Z", "journal": None},
        ("t", "ghost"): {"online": True},
    }
    rows = inventory(ca, states)
    assert [(r.site, r.device, r.online, r.journal_depth, r.revoked) for r in rows] == [
        ("s", "a", True, 3, False),
        ("s", "b", False, None, False),
        ("s", "c", None, None, True),
        ("t", "ghost", True, None, False),
    ]
    table = render_table(rows).splitlines()
    assert table[0].split() == [
        "SITE",
        "DEVICE",
        "STATE",
        "SINCE",
        "DEPTH",
        "CERT",
        "EXPIRES",
        "VERSION",
    ]
    assert "online" in table[1]
    assert "offline" in table[2]
    assert "never seen" in table[3]
    assert "revoked" in table[3]
