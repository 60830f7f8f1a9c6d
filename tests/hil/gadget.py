"""Guest-side USB gadgets: configfs + libcomposite on dummy_hcd.

A gadget is a real USB device on the guest's own USB stack: the kernel's usbhid, hidraw,
cdc_acm and libusb see it exactly like a plugged-in scanner. One gadget per dummy UDC.
Run these inside the guest (``guest.run(gadget.create_hid, ...)``); the host-side
``gadgets`` fixture wraps them and removes every gadget after the test.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hil.guestlib import CONFIGFS, WAIT_TIMEOUT, wait_for, wait_gone, wait_node

if TYPE_CHECKING:
    from hil.guest import Guest

GADGETS = CONFIGFS / "usb_gadget"
#: pid.codes test vendor id; tests pick distinct product ids.
TEST_VID = 0x1209


def _write(path: Path, value: str | bytes) -> None:
    with path.open("wb") as f:
        f.write(value if isinstance(value, bytes) else value.encode())


def _free_udc() -> str:
    used = {(g / "UDC").read_text().strip() for g in GADGETS.iterdir()}
    for udc in sorted(os.listdir("/sys/class/udc")):
        if udc not in used:
            return udc
    raise RuntimeError("every dummy_hcd UDC has a gadget; remove one first")


def _skeleton(name: str, vid: int, pid: int, product: str) -> Path:
    root = GADGETS / name
    if root.exists():
        raise FileExistsError(f"gadget {name} exists")
    root.mkdir()
    _write(root / "idVendor", f"0x{vid:04x}")
    _write(root / "idProduct", f"0x{pid:04x}")
    _write(root / "bcdDevice", "0x0100")
    _write(root / "bcdUSB", "0x0200")
    strings = root / "strings" / "0x409"
    strings.mkdir(parents=True)
    _write(strings / "manufacturer", "scanfleet HIL")
    _write(strings / "product", product)
    _write(strings / "serialnumber", f"HIL{pid:04X}")
    config = root / "configs" / "c.1"
    config.mkdir(parents=True)
    _write(config / "MaxPower", "100")
    return root


def _bind(root: Path, function: Path, vid: int, pid: int) -> str:
    (root / "configs" / "c.1" / function.name).symlink_to(function)
    udc = _free_udc()
    _write(root / "UDC", udc)
    wait_for(lambda: (root / "UDC").read_text().strip() == udc, f"{root.name} bound")
    return udc


def _char_dev(function: Path, cls: str) -> str:
    majmin = (function / "dev").read_text().strip()
    for entry in Path(f"/sys/class/{cls}").iterdir():
        if (entry / "dev").read_text().strip() == majmin:
            return f"/dev/{entry.name}"
    raise FileNotFoundError(f"no /sys/class/{cls} entry for {function}")


def create_hid(
    name: str,
    report_desc: bytes,
    report_length: int,
    pid: int,
    vid: int = TEST_VID,
    protocol: int = 0,
    subclass: int = 0,
    product: str = "HIL HID",
) -> dict[str, Any]:
    """Plug a HID device with *report_desc*; returns its gadget-side /dev/hidgN and hidraw."""
    root = _skeleton(name, vid, pid, product)
    function = root / "functions" / "hid.usb0"
    function.mkdir(parents=True)
    _write(function / "protocol", str(protocol))
    _write(function / "subclass", str(subclass))
    _write(function / "report_length", str(report_length))
    _write(function / "report_desc", bytes(report_desc))
    udc = _bind(root, function, vid, pid)
    hidraw = wait_node(vid, pid, "hidraw")
    return {"name": name, "udc": udc, "vid": vid, "pid": pid,
            "hidg": _char_dev(function, "hidg"), "hidraw": hidraw}  # fmt: skip


def create_acm(
    name: str, pid: int, vid: int = TEST_VID, product: str = "HIL ACM"
) -> dict[str, Any]:
    """Plug a CDC-ACM serial device; returns the gadget tty (ttyGSn) and host tty (ttyACMn)."""
    root = _skeleton(name, vid, pid, product)
    function = root / "functions" / "acm.usb0"
    function.mkdir(parents=True)
    udc = _bind(root, function, vid, pid)
    port = (function / "port_num").read_text().strip()
    return {"name": name, "udc": udc, "vid": vid, "pid": pid,
            "gadget_tty": f"/dev/ttyGS{port}", "tty": wait_node(vid, pid, "tty")}  # fmt: skip


def _ids(root: Path) -> tuple[int, int]:
    return int((root / "idVendor").read_text(), 16), int((root / "idProduct").read_text(), 16)


def unplug(name: str, timeout: float = WAIT_TIMEOUT) -> None:
    """Disconnect gadget *name* from its UDC (the cable pulled) and wait until it is gone."""
    root = GADGETS / name
    _write(root / "UDC", "\n")
    wait_gone(*_ids(root), timeout=timeout)


def replug(name: str, subsystem: str = "hidraw", timeout: float = WAIT_TIMEOUT) -> str:
    """Reconnect gadget *name*; returns its new *subsystem* node once enumerated."""
    root = GADGETS / name
    _write(root / "UDC", _free_udc())
    return wait_node(*_ids(root), subsystem, timeout)


def remove(name: str) -> None:
    """Unplug gadget *name* and delete it from configfs (children before parents)."""
    root = GADGETS / name
    if (root / "UDC").read_text().strip():
        unplug(name)
    config = root / "configs" / "c.1"
    for link in config.iterdir():
        if link.is_symlink():
            link.unlink()
    if (config / "strings" / "0x409").exists():
        (config / "strings" / "0x409").rmdir()
    config.rmdir()
    for function in (root / "functions").iterdir():
        function.rmdir()
    (root / "strings" / "0x409").rmdir()
    root.rmdir()


def remove_all() -> list[str]:
    """Remove every gadget (test teardown); returns their names."""
    names = sorted(g.name for g in GADGETS.iterdir()) if GADGETS.is_dir() else []
    for name in names:
        remove(name)
    return names


class Gadgets:
    """Host side: plug gadgets in the guest (the ``gadgets`` fixture removes them after)."""

    def __init__(self, guest: Guest) -> None:
        self.guest = guest

    def hid(self, name: str, report_desc: bytes, report_length: int, pid: int, **kw: Any) -> Any:
        """Plug a HID gadget; returns ``{"hidg", "hidraw", "vid", "pid", ...}``."""
        return self.guest.run(create_hid, name, report_desc, report_length, pid, **kw)

    def acm(self, name: str, pid: int, **kw: Any) -> Any:
        """Plug a CDC-ACM gadget; returns ``{"tty", "gadget_tty", ...}``."""
        return self.guest.run(create_acm, name, pid, **kw)

    def unplug(self, name: str) -> None:
        """Pull the gadget's cable; returns once the device left the bus."""
        self.guest.run(unplug, name)

    def replug(self, name: str, subsystem: str = "hidraw") -> str:
        """Plug it back; returns its new *subsystem* node."""
        node: str = self.guest.run(replug, name, subsystem)
        return node
