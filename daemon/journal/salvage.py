"""Reading records out of a damaged journal file, page by page, without SQLite.

SQLite refuses a file whose header or b-tree interior pages are damaged, and silently
ignores the WAL from the first frame whose checksum fails. Journal records carry their
own proof (seq, hash over canonical JSON), so this module reads every page of the
database file and every frame of the WAL on its own: table leaf pages yield
``records`` and ``dictionaries`` rows, index leaf pages the ``meta`` rows. A record
is kept only when its payload decompresses to canonical JSON whose hash and seq
check out; whatever sits on a damaged page is simply not found, and the caller
declares it lost.

Page format: https://www.sqlite.org/fileformat2.html (b-tree pages, record format,
overflow pages, the WAL frame checksum).
"""

from __future__ import annotations

import json
import logging
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from scanfleet.daemon.journal.codec import Codec, RecordError, builtin_dictionary, canonical
from scanfleet.daemon.journal.codec import record_hash as compute_hash

log = logging.getLogger(__name__)

WAL_MAGIC = (0x377F0682, 0x377F0683)
TABLE_LEAF = 0x0D
INDEX_LEAF = 0x0A
MONOTONIC_META = ("head_seq", "delivered_seq", "pruned_through_seq", "epoch")
"""Meta values that only grow: of all versions found the largest is the latest."""


@dataclass
class Salvaged:
    """What a page scan recovered from a journal file (and its WAL)."""

    records: dict[int, tuple[int, bytes]] = field(default_factory=dict)
    """seq → (time_us, canonical payload), each verified against its own hash."""
    meta: dict[str, str] = field(default_factory=dict)
    wal_damaged: bool = False
    """The WAL holds frames of the current generation after one whose checksum fails."""
    pages_unreadable: int = 0

    def hash_of(self, seq: int) -> str | None:
        """The stored hash of salvaged record *seq*."""
        found = self.records.get(seq)
        if found is None:
            return None
        return str(json.loads(found[1])["hash"])


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    value = 0
    for i in range(9):
        byte = buf[pos + i]
        if i == 8:
            return (value << 8) | byte, pos + 9
        value = (value << 7) | (byte & 0x7F)
        if byte < 0x80:
            return value, pos + i + 1
    raise IndexError("varint")  # pragma: no cover - the loop always returns


_INT_SIZES = {1: 1, 2: 2, 3: 3, 4: 4, 5: 6, 6: 8}


def _columns(payload: bytes) -> list[object]:
    """Decode an SQLite record (header of serial types, then the values)."""
    header_len, pos = _varint(payload, 0)
    types: list[int] = []
    while pos < header_len:
        serial, pos = _varint(payload, pos)
        types.append(serial)
    body = header_len
    out: list[object] = []
    for serial in types:
        if serial == 0:
            out.append(None)
        elif serial in _INT_SIZES:
            size = _INT_SIZES[serial]
            out.append(int.from_bytes(payload[body : body + size], "big", signed=True))
            body += size
        elif serial in (8, 9):
            out.append(serial - 8)
        elif serial == 7:
            out.append(struct.unpack(">d", payload[body : body + 8])[0])
            body += 8
        elif serial >= 12:
            size = (serial - 12) // 2
            chunk = payload[body : body + size]
            if len(chunk) != size:
                raise IndexError("record runs past its payload")
            out.append(bytes(chunk) if serial % 2 == 0 else chunk.decode("utf-8"))
            body += size
        else:
            raise ValueError(f"serial type {serial}")
    return out


@dataclass
class _Wal:
    """The frames of a WAL file, checked the way SQLite checks them at recovery."""

    frames: list[tuple[int, bytes]] = field(default_factory=list)
    """(page number, page) of every complete frame of the current generation."""
    page_size: int = 0
    damaged: bool = False
    """A commit frame follows a frame whose checksum fails: SQLite would drop that
    committed transaction (and every later one) without a word."""


