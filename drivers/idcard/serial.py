"""ID-card reader on a serial port (RS-232, USB-serial bridge or a pty): ``idcard_serial``.

115200 8N1 by default. Each command drains stale input first, so a late reply to an
earlier, timed-out command is not taken for the answer to this one.
"""

from __future__ import annotations

import logging
import termios
import time
from typing import Any

from scanfleet.daemon.core.errors import DeviceGoneError, DriverTimeoutError, DriverUnavailableError
from scanfleet.drivers.base import DriverProblem, ProblemCallback
from scanfleet.drivers.idcard.protocol import FrameParser, Garbage
from scanfleet.drivers.idcard.reader import IdCardDeviceConfig, IdCardReader

log = logging.getLogger(__name__)


class IdCardSerialDriver(IdCardReader):
    """A SAM reader behind a tty."""

    driver_name = "idcard_serial"

    def __init__(
        self, config: IdCardDeviceConfig, *, on_problem: ProblemCallback | None = None
    ) -> None:
        # pyserial is imported at open, not with the config model (drivers/registry.py).
        try:
            import serial
        except ImportError as err:  # pragma: no cover - pyserial is a core dependency
            raise DriverUnavailableError("idcard_serial", "pyserial", str(err)) from err
        self._pyserial: Any = serial
        self.port = config.port
        self._parser = FrameParser()
        try:
            self._serial = serial.Serial(config.port, config.baudrate, timeout=0.05)
        except (serial.SerialException, OSError) as err:
            raise DeviceGoneError(f"cannot open {config.port}: {err}") from err
        super().__init__(config, on_problem=on_problem)
        try:
            self.check_sam()
        except BaseException:
            self.close()
            raise

    def fileno(self) -> int | None:
        """The tty's file descriptor."""
        return int(self._serial.fileno())

    def _close(self) -> None:
        self._serial.close()

    def _transact(self, frame: bytes, timeout: float) -> bytes:
        try:
            self._serial.reset_input_buffer()
            self._parser.clear()
            self._serial.write(frame)
            body = self._await_reply(time.monotonic() + timeout)
        except (self._pyserial.SerialException, OSError, termios.error) as err:
            # pyserial lets termios.error (EIO on a vanished tty) through unwrapped.
            raise DeviceGoneError(f"{self.port}: {err}") from err
        if body is None:
            raise DriverTimeoutError(f"no reply within {timeout:.2f} s")
        return body

    def _await_reply(self, deadline: float) -> bytes | None:
        while (remaining := deadline - time.monotonic()) > 0:
            self._serial.timeout = remaining
            chunk = self._serial.read(max(1, self._serial.in_waiting))
            for item in self._parser.feed(chunk):
                if isinstance(item, Garbage):
                    # Sizes only: skipped bytes can be part of a card's personal data.
                    self.report(
                        DriverProblem("garbage", f"{item.reason}: {len(item.data)} bytes skipped")
                    )
                    continue
                return item
        return None
