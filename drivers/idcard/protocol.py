"""SAM frames: builder, resyncing parser, commands and status codes (no I/O here).

Frame (docs/idcard.md, shared reference §1.1)::

    AA AA AA 96 69 | LEN_H LEN_L | body | CHK
    LEN = len(body) + 1, big-endian; CHK = XOR of LEN_H, LEN_L and body.
    host → reader body: CMD PARA [data]; reader → host body: SW1 SW2 SW3 [data].

Every error this module raises derives from :class:`IdCardProtocolError`, so a
transport can tell "the wire is bad" (:class:`FrameError`) from "the reader said no"
(:class:`SamStatusError` and its named subclasses).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum, IntEnum

from scanfleet.daemon.core.errors import DriverError

PREAMBLE = b"\xaa\xaa\xaa\x96\x69"
HEADER_LEN = len(PREAMBLE) + 2
MIN_LEN = 3
"""Smallest LEN: a request body is at least CMD PARA, plus the checksum."""
MAX_LEN = 4096
"""Largest LEN accepted. The biggest real reply (30 10 with a 1024-byte fingerprint)
has LEN 0x090A; a bigger value is garbage that happened to follow a preamble, and
waiting for its bytes would stall the parser."""


class Command(Enum):
    """Host commands as (CMD, PARA)."""

    RESET_SAM = (0x10, 0xFF)
    SAM_STATUS = (0x11, 0xFF)
    SAM_ID = (0x12, 0xFF)
    FIND = (0x20, 0x01)
    SELECT = (0x20, 0x02)
    READ_BASE = (0x30, 0x01)
    """Text (256) + WLT photo (1024)."""
    READ_NEWEST_ADDRESS = (0x30, 0x03)
    READ_FULL = (0x30, 0x10)
    """Text + photo + fingerprint block (1024, 512 or 0 bytes)."""

    @property
    def cmd(self) -> int:
        """The CMD byte."""
        return self.value[0]

    @property
    def para(self) -> int:
        """The PARA byte."""
        return self.value[1]


class Status(IntEnum):
    """SW3 of a reply."""

    OK = 0x90
    NO_CONTENT = 0x91
    CARD_FOUND = 0x9F
    CHECKSUM = 0x10
    LENGTH = 0x11
    COMMAND = 0x21
    UNAUTHORIZED = 0x23
    UNKNOWN_ERROR = 0x24
    CARD_AUTH_SAM_FAILED = 0x31
    SAM_AUTH_CARD_FAILED = 0x32
    VERIFICATION = 0x33
    UNKNOWN_CARD_TYPE = 0x40
    READ_FAILED = 0x41
    RANDOM_FAILED = 0x47
    SAM_SELF_TEST = 0x60
    SAM_NOT_AUTHORIZED = 0x66
    FIND_FAILED = 0x80
    SELECT_FAILED = 0x81


STATUS_TEXT: dict[int, str] = {
    Status.OK: "success",
    Status.NO_CONTENT: "no content for this item on the card",
    Status.CARD_FOUND: "card found",
    Status.CHECKSUM: "reader received a bad checksum",
    Status.LENGTH: "reader received a bad length",
    Status.COMMAND: "reader received an unknown command",
    Status.UNAUTHORIZED: "unauthorized operation",
    Status.UNKNOWN_ERROR: "unrecognized error",
    Status.CARD_AUTH_SAM_FAILED: "card failed to authenticate the SAM",
    Status.SAM_AUTH_CARD_FAILED: "SAM failed to authenticate the card",
    Status.VERIFICATION: "information verification error",
    Status.UNKNOWN_CARD_TYPE: "unknown card type",
    Status.READ_FAILED: "reading the card failed",
    Status.RANDOM_FAILED: "get-random failed",
    Status.SAM_SELF_TEST: "SAM self-test failed",
    Status.SAM_NOT_AUTHORIZED: "SAM not authorized",
    Status.FIND_FAILED: "no card found",
    Status.SELECT_FAILED: "selecting the card failed",
}


class IdCardProtocolError(DriverError):
    """Root of every error of the SAM protocol layer."""


class FrameError(IdCardProtocolError, ValueError):
    """Bytes that are not a valid frame; ``data`` holds (a prefix of) them."""

    def __init__(self, message: str, data: bytes = b"") -> None:
        # Only the header and status: the rest of a read reply is personal data.
        self.data = data[: HEADER_LEN + 3]
        super().__init__(message)


class PreambleError(FrameError):
    """The bytes do not start with ``AA AA AA 96 69``."""


class LengthError(FrameError):
    """LEN is out of range or disagrees with the number of bytes."""


class ChecksumError(FrameError):
    """The XOR checksum does not match."""


class MalformedReplyError(FrameError):
    """A frame that is not a valid reply: too short, SW1/SW2 not 00, bad section lengths."""


class SamStatusError(IdCardProtocolError):
    """The reader answered with a status other than the one expected."""

    def __init__(self, status: int, command: Command | None = None) -> None:
        self.status = status
        self.command = command
        meaning = STATUS_TEXT.get(status, "undocumented status")
        where = f" to {command.name}" if command is not None else ""
        super().__init__(f"reader status 0x{status:02X}{where}: {meaning}")


class NoCardError(SamStatusError):
    """0x80: no card in the field."""


class SelectFailedError(SamStatusError):
    """0x81: the card could not be selected (moved, or half in the field)."""


class ReadFailedError(SamStatusError):
    """0x41: reading failed; the card should be removed and placed again."""


class NoContentError(SamStatusError):
    """0x91: the card has no content for this item (e.g. no newer address)."""


class CardAuthenticationError(SamStatusError):
    """0x31/0x32/0x33: card and SAM did not authenticate each other (forged or damaged card)."""


class UnknownCardTypeError(SamStatusError):
    """0x40: not a card type the SAM knows."""


class SamFaultError(SamStatusError):
    """0x60/0x66/0x47: the SAM module itself is faulty or not authorized."""


class ReaderRejectedError(SamStatusError):
    """0x10/0x11/0x21/0x23/0x24: the reader rejected what the host sent."""


_STATUS_ERRORS: dict[int, type[SamStatusError]] = {
    Status.FIND_FAILED: NoCardError,
    Status.SELECT_FAILED: SelectFailedError,
    Status.READ_FAILED: ReadFailedError,
    Status.NO_CONTENT: NoContentError,
    Status.CARD_AUTH_SAM_FAILED: CardAuthenticationError,
    Status.SAM_AUTH_CARD_FAILED: CardAuthenticationError,
    Status.VERIFICATION: CardAuthenticationError,
    Status.UNKNOWN_CARD_TYPE: UnknownCardTypeError,
    Status.SAM_SELF_TEST: SamFaultError,
    Status.SAM_NOT_AUTHORIZED: SamFaultError,
    Status.RANDOM_FAILED: SamFaultError,
    Status.CHECKSUM: ReaderRejectedError,
    Status.LENGTH: ReaderRejectedError,
    Status.COMMAND: ReaderRejectedError,
    Status.UNAUTHORIZED: ReaderRejectedError,
    Status.UNKNOWN_ERROR: ReaderRejectedError,
}


def status_error(status: int, command: Command | None = None) -> SamStatusError:
    """The named error for reply status *status*."""
    return _STATUS_ERRORS.get(status, SamStatusError)(status, command)


def checksum(data: bytes) -> int:
    """XOR of *data* (LEN bytes and body)."""
    x = 0
    for b in data:
        x ^= b
    return x


def build_frame(body: bytes) -> bytes:
    """Wrap *body* in preamble, LEN and checksum."""
    length = len(body) + 1
    if not MIN_LEN - 1 <= length - 1 <= MAX_LEN - 1:
        raise LengthError(f"body of {len(body)} bytes does not fit a frame", body)
    head = length.to_bytes(2, "big")
    return PREAMBLE + head + body + bytes([checksum(head + body)])


def request(command: Command, data: bytes = b"") -> bytes:
    """The complete request frame for *command*."""
    return build_frame(bytes(command.value) + data)


def reply(status: int, data: bytes = b"") -> bytes:
    """A reader's reply frame (SW1 = SW2 = 00); used by the simulator and tests."""
    return build_frame(bytes([0, 0, status]) + data)


