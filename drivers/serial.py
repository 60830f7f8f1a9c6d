"""Serial scanners (RS-232, USB-COM, USB-serial bridges) through pyserial.

The port is bound by a stable path (``/dev/serial/by-id/…``) or by USB
``vid:pid[:serial]``. Bytes go through a framer (:mod:`scanfleet.drivers.framing`,
:mod:`scanfleet.drivers.ssi`); reads block in ``select`` and never spin. An unplugged
device shows up as EIO/ENXIO, end of file or a vanished path, and becomes
:class:`~scanfleet.daemon.core.errors.DeviceGoneError`; the daemon's device worker then
closes the driver and reopens it with backoff.
"""

from __future__ import annotations

import collections
import errno
import logging
import os
import re
import select
import threading
import time
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from scanfleet.daemon.core.config import DeviceConfigBase
from scanfleet.daemon.core.errors import DeviceGoneError, DriverError, DriverUnavailableError
from scanfleet.drivers import discovery, ssi
from scanfleet.drivers.base import (
    DeviceInfo,
    Driver,
    DriverProblem,
    ProblemCallback,
    Read,
    Signal,
    UsbMatch,
    Waker,
)
from scanfleet.drivers.feedback import HONEYWELL_MENU_PREFIX, FeedbackPreset, preset_for
from scanfleet.drivers.framing import Event, Frame, Framer, Reply
from scanfleet.drivers.framing_presets import make_framer

log = logging.getLogger(__name__)

GONE_ERRNOS = frozenset((errno.EIO, errno.ENXIO, errno.ENODEV, errno.ENOENT, errno.EBADF))
BIND_REPLY_WAIT = 0.5
"""Seconds to collect a Honeywell menu reply after a bind command."""
_HONEYWELL_MENU_REPLY = re.compile(rb"(?:\x16M\r)?[A-Z0-9]{3,}\d*([\x06\x05\x15])[.!]")
_PARITY = {"none": "N", "even": "E", "odd": "O"}
LATE_REPLY_WINDOW = 30.0
"""Seconds after bind during which a late Honeywell menu reply is still recognised."""


def _menu_replies(commands: tuple[bytes, ...]) -> tuple[bytes, ...]:
    """Every reply a Honeywell scanner may give to *commands* (echo, status, terminator)."""
    replies = []
    for command in commands:
        text = command.removeprefix(HONEYWELL_MENU_PREFIX).rstrip(b"!.")
        for status in (b"\x06", b"\x05", b"\x15"):
            for end in (b"!", b"."):
                replies += [text + status + end, b"\x16M\r" + text + status + end]
    return tuple(replies)


HexBytes = Annotated[str | None, Field(pattern=r"^([0-9a-fA-F]{2})+$")]


class SerialDeviceConfig(DeviceConfigBase):
    """A serial scanner: RS-232, USB-COM (cdc_acm) or a USB-serial bridge."""

    driver: Literal["serial"]
    port: str | None = None
    """Device path; prefer a stable one under /dev/serial/by-id/ or /dev/serial/by-path/."""
    usb: UsbMatch | None = None
    """Bind by USB ``vid:pid[:serial]`` instead of a path."""
    baudrate: Literal[1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200, 230400] = 9600
    bytesize: Literal[7, 8] = 8
    parity: Literal["none", "even", "odd"] = "none"
    stopbits: Literal[1, 2] = 1
    framing: Literal["cr", "lf", "crlf", "stx_etx", "honeywell_packet", "ssi", "suffix", "idle"] = (
        "cr"
    )
    suffix_hex: HexBytes = None
    """Terminator bytes for ``framing = "suffix"``."""
    idle_timeout_ms: Annotated[int, Field(ge=5, le=5000)] = 50
    """Inter-byte silence that ends a frame (``framing = "idle"``, and a safety net otherwise)."""
    aim_prefix: bool = False
    max_frame: Annotated[int, Field(ge=16, le=4096)] = 4096
    feedback: Literal["none", "honeywell", "ssi", "custom"] = "none"
    good_read_hex: HexBytes = None
    bad_read_hex: HexBytes = None
    silence_scanner_beep: bool = True
    """At bind time send the preset's command that turns the scanner's own decode beep off."""

    @model_validator(mode="after")
    def _cross_field_rules(self) -> SerialDeviceConfig:
        if (self.port is None) == (self.usb is None):
            raise ValueError("give exactly one of 'port' or 'usb'")
        if self.framing == "suffix" and not self.suffix_hex:
            raise ValueError("framing 'suffix' needs 'suffix_hex'")
        if self.feedback == "custom" and not (self.good_read_hex or self.bad_read_hex):
            raise ValueError("feedback 'custom' needs 'good_read_hex' and/or 'bad_read_hex'")
        return self


