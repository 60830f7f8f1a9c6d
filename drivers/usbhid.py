"""USB scanners read directly through libusb (pyusb): ``driver = "usbhid"``.

Two report formats:

``keyboard``
    8-byte boot keyboard reports (byte 0 modifier bits, bit *i* = usage 0xE0 + *i*;
    byte 1 reserved; bytes 2-7 up to six pressed usages). Reports are turned into key
    presses and releases and decoded by the same :class:`KeyDecoder` and layout tables
    as evdev (:mod:`scanfleet.drivers.keymaps`).
``hidpos``
    HID POS (usage page 0x8C) scanned-data reports, 64 bytes: report id 2, data length,
    AIM id ``]xx``, data, Honeywell code id at 61, continuation flag at 63 (non-zero:
    more reports follow). Honeywell scanners need feature report ``FE 01`` to enable the
    mode and take serial commands as output reports ``FD <len> <cmd>`` (beep
    ``FD 03 16 07 0D``).

The kernel driver is detached and the interface claimed at open; stale reports are
drained; the interrupt endpoint is read with timeouts; on close the interface is
released and the kernel driver re-attached, even after errors.
"""

from __future__ import annotations

import errno
import json
import logging
import time
from collections import deque
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field

from scanfleet.daemon.core.config import DeviceConfigBase
from scanfleet.daemon.core.errors import DeviceGoneError, DriverUnavailableError
from scanfleet.drivers import keymaps as km
from scanfleet.drivers.base import (
    Driver,
    DriverProblem,
    ProblemCallback,
    Read,
    Signal,
    UsbMatch,
)
from scanfleet.drivers.framing import Frame
from scanfleet.drivers.wedge.decoder import KEY_DOWN, KEY_UP, DecoderStats, KeyDecoder

log = logging.getLogger(__name__)

HIDPOS_REPORT_ID = 0x02
HIDPOS_DATA_MAX = 56
HONEYWELL_ENABLE = bytes((0xFE, 0x01))
HONEYWELL_BEEP = bytes((0xFD, 0x03, 0x16, 0x07, 0x0D))
HID_SET_REPORT = 0x09
HID_REPORT_OUTPUT, HID_REPORT_FEATURE = 2, 3
DRAIN_TIMEOUT_MS = 20
GONE_ERRNOS = frozenset((errno.ENODEV, errno.EIO, errno.ENOENT, errno.EPIPE, errno.ESHUTDOWN))


class BootKeyboard:
    """Successive boot reports → (key code, down/up) transitions, all modifier bits."""

    def __init__(self) -> None:
        self.modifiers = 0
        self.keys: tuple[int, ...] = ()

    def report(self, data: bytes) -> list[tuple[int, int]]:
        """Transitions from the previous report to *data* (8 bytes)."""
        if len(data) < 3:
            return []
        usages = tuple(u for u in data[2:8] if u > 3)
        if any(u == 1 for u in data[2:8]):
            return []  # ErrorRollOver: too many keys; the state is unknown, keep ours
        out: list[tuple[int, int]] = []
        for usage in self.keys:
            if usage not in usages and usage in km.HID_USAGE_TO_KEY:
                out.append((km.HID_USAGE_TO_KEY[usage], KEY_UP))
        mods = data[0]
        for bit, code in enumerate(km.HID_MODIFIER_KEYS):
            was, now = self.modifiers >> bit & 1, mods >> bit & 1
            if was != now:
                out.append((code, KEY_DOWN if now else KEY_UP))
        for usage in usages:
            if usage not in self.keys:
                # An unknown usage still counts as a key: the decoder reports it as garbage.
                out.append((km.HID_USAGE_TO_KEY.get(usage, 0x300 + usage), KEY_DOWN))
        self.modifiers, self.keys = mods, usages
        return out


class HidPosAssembler:
    """HID POS scanned-data reports → one frame per scan (continuations joined)."""

    def __init__(self) -> None:
        self._data = bytearray()
        self._aim: str | None = None

    def report(self, data: bytes, t: float) -> list[Frame | DriverProblem]:
        """Add one input report."""
        if not data or data[0] != HIDPOS_REPORT_ID:
            return []  # another report id (status, trigger): not scan data
        if len(data) < 5:
            return [DriverProblem("garbage", "short HID POS report", data)]
        length = data[1]
        offset = 2
        if data[2] != 0x5D and len(data) > 3 and data[3] == 0x5D:
            offset = 3  # some scanners put a byte before the AIM id
        aim = None
        if data[offset] == 0x5D:
            aim = data[offset : offset + 3].decode("ascii", "replace")
            offset += 3
        if length > HIDPOS_DATA_MAX or offset + length > len(data):
            self._reset()
            return [DriverProblem("garbage", f"HID POS length {length} does not fit", data[:64])]
        if not self._data:
            self._aim = aim
        self._data += data[offset : offset + length]
        more = len(data) >= 64 and data[63] != 0
        if more:
            return []
        payload, first_aim = bytes(self._data), self._aim
        self._reset()
        if first_aim == "]Z6":
            log.info("scanner command reply: %r", payload)
            return []
        return [Frame(payload, t, aim=first_aim)]

    def _reset(self) -> None:
        self._data.clear()
        self._aim = None