def parse_frame(frame: bytes) -> bytes:
    """Check one complete frame and return its body.

    :raises FrameError: (a subclass) when *frame* is not exactly one valid frame.
    """
    if not frame.startswith(PREAMBLE):
        raise PreambleError("frame does not start with the preamble", frame)
    if len(frame) < HEADER_LEN + MIN_LEN:
        raise LengthError(f"frame of {len(frame)} bytes is too short", frame)
    length = int.from_bytes(frame[5:7], "big")
    if length != len(frame) - HEADER_LEN:
        raise LengthError(f"LEN {length} but {len(frame) - HEADER_LEN} bytes follow it", frame)
    if length < MIN_LEN or length > MAX_LEN:
        raise LengthError(f"LEN {length} is out of range", frame)
    if checksum(frame[5:-1]) != frame[-1]:
        raise ChecksumError("checksum mismatch", frame)
    return frame[HEADER_LEN:-1]


@dataclass(frozen=True)
class Reply:
    """A reader's reply: status and data (what follows SW1 SW2 SW3)."""

    status: int
    data: bytes

    def __repr__(self) -> str:
        # The data of a read reply is personal information: never show it.
        return f"Reply(status=0x{self.status:02X}, {len(self.data)} data bytes)"

    def expect(self, command: Command, *statuses: int) -> bytes:
        """Return the data when the status is one of *statuses*, else raise its named error."""
        if self.status not in statuses:
            raise status_error(self.status, command)
        return self.data


