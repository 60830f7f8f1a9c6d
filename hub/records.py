"""Turn what arrives on the broker into rows: envelopes into records, state and health.

The batch envelope embeds each record verbatim (``daemon/publish/envelope.py``), so the exact
bytes of every record are cut out of the message by the JSON decoder's own positions
and stored unchanged; the hash is recomputed with the daemon's own
:func:`~scanfleet.daemon.journal.codec.record_hash`, never a second implementation.
"""

from __future__ import annotations

import hashlib
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


@dataclass(slots=True)
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
COPY_TYPES = (
    "text",
    "text",
    "text",
    "int8",
    "text",
    "text",
    "text",
    "text",
    "text",
    "text",
    "timestamptz",
    "text",
    "int4",
    "int4",
    "int8",
    "text",
    "text",
    "bool",
    "bytea",
)
"""PostgreSQL types of :data:`COPY_COLUMNS`, for ``COPY … (FORMAT BINARY)``."""


def _text(record: dict[str, Any], key: str) -> str | None:
    value = record.get(key)
    return value if isinstance(value, str) else None


def _int(record: dict[str, Any], key: str) -> int | None:
    value = record.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


_SCANS_KEY = '"scans":['
_DECODER = json.JSONDecoder()
_Sliced = tuple[dict[str, Any], list[tuple[dict[str, Any], str]]]
_INT8_MIN, _INT8_MAX = -(2**63), 2**63 - 1
_INT4_MIN, _INT4_MAX = -(2**31), 2**31 - 1
_MAX_SAFE_INT = 2**53 - 1


def split_records(payload: bytes) -> tuple[dict[str, Any], list[tuple[dict[str, Any], bytes]]]:
    """The envelope (without ``scans``) and each record with its exact bytes."""
    envelope, records = _split(payload)
    return envelope, [(record, raw.encode("utf-8")) for record, raw in records]


def _split(payload: bytes) -> _Sliced:
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as err:
        raise MessageError(f"not a JSON envelope: {err}") from err
    return _split_as_built(text) or _split_any(text)


def _split_as_built(text: str) -> _Sliced | None:
    """An envelope exactly as the daemon builds it (``scans`` last, no whitespace), parsed once.

    Each record is decoded where it stands; the rest of the envelope is decoded with the
    array replaced by ``0``. That text ends with the ``0`` member and the closing brace,
    so when it decodes to an object whose ``scans`` is that ``0``, the member was the
    top-level object's last (the winning) ``scans``: the envelope with the records put
    back is the same JSON value :func:`_split_any` decodes, with the same slices. Any
    other shape answers None and goes the general way.
    """
    start = text.find(_SCANS_KEY)
    if start < 0:
        return None
    pos = start + len(_SCANS_KEY)
    out: list[tuple[dict[str, Any], str]] = []
    try:
        while True:
            record, end = _DECODER.raw_decode(text, pos)
            if type(record) is not dict:
                return None
            out.append((record, text[pos:end]))
            if text[end] != ",":
                break
            pos = end + 1
        if text[end:] != "]}":
            return None
        envelope = json.loads(text[:start] + '"scans":0}')
    except (json.JSONDecodeError, IndexError):
        return None
    if type(envelope) is not dict or envelope.get("scans") != 0:
        return None
    sentinel = envelope.pop("scans")
    if type(sentinel) is not int:
        return None
    _check_envelope(envelope, out)
    return envelope, out


def _split_any(text: str) -> _Sliced:
    try:
        envelope = json.loads(text)
    except json.JSONDecodeError as err:
        raise MessageError(f"not a JSON envelope: {err}") from err
    if not isinstance(envelope, dict):
        raise MessageError(f"not a {SCAN_BATCH_SCHEMA} envelope")
    scans = envelope.pop("scans", None)
    _check_envelope(envelope, scans)
    # The key itself comes before any record's bytes, so its first occurrence is the key.
    start = text.find(_SCANS_KEY)
    if start < 0:
        raise MessageError("the envelope's scans array is not where the contract puts it")
    pos = start + len(_SCANS_KEY)
    out: list[tuple[dict[str, Any], str]] = []
    for _ in scans:
        while text[pos] in " \t\r\n,":
            pos += 1
        try:
            record, end = _DECODER.raw_decode(text, pos)
        except json.JSONDecodeError as err:
            raise MessageError(f"the envelope's scans array is not one array: {err}") from err
        if not isinstance(record, dict):
            raise MessageError("a record is not a JSON object")
        out.append((record, text[pos:end]))
        pos = end
    return envelope, out


def _check_envelope(envelope: dict[str, Any], scans: object) -> None:
    if envelope.get("schema") != SCAN_BATCH_SCHEMA:
        raise MessageError(f"not a {SCAN_BATCH_SCHEMA} envelope")
    if not isinstance(scans, list) or not scans:
        raise MessageError("the envelope carries no records")


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