class ReportDecoder:
    """Either format, reports in, frames and problems out (tests, replay, the driver)."""

    def __init__(
        self,
        mode: str,
        layout: km.Layout,
        *,
        terminator: str = "enter",
        idle_timeout: float = 0.1,
        stats: DecoderStats | None = None,
    ) -> None:
        self.mode = mode
        self.keys = KeyDecoder(
            layout, terminator=terminator, idle_timeout=idle_timeout, stats=stats
        )
        self._boot = BootKeyboard()
        self._pos = HidPosAssembler()

    def report(self, data: bytes, t: float) -> list[Frame | DriverProblem]:
        """Decode one input report read at monotonic time *t*."""
        if self.mode == "hidpos":
            return self._pos.report(data, t)
        if len(data) == 9:
            data = data[1:]  # a report id in front of a boot-format report
        out: list[Frame | DriverProblem] = self.keys.poll(t)
        for code, value in self._boot.report(data):
            out += self.keys.key(code, value, t)
        return out

    def poll(self, now: float) -> list[Frame | DriverProblem]:
        """Inter-key silence (keyboard mode)."""
        return self.keys.poll(now) if self.mode == "keyboard" else []

    def deadline(self) -> float | None:
        """When :meth:`poll` has work to do."""
        return self.keys.deadline() if self.mode == "keyboard" else None


def boot_reports(
    layout: km.Layout, text: str, terminator: int | None = km.KEY_ENTER
) -> list[bytes]:
    """The boot reports a keyboard-mode scanner sends for *text* (press, release per key).

    :raises ValueError: a character the layout cannot type.
    """
    keys = km.key_sequence(layout, text, terminator)
    reports = []
    for mods, code in keys:
        bits = sum(1 << km.HID_MODIFIER_KEYS.index(m) for m in mods)
        reports.append(bytes((bits, 0, km.KEY_TO_HID_USAGE[code], 0, 0, 0, 0, 0)))
        reports.append(bytes(8))
    return reports


def hidpos_reports(data: bytes, aim: str, code_id: int = 0x3F) -> list[bytes]:
    """64-byte HID POS scanned-data reports carrying *data* (Honeywell layout)."""
    chunks = [data[i : i + HIDPOS_DATA_MAX] for i in range(0, len(data), HIDPOS_DATA_MAX)] or [b""]
    reports = []
    for i, chunk in enumerate(chunks):
        body = bytes((HIDPOS_REPORT_ID, len(chunk))) + aim.encode("ascii") + chunk
        more = 1 if i < len(chunks) - 1 else 0
        reports.append(body.ljust(61, b"\0") + bytes((code_id, 0, more)))
    return reports


def read_trace(path: Path) -> tuple[dict[str, Any], list[tuple[float, bytes]]]:
    """Header and reports of a usbhid trace (``{"trace": "usbhid", "mode": …}`` + ``t``/``hex``)."""
    header: dict[str, Any] = {}
    reports: list[tuple[float, bytes]] = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        record = json.loads(line)
        if "trace" in record:
            if record["trace"] != "usbhid":
                raise ValueError(f"{path}: a {record['trace']!r} trace, not usbhid")
            header = record
            continue
        reports.append((float(record["t"]), bytes.fromhex(record["hex"])))
    return header, reports


def write_trace(path: Path, header: dict[str, Any], reports: Iterable[tuple[float, bytes]]) -> None:
    """Write a usbhid trace file."""
    lines = [json.dumps({"trace": "usbhid", **header}, ensure_ascii=False)]
    lines += [json.dumps({"t": round(t, 6), "hex": data.hex()}) for t, data in reports]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def decode_trace(path: Path) -> list[Frame | DriverProblem]:
    """Run a usbhid trace through the real decoder, honouring the silences in it."""
    header, reports = read_trace(path)
    decoder = ReportDecoder(
        header.get("mode", "keyboard"),
        km.layout(header.get("layout", "us")),
        terminator=header.get("terminator", "enter"),
    )
    out: list[Frame | DriverProblem] = []
    last = 0.0
    for t, data in reports:
        out += decoder.poll(t)
        out += decoder.report(data, t)
        last = t
    out += decoder.poll(last + 10.0)
    return out


