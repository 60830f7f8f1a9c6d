"""Keyboard-wedge scanners read through Linux evdev: ``driver = "evdev"``.

The device is bound by path (``/dev/input/by-id/…-event-kbd``), by USB
``vid:pid[:serial]`` or by a name pattern, opened and grabbed (``EVIOCGRAB``) so no
keystroke reaches another application; the grab is released on close. Event times are
switched to ``CLOCK_MONOTONIC`` (``EVIOCSCLOCKID``) so they compare with
``time.monotonic()``.

Every read drains *all* pending events in large ``read()`` calls before decoding: the
kernel keeps only 64 events per reader and a 20-character scan is 84-126 events, so a
reader that dawdles loses keys. Losses (``SYN_DROPPED``) are handled by the decoder:
the scan is discarded, never shortened, and the held keys are re-read (``EVIOCGKEY``).

A FIFO given as ``path`` is read as a stream of ``struct input_event`` records with no
ioctls (a recorded trace piped in; the conformance suite's device). python-evdev is
imported only when a real input device is opened.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import re
import select
import stat
import struct
import time
from collections import deque
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from scanfleet.daemon.core.config import DeviceConfigBase
from scanfleet.daemon.core.errors import DeviceGoneError, DriverError, DriverUnavailableError
from scanfleet.drivers import keymaps as km
from scanfleet.drivers.base import (
    DeviceInfo,
    Driver,
    DriverProblem,
    ProblemCallback,
    Read,
    UsbMatch,
    Waker,
)
from scanfleet.drivers.framing import Frame
from scanfleet.drivers.wedge.decoder import DecoderStats, EventDecoder, KeyDecoder
from scanfleet.drivers.wedge.trace import INPUT_EVENT, InputEvent

log = logging.getLogger(__name__)

GONE_ERRNOS = frozenset((errno.ENODEV, errno.EIO, errno.ENXIO, errno.ENOENT, errno.EBADF))
EVIOCSCLOCKID = 0x400445A0  # _IOW('E', 0xa0, int)
CLOCK_MONOTONIC = 1
READ_CHUNK = INPUT_EVENT.size * 256
SCANNER_NAME = re.compile(r"scan|barcode|honeywell|zebra|symbol|datalogic|newland|zkteco", re.I)


class WedgeDeviceConfig(DeviceConfigBase):
    """A keyboard-mode (wedge) scanner read through evdev, grabbed from everyone else."""

    driver: Literal["evdev"]
    path: str | None = None
    """Event device; prefer /dev/input/by-id/…-event-kbd (a FIFO replays a raw trace)."""
    usb: UsbMatch | None = None
    """Bind by USB ``vid:pid[:serial]`` instead of a path."""
    name_pattern: str | None = None
    """Bind the first keyboard whose input device name matches this regular expression."""
    layout: Literal["us", "uk", "de", "fr"] = "us"
    """The scanner's keyboard-country setting (which keys it presses for each character)."""
    terminator: Literal["enter", "tab", "enter_or_tab", "none"] = "enter"
    """Key that ends a scan (Enter includes keypad Enter); ``none``: inter-key silence does."""
    idle_timeout_ms: Annotated[int, Field(ge=5, le=5000)] = 100
    """Inter-key silence that ends a scan (``terminator = "none"``) or drops a fragment."""
    max_key_interval_ms: Annotated[int | None, Field(ge=1, le=1000)] = None
    """Reject key sequences with a slower gap between keys as human typing (shared keyboards)."""
    grab: bool = True
    """EVIOCGRAB: no keystroke of this device reaches any other application."""

    @model_validator(mode="after")
    def _one_binding(self) -> WedgeDeviceConfig:
        given = [x for x in (self.path, self.usb, self.name_pattern) if x is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of 'path', 'usb' or 'name_pattern'")
        return self


def _import_evdev() -> Any:
    try:
        import evdev
    except ImportError as err:
        raise DriverUnavailableError(
            "evdev", "evdev (pip install 'scanfleet[input]')", str(err)
        ) from err
    return evdev


def find_input_device(config: WedgeDeviceConfig) -> str | None:
    """The event node *config* names (path, ``usb`` vid:pid[:serial] or ``name_pattern``)."""
    if config.path is not None:
        return os.path.realpath(config.path) if os.path.exists(config.path) else None
    evdev = _import_evdev()
    pattern = re.compile(config.name_pattern) if config.name_pattern else None
    want: tuple[int, ...] = ()
    serial: str | None = None
    if config.usb:
        parts = config.usb.split(":", 2)
        want = (int(parts[0], 16), int(parts[1], 16))
        serial = parts[2] if len(parts) > 2 else None
    for node in sorted(evdev.list_devices()):
        try:
            dev = evdev.InputDevice(node)
        except OSError:
            continue  # vanished or no permission: not ours to bind
        try:
            keys = dev.capabilities().get(km.EV_KEY_TYPE, [])
            if km.KEY_ENTER not in keys:
                continue
            if want and (dev.info.vendor, dev.info.product) != want:
                continue
            if serial is not None and dev.uniq != serial:
                continue
            if pattern is not None and not pattern.search(dev.name):
                continue
            return str(node)
        finally:
            dev.close()
    return None


class EvdevWedgeDriver(Driver[WedgeDeviceConfig]):
    """The driver for ``driver = "evdev"`` devices."""

    driver_name = "evdev"
    interruptible = True

    def __init__(
        self, config: WedgeDeviceConfig, *, on_problem: ProblemCallback | None = None
    ) -> None:
        path = find_input_device(config)
        if path is None:
            raise DeviceGoneError(f"no input device matches {_describe(config)}")
        self.port = path
        self.vid_pid: str | None = None
        self._dev: Any = None
        self._raw = stat.S_ISFIFO(os.stat(path).st_mode)
        if self._raw:
            self._fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        else:
            self._fd = self._open_evdev(path, grab=config.grab)
        self.stats = DecoderStats()
        self._keys = KeyDecoder(
            km.layout(config.layout),
            terminator=config.terminator,
            idle_timeout=config.idle_timeout_ms / 1000,
            max_key_interval=(
                None if config.max_key_interval_ms is None else config.max_key_interval_ms / 1000
            ),
            stats=self.stats,
        )
        self._decoder = EventDecoder(self._keys, None if self._raw else self._held_keys)
        if not self._raw:
            self._keys.resync(self._held_keys(), caps=self._caps_led())
        self._reads: deque[Read] = deque()
        self._waker = Waker()
        super().__init__(config, on_problem=on_problem)
        log.info("bound input device %s (%s, layout %s)", path, self.vid_pid, config.layout)

    def _open_evdev(self, path: str, *, grab: bool) -> int:
        evdev = _import_evdev()
        try:
            dev = evdev.InputDevice(path)
        except OSError as err:
            raise DeviceGoneError(f"{path}: {err.strerror}") from err
        try:
            if grab:
                dev.grab()
            fcntl.ioctl(dev.fd, EVIOCSCLOCKID, struct.pack("i", CLOCK_MONOTONIC))
            os.set_blocking(dev.fd, False)
            self.vid_pid = f"{dev.info.vendor:04x}:{dev.info.product:04x}"
        except OSError as err:
            dev.close()
            if err.errno == errno.EBUSY:
                raise DriverError(f"{path}: grabbed by another process") from err
            raise DeviceGoneError(f"{path}: {err.strerror}") from err
        self._dev = dev
        fd: int = dev.fd
        return fd

    def _held_keys(self) -> list[int]:
        try:
            return list(self._dev.active_keys())
        except OSError as err:
            log.debug("%s: EVIOCGKEY failed: %s", self.port, err)
            return []

    def _caps_led(self) -> bool:
        try:
            return 1 in self._dev.leds()  # LED_CAPSL
        except OSError:
            return False

    # -- reading ---------------------------------------------------------------------

    def _read(self, timeout: float | None) -> Read | None:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if self._reads:
                return self._reads.popleft()
            now = time.monotonic()
            limits = [t - now for t in (deadline, self._keys.deadline()) if t is not None]
            wait = max(0.0, min(limits)) if limits else None
            try:
                ready, _, _ = select.select([self._fd, self._waker.fileno()], [], [], wait)
            except (OSError, ValueError) as err:
                raise DeviceGoneError(f"{self.port}: select failed: {err}") from err
            if self._waker.fileno() in ready:
                self._waker.clear()
                return None
            if ready:
                self._drain()
                continue
            # Nothing pending: only now is a silence real (never judge it before draining).
            now = time.monotonic()
            self._handle(self._keys.poll(now))
            if not self._reads and deadline is not None and now >= deadline:
                return None

    def _drain(self) -> None:
        """Read every pending event now, then decode them."""
        for event in self._pending():
            self._handle(self._decoder.event(event.type, event.code, event.value, event.t))

    def _pending(self) -> list[InputEvent]:
        data = bytearray()
        while True:
            try:
                chunk = os.read(self._fd, READ_CHUNK)
            except BlockingIOError:
                break
            except OSError as err:
                if err.errno in GONE_ERRNOS:
                    raise DeviceGoneError(f"{self.port}: {err.strerror}") from err
                raise DriverError(f"{self.port}: read failed: {err}") from err
            if not chunk:
                if data:
                    break
                raise DeviceGoneError(f"{self.port}: end of event stream")
            data += chunk
            if len(chunk) < READ_CHUNK:
                break
        arrived = time.monotonic()
        # Kernel stamps are CLOCK_MONOTONIC after EVIOCSCLOCKID and never in the
        # future; anything later (realtime stamps if the ioctl failed) is clamped.
        return [
            InputEvent(min(e.t, arrived), e.type, e.code, e.value)
            for e in InputEvent.unpack_all(bytes(data))
        ]

    def read_events(self, timeout: float | None) -> list[InputEvent]:
        """Raw events as they arrive, undecoded (``scanfleet record``); [] on timeout."""
        if self.closed:
            raise ValueError("EvdevWedgeDriver is closed")
        try:
            ready, _, _ = select.select([self._fd], [], [], timeout)
        except (OSError, ValueError) as err:
            raise DeviceGoneError(f"{self.port}: select failed: {err}") from err
        return self._pending() if ready else []

    def _handle(self, events: list[Frame | DriverProblem]) -> None:
        for item in events:
            if isinstance(item, Frame):
                self._reads.append(
                    Read(item.data, item.t, datetime.now(UTC), port=self.port, vid_pid=self.vid_pid)
                )
            else:
                self.report(item)

    # -- lifecycle -------------------------------------------------------------------

    def interrupt(self) -> None:
        """End a read blocked in another thread: it returns None."""
        self._waker.set()

    def _close(self) -> None:
        self._waker.close()
        if self._dev is None:
            os.close(self._fd)
            return
        try:
            if self.config.grab:
                self._dev.ungrab()
        except OSError as err:
            # The device is gone or the grab went with it; closing releases it anyway.
            log.debug("%s: ungrab: %s", self.port, err)
        finally:
            self._dev.close()

    def fileno(self) -> int | None:
        """The event device's file descriptor."""
        return self._fd

    @classmethod
    def detect(cls) -> list[DeviceInfo]:
        """Input devices with keys (keyboards and wedge scanners)."""
        try:
            evdev = _import_evdev()
        except DriverUnavailableError:
            return []
        found = []
        for node in sorted(evdev.list_devices()):
            try:
                dev = evdev.InputDevice(node)
            except OSError:
                continue
            try:
                if km.KEY_ENTER not in dev.capabilities().get(km.EV_KEY_TYPE, []):
                    continue
                scanner = bool(SCANNER_NAME.search(dev.name))
                found.append(
                    DeviceInfo(
                        driver="evdev",
                        path=str(node),
                        links=_by_id_links(str(node)),
                        vid_pid=f"{dev.info.vendor:04x}:{dev.info.product:04x}",
                        serial=dev.uniq or None,
                        name=dev.name,
                        looks_like_scanner=scanner,
                        reason="name looks like a scanner" if scanner else "a keyboard",
                    )
                )
            finally:
                dev.close()
        return found


def _by_id_links(node: str) -> tuple[str, ...]:
    base = "/dev/input/by-id"
    try:
        names = os.listdir(base)
    except OSError:
        return ()
    return tuple(
        os.path.join(base, n)
        for n in sorted(names)
        if os.path.realpath(os.path.join(base, n)) == node
    )


def _describe(config: WedgeDeviceConfig) -> str:
    return config.path or config.usb or f"name /{config.name_pattern}/"
