"""Claims that reach a terminal that is not enrolled: scanned with its own scanner, or
dropped on the SD card's boot partition. Real mosquitto from the generated fleet config,
the real enrollment service, the daemon in-process with a virtual scanner."""

from __future__ import annotations

import itertools
import json
import logging
import stat
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from scanfleet.daemon.core.config import Config, load_config
from scanfleet.daemon.journal.reader import open_readonly
from scanfleet.daemon.remote import claim_intake, enroll
from scanfleet.daemon.remote.claim_intake import import_boot_files
from scanfleet.daemon.remote.enroll import CLAIM_FILE, DeviceTLS
from scanfleet.daemon.runner import build_daemon, journal_path
from scanfleet.drivers import virtual
from scanfleet.drivers.base import Signal
from scanfleet.provisioning.claims import create_claim
from support.enroll_service import running_service
from support.pki import Fleet, FleetBroker

pytestmark = pytest.mark.integration

SITE = "pharmacy-12"
DEVICE = "sf-0000000000c1"


def _wait(cond: Callable[[], bool], timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.05)
    return cond()


def _config_text(state: Path, fleet: Fleet, channel: str) -> str:
    return f"""
[identity]
site = "{SITE}"
device = "{DEVICE}"

[paths]
state_dir = "{state}"

[broker]
url = "mqtts://127.0.0.1:1"
ca_file = "{fleet.ca_file}"

[station]
name = "counter-1"
operation = "retail_sale"

[[devices]]
name = "counter"
driver = "virtual"
channel = "{channel}"
"""


def _records(config: Config) -> list[dict[str, object]]:
    with open_readonly(journal_path(config)) as reader:
        return [r.as_dict() for r in reader.read_after(0, limit=1000, max_bytes=1 << 24)]


def _enroll_records(config: Config) -> list[dict[str, object]]:
    return [r for r in _records(config) if r.get("action") == "enroll"]


