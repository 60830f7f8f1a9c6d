"""Zebra/Symbol SSI (Simple Serial Interface): packets, checksum, ACK/NAK, multipacket.

Packet: ``[length][opcode][source][status][data…][cksum hi][cksum lo]``; ``length``
counts the bytes before the checksum, source is 0x04 from the host and 0x00 from the
decoder, and the checksum is the 16-bit two's complement of the byte sum, big-endian
(protocols.md §5.4). Status bit 0 marks a retransmission, bit 1 "more packets follow"
(a multipacket DECODE_DATA). The host ACKs every packet it accepts and NAKs (cause
RESEND) one with a bad checksum; the decoder ACKs or NAKs every host command.
"""

from __future__ import annotations

import collections
import logging
from dataclasses import dataclass

from scanfleet.drivers.base import DriverProblem
from scanfleet.drivers.framing import Event, Frame, Framer, Reply, problem

log = logging.getLogger(__name__)

SOURCE_DECODER = 0x00
SOURCE_HOST = 0x04
STATUS_RETRANSMIT = 0x01
STATUS_CONTINUATION = 0x02
STATUS_PERMANENT = 0x08

REPLY_REVISION = 0xA4
PARAM_SEND = 0xC6
CMD_ACK = 0xD0
CMD_NAK = 0xD1
BEEP = 0xE6
LED_ON = 0xE7
LED_OFF = 0xE8
DECODE_DATA = 0xF3
EVENT = 0xF6

NAK_RESEND = 0x01
NAK_BAD_CONTEXT = 0x02
NAK_DENIED = 0x06
NAK_CANCEL = 0x0A

BEEP_NONE = 0xFF
"""Beep code in PARAM_SEND meaning "do not beep for this parameter change"."""
PARAM_BEEP_AFTER_GOOD_DECODE = 0x38
"""Parameter 56: the scanner's own decode beep (0 = off)."""
PARAM_SW_HANDSHAKING = 0x9F
"""Parameter 159: software handshaking (1 = ACK/NAK)."""
PARAM_DECODE_DATA_FORMAT = 0xEE
"""Parameter 238: decode data format (0 = raw, 1 = packeted)."""

MAX_DATA_PER_PACKET = 0xFF - 4 - 1
"""Bytes of barcode data in one DECODE_DATA packet (length byte max 0xFF, minus the
4-byte header and the barcode-type byte)."""

KNOWN_DECODER_OPCODES = frozenset(
    (REPLY_REVISION, PARAM_SEND, CMD_ACK, CMD_NAK, DECODE_DATA, EVENT, 0xA3, 0xD2, 0xF7)
)

# SSI barcode type -> AIM id, only where the type pins the AIM id down. DataMatrix
# (0x1B) and QR (0x1C) are left out: the type does not say whether FNC1 came first
# (]d1 vs ]d2, ]Q1 vs ]Q3), so the classifier decides from the data.
SYMBOLOGY_AIM: dict[int, str] = {
    0x03: "]C0",  # Code 128
    0x0F: "]C1",  # GS1-128
    0x0B: "]E0",  # EAN-13
    0x0A: "]E4",  # EAN-8
    0x30: "]e0",  # GS1 DataBar
    0x31: "]e0",  # GS1 DataBar Limited
    0x32: "]e0",  # GS1 DataBar Expanded
}
"""Type codes from the SSI manual's DECODE_DATA section as used by enioka_scan."""

AIM_TO_SYMBOLOGY: dict[str, int] = {
    "]C0": 0x03,
    "]C1": 0x0F,
    "]E0": 0x0B,
    "]E4": 0x0A,
    "]d1": 0x1B,
    "]d2": 0x1B,
    "]Q1": 0x1C,
    "]Q3": 0x1C,
    "]e0": 0x30,
}
"""For simulators: the SSI type a scanner reports for an AIM id."""


def checksum(data: bytes) -> bytes:
    """The two checksum bytes for *data* (everything before the checksum)."""
    return ((0x10000 - sum(data)) & 0xFFFF).to_bytes(2, "big")


def build_packet(
    opcode: int, data: bytes = b"", *, source: int = SOURCE_HOST, status: int = 0
) -> bytes:
    """One SSI packet with its checksum."""
    body = bytes((4 + len(data), opcode, source, status)) + data
    if len(body) > 0xFF:
        raise ValueError(f"SSI packet body of {len(body)} bytes exceeds 255")
    return body + checksum(body)


def checksum_ok(packet: bytes) -> bool:
    """True when *packet* (length byte to checksum) verifies."""
    return len(packet) >= 6 and checksum(packet[:-2]) == packet[-2:]


