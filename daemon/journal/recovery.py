"""Rebuilding a damaged journal so that no id is reused and no gap is silent (issue 15).

The journal's head (the highest seq ever handed out, its hash, the chain epoch) is
also kept in ``<journal>.head``, a preallocated two-slot file (:mod:`slotfile`). The
journal reserves seqs in blocks: before a commit hands out a seq beyond the
reservation, the head file is rewritten and fdatasynced, so it always names a seq at
or above every seq that ever left the journal (one fsync per :data:`RESERVE_BLOCK`
seqs).

When the journal is found damaged (SQLite refuses it, ``quick_check`` fails, the WAL
fails its checksums, the file is gone, or it ends before a seq the head file saw),
:func:`rebuild`:

1. salvages every verifiable record with a page scan (:mod:`~scanfleet.daemon.journal.salvage`);
2. builds a new journal beside it (``.rebuild``) holding the undelivered salvaged
   records verbatim, and one ``journal_loss`` record at the next seq after the head
   that names every undelivered seq it could not salvage;
3. renames the damaged file aside (``.corrupt-<time>``) and the new one in.

A crash between the renames leaves the ``.rebuild`` file, which the next open
finishes. Without a head file (lost too) the chain restarts: ``epoch`` + 1, genesis
``prev_hash`` and seqs from 1000 times the Unix time, above anything the device used.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from scanfleet.daemon.core.clock import boot_id
from scanfleet.daemon.core.model import GENESIS_HASH, LOSS_SCHEMA
from scanfleet.daemon.core.slotfile import SlotFile
from scanfleet.daemon.journal.codec import Codec, builtin_dictionary, seal, to_micros
from scanfleet.daemon.journal.salvage import Salvaged, missing_ranges, scan
from scanfleet.daemon.journal.store import configure, connect_writer, fsync_dir, migrate

log = logging.getLogger(__name__)

RESERVE_BLOCK = 256
"""Seqs reserved per head-file write."""
HEAD_SUFFIX = ".head"
REBUILD_SUFFIX = ".rebuild"
SIDE_FILES = ("-wal", "-shm")


@dataclass(frozen=True, slots=True)
class Head:
    """What the head file knows: seqs up to ``reserved_seq`` may have been handed out."""

    device: str
    epoch: int
    reserved_seq: int
    head_seq: int
    head_hash: str
    delivered_seq: int


_HEAD_FORMAT = (
    '{"delivered_seq":%d,"device":%s,"epoch":%d,"head_hash":"%s","head_seq":%d,"reserved_seq":%d}'
)
_HEX = "0123456789abcdef"


class HeadFile:
    """``<journal>.head``: the durable reservation of seqs."""

    def __init__(self, journal: Path) -> None:
        self._slots = SlotFile(journal.with_name(journal.name + HEAD_SUFFIX))
        self._device: tuple[str, str] = ("", '""')
        """The last device id and its JSON string (the same for every write)."""

    @property
    def path(self) -> Path:
        """The head file's path."""
        return self._slots.path

    def load(self) -> Head | None:
        """The stored head, or None when the file is missing or both slots are damaged."""
        document = self._slots.load()
        if document is None:
            return None
        try:
            return Head(**{k: document[k] for k in Head.__dataclass_fields__})
        except (KeyError, TypeError):
            return None

    def store(self, head: Head, *, sync: bool = True) -> None:
        """Write (and fdatasync unless not *sync*) *head*, in place: works on a full disk."""
        self.write(
            head.device,
            head.epoch,
            head.reserved_seq,
            head.head_seq,
            head.head_hash,
            head.delivered_seq,
            sync=sync,
        )

    def write(
        self,
        device: str,
        epoch: int,
        reserved_seq: int,
        head_seq: int,
        head_hash: str,
        delivered_seq: int,
        *,
        sync: bool,
    ) -> None:
        """:meth:`store` of a head given as its fields (called after every commit)."""
        # Formatted directly, the bytes the sorted-keys encoder of SlotFile.store makes
        # (a unit test compares them), at a fifth of its cost. The hash is hex (or
        # empty: a rebuilt journal's unknown anchor), the other values integers.
        if self._device[0] != device:
            self._device = (device, json.dumps(device))
        if head_hash.strip(_HEX):
            raise ValueError(f"head hash {head_hash!r} is not hex")
        body = _HEAD_FORMAT % (
            delivered_seq,
            self._device[1],
            epoch,
            head_hash,
            head_seq,
            reserved_seq,
        )
        self._slots.store_encoded(body.encode("ascii"), sync=sync)

    def close(self) -> None:
        """Close the file."""
        self._slots.close()


