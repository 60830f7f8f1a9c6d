"""Typed journal record bodies: what the pipeline and the station hand to the journal.

A body is a record without the fields the journal adds (``device``, ``seq``, ``id``,
``prev_hash``, ``hash``). Bodies are frozen, slotted dataclasses, so mypy catches a
misspelled field on the data path and verdicts and kinds stay enums until the record is
serialized; :meth:`to_body` gives the JSON object :meth:`Journal.append` serializes once.
The enums are ``StrEnum``: they serialize as their value, so the bytes (and the hash
chain) are those of the published schemas in ``docs/schema/`` (a test validates the
records against them and compares their bytes with a committed fixture).

Frozen dataclasses rather than pydantic models, by measured cost: building a scan body
and its JSON object takes ~5 µs this way and ~30 µs validating the pydantic ``Scan``
model (``make bench BENCH=records``); the pydantic models in :mod:`model` stay the
published contract the schemas are generated from.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from scanfleet.daemon.core.model import SCAN_SCHEMA, ClockSync, Kind, Operation, Verdict

CONTROL_SCHEMA = "scanfleet.control/1"
BILL_SUMMARY_SCHEMA = "scanfleet.bill-summary/1"
MANUAL_SCHEMA = "scanfleet.manual-entry/1"
IDENTITY_READ_SCHEMA = "scanfleet.identity-read/1"

Origin = Literal["barcode", "local_api", "remote", "config"]
"""Who made a station change."""
Action = Literal["operation", "bill", "operator", "end_bill", "manual", "enroll", "unknown"]
"""What a control record changes."""
Expected = Literal["expected", "unexpected", "already_scanned"]
"""A scan against its bill's receiving manifest."""


class RecordBody(Protocol):
    """Anything :meth:`Journal.append` takes besides a plain mapping."""

    def to_body(self) -> dict[str, Any]:
        """The record's fields as a JSON object (enum members as their values)."""
        ...


@dataclass(frozen=True, slots=True)
class ReadSource:
    """The device a read came from."""

    driver: str
    device: str
    port: str | None = None
    vid_pid: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The ``source`` object of a record."""
        return {
            "driver": self.driver,
            "device": self.device,
            "port": self.port,
            "vid_pid": self.vid_pid,
        }


@dataclass(frozen=True, slots=True)
class Stamp:
    """When and where a record was made: the read's, or now's for a change no read made."""

    time: str
    """ISO-8601 with its offset, as the read (or the clock) gave it."""
    clock: ClockSync
    t_mono: float
    boot_id: str | None
    source: ReadSource | None = None

    def fields(self) -> dict[str, Any]:
        """``time``, ``clock``, ``t_mono``, ``boot_id`` and ``source``."""
        return {
            "time": self.time,
            "clock": self.clock,
            "t_mono": self.t_mono,
            "boot_id": self.boot_id,
            "source": None if self.source is None else self.source.to_json(),
        }


@dataclass(frozen=True, slots=True)
class StationContext:
    """The station's operation, bill and operator when a record is made."""

    operation: Operation
    bill: str | None = None
    operator: str | None = None


@dataclass(frozen=True, slots=True)
class ScanBody:
    """A decoded read, accepted or refused (the ``scan`` record, model :class:`Scan`)."""

    stamp: Stamp
    context: StationContext
    station: str | None
    raw: str
    aim: str | None
    kind: Kind
    value: str
    fields: dict[str, Any]
    problems: list[str]
    verdict: Verdict
    reason: str | None = None
    identity_ref: str | None = None
    duplicate_of: int | None = None
    split_unit: int | None = None
    split_units: int | None = None
    expected: Expected | None = None

    def to_body(self) -> dict[str, Any]:
        """The scan's fields; the optional checks only when they apply."""
        context = self.context
        body = {
            "schema": SCAN_SCHEMA,
            "type": "scan",
            **self.stamp.fields(),
            "operation": context.operation,
            "station": self.station,
            "bill": context.bill,
            "operator": context.operator,
            "raw": self.raw,
            "aim": self.aim,
            "kind": self.kind,
            "value": self.value,
            "fields": self.fields,
            "problems": self.problems,
            "verdict": self.verdict,
            "reason": self.reason,
            "identity_ref": self.identity_ref,
        }
        if self.duplicate_of is not None:
            body["duplicate_of"] = self.duplicate_of
        if self.split_units is not None:
            body["split_units"] = self.split_units
        if self.split_unit is not None:
            body["split_unit"] = self.split_unit
        if self.expected is not None:
            body["expected"] = self.expected
        return body