def _import_pyserial() -> Any:
    # Imported when a port is opened, not when the config model is: a missing pyserial
    # makes this driver unavailable, never the configuration unreadable.
    try:
        import serial as pyserial
    except ImportError as err:  # pragma: no cover - pyserial is a core dependency
        raise DriverUnavailableError("serial", "pyserial", str(err)) from err
    return pyserial


class SerialDriver(Driver[SerialDeviceConfig]):
    """The driver for ``driver = "serial"`` devices."""

    driver_name = "serial"
    interruptible = True

    def __init__(
        self, config: SerialDeviceConfig, *, on_problem: ProblemCallback | None = None
    ) -> None:
        pyserial = self._pyserial = _import_pyserial()
        port = config.port
        if port is None and config.usb is not None:  # the model requires one of the two
            port = discovery.resolve_usb(config.usb)
        if port is None:
            raise DeviceGoneError(f"no serial device with USB id {config.usb}")
        if not os.path.exists(port):
            raise DeviceGoneError(f"{port}: no such device")
        self.port = port
        try:
            self._ser = pyserial.Serial(
                port=port,
                baudrate=config.baudrate,
                bytesize=config.bytesize,
                parity=_PARITY[config.parity],
                stopbits=config.stopbits,
                timeout=0,
                exclusive=True,
            )
        except pyserial.SerialException as err:
            code = getattr(err, "errno", None)
            if code is None or code in GONE_ERRNOS:
                raise DeviceGoneError(f"{port}: {err}") from err
            raise DriverError(f"{port}: {err}") from err
        try:
            self._fd: int = self._ser.fileno()
            self.vid_pid = discovery.tty_usb_attributes(port).get("vid_pid")
            self._framer: Framer = make_framer(
                config.framing,
                max_frame=config.max_frame,
                idle_timeout=config.idle_timeout_ms / 1000,
                suffix=bytes.fromhex(config.suffix_hex) if config.suffix_hex else None,
            )
            self._preset: FeedbackPreset = preset_for(config)
        except BaseException:
            self._ser.close()
            raise
        self._lock = threading.Lock()  # the framer: reader thread and signal() callers
        self._wlock = threading.Lock()  # writes to the port
        self._reads: collections.deque[Read] = collections.deque()
        self._last_presence_check = 0.0
        self._late_replies: tuple[bytes, ...] = ()
        self._late_buf = b""
        self._late_until = 0.0
        self._waker = Waker()
        super().__init__(config, on_problem=on_problem)
        try:
            self._bind()
        except BaseException:
            self.close()
            raise
        log.info("bound serial device %s (%s, framing %s)", port, self.vid_pid, config.framing)

    # -- bind ------------------------------------------------------------------------

    def _bind(self) -> None:
        framer = self._framer
        if isinstance(framer, ssi.SsiFramer):
            # Decode data must arrive in packets for ACK/NAK framing (the factory
            # default on Zebra SSI hosts is raw).
            commands = [ssi.param_send((ssi.PARAM_DECODE_DATA_FORMAT, 1))]
            if self._preset.ssi_packets:
                commands.extend(self._preset.bind)
            for packet in commands:
                with self._lock:
                    out = framer.command(packet, time.monotonic())
                if out:
                    self._write(out)
            if self._preset.bind and not self._preset.ssi_packets:
                self._write_and_collect_reply(self._preset.bind)
            return
        if self._preset.ssi_packets:
            log.warning(
                "%s: SSI feedback without SSI framing: commands go unacknowledged", self.port
            )
            for packet in self._preset.bind:
                self._write(packet)
            return
        if self._preset.bind:
            self._write_and_collect_reply(self._preset.bind)

    def _write_and_collect_reply(self, commands: tuple[bytes, ...]) -> None:
        """Send Honeywell menu commands and keep their replies out of the scan stream."""
        for command in commands:
            self._write(command)
        end = time.monotonic() + BIND_REPLY_WAIT
        got = bytearray()
        while (remaining := end - time.monotonic()) > 0:
            ready, _, _ = select.select([self._fd], [], [], remaining)
            if not ready:
                break
            chunk = self._os_read()
            got += chunk
            if _HONEYWELL_MENU_REPLY.search(got):
                break
        match = _HONEYWELL_MENU_REPLY.search(got)
        if match:
            status = {0x06: "accepted", 0x05: "unknown command", 0x15: "invalid"}[match.group(1)[0]]
            log.info("%s: scanner beep-off command %s", self.port, status)
            del got[match.start() : match.end()]
        else:
            log.warning(
                "%s: no reply to the beep-off command yet; the scanner may still beep", self.port
            )
            # A late reply must not be glued to the first scan: expect it for a while.
            self._late_replies = _menu_replies(commands)
            self._late_until = time.monotonic() + LATE_REPLY_WINDOW
        if got:
            with self._lock:
                events = self._framer.feed(bytes(got), time.monotonic())
            self._handle(events)

    # -- reading ---------------------------------------------------------------------

    def _read(self, timeout: float | None) -> Read | None:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if self._reads:
                return self._reads.popleft()
            now = time.monotonic()
            with self._lock:
                events = self._framer.poll(now)
                framer_deadline = self._framer.deadline()
            self._handle(events)
            if self._reads:
                continue
            if deadline is not None and now >= deadline:
                return None
            limits = [t - now for t in (deadline, framer_deadline) if t is not None]
            wait = max(0.0, min(limits)) if limits else None
            try:
                ready, _, _ = select.select([self._fd, self._waker.fileno()], [], [], wait)
            except (OSError, ValueError) as err:
                self._gone(f"select failed: {err}", err)
            if self._waker.fileno() in ready:
                self._waker.clear()
                return None
            if not ready:
                self._check_present(now)
                continue
            data = self._strip_late_reply(self._os_read())
            if not data:
                continue
            with self._lock:
                events = self._framer.feed(data, time.monotonic())
            self._handle(events)

    def _strip_late_reply(self, data: bytes) -> bytes:
        """Remove a Honeywell menu reply that arrives after the bind wait gave up."""
        if not self._late_replies:
            return data
        buf = self._late_buf + data
        if time.monotonic() > self._late_until:
            self._late_replies, self._late_buf = (), b""
            return buf
        for reply in self._late_replies:
            if buf.startswith(reply):
                log.info("%s: scanner answered the beep-off command (late)", self.port)
                self._late_replies, self._late_buf = (), b""
                return buf[len(reply) :]
        if any(reply.startswith(buf) for reply in self._late_replies):
            self._late_buf = buf  # could still become the reply: wait for more bytes
            return b""
        self._late_replies, self._late_buf = (), b""
        return buf

    def _os_read(self) -> bytes:
        try:
            data = os.read(self._fd, 4096)
        except OSError as err:
            if err.errno in GONE_ERRNOS:
                self._gone(f"read failed: {err.strerror}", err)
            raise DriverError(f"{self.port}: read failed: {err}") from err
        if not data:
            # A readable fd with nothing to read: the other end hung up.
            self._gone("hung up")
        return data

    def _check_present(self, now: float) -> None:
        if now - self._last_presence_check < 1.0:
            return
        self._last_presence_check = now
        if not os.path.exists(self.port):
            self._gone("device node disappeared")

    def _gone(self, why: str, err: BaseException | None = None) -> None:
        with self._lock:
            problems = self._framer.flush()
        for item in problems:
            self.report(item)
        raise DeviceGoneError(f"{self.port}: {why}") from err

    def _handle(self, events: list[Event]) -> None:
        for event in events:
            if isinstance(event, Frame):
                self._reads.append(
                    Read(
                        event.data,
                        event.t,
                        datetime.now(UTC),
                        aim=event.aim,
                        port=self.port,
                        vid_pid=self.vid_pid,
                    )
                )
            elif isinstance(event, Reply):
                self._write(event.data)
            elif isinstance(event, DriverProblem):
                self.report(event)

    # -- writing ---------------------------------------------------------------------

    def _write(self, data: bytes) -> None:
        with self._wlock:
            view = memoryview(data)
            while view:
                try:
                    n = os.write(self._fd, view)
                except BlockingIOError:
                    select.select([], [self._fd], [], 1.0)
                    continue
                except OSError as err:
                    if err.errno in GONE_ERRNOS:
                        raise DeviceGoneError(f"{self.port}: write failed: {err.strerror}") from err
                    raise DriverError(f"{self.port}: write failed: {err}") from err
                view = view[n:]

    def _signal(self, signal: Signal) -> None:
        command = self._preset.command(signal)
        if command is None:
            return
        framer = self._framer
        if self._preset.ssi_packets and isinstance(framer, ssi.SsiFramer):
            with self._lock:
                command = framer.command(command, time.monotonic())
            if not command:
                return  # queued behind a command in flight; sent when that one is ACKed
        self._write(command)

    # -- lifecycle -------------------------------------------------------------------

    def interrupt(self) -> None:
        """End a read blocked in another thread: it returns None."""
        self._waker.set()

    def _close(self) -> None:
        self._waker.close()
        try:
            self._ser.close()
        except (OSError, self._pyserial.SerialException) as err:
            # Closing a port whose device is already gone fails; it is closed either way.
            log.debug("%s: close: %s", self.port, err)

    def fileno(self) -> int | None:
        """The tty's file descriptor."""
        return self._fd

    @classmethod
    def detect(cls) -> list[DeviceInfo]:
        """USB-serial, USB-COM and UART ttys (see :mod:`scanfleet.drivers.discovery`)."""
        return discovery.serial_devices()