def replay(channel: str, trace: Path) -> int:
    """Decode a usbhid trace and inject its scans (and problems) into a virtual channel."""
    from scanfleet.drivers import virtual

    count = 0
    for item in decode_trace(trace):
        if isinstance(item, Frame):
            virtual.inject(channel, item.data, aim=item.aim)
            count += 1
        else:
            virtual.inject_problem(channel, item)
    return count


class UsbHidDeviceConfig(DeviceConfigBase):
    """A USB scanner read directly through libusb (pyusb): boot keyboard or HID POS."""

    driver: Literal["usbhid"]
    usb: UsbMatch
    """``vid:pid[:serial]`` of the scanner."""
    mode: Literal["keyboard", "hidpos"] = "keyboard"
    """``keyboard``: 8-byte boot reports decoded through ``layout``; ``hidpos``: usage page
    0x8C scanned-data reports (report id 2) with AIM ids."""
    interface: Annotated[int, Field(ge=0, le=15)] = 0
    layout: Literal["us", "uk", "de", "fr"] = "us"
    terminator: Literal["enter", "tab", "enter_or_tab", "none"] = "enter"
    idle_timeout_ms: Annotated[int, Field(ge=5, le=5000)] = 100
    feedback: Literal["none", "honeywell"] = "none"
    """``honeywell``: enable HID POS with feature report FE 01 and beep with ``FD`` reports."""


