"""The records scanfleet produces: classification results and journal scan records.

These pydantic models are the contract backend teams build against. Their JSON
Schemas are generated into ``docs/schema/`` (``scanfleet schema --write``) and a
test fails when the committed files are stale.
"""

from __future__ import annotations

import re
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

SCAN_SCHEMA = "scanfleet.scan/1"
"""Schema tag carried by every scan record."""

GENESIS_HASH = "0" * 64
"""``prev_hash`` of a device's first journal record."""

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
"""Site and device ids: safe as an MQTT topic level and a certificate CN."""

_NAME_RE = re.compile(NAME_PATTERN)


def valid_name(value: str) -> bool:
    """True when *value* may be used as a site or device id."""
    return bool(_NAME_RE.match(value))


class Kind(StrEnum):
    """What a read is, decided by its shape (see README, "Code kinds")."""

    GS1 = "gs1"
    TRACE20 = "trace20"
    EAN13 = "ean13"
    DRUG_STANDARD_CODE = "drug_standard_code"
    MA = "ma"
    URL = "url"
    TRACE_OTHER = "trace_other"
    UNKNOWN = "unknown"


class Operation(StrEnum):
    """The business step a scan belongs to.

    The mapping to 码上放心 bill types is documented in ``docs/operations.md``.
    """

    RECEIVING = "receiving"
    SALE_RETURN_IN = "sale_return_in"
    TRANSFER_IN = "transfer_in"
    DISPATCH = "dispatch"
    PURCHASE_RETURN_OUT = "purchase_return_out"
    TRANSFER_OUT = "transfer_out"
    RETAIL_SALE = "retail_sale"
    DISPENSE = "dispense"
    VACCINATION = "vaccination"
    RECALL = "recall"
    DESTRUCTION = "destruction"
    STOCKTAKE = "stocktake"
    OTHER = "other"


class Verdict(StrEnum):
    """Whether the station accepted a read."""

    ACCEPTED = "accepted"
    REFUSED = "refused"


class ClockSync(StrEnum):
    """Whether the wall clock was known to be synchronised when a record was made."""

    SYNCED = "synced"
    UNSYNCED = "unsynced"
    UNKNOWN = "unknown"


class ParseResult(BaseModel):
    """What classification makes of one raw read (the ``scanfleet parse`` output line)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Kind
    value: str = Field(description="The data with AIM prefix and terminators removed.")
    aim: str | None = Field(
        description="AIM symbology identifier such as ']C0', or null when none was sent."
    )
    fields: dict[str, Any] = Field(
        default_factory=dict, description="Parsed fields; which ones depends on the kind."
    )
    raw: str = Field(
        description=(
            "The read exactly as received: printable ASCII as is, a backslash as '\\\\', "
            "every other byte as '\\xNN'."
        )
    )
    problems: list[str] = Field(default_factory=list)


class StationRecord(BaseModel):
    """Fields every station record (``control``, ``bill_summary``, ``manual_entry``) carries.

    Like every journal record they share the scan's identity, time and hash-chain fields;
    ``origin`` says who made the change (a control barcode, the local interface, a remote
    command or the configuration).
    """

    model_config = ConfigDict(
        frozen=True, extra="forbid", validate_by_name=True, serialize_by_alias=True
    )

    device: str = Field(pattern=NAME_PATTERN)
    seq: int = Field(ge=1)
    id: str
    time: datetime
    clock: str | None = None
    t_mono: float | None = None
    boot_id: str | None = None
    origin: Literal["barcode", "local_api", "remote", "config"]
    source: dict[str, Any] | None = None
    prev_hash: str
    hash: str


class Source(BaseModel):
    """Where a read came from."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    driver: str
    device: str = Field(description="Configured device name.")
    port: str | None = None
    vid_pid: Annotated[str | None, Field(pattern=r"^[0-9a-f]{4}:[0-9a-f]{4}$")] = None


HashHex = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]


