"""``scanfleet run --demo``: a simulated serial scanner on a pseudo-terminal.

The demo runs the real daemon against the real serial driver; only the scanner is
simulated (the same simulator the tests use), reachable under the state directory
as ``demo-scanner`` the way a real one is under ``/dev/serial/by-id/``.
"""

from __future__ import annotations

import logging
import random

from scanfleet.daemon.core.config import Config
from scanfleet.drivers.serial import SerialDeviceConfig
from scanfleet.drivers.sim.serial_scanner import SerialScannerSimulator

log = logging.getLogger(__name__)


def start_demo_scanner(config: Config, *, rate: float) -> tuple[SerialScannerSimulator, Config]:
    """Start the simulated scanner; return it and *config* with the scanner bound."""
    state_dir = config.paths.state_dir
    state_dir.mkdir(parents=True, exist_ok=True)
    link = state_dir / "demo-scanner"
    simulator = SerialScannerSimulator(
        framing="cr",
        aim=True,
        rate=rate,
        seed=random.randrange(1 << 30),  # noqa: S311 - a demo's code mix, not cryptography
        link=link,
    ).start()
    device = SerialDeviceConfig(
        name="demo-scanner",
        driver="serial",
        port=str(link),
        framing="cr",
        aim_prefix=True,
        feedback="honeywell",
    )
    log.info("demo: simulated Honeywell-style serial scanner at %s (%s)", link, simulator.tty)
    return simulator, config.model_copy(update={"devices": [device]})
