"""A full disk under the real daemon (a small tmpfs as its state dir, root only).

While the disk is full the daemon stays alive and says so (``status`` shows it running
with the ``disk_full`` alarm), refused reads get a bad-read signal and a handful of log
lines in all (not one traceback per read), and once space returns the next read is
recorded again; every good-read beep is a delivered record.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from scanfleet.drivers.sim.serial_scanner import SerialScannerSimulator
from support.broker import Mosquitto
from support.daemon import DaemonProcess
from support.faults import scanfleet, serial_daemon_config, wait_for
from support.mqtt import Collector
from support.smallfs import fill, small_tmpfs

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def status(state: Path) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(
        scanfleet("status", "--state-dir", str(state), "--json").stdout
    )
    return result


def alarm_codes(state: Path) -> set[str]:
    return {a["code"] for a in status(state)["alarms"]}


def test_a_full_disk_is_a_state_the_daemon_reports_and_leaves_when_space_returns(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    link = tmp_path / "scanner"
    with small_tmpfs(tmp_path / "fs", "12m") as fs:
        state = fs / "state"
        config = serial_daemon_config(
            tmp_path / "scanfleet.toml",
            site="site-d",
            device="dev-d",
            state=state,
            broker=mosquitto,
            link=link,
            extra='bad_read_hex = "1642414430"',
        )
        collector = Collector(
            mosquitto.host, mosquitto.port, "scanfleet/v1/site-d/dev-d/#", client_id="df-backend"
        )
        daemon = DaemonProcess(config, tmp_path / "daemon.log", log_level="info")
        sim = SerialScannerSimulator(
            framing="cr",
            aim=True,
            rate=150,
            seed=3,
            link=link,
            bad_read=bytes.fromhex("1642414430"),
        )
        try:
            with sim:
                daemon.start()
                assert daemon.wait_log("ready:", 60), daemon.log()
                sim.start()
                assert wait_for(lambda: len(sim.events("good_read")) > 50, 30)
                filler = fill(fs)
                lines_before = len(daemon.log().splitlines())
                full_at = time.monotonic()
                # Reads go on: first on the journal's spare room, then they are refused.
                assert wait_for(lambda: len(sim.events("bad_read")) > 20, 60), daemon.run_log()
                full = status(state)
                assert full["daemon"]["running"], full
                codes = {a["code"] for a in full["alarms"]}
                assert "disk_full" in codes, full["alarms"]
                disk_alarm = next(a for a in full["alarms"] if a["code"] == "disk_full")
                assert "needs about" in disk_alarm["message"], disk_alarm
                time.sleep(2.0)
                # Every line but the one INFO line per committed record (what journald
                # keeps of each record in normal operation, also while on the spare).
                full_lines = [
                    line
                    for line in daemon.log().splitlines()[lines_before:]
                    if "journald: committed seq" not in line
                ]
                full_for = time.monotonic() - full_at
                refused = len(sim.events("bad_read"))

                filler.unlink()
                freed_at = time.monotonic()
                freed, bad_then = len(sim.events("good_read")), len(sim.events("bad_read"))
                assert wait_for(lambda: len(sim.events("good_read")) > freed, 10)
                recovered_in = time.monotonic() - freed_at
                assert wait_for(lambda: len(sim.events("good_read")) > freed + 10, 10)
                # The very next reads are recorded: no read is refused once space is back
                # (a few may still be in flight between the pty and the pipeline).
                assert len(sim.events("bad_read")) - bad_then <= 3
                assert wait_for(lambda: "disk_full" not in alarm_codes(state), 15)
                sim.pause()
                time.sleep(1.0)
                beeps = len(sim.events("good_read"))
                last = status(state)["journal"]["last_seq"]
                assert wait_for(lambda: f"dev-d:{last}" in collector.unique_ids(), 60)
                assert daemon.stop() == 0
        finally:
            if daemon.alive():
                daemon.kill()
            collector.close()

    # A handful of lines for the whole full-disk episode, whatever the read rate.
    assert len(full_lines) < 20, "\n".join(full_lines)
    assert "Traceback" not in "\n".join(full_lines)
    accepted = [s for s in collector.ordered() if s["verdict"] == "accepted"]
    assert beeps <= len(accepted), (beeps, len(accepted))
    assert sorted(s["seq"] for s in collector.ordered()) == list(range(1, last + 1))
    print(
        f"disk full: {refused} reads refused over {full_for:.1f} s with {len(full_lines)} "
        f"log lines; first good read {recovered_in:.2f} s after space returned; "
        f"{beeps} good reads, all delivered",
        file=sys.stderr,
    )
