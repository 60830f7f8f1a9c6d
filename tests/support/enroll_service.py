"""The fleet's enrollment service (``scanfleet fleet serve``'s EnrollmentService) on a
test's FleetBroker, in a thread."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

from scanfleet.daemon.core.config import MqttVersion
from scanfleet.provisioning.ca import Role
from scanfleet.provisioning.service import EnrollmentService
from support.pki import Fleet, FleetBroker


@contextlib.contextmanager
def running_service(
    fleet: Fleet, fleet_broker: FleetBroker, *, name: str = "svc", protocol: MqttVersion = "5"
) -> Iterator[EnrollmentService]:
    """Run the enrollment service (fleet identity *name*) on *fleet_broker* until the block ends."""
    creds = fleet.role(Role.FLEET, name)
    fleet_broker.reload()  # the new fleet identity needs its ACL block
    svc = EnrollmentService(
        fleet.ca,
        host=fleet_broker.host,
        port=fleet_broker.service_port,  # the enrollment broker's service listener
        admin_socket=fleet_broker.admin_socket,
        cert_file=str(creds.cert),
        key_file=str(creds.key),
        broker_url=f"mqtts://{fleet_broker.host}:{fleet_broker.port}",
        protocol=protocol,
    )
    thread = threading.Thread(target=svc.run, daemon=True)
    thread.start()
    try:
        yield svc
    finally:
        svc.stop()
        thread.join(10)
