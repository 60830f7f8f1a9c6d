"""A real mosquitto for tests and benchmarks, on a free loopback port.

Never the machine's shared broker: every fixture starts its own process with the
configuration it needs (persistence, TLS, ACLs) and stops it afterwards.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

MOSQUITTO_DIRS = ("/usr/sbin", "/usr/local/sbin")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Mosquitto:
    """One mosquitto process; restartable on the same port with the same persistence."""

    def __init__(
        self,
        executable: str,
        workdir: Path,
        *,
        port: int | None = None,
        persistence: bool = True,
        extra_config: str = "",
        listener_config: str = "",
    ) -> None:
        self.executable = executable
        self.workdir = workdir
        self.host = "127.0.0.1"
        self.port = port or free_port()
        self.persistence = persistence
        self.extra_config = extra_config
        self.listener_config = listener_config
        self.log_path = workdir / "mosquitto.log"
        self.conf_path = workdir / "mosquitto.conf"
        self.proc: subprocess.Popen[bytes] | None = None
        workdir.mkdir(parents=True, exist_ok=True)

    def write_config(self) -> None:
        """(Re)write mosquitto.conf from the current settings."""
        lines = [
            f"listener {self.port} {self.host}",
            self.listener_config or "allow_anonymous true",
            f"persistence {'true' if self.persistence else 'false'}",
            f"persistence_location {self.workdir}/",
            "autosave_interval 1",
            "max_queued_messages 0",
            "max_inflight_messages 0",
            f"log_dest file {self.log_path}",
            # Started as root, mosquitto drops to user "mosquitto", which cannot write
            # its persistence file into root's temporary directories.
            "user root" if os.geteuid() == 0 else "",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            self.extra_config,
        ]
        self.conf_path.write_text("\n".join(lines) + "\n", encoding="utf-8")

    def start(self, timeout: float = 10.0) -> None:
        """Start mosquitto and wait until it accepts TCP connections."""
        assert self.proc is None or self.proc.poll() is not None, "already running"
        self.write_config()
        self.proc = subprocess.Popen(
            [self.executable, "-c", str(self.conf_path)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = ""
                if self.proc.stderr is not None:
                    err = self.proc.stderr.read().decode(errors="replace")
                    self.proc.stderr.close()
                raise RuntimeError(f"mosquitto exited {self.proc.returncode}: {err}{self.log()}")
            with (
                contextlib.suppress(OSError),
                socket.create_connection((self.host, self.port), timeout=0.2),
            ):
                return
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"mosquitto did not listen on {self.port}: {self.log()}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
        """Stop mosquitto (SIGTERM saves persistence; SIGKILL does not)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stderr:
            self.proc.stderr.close()

    def restart(self, sig: int = signal.SIGTERM) -> None:
        """Stop and start again on the same port with the same persistence file."""
        self.stop(sig)
        self.start()

    def reload(self) -> None:
        """Rewrite the config and SIGHUP mosquitto (re-reads ACL files and the CRL)."""
        self.write_config()
        assert self.proc is not None
        self.proc.send_signal(signal.SIGHUP)

    @property
    def running(self) -> bool:
        """True while the process is alive."""
        return self.proc is not None and self.proc.poll() is None

    @property
    def url(self) -> str:
        """``mqtt://host:port`` of the plain listener."""
        return f"mqtt://{self.host}:{self.port}"

    def log(self) -> str:
        """mosquitto's log so far (for failure messages)."""
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""


@contextlib.contextmanager
def running_mosquitto(executable: str, workdir: Path, **kwargs: object) -> Iterator[Mosquitto]:
    """Context manager: a started :class:`Mosquitto`, stopped on exit."""
    broker = Mosquitto(executable, workdir, **kwargs)  # type: ignore[arg-type]
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()
