"""Guest-side helpers: run inside the QEMU guest (through the agent), never on the host.

Device discovery goes through sysfs by USB vid:pid or device name, never by guessed
/dev numbers, because hotplug renumbers nodes. Every wait has a timeout.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

CONFIGFS = Path("/sys/kernel/config")
#: Independent dummy_hcd controllers, so several gadgets can be plugged at once.
UDC_COUNT = 4
#: Upper bound for enumeration and removal; generous because a TCG guest on a busy
#: host can take tens of seconds, and a bound that holds costs nothing.
WAIT_TIMEOUT = 60.0

GUEST_MODULES = (
    "xhci_pci", "usbhid", "hid_generic", "evdev", "ftdi_sio", "cdc_acm",
    "uinput", "libcomposite", "usb_f_hid", "usb_f_acm",
)  # fmt: skip

_processes: dict[str, subprocess.Popen[bytes]] = {}


def wait_for(probe: Callable[[], T | None], what: str, timeout: float = WAIT_TIMEOUT) -> T:
    """Poll *probe* until it returns something other than None/False."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value is not None and value is not False:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"guest: {what} not within {timeout} s")
        time.sleep(0.05)


def prepare() -> dict[str, Any]:
    """Load the modules every HIL test relies on; once per boot."""
    # Loaded explicitly, not left to udev's modalias autoloading: the host root may
    # have no udev, and a driver loaded late binds to devices that are already there.
    subprocess.run(["modprobe", "-a", *GUEST_MODULES], check=True)
    subprocess.run(["modprobe", "dummy_hcd", f"num={UDC_COUNT}"], check=True)
    if not (CONFIGFS / "usb_gadget").is_dir():
        subprocess.run(["mount", "-t", "configfs", "none", str(CONFIGFS)], check=True)
    udcs = wait_for(lambda: sorted(os.listdir("/sys/class/udc")) or None, "dummy_hcd UDCs")
    return {"udcs": udcs, "uinput": os.path.exists("/dev/uinput")}


def usb_device(vid: int, pid: int) -> Path | None:
    """Sysfs directory of the USB device *vid*:*pid*, if plugged."""
    for dev in Path("/sys/bus/usb/devices").iterdir():
        try:
            if (
                int((dev / "idVendor").read_text(), 16) == vid
                and int((dev / "idProduct").read_text(), 16) == pid
            ):
                return dev.resolve()
        except (OSError, ValueError):
            # A device being removed: its attributes vanish (ENOENT) or answer ENODEV
            # between the listing and the read.
            continue
    return None


def nodes_of(vid: int, pid: int, subsystem: str) -> list[str]:
    """/dev nodes of *subsystem* ("tty", "hidraw", "input") under USB device *vid*:*pid*."""
    device = usb_device(vid, pid)
    if device is None:
        return []
    found = []
    for entry in sorted(Path(f"/sys/class/{subsystem}").iterdir()):
        if subsystem == "input" and not entry.name.startswith("event"):
            continue
        if (entry / "device").exists() and device in entry.resolve().parents:
            node = Path("/dev") / ("input" if subsystem == "input" else "") / entry.name
            found.append(str(node))
    return found


def wait_node(vid: int, pid: int, subsystem: str, timeout: float = WAIT_TIMEOUT) -> str:
    """First /dev node of *subsystem* for *vid*:*pid* once udev created it."""

    def probe() -> str | None:
        nodes = [n for n in nodes_of(vid, pid, subsystem) if os.path.exists(n)]
        return nodes[0] if nodes else None

    return wait_for(probe, f"{subsystem} node of {vid:04x}:{pid:04x}", timeout)


def wait_gone(vid: int, pid: int, timeout: float = WAIT_TIMEOUT) -> None:
    """Wait until USB device *vid*:*pid* left the bus."""
    wait_for(lambda: usb_device(vid, pid) is None, f"{vid:04x}:{pid:04x} unplugged", timeout)


def evdev_by_name(name: str) -> str | None:
    """/dev/input/eventN of the input device called *name* (as evdev reports it)."""
    for entry in sorted(Path("/sys/class/input").glob("event*")):
        try:
            if (entry / "device" / "name").read_text().strip() == name:
                return f"/dev/input/{entry.name}"
        except FileNotFoundError:
            continue
    return None


def tty_by_driver(driver: str) -> str | None:
    """/dev node of the first tty whose device is bound to *driver* (e.g. "ftdi_sio")."""
    for entry in sorted(Path("/sys/class/tty").iterdir()):
        link = entry / "device" / "driver"
        if link.exists() and link.resolve().name == driver:
            return f"/dev/{entry.name}"
    return None


def start_process(name: str, argv: list[str], env: dict[str, str] | None = None) -> int:
    """Start a long-running guest process (a broker, the daemon); returns its pid."""
    if name in _processes and _processes[name].poll() is None:
        raise RuntimeError(f"guest process {name} already running")
    log = Path("/tmp") / f"hil-{name}.log"  # guest /tmp is a tmpfs overlay, private to the guest
    with log.open("wb") as out:
        proc = subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}
        )
    _processes[name] = proc
    return proc.pid


def stop_process(name: str, timeout: float = 10.0) -> dict[str, Any]:
    """SIGTERM (then SIGKILL) guest process *name*; its exit status and output."""
    proc = _processes.pop(name)
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)
    output = (Path("/tmp") / f"hil-{name}.log").read_text(errors="replace")
    return {"returncode": proc.returncode, "output": output}


def start_mosquitto(port: int = 1883) -> int:
    """A mosquitto on the guest's loopback (binary from the shared root); returns the port."""
    import socket

    conf = Path("/tmp/hil-mosquitto.conf")
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
    start_process("mosquitto", ["/usr/sbin/mosquitto", "-c", str(conf)])

    def accepting() -> bool:
        with socket.socket() as probe:
            return probe.connect_ex(("127.0.0.1", port)) == 0

    wait_for(accepting, f"mosquitto on 127.0.0.1:{port}")
    return port
