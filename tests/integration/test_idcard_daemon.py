"""ID-card reader on a pty → daemon → real mosquitto: controlled drugs pair with the
patient's identity, which reaches the backend sealed and is shown nowhere in plain."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from scanfleet.daemon.core.config import Config
from scanfleet.daemon.core.logs import TRACE
from scanfleet.daemon.core.model import Scan
from scanfleet.daemon.intake.pairing import NO_WINDOW_REASON, IdentityRead
from scanfleet.daemon.journal.reader import open_readonly
from scanfleet.daemon.runner import Daemon, build_daemon, journal_path
from scanfleet.drivers import virtual
from scanfleet.drivers.base import Signal
from scanfleet.drivers.registry import driver_class
from scanfleet.drivers.sim.idcard import SAMPLE_CARDS, IdCardSimulator
from scanfleet.provisioning.identity_open import public_key_from_file, write_keypair
from support.broker import Mosquitto
from support.mqtt import Collector

pytestmark = pytest.mark.integration

BACKEND_OPEN = [sys.executable, "-m", "scanfleet.daemon", "identity", "open"]
CONTROLLED = "8371170"
SECRETS = [
    "11010519491231002X",  # mainland sample number
    "110105194912310021",  # the bad-check card's number
    "张三丰",
    "三丰",
    "北京市朝阳区",
    "19491231",
]


class _Capture(logging.Handler):
    """Every log line the daemon writes, formatted as on stderr, exceptions included."""

    def __init__(self) -> None:
        super().__init__(TRACE)
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@pytest.fixture
def logs() -> Iterator[_Capture]:
    handler = _Capture()
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(TRACE)
    yield handler
    root.removeHandler(handler)
    root.setLevel(old_level)


@pytest.fixture
def private_key(tmp_path: Path) -> Path:
    path = tmp_path / "backend.key"
    write_keypair(path)
    return path


@pytest.fixture
def reader() -> Iterator[IdCardSimulator]:
    with IdCardSimulator(noise=0.2, seed=11) as sim:
        yield sim


@pytest.fixture
def daemon(
    tmp_path: Path,
    mosquitto: Mosquitto,
    channel: str,
    reader: IdCardSimulator,
    private_key: Path,
    logs: _Capture,
) -> Iterator[Daemon]:
    config = Config.model_validate(
        {
            "identity": {"site": "site-a", "device": "dev-1"},
            "paths": {"state_dir": str(tmp_path / "state")},
            "broker": {"url": mosquitto.url},
            "station": {"name": "window-1", "operation": "dispense"},
            "identity_check": {
                "public_key": public_key_from_file(private_key),
                "window_seconds": 600,
                "drug_prefixes": [CONTROLLED],
            },
            "devices": [
                {"name": "counter", "driver": "virtual", "channel": channel},
                {
                    "name": "idreader",
                    "driver": "idcard_serial",
                    "port": reader.port,
                    "poll_interval_ms": 300,
                },
            ],
        }
    )
    d = build_daemon(config)
    d.start()
    assert d.ready.wait(15)
    yield d
    d.shutdown()


def _wait(predicate: Callable[[], object], timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def _journal(daemon: Daemon) -> list[dict[str, Any]]:
    with open_readonly(journal_path(daemon.config)) as jr:
        return [r.as_dict() for r in jr.read_after(0, limit=1000, max_bytes=1 << 24)]


def _scan(channel: str, serial: int, prefix: str = CONTROLLED) -> None:
    virtual.inject(channel, f"{prefix}{serial:013d}\r".encode())


def test_registry_binds_the_idcard_drivers() -> None:
    assert driver_class("idcard_serial").driver_name == "idcard_serial"
    assert driver_class("idcard_usb").driver_name == "idcard_usb"


def test_controlled_drug_pairs_with_the_id_read_and_identity_stays_sealed(
    daemon: Daemon,
    mosquitto: Mosquitto,
    channel: str,
    reader: IdCardSimulator,
    private_key: Path,
    logs: _Capture,
    tmp_path: Path,
) -> None:
    everything = Collector(mosquitto.host, mosquitto.port, "#", client_id="test-everything")
    try:
        # 1. A controlled drug with no ID card read: refused, bad read.
        _scan(channel, 1)
        assert _wait(lambda: daemon.journal.last_seq >= 1)
        # 2. The patient's card: its own record, which opens the window.
        reader.place(SAMPLE_CARDS["mainland"])
        assert _wait(lambda: daemon.journal.last_seq >= 2)
        # 3. The controlled drug again, then an unlisted drug in the same window.
        _scan(channel, 2)
        _scan(channel, 3, prefix="8123456")
        assert _wait(lambda: daemon.journal.last_seq >= 4)
        # 4. A card whose number fails the check: refused, and it closes the window.
        reader.remove()
        time.sleep(0.7)
        reader.place(SAMPLE_CARDS["bad_check"])
        assert _wait(lambda: daemon.journal.last_seq >= 5)
        _scan(channel, 4)
        assert _wait(lambda: daemon.journal.last_seq >= 6)
        assert everything.wait_for(lambda: len(everything.scans()) >= 6, 30)
        messages = list(everything.messages)
        delivered = everything.scans()
    finally:
        everything.close()

    records = _journal(daemon)
    assert [r["type"] for r in records] == [
        "scan",
        "identity_read",
        "scan",
        "scan",
        "identity_read",
        "scan",
    ]
    refused, card, paired, unlisted, bad_card, after_bad = records
    assert (refused["verdict"], refused["reason"]) == ("refused", NO_WINDOW_REASON)
    assert refused["identity_ref"] is None
    assert card["verdict"] == "accepted"
    assert card["masked"] == {"id_number": "110105********002X", "name": "张**"}
    assert (paired["verdict"], paired["identity_ref"]) == ("accepted", card["id"])
    assert (unlisted["verdict"], unlisted["identity_ref"]) == ("accepted", None)
    assert bad_card["verdict"] == "refused"
    assert "check character" in bad_card["reason"]
    assert bad_card["sealed"] is None
    assert (after_bad["verdict"], after_bad["identity_ref"]) == ("refused", None)
    IdentityRead.model_validate(card)
    Scan.model_validate(paired)
    assert virtual.signals(channel) == [
        Signal.BAD_READ,
        Signal.GOOD_READ,
        Signal.GOOD_READ,
        Signal.BAD_READ,
    ]

    # Delivered in the scan batches exactly as journaled.
    assert [r["id"] for r in delivered[:6]] == [r["id"] for r in records]

    # Nowhere in plain: every MQTT message (any topic), the journal file, every log line.
    for topic, payload, _ in messages:
        text = payload.decode("utf-8", errors="replace")
        for secret in SECRETS:
            assert secret not in text, f"{secret!r} published on {topic}"
    assert any("110105********002X" in p.decode() for _, p, _ in messages)
    journal_bytes = b"".join(
        p.read_bytes() for p in journal_path(daemon.config).parent.glob("journal.sqlite3*")
    )
    for secret in SECRETS:
        assert secret.encode() not in journal_bytes
        assert secret.encode("utf-16-le") not in journal_bytes
    assert len(logs.lines) > 10
    assert any("idcard" in line or "identity window" in line for line in logs.lines)
    for line in logs.lines:
        for secret in SECRETS:
            assert secret not in line, line

    # The backend, holding the private key, opens the published record.
    batches = tmp_path / "batches.jsonl"
    batches.write_text(
        "\n".join(p.decode() for t, p, _ in messages if t.endswith("/scans")) + "\n",
        encoding="utf-8",
    )
    result = subprocess.run(
        [*BACKEND_OPEN, "--private-key", str(private_key), str(batches)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    (opened,) = [json.loads(line) for line in result.stdout.splitlines()]
    assert opened["id"] == card["id"] == paired["identity_ref"]
    assert opened["identity"]["id_number"] == "11010519491231002X"
    assert opened["identity"]["name"] == "张三丰"
    assert opened["identity"]["address"] == "北京市朝阳区测试路1号"