@dataclass(frozen=True, slots=True)
class IdentityBody:
    """An ID-card read: sealed identity and its masked form (model :class:`IdentityRead`)."""

    stamp: Stamp
    context: StationContext
    station: str | None
    card_type: str
    masked: dict[str, Any]
    sealed: str | None
    seal_alg: str | None
    sealed_fields: list[str]
    problems: list[str]
    verdict: Verdict
    reason: str | None
    window_seconds: float

    def to_body(self) -> dict[str, Any]:
        """The identity read's fields."""
        context = self.context
        return {
            **self.stamp.fields(),
            "operation": context.operation,
            "station": self.station,
            "bill": context.bill,
            "operator": context.operator,
            "schema": IDENTITY_READ_SCHEMA,
            "type": "identity_read",
            "card_type": self.card_type,
            "masked": self.masked,
            "sealed": self.sealed,
            "seal_alg": self.seal_alg,
            "sealed_fields": self.sealed_fields,
            "problems": self.problems,
            "verdict": self.verdict,
            "reason": self.reason,
            "window_seconds": self.window_seconds,
        }


@dataclass(frozen=True, slots=True)
class ControlBody:
    """A change of station context (model :class:`ControlRecord`). Never a scan."""

    stamp: Stamp
    raw: str | None
    station: str | None
    origin: Origin
    action: Action
    argument: str | None
    verdict: Verdict
    reason: str | None
    context: StationContext
    """The context after this change."""

    def to_body(self) -> dict[str, Any]:
        """The control record's fields."""
        context = self.context
        return {
            "schema": CONTROL_SCHEMA,
            "type": "control",
            **self.stamp.fields(),
            "raw": self.raw,
            "station": self.station,
            "origin": self.origin,
            "action": self.action,
            "argument": self.argument,
            "verdict": self.verdict,
            "reason": self.reason,
            "operation": context.operation,
            "bill": context.bill,
            "operator": context.operator,
        }


@dataclass(frozen=True, slots=True)
class CodeCount:
    """A code and how many units of it."""

    code: str
    quantity: int


@dataclass(frozen=True, slots=True)
class BillTally:
    """A bill against its manifest: what the ``bill_summary`` record reports."""

    status: Literal["matched", "differences", "no_manifest"]
    expected_units: int
    received_units: int
    scans: int
    refused: int
    missing: list[CodeCount] = field(default_factory=list)
    extra: list[CodeCount] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class BillSummaryBody:
    """The end of a bill against its manifest (model :class:`BillSummary`)."""

    stamp: Stamp
    station: str | None
    origin: Origin
    context: StationContext
    tally: BillTally

    def to_body(self) -> dict[str, Any]:
        """The summary's fields."""
        context, tally = self.context, self.tally
        return {
            "schema": BILL_SUMMARY_SCHEMA,
            "type": "bill_summary",
            **self.stamp.fields(),
            "station": self.station,
            "origin": self.origin,
            "operation": context.operation,
            "bill": context.bill,
            "operator": context.operator,
            "status": tally.status,
            "expected_units": tally.expected_units,
            "received_units": tally.received_units,
            "scans": tally.scans,
            "refused": tally.refused,
            "missing": [{"code": m.code, "quantity": m.quantity} for m in tally.missing],
            "extra": [{"code": e.code, "quantity": e.quantity} for e in tally.extra],
        }


@dataclass(frozen=True, slots=True)
class ManualEntryBody:
    """A product recorded without a scan (model :class:`ManualEntry`)."""

    stamp: Stamp
    station: str | None
    context: StationContext
    origin: Origin
    kind: Literal["manual", "exempt"]
    entry: dict[str, Any]
    """The request's fields (category, product, code, batch, expiry, quantity, unit, note)."""

    def to_body(self) -> dict[str, Any]:
        """The entry's fields."""
        context = self.context
        return {
            "schema": MANUAL_SCHEMA,
            "type": "manual_entry",
            **self.stamp.fields(),
            "station": self.station,
            "operation": context.operation,
            "bill": context.bill,
            "operator": context.operator,
            "origin": self.origin,
            "kind": self.kind,
            **self.entry,
        }