@dataclass(frozen=True)
class Recovery:
    """What a rebuild did; the journal raises its alarm from it."""

    quarantined: Path | None
    loss: dict[str, Any]
    """The ``journal_loss`` record written."""


def lost_ranges(meta: dict[str, str]) -> list[tuple[int, int]]:
    """The declared lost ranges stored in a journal's meta (``lost_ranges``)."""
    return [(int(a), int(b)) for a, b in json.loads(meta.get("lost_ranges", "[]"))]


def pending_rebuild(path: Path) -> None:
    """Finish a rebuild a crash interrupted between its two renames, or drop a torn one."""
    tmp = path.with_name(path.name + REBUILD_SUFFIX)
    if not tmp.exists():
        return
    if not path.exists():
        log.warning("journal %s: finishing an interrupted rebuild", path)
        tmp.rename(path)
        fsync_dir(path.parent)
        return
    for suffix in ("", *SIDE_FILES):
        Path(str(tmp) + suffix).unlink(missing_ok=True)


def quarantine_name(path: Path, now: datetime) -> Path:
    """A free ``<journal>.corrupt-<time>[-n]`` name."""
    stamp = now.strftime("%Y%m%dT%H%M%SZ")
    target = path.with_name(f"{path.name}.corrupt-{stamp}")
    n = 1
    while target.exists():
        n += 1
        target = path.with_name(f"{path.name}.corrupt-{stamp}-{n}")
    return target


def quarantined_files(path: Path) -> list[Path]:
    """Damaged journals set aside beside *path*, oldest first."""
    pattern = f"{path.name}.corrupt-*"
    return sorted(p for p in path.parent.glob(pattern) if not p.name.endswith(("-wal", "-shm")))


def move_aside(path: Path, target: Path) -> None:
    """Rename *path* and its -wal/-shm to *target* (never delete)."""
    for suffix in SIDE_FILES:
        side = Path(str(path) + suffix)
        if side.exists():
            side.rename(Path(str(target) + suffix))
    path.rename(target)
    fsync_dir(path.parent)


@dataclass(frozen=True)
class Plan:
    """The new journal's content, decided from the salvage and the head file."""

    delivered: int
    floor: int
    """The highest seq that may have been handed out: the loss record is floor + 1."""
    keep: list[int]
    """Salvaged undelivered seqs re-journaled verbatim."""
    lost: list[tuple[int, int]]
    reserved: tuple[int, int] | None
    """Reserved seqs above the highest one known to be used."""

    @property
    def reserved_list(self) -> list[tuple[int, int]]:
        """``reserved`` as a list of ranges (empty or one)."""
        return [self.reserved] if self.reserved else []

    epoch: int
    anchor_seq: int
    anchor_hash: str


def plan(found: Salvaged, head: Head | None, now: datetime) -> Plan:
    """Where the new journal continues and what it declares lost."""
    meta = found.meta
    seqs = sorted(found.records)
    known = max([int(meta.get("head_seq", "0")), *seqs[-1:]], default=0)
    delivered = int(meta.get("delivered_seq", "0"))
    epoch = int(meta.get("epoch", "0"))
    if head is not None:
        epoch = max(epoch, head.epoch)
        delivered = max(delivered, head.delivered_seq)
        known = max(known, head.head_seq)
        floor = max(known, head.reserved_seq)
        restart = False
    else:
        # Nothing durable says how far the seq went: restart the chain above any seq
        # this device can have used (it would take 1000 records a second since 1970).
        floor = max(known, int(now.timestamp()) * 1000)
        restart = True
        epoch += 1
    delivered = min(delivered, known)
    keep = [s for s in seqs if s > delivered]
    lost = missing_ranges(delivered + 1, known, set(keep))
    reserved = (known + 1, floor) if floor > known else None
    if restart:
        return Plan(delivered, floor, keep, lost, reserved, epoch, 0, GENESIS_HASH)
    anchor_seq, anchor_hash = 0, GENESIS_HASH
    if seqs:
        anchor_seq = seqs[-1]
        anchor_hash = found.hash_of(anchor_seq) or GENESIS_HASH
    if head is not None and head.head_seq > anchor_seq:
        anchor_seq, anchor_hash = head.head_seq, head.head_hash
    return Plan(delivered, floor, keep, lost, reserved, epoch, anchor_seq, anchor_hash)


