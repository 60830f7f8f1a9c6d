"""The journal's head file and rebuild at open: a mixin of :class:`Journal`.

Split out of ``journal.py`` to keep each file readable. The mechanism (head file,
salvage, rebuild, declared losses) is described in :mod:`~scanfleet.daemon.journal.recovery`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from scanfleet.daemon.core.alarms import AlarmSet, Severity
from scanfleet.daemon.core.errors import JournalError
from scanfleet.daemon.journal.recovery import (
    RESERVE_BLOCK,
    Head,
    HeadFile,
    Recovery,
    pending_rebuild,
    rebuild,
)
from scanfleet.daemon.journal.store import JournalDamagedError, Opened, open_writer

log = logging.getLogger(__name__)

ALARM_QUARANTINED = "journal_quarantined"
ALARM_LOSS = "journal_loss"


def open_or_rebuild(
    path: Path,
    head_file: HeadFile,
    device: str,
    max_bytes: int,
    retention_days: int,
    clock: Callable[[], datetime],
) -> tuple[Opened, Recovery | None]:
    """Open the journal's writer connection, rebuilding a damaged file first."""
    pending_rebuild(path)
    head = head_file.load()
    if head is not None and head.device != device:
        head = None
    seen = head.head_seq if head is not None else 0
    try:
        return open_writer(path, device, max_bytes, retention_days, clock(), head_seq=seen), None
    except JournalDamagedError as err:
        log.error("journal %s is damaged (%s): rebuilding it", path, err.reason)  # noqa: TRY400 - the reason is the message
        recovery = rebuild(
            path,
            device,
            head,
            err.reason,
            clock(),
            meta_extra={"budget_bytes": str(max_bytes), "retention_days": str(retention_days)},
        )
    opened = open_writer(path, device, max_bytes, retention_days, clock())
    return opened, recovery


class HeadKeeping:
    """Opening (and if need be rebuilding) the file, the seq reservation, declared gaps."""

    # Provided by Journal.
    path: Path
    device: str
    alarms: AlarmSet
    _clock: Callable[[], datetime]
    _head_file: HeadFile
    _epoch: int
    _reserved: int
    _last_seq: int
    _last_hash: str
    _delivered: int
    lost: list[tuple[int, int]]

    def _raise_recovery_alarms(self, recovery: Recovery) -> None:
        loss = recovery.loss
        where = recovery.quarantined.name if recovery.quarantined else "(file missing)"
        self.alarms.raise_(
            ALARM_QUARANTINED,
            f"damaged journal set aside as {where}; {loss['salvaged']} undelivered records "
            f"salvaged, the journal continues at seq {loss['seq']}",
            Severity.CRITICAL,
            file=str(recovery.quarantined or ""),
            reason=loss["reason"],
            loss_seq=loss["seq"],
        )
        if loss["lost_count"]:
            self.alarms.raise_(
                ALARM_LOSS,
                f"{loss['lost_count']} seqs could not be salvaged; declared in journal_loss "
                f"record {loss['seq']}",
                Severity.CRITICAL,
                loss_seq=loss["seq"],
                lost=loss["lost"],
            )

    def _reserve(self, seq: int) -> None:
        """Durably reserve seqs through *seq* + RESERVE_BLOCK before handing any out."""
        self._store_head(seq + RESERVE_BLOCK, sync=True)

    def _store_head(self, reserved: int, *, sync: bool) -> None:
        # The reservation is fdatasynced; the head itself follows each commit unsynced
        # (a page-cache write), which tells a later rebuild which reserved seqs were used.
        try:
            self._head_file.store(
                Head(
                    device=self.device,
                    epoch=self._epoch,
                    reserved_seq=reserved,
                    head_seq=self._last_seq,
                    head_hash=self._last_hash,
                    delivered_seq=self._delivered,
                ),
                sync=sync,
            )
        except (OSError, ValueError) as err:
            raise JournalError(f"cannot write the journal head file: {err}") from err
        self._reserved = reserved

    def lost_through(self, seq: int) -> int | None:
        """The end of the declared lost range holding *seq*, or None."""
        for first, last in self.lost:
            if first <= seq <= last:
                return last
        return None
