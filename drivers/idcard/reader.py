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
from typing import Any

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


class IdCardReader(Driver):
    """Base of the ID-card drivers; ``read()`` returns a :class:`CardRead` or None."""

    port: str | None = None
    vid_pid: str | None = None

    def __init__(self, config: Any, *, on_problem: ProblemCallback | None = None) -> None:
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
        wait = self._next_poll - time.monotonic()
        if wait > 0:
            if timeout is not None and wait > timeout:
                time.sleep(timeout)
                return None
            time.sleep(wait)
        self._next_poll = time.monotonic() + self._poll_interval
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