def ack(*, source: int = SOURCE_HOST) -> bytes:
    """CMD_ACK, e.g. ``04 D0 04 00 FF 28`` from the host."""
    return build_packet(CMD_ACK, source=source)


def nak(cause: int = NAK_RESEND, *, source: int = SOURCE_HOST) -> bytes:
    """CMD_NAK with *cause* (RESEND asks for a retransmission)."""
    return build_packet(CMD_NAK, bytes((cause,)), source=source)


def beep(code: int) -> bytes:
    """BEEP with a beep code (0 = one short high … 26; protocols.md §5.4)."""
    return build_packet(BEEP, bytes((code,)))


def param_send(*pairs: tuple[int, int], permanent: bool = False) -> bytes:
    """PARAM_SEND without a confirmation beep, setting ``(param, value)`` pairs < 0xF0."""
    data = bytearray((BEEP_NONE,))
    for param, value in pairs:
        if not 0 <= param < 0xF0:
            raise ValueError(f"parameter {param:#x} needs the extended (0xF0+) form")
        data += bytes((param, value))
    return build_packet(PARAM_SEND, bytes(data), status=STATUS_PERMANENT if permanent else 0)


def decode_data_packets(
    data: bytes, symbology: int, *, source: int = SOURCE_DECODER
) -> list[bytes]:
    """Split barcode *data* into DECODE_DATA packets (a multipacket when long)."""
    chunks = [data[i : i + MAX_DATA_PER_PACKET] for i in range(0, len(data), MAX_DATA_PER_PACKET)]
    chunks = chunks or [b""]
    packets = []
    for i, chunk in enumerate(chunks):
        status = STATUS_CONTINUATION if i < len(chunks) - 1 else 0
        packets.append(
            build_packet(DECODE_DATA, bytes((symbology,)) + chunk, source=source, status=status)
        )
    return packets


def with_retransmit_bit(packet: bytes) -> bytes:
    """The same packet marked as a retransmission (status bit 0), checksum redone."""
    body = bytearray(packet[:-2])
    body[3] |= STATUS_RETRANSMIT
    return bytes(body) + checksum(bytes(body))


@dataclass
class _Command:
    packet: bytes
    sent_at: float
    tries: int = 1


