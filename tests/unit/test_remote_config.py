"""Pushed configuration: document checks, overlay composition, signatures, probation."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from scanfleet.daemon.core.config import Config
from scanfleet.daemon.core.desired_config import (
    ConfigReport,
    Rejected,
    canonical,
    compose,
    merge,
    parse_document,
)
from scanfleet.daemon.remote.config import KEY_FILE, RemoteConfig, StoredOverlay
from scanfleet.drivers.virtual import VirtualDeviceConfig


def base_config(tmp_path: Path) -> Config:
    return Config.model_validate(
        {
            "identity": {"site": "s1", "device": "dev-1"},
            "paths": {"state_dir": str(tmp_path)},
            "station": {"operation": "retail_sale", "name": "front"},
            "devices": [{"name": "scanner", "driver": "virtual", "channel": "a"}],
        }
    )


def doc(version: int, config: dict[str, Any], **extra: Any) -> bytes:
    return json.dumps({"version": version, "config": config, **extra}).encode()


class Harness:
    """A RemoteConfig whose daemon side is plain state the test controls."""

    def __init__(self, tmp_path: Path, *, probation_bound: set[str] | None = None) -> None:
        self.base = base_config(tmp_path)
        self.applied: list[Config] = []
        self.reports: list[ConfigReport] = []
        self.bound = {"scanner"}
        self.remote = RemoteConfig(
            tmp_path,
            "dev-1",
            StoredOverlay.load(tmp_path),
            apply=self.applied.append,
            bound_devices=lambda: set(self.bound),
            report=self.reports.append,
        )
        self.remote.settle()

    def wait_report(self, result: str, timeout: float = 30.0) -> ConfigReport:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for report in self.reports:
                if report.result == result:
                    return report
            time.sleep(0.02)
        raise AssertionError(f"no {result} report in {self.reports}")


def test_overlay_merges_tables_and_replaces_arrays(tmp_path: Path) -> None:
    assert merge({"a": {"x": 1, "y": 2}, "l": [1]}, {"a": {"y": 3}, "l": [2]}) == {
        "a": {"x": 1, "y": 3},
        "l": [2],
    }
    parsed = parse_document(doc(1, {"station": {"operation": "receiving"}}), None)
    new = compose(base_config(tmp_path), parsed)
    assert str(new.station.operation) == "receiving"
    assert new.station.name == "front", "keys the overlay does not name stay as in the file"
    assert [d.name for d in new.devices] == ["scanner"]


def test_replace_mode_resets_unnamed_remote_sections_to_defaults(tmp_path: Path) -> None:
    parsed = parse_document(doc(1, {"devices": []}, mode="replace"), None)
    new = compose(base_config(tmp_path), parsed)
    assert new.devices == []
    assert new.station.name is None
    assert new.identity.site == "s1", "local-only sections always come from the file"


def test_invalid_config_is_rejected_with_key_paths(tmp_path: Path) -> None:
    bad = {"devices": [{"name": "scanner", "driver": "serial", "port": "/dev/x", "baudrate": 7}]}
    with pytest.raises(Rejected) as caught:
        compose(base_config(tmp_path), parse_document(doc(1, bad), None))
    assert [e.key for e in caught.value.errors] == ["config.devices[0].baudrate"]


def test_sections_that_could_cut_the_device_off_cannot_be_pushed() -> None:
    with pytest.raises(Rejected) as caught:
        parse_document(doc(1, {"broker": {"url": "mqtt://evil:1883"}, "journal": {}}), None)
    assert sorted(e.key for e in caught.value.errors) == ["config.broker", "config.journal"]


@pytest.mark.parametrize(
    "payload",
    [b"\xff\xfe", b"[]", b"{", b'{"version": 0, "config": {}}', b'{"version": 1}', b"1e999999"],
)
def test_malformed_documents_are_rejected_not_raised(payload: bytes) -> None:
    with pytest.raises(Rejected):
        parse_document(payload, None)


def test_a_trusted_key_requires_a_valid_signature(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    (tmp_path / KEY_FILE).write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    h = Harness(tmp_path)
    body = {"version": 1, "probation_s": 0, "config": {"station": {"operation": "receiving"}}}
    assert h.remote.handle(json.dumps(body).encode(), h.base).result == "rejected"
    forged = {**body, "signature": base64.b64encode(b"\0" * 64).decode()}
    assert h.remote.handle(json.dumps(forged).encode(), h.base).errors[0].key == "signature"
    signed = {**body, "signature": base64.b64encode(key.sign(canonical(body))).decode()}
    report = h.remote.handle(json.dumps(signed).encode(), h.base)
    assert report.result == "applied", report
    assert str(h.applied[-1].station.operation) == "receiving"


def test_the_same_retained_document_is_decided_once(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    payload = doc(1, {"station": {"operation": "receiving"}}, probation_s=0)
    h.remote.handle(payload, h.base)
    h.remote.handle(payload, h.base)  # redelivered at reconnect
    assert len(h.applied) == 1
    assert h.remote.handle(doc(1, {"station": {}}, probation_s=0), h.base).result == "rejected"


def test_overlay_survives_a_restart_and_an_empty_message_clears_it(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    h.remote.handle(doc(3, {"station": {"operation": "receiving"}}, probation_s=0), h.base)
    again = Harness(tmp_path)
    assert again.remote.version == 3
    assert str(again.remote.compose(again.base).station.operation) == "receiving"
    assert again.remote.handle(b"", again.base).result == "cleared"
    assert str(again.applied[-1].station.operation) == "retail_sale"
    assert Harness(tmp_path).remote.version is None


def test_lost_binding_in_probation_rolls_back_to_the_last_good_config(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    h.remote.handle(doc(1, {"station": {"operation": "receiving"}}, probation_s=0), h.base)
    moved = {"devices": [{"name": "scanner", "driver": "virtual", "channel": "b"}]}
    assert h.remote.handle(doc(2, moved, probation_s=0.3), h.base).result == "probation"
    h.bound.clear()  # the scanner does not come back on the new channel
    report = h.wait_report("rolled_back")
    assert report.version == 2
    assert [e.key for e in report.errors] == ["devices.scanner"]
    assert h.remote.version == 1
    restored = h.applied[-1]
    device = restored.devices[0]
    assert isinstance(device, VirtualDeviceConfig)
    assert device.channel == "a"
    assert str(restored.station.operation) == "receiving"


def test_broker_loss_in_probation_rolls_back(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    assert (
        h.remote.handle(doc(1, {"station": {"name": "x"}}, probation_s=0.5), h.base).result
        == "probation"
    )
    h.remote.connection_changed(False)  # what the control channel passes on
    h.remote.connection_changed(True)
    report = h.wait_report("rolled_back")
    assert "broker connection lost" in report.errors[-1].message
    assert h.remote.version is None


def test_a_config_that_keeps_devices_bound_passes_probation(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    h.remote.handle(doc(1, {"station": {"name": "x"}}, probation_s=0.2), h.base)
    assert h.wait_report("applied").version == 1
    assert h.remote.version == 1


def test_a_restart_during_probation_comes_back_with_the_last_good_overlay(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    h.remote.handle(doc(1, {"station": {"operation": "receiving"}}, probation_s=0), h.base)
    h.remote.handle(doc(2, {"station": {"operation": "dispatch"}}, probation_s=3600), h.base)
    assert h.remote.version == 2
    restarted = Harness(tmp_path)  # the daemon died before v2 proved itself
    assert restarted.remote.version == 1
    assert str(restarted.remote.compose(restarted.base).station.operation) == "receiving"
    assert restarted.reports == []
    restarted.remote.connection_changed(True)
    [report] = restarted.reports
    assert (report.version, report.result, report.active_version) == (2, "rolled_back", 1)
    # The retained v2 arriving again after the restart is not applied a second time.
    again = restarted.remote.handle(
        doc(2, {"station": {"operation": "dispatch"}}, probation_s=3600), restarted.base
    )
    assert again.result == "rolled_back"
    assert restarted.applied == []


def test_a_push_during_probation_rolls_back_to_the_last_proven_overlay(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    h.remote.handle(doc(1, {"station": {"name": "one"}}, probation_s=0), h.base)
    h.remote.handle(doc(2, {"station": {"name": "two"}}, probation_s=3600), h.base)
    moved = {"devices": [{"name": "scanner", "driver": "virtual", "channel": "z"}]}
    h.remote.handle(doc(3, moved, probation_s=0.2), h.base)
    h.bound.clear()
    assert h.wait_report("rolled_back").version == 3
    assert h.remote.version == 1
    assert h.applied[-1].station.name == "one"


def test_an_unusable_trusted_key_is_a_config_error_not_a_crash(tmp_path: Path) -> None:
    from scanfleet.daemon.core.errors import ConfigError

    (tmp_path / KEY_FILE).write_text("not a key", encoding="utf-8")
    with pytest.raises(ConfigError, match="unreadable public key"):
        Harness(tmp_path)


@pytest.mark.parametrize(
    ("setting", "value"),
    [
        ("socket", "/etc/cron.d/x"),
        ("socket", "{state}/../escape.sock"),
        ("socket", "relative.sock"),
        ("token_file", "/etc/shadow"),
    ],
)
def test_pushed_paths_outside_the_state_dir_are_refused(
    tmp_path: Path, setting: str, value: str
) -> None:
    api = {"enabled": True, "token": "0123456789abcdef", setting: value.format(state=tmp_path)}
    with pytest.raises(Rejected) as caught:
        compose(base_config(tmp_path), parse_document(doc(1, {"local_api": api}), None))
    assert [e.key for e in caught.value.errors] == [f"config.local_api.{setting}"]


def test_pushed_paths_under_the_state_dir_or_run_are_accepted(tmp_path: Path) -> None:
    for socket in (tmp_path / "pos.sock", Path("/run/scanfleet/pos.sock")):
        api = {"enabled": True, "token": "0123456789abcdef", "socket": str(socket)}
        new = compose(base_config(tmp_path), parse_document(doc(1, {"local_api": api}), None))
        assert new.local_api.socket == socket
