"""What the private broker fixtures share: a process, a loopback MQTT port, a URL."""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import time


def wait_listening(host: str, port: int, deadline: float, alive: subprocess.Popen[bytes]) -> bool:
    """Poll until *port* accepts a TCP connection; False when *alive* exits or time runs out."""
    while time.monotonic() < deadline:
        if alive.poll() is not None:
            return False
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.2):
            return True
        time.sleep(0.1)
    return False


class ServerProcess:
    """A broker process with an MQTT listener on ``host:port``; subclasses start and stop it."""

    host = "127.0.0.1"
    port: int
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start the server and wait until its MQTT listener accepts connections."""
        raise NotImplementedError

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Stop the server with *sig*."""
        raise NotImplementedError

    def restart(self, sig: int = signal.SIGTERM) -> None:
        """Stop and start again with the same ports and data."""
        self.stop(sig)
        self.start()

    @property
    def running(self) -> bool:
        """True while the server's process runs."""
        return self.proc is not None and self.proc.poll() is None

    @property
    def url(self) -> str:
        """``mqtt://host:port`` of the MQTT listener."""
        return f"mqtt://{self.host}:{self.port}"