def hash_matches(record: dict[str, Any], text: str, claimed: str) -> bool:
    """Whether *claimed* is the SHA-256 of the RFC 8785 form of *record* without ``hash``.

    *record* is the decoded *text* (``hash`` still in it). When *text* already is that
    form of the whole record (:func:`is_canonical_flat`), the bytes hashed are *text*
    with the ``hash`` member cut out, which skips encoding the record again; otherwise
    the daemon's own :func:`~scanfleet.daemon.journal.codec.record_hash` decides.
    """
    if is_canonical_flat(record, text):
        # No backslash anywhere, so every quote delimits a string and the one place
        # '"hash":"…"' can stand is the (unique, top-level) hash member.
        member = f'"hash":"{claimed}"'
        at = text.find(member)
        before, after = text[:at], text[at + len(member) :]
        if before.endswith(","):
            body = before[:-1] + after
        elif after.startswith(","):
            body = before + after[1:]
        else:
            body = before + after
        return hashlib.sha256(body.encode("utf-8")).hexdigest() == claimed
    rest = {k: v for k, v in record.items() if k != "hash"}
    try:
        return record_hash(rest) == claimed
    except RecordError:
        return False


def is_canonical_flat(record: dict[str, Any], text: str) -> bool:
    """Whether *text*, which decodes to *record*, is exactly the RFC 8785 form of *record*.

    Decided without encoding, for the records terminals send: one object, ASCII keys,
    values that are strings, integers within ±(2**53 - 1), booleans or null, and no
    backslash in *text*. Then every string token is its value between quotes (JSON
    forbids raw control characters, so no value holds a character RFC 8785 escapes) and
    every integer token is ``str(value)`` except ``-0``; *text* is therefore the
    canonical form plus any whitespace, duplicate members and ``-0``, each of which only
    lengthens it, and in the order the keys stand. Sorted keys and the canonical length
    leave exactly the canonical form. Anything else answers False (the caller encodes).
    """
    if not record or "\\" in text:
        return False
    keys = list(record)
    if keys != sorted(keys) or not "".join(keys).isascii():
        return False
    # '{' + '"key":' value ',' per member, the last ',' being the '}'.
    size = 1 + 4 * len(keys) + sum(map(len, keys))
    for value in record.values():
        kind = type(value)
        if kind is str:
            size += len(value) + 2
        elif kind is int:
            if not -_MAX_SAFE_INT <= value <= _MAX_SAFE_INT:
                return False
            size += len(str(value))
        elif value is None or value is True:
            size += 4
        elif value is False:
            size += 5
        else:
            return False
    return size == len(text)


def make_row(site: str, device: str, record: dict[str, Any], text: str) -> Row:
    """One stored row from a record and its exact text; :class:`MessageError` when unusable.

    *record* is consumed: its ``hash`` is taken out (what remains is what was hashed).
    Written for speed (it runs once per record): plain ``get`` and ``type`` tests, no
    helper calls or generators on the way of an ordinary scan.
    """
    get = record.get
    seq, rid, claimed, prev = get("seq"), get("id"), get("hash"), get("prev_hash")
    if (
        type(seq) is not int
        or seq < 1
        or type(rid) is not str
        or rid != f"{device}:{seq}"
        or get("device") != device
    ):
        raise MessageError(f"record {rid!r} does not belong to {device} or has no valid seq")
    if type(claimed) is not str or type(prev) is not str:
        raise MessageError(f"record {rid} carries no hash chain")
    duplicate_of, split_unit, split_units = (
        get("duplicate_of"),
        get("split_unit"),
        get("split_units"),
    )
    duplicate_of = duplicate_of if type(duplicate_of) is int else None
    split_unit = split_unit if type(split_unit) is int else None
    split_units = split_units if type(split_units) is int else None
    # The columns' own ranges (bigint, integer): binary COPY does not check them.
    if seq > _INT8_MAX or (
        (duplicate_of is not None or split_unit is not None or split_units is not None)
        and (
            not _INT8_MIN <= (duplicate_of or 0) <= _INT8_MAX
            or not _INT4_MIN <= (split_unit or 0) <= _INT4_MAX
            or not _INT4_MIN <= (split_units or 0) <= _INT4_MAX
        )
    ):
        raise MessageError(f"record {rid}: a number does not fit its column")
    try:
        when = parse_time(str(get("time")))
    except RecordError:
        # A record without a usable time is still stored (it is evidence); it files under
        # the time it arrived.
        when = datetime.now(UTC)
    ok = hash_matches(record, text, claimed)
    del record["hash"]
    kind = get("type")
    if type(kind) is not str or not kind:
        kind = "scan"
    link = seq - 1
    losses: tuple[LossRange, ...] = ()
    if kind == "journal_loss":
        losses = _losses(record, rid)
        if "anchor_seq" in record:
            link = _int(record, "anchor_seq") or 0
    scan_kind, value, verdict = get("kind"), get("value"), get("verdict")
    operation, bill, identity_ref = get("operation"), get("bill"), get("identity_ref")
    return Row(
        rid,
        site,
        device,
        seq,
        kind,
        scan_kind if type(scan_kind) is str else None,
        value if type(value) is str else None,
        verdict if type(verdict) is str else None,
        operation if type(operation) is str else None,
        bill if type(bill) is str else None,
        when,
        identity_ref if type(identity_ref) is str else None,
        split_unit,
        split_units,
        duplicate_of,
        claimed,
        prev,
        ok,
        text.encode("utf-8"),
        losses,
        link if link >= 1 else None,
    )


def parse_scans(topic: Topic, payload: bytes) -> list[Row]:
    """Every record of a scans envelope as a row."""
    envelope, records = _split(payload)
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
