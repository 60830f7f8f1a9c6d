"""Manual and exempt entries: products recorded without a physical trace-code scan.

Exempt categories (中药饮片, 配方颗粒, 院内制剂, 拆零, 零散注射针剂) and uncoded stock are
recorded as ``type: "manual_entry"`` journal records with ``kind`` ``exempt`` or
``manual``. They go out in the same ordered stream as scans but are never a ``scan``
record, so no backend can count them as a physical scan. They come from a control
barcode (``#SF:EXEMPT=herbal;batch=B1;exp=2027-01-31;qty=3``) or the local interface.
"""

from __future__ import annotations

from datetime import date
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from scanfleet.daemon.core.model import Operation, StationRecord
from scanfleet.daemon.core.records import (
    MANUAL_SCHEMA,
    ManualEntryBody,
    Origin,
    Stamp,
    StationContext,
)

__all__ = ["MANUAL_SCHEMA", "Category", "EntryRequest", "ManualEntry", "entry_body", "parse_entry"]


class Category(StrEnum):
    """Why a product is recorded without a scan."""

    HERBAL = "herbal"
    """中药饮片 (prepared herbal slices)."""
    GRANULES = "granules"
    """配方颗粒 (dispensing granules)."""
    HOSPITAL_PREP = "hospital_prep"
    """院内制剂 (in-hospital preparations)."""
    SPLIT = "split"
    """拆零 (part of a pack; ``code`` is the box's code when known)."""
    LOOSE_INJECTION = "loose_injection"
    """零散注射针剂 (loose injection ampoules)."""
    UNCODED = "uncoded"
    """Stock that should carry a code but has none (or an unreadable one)."""


CHINESE_NAMES: dict[Category, str] = {
    Category.HERBAL: "中药饮片",
    Category.GRANULES: "配方颗粒",
    Category.HOSPITAL_PREP: "院内制剂",
    Category.SPLIT: "拆零",
    Category.LOOSE_INJECTION: "零散注射针剂",
    Category.UNCODED: "无码",
}
_BY_NAME = {name: cat for cat, name in CHINESE_NAMES.items()}


def parse_category(value: str) -> Category:
    """A category from its slug or its Chinese name; raises ValueError."""
    value = value.strip()
    if value in _BY_NAME:
        return _BY_NAME[value]
    return Category(value.lower())


class EntryRequest(BaseModel):
    """What an operator or the POS states about a product recorded without a scan."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    category: Category
    product: str | None = Field(default=None, max_length=200, description="Name or product code.")
    code: str | None = Field(default=None, max_length=200, description="A code, if known.")
    batch: str | None = Field(default=None, max_length=64)
    expiry: date | None = None
    quantity: int = Field(default=1, ge=1, le=100000)
    unit: str | None = Field(default=None, max_length=16)
    note: str | None = Field(default=None, max_length=500)

    @property
    def kind(self) -> Literal["manual", "exempt"]:
        """``manual`` for uncoded stock, ``exempt`` for an exempt category."""
        return "manual" if self.category is Category.UNCODED else "exempt"


_KEYS = {"qty": "quantity", "exp": "expiry", "name": "product"}


def parse_entry(text: str) -> EntryRequest:
    """Parse ``category;key=value;…`` (the control-barcode form); raises ValueError."""
    category, *pairs = text.split(";")
    data: dict[str, Any] = {"category": parse_category(category)}
    for pair in pairs:
        if not pair.strip():
            continue
        key, sep, value = pair.partition("=")
        if not sep:
            raise ValueError(f"{pair!r} is not key=value")
        key = key.strip().lower()
        data[_KEYS.get(key, key)] = value.strip()
    try:
        return EntryRequest.model_validate(data)
    except ValidationError as err:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors())
        raise ValueError(problems) from err


def entry_body(
    request: EntryRequest,
    stamp: Stamp,
    station: str | None,
    context: StationContext,
    origin: Origin,
) -> ManualEntryBody:
    """The journal body of a manual/exempt entry in the station *context*."""
    return ManualEntryBody(
        stamp=stamp,
        station=station,
        context=context,
        origin=origin,
        kind=request.kind,
        entry=request.model_dump(mode="json"),
    )


class ManualEntry(StationRecord):
    """A ``manual_entry`` journal record: never a physical scan."""

    schema_: Literal["scanfleet.manual-entry/1"] = Field(
        default="scanfleet.manual-entry/1", alias="schema"
    )
    type: Literal["manual_entry"] = "manual_entry"
    station: str | None = None
    operation: Operation
    bill: str | None = None
    operator: str | None = None
    kind: Literal["manual", "exempt"]
    category: Category
    product: str | None = None
    code: str | None = None
    batch: str | None = None
    expiry: date | None = None
    quantity: int
    unit: str | None = None
    note: str | None = None
