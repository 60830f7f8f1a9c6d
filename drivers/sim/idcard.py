"""A simulated SAM ID-card reader on a pseudo-terminal, speaking the protocol byte for byte.

The host side opens :attr:`IdCardSimulator.port` like a real reader's tty. The
simulator answers find / select / read / SAM commands from the cards placed on it,
and can add line noise, slow replies and injected status errors. Like a real reader,
a card that has been read is not found again until it leaves the field
(``find_after_read="fail"``); ``"found"`` models readers that keep finding it.

``scanfleet simulate idcard`` runs one from the command line.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import logging
import os
import random
import select
import threading
import time
import tty
from collections import deque
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Literal, Self

from scanfleet.drivers.idcard.protocol import (
    CardData,
    Command,
    FrameParser,
    Status,
    join_card_data,
    reply,
)
from scanfleet.drivers.idcard.text import CardType, encode_text

log = logging.getLogger(__name__)

_COMMANDS = {c.value: c for c in Command}


@dataclass(frozen=True)
class SimCard:
    """A card the simulator can hold: type, text fields, photo and chip numbers."""

    card_type: CardType
    fields: dict[str, str]
    fingerprint_len: Literal[0, 512, 1024] = 1024
    chip_sn: bytes = field(default=bytes(8))
    """The 8-byte chip serial the select reply carries."""

    def text(self) -> bytes:
        """The 256-byte text block."""
        return encode_text(self.card_type, self.fields)

    def photo(self) -> bytes:
        """A deterministic 1024-byte stand-in for the WLT photo."""
        seed = self.fields.get("id_number", "").encode()
        out = b""
        while len(out) < 1024:
            seed = hashlib.sha256(seed).digest()
            out += seed
        return out[:1024]

    def fingerprint(self) -> bytes:
        """A deterministic fingerprint block of ``fingerprint_len`` bytes."""
        return (self.photo()[::-1] * 2)[: self.fingerprint_len]


SAMPLE_CARDS: dict[str, SimCard] = {
    "mainland": SimCard(
        CardType.MAINLAND,
        {
            "name": "张三丰",
            "sex": "1",
            "nation": "01",
            "birth": "19491231",
            "address": "北京市朝阳区测试路1号",
            "id_number": "11010519491231002X",
            "authority": "北京市公安局朝阳分局",
            "valid_from": "20100101",
            "valid_to": "长期",
        },
        chip_sn=bytes.fromhex("0000000000000001"),
    ),
    "hk_macau_taiwan": SimCard(
        CardType.HK_MACAU_TAIWAN,
        {
            "name": "陈美玲",
            "sex": "2",
            "birth": "19940823",
            "address": "广东省深圳市福田区测试路2号",
            "id_number": "810000199408230021",
            "authority": "深圳市公安局",
            "valid_from": "20200101",
            "valid_to": "20250101",
            "pass_number": "H01234567",
            "issue_count": "01",
        },
        chip_sn=bytes.fromhex("0000000000000002"),
    ),
    "foreign_2017": SimCard(
        CardType.FOREIGN_2017,
        {
            "name_en": "SMITH, JOHN",
            "sex": "1",
            "id_number": "USA110085010100",
            "nationality": "USA",
            "name": "史密斯",
            "valid_from": "20170601",
            "valid_to": "20270601",
            "birth": "19850101",
            "card_version": "01",
            "authority_code": "1100",
        },
        chip_sn=bytes.fromhex("0000000000000003"),
    ),
    "foreign_2023": SimCard(
        CardType.FOREIGN_2023,
        {
            "name": "安娜",
            "sex": "2",
            "renewal_count": "00",
            "birth": "19850101",
            "name_en": "MUELLER-LUEDENSCHEIDT, ANNA-KATHARINA MARIA",
            "id_number": "932682198501010017",
            "valid_from": "20231201",
            "valid_to": "20331201",
            "nationality": "DEU",
        },
        chip_sn=bytes.fromhex("0000000000000004"),
    ),
    "bad_check": SimCard(
        CardType.MAINLAND,
        {
            "name": "李四",
            "sex": "1",
            "nation": "01",
            "birth": "19491231",
            "id_number": "110105194912310021",
            "valid_to": "长期",
        },
        chip_sn=bytes.fromhex("0000000000000005"),
    ),
}
"""Sample cards of every type (the numbers are public sample numbers, not people)."""


class SamResponder:
    """The reader's side of the protocol, without transport: cards, state and replies.

    :class:`IdCardSimulator` puts it on a pty; HIL tests put it behind a real tty or
    a USB-HID gadget.
    """

    def __init__(self, *, find_after_read: Literal["fail", "found"] = "fail") -> None:
        self.find_after_read = find_after_read
        self.requests: list[Command | None] = []
        """Every request received, in order (None for an unknown command)."""
        self._lock = threading.Lock()
        self._card: SimCard | None = None
        self._selected = False
        self._read_done = False
        self._injected: deque[tuple[Command, int]] = deque()

    def place(self, card: SimCard) -> None:
        """Put *card* on the reader (replacing any card there)."""
        with self._lock:
            self._card, self._selected, self._read_done = card, False, False

    def remove(self) -> None:
        """Take the card off the reader."""
        with self._lock:
            self._card, self._selected, self._read_done = None, False, False

    def inject(self, command: Command, status: int) -> None:
        """Answer the next *command* with *status* (and no data) instead of the normal reply."""
        with self._lock:
            self._injected.append((command, status))

    def count(self, command: Command) -> int:
        """How many *command* requests arrived so far."""
        return sum(1 for c in self.requests if c is command)

    def answer(self, body: bytes) -> bytes:
        """The reply frame to the request frame body *body*."""
        command = _COMMANDS.get((body[0], body[1])) if len(body) >= 2 else None
        self.requests.append(command)
        with self._lock:
            return self._reply(command)

    def _reply(self, command: Command | None) -> bytes:
        if command is None:
            return reply(Status.COMMAND)
        for i, (cmd, status) in enumerate(self._injected):
            if cmd is command:
                del self._injected[i]
                return reply(status)
        card = self._card
        if command in (Command.RESET_SAM, Command.SAM_STATUS):
            return reply(Status.OK)
        if command is Command.SAM_ID:
            return reply(Status.OK, bytes.fromhex("0501") + bytes(range(14)))
        gone = card is None or (self._read_done and self.find_after_read == "fail")
        if command is Command.FIND:
            return reply(Status.FIND_FAILED) if gone else reply(Status.CARD_FOUND, bytes(4))
        if command is Command.SELECT:
            if gone or card is None:
                return reply(Status.SELECT_FAILED)
            self._selected = True
            return reply(Status.OK, card.chip_sn)
        if card is None or not self._selected:
            return reply(Status.READ_FAILED)
        if command is Command.READ_NEWEST_ADDRESS:
            return reply(Status.NO_CONTENT)
        self._read_done = True
        self._selected = False
        data = CardData(card.text(), card.photo(), card.fingerprint())
        return reply(Status.OK, join_card_data(data, command))


class IdCardSimulator(SamResponder):
    """A reader on a pty. Start it, open :attr:`port` from the host side, place cards."""

    def __init__(
        self,
        *,
        noise: float = 0.0,
        delay: float = 0.0,
        find_after_read: Literal["fail", "found"] = "fail",
        seed: int = 0,
    ) -> None:
        super().__init__(find_after_read=find_after_read)
        self.noise = noise
        """Probability of garbage before a reply (half of those also send a corrupt copy first)."""
        self.delay = delay
        """Seconds to wait before every reply (slow reader)."""
        self._rng = random.Random(seed)  # noqa: S311 - test noise, not cryptography
        self._garbage: deque[bytes] = deque()
        self._master, self._slave = os.openpty()
        tty.setraw(self._slave)
        self.port = os.ttyname(self._slave)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="idcard-sim", daemon=True)

    def start(self) -> Self:
        """Start answering requests."""
        self._thread.start()
        return self

    def garble_next_reply(self, garbage: bytes) -> None:
        """Send *garbage* (line noise) right before the next reply frame."""
        self._garbage.append(garbage)

    def stop(self) -> None:
        """Stop and close the pty (the host side then sees the device gone)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(2.0)
        for fd in (self._master, self._slave):
            with contextlib.suppress(OSError):  # already closed
                os.close(fd)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _run(self) -> None:
        parser = FrameParser()
        while not self._stop.is_set():
            ready, _, _ = select.select([self._master], [], [], 0.1)
            if not ready:
                continue
            try:
                data = os.read(self._master, 4096)
            except OSError:
                return  # host closed and pty torn down
            for item in parser.feed(data):
                if isinstance(item, bytes):
                    self._send(self.answer(item))

    def _send(self, frame: bytes) -> None:
        if self.delay:
            time.sleep(self.delay)
        out = frame
        if self._garbage:
            out = self._garbage.popleft() + out
        elif self.noise and self._rng.random() < self.noise:
            garbage = bytes(self._rng.randrange(256) for _ in range(self._rng.randrange(1, 12)))
            out = garbage + frame
            if self._rng.random() < 0.5:
                # A corrupted copy first: the host must resync onto the good one.
                bad = bytearray(frame)
                bad[-1] ^= 0xFF
                out = garbage + bytes(bad) + frame
        try:
            os.write(self._master, out)
        except OSError:
            log.debug("idcard simulator: host side gone")


