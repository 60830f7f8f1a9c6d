"""Host ends of the guest's serial lines: QEMU chardev unix sockets as byte streams."""

from __future__ import annotations

import socket
import time


class ByteStream:
    """A connected QEMU chardev socket (FTDI usb-serial, 16550 UART). Reads time out."""

    def __init__(self, path: str, name: str, timeout: float = 30.0) -> None:
        self.path = path
        self.name = name
        deadline = time.monotonic() + timeout
        while True:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                self._sock.connect(path)
                return
            except (FileNotFoundError, ConnectionRefusedError):
                self._sock.close()
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def write(self, data: bytes) -> None:
        """Send *data* to the guest's serial port."""
        self._sock.sendall(data)

    def read(self, count: int, timeout: float = 10.0) -> bytes:
        """Exactly *count* bytes from the guest, or :class:`TimeoutError` naming what came."""
        data = b""
        deadline = time.monotonic() + timeout
        while len(data) < count:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(
                    f"{self.name}: {len(data)} of {count} bytes in {timeout} s: {data[:64]!r}"
                )
            self._sock.settimeout(remaining)
            try:
                chunk = self._sock.recv(count - len(data))
            except TimeoutError:
                continue
            if not chunk:
                raise ConnectionError(f"{self.name}: QEMU closed the chardev socket")
            data += chunk
        return data

    def read_until(self, terminator: bytes, timeout: float = 10.0) -> bytes:
        """Bytes up to and including *terminator*."""
        data = b""
        deadline = time.monotonic() + timeout
        while not data.endswith(terminator):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"{self.name}: no {terminator!r} in {timeout} s: {data[-64:]!r}")
            data += self.read(1, remaining)
        return data

    def drain(self, quiet: float = 0.05) -> bytes:
        """Discard whatever is pending (left by an earlier test); return it."""
        data = b""
        self._sock.settimeout(quiet)
        while True:
            try:
                chunk = self._sock.recv(65536)
            except TimeoutError:
                return data
            if not chunk:
                return data
            data += chunk

    def close(self) -> None:
        """Disconnect (QEMU keeps the device)."""
        self._sock.close()
