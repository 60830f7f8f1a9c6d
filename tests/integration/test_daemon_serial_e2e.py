"""Issue 4's end-to-end promises, with the daemon as a real process: a pty scanner
speaking real bytes → serial driver → journal → real mosquitto → a subscriber."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from scanfleet.daemon.journal.reader import open_readonly
from scanfleet.drivers import ssi
from scanfleet.drivers.sim.serial_scanner import SerialScannerSimulator
from support.broker import Mosquitto
from support.daemon import DaemonProcess, write_config
from support.mqtt import Collector

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ALL_KINDS = (
    '["gs1", "trace20", "ean13", "drug_standard_code", "ma", "url", "trace_other", "unknown"]'
)
TOPIC = "scanfleet/v1/site-e2e/dev-e2e/#"


def _config(tmp_path: Path, broker: Mosquitto, link: Path, framing: str, *, feedback: str) -> Path:
    return write_config(
        tmp_path / "scanfleet.toml",
        f"""
[identity]
site = "site-e2e"
device = "dev-e2e"

[paths]
state_dir = "{tmp_path / "state"}"

[broker]
url = "{broker.url}"

[station]
name = "dock-1"
operation = "receiving"
# This station records every kind as accepted, so every read earns a good-read beep.
accept_kinds = {ALL_KINDS}

