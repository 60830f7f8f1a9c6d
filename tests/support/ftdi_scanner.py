"""A serial scanner on QEMU's FTDI (``usb-serial`` with a unix-socket chardev), host end."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

SEND_INTERVAL = 2.0


class FtdiScanner:
    """Every SEND_INTERVAL seconds sends the frames *frames()* returns; keeps what comes back.

    *frames* is asked each time (e.g. "CODE\\r while a flag file the guest made exists"),
    so a guest script decides when codes are scanned. ``received`` collects the beeps.
    """

    def __init__(self, path: Path, frames: Callable[[], Sequence[bytes]]) -> None:
        self.path = path
        self.frames = frames
        self.received = bytearray()
        self.sent = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self.path.exists() and not self._stop.wait(0.2):
            pass
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(str(self.path))
        except OSError:
            return
        sock.settimeout(0.5)
        with sock:
            next_send = 0.0
            while not self._stop.is_set():
                if time.monotonic() >= next_send:
                    next_send = time.monotonic() + SEND_INTERVAL
                    try:
                        for frame in self.frames():
                            sock.sendall(frame)
                            self.sent += 1
                    except OSError:
                        return
                try:
                    data = sock.recv(4096)
                except TimeoutError:
                    continue
                except OSError:
                    return
                if not data:
                    return
                self.received += data

    def stop(self) -> None:
        """Stop sending."""
        self._stop.set()
        self._thread.join(5)
