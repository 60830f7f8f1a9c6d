"""Find serial and input devices and guess which ones are scanners.

Where udev runs, serial ttys are listed from udev's database (pyudev): the USB identity
(``ID_VENDOR_ID:ID_MODEL_ID``, ``ID_SERIAL_SHORT``), the interface
(``ID_USB_INTERFACE_NUM``), the physical path (``ID_PATH``) and the stable links udev
made (``/dev/serial/by-id/…``, ``by-path``). Without udev the same facts come from a
walk of ``/sys`` and the ``/dev`` link folders. Nothing here opens a device, so
``scanfleet devices`` is safe to run next to a running daemon.
"""

from __future__ import annotations

import fnmatch
import glob
import os
import re
from pathlib import Path
from typing import Any

from scanfleet.drivers.base import DeviceInfo

SYS = Path("/sys")
DEV = Path("/dev")
TTY_PATTERNS = ("ttyUSB*", "ttyACM*", "ttyS*", "ttyCH343USB*")

SCANNER_VENDORS: dict[str, str] = {
    "0c2e": "Honeywell (Metrologic/Hand Held Products)",
    "05e0": "Zebra/Symbol",
    "05f9": "Datalogic",
    "1eab": "Newland",
    "1fbb": "Cino",
}
"""USB vendor ids of barcode-scanner makers (protocols.md §5.3 and the brief)."""

SCANNER_DEVICES: dict[str, str] = {
    "0488:5788": "Netum USB-COM scanner",
}

USB_SERIAL_BRIDGES: dict[str, str] = {
    "1a86:7523": "CH340/CH341 USB-serial bridge",
    "4348:5523": "CH340/CH341 USB-serial bridge",
    "1a86:55d4": "CH9102 USB-serial bridge",
    "10c4:ea60": "CP210x USB-serial bridge",
    "067b:2303": "PL2303 USB-serial bridge",
    "0403:6001": "FTDI USB-serial bridge",
}
"""Bridges that sit in front of many RS-232 scanners: worth a look, not proof."""


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8", errors="replace").strip()
    except OSError:
        return None


def _usb_ancestor(device: Path) -> Path | None:
    """The USB device directory (the one with idVendor) above a sysfs device node."""
    try:
        cur = device.resolve()
    except OSError:
        return None
    for _ in range(8):
        if (cur / "idVendor").exists():
            return cur
        if cur.parent == cur:
            break
        cur = cur.parent
    return None


def usb_attributes(sys_device: Path) -> dict[str, str]:
    """``vid_pid``, ``serial``, ``manufacturer``, ``product`` of the USB device above a node."""
    usb = _usb_ancestor(sys_device)
    if usb is None:
        return {}
    out: dict[str, str] = {}
    vid, pid = _read(usb / "idVendor"), _read(usb / "idProduct")
    if vid and pid:
        out["vid_pid"] = f"{vid.lower()}:{pid.lower()}"
    for key in ("serial", "manufacturer", "product"):
        value = _read(usb / key)
        if value:
            out[key] = value
    return out


def _interface_number(sys_device: Path) -> str | None:
    """``bInterfaceNumber`` of the USB interface a tty hangs off (cdc_acm: the device
    itself; usb-serial: its parent), or None for a non-USB tty."""
    try:
        node = sys_device.resolve()
    except OSError:
        return None
    return _read(node / "bInterfaceNumber") or _read(node.parent / "bInterfaceNumber")


def _links(folder: Path) -> dict[str, list[str]]:
    """Map a device node's real path to the symlinks pointing at it in *folder*."""
    out: dict[str, list[str]] = {}
    for link in sorted(glob.glob(str(folder / "*"))):
        try:
            target = os.path.realpath(link)
        except OSError:
            continue
        out.setdefault(target, []).append(link)
    return out


def tty_usb_attributes(tty_path: str) -> dict[str, str]:
    """USB attributes of a tty given by any path (``/dev/serial/by-id/…`` or ``/dev/ttyUSB0``)."""
    name = os.path.basename(os.path.realpath(tty_path))
    return usb_attributes(SYS / "class" / "tty" / name / "device")


def _guess(vid_pid: str | None) -> tuple[bool, str]:
    if not vid_pid:
        return False, "no USB identity"
    if vid_pid in SCANNER_DEVICES:
        return True, SCANNER_DEVICES[vid_pid]
    vendor = vid_pid.split(":")[0]
    if vendor in SCANNER_VENDORS:
        return True, f"scanner vendor {SCANNER_VENDORS[vendor]}"
    if vid_pid in USB_SERIAL_BRIDGES:
        return True, f"{USB_SERIAL_BRIDGES[vid_pid]} (often a serial scanner)"
    return False, "unknown vendor"


