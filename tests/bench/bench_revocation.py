"""Benchmark ``revocation``: throwing a revoked identity off the device broker.

mosquitto does not re-check open connections after a CRL reload. Two ways to end the
session of a revoked certificate, on the generated configuration with ``CLIENTS``
connected devices:

* ``dynsec``: what ``fleet serve``/``fleet revoke`` do — ``createClient`` +
  ``deleteClient`` of the CN on the admin socket (:mod:`scanfleet.provisioning.dynsec`);
* ``restart`` (the baseline): restart the device broker (persistence keeps sessions).

Fields: ``dynsec_s`` and ``restart_s`` (median seconds from the call until the revoked
client saw its disconnect, resp. until the broker listens again), ``ratio`` =
dynsec_s / restart_s, and how many *other* clients each way disconnected
(``dynsec_collateral`` should be 0, ``restart_collateral`` is every client).
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_drain import mosquitto_executable

from scanfleet.provisioning.dynsec import admin_password, disconnect_identities
from support.pki import FleetBroker, TLSClient, make_fleet

CLIENTS = 30
ROUNDS = 5
SITE = "bench"


def _connect(broker: FleetBroker, creds: Any, name: str) -> TLSClient:
    client = TLSClient(broker.port, broker.fleet.ca_file, creds, client_id=name)
    if not client.connected(timeout=30):
        raise RuntimeError(f"{name} did not connect: {client.error}")
    return client


def run() -> Iterator[dict[str, Any]]:
    """One JSON line: medians over ROUNDS."""
    with tempfile.TemporaryDirectory(prefix="scanfleet-bench-revoke-") as tmp:
        fleet = make_fleet(Path(tmp))
        broker = FleetBroker(mosquitto_executable(), Path(tmp) / "broker", fleet)
        broker.start()
        try:
            creds = {f"dev-{i}": fleet.device(SITE, f"dev-{i}") for i in range(CLIENTS)}
            password = admin_password(fleet.ca)
            dynsec, restart, dynsec_collateral, restart_collateral = [], [], [], []
            for _ in range(ROUNDS):
                clients = {n: _connect(broker, c, n) for n, c in creds.items()}
                victim = clients["dev-0"]
                started = time.perf_counter()
                disconnect_identities(broker.admin_socket, password, [f"{SITE}/dev-0"])
                victim.wait(lambda v=victim: v.error is not None)
                dynsec.append(time.perf_counter() - started)
                others = [c for n, c in clients.items() if n != "dev-0"]
                dynsec_collateral.append(sum(c.error is not None for c in others))

                started = time.perf_counter()
                broker.restart()
                restart.append(time.perf_counter() - started)
                for c in others:
                    c.wait(lambda c=c: c.error is not None, timeout=10)
                restart_collateral.append(sum(c.error is not None for c in others))
                for c in clients.values():
                    c.close()
        finally:
            broker.close()
    yield {
        "clients": CLIENTS,
        "dynsec_s": round(statistics.median(dynsec), 4),
        "restart_s": round(statistics.median(restart), 4),
        "ratio": round(statistics.median(dynsec) / statistics.median(restart), 3),
        "dynsec_collateral": max(dynsec_collateral),
        "restart_collateral": min(restart_collateral),
    }