def rebuild(
    path: Path,
    device: str,
    head: Head | None,
    reason: str,
    now: datetime,
    *,
    meta_extra: dict[str, str],
) -> Recovery:
    """Salvage *path*, write its replacement, move it aside; see the module docstring."""
    started = time.monotonic()
    found = scan(path, device) if path.exists() else Salvaged()
    decided = plan(found, head, now)
    target = quarantine_name(path, now) if path.exists() else None
    lost_count = sum(b - a + 1 for a, b in decided.lost)
    body: dict[str, Any] = {
        "schema": LOSS_SCHEMA,
        "type": "journal_loss",
        "time": now.isoformat(),
        "boot_id": boot_id(),
        "lost": [{"first_seq": a, "last_seq": b} for a, b in decided.lost],
        "lost_count": lost_count,
        "reserved": (
            {"first_seq": decided.reserved[0], "last_seq": decided.reserved[1]}
            if decided.reserved
            else None
        ),
        "salvaged": len(decided.keep),
        "reason": reason,
        "quarantined_file": target.name if target else "",
        "epoch": decided.epoch,
        "anchor_seq": decided.anchor_seq,
    }
    loss_seq = decided.floor + 1
    loss, loss_payload = seal(body, device, loss_seq, decided.anchor_hash)
    tmp = path.with_name(path.name + REBUILD_SUFFIX)
    for suffix in ("", *SIDE_FILES):
        Path(str(tmp) + suffix).unlink(missing_ok=True)
    conn = connect_writer(tmp)
    try:
        configure(conn)
        migrate(conn, tmp, 0)
        codec = Codec()
        codec.add(1, builtin_dictionary(device))
        pruned_hash = found.hash_of(decided.delivered) or ""
        meta = {
            **meta_extra,
            "device": device,
            "created": now.isoformat(),
            "delivered_seq": str(decided.delivered),
            "pruned_through_seq": str(decided.delivered),
            "pruned_hash": pruned_hash if decided.delivered else GENESIS_HASH,
            "head_seq": str(loss_seq),
            "head_hash": loss["hash"],
            "dict_current": "1",
            "epoch": str(decided.epoch),
            "lost_ranges": json.dumps(sorted([*decided.lost, *decided.reserved_list])),
        }
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany("INSERT INTO meta (key, value) VALUES (?, ?)", meta.items())
        conn.execute(
            "INSERT INTO dictionaries (id, data) VALUES (1, ?)", (builtin_dictionary(device),)
        )
        rows = [
            (seq, found.records[seq][0], 1, codec.compress(1, found.records[seq][1]))
            for seq in decided.keep
        ]
        rows.append((loss_seq, to_micros(now), 1, codec.compress(1, loss_payload)))
        conn.executemany(
            "INSERT INTO records (seq, time_us, dict, payload) VALUES (?, ?, ?, ?)", rows
        )
        conn.execute("COMMIT")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()
    if target is not None:
        move_aside(path, target)
    tmp.rename(path)
    fsync_dir(path.parent)
    log.error(
        "journal %s was damaged (%s): set aside as %s; %d undelivered records salvaged, "
        "%d seqs declared lost (%s reserved, unused) in journal_loss seq %d (%.1f s)",
        path,
        reason,
        target.name if target else "-",
        len(decided.keep),
        lost_count,
        decided.reserved,
        loss_seq,
        time.monotonic() - started,
    )
    return Recovery(target, loss)


def new_head(meta: dict[str, str], reserved: int) -> Head:
    """The head of an open journal with seqs reserved through *reserved*."""
    return Head(
        device=meta["device"],
        epoch=int(meta.get("epoch", "0")),
        reserved_seq=reserved,
        head_seq=int(meta["head_seq"]),
        head_hash=meta["head_hash"],
        delivered_seq=int(meta.get("delivered_seq", "0")),
    )
