"""A private RabbitMQ (Debian's 3.10) with its MQTT plugin, for tests and benchmarks.

Never the machine's own RabbitMQ: this node has its own name, its own directories,
config and enabled-plugins files in a temporary directory, free AMQP, MQTT and
distribution ports, and its own ``epmd`` on a free port (``ERL_EPMD_PORT``), so the
system's epmd on 4369 and its node are neither used nor disturbed.

RabbitMQ 3.10 speaks MQTT 3.1.1 only (it closes an MQTT 5 CONNECT without a
CONNACK). QoS 1 messages to a subscriber with ``clean_session = false`` go to a
durable queue and survive a restart of the node.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from support.broker import free_port
from support.server import ServerProcess, wait_listening

RABBITMQ_SERVER = "/usr/lib/rabbitmq/bin/rabbitmq-server"
"""The foreground script; ``/usr/sbin/rabbitmq-server`` would switch to user rabbitmq."""
EPMD = "epmd"


class RabbitMQ(ServerProcess):
    """One private RabbitMQ node with the MQTT plugin; restartable with its data kept."""

    protocol = "3.1.1"
    name = "rabbitmq"

    def __init__(self, workdir: Path, *, users: dict[str, str] | None = None) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.amqp_port = free_port()
        self.dist_port = free_port()
        self.epmd_port = free_port()
        self.users = users or {}
        self.node = f"sftest{secrets.token_hex(3)}@localhost"
        self.proc: subprocess.Popen[bytes] | None = None
        self.epmd: subprocess.Popen[bytes] | None = None
        self.log_dir = workdir / "log"
        workdir.mkdir(parents=True, exist_ok=True)

    def _env(self) -> dict[str, str]:
        base = self.workdir
        return {
            **os.environ,
            "HOME": str(base),  # the Erlang cookie goes here
            "ERL_EPMD_PORT": str(self.epmd_port),
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_IP_ADDRESS": self.host,
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_BASE": str(base),
            "RABBITMQ_MNESIA_BASE": str(base / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.log_dir),
            "RABBITMQ_CONFIG_FILE": str(base / "rabbitmq.conf"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(base / "advanced.config"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(base / "enabled_plugins"),
            "RABBITMQ_PID_FILE": str(base / "rabbitmq.pid"),
            "RABBITMQ_CTL_DIST_PORT_MIN": str(self.dist_port),
            "RABBITMQ_CTL_DIST_PORT_MAX": str(self.dist_port),
        }

    def write_config(self) -> None:
        """rabbitmq.conf and enabled_plugins for this node."""
        lines = [
            f"listeners.tcp.default = {self.host}:{self.amqp_port}",
            f"mqtt.listeners.tcp.default = {self.host}:{self.port}",
            "mqtt.allow_anonymous = " + ("false" if self.users else "true"),
            "mqtt.vhost = /",
            "mqtt.exchange = amq.topic",
            "log.console = false",
            "log.file.level = info",
            # Tests fill no disk; the default 50 MB free-space alarm would block
            # publishers on a crowded CI disk and read as a product bug.
            "disk_free_limit.absolute = 1MB",
        ]
        for i, (user, password) in enumerate(self.users.items()):
            if i == 0:
                lines += [f"default_user = {user}", f"default_pass = {password}"]
        (self.workdir / "rabbitmq.conf").write_text("\n".join(lines) + "\n", encoding="utf-8")
        (self.workdir / "advanced.config").write_text("[].\n", encoding="utf-8")
        (self.workdir / "enabled_plugins").write_text("[rabbitmq_mqtt].\n", encoding="utf-8")

    def start(self, timeout: float = 120.0) -> None:
        """Start epmd (once) and the node; wait until the MQTT listener accepts."""
        assert self.proc is None or self.proc.poll() is not None, "already running"
        self.write_config()
        if self.epmd is None or self.epmd.poll() is not None:
            self.epmd = subprocess.Popen(
                [EPMD, "-port", str(self.epmd_port), "-address", self.host],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        with (self.workdir / "server.out").open("ab") as out:
            self.proc = subprocess.Popen(
                [RABBITMQ_SERVER],
                env=self._env(),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        if not wait_listening(self.host, self.port, time.monotonic() + timeout, self.proc):
            self.stop(signal.SIGKILL)
            raise RuntimeError(f"RabbitMQ did not listen on {self.port}:\n{self.log()[-4000:]}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60.0) -> None:
        """Stop the node (SIGTERM: a clean shutdown; SIGKILL: the whole process group)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        if sig == signal.SIGKILL:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        else:
            self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        # beam's helpers (erl_child_setup, inet_gethost) share the group.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)

    def close(self) -> None:
        """Stop the node and its epmd."""
        self.stop()
        if self.epmd is not None and self.epmd.poll() is None:
            self.epmd.terminate()
            self.epmd.wait(10)

    def log(self) -> str:
        """The node's log and console output so far."""
        parts = []
        for path in [self.workdir / "server.out", *sorted(self.log_dir.glob("*.log"))]:
            with contextlib.suppress(OSError):
                parts.append(path.read_text(encoding="utf-8", errors="replace"))
        return "\n".join(parts)


@contextlib.contextmanager
def running_rabbitmq(workdir: Path, **kwargs: object) -> Iterator[RabbitMQ]:
    """Context manager: a started :class:`RabbitMQ`, stopped (with its epmd) on exit."""
    broker = RabbitMQ(workdir, **kwargs)  # type: ignore[arg-type]
    try:
        broker.start()
        yield broker
    finally:
        broker.close()
