"""Which journal records are delivered: batches in flight, acks, the contiguous prefix.

Kept apart from the MQTT plumbing so the rules can be read (and tested) alone:
a batch is delivered only by a PUBACK below 0x80; acks may arrive in any order;
the watermark moves only over a gapless run of delivered batches from the last
watermark, so a refused or lost batch holds back everything after it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from scanfleet.daemon.core.errors import JournalError
from scanfleet.daemon.publish.envelope import batch_overhead, build_batch

FAILURE_THRESHOLD = 0x80
"""PUBACK reason codes from here up mean the broker did not accept the message."""
NO_MATCHING_SUBSCRIBERS = 0x10


class StoredRecord(Protocol):
    """What the publisher needs of a journal record."""

    @property
    def seq(self) -> int: ...

    @property
    def payload(self) -> bytes: ...


class RecordSource(Protocol):
    """The part of the journal a batch is cut from."""

    def read_after(
        self, after_seq: int, *, limit: int, max_bytes: int
    ) -> Sequence[StoredRecord]: ...

    def lost_through(self, seq: int) -> int | None: ...


@dataclass(frozen=True)
class Batch:
    """One envelope: records ``first_seq`` … ``last_seq``, ``payload`` ready to publish."""

    first_seq: int
    last_seq: int
    payload: bytes

    @property
    def count(self) -> int:
        """Number of records carried."""
        return self.last_seq - self.first_seq + 1


@dataclass(frozen=True)
class Gap:
    """Seqs ``first_seq`` … ``last_seq`` declared lost: nothing to send, the watermark
    steps over them (the journal_loss record after them tells the backend)."""

    first_seq: int
    last_seq: int


class BatchCutter:
    """Cuts contiguous batches from the journal, bounded in records and bytes."""

    def __init__(self, device: str, *, max_scans: int, max_bytes: int) -> None:
        if max_scans < 1:
            raise ValueError("max_scans must be at least 1")
        self.device = device
        self.max_scans = max_scans
        self.max_bytes = max_bytes
        # Room for the records once the envelope (with the widest seq) is accounted for.
        self.record_budget = max(1, max_bytes - batch_overhead(device, 10**15, max_scans))

    def cut(self, source: RecordSource, next_seq: int) -> Batch | Gap | None:
        """The batch starting at *next_seq*, the declared gap there, or None when the
        journal has nothing there."""
        end = source.lost_through(next_seq)
        if end is not None:
            return Gap(next_seq, end)
        records = list(
            source.read_after(next_seq - 1, limit=self.max_scans, max_bytes=self.record_budget)
        )
        if not records:
            return None
        for i, record in enumerate(records):
            if record.seq != next_seq + i and source.lost_through(next_seq + i) is not None:
                del records[i:]  # the batch ends where a declared gap begins
                break
        if records[0].seq != next_seq or records[-1].seq != next_seq + len(records) - 1:
            raise JournalError(
                f"journal returned seq {records[0].seq}..{records[-1].seq} for a batch "
                f"due to start at {next_seq}"
            )
        payload = build_batch(self.device, next_seq, [r.payload for r in records])
        return Batch(next_seq, records[-1].seq, payload)


class Ack(StrEnum):
    """What a PUBACK meant for the batch it answered."""

    DELIVERED = "delivered"
    NO_SUBSCRIBERS = "no_subscribers"
    """Delivered to the broker, which knows of no subscriber (0x10)."""
    REFUSED = "refused"
    UNKNOWN = "unknown"
    """Not a batch of this connection (a state message, or already settled)."""


@dataclass(frozen=True)
class Refusal:
    """A batch the broker refused, with its reason code."""

    first_seq: int
    last_seq: int
    code: int
    reason: str


class DeliveryTracker:
    """Batches in flight by message id, and the contiguous delivered prefix.

    In-order batches follow each other from the watermark. Live batches (the
    optional live lane) carry records ahead of the in-order cursor; their acks
    never move the watermark, because the in-order drain sends those records again.
    """

    def __init__(self, delivered_seq: int) -> None:
        self.delivered_seq = delivered_seq
        self.next_seq = delivered_seq + 1
        self._inflight: dict[int, tuple[int, int]] = {}
        self._live: set[int] = set()
        self._acked_ahead: dict[int, int] = {}
        self.refusals: list[Refusal] = []

    def restart(self) -> None:
        """A new connection: forget what was in flight, resend after the watermark.

        Acks beyond the prefix are forgotten too; those records go out again and
        consumers drop the duplicates by id.
        """
        self._inflight.clear()
        self._live.clear()
        self._acked_ahead.clear()
        self.refusals.clear()
        self.next_seq = self.delivered_seq + 1

    @property
    def inflight(self) -> int:
        """In-order batches handed to paho and not yet answered."""
        return len(self._inflight) - len(self._live)

    @property
    def live_inflight(self) -> int:
        """Live batches handed to paho and not yet answered."""
        return len(self._live)

    def sent(self, mid: int, batch: Batch) -> None:
        """*batch* was handed to paho as message *mid*; the next batch follows it."""
        if batch.first_seq != self.next_seq:
            raise ValueError(f"batch starts at {batch.first_seq}, expected {self.next_seq}")
        self._inflight[mid] = (batch.first_seq, batch.last_seq)
        self.next_seq = batch.last_seq + 1

    def skip(self, gap: Gap) -> None:
        """The declared lost *gap* follows the cursor: count it as delivered."""
        if gap.first_seq != self.next_seq:
            raise ValueError(f"gap starts at {gap.first_seq}, expected {self.next_seq}")
        self._acked_ahead[gap.first_seq] = gap.last_seq
        self.next_seq = gap.last_seq + 1

    def sent_live(self, mid: int, batch: Batch) -> None:
        """*batch*, ahead of the in-order cursor, was handed to paho as message *mid*."""
        if batch.first_seq < self.next_seq:
            raise ValueError(f"live batch {batch.first_seq} is not ahead of {self.next_seq}")
        self._inflight[mid] = (batch.first_seq, batch.last_seq)
        self._live.add(mid)

    def acked(self, mid: int, code: int, reason: str = "") -> Ack:
        """Record the PUBACK of *mid* with reason *code*."""
        span = self._inflight.pop(mid, None)
        if span is None:
            return Ack.UNKNOWN
        live = mid in self._live
        self._live.discard(mid)
        if code >= FAILURE_THRESHOLD:
            self.refusals.append(Refusal(span[0], span[1], code, reason))
            return Ack.REFUSED
        if not live:
            self._acked_ahead[span[0]] = span[1]
        return Ack.NO_SUBSCRIBERS if code == NO_MATCHING_SUBSCRIBERS else Ack.DELIVERED

    def span(self, mid: int) -> tuple[int, int] | None:
        """(first_seq, last_seq) of the batch in flight as *mid*."""
        return self._inflight.get(mid)

    def advance(self) -> bool:
        """Move the watermark over acked batches that follow it; True when it moved."""
        moved = False
        while (last := self._acked_ahead.pop(self.delivered_seq + 1, None)) is not None:
            self.delivered_seq = last
            moved = True
        return moved