def _real_uart(name: str) -> bool:
    # ttyS0..ttyS31 always exist; only ports whose UART type is known are real.
    port_type = _read(SYS / "class" / "tty" / name / "type")
    return port_type not in (None, "0")


def _udev_context() -> Any:
    """A pyudev Context where udev runs (its database has the properties), else None."""
    from scanfleet.drivers.hotplug import import_pyudev

    pyudev = import_pyudev()
    return None if pyudev is None else pyudev.Context()


def _unescape(value: str | None) -> str | None:
    """udev's ``ID_*_ENC`` values escape blanks and odd bytes as ``\\xNN``."""
    if not value:
        return None
    return re.sub(r"\\x([0-9a-fA-F]{2})", lambda m: chr(int(m.group(1), 16)), value).strip()


def _udev_serial_devices(context: Any) -> list[DeviceInfo]:
    found: list[DeviceInfo] = []
    for device in sorted(context.list_devices(subsystem="tty"), key=lambda d: d.sys_name):
        name: str = device.sys_name
        if not any(fnmatch.fnmatch(name, pattern) for pattern in TTY_PATTERNS):
            continue
        if name.startswith("ttyS") and not _real_uart(name):
            continue
        props = device.properties
        vid, pid = props.get("ID_VENDOR_ID"), props.get("ID_MODEL_ID")
        vid_pid = f"{vid}:{pid}".lower() if vid and pid else None
        parent = device.parent
        kernel_driver = props.get("ID_USB_DRIVER") or (parent.driver if parent else None)
        looks, reason = _guess(vid_pid)
        if name.startswith("ttyS"):
            looks, reason = False, "on-board UART (an RS-232 scanner may be attached)"
        extra = _udev_extra(props)
        found.append(
            DeviceInfo(
                driver="serial",
                path=device.device_node or str(DEV / name),
                links=tuple(sorted(device.device_links)),
                vid_pid=vid_pid,
                serial=props.get("ID_SERIAL_SHORT"),
                manufacturer=_unescape(props.get("ID_VENDOR_ENC")) or props.get("ID_VENDOR"),
                product=_unescape(props.get("ID_MODEL_ENC")) or props.get("ID_MODEL"),
                name=kernel_driver,
                looks_like_scanner=looks,
                reason=reason,
                extra=extra,
            )
        )
    return found


def serial_devices() -> list[DeviceInfo]:
    """USB-serial, USB-COM (cdc_acm) and real UART ttys, with their stable links.

    From udev's database where udev runs, else from sysfs.
    """
    context = _udev_context()
    if context is not None:
        return _udev_serial_devices(context)
    links = _links(DEV / "serial" / "by-id")
    for target, more in _links(DEV / "serial" / "by-path").items():
        links.setdefault(target, []).extend(more)
    found: list[DeviceInfo] = []
    names = sorted(
        os.path.basename(p)
        for pattern in TTY_PATTERNS
        for p in glob.glob(str(SYS / "class" / "tty" / pattern))
    )
    for name in names:
        if name.startswith("ttyS") and not _real_uart(name):
            continue
        sys_dev = SYS / "class" / "tty" / name / "device"
        attrs = usb_attributes(sys_dev)
        interface = _interface_number(sys_dev)
        driver_link = sys_dev / "driver"
        kernel_driver = (
            os.path.basename(os.path.realpath(driver_link)) if driver_link.exists() else None
        )
        looks, reason = _guess(attrs.get("vid_pid"))
        if name.startswith("ttyS"):
            looks, reason = False, "on-board UART (an RS-232 scanner may be attached)"
        path = str(DEV / name)
        found.append(
            DeviceInfo(
                driver="serial",
                path=path,
                links=tuple(links.get(path, [])),
                vid_pid=attrs.get("vid_pid"),
                serial=attrs.get("serial"),
                manufacturer=attrs.get("manufacturer"),
                product=attrs.get("product"),
                name=kernel_driver,
                looks_like_scanner=looks,
                reason=reason,
                extra={"interface": interface} if interface else {},
            )
        )
    return found


def _udev_extra(props: Any) -> dict[str, str]:
    return {
        key: props[prop]
        for key, prop in (("id_path", "ID_PATH"), ("interface", "ID_USB_INTERFACE_NUM"))
        if prop in props
    }


def _udev_attribute(device: Any, name: str) -> str | None:
    """A sysfs attribute of a pyudev device, None when it (or the device) is missing."""
    if device is None:
        return None
    try:
        value: str = device.attributes.asstring(name)
    except (KeyError, OSError, UnicodeDecodeError):
        return None
    return value.strip() or None