class UsbHidDriver(Driver[UsbHidDeviceConfig]):
    """The driver for ``driver = "usbhid"`` devices."""

    driver_name = "usbhid"

    def __init__(
        self, config: UsbHidDeviceConfig, *, on_problem: ProblemCallback | None = None
    ) -> None:
        try:
            import usb.core
            import usb.util
        except ImportError as err:
            raise DriverUnavailableError(
                "usbhid", "pyusb (pip install 'scanfleet[usb]')", str(err)
            ) from err
        self._usb = usb
        parts = config.usb.split(":", 2)
        self.vid_pid = f"{parts[0]}:{parts[1]}"
        self.port = f"usb:{config.usb}"
        self._intf: int = config.interface
        self._detached = False
        self._claimed = False
        custom = None
        if len(parts) > 2:
            serial = parts[2]
            custom = lambda d: _serial_of(d) == serial  # noqa: E731 - one-line predicate
        try:
            dev = usb.core.find(
                idVendor=int(parts[0], 16), idProduct=int(parts[1], 16), custom_match=custom
            )
        except usb.core.NoBackendError as err:
            raise DriverUnavailableError("usbhid", "libusb", str(err)) from err
        if dev is None:
            raise DeviceGoneError(f"no USB device {config.usb}")
        self._dev = dev
        self.stats = DecoderStats()
        self._decoder = ReportDecoder(
            config.mode,
            km.layout(config.layout),
            terminator=config.terminator,
            idle_timeout=config.idle_timeout_ms / 1000,
            stats=self.stats,
        )
        self._reads: deque[Read] = deque()
        try:
            self._claim(config)
        except BaseException:
            self._release()
            raise
        super().__init__(config, on_problem=on_problem)
        log.info("claimed USB device %s (%s mode)", config.usb, config.mode)

    def _claim(self, config: UsbHidDeviceConfig) -> None:
        usb = self._usb
        dev = self._dev
        try:
            if dev.is_kernel_driver_active(self._intf):
                dev.detach_kernel_driver(self._intf)
                self._detached = True
            try:
                active = dev.get_active_configuration()
            except usb.core.USBError:
                active = None
            if active is None:
                # Only an unconfigured device is configured: on a configured one libusb's
                # set_configuration is a lightweight reset.
                dev.set_configuration()
                active = dev.get_active_configuration()
            intf = active[(self._intf, 0)]
            usb.util.claim_interface(dev, self._intf)
            self._claimed = True
            self._ep_in = usb.util.find_descriptor(
                intf, custom_match=lambda e: _direction(usb, e) == usb.util.ENDPOINT_IN
            )
            self._ep_out = usb.util.find_descriptor(
                intf, custom_match=lambda e: _direction(usb, e) == usb.util.ENDPOINT_OUT
            )
            if self._ep_in is None:
                raise DeviceGoneError(f"{self.port}: interface {self._intf} has no IN endpoint")
            if config.feedback == "honeywell":
                self._enable_hidpos()
            self._drain_stale()
        except usb.core.USBError as err:
            raise DeviceGoneError(f"{self.port}: cannot claim: {err}") from err

    def _enable_hidpos(self) -> None:
        try:
            self._set_report(HID_REPORT_FEATURE, HONEYWELL_ENABLE)
        except self._usb.core.USBError as err:
            # Scanners already in HID POS mode (or not Honeywell) may stall the request;
            # the scan data decides, so this is worth a warning, not a failed open.
            log.warning("%s: HID POS enable (feature report FE 01) refused: %s", self.port, err)

    def _drain_stale(self) -> None:
        """Reports queued before we claimed the device belong to nobody's scan."""
        size = self._ep_in.wMaxPacketSize
        for _ in range(256):
            try:
                self._ep_in.read(size, timeout=DRAIN_TIMEOUT_MS)
            except self._usb.core.USBTimeoutError:
                return

    def _read(self, timeout: float | None) -> Read | None:
        usb = self._usb
        deadline = None if timeout is None else time.monotonic() + timeout
        size = self._ep_in.wMaxPacketSize
        while True:
            if self._reads:
                return self._reads.popleft()
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                return None
            limits = [t - now for t in (deadline, self._decoder.deadline()) if t is not None]
            # Bounded waits keep close() from another thread prompt (libusb has no wakeup fd).
            wait = min([1.0, *limits])
            try:
                data = bytes(self._ep_in.read(size, timeout=max(1, round(wait * 1000))))
            except usb.core.USBTimeoutError:
                # Nothing pending: only now is a silence real.
                self._handle(self._decoder.poll(time.monotonic()))
                continue
            except usb.core.USBError as err:
                if err.errno in GONE_ERRNOS or err.errno is None:
                    raise DeviceGoneError(f"{self.port}: {err}") from err
                raise
            if data:  # a zero-length packet follows a full-size report
                self._handle(self._decoder.report(data, time.monotonic()))

    def read_report(self, timeout: float) -> bytes | None:
        """One raw input report, undecoded (``scanfleet record``); None on timeout."""
        if self.closed:
            raise ValueError("UsbHidDriver is closed")
        usb = self._usb
        try:
            data = bytes(
                self._ep_in.read(self._ep_in.wMaxPacketSize, timeout=max(1, round(timeout * 1000)))
            )
        except usb.core.USBTimeoutError:
            return None
        except usb.core.USBError as err:
            raise DeviceGoneError(f"{self.port}: {err}") from err
        return data or None

    def _handle(self, events: list[Frame | DriverProblem]) -> None:
        for item in events:
            if isinstance(item, Frame):
                self._reads.append(
                    Read(
                        item.data,
                        item.t,
                        datetime.now(UTC),
                        aim=item.aim,
                        port=self.port,
                        vid_pid=self.vid_pid,
                    )
                )
            else:
                self.report(item)

    def _set_report(self, kind: int, report: bytes) -> None:
        self._dev.ctrl_transfer(
            0x21, HID_SET_REPORT, (kind << 8) | report[0], self._intf, report, timeout=1000
        )

    def _signal(self, signal: Signal) -> None:
        if self.config.feedback != "honeywell":
            return
        # Honeywell's serial command set has one beep; a bad read beeps twice.
        for _ in range(1 if signal is Signal.GOOD_READ else 2):
            self.beep()

    def beep(self) -> None:
        """Send the Honeywell beep output report (``FD 03 16 07 0D``)."""
        try:
            if self._ep_out is not None:
                self._ep_out.write(
                    HONEYWELL_BEEP.ljust(self._ep_out.wMaxPacketSize, b"\0"), timeout=1000
                )
            else:
                self._set_report(HID_REPORT_OUTPUT, HONEYWELL_BEEP)
        except self._usb.core.USBError as err:
            log.warning("%s: beep failed: %s", self.port, err)

    def _close(self) -> None:
        self._release()

    def _release(self) -> None:
        usb = self._usb
        try:
            if self._claimed:
                usb.util.release_interface(self._dev, self._intf)
        except usb.core.USBError as err:
            log.debug("%s: release: %s", self.port, err)
        self._claimed = False
        try:
            if self._detached:
                self._dev.attach_kernel_driver(self._intf)
        except usb.core.USBError as err:
            log.debug("%s: re-attach kernel driver: %s", self.port, err)
        self._detached = False
        usb.util.dispose_resources(self._dev)


def _direction(usb: Any, endpoint: Any) -> int:
    direction: int = usb.util.endpoint_direction(endpoint.bEndpointAddress)
    return direction


def _serial_of(dev: Any) -> str | None:
    try:
        serial: str | None = dev.serial_number
    except (ValueError, OSError):
        return None  # no permission to read string descriptors, or none
    return serial
