"""The Driver interface every device family implements, and the records it produces.

Modelled on python-can's ``BusABC``: the constructor opens the device, the public
:meth:`Driver.read` wraps a private ``_read``, :meth:`Driver.close` is idempotent and
the class is a context manager. A driver knows its wire protocol and nothing else: no
journal, no MQTT, no business rules.

Each driver module also owns its configuration: a
:class:`~scanfleet.daemon.core.config.DeviceConfigBase` subclass whose ``driver`` field is the
name ``[[devices]]`` entries select it by. The driver class is generic in it
(``class SerialDriver(Driver[SerialDeviceConfig])``), and drivers/registry.py lists
both, one line per driver.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from types import TracebackType
from typing import Annotated, ClassVar, Generic, Self, TypeVar

from pydantic import AfterValidator, Field

from scanfleet.daemon.core.config import DeviceConfigBase

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Read:
    """One frame as the device delivered it.

    ``data`` is lossless: for delimiter framings it includes the terminators (and
    STX/ETX); for SSI and Honeywell packet mode it is the decoded data bytes.
    """

    data: bytes
    t_mono: float
    """``time.monotonic()`` when the frame completed."""
    time: datetime
    """UTC wall clock at the same moment."""
    aim: str | None = None
    """AIM symbology id known from the transport (SSI type, Honeywell packet), else None."""
    port: str | None = None
    vid_pid: str | None = None
    """``"1a86:7523"`` (lowercase) when known."""

    @classmethod
    def now(
        cls,
        data: bytes,
        *,
        aim: str | None = None,
        port: str | None = None,
        vid_pid: str | None = None,
    ) -> Read:
        """A Read stamped with the current monotonic and wall-clock time."""
        return cls(data, time.monotonic(), datetime.now(UTC), aim, port, vid_pid)


class Signal(StrEnum):
    """Operator feedback the daemon asks a device to give."""

    GOOD_READ = "good_read"
    BAD_READ = "bad_read"


@dataclass(frozen=True)
class DriverProblem:
    """Something wrong on the wire: garbage, an over-long frame, a checksum error…

    Never a scan. ``code`` is stable (``garbage``, ``over_long``, ``wrong_terminator``,
    ``unterminated``, ``checksum``, ``nak_storm``, ``no_ack``…); ``data`` holds (a
    bounded prefix of) the offending bytes for diagnosis.
    """

    code: str
    message: str
    data: bytes = b""


@dataclass(frozen=True)
class DeviceInfo:
    """A device found by :meth:`Driver.detect` / ``scanfleet devices``."""

    driver: str
    """Driver that would bind it (``serial``, ``evdev``…)."""
    path: str
    """Kernel device node, e.g. ``/dev/ttyUSB0``."""
    links: tuple[str, ...] = ()
    """Stable symlinks (``/dev/serial/by-id/…``, ``/dev/input/by-id/…``)."""
    vid_pid: str | None = None
    serial: str | None = None
    manufacturer: str | None = None
    product: str | None = None
    name: str | None = None
    """Input device name (evdev) or kernel driver of a tty."""
    looks_like_scanner: bool = False
    reason: str = ""
    """Why it looks (or does not look) like a scanner."""
    extra: dict[str, str] = field(default_factory=dict)


ProblemCallback = Callable[[DriverProblem], None]


class ProblemReporter:
    """Report each incident once: repeats of the same code are counted, not re-reported.

    Problems of one code within *repeat_after* seconds of its report belong to the same
    incident; the next report after that says how many were suppressed.
    """

    def __init__(self, callback: ProblemCallback | None, repeat_after: float = 60.0) -> None:
        self._callback = callback
        self._repeat_after = repeat_after
        self._active: dict[str, tuple[float, int]] = {}

    def __call__(self, problem: DriverProblem) -> None:
        now = time.monotonic()
        first = self._active.get(problem.code)
        if first is not None:
            since, repeats = first
            if now - since < self._repeat_after:
                self._active[problem.code] = (since, repeats + 1)
                return
            problem = DriverProblem(
                problem.code, f"{problem.message} ({repeats} repeats suppressed)", problem.data
            )
        self._active[problem.code] = (now, 0)
        if self._callback is None:
            log.warning("device problem %s: %s", problem.code, problem.message)
            return
        self._callback(problem)

    def clear(self) -> None:
        """Forget every incident (the next problem of any code is reported)."""
        self._active.clear()


ConfigT = TypeVar("ConfigT", bound=DeviceConfigBase)

USB_MATCH_PATTERN = r"^[0-9a-fA-F]{4}:[0-9a-fA-F]{4}(:[^\s]+)?$"
"""``vid:pid[:serial]``: how a config binds a USB device by id instead of a path."""

UsbMatch = Annotated[str, Field(pattern=USB_MATCH_PATTERN), AfterValidator(str.lower)]
"""A config field holding a :data:`USB_MATCH_PATTERN` (stored lower-case, as sysfs and udev
spell ids)."""


class Waker:
    """A pipe a driver adds to its ``select`` so :meth:`Driver.interrupt` can end a read."""

    def __init__(self) -> None:
        self._r, self._w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    def fileno(self) -> int:
        """The read end, to select on."""
        return self._r

    def set(self) -> None:
        """Make the read end readable. Thread-safe, never blocks."""
        with contextlib.suppress(BlockingIOError, OSError):
            os.write(self._w, b"\0")

    def clear(self) -> None:
        """Consume pending wake-ups."""
        with contextlib.suppress(BlockingIOError, OSError):
            os.read(self._r, 64)

    def close(self) -> None:
        """Close both ends (idempotent)."""
        for fd in (self._r, self._w):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._r = self._w = -1


class Driver(ABC, Generic[ConfigT]):
    """A bound device. Open in the constructor; read, signal, close.

    :raises DeviceGoneError: (constructor, :meth:`read`) the device is absent or went away.
    :raises DriverUnavailableError: (constructor) the driver's library is missing.
    """

    driver_name: ClassVar[str]
    interruptible: ClassVar[bool] = False
    """True when :meth:`interrupt` ends a blocked :meth:`read` at once; the daemon then
    reads without a timeout, so an idle device costs no wake-ups."""
    _closed: bool = True

    def __init__(self, config: ConfigT, *, on_problem: ProblemCallback | None = None) -> None:
        self.config = config
        self._problems = ProblemReporter(on_problem)
        # Subclasses open the device first and call this last: a failed open leaves
        # the instance "closed", so close() from a finally block is harmless.
        self._closed = False

    def read(self, timeout: float | None) -> Read | None:
        """The next frame, or None when *timeout* seconds pass without one.

        Blocks in select/poll, never spins. ``timeout=None`` waits forever.
        :raises DeviceGoneError: the device disappeared (unplugged, port closed).
        :raises ValueError: the driver is closed.
        """
        if self._closed:
            raise ValueError(f"{type(self).__name__} is closed")
        return self._read(timeout)

    @abstractmethod
    def _read(self, timeout: float | None) -> Read | None:
        """Driver-specific read; same contract as :meth:`read`."""

    def interrupt(self) -> None:
        """Make a :meth:`read` blocked in another thread return None now (stop, reload).

        Thread-safe; a no-op for drivers that are not :attr:`interruptible` (their reads
        must then be given a timeout).
        """

    def signal(self, signal: Signal) -> None:
        """Give operator feedback per the device's preset (no-op for preset ``none``).

        Safe to call from another thread than the one blocked in :meth:`read`.
        """
        if self._closed:
            raise ValueError(f"{type(self).__name__} is closed")
        self._signal(signal)

    def _signal(self, signal: Signal) -> None:
        """Driver-specific feedback; the default has none."""
        log.debug("%s: no feedback channel for %s", self.driver_name, signal)

    def close(self) -> None:
        """Release the device. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._close()

    def _close(self) -> None:
        """Driver-specific release (called once)."""

    @property
    def closed(self) -> bool:
        """True after :meth:`close` (or when the constructor failed)."""
        return self._closed

    def fileno(self) -> int | None:
        """A file descriptor that becomes readable when data arrives, when there is one."""
        return None

    def report(self, problem: DriverProblem) -> None:
        """Pass *problem* to ``on_problem``, once per incident."""
        self._problems(problem)

    @classmethod
    def detect(cls) -> list[DeviceInfo]:
        """Devices of this family present on the machine (may be empty)."""
        return []

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __del__(self) -> None:
        if not self._closed:
            log.warning("%s was not closed", type(self).__name__)
