"""Device discovery: sysfs layouts of USB-serial scanners, and `scanfleet devices` on this host."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from scanfleet.drivers import discovery

pytestmark = pytest.mark.integration


def build_tree(root: Path) -> tuple[Path, Path]:
    """A sysfs and /dev layout as the kernel and udev create them for a CH340 and a ttyS."""
    sys_root, dev = root / "sys", root / "dev"
    usb = sys_root / "devices/pci0000:00/0000:00:14.0/usb1/1-2"
    iface = usb / "1-2:1.0/ttyUSB0"
    iface.mkdir(parents=True)
    (usb / "idVendor").write_text("1a86\n")
    (usb / "idProduct").write_text("7523\n")
    (usb / "product").write_text("USB Serial\n")
    (iface.parent / "bInterfaceNumber").write_text("00\n")
    drivers = sys_root / "bus/usb-serial/drivers/ch341-uart"
    drivers.mkdir(parents=True)
    (iface / "driver").symlink_to(drivers)
    tty = sys_root / "class/tty"
    (tty / "ttyUSB0").mkdir(parents=True)
    (tty / "ttyUSB0/device").symlink_to(iface)
    (tty / "ttyS0").mkdir()
    (tty / "ttyS0/type").write_text("0\n")  # a UART slot with no UART behind it
    (dev / "serial/by-id").mkdir(parents=True)
    (dev / "ttyUSB0").write_text("")
    (dev / "serial/by-id/usb-1a86_USB_Serial-if00-port0").symlink_to(dev / "ttyUSB0")
    return sys_root, dev


def test_a_ch340_bridge_is_listed_with_its_by_id_link_and_resolved_by_vid_pid(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sys_root, dev = build_tree(tmp_path)
    monkeypatch.setattr(discovery, "SYS", sys_root)
    monkeypatch.setattr(discovery, "DEV", dev)
    found = discovery.serial_devices()
    assert [d.path for d in found] == [str(dev / "ttyUSB0")]
    usb = found[0]
    assert usb.vid_pid == "1a86:7523"
    assert usb.looks_like_scanner
    assert "CH340" in usb.reason
    assert usb.name == "ch341-uart"
    assert usb.extra == {"interface": "00"}
    assert usb.links == (str(dev / "serial/by-id/usb-1a86_USB_Serial-if00-port0"),)
    assert discovery.resolve_usb("1A86:7523") == usb.links[0]
    assert discovery.resolve_usb("1a86:7523:nope") is None
    assert discovery.resolve_usb("0c2e:0b61") is None


def test_scanfleet_devices_runs_on_this_host_and_prints_json() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "scanfleet.daemon.cli", "devices", "--json"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    doc = json.loads(out.stdout)
    assert set(doc) == {"serial", "input"}
    text = subprocess.run(
        [sys.executable, "-m", "scanfleet.daemon.cli", "devices"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    assert "serial devices:" in text
    assert "input devices:" in text
    if not doc["input"]:
        assert "none found" in text
