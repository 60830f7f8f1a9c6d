"""Bytes both ways through real tty drivers: FTDI usb-serial, 16550 UART, CDC-ACM gadget."""

from __future__ import annotations

import time

from hil.agent import notify
from hil.gadget import Gadgets
from hil.guest import Guest
from hil.guestlib import tty_by_driver, wait_for
from hil.streams import ByteStream

#: Every byte value, so no control character (XON, ^C, CR) gets translated or eaten.
PAYLOAD = bytes(range(256)) * 2
REPLY = bytes(reversed(range(256)))


def read_exactly(port: object, count: int, timeout: float = 30.0) -> bytes:
    """Guest side: *count* bytes from an open pyserial port, or TimeoutError."""
    data = b""
    deadline = time.monotonic() + timeout
    while len(data) < count and time.monotonic() < deadline:
        data += port.read(count - len(data))  # type: ignore[attr-defined]
    if len(data) < count:
        raise TimeoutError(f"{len(data)} of {count} bytes: {data[:32]!r}")
    return data


def exchange(tty: str | None, driver: str | None, expect: int, reply: bytes) -> dict[str, object]:
    """In the guest: open *tty* (or the tty bound to *driver*) raw, notify "open",
    read *expect* bytes from the host, then send *reply*."""
    import serial

    path = tty or wait_for(lambda: tty_by_driver(driver or ""), f"tty of {driver}")
    with serial.Serial(path, 115200, timeout=0.5) as port:
        port.reset_input_buffer()
        notify("open")
        received = read_exactly(port, expect)
        port.write(reply)
        port.flush()
    return {"tty": path, "received": received}


def check_both_ways(guest: Guest, host_end: ByteStream, tty: str | None, driver: str | None) -> str:
    call = guest.submit(exchange, tty, driver, len(PAYLOAD), REPLY)
    assert call.wait_notice() == "open"
    host_end.write(PAYLOAD)
    assert host_end.read(len(REPLY), timeout=30) == REPLY
    result = call.result()
    assert result["received"] == PAYLOAD
    return str(result["tty"])


def test_usb_serial_ftdi_carries_every_byte_value_both_ways(
    guest: Guest, usb_serial: ByteStream
) -> None:
    tty = check_both_ways(guest, usb_serial, None, "ftdi_sio")
    assert tty.startswith("/dev/ttyUSB")


def test_uart_16550_carries_every_byte_value_both_ways(guest: Guest, uart: ByteStream) -> None:
    check_both_ways(guest, uart, "/dev/ttyS1", None)


def acm_both_ways(acm_tty: str, gadget_tty: str, payload: bytes, reply: bytes) -> dict[str, bytes]:
    """In the guest: cdc_acm (/dev/ttyACMn) <-> the gadget's own end (/dev/ttyGSn)."""
    import serial

    with (
        serial.Serial(acm_tty, 115200, timeout=0.5) as host_side,
        serial.Serial(gadget_tty, 115200, timeout=0.5) as device_side,
    ):
        host_side.write(payload)
        to_device = read_exactly(device_side, len(payload))
        device_side.write(reply)
        to_host = read_exactly(host_side, len(reply))
    return {"to_device": to_device, "to_host": to_host}


def test_acm_gadget_carries_every_byte_value_both_ways(guest: Guest, gadgets: Gadgets) -> None:
    acm = gadgets.acm("acm", pid=0x0A01)
    assert acm["tty"].startswith("/dev/ttyACM")
    result = guest.run(acm_both_ways, acm["tty"], acm["gadget_tty"], PAYLOAD, REPLY)
    assert result["to_device"] == PAYLOAD
    assert result["to_host"] == REPLY
