"""A clustered broker (issue 18): kill the node the terminal is connected to mid-stream.

Three nats-servers on loopback, JetStream replicating the MQTT streams three times
(R3). The daemon gets all three MQTT URLs (``[broker] url`` as a list); the backend
subscriber, with a persistent session, sits on another node. SIGKILL of the
terminal's node must cost nothing: the daemon fails over to the next URL and resends
from its watermark, and the subscriber receives every journal record.
"""

from __future__ import annotations

import re
import signal
from pathlib import Path

import pytest

from scanfleet.drivers.sim.serial_scanner import SerialScannerSimulator
from support.daemon import DaemonProcess
from support.matrix import daemon_config, journal_ids, missing_report, wait
from support.mqtt import Collector
from support.nats import NatsCluster

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SCANS = 300
RATE = 40.0
SITE = "cluster-site"
DEVICE = "sf-c1u57e7"


def test_killing_the_terminals_node_mid_stream_loses_nothing(
    nats_cluster: NatsCluster, tmp_path: Path
) -> None:
    urls = nats_cluster.urls
    # The subscriber on the last node: the daemon starts on the first URL.
    backend = nats_cluster.nodes[-1]
    collector = Collector(
        backend.host,
        backend.port,
        f"scanfleet/v1/{SITE}/+/scans",
        client_id="backend-cluster",
        protocol="3.1.1",
    )
    link = tmp_path / "scanner"
    sim = SerialScannerSimulator(framing="cr", aim=True, rate=RATE, count=SCANS, seed=5, link=link)
    daemon = DaemonProcess(daemon_config(tmp_path, SITE, DEVICE, urls, link), tmp_path / "d.log")
    killed = None
    try:
        with sim:
            daemon.start()
            assert daemon.wait_log("ready:", 60), daemon.log()
            sim.start()
            assert wait(lambda: len(collector.unique_ids()) >= SCANS // 4, 60), daemon.log()
            connected = re.findall(r"connected to mqtt://127\.0\.0\.1:(\d+)", daemon.run_log())
            assert connected, daemon.log()
            killed = nats_cluster.node_of_port(int(connected[-1]))
            assert killed is not backend
            killed.stop(signal.SIGKILL)
            assert wait(lambda: "failing over to broker" in daemon.run_log(), 30), daemon.log()
            assert sim.wait_done(120), f"simulator sent {len(sim.sent)}"
            expected: dict[str, int] = {}

            def all_arrived() -> bool:
                expected.update(journal_ids(tmp_path))
                return len(expected) >= SCANS and set(expected) <= collector.unique_ids()

            assert wait(all_arrived, 120, step=0.5), (
                missing_report(expected, collector.unique_ids())
                + "\n"
                + daemon.run_log()[-3000:]
                + nats_cluster.log()[-3000:]
            )
            after = re.findall(r"connected to mqtt://127\.0\.0\.1:(\d+)", daemon.run_log())
            assert int(after[-1]) != killed.port, "the daemon never left the killed node"
            assert daemon.stop() == 0, daemon.log()
    finally:
        if daemon.alive():
            daemon.kill()
        if killed is not None and not killed.running:
            killed.start()
        collector.close()
