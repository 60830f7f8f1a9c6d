"""The polling cycle shared by every ID-card transport: find → select → read.

A transport implements :meth:`IdCardReader._transact` (send one request frame, return
the body of the reply frame). This class does the rest: one poll per
``poll_interval_ms`` (≥ 300 ms, as readers require), per-command timeouts, decoding,
and reading a card that stays on the reader only once.
"""

from __future__ import annotations

import logging
import time
from abc import abstractmethod
from datetime import UTC, datetime
from typing import Annotated, Literal

from pydantic import Field, model_validator

from scanfleet.daemon.core.config import DeviceConfigBase
from scanfleet.daemon.core.errors import DriverTimeoutError
from scanfleet.daemon.core.logs import TRACE
from scanfleet.drivers.base import Driver, DriverProblem, ProblemCallback, Read
from scanfleet.drivers.idcard.protocol import (
    CardAuthenticationError,
    Command,
    FrameError,
    ReadFailedError,
    SamStatusError,
    Status,
    parse_reply,
    request,
    split_card_data,
    status_error,
)
from scanfleet.drivers.idcard.text import CardRead, decode_text

log = logging.getLogger(__name__)


class IdCardDeviceConfig(DeviceConfigBase):
    """A second-generation ID-card reader (SAM protocol) on serial or USB-HID."""

    driver: Literal["idcard_serial", "idcard_usb"]
    port: str | None = None
    """Serial device path (``idcard_serial``); prefer /dev/serial/by-id/…."""
    baudrate: Literal[9600, 19200, 38400, 57600, 115200] = 115200
    usb: Annotated[str, Field(pattern=r"^[0-9a-fA-F]{4}:[0-9a-fA-F]{4}$")] = "10c4:0007"
    """``vid:pid`` of the HID reader (``idcard_usb``)."""
    poll_interval_ms: Annotated[int, Field(ge=300, le=5000)] = 500
    """Pause between find-card polls; readers need at least 300 ms."""
    command_timeout_ms: Annotated[int, Field(ge=50, le=5000)] = 500
    """Reply timeout for find, select and SAM commands."""
    read_timeout_ms: Annotated[int, Field(ge=500, le=10000)] = 3000
    """Reply timeout for reading the card (text, photo, fingerprint)."""
    read_fingerprint: bool = False
    """Use ``30 10`` (text + photo + fingerprint) instead of ``30 01``."""

    @model_validator(mode="after")
    def _transport(self) -> IdCardDeviceConfig:
        if self.driver == "idcard_serial" and self.port is None:
            raise ValueError("driver 'idcard_serial' needs 'port'")
        return self


class IdCardReader(Driver[IdCardDeviceConfig]):
    """Base of the ID-card drivers; ``read()`` returns a :class:`CardRead` or None.

    Both transports share :class:`IdCardDeviceConfig` (one model, registered under the
    names ``idcard_serial`` and ``idcard_usb``), so a reader moved from a serial cable
    to USB keeps its timing settings.
    """

    port: str | None = None
    vid_pid: str | None = None

    def __init__(
        self, config: IdCardDeviceConfig, *, on_problem: ProblemCallback | None = None
    ) -> None:
        self._poll_interval = config.poll_interval_ms / 1000
        self._command_timeout = config.command_timeout_ms / 1000
        self._read_timeout = config.read_timeout_ms / 1000
        self._read_command = Command.READ_FULL if config.read_fingerprint else Command.READ_BASE
        self._next_poll = 0.0
        self._present: bytes | None = None
        """Chip serial of the card read last, while it stays on the reader."""
        super().__init__(config, on_problem=on_problem)

    @abstractmethod
    def _transact(self, frame: bytes, timeout: float) -> bytes:
        """Send request *frame*; return the body of the reply frame.

        :raises DriverTimeoutError: no complete reply within *timeout* seconds.
        :raises DeviceGoneError: the device went away.
        """

    def command(self, command: Command, timeout: float | None = None) -> tuple[int, bytes]:
        """Send *command*; return (status, data) of the reply.

        :raises FrameError: the reply frame is malformed.
        :raises DriverTimeoutError: no reply in time.
        """
        wait = timeout if timeout is not None else self._command_timeout
        body = self._transact(request(command), wait)
        reply = parse_reply(body)
        log.log(
            TRACE,
            "idcard %s -> status 0x%02X, %d data bytes",
            command.name,
            reply.status,
            len(reply.data),
        )
        return reply.status, reply.data

    def check_sam(self) -> None:
        """Ask the SAM for its status; raise when it is not OK (used at open)."""
        status, _ = self.command(Command.SAM_STATUS)
        if status != Status.OK:
            raise SamStatusError(status, Command.SAM_STATUS)

    def _read(self, timeout: float | None) -> Read | None:
        # Poll every poll_interval until a card is read or *timeout* has passed (the
        # Driver contract: None means the whole timeout went by without a read).
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            now = time.monotonic()
            wait = max(0.0, self._next_poll - now)
            if deadline is not None and now + wait >= deadline:
                time.sleep(max(0.0, deadline - now))
                return None
            time.sleep(wait)
            self._next_poll = time.monotonic() + self._poll_interval
            card = self._poll()
            if card is not None:
                return card

    def _poll(self) -> CardRead | None:
        """One find → select → read cycle; wire and card problems are reported, not raised."""
        try:
            return self._cycle()
        except DriverTimeoutError as err:
            self.report(DriverProblem("no_reply", f"reader did not answer: {err}"))
        except FrameError as err:
            # Never err.data: beyond the header it may hold personal data.
            self.report(DriverProblem("malformed", f"bad reply from reader: {err}"))
        except (ReadFailedError, CardAuthenticationError) as err:
            self.report(
                DriverProblem("card_read_failed", f"{err}; remove the card and place it again")
            )
        except SamStatusError as err:
            self.report(DriverProblem("reader_status", str(err)))
        return None

    def _cycle(self) -> CardRead | None:
        status, _ = self.command(Command.FIND)
        if status == Status.FIND_FAILED:
            self._present = None
            return None
        if status != Status.CARD_FOUND:
            raise status_error(status, Command.FIND)
        status, serial_no = self.command(Command.SELECT)
        if status == Status.SELECT_FAILED:
            return None  # card moving in the field; the next poll tries again
        if status != Status.OK:
            raise SamStatusError(status, Command.SELECT)
        if self._present is not None and serial_no == self._present:
            return None  # still on the reader: it was read already
        status, data = self.command(self._read_command, self._read_timeout)
        if status != Status.OK:
            self._present = serial_no  # readers want the card re-placed after a failure
            raise status_error(status, self._read_command)
        sections = split_card_data(data, self._read_command)
        card = decode_text(sections.text)
        self._present = serial_no
        log.debug("idcard %s: read a %s card", self.port, card.card_type)
        return CardRead(
            data=b"",
            t_mono=time.monotonic(),
            time=datetime.now(UTC),
            port=self.port,
            vid_pid=self.vid_pid,
            card=card,
            photo=sections.photo,
            fingerprint=sections.fingerprint,
        )
