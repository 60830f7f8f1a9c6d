"""A serial barcode scanner on a pseudo-terminal, speaking real bytes.

:class:`SerialScannerSimulator` opens a pty (raw mode), optionally keeps a stable
symlink to it (like ``/dev/serial/by-id/…``), and emits the realistic code mix of
:mod:`scanfleet.drivers.sim.codes` in any framing preset: CR/LF/CRLF/suffix/STX-ETX
lines, Honeywell packet mode, or Zebra SSI with the full ACK/NAK handshake
(retransmission on NAK or silence, multipacket for long data). It can add noise,
over-long frames and wrong terminators, and it can be unplugged and plugged back.

Every byte the host sends is recorded with its time, and parsed into
:class:`FeedbackEvent` objects (good-read and bad-read signals, ACKs, NAKs, the
beep-off command), so tests can count good-read beeps. It only transmits while a host
has the port open (a closed slave shows as POLLHUP on the master), like a scanner
whose cable is plugged into a listening port.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import queue
import random
import select
import struct
import termios
import threading
import time
import tty
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

from scanfleet.drivers import ssi
from scanfleet.drivers.framing import TERMINATORS
from scanfleet.drivers.sim.codes import CodeSample, generate_sample
from scanfleet.drivers.sim.wire import FeedbackEvent, HostBytes, encode_frame

__all__ = ["FeedbackEvent", "SentCode", "SerialScannerSimulator"]

log = logging.getLogger(__name__)

FRAMINGS = ("cr", "lf", "crlf", "suffix", "stx_etx", "idle", "honeywell_packet", "ssi")


@dataclass(frozen=True)
class SentCode:
    """One code the scanner transmitted."""

    index: int
    sample: CodeSample
    frame: bytes
    """What a correct driver delivers as ``Read.data`` for it."""
    aim: str | None
    """What a correct driver delivers as ``Read.aim`` (known from the transport)."""
    clean: bool
    """False when it was sent damaged on purpose (wrong terminator, over-long)."""
    t: float
    acked: bool = True
    """SSI: the host acknowledged every packet (False when the scanner gave up)."""


@dataclass
class _Anomalies:
    noise_every: int = 0
    overlong_every: int = 0
    wrong_terminator_every: int = 0
    corrupt_every: int = 0
    overlong_length: int = 5000
    noise_gap: float = 0.8


class SerialScannerSimulator:
    """A pty scanner. ``start()`` runs it in background threads; ``stop()`` ends it."""

    def __init__(
        self,
        *,
        framing: str = "cr",
        suffix: bytes = b"",
        aim: bool = False,
        rate: float = 10.0,
        count: int | None = None,
        seed: int = 0,
        link: str | Path | None = None,
        codes: list[bytes] | None = None,
        noise_every: int = 0,
        overlong_every: int = 0,
        wrong_terminator_every: int = 0,
        corrupt_every: int = 0,
        overlong_length: int = 5000,
        good_read: bytes | None = None,
        bad_read: bytes | None = None,
        ack_timeout: float = 1.0,
        settle: float = 0.3,
        auto: bool = True,
    ) -> None:
        if framing not in FRAMINGS:
            raise ValueError(f"unknown framing {framing!r}")
        if framing == "suffix" and not suffix:
            raise ValueError("framing 'suffix' needs suffix bytes")
        self.framing = framing
        self.suffix = suffix
        self.aim = aim
        self.rate = rate
        self.count = count if codes is None else len(codes)
        self.link = Path(link) if link else None
        self.anomalies = _Anomalies(
            noise_every, overlong_every, wrong_terminator_every, corrupt_every, overlong_length
        )
        self.good_read = good_read
        self.bad_read = bad_read
        self.ack_timeout = ack_timeout
        self.settle = settle
        self.sent: list[SentCode] = []
        self.received: list[tuple[float, bytes]] = []
        self.retransmissions = 0
        self._host = HostBytes(framing == "ssi", good_read, bad_read)
        self._codes = list(codes) if codes is not None else None
        self._auto = auto
        self._manual: queue.Queue[CodeSample] = queue.Queue()
        self._running = threading.Event()
        self._running.set()
        self._rng = random.Random(seed)  # noqa: S311 - simulation, not cryptography
        self._lock = threading.Condition()
        self._wlock = threading.Lock()
        self._acks: queue.Queue[str] = queue.Queue()
        self._stop = threading.Event()
        self._connected = threading.Event()
        self._threads: list[threading.Thread] = []
        self._idle = True
        self._emitting = False
        self._master = -1
        self._fd_lock = threading.Lock()
        self._generation = 0
        self.path = ""
        self._started = False
        self._open_pty()
        # Like a powered scanner, it answers host commands from the moment it exists.
        self._spawn(self._rx_loop, "rx")

    # -- pty -------------------------------------------------------------------------

    def _open_pty(self) -> None:
        master, slave = os.openpty()
        tty.setraw(slave)
        name = os.ttyname(slave)
        # Only the host keeps the slave open: POLLHUP on the master then means "no host".
        os.close(slave)
        os.set_blocking(master, False)
        self._master = master
        self.tty = name
        if self.link is not None:
            tmp = self.link.with_name(self.link.name + ".new")
            tmp.unlink(missing_ok=True)
            tmp.symlink_to(name)
            tmp.replace(self.link)
            self.path = str(self.link)
        else:
            self.path = name
        log.info("simulated scanner on %s (%s)", self.path, self.framing)

    def disconnect(self, *, drain: float = 5.0) -> None:
        """Pull the cable between two scans: the pty disappears and the host's reads fail.

        With *drain* > 0 the scanner first finishes the code in progress and waits (up
        to *drain* seconds) until the host has read every byte already written, so
        ``sent`` stays an exact account of what a correct host received.
        """
        was_running = self._running.is_set()
        self._running.clear()
        end = time.monotonic() + drain
        while drain and self._emitting and time.monotonic() < end:
            time.sleep(0.01)
        if drain:
            self._wait_drained(end)
        # The fd lock guarantees no other thread is inside a syscall on the master when
        # it closes, so a later fd with the same number is never written to by mistake.
        with self._fd_lock:
            if self._master >= 0:
                os.close(self._master)
                self._master = -1
            self._generation += 1
            if self.link is not None:
                # udev removes /dev/serial/by-id links on unplug; a stale link could lead
                # the host to whatever pty reuses the number (another process's).
                self.link.unlink(missing_ok=True)
        with self._lock:
            self._connected.clear()
            self._lock.notify_all()
        if was_running:
            self._running.set()

    def _wait_drained(self, end: float) -> None:
        """Wait until the slave's input queue (bytes the host has not read) is empty."""
        try:
            fd = os.open(self.tty, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        except OSError:
            return  # already gone
        pending = -1
        try:
            while time.monotonic() < end:
                pending = struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0" * 4))[0]
                if pending == 0:
                    return
                time.sleep(0.01)
            log.warning("simulated scanner: host left %d bytes unread at disconnect", pending)
        finally:
            os.close(fd)

    def reconnect(self) -> None:
        """Plug it back in: a new pty; the ``link`` symlink (if any) follows it."""
        with self._fd_lock:
            if self._master < 0:
                self._open_pty()
        with self._lock:
            self._host.clear()
            self._lock.notify_all()

    def _host_present(self) -> bool:
        with self._fd_lock:
            fd = self._master
            if fd < 0:
                return False
            poller = select.poll()
            poller.register(fd, select.POLLIN | select.POLLHUP)
            return not any(ev & select.POLLHUP for _, ev in poller.poll(0))

    # -- lifecycle -------------------------------------------------------------------

    def _spawn(self, target: Any, name: str) -> None:
        thread = threading.Thread(target=target, name=f"sim-scanner-{name}", daemon=True)
        thread.start()
        self._threads.append(thread)

    def start(self) -> Self:
        """Start transmitting codes (once a host opens the port)."""
        if not self._started:
            self._started = True
            self._spawn(self._emit_loop, "emit")
        return self

    def stop(self) -> None:
        """Stop both threads and close the pty; removes the symlink."""
        self._stop.set()
        with self._lock:
            self._lock.notify_all()
        for thread in self._threads:
            thread.join(5.0)
        self.disconnect(drain=0)
        if self.link is not None:
            self.link.unlink(missing_ok=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def done(self) -> bool:
        """True when ``count`` codes have been sent (and no queued code is pending)."""
        if not self._auto:
            return self._manual.empty() and self._idle
        return self.count is not None and len(self.sent) >= self.count

    def wait_done(self, timeout: float) -> bool:
        """Block until every code was sent (or *timeout*)."""
        end = time.monotonic() + timeout
        with self._lock:
            while not self.done:
                remaining = end - time.monotonic()
                if remaining <= 0:
                    return False
                self._lock.wait(min(remaining, 0.2))
        return True

    @property
    def feedback(self) -> list[FeedbackEvent]:
        """Everything the host sent, parsed, oldest first (live list; copy under ``_lock``)."""
        return self._host.events

    @property
    def own_beep(self) -> bool:
        """The scanner's own decode beep; the host turns it off at bind."""
        return self._host.own_beep

    @property
    def naks_received(self) -> int:
        """SSI NAKs the host sent for the scanner's packets."""
        return self._host.naks

    def events(self, kind: str) -> list[FeedbackEvent]:
        """Feedback events of one kind."""
        with self._lock:
            return [e for e in self.feedback if e.kind == kind]

    # -- transmitting ----------------------------------------------------------------

    def send(self, data: bytes, aim: str = "]C0") -> None:
        """Queue one specific code (sent by the emit thread, after any auto codes due)."""
        from scanfleet.daemon.core.model import Kind

        self._manual.put(CodeSample(data, aim, Kind.UNKNOWN, "manual"))

    def write_raw(self, data: bytes) -> None:
        """Put *data* on the wire now, unframed (noise, a hand-made packet…)."""
        self._write(data)

    def pause(self) -> None:
        """Stop transmitting after the code in progress (e.g. before pulling the cable)."""
        with self._lock:
            self._running.clear()
            self._lock.notify_all()

    def resume(self) -> None:
        """Transmit again after :meth:`pause`."""
        self._running.set()

    def _samples(self) -> Iterator[CodeSample]:
        if not self._auto:
            while not self._stop.is_set():
                try:
                    yield self._manual.get(timeout=0.1)
                except queue.Empty:
                    continue
            return
        if self._codes is not None:
            from scanfleet.daemon.core.model import Kind

            for data in self._codes:
                yield CodeSample(data, "]C0", Kind.UNKNOWN, "given")
            return
        while True:
            yield generate_sample(self._rng)

    def _wait_host(self) -> bool:
        """Wait until a host has the port open (and had time to flush its input)."""
        while not self._stop.is_set():
            if not self._running.is_set():
                self._stop.wait(0.05)
                continue
            if self._host_present():
                if not self._connected.is_set():
                    # pyserial flushes its input right after opening: let it.
                    self._stop.wait(self.settle)
                    if not self._host_present():
                        continue
                    self._connected.set()
                return True
            self._connected.clear()
            self._stop.wait(0.05)
        return False

    def _emit_loop(self) -> None:
        interval = 1.0 / self.rate if self.rate > 0 else 0.0
        index = 0
        for sample in self._samples():
            if self._auto and self.count is not None and index >= self.count:
                return
            self._idle = False
            if not self._wait_host():
                return
            index += 1
            self._emitting = True
            try:
                self._emit(index, sample)
            except OSError as err:
                log.debug("simulated scanner: write failed (%s); waiting for the host", err)
                continue
            finally:
                self._emitting = False
                self._idle = True
            if interval:
                self._stop.wait(interval)
            if self._stop.is_set():
                return

    def _every(self, n: int, index: int) -> bool:
        return n > 0 and index % n == 0

    def _emit(self, index: int, sample: CodeSample) -> None:
        a = self.anomalies
        if self._every(a.noise_every, index):
            noise = bytes(self._rng.randrange(0x80, 0x100) for _ in range(self._rng.randint(8, 32)))
            self._write(noise)
            # A burst of line noise, then quiet: the driver resyncs on the silence.
            self._stop.wait(a.noise_gap)
        if self.framing == "ssi":
            self._emit_ssi(index, sample)
            return
        # Honeywell packet mode carries the AIM id in its header, never in the data.
        data = sample.data if self.framing == "honeywell_packet" else sample.raw(aim=self.aim)
        clean = True
        if self._every(a.overlong_every, index) and self.framing != "honeywell_packet":
            data = b"9" * a.overlong_length
            clean = False
        wire, expected, aim = encode_frame(self.framing, data, sample.aim, self.suffix)
        if clean and self._every(a.wrong_terminator_every, index) and self.framing in TERMINATORS:
            wrong = b"\n" if self.framing == "cr" else b"\r"
            wire = expected = wire[: -len(TERMINATORS[self.framing])] + wrong
            clean = False
        self._write(wire)
        self._record(SentCode(index, sample, expected, aim, clean, time.monotonic()))

    def _emit_ssi(self, index: int, sample: CodeSample) -> None:
        symbology = ssi.AIM_TO_SYMBOLOGY.get(sample.aim, 0x03)
        data = sample.data
        clean = True
        if self._every(self.anomalies.overlong_every, index):
            data = b"9" * self.anomalies.overlong_length
            clean = False
        acked = True
        for number, packet in enumerate(ssi.decode_data_packets(data, symbology)):
            corrupt = number == 0 and self._every(self.anomalies.corrupt_every, index)
            acked = self._send_until_acked(packet, corrupt=corrupt) and acked
            if not acked:
                break
        self._record(
            SentCode(
                index,
                sample,
                data,
                ssi.SYMBOLOGY_AIM.get(symbology),
                clean,
                time.monotonic(),
                acked,
            )
        )

    def _send_until_acked(self, packet: bytes, *, corrupt: bool, tries: int = 3) -> bool:
        for attempt in range(tries):
            while not self._acks.empty():
                self._acks.get_nowait()
            out = ssi.with_retransmit_bit(packet) if attempt else packet
            if corrupt and attempt == 0:
                out = out[:-1] + bytes(((out[-1] + 1) & 0xFF,))
            if attempt:
                self.retransmissions += 1
            self._write(out)
            try:
                answer = self._acks.get(timeout=self.ack_timeout)
            except queue.Empty:
                continue
            if answer == "ack":
                return True
        return False

    def _record(self, sent: SentCode) -> None:
        with self._lock:
            self.sent.append(sent)
            self._lock.notify_all()

    def _write(self, data: bytes) -> None:
        with self._wlock:
            view = memoryview(data)
            generation = self._generation
            while view:
                with self._fd_lock:
                    fd = self._master
                    if fd < 0 or generation != self._generation or self._stop.is_set():
                        raise OSError("scanner disconnected")
                    try:
                        n = os.write(fd, view)
                    except BlockingIOError:
                        n = -1
                if n < 0:
                    # The host is slow: wait outside the fd lock so a disconnect can proceed.
                    # A closed fd (disconnect) fails here; the check above raises next time.
                    with contextlib.suppress(OSError, ValueError):
                        select.select([], [fd], [], 0.1)
                    continue
                view = view[n:]

    # -- receiving -------------------------------------------------------------------

    def _rx_loop(self) -> None:
        while not self._stop.is_set():
            with self._fd_lock:
                fd, generation = self._master, self._generation
            if fd < 0:
                self._stop.wait(0.05)
                continue
            try:
                # Waiting happens outside the fd lock; the read below re-checks that the
                # fd is still this pty's (a disconnect may have closed it meanwhile).
                if not select.select([fd], [], [], 0.1)[0]:
                    continue
            except (OSError, ValueError):
                continue
            with self._fd_lock:
                if generation != self._generation:
                    continue
                try:
                    ready = bool(select.select([fd], [], [], 0)[0])
                    data = os.read(fd, 4096) if ready else b""
                except OSError:
                    data = b""  # EIO while no host has the port open
            if not data:
                self._stop.wait(0.05)
                continue
            now = time.monotonic()
            with self._lock:
                self.received.append((now, data))
                replies = self._host.feed(data, now)
                for answer in self._host.acks:
                    self._acks.put(answer)
                self._host.acks.clear()
                self._lock.notify_all()
            for reply in replies:
                self._reply(reply)

    def _reply(self, data: bytes) -> None:
        try:
            self._write(data)
        except OSError as err:
            log.debug("simulated scanner: reply failed: %s", err)
