"""A small JSON document kept in a preallocated file that writing can never fail for space.

The file is two fixed-size slots allocated once (``posix_fallocate``). Each write goes
to the slot not holding the newest copy, in place, with a generation counter and a
CRC, then ``fdatasync``: overwriting allocated blocks needs no free space, a torn
write damages only the slot being written, and a reader takes the valid slot with
the highest generation. Used for the journal's head (the highest seq ever handed
out, which must survive damage to the journal file) and for the status the daemon
publishes on a full disk.
"""

from __future__ import annotations

import json
import os
import struct
import threading
import zlib
from pathlib import Path
from typing import Any

MAGIC = b"SFS1"
_HEAD = struct.Struct(">4sQI")  # magic, generation, length
_CRC = struct.Struct(">I")
_ENCODER = json.JSONEncoder(sort_keys=True, separators=(",", ":"))
"""``json.dumps(…, sort_keys=True, separators=…)`` without building an encoder per write."""


class SlotFile:
    """Two-slot, CRC-checked, preallocated JSON document at *path*."""

    def __init__(self, path: Path, *, slot_size: int = 512, mode: int = 0o640) -> None:
        self.path = path
        self.slot_size = slot_size
        self.mode = mode
        self._lock = threading.Lock()
        self._generation: int | None = None
        self._fd: int | None = None

    @property
    def capacity(self) -> int:
        """Largest JSON document (bytes) a slot holds."""
        return self.slot_size - _HEAD.size - _CRC.size

    def load(self) -> dict[str, Any] | None:
        """The newest intact document, or None (no file, both slots damaged)."""
        try:
            data = self.path.read_bytes()
        except OSError:
            return None
        best: tuple[int, dict[str, Any]] | None = None
        for start in (0, self.slot_size):
            found = self._parse(data[start : start + self.slot_size])
            if found is not None and (best is None or found[0] > best[0]):
                best = found
        if best is None:
            return None
        with self._lock:
            self._generation = max(self._generation or 0, best[0])
        return best[1]

    def _parse(self, slot: bytes) -> tuple[int, dict[str, Any]] | None:
        if len(slot) < _HEAD.size + _CRC.size:
            return None
        magic, generation, length = _HEAD.unpack_from(slot)
        end = _HEAD.size + length
        if magic != MAGIC or end + _CRC.size > len(slot):
            return None
        (crc,) = _CRC.unpack_from(slot, end)
        if crc != zlib.crc32(slot[:end]):
            return None
        try:
            document = json.loads(slot[_HEAD.size : end])
        except ValueError:
            return None
        return (generation, document) if isinstance(document, dict) else None

    def preallocate(self) -> None:
        """Allocate both slots now (while there is space); idempotent."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, self.mode)
        try:
            if os.fstat(fd).st_size < 2 * self.slot_size:
                os.posix_fallocate(fd, 0, 2 * self.slot_size)
                os.fsync(fd)
        finally:
            os.close(fd)

    def store(self, document: dict[str, Any], *, sync: bool = True) -> None:
        """Write *document* to the older slot (and fdatasync it when *sync*).

        Raises OSError when the file cannot be written and ValueError when the document
        is larger than a slot.
        """
        self.store_encoded(_ENCODER.encode(document).encode(), sync=sync)

    def store_encoded(self, body: bytes, *, sync: bool = True) -> None:
        """:meth:`store` of a document already encoded as *body* (JSON, sorted keys,
        no spaces: what :meth:`load` parses)."""
        if len(body) > self.capacity:
            raise ValueError(f"{len(body)} bytes do not fit a {self.slot_size}-byte slot")
        with self._lock:
            if self._generation is None:
                self._lock.release()
                try:
                    self.load()
                finally:
                    self._lock.acquire()
            generation = (self._generation or 0) + 1
            head = _HEAD.pack(MAGIC, generation, len(body)) + body
            slot = head + _CRC.pack(zlib.crc32(head))
            slot += b"\0" * (self.slot_size - len(slot))
            if self._fd is None:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, self.mode)
                try:
                    if os.fstat(fd).st_size < 2 * self.slot_size:
                        os.posix_fallocate(fd, 0, 2 * self.slot_size)
                except OSError:
                    os.close(fd)
                    raise
                self._fd = fd
            os.pwrite(self._fd, slot, (generation % 2) * self.slot_size)
            if sync:
                os.fdatasync(self._fd)
            self._generation = generation

    def close(self) -> None:
        """Close the file kept open between writes (idempotent)."""
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
