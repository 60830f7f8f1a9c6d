"""ID-card readers behind a vendor USB-HID wrapper (Miaxis/中正 layout): ``idcard_usb``.

Every transfer is one 64-byte packet, no report id::

    request : 88 | SRN(2) | LEN(2, LE) = len(frame) + 1 | B1 | SAM frame | SUM16(LE) | pad
    reply   : AA | SRN(2) | LEN(2, LE) | RESULT | pkt no.(2) | ≤ 54 frame bytes | SUM16(LE) | pad

SUM16 is the additive sum of the bytes from the LEN field to the end of the payload.
A long SAM reply (a card read) spans ``ceil((LEN + 7) / 54)`` reply packets; the
first one carries the SAM LEN. (Reply LEN counts RESULT and the data that follows.)
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from scanfleet.daemon.core.errors import DeviceGoneError, DriverTimeoutError, DriverUnavailableError
from scanfleet.drivers.base import ProblemCallback
from scanfleet.drivers.idcard.protocol import HEADER_LEN, PREAMBLE, FrameError, parse_frame
from scanfleet.drivers.idcard.reader import IdCardDeviceConfig, IdCardReader

log = logging.getLogger(__name__)

PACKET = 64
REQUEST_FLAG = 0x88
REPLY_FLAG = 0xAA
IDCARD_COMMAND = 0xB1
CHUNK = 54
"""SAM-frame bytes per reply packet."""
MAX_REQUEST_FRAME = PACKET - 8


class HidPacketError(FrameError):
    """A 64-byte packet that is not a valid wrapper packet."""


def sum16(data: bytes) -> int:
    """Additive 16-bit checksum."""
    return sum(data) & 0xFFFF


def hid_request(frame: bytes, srn: int = 0) -> bytes:
    """Wrap a SAM request frame into one 64-byte request packet."""
    if len(frame) > MAX_REQUEST_FRAME:
        raise HidPacketError(f"request frame of {len(frame)} bytes does not fit a packet")
    head = bytes([REQUEST_FLAG]) + srn.to_bytes(2, "big") + (len(frame) + 1).to_bytes(2, "little")
    packet = head + bytes([IDCARD_COMMAND]) + frame
    packet += sum16(packet[3:]).to_bytes(2, "little")
    return packet.ljust(PACKET, b"\x00")


def parse_hid_request(packet: bytes) -> bytes:
    """The SAM frame inside a request packet (simulator side)."""
    if len(packet) < 8 or packet[0] != REQUEST_FLAG or packet[5] != IDCARD_COMMAND:
        raise HidPacketError("not a request packet", packet)
    n = int.from_bytes(packet[3:5], "little")
    end = 5 + n
    if n < 1 or end + 2 > len(packet):
        raise HidPacketError(f"request LEN {n} does not fit the packet", packet)
    if sum16(packet[3:end]) != int.from_bytes(packet[end : end + 2], "little"):
        raise HidPacketError("request SUM16 mismatch", packet)
    return packet[6:end]


@dataclass(frozen=True)
class HidReply:
    """One reply packet: result byte and the SAM-frame chunk it carries."""

    result: int
    number: int
    chunk: bytes


def parse_hid_reply(packet: bytes) -> HidReply:
    """Check and unwrap one reply packet.

    :raises HidPacketError: wrong flag, LEN out of range or SUM16 mismatch.
    """
    if len(packet) < 8 or packet[0] != REPLY_FLAG:
        raise HidPacketError("not a reply packet", packet)
    n = int.from_bytes(packet[3:5], "little")
    end = 5 + n
    if n < 3 or end + 2 > len(packet):
        raise HidPacketError(f"reply LEN {n} does not fit the packet", packet)
    if sum16(packet[3:end]) != int.from_bytes(packet[end : end + 2], "little"):
        raise HidPacketError("reply SUM16 mismatch", packet)
    return HidReply(packet[5], int.from_bytes(packet[6:8], "big"), packet[8:end])


def hid_reply_packets(frame: bytes, result: int = 0, srn: int = 0) -> list[bytes]:
    """Split a SAM reply frame into reply packets (simulator and tests)."""
    packets = []
    for number, pos in enumerate(range(0, len(frame), CHUNK)):
        chunk = frame[pos : pos + CHUNK]
        body = bytes([result]) + number.to_bytes(2, "big") + chunk
        packet = bytes([REPLY_FLAG]) + srn.to_bytes(2, "big") + len(body).to_bytes(2, "little")
        packet += body
        packet += sum16(packet[3:]).to_bytes(2, "little")
        packets.append(packet.ljust(PACKET, b"\x00"))
    return packets


class HidReassembler:
    """Collects reply packets until the SAM frame they carry is complete."""

    def __init__(self) -> None:
        self._frame = b""

    def add(self, packet: bytes) -> bytes | None:
        """Add one packet; return the SAM frame body once complete.

        :raises FrameError: a bad packet, or a frame that does not parse.
        """
        self._frame += parse_hid_reply(packet).chunk
        if len(self._frame) < HEADER_LEN:
            if not PREAMBLE.startswith(self._frame[: len(PREAMBLE)]):
                raise HidPacketError("reply does not start with the SAM preamble")
            return None
        total = HEADER_LEN + int.from_bytes(self._frame[5:7], "big")
        if len(self._frame) < total:
            return None
        return parse_frame(self._frame[:total])


class IdCardUsbDriver(IdCardReader):
    """A SAM reader behind the 64-byte HID wrapper, through pyusb (libusb)."""

    driver_name = "idcard_usb"

    def __init__(
        self, config: IdCardDeviceConfig, *, on_problem: ProblemCallback | None = None
    ) -> None:
        try:
            import usb.core
            import usb.util
        except ImportError as err:
            raise DriverUnavailableError(
                "idcard_usb", "pyusb (pip install 'scanfleet[usb]')", str(err)
            ) from err
        self._usb = usb
        vid, pid = (int(x, 16) for x in config.usb.split(":"))
        self.vid_pid = config.usb.lower()
        try:
            dev = usb.core.find(idVendor=vid, idProduct=pid)
        except usb.core.NoBackendError as err:
            raise DriverUnavailableError("idcard_usb", "libusb", str(err)) from err
        if dev is None:
            raise DeviceGoneError(f"no USB device {config.usb}")
        self._dev = dev
        try:
            if dev.is_kernel_driver_active(0):
                dev.detach_kernel_driver(0)
            dev.set_configuration()
            intf = dev.get_active_configuration()[(0, 0)]
            self._ep_out = usb.util.find_descriptor(
                intf,
                custom_match=lambda e: (
                    usb.util.endpoint_direction(e.bEndpointAddress) == usb.util.ENDPOINT_OUT
                ),
            )
            self._ep_in = usb.util.find_descriptor(
                intf,
                custom_match=lambda e: (
                    usb.util.endpoint_direction(e.bEndpointAddress) == usb.util.ENDPOINT_IN
                ),
            )
            usb.util.claim_interface(dev, 0)
        except usb.core.USBError as err:
            raise DeviceGoneError(f"cannot claim USB device {config.usb}: {err}") from err
        if self._ep_in is None or self._ep_out is None:
            raise DeviceGoneError(f"USB device {config.usb} has no IN/OUT endpoint pair")
        self.port = f"usb:{self.vid_pid}"
        super().__init__(config, on_problem=on_problem)
        try:
            self.check_sam()
        except BaseException:
            self.close()
            raise

    def _close(self) -> None:
        try:
            self._usb.util.release_interface(self._dev, 0)
            self._usb.util.dispose_resources(self._dev)
        except self._usb.core.USBError as err:
            log.debug("idcard_usb: release failed (device gone?): %s", err)

    def _drain(self) -> None:
        # Stale packets from a timed-out exchange must not answer this one.
        while True:
            try:
                self._ep_in.read(PACKET, timeout=5)
            except self._usb.core.USBTimeoutError:
                return
            except self._usb.core.USBError:
                return

    def _transact(self, frame: bytes, timeout: float) -> bytes:
        usb = self._usb
        try:
            self._drain()
            self._ep_out.write(hid_request(frame), timeout=int(timeout * 1000))
            deadline = time.monotonic() + timeout
            assembler = HidReassembler()
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise DriverTimeoutError(f"no reply within {timeout:.2f} s")
                try:
                    packet = bytes(self._ep_in.read(PACKET, timeout=max(1, int(remaining * 1000))))
                except usb.core.USBTimeoutError:
                    continue
                if not packet:
                    continue  # a zero-length packet after a full 64-byte report
                body = assembler.add(packet)
                if body is not None:
                    return body
        except usb.core.USBTimeoutError as err:
            raise DriverTimeoutError(f"USB write timed out: {err}") from err
        except usb.core.USBError as err:
            raise DeviceGoneError(f"USB {self.vid_pid}: {err}") from err