def parse_reply(body: bytes) -> Reply:
    """Interpret a frame body from the reader.

    :raises MalformedReplyError: too short, or SW1/SW2 not ``00 00``.
    """
    if len(body) < 3:
        raise MalformedReplyError(f"reply body of {len(body)} bytes has no status", body)
    if body[0] or body[1]:
        raise MalformedReplyError(f"reply SW1 SW2 = {body[0]:02X} {body[1]:02X}, not 00 00", body)
    return Reply(body[2], body[3:])


@dataclass(frozen=True)
class CardData:
    """The sections of a read reply (30 01 or 30 10), as bytes."""

    text: bytes = b""
    photo: bytes = b""
    fingerprint: bytes = b""

    def __repr__(self) -> str:
        return (
            f"CardData(text={len(self.text)} B, photo={len(self.photo)} B, "
            f"fingerprint={len(self.fingerprint)} B)"
        )


def split_card_data(data: bytes, command: Command = Command.READ_BASE) -> CardData:
    """Split the data of a 30 01 / 30 10 reply into text, photo and fingerprint.

    The data starts with big-endian section lengths (text, photo, and for 30 10 the
    fingerprint), followed by the sections in that order.

    :raises MalformedReplyError: the lengths do not add up.
    """
    sections = 3 if command is Command.READ_FULL else 2
    head = 2 * sections
    if len(data) < head:
        raise MalformedReplyError(f"read reply of {len(data)} bytes has no section lengths")
    lengths = [int.from_bytes(data[i : i + 2], "big") for i in range(0, head, 2)]
    if head + sum(lengths) != len(data):
        raise MalformedReplyError(
            f"section lengths {lengths} do not match {len(data) - head} data bytes"
        )
    parts: list[bytes] = []
    pos = head
    for n in lengths:
        parts.append(data[pos : pos + n])
        pos += n
    if lengths[0] != 256:
        raise MalformedReplyError(f"text section of {lengths[0]} bytes, expected 256")
    return CardData(*parts)


def join_card_data(card: CardData, command: Command = Command.READ_BASE) -> bytes:
    """Inverse of :func:`split_card_data` (simulator and tests)."""
    sections = [card.text, card.photo]
    if command is Command.READ_FULL:
        sections.append(card.fingerprint)
    head = b"".join(len(s).to_bytes(2, "big") for s in sections)
    return head + b"".join(sections)


@dataclass(frozen=True)
class Garbage:
    """Bytes the parser skipped while looking for a frame, and why."""

    reason: str
    data: bytes


class FrameParser:
    """Incremental parser: feed bytes, get frame bodies and skipped garbage.

    It resyncs on the preamble: bytes before a preamble, a frame whose LEN is out of
    range, or a frame whose checksum fails are reported as :class:`Garbage` and the
    search continues one byte after the rejected preamble, so a real frame that
    started inside the rejected bytes is still found. It never raises.
    """

    def __init__(self) -> None:
        self._buf = bytearray()

    def __len__(self) -> int:
        return len(self._buf)

    def clear(self) -> None:
        """Drop buffered bytes (e.g. after a timeout, before the next command)."""
        self._buf.clear()

    def feed(self, data: bytes) -> list[bytes | Garbage]:
        """Add *data*; return the frame bodies (bytes) and garbage completed so far."""
        self._buf += data
        out: list[bytes | Garbage] = []
        while True:
            start = self._buf.find(PREAMBLE)
            if start < 0:
                # Keep a tail that may be the start of a preamble split across reads.
                keep = _preamble_prefix_len(self._buf)
                if len(self._buf) > keep:
                    out.append(Garbage("no preamble", bytes(self._buf[: len(self._buf) - keep])))
                    del self._buf[: len(self._buf) - keep]
                return out
            if start:
                out.append(Garbage("bytes before preamble", bytes(self._buf[:start])))
                del self._buf[:start]
            if len(self._buf) < HEADER_LEN:
                return out
            length = int.from_bytes(self._buf[5:7], "big")
            if not MIN_LEN <= length <= MAX_LEN:
                out.append(Garbage(f"LEN {length} out of range", bytes(self._buf[:HEADER_LEN])))
                del self._buf[:1]
                continue
            end = HEADER_LEN + length
            if len(self._buf) < end:
                return out
            frame = bytes(self._buf[:end])
            if checksum(frame[5:-1]) != frame[-1]:
                out.append(Garbage("checksum mismatch", frame[:64]))
                del self._buf[:1]
                continue
            del self._buf[:end]
            out.append(frame[HEADER_LEN:-1])


def _preamble_prefix_len(buf: bytearray) -> int:
    for n in range(min(len(PREAMBLE) - 1, len(buf)), 0, -1):
        if buf[-n:] == PREAMBLE[:n]:
            return n
    return 0