def test_a_scanned_claim_enrolls_and_its_secret_reaches_no_journal_or_log(
    tmp_path: Path,
    fleet: Fleet,
    fleet_broker: FleetBroker,
    channel: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    path = tmp_path / "scanfleet.toml"
    path.write_text(_config_text(tmp_path / "state", fleet, channel), encoding="utf-8")
    config = load_config(path)
    _, claim = create_claim(fleet.ca.registry, SITE, fleet_broker.host, fleet_broker.enroll_port)
    with running_service(fleet, fleet_broker):
        daemon = build_daemon(config, config_path=path)
        restarted = threading.Event()
        daemon.enroller._on_enrolled = restarted.set  # in-process: no SIGTERM to pytest
        assert daemon.enroller.state == "not enrolled"
        daemon.start()
        try:
            assert daemon.ready.wait(15)
            # As a QR scanner sends it: AIM identifier ]Q1 in front, CR behind.
            virtual.inject(channel, b"]Q1" + claim.token.encode() + b"\r")
            assert restarted.wait(30), daemon.enroller.state
            assert virtual.signals(channel) == [Signal.GOOD_READ]
            # Once enrolled, a second claim barcode is refused and still not journaled.
            virtual.inject(channel, claim.token.encode() + b"\r")
            assert _wait(lambda: len(virtual.signals(channel)) == 2)
            assert virtual.signals(channel)[1] == Signal.BAD_READ
            state = daemon._state_extra()
        finally:
            daemon.shutdown()
    assert state["enrollment"] == "enrolled"
    tls = DeviceTLS(config.paths.state_dir / "tls")
    assert tls.cert.exists()
    assert stat.S_IMODE(tls.key.stat().st_mode) == 0o600
    assert not (config.paths.state_dir / CLAIM_FILE).exists(), "a used claim is removed"
    records = _records(config)
    # The read (with its scanner, never its text), the enrollment, the refused second read.
    assert [r["type"] for r in records] == ["control"] * 3, records
    read, enrolled, refused = records
    assert all(r["action"] == "enroll" and r["origin"] == "barcode" for r in records)
    assert read["verdict"] == "accepted"
    assert read["raw"] is None
    assert read["source"]["device"] == "counter"  # type: ignore[index]
    assert enrolled["verdict"] == "accepted"
    assert enrolled["argument"] == f"{SITE}/{DEVICE}"
    assert refused["verdict"] == "refused"
    assert "already enrolled" in str(refused["reason"])
    assert claim.secret not in json.dumps(records)
    assert claim.secret not in caplog.text
    assert claim.secret.encode() not in journal_path(config).read_bytes()
    # The next start uses the certificate: enrolled, nothing to retry.
    again = build_daemon(config, config_path=path)
    again.start()
    try:
        assert again.enroller.enrolled
        assert again.config.broker.url == f"mqtts://127.0.0.1:{fleet_broker.port}"
    finally:
        again.shutdown()


def test_a_boot_partition_claim_that_fails_is_kept_alarmed_and_retried_with_backoff(
    tmp_path: Path,
    fleet: Fleet,
    fleet_broker: FleetBroker,
    channel: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    boot = tmp_path / "boot" / "scanfleet"
    boot.mkdir(parents=True)
    etc = tmp_path / "etc" / "scanfleet"
    state = tmp_path / "state"
    (boot / "scanfleet.toml").write_text(_config_text(state, fleet, channel), encoding="utf-8")
    (boot / "fleet-ca.pem").write_bytes(fleet.ca_file.read_bytes())
    _, claim = create_claim(fleet.ca.registry, SITE, fleet_broker.host, fleet_broker.enroll_port)
    (boot / "claim").write_text(claim.token + "\n", encoding="utf-8")
    (boot / "claim").chmod(0o755)  # what FAT reports for every file

    done = import_boot_files(boot, etc / "scanfleet.toml")
    assert done.problems == []
    assert sorted(p.name for p in boot.iterdir()) == [], "nothing is left on the FAT"
    assert stat.S_IMODE((etc / "scanfleet.toml").stat().st_mode) == 0o640
    assert (etc / "fleet-ca.pem").read_bytes() == fleet.ca_file.read_bytes()
    kept = state / CLAIM_FILE
    assert stat.S_IMODE(kept.stat().st_mode) == 0o600
    assert kept.read_text(encoding="utf-8").strip() == claim.token

    # The fleet's broker is down at first boot: the claim fails fast, is kept, alarmed,
    # journaled once, and tried again later; the terminal scans all the same.
    fleet_broker.stop()
    monkeypatch.setattr(claim_intake, "RETRY_INITIAL", 1.0)
    monkeypatch.setattr(claim_intake, "RETRY_MAX", 2.0)
    attempts: list[float] = []
    real = enroll.ensure_enrolled  # what claim_intake calls, before it is counted

    def counted(*args: object, **kwargs: object) -> object:
        attempts.append(time.monotonic())
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(claim_intake, "ensure_enrolled", counted)
    config = load_config(etc / "scanfleet.toml")
    daemon = build_daemon(config, config_path=etc / "scanfleet.toml")
    restarted = threading.Event()
    daemon.enroller._on_enrolled = restarted.set
    daemon.start()
    try:
        assert daemon.ready.wait(15)
        assert daemon.enroller.state.startswith("failed: ")
        assert [a.code for a in daemon.alarms.active()] == ["enrollment"]
        assert kept.exists()
        assert _wait(lambda: len(attempts) >= 2)
        virtual.inject(channel, b"83711700173703755001\r")
        assert _wait(lambda: virtual.signals(channel) == [Signal.GOOD_READ])
        fleet_broker.start()
        with running_service(fleet, fleet_broker):
            assert restarted.wait(30), daemon.enroller.state
    finally:
        daemon.shutdown()
    gaps = [b - a for a, b in itertools.pairwise(attempts)]
    assert all(gap >= 0.4 for gap in gaps), gaps  # backoff: half the 1 s floor at least
    assert not kept.exists()
    assert daemon.alarms.active() == []
    results = [(r["verdict"], r["origin"]) for r in _enroll_records(config)]
    assert results[0] == ("refused", "config")
    assert results[-1] == ("accepted", "config")
    assert len(results) == 2, "one record per distinct failure, not per retry"
    assert claim.secret not in json.dumps(_records(config))


def test_a_claim_that_enrolls_at_start_is_journaled(
    tmp_path: Path, fleet: Fleet, fleet_broker: FleetBroker, channel: str
) -> None:
    path = tmp_path / "scanfleet.toml"
    path.write_text(_config_text(tmp_path / "state", fleet, channel), encoding="utf-8")
    config = load_config(path)
    _, claim = create_claim(fleet.ca.registry, SITE, fleet_broker.host, fleet_broker.enroll_port)
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / CLAIM_FILE).write_text(claim.token + "\n", encoding="utf-8")
    with running_service(fleet, fleet_broker):
        daemon = build_daemon(config, config_path=path)
    daemon.start()
    daemon.shutdown()
    assert daemon.enroller.enrolled
    records = _enroll_records(config)
    assert [(r["verdict"], r["origin"], r["argument"]) for r in records] == [
        ("accepted", "config", f"{SITE}/{DEVICE}")
    ]