def _udev_input_devices(context: Any) -> list[DeviceInfo]:
    found: list[DeviceInfo] = []
    for device in sorted(context.list_devices(subsystem="input"), key=lambda d: d.sys_name):
        if not device.sys_name.startswith("event") or not device.device_node:
            continue
        props = device.properties
        parent = device.parent  # the inputN device: its name and bus ids
        name = _udev_attribute(parent, "name")
        vid, pid = props.get("ID_VENDOR_ID"), props.get("ID_MODEL_ID")
        if not (vid and pid):
            vid, pid = _udev_attribute(parent, "id/vendor"), _udev_attribute(parent, "id/product")
        vid_pid = f"{vid}:{pid}".lower() if vid and pid else None
        looks, reason = _guess(vid_pid)
        if not looks and any(w in (name or "").lower() for w in ("barcode", "scanner", "scan")):
            looks, reason = True, "device name mentions a scanner"
        found.append(
            DeviceInfo(
                driver="evdev",
                path=device.device_node,
                links=tuple(sorted(device.device_links)),
                vid_pid=vid_pid,
                serial=props.get("ID_SERIAL_SHORT"),
                manufacturer=_unescape(props.get("ID_VENDOR_ENC")) or props.get("ID_VENDOR"),
                product=_unescape(props.get("ID_MODEL_ENC")) or props.get("ID_MODEL"),
                name=name,
                looks_like_scanner=looks,
                reason=reason,
                extra=_udev_extra(props),
            )
        )
    return found


def input_devices() -> list[DeviceInfo]:
    """``/dev/input/event*`` nodes with their names, stable links and USB identity.

    From udev's database where udev runs, else from sysfs.
    """
    context = _udev_context()
    if context is not None:
        return _udev_input_devices(context)
    links = _links(DEV / "input" / "by-id")
    found: list[DeviceInfo] = []
    for sys_node in sorted(glob.glob(str(SYS / "class" / "input" / "event*"))):
        node = Path(sys_node)
        dev = node / "device"
        name = _read(dev / "name")
        vendor, product = _read(dev / "id" / "vendor"), _read(dev / "id" / "product")
        vid_pid = f"{vendor}:{product}".lower() if vendor and product else None
        attrs = usb_attributes(dev)
        looks, reason = _guess(attrs.get("vid_pid") or vid_pid)
        lowered = (name or "").lower()
        if not looks and any(word in lowered for word in ("barcode", "scanner", "scan")):
            looks, reason = True, "device name mentions a scanner"
        path = str(DEV / "input" / node.name)
        found.append(
            DeviceInfo(
                driver="evdev",
                path=path,
                links=tuple(links.get(path, [])),
                vid_pid=attrs.get("vid_pid") or vid_pid,
                serial=attrs.get("serial"),
                manufacturer=attrs.get("manufacturer"),
                product=attrs.get("product"),
                name=name,
                looks_like_scanner=looks,
                reason=reason,
            )
        )
    return found


def resolve_usb(spec: str) -> str | None:
    """The tty path (by-id link when there is one) of the USB device ``vid:pid[:serial]``."""
    vid, pid, *rest = spec.lower().split(":", 2)
    serial = rest[0] if rest else None
    context = _udev_context()
    if context is not None:
        return _udev_resolve_usb(context, vid, pid, serial)
    for info in serial_devices():
        if info.vid_pid != f"{vid}:{pid}":
            continue
        if serial is not None and (info.serial or "").lower() != serial:
            continue
        by_id = [link for link in info.links if "/by-id/" in link]
        return by_id[0] if by_id else info.path
    return None


def _udev_resolve_usb(context: Any, vid: str, pid: str, serial: str | None) -> str | None:
    # libudev matches the vendor itself: a device worker calls this on every reopen
    # attempt, and listing every tty with its properties is slow on a small CPU. (Several
    # property matches are OR-ed by libudev, so the model is checked here.)
    ttys = context.list_devices(subsystem="tty").match_property("ID_VENDOR_ID", vid)
    for device in sorted(ttys, key=lambda d: d.sys_name):
        props = device.properties
        if props.get("ID_MODEL_ID", "").lower() != pid:
            continue
        if serial is not None and props.get("ID_SERIAL_SHORT", "").lower() != serial:
            continue
        by_id = sorted(link for link in device.device_links if "/by-id/" in link)
        node: str | None = by_id[0] if by_id else device.device_node
        if node:
            return node
    return None