def _read_wal(data: bytes) -> _Wal:
    out = _Wal()
    if len(data) < 32:
        return out
    magic, _, page_size, _, salt1, salt2 = struct.unpack(">6I", data[:24])
    if magic not in WAL_MAGIC or page_size & (page_size - 1) or not 512 <= page_size <= 65536:
        out.damaged = len(data) > 32 + 24
        return out
    out.page_size = page_size
    order = "<" if magic == WAL_MAGIC[0] else ">"
    s0, s1 = _checksum(data[:24], 0, 0, order)
    failed = (s0, s1) != struct.unpack(">2I", data[24:32])
    frame = 24 + page_size
    for pos in range(32, len(data) - frame + 1, frame):
        number, commit, f_salt1, f_salt2, c0, c1 = struct.unpack(">6I", data[pos : pos + 24])
        if (f_salt1, f_salt2) != (salt1, salt2):
            continue  # a frame of an earlier WAL generation: stale, never damage
        page = data[pos + 24 : pos + frame]
        if failed:
            out.damaged = out.damaged or commit != 0
        else:
            s0, s1 = _checksum(data[pos : pos + 8] + page, s0, s1, order)
            if (s0, s1) != (c0, c1):
                failed = True
                log.warning("journal WAL frame at byte %d fails its checksum", pos)
        # Damaged or not, a frame's page is still read: its records prove themselves.
        if number:
            out.frames.append((number, page))
    return out


def wal_damaged(path: Path) -> bool:
    """True when *path*'s WAL holds committed transactions SQLite would silently drop."""
    wal = Path(str(path) + "-wal")
    try:
        data = wal.read_bytes()
    except FileNotFoundError:
        return False
    return _read_wal(data).damaged


