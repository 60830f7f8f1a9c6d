"""HIL pytest plugin: one QEMU guest per session, shared by every test in tests/hil/.

Tests here that use the guest are marked ``hil`` automatically. They skip with the
reason when QEMU, vng, busybox or a generic kernel is missing (and fail under
SCANFLEET_REQUIRE_ALL=1).
See README.md in this folder for the architecture and how to add a device test.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from hil import gadget, guestlib
from hil.gadget import Gadgets
from hil.guest import Guest
from hil.qmp import Qmp
from hil.streams import ByteStream
from hil.vm import HilVm, find_prerequisites
from support.prereq import missing

log = logging.getLogger(__name__)
HERE = Path(__file__).resolve().parent


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test that needs the guest as ``hil`` before ``-m`` selects.

    A test needs the guest when any fixture it uses depends on ``hil_vm``; the harness's
    own pure-function tests here stay unmarked and run with the unit tests.
    """
    for item in items:
        if HERE in item.path.resolve().parents and "hil_vm" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.hil)


@pytest.fixture(scope="session")
def hil_vm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HilVm]:
    """The booted guest with every handle connected; powered off at session end."""
    prereqs = find_prerequisites()
    if isinstance(prereqs, str):
        missing(prereqs)
    vm = HilVm(prereqs, tmp_path_factory.mktemp("hil"))
    try:
        vm.start()
        assert vm.guest is not None
        vm.guest.run(guestlib.prepare, timeout=120)
        yield vm
    finally:
        vm.stop()


@pytest.fixture
def guest(hil_vm: HilVm) -> Guest:
    """The guest agent: ``guest.run(func, *args)`` runs a module-level function in the guest."""
    assert hil_vm.guest is not None
    return hil_vm.guest


@pytest.fixture
def qmp(hil_vm: HilVm) -> Qmp:
    """QEMU's QMP: ``type_text`` on the usb-kbd, ``device_del``/``device_add`` hotplug."""
    assert hil_vm.qmp is not None
    hil_vm.qmp.events.clear()
    return hil_vm.qmp


@pytest.fixture
def usb_serial(hil_vm: HilVm) -> ByteStream:
    """Host end of the FTDI usb-serial (guest: ftdi_sio tty), with stale bytes drained."""
    assert hil_vm.ftdi is not None
    hil_vm.ftdi.drain()
    return hil_vm.ftdi


@pytest.fixture
def uart(hil_vm: HilVm) -> ByteStream:
    """Host end of the 16550 UART (guest: /dev/ttyS1), with stale bytes drained."""
    assert hil_vm.uart is not None
    hil_vm.uart.drain()
    return hil_vm.uart


@pytest.fixture
def gadgets(guest: Guest) -> Iterator[Gadgets]:
    """Create USB gadgets in the guest; all are removed at teardown."""
    yield Gadgets(guest)
    guest.run(gadget.remove_all)


@pytest.fixture
def guest_mosquitto(guest: Guest) -> Iterator[int]:
    """A mosquitto on the guest's loopback; yields its port (reachable only in the guest)."""
    port: int = guest.run(guestlib.start_mosquitto)
    yield port
    guest.run(guestlib.stop_process, "mosquitto")
