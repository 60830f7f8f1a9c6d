"""Unplug and replug a keyboard-wedge scanner while the daemon runs in the guest."""

from __future__ import annotations

import os
import select
import sys
import time
from pathlib import Path
from typing import Any

from hil.gadget import Gadgets
from hil.guest import Guest

PID = 0x0D10
#: The HID 1.11 Appendix B boot keyboard: modifiers, reserved, LEDs out, six key usages.
BOOT_KEYBOARD = bytes.fromhex(
    "05 01 09 06 a1 01 05 07 19 e0 29 e7 15 00 25 01 75 01 95 08 81 02"
    "95 01 75 08 81 03 95 05 75 01 05 08 19 01 29 05 91 02 95 01 75 03 91 03"
    "95 06 75 08 15 00 25 65 05 07 19 00 29 65 81 00 c0"
)
DAEMON = "scanfleet-wedge"
LOG = Path("/tmp") / f"hil-{DAEMON}.log"  # where guestlib.start_process logs (guest side)


def start_daemon(port: int, vid: int, pid: int) -> int:
    """In the guest: run ``scanfleet run`` with one evdev device bound by vid:pid."""
    from hil.guestlib import start_process, wait_for

    home = Path("/tmp/hil-wedge")
    home.mkdir(exist_ok=True)
    config = home / "scanfleet.toml"
    config.write_text(
        f"""
[identity]
site = "hil"
device = "wedge"
[paths]
state_dir = "{home / "state"}"
[broker]
url = "mqtt://127.0.0.1:{port}"
[[devices]]
name = "counter"
driver = "evdev"
usb = "{vid:04x}:{pid:04x}"
idle_timeout_ms = 3000
""",
        encoding="utf-8",
    )
    argv = [sys.executable, "-m", "scanfleet.daemon", "--log-level", "debug", "run"]
    started = start_process(DAEMON, [*argv, "--config", str(config)])
    wait_for(lambda: bound_count() >= 1 or None, "daemon bound the scanner", timeout=120)
    return started


def bound_count() -> int:
    """In the guest: how often the daemon has bound an input device so far."""
    return LOG.read_text(errors="replace").count("bound input device") if LOG.exists() else 0


def wait_bound(count: int) -> int:
    """In the guest: wait until the daemon has bound the scanner *count* times."""
    from hil.guestlib import wait_for

    return wait_for(lambda: bound_count() if bound_count() >= count else None, "re-bind", 60)


def type_on_gadget(hidg: str, text: str) -> None:
    """In the guest: the gadget keyboard types *text* + Enter as boot reports."""
    from scanfleet.drivers import keymaps as km
    from scanfleet.drivers.usbhid import boot_reports

    fd = os.open(hidg, os.O_WRONLY | os.O_NONBLOCK)
    try:
        for report in boot_reports(km.US, text):
            if not select.select([], [fd], [], 10)[1]:
                raise TimeoutError("hidg not writable: nobody polls the keyboard")
            os.write(fd, report)
            time.sleep(0.004)
    finally:
        os.close(fd)


def receive_scan(port: int, code: str, timeout: float = 60.0, device: str = "wedge") -> str:
    """In the guest: subscribe to *device*'s topics; return the message carrying *code*."""
    import queue
    import threading

    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    from hil.agent import notify

    got: queue.Queue[str] = queue.Queue()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"hil-{device}-{code[-4:]}")
    client.on_message = lambda _c, _u, m: got.put(m.payload.decode("utf-8", "replace"))
    subscribed = threading.Event()
    client.on_subscribe = lambda *_a: subscribed.set()
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        client.subscribe(f"scanfleet/v1/hil/{device}/#", qos=1)
        if not subscribed.wait(30):
            raise TimeoutError("no SUBACK from the guest's mosquitto")
        notify("subscribed")  # from this call's thread: the agent tracks calls per thread
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                payload = got.get(timeout=1)
            except queue.Empty:
                continue
            if code in payload:
                return payload
        raise TimeoutError(f"no message with {code} within {timeout} s")
    finally:
        client.loop_stop()
        client.disconnect()


def stop_daemon() -> dict[str, Any]:
    """In the guest: stop the daemon; its exit status and log."""
    from hil.guestlib import stop_process

    return stop_process(DAEMON)


def _scan_arrives(guest: Guest, port: int, hidg: str, code: str) -> str:
    call = guest.submit(receive_scan, port, code)
    assert call.wait_notice() == "subscribed"
    guest.run(type_on_gadget, hidg, code)
    payload: str = call.result()
    return payload


def test_scanner_unplugged_and_replugged_under_the_running_daemon_scans_again(
    guest: Guest, gadgets: Gadgets, guest_mosquitto: int
) -> None:
    scanner = gadgets.hid("wedge", BOOT_KEYBOARD, 8, pid=PID, protocol=1, subclass=1)
    guest.run(start_daemon, guest_mosquitto, scanner["vid"], PID, timeout=180)
    try:
        assert "83711700173703755001" in _scan_arrives(
            guest, guest_mosquitto, scanner["hidg"], "83711700173703755001"
        )
        gadgets.unplug("wedge")
        gadgets.replug("wedge", "input")
        guest.run(wait_bound, 2, timeout=90)
        assert "83711700173703755002" in _scan_arrives(
            guest, guest_mosquitto, scanner["hidg"], "83711700173703755002"
        )
    finally:
        result = guest.run(stop_daemon)
    assert result["returncode"] == 0, result["output"][-3000:]
