"""Turn what arrives on the broker into rows: envelopes into records, state and health.

The batch envelope embeds each record verbatim (``daemon/publish/envelope.py``), so the exact
bytes of every record are cut out of the message by the JSON decoder's own positions
and stored unchanged; the hash is recomputed with the daemon's own
:func:`~scanfleet.daemon.journal.codec.record_hash`, never a second implementation.
"""

from __future__ import annotations

import json
import operator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from scanfleet.daemon.core.errors import ScanfleetError
from scanfleet.daemon.core.model import valid_name
from scanfleet.daemon.journal.codec import RecordError, parse_time, record_hash
from scanfleet.daemon.publish.envelope import SCAN_BATCH_SCHEMA

TOPIC_PREFIX = "scanfleet/v1/"
CHANNELS = ("scans", "state", "health")


class MessageError(ScanfleetError, ValueError):
    """A message that cannot be stored (not an envelope, broken record); never acked silently."""


@dataclass(frozen=True)
class Topic:
    """``scanfleet/v1/{site}/{device}/{channel}`` split into its parts."""

    site: str
    device: str
    channel: str


def parse_topic(topic: str) -> Topic:
    """The parts of a device topic; :class:`MessageError` for anything else."""
    parts = topic.split("/")
    if (
        len(parts) != 5
        or f"{parts[0]}/{parts[1]}/" != TOPIC_PREFIX
        or parts[4] not in CHANNELS
        or not valid_name(parts[2])
        or not valid_name(parts[3])
    ):
        raise MessageError(f"not a device topic: {topic!r}")
    return Topic(site=parts[2], device=parts[3], channel=parts[4])


@dataclass(frozen=True)
class LossRange:
    """Seqs a device declared lost (a ``journal_loss`` record), with why."""

    from_seq: int
    to_seq: int
    reason: str
    record_id: str


@dataclass(frozen=True)
class Row:
    """One record as stored: its exact bytes plus the columns people query."""

    id: str
    site: str
    device: str
    seq: int
    type: str
    kind: str | None
    value: str | None
    verdict: str | None
    operation: str | None
    bill: str | None
    time: datetime
    identity_ref: str | None
    split_unit: int | None
    split_units: int | None
    duplicate_of: int | None
    hash: str
    prev_hash: str
    hash_ok: bool
    payload: bytes
    losses: tuple[LossRange, ...] = field(default=())
    link_seq: int | None = None
    """Seq whose hash ``prev_hash`` must equal (seq-1, or a journal_loss's anchor_seq)."""

    def copy_tuple(self) -> tuple[Any, ...]:
        """The values in :data:`COPY_COLUMNS` order."""
        values: tuple[Any, ...] = _copy_values(self)
        return values


COPY_COLUMNS = (
    "id",
    "site",
    "device",
    "seq",
    "type",
    "kind",
    "value",
    "verdict",
    "operation",
    "bill",
    "time",
    "identity_ref",
    "split_unit",
    "split_units",
    "duplicate_of",
    "hash",
    "prev_hash",
    "hash_ok",
    "payload",
)
_copy_values = operator.attrgetter(*COPY_COLUMNS)


def _text(record: dict[str, Any], key: str) -> str | None:
    value = record.get(key)
    return value if isinstance(value, str) else None


def _int(record: dict[str, Any], key: str) -> int | None:
    value = record.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def split_records(payload: bytes) -> tuple[dict[str, Any], list[tuple[dict[str, Any], bytes]]]:
    """The envelope (without ``scans``) and each record with its exact bytes."""
    try:
        text = payload.decode("utf-8")
        envelope = json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise MessageError(f"not a JSON envelope: {err}") from err
    if not isinstance(envelope, dict) or envelope.get("schema") != SCAN_BATCH_SCHEMA:
        raise MessageError(f"not a {SCAN_BATCH_SCHEMA} envelope")
    scans = envelope.pop("scans", None)
    if not isinstance(scans, list) or not scans:
        raise MessageError("the envelope carries no records")
    # The key itself comes before any record's bytes, so its first occurrence is the key.
    start = text.find('"scans":[')
    if start < 0:
        raise MessageError("the envelope's scans array is not where the contract puts it")
    decoder = json.JSONDecoder()
    pos = start + len('"scans":[')
    out: list[tuple[dict[str, Any], bytes]] = []
    for _ in scans:
        while text[pos] in " \t\r\n,":
            pos += 1
        record, end = decoder.raw_decode(text, pos)
        if not isinstance(record, dict):
            raise MessageError("a record is not a JSON object")
        out.append((record, text[pos:end].encode("utf-8")))
        pos = end
    return envelope, out


