"""Serial framing, separate from the transport: bytes in, frames and problems out.

A framer is fed the bytes read from the port together with the monotonic time they
were read; it yields :class:`Frame` objects, :class:`~scanfleet.drivers.base.DriverProblem`
objects for garbage, and (for handshaking protocols) :class:`Reply` objects the driver
must write back. It resynchronises after noise: a delimiter framer drops the bad frame
at the next terminator or after ``idle_timeout`` of silence; a packet framer skips
bytes until a plausible header.

Frame validity (delimiter framings): printable ASCII, the GS1/ISO 15434 separators GS,
RS, FS and EOT, TAB, and bytes >= 0x80 only when the whole frame is valid UTF-8 (QR
codes carry UTF-8 text). Anything else (NUL, other control bytes, the 0x80-0xFF soup
a wrong baud rate produces) makes the frame garbage.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

from scanfleet.drivers.base import DriverProblem

CR, LF, STX, ETX = 0x0D, 0x0A, 0x02, 0x03
_ALLOWED_CONTROLS = frozenset((0x04, 0x09, 0x1C, 0x1D, 0x1E))
PROBLEM_SAMPLE = 64
"""At most this many offending bytes travel with a DriverProblem."""


@dataclass(frozen=True)
class Frame:
    """One complete frame: ``data`` as the read's lossless payload, ``aim`` when known."""

    data: bytes
    t: float
    aim: str | None = None


@dataclass(frozen=True)
class Reply:
    """Bytes the driver must write to the device now (an SSI ACK or NAK)."""

    data: bytes


Event = Frame | DriverProblem | Reply


def frame_is_clean(content: bytes) -> bool:
    """True when *content* (terminators removed) could be barcode data."""
    high = False
    for b in content:
        if b >= 0x80:
            high = True
        elif (b < 0x20 and b not in _ALLOWED_CONTROLS) or b == 0x7F:
            return False
    if high:
        try:
            content.decode("utf-8")
        except UnicodeDecodeError:
            return False
    return True


def problem(code: str, message: str, data: bytes | bytearray = b"") -> DriverProblem:
    """A DriverProblem carrying at most :data:`PROBLEM_SAMPLE` bytes of evidence."""
    return DriverProblem(code, message, bytes(data[:PROBLEM_SAMPLE]))


class Framer(ABC):
    """Bytes in, events out. Not thread-safe: one reader feeds it."""

    idle_timeout: float

    @abstractmethod
    def feed(self, data: bytes, now: float) -> list[Event]:
        """Consume *data* read at monotonic time *now*."""

    @abstractmethod
    def poll(self, now: float) -> list[Event]:
        """Handle the passage of time (inter-byte silence, handshake timeouts)."""

    @abstractmethod
    def deadline(self) -> float | None:
        """When :meth:`poll` next has something to do, or None."""

    @abstractmethod
    def flush(self) -> list[DriverProblem]:
        """The stream ended (device gone): report any partial frame and reset."""


