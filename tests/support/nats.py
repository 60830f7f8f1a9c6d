"""Private NATS servers (Debian's 2.9) with JetStream and the MQTT listener.

Never the machine's own nats-server: every server here has its own config, JetStream
store and free ports in a temporary directory. :class:`NatsServer` is one node;
:class:`NatsCluster` is three nodes on loopback clustered over routes, with the MQTT
streams replicated three times (R3), so any one node may die without losing what it
acknowledged.

NATS 2.9 speaks MQTT 3.1.1 only (it answers an MQTT 5 CONNECT with CONNACK return
code 1, "unacceptable protocol version").
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from support.broker import free_port
from support.server import ServerProcess, wait_listening

NATS_SERVER = "nats-server"


class NatsServer(ServerProcess):
    """One nats-server process; restartable with the same ports and JetStream store."""

    protocol = "3.1.1"
    name = "nats"

    def __init__(
        self,
        workdir: Path,
        *,
        server_name: str = "sf-nats",
        cluster: str = "",
        replicas: int = 1,
    ) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.client_port = free_port()
        self.cluster_port = free_port()
        self.server_name = server_name
        self.cluster = cluster
        self.replicas = replicas
        self.routes: list[int] = []
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = workdir / "nats.log"
        self.conf_path = workdir / "nats.conf"
        workdir.mkdir(parents=True, exist_ok=True)

    def write_config(self) -> None:
        """nats.conf: client and MQTT listeners, JetStream, and the cluster routes if any."""
        lines = [
            f"server_name: {self.server_name}",
            f"listen: {self.host}:{self.client_port}",
            f'jetstream {{ store_dir: "{self.workdir / "js"}" }}',
            "mqtt {",
            f"  listen: {self.host}:{self.port}",
            f"  stream_replicas: {self.replicas}",
            "}",
        ]
        if self.cluster:
            routes = ", ".join(f"nats-route://{self.host}:{p}" for p in self.routes)
            lines += [
                "cluster {",
                f"  name: {self.cluster}",
                f"  listen: {self.host}:{self.cluster_port}",
                f"  routes: [{routes}]",
                "}",
            ]
        self.conf_path.write_text("\n".join(lines) + "\n", encoding="utf-8")

    def launch(self) -> None:
        """Start the process without waiting (a cluster starts its nodes together)."""
        assert self.proc is None or self.proc.poll() is not None, "already running"
        self.write_config()
        self.proc = subprocess.Popen(
            [NATS_SERVER, "-c", str(self.conf_path), "-l", str(self.log_path)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            stdin=subprocess.DEVNULL,
        )

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Wait until the MQTT listener accepts connections."""
        assert self.proc is not None
        if not wait_listening(self.host, self.port, time.monotonic() + timeout, self.proc):
            self.stop(signal.SIGKILL)
            raise RuntimeError(f"nats-server did not listen on {self.port}:\n{self.log()[-4000:]}")

    def start(self, timeout: float = 60.0) -> None:
        """Start and wait until the MQTT listener accepts connections."""
        self.launch()
        self.wait_ready(timeout)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> None:
        """Stop the server (SIGTERM: JetStream shuts down cleanly; SIGKILL: it does not)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def close(self) -> None:
        """Stop (the same as :meth:`stop`; every fixture class has both)."""
        self.stop()

    def log(self) -> str:
        """The server's log so far."""
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""


class NatsCluster:
    """Three clustered nats-servers on loopback, MQTT streams replicated R3."""

    def __init__(self, workdir: Path, size: int = 3) -> None:
        self.nodes = [
            NatsServer(
                workdir / f"n{i}", server_name=f"sf-n{i}", cluster="sf-cluster", replicas=size
            )
            for i in range(size)
        ]
        for node in self.nodes:
            node.routes = [other.cluster_port for other in self.nodes if other is not node]

    def start(self, timeout: float = 90.0) -> None:
        """Start every node and wait until each MQTT listener accepts."""
        for node in self.nodes:
            node.launch()
        for node in self.nodes:
            node.wait_ready(timeout)

    def close(self) -> None:
        """Stop every node."""
        for node in self.nodes:
            node.stop()

    @property
    def urls(self) -> list[str]:
        """The MQTT URL of every node, in node order."""
        return [node.url for node in self.nodes]

    def node_of_port(self, port: int) -> NatsServer:
        """The node whose MQTT listener is *port*."""
        return next(node for node in self.nodes if node.port == port)

    def log(self) -> str:
        """Every node's log."""
        return "\n".join(f"=== {n.server_name}\n{n.log()}" for n in self.nodes)


@contextlib.contextmanager
def running_nats(workdir: Path) -> Iterator[NatsServer]:
    """Context manager: a started single :class:`NatsServer`, stopped on exit."""
    server = NatsServer(workdir)
    try:
        server.start()
        yield server
    finally:
        server.close()