class Scan(BaseModel):
    """One journal record of a decoded read, accepted or refused.

    ``hash`` is SHA-256 over the RFC 8785 canonical JSON of the record without
    ``hash`` (``prev_hash`` included); ``id`` is the consumers' idempotency key.
    """

    model_config = ConfigDict(
        frozen=True, extra="forbid", validate_by_name=True, serialize_by_alias=True
    )

    schema_: Literal["scanfleet.scan/1"] = Field(default="scanfleet.scan/1", alias="schema")
    type: Literal["scan"] = "scan"
    device: Annotated[str, Field(pattern=NAME_PATTERN)]
    seq: Annotated[int, Field(ge=1)]
    id: str = Field(description="'{device}:{seq}', unique per record; the idempotency key.")
    time: datetime = Field(description="Wall-clock time (UTC) of the read.")
    clock: ClockSync = ClockSync.UNKNOWN
    t_mono: float = Field(description="CLOCK_MONOTONIC seconds of the read, for ordering.")
    boot_id: str | None = Field(default=None, description="Kernel boot id t_mono belongs to.")
    source: Source
    raw: str
    aim: str | None
    kind: Kind
    value: str
    fields: dict[str, Any] = Field(default_factory=dict)
    problems: list[str] = Field(default_factory=list)
    verdict: Verdict = Verdict.ACCEPTED
    reason: str | None = None
    operation: Operation
    station: str | None = None
    bill: str | None = None
    operator: str | None = None
    identity_ref: str | None = Field(
        default=None, description="id of the identity_read record this scan is paired with."
    )
    duplicate_of: int | None = Field(
        default=None,
        description="seq of this device's earlier scan of the same code for the same operation.",
    )
    split_unit: Annotated[int | None, Field(ge=1)] = Field(
        default=None,
        description=(
            "拆零: which unit of a split pack this accepted scan took (1-based), so a backend "
            "tells a legitimate repeat of the code from a duplicate without the terminal's config."
        ),
    )
    split_units: Annotated[int | None, Field(ge=2)] = Field(
        default=None, description="拆零: units the pack holds ([station] split_packs)."
    )
    expected: Literal["expected", "unexpected", "already_scanned"] | None = Field(
        default=None, description="Against the bill's receiving manifest, when it has one."
    )
    prev_hash: HashHex
    hash: HashHex

    @field_validator("time")
    @classmethod
    def _time_is_aware(cls, value: datetime) -> datetime:
        if value.tzinfo is None:
            raise ValueError("time must carry a timezone")
        return value

    @model_validator(mode="after")
    def _id_matches(self) -> Scan:
        if self.id != f"{self.device}:{self.seq}":
            raise ValueError(f"id must be '{self.device}:{self.seq}', not {self.id!r}")
        return self


LOSS_SCHEMA = "scanfleet.journal-loss/1"
"""Schema tag of a ``journal_loss`` record."""


class SeqRange(BaseModel):
    """An inclusive range of a device's seqs."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    first_seq: Annotated[int, Field(ge=1)]
    last_seq: Annotated[int, Field(ge=1)]

    @model_validator(mode="after")
    def _ordered(self) -> SeqRange:
        if self.last_seq < self.first_seq:
            raise ValueError("last_seq must not be below first_seq")
        return self


class JournalLoss(BaseModel):
    """A ``journal_loss`` record: seqs the terminal handed out (or may have) and cannot deliver.

    Written once, right after a damaged journal was set aside, at the next free seq. Every
    seq in ``lost`` is one the backend may never receive; a backend that already holds
    some of them keeps them (they were delivered before the damage). Its ``prev_hash``
    links to the last record whose hash survived (``anchor_seq``), or is 64 zeros when
    the chain restarts under a new ``epoch`` because even that was lost.
    """

    model_config = ConfigDict(
        frozen=True, extra="forbid", validate_by_name=True, serialize_by_alias=True
    )

    schema_: Literal["scanfleet.journal-loss/1"] = Field(
        default="scanfleet.journal-loss/1", alias="schema"
    )
    type: Literal["journal_loss"] = "journal_loss"
    device: Annotated[str, Field(pattern=NAME_PATTERN)]
    seq: Annotated[int, Field(ge=1)]
    id: str = Field(description="'{device}:{seq}', like every record.")
    time: datetime = Field(description="When the damage was found (the daemon's start).")
    boot_id: str | None = None
    lost: list[SeqRange] = Field(
        description=(
            "Seq ranges up to the highest seq known to have been used that could not be "
            "salvaged from the damaged file and were not marked delivered."
        )
    )
    lost_count: Annotated[int, Field(ge=0)] = Field(description="Seqs in all of ``lost``.")
    reserved: SeqRange | None = Field(
        default=None,
        description=(
            "Seqs after the highest one known to have been used, up to the durable "
            "reservation: most likely never used, possibly lost. Never reused either."
        ),
    )
    salvaged: Annotated[int, Field(ge=0)] = Field(
        description="Undelivered records recovered verbatim (same id, bytes, hash)."
    )
    reason: str = Field(description="What was damaged, for people.")
    quarantined_file: str = Field(description="File name the damaged journal was renamed to.")
    epoch: Annotated[int, Field(ge=0)] = Field(
        description="Chain epoch: 0 for the original chain, +1 for every chain restart."
    )
    anchor_seq: Annotated[int, Field(ge=0)] = Field(
        description="Seq whose hash prev_hash links to; 0 when the chain restarts (epoch > 0)."
    )
    prev_hash: HashHex
    hash: HashHex

    @model_validator(mode="after")
    def _id_matches(self) -> JournalLoss:
        if self.id != f"{self.device}:{self.seq}":
            raise ValueError(f"id must be '{self.device}:{self.seq}', not {self.id!r}")
        return self