class DelimiterFramer(Framer):
    """Frames ended by a terminator (CR, LF, CRLF, a custom suffix), or STX…ETX.

    ``data`` of each frame keeps the terminator (and STX), so the read is lossless.
    A CR or LF that is not part of the configured terminator is a wrong terminator:
    the frame it ends is reported and dropped, and framing resumes right after it.
    """

    def __init__(
        self,
        terminator: bytes,
        *,
        start: int | None = None,
        max_frame: int = 4096,
        idle_timeout: float = 0.05,
    ) -> None:
        if not terminator:
            raise ValueError("terminator must not be empty")
        self.terminator = terminator
        self.start = start
        self.max_frame = max_frame
        self.idle_timeout = idle_timeout
        self._buf = bytearray()
        self._discarding = False
        self._outside = False
        self._settled = 0
        self._last = 0.0

    def _reset(self) -> None:
        self._buf.clear()
        self._discarding = False
        self._outside = False
        self._settled = 0

    def feed(self, data: bytes, now: float) -> list[Event]:
        """See :meth:`Framer.feed`."""
        events: list[Event] = []
        for b in data:
            self._byte(b, events, now)
        if data:
            self._last = now
        return events

    def _byte(self, b: int, events: list[Event], now: float) -> None:
        buf = self._buf
        if self.start is not None:
            if b == self.start:
                if self._outside:
                    events.append(problem("garbage", "bytes outside STX…ETX", buf))
                elif buf and not self._discarding:
                    events.append(problem("unterminated", "frame restarted by STX", buf))
                self._reset()
                buf.append(b)
                return
            if self._outside or (not buf and not self._discarding):
                self._outside = True
                if len(buf) < PROBLEM_SAMPLE:
                    buf.append(b)
                return
        buf.append(b)
        if buf.endswith(self.terminator):
            self._complete(events, now)
            return
        # Bytes that can no longer be the start of the terminator are "settled" content;
        # a CR or LF among them is a terminator the device should not have sent.
        term = self.terminator
        k = min(len(term) - 1, len(buf))
        while k and not term.startswith(buf[len(buf) - k :]):
            k -= 1
        settled_end = len(buf) - k
        if settled_end > self._settled:
            fresh = buf[self._settled : settled_end]
            cut = max(fresh.rfind(b"\r"), fresh.rfind(b"\n"))
            if cut >= 0:
                self._wrong_terminator(events, self._settled + cut + 1)
                return
            self._settled = settled_end
        if settled_end > self.max_frame + (1 if self.start is not None else 0):
            if not self._discarding:
                events.append(
                    problem("over_long", f"frame longer than max_frame={self.max_frame}", buf)
                )
            self._discarding = True
            # Keep only a possible terminator prefix so the end of the frame is still seen.
            del buf[: len(buf) - k]
            self._settled = 0

    def _wrong_terminator(self, events: list[Event], end: int) -> None:
        """``buf[:end]`` ended with a CR/LF that is not the terminator: drop and report it."""
        if not self._discarding:
            events.append(
                problem(
                    "wrong_terminator",
                    f"CR/LF inside a frame whose terminator is {self.terminator.hex()}",
                    self._buf[:end],
                )
            )
        tail = bytes(self._buf[end:])
        self._reset()
        # What followed the stray CR/LF (e.g. the next frame's first byte) starts anew.
        for b in tail:
            self._buf.append(b)

    def _complete(self, events: list[Event], now: float) -> None:
        frame = bytes(self._buf)
        discarding = self._discarding
        self._reset()
        if discarding:
            return  # the tail of an over-long frame, already reported
        content = frame[: len(frame) - len(self.terminator)]
        if self.start is not None:
            content = content[1:]
        if not content:
            return  # a bare terminator: some scanners send one for a no-read
        if frame_is_clean(content):
            events.append(Frame(frame, now))
        else:
            events.append(problem("garbage", "frame contains bytes no barcode carries", frame))

    def poll(self, now: float) -> list[Event]:
        """Silence longer than ``idle_timeout`` ends a partial frame as a problem."""
        if not self._buf or now < self._last + self.idle_timeout:
            return []
        return list(self.flush())

    def deadline(self) -> float | None:
        """See :meth:`Framer.deadline`."""
        return self._last + self.idle_timeout if self._buf else None

    def flush(self) -> list[DriverProblem]:
        """See :meth:`Framer.flush`."""
        buf = bytes(self._buf)
        discarding, outside = self._discarding, self._outside
        self._reset()
        if not buf or discarding:
            return []
        if outside or not frame_is_clean(buf):
            return [problem("garbage", "noise on the line", buf)]
        return [problem("unterminated", "frame without terminator", buf)]


class IdleFramer(Framer):
    """No terminator: a frame ends after ``idle_timeout`` of silence."""

    def __init__(self, *, max_frame: int = 4096, idle_timeout: float = 0.05) -> None:
        self.max_frame = max_frame
        self.idle_timeout = idle_timeout
        self._buf = bytearray()
        self._over = False
        self._last = 0.0

    def feed(self, data: bytes, now: float) -> list[Event]:
        """See :meth:`Framer.feed`."""
        events: list[Event] = []
        if data:
            self._last = now
        if self._over:
            return events
        self._buf += data
        if len(self._buf) > self.max_frame:
            events.append(
                problem("over_long", f"frame longer than max_frame={self.max_frame}", self._buf)
            )
            self._buf.clear()
            self._over = True
        return events

    def poll(self, now: float) -> list[Event]:
        """See :meth:`Framer.poll`."""
        if (not self._buf and not self._over) or now < self._last + self.idle_timeout:
            return []
        frame = bytes(self._buf)
        self._buf.clear()
        self._over = False
        if not frame:
            return []
        if frame_is_clean(frame.rstrip(b"\r\n")):
            return [Frame(frame, self._last)]
        return [problem("garbage", "frame contains bytes no barcode carries", frame)]

    def deadline(self) -> float | None:
        """See :meth:`Framer.deadline`."""
        return self._last + self.idle_timeout if self._buf or self._over else None

    def flush(self) -> list[DriverProblem]:
        """See :meth:`Framer.flush`."""
        buf = bytes(self._buf)
        self._buf.clear()
        self._over = False
        return [problem("unterminated", "frame cut off by disconnect", buf)] if buf else []


