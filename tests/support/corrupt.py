"""Damaging real journal files the way failing storage does: header, b-tree pages, WAL."""

from __future__ import annotations

import random
import struct
from pathlib import Path

PAGE = 4096
TABLE_INTERIOR = 0x05
TABLE_LEAF = 0x0D


def page_size(path: Path) -> int:
    raw = int.from_bytes(path.read_bytes()[16:18], "big")
    return 65536 if raw == 1 else raw or PAGE


def pages_of_type(path: Path, kind: int) -> list[int]:
    """Numbers of the pages whose b-tree type byte is *kind* (page 1 excluded)."""
    data = path.read_bytes()
    size = page_size(path)
    return [n + 1 for n in range(1, len(data) // size) if data[n * size] == kind]


def smash_page(path: Path, number: int, size: int = PAGE, fill: int = 0xA5) -> None:
    """Overwrite page *number* (1-based) entirely."""
    with path.open("r+b") as f:
        f.seek((number - 1) * size)
        f.write(bytes([fill]) * size)


def smash_header(path: Path) -> None:
    """Overwrite the 100-byte database header (SQLite then refuses the file)."""
    with path.open("r+b") as f:
        f.write(random.Random(5).randbytes(100))


def smash_wal_frame(path: Path, index: int) -> int:
    """Flip bytes in the page of WAL frame *index*; returns how many frames the WAL has."""
    wal = Path(str(path) + "-wal")
    data = bytearray(wal.read_bytes())
    size = struct.unpack(">I", data[8:12])[0]
    frames = (len(data) - 32) // (24 + size)
    pos = 32 + index * (24 + size) + 24 + size // 2
    data[pos : pos + 64] = bytes(b ^ 0xFF for b in data[pos : pos + 64])
    wal.write_bytes(bytes(data))
    return frames


def smash(path: Path, pattern: str) -> None:
    """Damage *path* by *pattern*: header, index (a records interior page), data (a
    records leaf page), wal (a frame in the middle of the WAL)."""
    if pattern == "header":
        smash_header(path)
    elif pattern == "index":
        interior = pages_of_type(path, TABLE_INTERIOR)
        assert interior, "the journal has no interior page yet"
        smash_page(path, interior[-1], page_size(path))
    elif pattern == "data":
        leaves = pages_of_type(path, TABLE_LEAF)
        assert len(leaves) > 2
        smash_page(path, leaves[len(leaves) // 2], page_size(path))
    elif pattern == "wal":
        frames = (Path(str(path) + "-wal").stat().st_size - 32) // (24 + PAGE)
        assert frames > 4, "the WAL holds too few frames to damage one in the middle"
        smash_wal_frame(path, frames // 2)
    else:
        raise ValueError(pattern)