[[devices]]
name = "dock-scanner"
driver = "serial"
port = "{link}"
baudrate = 115200
framing = "{framing}"
aim_prefix = {"false" if framing == "ssi" else "true"}
feedback = "{feedback}"
""",
    )


def _wait(predicate: Callable[[], object], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


class CommitBeforeBeepMonitor:
    """Samples (good-read beeps heard, then records committed) while scans flow.

    The beep count is read first, so a committed count below it means a beep went
    out for a record the journal did not hold yet.
    """

    def __init__(self, sim: SerialScannerSimulator, journal: Path) -> None:
        self.sim = sim
        self.journal = journal
        self.samples = 0
        self.violations: list[tuple[int, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> CommitBeforeBeepMonitor:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        while not self.journal.exists() and not self._stop.wait(0.05):
            pass
        with open_readonly(self.journal) as reader:
            while not self._stop.is_set():
                beeps = len(self.sim.events("good_read"))
                committed = reader.last_seq
                self.samples += 1
                if committed < beeps:
                    self.violations.append((beeps, committed))
                time.sleep(0.002)


@pytest.fixture
def collector(mosquitto: Mosquitto) -> Iterator[Collector]:
    c = Collector(mosquitto.host, mosquitto.port, TOPIC, client_id="e2e-backend")
    yield c
    c.close()


@pytest.mark.parametrize(("framing", "feedback"), [("cr", "honeywell"), ("ssi", "ssi")])
def test_a_thousand_scans_arrive_in_order_each_beep_after_its_commit(
    tmp_path: Path, mosquitto: Mosquitto, collector: Collector, framing: str, feedback: str
) -> None:
    link = tmp_path / "scanner"
    sim = SerialScannerSimulator(
        framing=framing, aim=framing != "ssi", rate=150, count=1000, seed=11, link=link
    )
    daemon = DaemonProcess(
        _config(tmp_path, mosquitto, link, framing, feedback=feedback), tmp_path / "daemon.log"
    )
    journal = tmp_path / "state" / "journal.sqlite3"
    with sim:
        daemon.start()
        assert daemon.wait_log("ready:", 30), daemon.log()
        sim.start()
        with CommitBeforeBeepMonitor(sim, journal) as monitor:
            assert sim.wait_done(120), f"simulator sent {len(sim.sent)}"
            assert _wait(lambda: len(sim.events("good_read")) >= 1000, 60)
            assert _wait(lambda: len(collector.unique_ids()) >= 1000, 60)
        assert daemon.stop() == 0
        beeps = sim.events("good_read")
        beep_off = sim.events("beep_off")

    assert monitor.samples > 100
    assert monitor.violations == []
    assert len(beeps) == 1000
    assert beep_off, "the scanner's own decode beep was not turned off at bind"
    scans = collector.ordered()
    assert [s["seq"] for s in scans] == list(range(1, 1001))
    assert [s["value"] for s in scans] == [s.sample.data.decode() for s in sim.sent]
    assert [s["kind"] for s in scans] == [str(s.sample.kind) for s in sim.sent]
    assert all(s["operation"] == "receiving" and s["verdict"] == "accepted" for s in scans)
    if framing == "ssi":
        assert all(s.acked for s in sim.sent)
        # Where the SSI type names one symbology, the AIM id comes from the packet.
        assert all(
            scan["aim"] == sent.sample.aim
            for scan, sent in zip(scans, sim.sent, strict=True)
            if sent.sample.aim in ssi.SYMBOLOGY_AIM.values()
        )


def test_noise_overlong_wrong_terminators_and_a_replug_lose_no_complete_frame(
    tmp_path: Path, mosquitto: Mosquitto, collector: Collector
) -> None:
    link = tmp_path / "scanner"
    sim = SerialScannerSimulator(
        framing="cr", aim=True, rate=100, count=300, seed=5, link=link,
        noise_every=40, overlong_every=67, wrong_terminator_every=53,
    )  # fmt: skip
    daemon = DaemonProcess(
        _config(tmp_path, mosquitto, link, "cr", feedback="honeywell"), tmp_path / "daemon.log"
    )
    with sim:
        daemon.start()
        assert daemon.wait_log("ready:", 30), daemon.log()
        sim.start()
        assert _wait(lambda: len(sim.sent) >= 150, 60)
        sim.disconnect()
        assert daemon.wait_log("dock-scanner: absent", 15), daemon.log()
        time.sleep(0.5)
        cpu_before = daemon.cpu_seconds()
        time.sleep(3.0)
        cpu_absent = daemon.cpu_seconds() - cpu_before
        sim.reconnect()
        assert sim.wait_done(120)
        clean = [s for s in sim.sent if s.clean]
        assert _wait(lambda: len(collector.unique_ids()) >= len(clean), 60)
        state = collector.last_json("/state")
        assert daemon.alive()
        assert daemon.stop() == 0

    log = daemon.log()
    scans = collector.ordered()
    assert [s["raw"] for s in scans] == [_escaped(s.frame) for s in clean]
    assert len(clean) < len(sim.sent)
    assert "dock-scanner: bound" in log.split("dock-scanner: absent", 1)[1]
    # An absent device is waited for, not polled in a loop: well under 10 % of a core.
    assert cpu_absent < 0.3, f"{cpu_absent:.2f} s CPU in 3 s while the scanner was unplugged"
    assert state is not None
    codes = {a["code"] for a in state["alarms"]}
    assert "device_problem:dock-scanner" in codes
    # Each kind of garbage is reported, not once per byte or per frame.
    problem_lines = [
        line
        for line in log.splitlines()
        if "device dock-scanner: " in line
        and ("garbage" in line or "over_long" in line or "wrong_terminator" in line)
    ]
    assert 1 <= len(problem_lines) <= 6, problem_lines


def test_every_scan_that_beeped_good_reaches_the_broker_across_sigkills(
    tmp_path: Path, mosquitto: Mosquitto, collector: Collector
) -> None:
    link = tmp_path / "scanner"
    sim = SerialScannerSimulator(framing="cr", aim=True, rate=60, seed=3, link=link)
    config = _config(tmp_path, mosquitto, link, "cr", feedback="honeywell")
    daemon = DaemonProcess(config, tmp_path / "daemon.log", log_level="info")
    with sim:
        sim.start()
        for _ in range(4):
            daemon.start()
            assert daemon.wait_log("ready:", 30)
            time.sleep(1.5)
            daemon.kill()
        daemon.start()
        assert daemon.wait_log("ready:", 30)
        time.sleep(1.0)
        sim.stop()
        beeps = len(sim.events("good_read"))
        sent = {s.sample.data.decode() for s in sim.sent}
        journal = tmp_path / "state" / "journal.sqlite3"
        with open_readonly(journal) as reader:
            committed = reader.last_seq
        assert _wait(lambda: len(collector.unique_ids()) >= committed, 60)
        assert daemon.stop() == 0

    assert beeps > 50
    unique = {s["id"]: s for s in collector.scans()}
    assert [s["seq"] for s in collector.ordered()] == list(range(1, committed + 1))
    assert committed >= beeps, "a good-read beep was given for a scan that was not kept"
    assert all(s["value"] in sent for s in unique.values())
    with open_readonly(journal) as reader:
        assert reader.verify().ok


def test_a_broken_config_is_named_and_never_touches_the_journal(tmp_path: Path) -> None:
    import subprocess
    import sys

    state = tmp_path / "state"
    config = write_config(
        tmp_path / "broken.toml",
        f'[paths]\nstate_dir = "{state}"\n\n[[devices]]\nname = "s"\ndriver = "serial"\n'
        'port = "/dev/ttyUSB0"\nbaudrate = 9601\nframming = "cr"\n',
    )
    check = subprocess.run(
        [sys.executable, "-m", "scanfleet.daemon", "config", "check", str(config)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    run = subprocess.run(
        [sys.executable, "-m", "scanfleet.daemon", "run", "--config", str(config)],
        capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip
    assert check.returncode == 1
    assert f"{config}:8: devices[0].baudrate:" in check.stderr
    assert f"{config}:9: devices[0].framming: unknown key" in check.stderr
    assert run.returncode == 78
    for line in check.stderr.splitlines():
        assert line in run.stderr
    assert not state.exists()


def test_sighup_with_a_broken_file_keeps_the_running_config(
    tmp_path: Path, mosquitto: Mosquitto, collector: Collector
) -> None:
    link = tmp_path / "scanner"
    sim = SerialScannerSimulator(framing="cr", aim=True, rate=20, seed=9, link=link)
    config = _config(tmp_path, mosquitto, link, "cr", feedback="honeywell")
    daemon = DaemonProcess(config, tmp_path / "daemon.log")
    with sim:
        sim.start()
        daemon.start()
        assert daemon.wait_log("ready:", 30)
        good = config.read_text()
        config.write_text(good + "\n[broker]\nnonsense = 1\n")
        daemon.signal(signal.SIGHUP)
        assert daemon.wait_log("reload refused", 15), daemon.log()
        seen = len(collector.unique_ids())
        assert _wait(lambda: len(collector.unique_ids()) > seen + 5, 30)
        config.write_text(good.replace('operation = "receiving"', 'operation = "stocktake"'))
        daemon.signal(signal.SIGHUP)
        assert daemon.wait_log("configuration from", 15), daemon.log()
        assert _wait(lambda: collector.ordered()[-1]["operation"] == "stocktake", 30)
        assert daemon.alive()
        assert daemon.stop() == 0


def _escaped(frame: bytes) -> str:
    from scanfleet.daemon.intake.rawtext import escape_raw

    return escape_raw(frame)