def register_idcard(simulate_subparsers: Any) -> None:
    """Add ``idcard`` under the ``scanfleet simulate`` command."""
    parser: argparse.ArgumentParser = simulate_subparsers.add_parser(
        "idcard",
        help="a SAM ID-card reader on a pseudo-terminal",
        description=(
            "Simulate a GA 467 SAM ID-card reader on a pty. The port is printed on stdout; "
            "cards from --card are placed and removed in turn."
        ),
    )
    parser.add_argument(
        "--card",
        action="append",
        choices=sorted(SAMPLE_CARDS),
        help="sample card to place (repeatable; default: mainland)",
    )
    parser.add_argument("--hold", type=float, default=3.0, help="seconds a card stays on")
    parser.add_argument("--gap", type=float, default=5.0, help="seconds between cards")
    parser.add_argument("--noise", type=float, default=0.0, help="probability of garbage")
    parser.add_argument("--delay", type=float, default=0.0, help="seconds before every reply")
    parser.add_argument("--once", action="store_true", help="place each card once, then idle")
    parser.set_defaults(func=_simulate)


def _simulate(args: argparse.Namespace) -> int:
    names = args.card or ["mainland"]
    sim = IdCardSimulator(noise=args.noise, delay=args.delay).start()
    print(sim.port, flush=True)
    try:
        while True:
            for name in names:
                time.sleep(args.gap)
                log.info("placing %s card", name)
                sim.place(SAMPLE_CARDS[name])
                time.sleep(args.hold)
                sim.remove()
            if args.once:
                while True:
                    time.sleep(3600)
    except KeyboardInterrupt:
        return 0
    finally:
        sim.stop()
