"""A scanner that exists only in this process: tests and demos inject frames and see signals.

Like python-can's virtual bus, channels live in a module-level registry under a
lock. ``inject(channel, data)`` queues a frame for every driver open on the channel
(and for the next one opened); ``signals(channel)`` lists the feedback the daemon gave;
``unplug``/``plug`` make the device vanish and return; ``replay`` pushes a recorded
serial trace (``tests/data/<device>/*.jsonl``) through the real framer.
"""

from __future__ import annotations

import collections
import json
import threading
import time
from functools import partial
from pathlib import Path
from typing import Any, Literal

from scanfleet.daemon.core.config import DeviceConfigBase
from scanfleet.daemon.core.errors import DeviceGoneError
from scanfleet.drivers.base import DeviceInfo, Driver, DriverProblem, ProblemCallback, Read, Signal


class VirtualDeviceConfig(DeviceConfigBase):
    """A scanner that exists only in software (tests, demos, replayed traces)."""

    driver: Literal["virtual"]
    channel: str = "default"


class _Channel:
    def __init__(self) -> None:
        self.frames: collections.deque[Read | DriverProblem] = collections.deque()
        self.signals: list[Signal] = []
        self.present = True
        self.generation = 0
        self.open_count = 0


_lock = threading.Condition()
_channels: dict[str, _Channel] = {}


def _channel(name: str) -> _Channel:
    chan = _channels.get(name)
    if chan is None:
        chan = _channels[name] = _Channel()
    return chan


def inject(channel: str, data: bytes, aim: str | None = None) -> None:
    """Queue one frame on *channel* as if the scanner had sent it."""
    with _lock:
        _channel(channel).frames.append(Read.now(data, aim=aim, port=f"virtual:{channel}"))
        _lock.notify_all()


def inject_problem(channel: str, problem: DriverProblem) -> None:
    """Queue a wire problem on *channel* (reported through ``on_problem``, never read)."""
    with _lock:
        _channel(channel).frames.append(problem)
        _lock.notify_all()


def signals(channel: str) -> list[Signal]:
    """Every signal given on *channel* so far, oldest first."""
    with _lock:
        return list(_channel(channel).signals)


def pending(channel: str) -> int:
    """Frames injected on *channel* and not read yet."""
    with _lock:
        return len(_channel(channel).frames)


def unplug(channel: str) -> None:
    """Make the device vanish: open fails and blocked reads raise DeviceGoneError."""
    with _lock:
        chan = _channel(channel)
        chan.present = False
        chan.generation += 1
        _lock.notify_all()


def plug(channel: str) -> None:
    """Bring an unplugged device back."""
    with _lock:
        _channel(channel).present = True
        _lock.notify_all()


def reset(channel: str | None = None) -> None:
    """Forget *channel* (or every channel): queued frames, signals, plug state."""
    with _lock:
        if channel is None:
            _channels.clear()
        else:
            _channels.pop(channel, None)
        _lock.notify_all()


def replay(channel: str, trace: Path, framing: str = "cr", max_frame: int = 4096) -> int:
    """Push a recorded serial trace through *framing* and inject what it yields.

    A trace is JSON lines ``{"t": seconds, "hex": "0d0a…"}`` of bytes as they came off
    the wire. Returns the number of frames injected; wire problems are injected too.
    """
    from scanfleet.drivers.framing import Frame
    from scanfleet.drivers.framing_presets import make_framer

    framer = make_framer(framing, max_frame=max_frame)
    count = 0
    for line in trace.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        record: dict[str, Any] = json.loads(line)
        t = float(record["t"])
        # Silence before this chunk ends partial frames, as it did on the wire.
        for event in [*framer.poll(t), *framer.feed(bytes.fromhex(record["hex"]), t)]:
            if isinstance(event, DriverProblem):
                inject_problem(channel, event)
            elif isinstance(event, Frame):
                inject(channel, event.data, aim=event.aim)
                count += 1
    for event in framer.flush():
        inject_problem(channel, event)
    return count


class VirtualDriver(Driver[VirtualDeviceConfig]):
    """The driver for ``driver = "virtual"`` devices."""

    driver_name = "virtual"

    def __init__(
        self, config: VirtualDeviceConfig, *, on_problem: ProblemCallback | None = None
    ) -> None:
        self.channel = config.channel
        with _lock:
            chan = _channel(self.channel)
            if not chan.present:
                raise DeviceGoneError(f"virtual channel {self.channel!r} is unplugged")
            chan.open_count += 1
            self._generation = chan.generation
        super().__init__(config, on_problem=on_problem)

    def _read(self, timeout: float | None) -> Read | None:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            with _lock:
                chan = _channel(self.channel)
                remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
                _lock.wait_for(partial(self._ready, chan), remaining)
                if chan.generation != self._generation:
                    raise DeviceGoneError(f"virtual channel {self.channel!r} was unplugged")
                item = chan.frames.popleft() if chan.frames else None
            if item is None:
                return None
            if isinstance(item, DriverProblem):
                # Reported outside the lock: the callback may log or take other locks.
                self.report(item)
                continue
            return item

    def _ready(self, chan: _Channel) -> bool:
        return chan.generation != self._generation or bool(chan.frames)

    def _signal(self, signal: Signal) -> None:
        with _lock:
            _channel(self.channel).signals.append(signal)
            _lock.notify_all()

    def _close(self) -> None:
        with _lock:
            _channel(self.channel).open_count -= 1

    @classmethod
    def detect(cls) -> list[DeviceInfo]:
        """Channels in use in this process."""
        with _lock:
            return [
                DeviceInfo(driver="virtual", path=f"virtual:{name}", reason="in-process channel")
                for name in sorted(_channels)
            ]
