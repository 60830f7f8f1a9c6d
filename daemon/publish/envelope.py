"""What the publisher puts on the wire: the scan-batch envelope and the retained state.

The batch envelope is built by byte concatenation around the journal's stored
records, so every record reaches the backend byte-identical to what the journal
hashed; the backend can recompute each ``hash`` from the bytes it received.
The pydantic models below are the documented contract (``docs/schema/``) and what
tests and consumers validate against; the publisher never re-serialises a record.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from scanfleet.daemon.core.model import NAME_PATTERN

SCAN_BATCH_SCHEMA = "scanfleet.scan-batch/1"
STATE_SCHEMA = "scanfleet.state/1"

_TAIL = b"]}"


def scans_topic(site: str, device: str) -> str:
    """``scanfleet/v1/{site}/{device}/scans``."""
    return f"scanfleet/v1/{site}/{device}/scans"


def state_topic(site: str, device: str) -> str:
    """``scanfleet/v1/{site}/{device}/state`` (retained, also the will topic)."""
    return f"scanfleet/v1/{site}/{device}/state"


def batch_head(device: str, first_seq: int, last_seq: int) -> bytes:
    """Everything of a batch envelope before the first record."""
    return (
        b'{"schema":"'
        + SCAN_BATCH_SCHEMA.encode()
        + b'","device":'
        + json.dumps(device).encode()
        # Integers are formatted by Python, never by %-formatting of untrusted text.
        + b',"first_seq":'
        + str(first_seq).encode()
        + b',"last_seq":'
        + str(last_seq).encode()
        + b',"scans":['
    )


def batch_overhead(device: str, max_seq: int, max_records: int) -> int:
    """Upper bound of the bytes an envelope adds around up to *max_records* records."""
    return len(batch_head(device, max_seq, max_seq)) + len(_TAIL) + max(max_records - 1, 0)


def build_batch(device: str, first_seq: int, payloads: Sequence[bytes]) -> bytes:
    """The envelope of contiguous records starting at *first_seq*, records embedded verbatim."""
    if not payloads:
        raise ValueError("a batch carries at least one record")
    last_seq = first_seq + len(payloads) - 1
    return batch_head(device, first_seq, last_seq) + b",".join(payloads) + _TAIL


class ScanBatch(BaseModel):
    """One message on ``scanfleet/v1/{site}/{device}/scans``.

    ``scans`` holds the journal records ``first_seq`` … ``last_seq`` of one device,
    contiguous and in order, each exactly as journaled (see ``scan.schema.json``;
    other record types such as ``identity_read`` use the same envelope). Consumers
    deduplicate by each record's ``id`` and detect gaps by ``seq``.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    schema_: Literal["scanfleet.scan-batch/1"] = Field(
        default="scanfleet.scan-batch/1", alias="schema"
    )
    device: Annotated[str, Field(pattern=NAME_PATTERN)]
    first_seq: Annotated[int, Field(ge=1)]
    last_seq: Annotated[int, Field(ge=1)]
    scans: Annotated[
        list[dict[str, Any]],
        Field(
            min_length=1,
            description=(
                "Journal records first_seq..last_seq in order, byte-identical to the device's "
                "journal (RFC 8785 canonical JSON); each has device, seq, id, prev_hash, hash."
            ),
        ),
    ]

    @model_validator(mode="after")
    def _contiguous(self) -> ScanBatch:
        seqs = [rec.get("seq") for rec in self.scans]
        expected = list(range(self.first_seq, self.last_seq + 1))
        if seqs != expected:
            raise ValueError(f"scans must carry seq {self.first_seq}..{self.last_seq} in order")
        if any(rec.get("device") != self.device for rec in self.scans):
            raise ValueError("every record must belong to the envelope's device")
        return self


class JournalSummary(BaseModel):
    """The journal figures a fleet operator watches."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    depth: Annotated[int, Field(ge=0, description="Undelivered records.")]
    last_seq: Annotated[int, Field(ge=0)]
    delivered_seq: Annotated[int, Field(ge=0)]
    oldest_undelivered_age_s: float | None = Field(
        description="Age in seconds of the oldest undelivered record; null when none."
    )


class AlarmInfo(BaseModel):
    """One active alarm."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    code: str
    message: str
    severity: Literal["warning", "error", "critical"]
    since: datetime
    details: dict[str, Any] = Field(default_factory=dict)


class DeviceState(BaseModel):
    """The retained message on ``scanfleet/v1/{site}/{device}/state``.

    Published at every connect (``online: true``), when alarms change and
    periodically; the broker publishes the will (``online: false``, no journal or
    alarms) when the device disappears without a clean disconnect, and the device
    publishes ``online: false`` itself before a clean disconnect.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    schema_: Literal["scanfleet.state/1"] = Field(default="scanfleet.state/1", alias="schema")
    device: Annotated[str, Field(pattern=NAME_PATTERN)]
    site: Annotated[str, Field(pattern=NAME_PATTERN)]
    online: bool
    version: str
    boot_id: str | None = Field(description="Kernel boot id of the device's current boot.")
    journal: JournalSummary | None = Field(
        default=None, description="Null in the will message (composed at connect time)."
    )
    alarms: list[AlarmInfo] = Field(default_factory=list)
    time: datetime = Field(
        description="When the device composed this message; for the will, the connect time."
    )
    extra: dict[str, Any] | None = Field(
        default=None, description="Daemon-specific figures (e.g. bound scanners); may grow."
    )
    protocol: Literal["5", "3.1.1"] | None = Field(
        default=None,
        description="MQTT version of the device's connection. Under 3.1.1 the broker "
        "cannot refuse a publish with a reason code, so the device cannot raise "
        "publish_refused or notice that nobody subscribes: the backend's gap repair "
        "(docs/backend-contract.md) is the safety net.",
    )


def state_payload(state: DeviceState) -> bytes:
    """Compact JSON of *state* with ``schema`` under its wire name."""
    return state.model_dump_json(by_alias=True).encode()
