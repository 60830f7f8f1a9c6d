"""Receiving check (入库验收): scans of a bill against the upstream's expected manifest.

A manifest lists what the supplier says it shipped: unit codes (小码), or aggregate
codes (大码/中码) with their children and pack ratio. Units are the leaves; an aggregate
scan receives all of its units at once. Each scan is *expected*, *unexpected* (not on the
manifest) or *already_scanned* (its unit, or the case holding it, was already received).
At the bill's end a ``bill_summary`` record lists what is missing and what was extra; the
bill is ``matched`` only when both lists are empty. Cases are not assumed full: the
children listed are the truth, the pack ratio is only shown.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from scanfleet.daemon.core.errors import ConfigError, ConfigProblem
from scanfleet.daemon.core.model import Operation, StationRecord
from scanfleet.daemon.core.records import BILL_SUMMARY_SCHEMA, BillTally, CodeCount

__all__ = ["BILL_SUMMARY_SCHEMA", "BillProgress", "BillSummary", "Check", "Manifest"]


Expectation = Literal["expected", "unexpected", "already_scanned"]


class ManifestItem(BaseModel):
    """One expected code: a unit (no children) or an aggregate of items."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    code: str = Field(min_length=1, max_length=200)
    quantity: int = Field(default=1, ge=1, description="Units a childless code stands for.")
    pack_ratio: str | None = Field(default=None, description="e.g. '1:10' (shown only).")
    children: list[ManifestItem] = Field(default_factory=list)

    @field_validator("children", mode="before")
    @classmethod
    def _codes_as_items(cls, value: Any) -> Any:
        if isinstance(value, list):
            return [{"code": v} if isinstance(v, str) else v for v in value]
        return value


class Manifest(BaseModel):
    """What a receiving bill should contain (from the backend or a local file)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    bill: str = Field(min_length=1, max_length=100)
    supplier: str | None = None
    items: list[ManifestItem]

    @field_validator("items", mode="before")
    @classmethod
    def _codes_as_items(cls, value: Any) -> Any:
        if isinstance(value, list):
            return [{"code": v} if isinstance(v, str) else v for v in value]
        return value


def load_manifest(path: Path) -> Manifest:
    """Read a manifest JSON file; raises ConfigError saying what is wrong."""
    try:
        return Manifest.model_validate(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, ValidationError) as err:
        raise ConfigError(str(path), [ConfigProblem("", f"not a usable manifest: {err}")]) from err


class CodeQuantity(BaseModel):
    """A code and how many units of it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    code: str
    quantity: int


class BillSummary(StationRecord):
    """The ``bill_summary`` journal record written when a bill ends (``#SF:END``)."""

    schema_: Literal["scanfleet.bill-summary/1"] = Field(
        default="scanfleet.bill-summary/1", alias="schema"
    )
    type: Literal["bill_summary"] = "bill_summary"
    station: str | None = None
    operator: str | None = None
    operation: Operation
    bill: str
    status: Literal["matched", "differences", "no_manifest"]
    expected_units: int = Field(description="Units on the manifest (0 without one).")
    received_units: int = Field(description="Manifest units received by a scan.")
    scans: int = Field(description="Accepted scans in the bill.")
    refused: int = Field(description="Refused reads in the bill (unexpected, duplicate, …).")
    missing: list[CodeQuantity] = Field(description="Manifest units never scanned.")
    extra: list[CodeQuantity] = Field(description="Scanned codes not on the manifest.")


@dataclass
class _Unit:
    code: str
    quantity: int
    received_by: int | None = None  # seq of the scan that received it


@dataclass
class Check:
    """The verdict of the manifest on one code (before it is journaled)."""

    expected: Expectation
    reason: str | None
    units: list[_Unit] = field(default_factory=list)
    earlier_seq: int | None = None


class BillProgress:
    """One open bill: its manifest (if any) and what has been scanned against it."""

    def __init__(self, bill: str, manifest: Manifest | None) -> None:
        self.bill = bill
        self.manifest = manifest
        self._units: dict[str, _Unit] = {}
        self._aggregates: dict[str, list[_Unit]] = {}
        self._extra: dict[str, int] = {}
        self.accepted = 0
        self.refused = 0
        self._lock = threading.Lock()
        for item in manifest.items if manifest else []:
            self._add(item)

    def _add(self, item: ManifestItem) -> list[_Unit]:
        if not item.children:
            unit = _Unit(item.code, item.quantity)
            self._units[item.code] = unit
            return [unit]
        units = [u for child in item.children for u in self._add(child)]
        self._aggregates[item.code] = units
        return units

    @property
    def expected_units(self) -> int:
        """Units on the manifest."""
        return sum(u.quantity for u in self._units.values())

    @property
    def received_units(self) -> int:
        """Manifest units received so far."""
        return sum(u.quantity for u in self._units.values() if u.received_by is not None)

    def check(self, code: str) -> Check | None:
        """What the manifest says about *code*; None when the bill has no manifest."""
        if self.manifest is None:
            return None
        with self._lock:
            units = self._aggregates.get(code)
            if units is None and code in self._units:
                units = [self._units[code]]
            if units is None:
                return Check("unexpected", "not on the bill's manifest: do not receive")
            done = [u for u in units if u.received_by is not None]
            if done:
                part = "" if len(done) == len(units) else f" ({len(done)} of {len(units)} units)"
                return Check(
                    "already_scanned",
                    f"already received{part} by seq {done[0].received_by}",
                    earlier_seq=done[0].received_by,
                )
            return Check("expected", None, units)

    def commit(self, code: str, check: Check | None, seq: int, accepted: bool) -> None:
        """Record a journaled scan of *code* against the bill."""
        with self._lock:
            if not accepted:
                self.refused += 1
                if check is not None and check.expected == "unexpected":
                    self._extra[code] = self._extra.get(code, 0) + 1
                return
            self.accepted += 1
            for unit in check.units if check else []:
                unit.received_by = seq

    def tally(self) -> BillTally:
        """What the bill's ``bill_summary`` record reports, as of now."""
        with self._lock:
            missing = [
                CodeCount(u.code, u.quantity) for u in self._units.values() if u.received_by is None
            ]
            extra = [CodeCount(c, n) for c, n in self._extra.items()]
            status: Literal["matched", "differences", "no_manifest"]
            if self.manifest is None:
                status = "no_manifest"
            else:
                status = "differences" if missing or extra else "matched"
            return BillTally(
                status=status,
                expected_units=self.expected_units,
                received_units=self.received_units,
                scans=self.accepted,
                refused=self.refused,
                missing=missing,
                extra=extra,
            )