class HoneywellPacketFramer(Framer):
    """Honeywell packet-header mode (``DECHDR1``; protocols.md §5.1).

    ``16 FE <payload length, 4 bytes LE> 0D`` then the payload ``MSGGET`` + 4 ASCII
    digits (data length incl. the final CR) + Honeywell code id + 2-char AIM id +
    ``1D`` + data + ``0D``. Frames carry the data without its final CR and
    ``aim = "]" + the two AIM characters``.
    """

    HEADER = b"\x16\xfe"
    _PAYLOAD_OVERHEAD = 14  # MSGGET(6) + length(4) + code id(1) + AIM(2) + GS(1)

    def __init__(self, *, max_frame: int = 4096, idle_timeout: float = 0.05) -> None:
        self.max_frame = max_frame
        self.idle_timeout = idle_timeout
        self._buf = bytearray()
        self._last = 0.0

    def feed(self, data: bytes, now: float) -> list[Event]:
        """See :meth:`Framer.feed`."""
        if data:
            self._last = now
        self._buf += data
        events: list[Event] = []
        while self._parse_one(events, now):
            pass
        return events

    def _parse_one(self, events: list[Event], now: float) -> bool:
        buf = self._buf
        start = buf.find(self.HEADER)
        if start < 0:
            # Keep a trailing 0x16: it may be the first half of the next header.
            keep = 1 if buf.endswith(b"\x16") else 0
            if len(buf) > keep:
                events.append(
                    problem("garbage", "bytes outside Honeywell packets", buf[: -keep or None])
                )
                del buf[: len(buf) - keep]
            return False
        if start > 0:
            events.append(problem("garbage", "bytes outside Honeywell packets", buf[:start]))
            del buf[:start]
        if len(buf) < 7:
            return False
        length = int.from_bytes(buf[2:6], "little")
        if buf[6] != CR or not self._PAYLOAD_OVERHEAD < length <= self.max_frame + 64:
            events.append(problem("garbage", "bad Honeywell packet header", buf[:7]))
            del buf[:2]
            return True
        if len(buf) < 7 + length:
            return False
        payload = bytes(buf[7 : 7 + length])
        del buf[: 7 + length]
        digits = payload[6:10]
        if (
            not payload.startswith(b"MSGGET")
            or not digits.isdigit()
            or payload[13] != 0x1D
            or int(digits) != length - self._PAYLOAD_OVERHEAD
            or not payload.endswith(b"\r")
        ):
            events.append(problem("garbage", "malformed Honeywell MSGGET payload", payload))
            return True
        data = payload[self._PAYLOAD_OVERHEAD : -1]
        if len(data) > self.max_frame:
            events.append(
                problem("over_long", f"frame longer than max_frame={self.max_frame}", data)
            )
            return True
        events.append(Frame(data, now, aim="]" + payload[11:13].decode("ascii", "replace")))
        return True

    def poll(self, now: float) -> list[Event]:
        """A partial packet followed by silence is dropped as a problem."""
        if not self._buf or now < self._last + self.idle_timeout:
            return []
        return list(self.flush())

    def deadline(self) -> float | None:
        """See :meth:`Framer.deadline`."""
        return self._last + self.idle_timeout if self._buf else None

    def flush(self) -> list[DriverProblem]:
        """See :meth:`Framer.flush`."""
        buf = bytes(self._buf)
        self._buf.clear()
        return [problem("unterminated", "partial Honeywell packet", buf)] if buf else []


TERMINATORS = {"cr": b"\r", "lf": b"\n", "crlf": b"\r\n"}
RESYNC_SILENCE = 0.5
"""Seconds of silence that end a partial frame in terminator and packet framings.

There the silence is only a safety net for resynchronising after noise; it must not
split a frame whose sender paused (a tail that looks like a whole frame would be
delivered), so it never goes below this, whatever ``idle_timeout_ms`` says."""