class _Pages:
    """Every readable version of every page: the file's, then each WAL frame's."""

    def __init__(self, path: Path) -> None:
        self.data = path.read_bytes() if path.exists() else b""
        self.page_size = _page_size(self.data)
        wal = Path(str(path) + "-wal")
        self.wal = _read_wal(wal.read_bytes()) if wal.exists() else _Wal()
        if self.wal.page_size and not self.data:
            self.page_size = self.wal.page_size
        self.newest = dict(self.wal.frames)

    def get(self, number: int) -> bytes | None:
        if number in self.newest:
            return self.newest[number]
        start = (number - 1) * self.page_size
        page = self.data[start : start + self.page_size]
        return page if len(page) == self.page_size else None

    def versions(self) -> Iterator[tuple[int, bytes]]:
        size = self.page_size
        for number in range(1, len(self.data) // size + 1):
            yield number, self.data[(number - 1) * size : number * size]
        if self.wal.page_size == size:
            yield from self.wal.frames


def _page_size(data: bytes) -> int:
    if len(data) >= 100:
        raw = int.from_bytes(data[16:18], "big")
        size = 65536 if raw == 1 else raw
        if 512 <= size <= 65536 and not size & (size - 1):
            return size
    return 4096  # the SQLite default our journals are created with


def _checksum(data: bytes, s0: int, s1: int, order: str) -> tuple[int, int]:
    words = struct.unpack(f"{order}{len(data) // 4}I", data)
    for i in range(0, len(words), 2):
        s0 = (s0 + words[i] + s1) & 0xFFFFFFFF
        s1 = (s1 + words[i + 1] + s0) & 0xFFFFFFFF
    return s0, s1


def _cells(pages: _Pages, number: int, page: bytes) -> Iterator[tuple[int | None, bytes]]:
    """(rowid or None, full payload) of every cell of a leaf page."""
    base = 100 if number == 1 else 0
    kind = page[base]
    if kind not in (TABLE_LEAF, INDEX_LEAF):
        return
    usable = pages.page_size
    count = int.from_bytes(page[base + 3 : base + 5], "big")
    max_local = usable - 35 if kind == TABLE_LEAF else (usable - 12) * 64 // 255 - 23
    min_local = (usable - 12) * 32 // 255 - 23
    for i in range(count):
        try:
            pointer = int.from_bytes(page[base + 8 + 2 * i : base + 10 + 2 * i], "big")
            size, pos = _varint(page, pointer)
            rowid = None
            if kind == TABLE_LEAF:
                rowid, pos = _varint(page, pos)
            if size <= max_local:
                yield rowid, page[pos : pos + size]
                continue
            local = min_local + (size - min_local) % (usable - 4)
            if local > max_local:
                local = min_local
            payload = bytearray(page[pos : pos + local])
            overflow = int.from_bytes(page[pos + local : pos + local + 4], "big")
            while overflow and len(payload) < size:
                chunk = pages.get(overflow)
                if chunk is None:
                    break
                payload += chunk[4 : 4 + min(usable - 4, size - len(payload))]
                overflow = int.from_bytes(chunk[:4], "big")
            if len(payload) == size:
                yield rowid, bytes(payload)
        except (IndexError, ValueError):
            continue


def scan(path: Path, device: str | None = None) -> Salvaged:
    """Every verifiable record, dictionary and meta value in *path* and its WAL."""
    pages = _Pages(path)
    found = Salvaged(wal_damaged=pages.wal.damaged)
    rows: list[tuple[int, int, int, bytes]] = []
    dictionaries: dict[int, bytes] = {}
    for number, page in pages.versions():
        try:
            cells = list(_cells(pages, number, page))
        except IndexError:
            found.pages_unreadable += 1
            continue
        for rowid, payload in cells:
            try:
                columns = _columns(payload)
            except (IndexError, ValueError, UnicodeDecodeError):
                continue
            _classify(rowid, columns, rows, dictionaries, found.meta)
    device = device or found.meta.get("device")
    if device is None:
        return found
    codec = Codec()
    codec.add(1, builtin_dictionary(device))
    for dict_id, data in dictionaries.items():
        if dict_id != 1:
            codec.add(dict_id, data)
    for seq, time_us, dict_id, blob in rows:
        verified = _verified(codec, device, seq, dict_id, blob)
        if verified is not None:
            found.records[seq] = (time_us, verified)
    return found


def _classify(
    rowid: int | None,
    columns: list[object],
    rows: list[tuple[int, int, int, bytes]],
    dictionaries: dict[int, bytes],
    meta: dict[str, str],
) -> None:
    match columns:
        case [None, int(time_us), int(dict_id), bytes(blob)] if rowid is not None:
            rows.append((rowid, time_us, dict_id, blob))
        case [None, bytes(data)] if rowid is not None:
            dictionaries[rowid] = data
        case [str(key), str(value)] if rowid is None:
            if key in MONOTONIC_META and value.isdigit() and key in meta:
                if int(value) > int(meta[key]):
                    meta[key] = value
            elif key not in meta:
                meta[key] = value
        case _:
            pass


def _verified(codec: Codec, device: str, seq: int, dict_id: int, blob: bytes) -> bytes | None:
    if dict_id not in codec:
        return None
    try:
        payload = codec.decompress(dict_id, blob)
        record = json.loads(payload)
        if not isinstance(record, dict) or canonical(record) != payload:
            return None
        stored = record.pop("hash", None)
        if record.get("seq") != seq or record.get("device") != device:
            return None
        if compute_hash(record) != stored:
            return None
    except (zlib.error, ValueError, RecordError):
        return None
    return payload


@dataclass(frozen=True)
class Damage:
    """What a page scan of a damaged file could and could not read."""

    found: Salvaged
    first_seq: int
    """First seq the file should hold (after its pruning anchor)."""
    last_seq: int
    """Highest seq the file is known to have held."""
    missing: list[tuple[int, int]]

    def __str__(self) -> str:
        count = sum(b - a + 1 for a, b in self.missing)
        spans = ", ".join(f"{a}..{b}" for a, b in self.missing[:8])
        more = ", …" if len(self.missing) > 8 else ""
        text = f"{len(self.found.records)} records readable (seq {self.first_seq}..{self.last_seq})"
        if count:
            return f"{text}; {count} unreadable: {spans}{more}"
        return f"{text}; none missing"


def assess(path: Path, device: str | None = None) -> Damage:
    """Scan *path* and say exactly which seqs it should hold but cannot give back."""
    found = scan(path, device)
    seqs = sorted(found.records)
    first = int(found.meta.get("pruned_through_seq", "0")) + 1
    if seqs:
        first = min(first, seqs[0])
    last = max([int(found.meta.get("head_seq", "0")), *seqs[-1:]])
    return Damage(found, first, last, missing_ranges(first, last, set(seqs)))


def missing_ranges(first: int, last: int, present: set[int]) -> list[tuple[int, int]]:
    """Inclusive ranges of the seqs in [first, last] not in *present*."""
    out: list[tuple[int, int]] = []
    for seq in range(first, last + 1):
        if seq in present:
            continue
        if out and out[-1][1] == seq - 1:
            out[-1] = (out[-1][0], seq)
        else:
            out.append((seq, seq))
    return out