class SsiFramer(Framer):
    """Host side of SSI over a byte stream: frames from DECODE_DATA, ACK/NAK replies.

    Host commands (BEEP, PARAM_SEND…) go through :meth:`command`: one is in flight at a
    time; a NAK(RESEND) or no ACK within ``ack_timeout`` retransmits it up to
    ``max_tries`` times.
    """

    def __init__(
        self,
        *,
        max_frame: int = 4096,
        idle_timeout: float = 0.05,
        ack_timeout: float = 1.0,
        max_tries: int = 3,
    ) -> None:
        self.max_frame = max_frame
        self.idle_timeout = idle_timeout
        self.ack_timeout = ack_timeout
        self.max_tries = max_tries
        self._buf = bytearray()
        self._garbage = bytearray()
        self._last = 0.0
        self._chunks: list[bytes] = []
        self._chunks_len = 0
        self._over_long = False
        self._last_accepted: bytes | None = None
        self._pending: collections.deque[_Command] = collections.deque()
        self.acks_sent = 0
        self.naks_sent = 0

    # -- host commands ---------------------------------------------------------------

    def command(self, packet: bytes, now: float) -> bytes:
        """Queue a host command; returns the bytes to write now (empty while one is in flight)."""
        self._pending.append(_Command(packet, now, 1))
        return packet if len(self._pending) == 1 else b""

    @property
    def commands_in_flight(self) -> int:
        """Host commands sent or queued and not acknowledged yet."""
        return len(self._pending)

    def _command_done(self, events: list[Event], now: float) -> None:
        self._pending.popleft()
        if self._pending:
            head = self._pending[0]
            head.sent_at = now
            events.append(Reply(head.packet))

    def _retransmit(self, events: list[Event], now: float, why: str) -> None:
        head = self._pending[0]
        if head.tries >= self.max_tries:
            code = "nak_storm" if why == "nak" else "no_ack"
            events.append(
                problem(code, f"SSI command {head.packet[1]:#04x} failed after {head.tries} tries")
            )
            self._command_done(events, now)
            return
        head.tries += 1
        head.sent_at = now
        events.append(Reply(with_retransmit_bit(head.packet)))

    # -- decoder packets -------------------------------------------------------------

    def feed(self, data: bytes, now: float) -> list[Event]:
        """See :meth:`Framer.feed`."""
        if data:
            self._last = now
        self._buf += data
        events: list[Event] = []
        buf = self._buf
        while buf:
            length = buf[0]
            if length < 4 or (
                len(buf) >= 3 and (buf[2] != SOURCE_DECODER or buf[1] not in KNOWN_DECODER_OPCODES)
            ):
                self._garbage.append(buf[0])
                del buf[0]
                continue
            if len(buf) < length + 2:
                break
            packet = bytes(buf[: length + 2])
            if not checksum_ok(packet):
                self._flush_garbage(events)
                events.append(problem("checksum", "SSI packet with a bad checksum", packet))
                events.append(Reply(nak(NAK_RESEND)))
                self.naks_sent += 1
                # The resend answers this NAK; it is not a copy of the last accepted packet.
                self._last_accepted = None
                del buf[: length + 2]
                continue
            del buf[: length + 2]
            self._flush_garbage(events)
            self._packet(packet, events, now)
        return events

    def _flush_garbage(self, events: list[Event]) -> None:
        if self._garbage:
            events.append(problem("garbage", "bytes outside SSI packets", self._garbage))
            self._garbage.clear()

    def _packet(self, packet: bytes, events: list[Event], now: float) -> None:
        opcode, status = packet[1], packet[3]
        data = packet[4:-2]
        if opcode == CMD_ACK:
            if self._pending:
                self._command_done(events, now)
            return
        if opcode == CMD_NAK:
            cause = data[0] if data else NAK_RESEND
            if not self._pending:
                return
            if cause == NAK_RESEND:
                self._retransmit(events, now, "nak")
            else:
                events.append(
                    problem("nak", f"decoder refused SSI command (cause {cause:#04x})", packet)
                )
                self._command_done(events, now)
            return
        # Everything else from the decoder is ACKed once it verified.
        events.append(Reply(ack()))
        self.acks_sent += 1
        identity = packet[:3] + packet[4:-2]
        if status & STATUS_RETRANSMIT and identity == self._last_accepted:
            return  # our ACK was lost; the decoder sent the same packet again
        self._last_accepted = identity
        if opcode != DECODE_DATA or not data:
            log.debug("SSI opcode %#04x from decoder ignored", opcode)
            return
        symbology, chunk = data[0], data[1:]
        if not self._over_long:
            self._chunks.append(chunk)
            self._chunks_len += len(chunk)
            if self._chunks_len > self.max_frame:
                self._over_long = True
                events.append(
                    problem(
                        "over_long",
                        f"SSI decode data longer than max_frame={self.max_frame}",
                        b"".join(self._chunks),
                    )
                )
        if status & STATUS_CONTINUATION:
            return
        if not self._over_long:
            events.append(Frame(b"".join(self._chunks), now, aim=SYMBOLOGY_AIM.get(symbology)))
        self._chunks.clear()
        self._chunks_len = 0
        self._over_long = False

    def poll(self, now: float) -> list[Event]:
        """Drop a partial packet after silence; retransmit unacknowledged commands."""
        events: list[Event] = []
        if (self._buf or self._garbage) and now >= self._last + self.idle_timeout:
            events.extend(self.flush_partial())
        if self._chunks and now >= self._last + self.ack_timeout * self.max_tries:
            events.append(problem("unterminated", "SSI multipacket never completed"))
            self._chunks.clear()
            self._chunks_len = 0
            self._over_long = False
        if self._pending and now >= self._pending[0].sent_at + self.ack_timeout:
            self._retransmit(events, now, "timeout")
        return events

    def flush_partial(self) -> list[Event]:
        """Report and drop bytes that never became a packet."""
        events: list[Event] = []
        self._garbage += self._buf
        self._buf.clear()
        self._flush_garbage(events)
        return events

    def deadline(self) -> float | None:
        """See :meth:`Framer.deadline`."""
        times = []
        if self._buf or self._garbage:
            times.append(self._last + self.idle_timeout)
        if self._chunks:
            times.append(self._last + self.ack_timeout * self.max_tries)
        if self._pending:
            times.append(self._pending[0].sent_at + self.ack_timeout)
        return min(times) if times else None

    def flush(self) -> list[DriverProblem]:
        """See :meth:`Framer.flush`."""
        events = [e for e in self.flush_partial() if isinstance(e, DriverProblem)]
        if self._chunks:
            events.append(problem("unterminated", "SSI multipacket cut off"))
        self._chunks.clear()
        self._chunks_len = 0
        self._over_long = False
        self._pending.clear()
        return events
