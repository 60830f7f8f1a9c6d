"""Batches swallowed by a network partition are resent after the reconnect.

On loopback a broker receives everything a client writes, so lost-in-flight
batches need a real lossy link: a TCP relay between publisher and a real
mosquitto that can swallow bytes (a partition) and cut connections.
"""

from __future__ import annotations

import contextlib
import random
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from scanfleet.daemon.core.alarms import AlarmSet
from scanfleet.daemon.core.backoff import Backoff
from scanfleet.daemon.core.config import BrokerConfig
from scanfleet.daemon.core.identity import Identity
from scanfleet.daemon.journal.journal import Journal
from scanfleet.daemon.publish.publisher import Publisher
from support.broker import Mosquitto
from support.mqtt import Collector
from support.scans import make_scan_body

pytestmark = pytest.mark.integration

SITE = "clinic-9"
DEVICE = "sf-0000000b1a5e"


class Relay:
    """Forwards TCP connections to the broker; ``partitioned`` swallows bytes both ways."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.partitioned = False
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._server.getsockname()[1]
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.upstream)
            with self._lock:
                self._sockets += [client, upstream]
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                if not self.partitioned:
                    dst.sendall(data)
        self._close_pair(src, dst)

    def _close_pair(self, *socks: socket.socket) -> None:
        for sock in socks:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def cut(self) -> None:
        """Drop every connection now (what a partition ends in, sooner or later)."""
        with self._lock:
            socks, self._sockets = self._sockets, []
        self._close_pair(*socks)

    def close(self) -> None:
        """Stop listening and drop every connection."""
        self._server.close()
        self.cut()


@pytest.fixture
def relay(mosquitto_factory: Callable[..., Mosquitto]) -> Iterator[tuple[Relay, Mosquitto]]:
    """A real mosquitto and a relay in front of it."""
    broker = mosquitto_factory()
    relay = Relay((broker.host, broker.port))
    yield relay, broker
    relay.close()


def wait_until(predicate: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def test_batches_lost_in_a_partition_stay_undelivered_and_are_resent_after_reconnect(
    relay: tuple[Relay, Mosquitto], tmp_path: Path
) -> None:
    link, broker = relay
    collector = Collector(broker.host, broker.port, "scanfleet/#", client_id="backend-part")
    rng = random.Random(11)
    with Journal.open(tmp_path / "journal.sqlite3", DEVICE) as journal:
        for i in range(20):
            journal.append(make_scan_body(i, rng))
        publisher = Publisher(
            journal,
            BrokerConfig(url=f"mqtt://127.0.0.1:{link.port}", keepalive=5),
            Identity(SITE, DEVICE),
            AlarmSet(),
            max_batch_scans=4,
            backoff=Backoff(0.1, 0.3),
        )
        publisher.start()
        try:
            assert publisher.wait_delivered(20, 30)
            link.partitioned = True
            sent_before = publisher.counters.batches_published
            for i in range(20, 50):
                journal.append(make_scan_body(i, rng))
            assert wait_until(lambda: publisher.counters.batches_published > sent_before, 10)
            time.sleep(0.5)  # acks, were any coming, would be back long before this
            assert publisher.delivered_seq == 20, "nothing the broker never saw is delivered"
            assert journal.delivered_seq == 20
            link.cut()
            link.partitioned = False
            assert publisher.wait_delivered(50, 30), "resent after the reconnect"
            assert wait_until(lambda: len({s["seq"] for s in collector.scans()}) == 50, 30)
        finally:
            publisher.stop(5)
            collector.close()
    assert sorted({s["seq"] for s in collector.scans()}) == list(range(1, 51))
    assert publisher.counters.connects >= 2
