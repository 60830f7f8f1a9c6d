"""``scanfleet run`` as a real subprocess, with its log captured to a file."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")


def write_config(path: Path, text: str) -> Path:
    """Write a TOML config file and return its path."""
    path.write_text(text, encoding="utf-8")
    return path


class DaemonProcess:
    """One ``python -m scanfleet.daemon run --config FILE`` process."""

    def __init__(self, config: Path, log_path: Path, *, log_level: str = "debug") -> None:
        self.config = config
        self.log_path = log_path
        self.log_level = log_level
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self._log_offset = 0

    def start(self) -> DaemonProcess:
        """Start the daemon (appending to the log file)."""
        self.starts += 1
        with self.log_path.open("ab") as log:
            log.write(f"--- start {self.starts} ---\n".encode())
            log.flush()
            self._log_offset = log.tell()
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "scanfleet.daemon",
                    "--log-level",
                    self.log_level,
                    "run",
                    "--config",
                    str(self.config),
                    "--view",
                    "off",
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        return self

    @property
    def pid(self) -> int:
        """The running process's pid."""
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        """True while the process runs."""
        return self.proc is not None and self.proc.poll() is None

    def wait_log(self, text: str, timeout: float = 30.0) -> bool:
        """Wait until *text* appears in what the current run (since start()) logged."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.run_log():
                return True
            if not self.alive():
                return text in self.run_log()
            time.sleep(0.05)
        return False

    def run_log(self) -> str:
        """What the current run logged."""
        with self.log_path.open("rb") as log:
            log.seek(self._log_offset)
            return log.read().decode("utf-8", errors="replace")

    def signal(self, sig: int) -> None:
        """Send *sig* to the process."""
        assert self.proc is not None
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM and wait; returns the exit code."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        """SIGKILL and reap."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)

    def cpu_seconds(self) -> float:
        """User + system CPU time the process has used so far."""
        stat = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(stat[11]) + int(stat[12])) / CLK_TCK

    def log(self) -> str:
        """Everything the daemon logged so far."""
        return self.log_path.read_text(encoding="utf-8", errors="replace")