def _losses(record: dict[str, Any], rid: str) -> tuple[LossRange, ...]:
    reason = _text(record, "reason") or "journal_loss"
    ranges: list[LossRange] = []
    for item in record.get("lost") or []:
        if isinstance(item, dict):
            first, last = _int(item, "first_seq"), _int(item, "last_seq")
            if first is not None and last is not None and 1 <= first <= last:
                ranges.append(LossRange(first, last, reason, rid))
    # A chain restart (epoch > 0) jumps the seq far above anything used before; the seqs
    # skipped were never handed out, which the record explains as well.
    epoch, seq = _int(record, "epoch") or 0, _int(record, "seq") or 0
    if epoch > 0:
        below = max([r.to_seq for r in ranges] + [_int(record, "anchor_seq") or 0]) + 1
        if below < seq:
            ranges.append(LossRange(below, seq - 1, f"chain restart (epoch {epoch})", rid))
    return tuple(ranges)


def make_row(site: str, device: str, record: dict[str, Any], payload: bytes) -> Row:
    """One stored row from a record and its bytes; :class:`MessageError` when unusable.

    *record* is consumed: its ``hash`` is taken out (what remains is what was hashed).
    """
    seq, rid = _int(record, "seq"), _text(record, "id")
    claimed, prev = _text(record, "hash"), _text(record, "prev_hash")
    if seq is None or seq < 1 or rid != f"{device}:{seq}" or record.get("device") != device:
        raise MessageError(f"record {rid!r} does not belong to {device} or has no valid seq")
    if claimed is None or prev is None:
        raise MessageError(f"record {rid} carries no hash chain")
    try:
        when = parse_time(str(record.get("time")))
    except RecordError:
        # A record without a usable time is still stored (it is evidence); it files under
        # the time it arrived.
        when = datetime.now(UTC)
    del record["hash"]
    try:
        ok = record_hash(record) == claimed
    except RecordError:
        ok = False
    kind = _text(record, "type") or "scan"
    losses = _losses(record, rid) if kind == "journal_loss" else ()
    link = seq - 1
    if kind == "journal_loss" and "anchor_seq" in record:
        link = _int(record, "anchor_seq") or 0
    return Row(
        id=rid,
        site=site,
        device=device,
        seq=seq,
        type=kind,
        kind=_text(record, "kind"),
        value=_text(record, "value"),
        verdict=_text(record, "verdict"),
        operation=_text(record, "operation"),
        bill=_text(record, "bill"),
        time=when,
        identity_ref=_text(record, "identity_ref"),
        split_unit=_int(record, "split_unit"),
        split_units=_int(record, "split_units"),
        duplicate_of=_int(record, "duplicate_of"),
        hash=claimed,
        prev_hash=prev,
        hash_ok=ok,
        payload=payload,
        losses=losses,
        link_seq=link if link >= 1 else None,
    )


def parse_scans(topic: Topic, payload: bytes) -> list[Row]:
    """Every record of a scans envelope as a row."""
    envelope, records = split_records(payload)
    if envelope.get("device") != topic.device:
        raise MessageError(f"envelope device {envelope.get('device')!r} on {topic.device}'s topic")
    return [make_row(topic.site, topic.device, rec, raw) for rec, raw in records]


def parse_json_object(payload: bytes) -> dict[str, Any]:
    """A state or health message as a dict; :class:`MessageError` when not a JSON object."""
    try:
        value = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise MessageError(f"not JSON: {err}") from err
    if not isinstance(value, dict):
        raise MessageError("not a JSON object")
    return value


def message_time(message: dict[str, Any]) -> datetime:
    """The ``time`` a state or health message carries (arrival time when it has none)."""
    try:
        return parse_time(str(message.get("time")))
    except RecordError:
        return datetime.now(UTC)
