"""What a simulated serial scanner puts on the wire, and how it reads the host's bytes.

Pure functions and a small parser, separate from the pty and threads of
:mod:`scanfleet.drivers.sim.serial_scanner` so they can be tested from byte vectors.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from scanfleet.drivers import ssi
from scanfleet.drivers.feedback import (
    HONEYWELL_BEEP,
    HONEYWELL_MENU_PREFIX,
    SSI_BAD_READ_BEEP,
    SSI_GOOD_READ_BEEP,
)
from scanfleet.drivers.framing import TERMINATORS

HONEYWELL_CODE_ID = {"]C0": b"j", "]C1": b"I", "]E0": b"d", "]E4": b"D", "]d1": b"w",
                     "]d2": b"w", "]Q1": b"s", "]Q3": b"s", "]e0": b"y"}  # fmt: skip
"""Honeywell code ids (enioka_scan SymbologyId) for the AIM ids the code mix uses."""


@dataclass(frozen=True)
class FeedbackEvent:
    """Something the host sent, parsed: ``good_read``, ``bad_read``, ``beep_off``,
    ``ack``, ``nak``, ``param``, ``menu``, ``beep`` or ``unknown``."""

    t: float
    kind: str
    data: bytes


def encode_frame(
    framing: str, data: bytes, aim: str, suffix: bytes = b""
) -> tuple[bytes, bytes, str | None]:
    """``(wire bytes, Read.data a correct driver delivers, Read.aim it delivers)``.

    *data* is what the scanner transmits (with an AIM prefix when configured); *aim* the
    symbology, used by Honeywell packet mode, which carries it in the header instead.
    Not for SSI (see :func:`scanfleet.drivers.ssi.decode_data_packets`).
    """
    if framing in TERMINATORS:
        frame = data + TERMINATORS[framing]
        return frame, frame, None
    if framing == "suffix":
        return data + suffix, data + suffix, None
    if framing == "stx_etx":
        frame = b"\x02" + data + b"\x03"
        return frame, frame, None
    if framing == "idle":
        return data, data, None
    if framing == "honeywell_packet":
        body = data + b"\r"
        code_id = HONEYWELL_CODE_ID.get(aim, b"j")
        payload = b"MSGGET" + b"%04d" % len(body) + code_id + aim[1:3].encode() + b"\x1d" + body
        header = b"\x16\xfe" + len(payload).to_bytes(4, "little") + b"\r"
        return header + payload, data, aim
    raise ValueError(f"no line encoding for framing {framing!r}")


@dataclass
class HostBytes:
    """Parses what the host sends a scanner: feedback, ACK/NAK, configuration commands.

    :meth:`feed` returns the replies the scanner owes (SSI ACKs, Honeywell menu replies)
    and appends to :attr:`events`; ``acks`` collects ``"ack"``/``"nak"`` answers to the
    scanner's own SSI packets.
    """

    ssi_mode: bool
    good_read: bytes | None = None
    bad_read: bytes | None = None
    events: list[FeedbackEvent] = field(default_factory=list)
    acks: list[str] = field(default_factory=list)
    own_beep: bool = True
    naks: int = 0
    _buf: bytearray = field(default_factory=bytearray)

    def clear(self) -> None:
        """Forget a partial command (the cable was pulled)."""
        self._buf.clear()

    def feed(self, data: bytes, now: float) -> list[bytes]:
        """Consume *data*; return the replies to send back."""
        self._buf += data
        return self._ssi(now) if self.ssi_mode else self._plain(now)

    def _event(self, now: float, kind: str, data: bytes | bytearray) -> None:
        self.events.append(FeedbackEvent(now, kind, bytes(data)))

    def _ssi(self, now: float) -> list[bytes]:
        buf, replies = self._buf, []
        while buf:
            length = buf[0]
            if length < 4:
                self._event(now, "unknown", buf[:1])
                del buf[0]
                continue
            if len(buf) < length + 2:
                break
            packet = bytes(buf[: length + 2])
            del buf[: length + 2]
            if not ssi.checksum_ok(packet):
                self._event(now, "unknown", packet)
                replies.append(ssi.nak(source=ssi.SOURCE_DECODER))
                continue
            opcode, data = packet[1], packet[4:-2]
            if opcode in (ssi.CMD_ACK, ssi.CMD_NAK):
                kind = "ack" if opcode == ssi.CMD_ACK else "nak"
                self._event(now, kind, packet)
                self.acks.append(kind)
                self.naks += kind == "nak"
                continue
            if opcode == ssi.BEEP and data:
                kinds = {SSI_GOOD_READ_BEEP: "good_read", SSI_BAD_READ_BEEP: "bad_read"}
                self._event(now, kinds.get(data[0], "beep"), packet)
            elif opcode == ssi.PARAM_SEND:
                pairs = dict(zip(data[1::2], data[2::2], strict=False))
                if pairs.get(ssi.PARAM_BEEP_AFTER_GOOD_DECODE) == 0:
                    self.own_beep = False
                    self._event(now, "beep_off", packet)
                else:
                    self._event(now, "param", packet)
            else:
                self._event(now, "unknown", packet)
            replies.append(ssi.ack(source=ssi.SOURCE_DECODER))
        return replies

    def _plain(self, now: float) -> list[bytes]:
        buf, replies = self._buf, []
        patterns = [
            (b, k) for b, k in ((self.good_read, "good_read"), (self.bad_read, "bad_read")) if b
        ]
        patterns.append((HONEYWELL_BEEP, "good_read"))
        while buf:
            hit = next((p for p in patterns if buf.startswith(p[0])), None)
            if hit is not None:
                self._event(now, hit[1], hit[0])
                del buf[: len(hit[0])]
                continue
            if any(p.startswith(bytes(buf)) for p, _ in patterns):
                break  # a prefix of a known command: wait for the rest
            if buf.startswith(HONEYWELL_MENU_PREFIX) or HONEYWELL_MENU_PREFIX.startswith(buf):
                ends = [i for i in (buf.find(b"!"), buf.find(b".")) if i >= 0]
                if not ends:
                    break
                command = bytes(buf[len(HONEYWELL_MENU_PREFIX) : min(ends)])
                del buf[: min(ends) + 1]
                if command == b"BEPBEP0":
                    self.own_beep = False
                    self._event(now, "beep_off", command)
                else:
                    self._event(now, "menu", command)
                # Honeywell answers with the command, ACK (06) and the terminator.
                replies.append(command + b"\x06!")
                continue
            self._event(now, "unknown", buf[:1])
            del buf[0]
        return replies
