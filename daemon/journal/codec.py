"""How a journal record is built, hashed and stored compactly.

A record is the body the pipeline hands over plus ``device``, ``seq``, ``id``,
``prev_hash`` and ``hash``. ``hash`` is SHA-256 over the RFC 8785 (JCS) canonical JSON
of the record without ``hash``; the stored payload is the canonical JSON of the whole
record. Payloads are stored as raw DEFLATE with a preset dictionary: a scan is ~860
bytes of JSON, almost all of it field names and values that repeat from scan to scan,
so a dictionary of typical records brings it to ~190 bytes while decompression still
returns the exact canonical bytes. Dictionaries live in the database next to the
records (table ``dictionaries``), so a journal never depends on the code that wrote it.
"""

from __future__ import annotations

import hashlib
import json
import zlib
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from scanfleet.daemon.core.canonical_json import FAST_ENCODER as _FAST
from scanfleet.daemon.core.canonical_json import CanonicalJSONError
from scanfleet.daemon.core.canonical_json import canonical as canonical_json
from scanfleet.daemon.core.canonical_json import jcs_compatible as _jcs_compatible
from scanfleet.daemon.core.errors import ScanfleetError
from scanfleet.daemon.core.model import GENESIS_HASH

RESERVED_KEYS = frozenset({"device", "seq", "id", "prev_hash", "hash"})
"""Fields the journal adds; a body must not carry them."""

DICTIONARY_BYTES = 8192
"""Largest preset dictionary: bigger ones gained nothing measurable on scan records."""

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_WBITS = -15  # raw DEFLATE: no zlib header/adler, the row already has its own framing
_COMPRESS_WBITS = -14


class RecordError(ScanfleetError, ValueError):
    """A body cannot become a journal record (reserved key, bad time, not JSON)."""


def canonical(value: Mapping[str, Any]) -> bytes:
    """RFC 8785 canonical JSON bytes of *value* (:mod:`~scanfleet.daemon.core.canonical_json`);
    :class:`RecordError` when it has none."""
    try:
        return canonical_json(value)
    except CanonicalJSONError as err:
        raise RecordError(f"record is {err}") from err


def record_hash(record_without_hash: Mapping[str, Any]) -> str:
    """SHA-256 hex of the canonical JSON of a record without its ``hash`` field."""
    return hashlib.sha256(canonical(record_without_hash)).hexdigest()


def format_time(value: datetime) -> str:
    """An aware datetime as ISO-8601 UTC the way the Scan model serialises it (``…Z``)."""
    if value.tzinfo is None:
        raise RecordError("time must carry a timezone")
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def parse_time(value: str) -> datetime:
    """Parse an ISO-8601 time that carries a timezone."""
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError as err:
        raise RecordError(f"time {value!r} is not ISO-8601") from err
    if parsed.tzinfo is None:
        raise RecordError(f"time {value!r} carries no timezone")
    return parsed.astimezone(UTC)


def to_micros(value: datetime) -> int:
    """Microseconds since the Unix epoch (exact, no float rounding)."""
    return (value - _EPOCH) // timedelta(microseconds=1)


def from_micros(micros: int) -> datetime:
    """Inverse of :func:`to_micros`."""
    return _EPOCH + timedelta(microseconds=micros)


def prepare_body(body: Mapping[str, Any], now: datetime) -> tuple[dict[str, Any], int]:
    """Copy *body* with ``time`` as an ISO string; return it and the time in µs.

    A ``time`` given as a string is kept verbatim (it is what was read) once it parses;
    a missing ``time`` becomes *now*.
    """
    clash = RESERVED_KEYS.intersection(body)
    if clash:
        raise RecordError(f"the journal sets {sorted(clash)} itself; remove them from the body")
    out = dict(body)
    raw_time = out.get("time", now)
    if isinstance(raw_time, datetime):
        out["time"] = format_time(raw_time)
        return out, to_micros(raw_time.astimezone(UTC))
    if isinstance(raw_time, str):
        return out, to_micros(parse_time(raw_time))
    raise RecordError(f"time must be an ISO-8601 string or datetime, not {type(raw_time)}")


def seal(
    body: Mapping[str, Any], device: str, seq: int, prev_hash: str
) -> tuple[dict[str, Any], bytes]:
    """The complete record (hash included) and its canonical payload bytes."""
    record = {**body, "device": device, "seq": seq, "id": f"{device}:{seq}", "prev_hash": prev_hash}
    record["hash"] = record_hash(record)
    return record, canonical(record)


# -- the lean path: serialize a body once, seal it with byte joins --------------------

_SLOT_KEYS = ("device", "hash", "id", "prev_hash", "seq")
"""The fields the journal adds, in canonical (sorted) order."""
_MARKS = {key: f"\x00scanfleet-{key}\x00" for key in _SLOT_KEYS}
_MARK_BYTES = tuple(_FAST.encode(_MARKS[key]).encode("ascii") for key in _SLOT_KEYS)
_MARK_PREFIX = b"\\u0000scanfleet-"
_HASH_KEY = b',"hash":'


class Encoded:
    """A body serialized once, split where the journal's own fields go.

    ``parts`` are the six byte runs of the record's canonical JSON around the values of
    ``device``, ``hash``, ``id``, ``prev_hash`` and ``seq`` (which sort in that order):
    sealing at a seq is joining them with those values, no second encoding of the body.
    Bodies the C encoder cannot write as RFC 8785 (see :func:`canonical`) keep
    ``parts`` None and are sealed by :func:`seal`.
    """

    __slots__ = ("body", "parts")

    def __init__(self, body: Mapping[str, Any]) -> None:
        self.body = body
        self.parts: tuple[bytes, ...] | None = None
        if not _jcs_compatible(body):
            return
        try:
            text = _FAST.encode({**body, **_MARKS}).encode("utf-8")
        except (UnicodeEncodeError, ValueError, TypeError):
            return  # seal() gives the precise error
        if text.count(_MARK_PREFIX) != len(_MARK_BYTES):
            return  # a body value that looks like a mark: take the slow path
        parts: list[bytes] = []
        for mark in _MARK_BYTES:
            head, _, text = text.partition(mark)
            parts.append(head)
        parts.append(text)
        if parts[1].endswith(_HASH_KEY):
            self.parts = tuple(parts)


def seal_encoded(
    encoded: Encoded, device_json: bytes, seq: int, prev_hash: str
) -> tuple[str, bytes]:
    """The hash and canonical payload of *encoded* sealed at *seq* after *prev_hash*.

    *device_json* is the device id as a JSON string (``encode_device``). Same bytes as
    :func:`seal`.
    """
    parts = encoded.parts
    if parts is None:
        device = json.loads(device_json)
        record, payload = seal(encoded.body, device, seq, prev_hash)
        return str(record["hash"]), payload
    p0, p1, p2, p3, p4, p5 = parts
    seq_text = b"%d" % seq
    # Everything after the hash, joined once: hashed after the head, then appended to it.
    prev = prev_hash.encode("ascii")
    tail = b"".join(
        (p2, device_json[:-1], b":", seq_text, b'"', p3, b'"', prev, b'"', p4, seq_text, p5)
    )
    head = p0 + device_json + p1
    hash_hex = hashlib.sha256(head[: -len(_HASH_KEY)] + tail).hexdigest()
    return hash_hex, b"".join((head, b'"', hash_hex.encode("ascii"), b'"', tail))


def encode_device(device: str) -> bytes:
    """The device id as the JSON string the lean path splices in."""
    return _FAST.encode(device).encode("utf-8")


class Codec:
    """DEFLATE with preset dictionaries, keyed by the dictionary id stored with each row."""

    def __init__(self) -> None:
        self._dicts: dict[int, bytes] = {}
        self._compressors: dict[int, zlib._Compress] = {}

    def add(self, dict_id: int, data: bytes) -> None:
        """Make dictionary *dict_id* known."""
        self._dicts[dict_id] = data
        # A 16 KiB window (the 8 KiB dictionary and a record fit) and memLevel 6: the
        # same output size on scan records as 32 KiB/9, and copy() (once per append)
        # copies a quarter of the state. Inflating with the 32 KiB window reads it.
        self._compressors[dict_id] = zlib.compressobj(
            6, zlib.DEFLATED, _COMPRESS_WBITS, 6, zlib.Z_DEFAULT_STRATEGY, data
        )

    def __contains__(self, dict_id: object) -> bool:
        return dict_id in self._dicts

    def compress(self, dict_id: int, payload: bytes) -> bytes:
        """Deflate *payload* with dictionary *dict_id*."""
        # copy() of a primed compressor skips re-hashing the dictionary: ~10x faster.
        compressor = self._compressors[dict_id].copy()
        return compressor.compress(payload) + compressor.flush()

    def decompress(self, dict_id: int, blob: bytes) -> bytes:
        """Inflate a stored payload; raises ``zlib.error`` or ``KeyError`` when it cannot."""
        decompressor = zlib.decompressobj(_WBITS, self._dicts[dict_id])
        data = decompressor.decompress(blob) + decompressor.flush()
        if not decompressor.eof:
            raise zlib.error("truncated payload")
        return data


def builtin_dictionary(device: str) -> bytes:
    """The first dictionary of a new journal: synthetic typical records of *device*.

    Used until the journal has enough of its own records to train a better one.
    """
    common: dict[str, Any] = {
        "schema": "scanfleet.scan/1",
        "type": "scan",
        "time": "2026-01-01T08:00:00.000000Z",
        "clock": "synced",
        "t_mono": 12345.678901,
        "boot_id": "00000000-0000-0000-0000-000000000000",
        "source": {"device": "scanner1", "driver": "serial", "port": "/dev/ttyACM0"},
        "verdict": "accepted",
        "reason": None,
        "operation": "retail_sale",
        "station": None,
        "bill": None,
        "operator": None,
        "identity_ref": None,
        "problems": [],
    }
    samples: list[dict[str, Any]] = [
        {
            "aim": "]d2",
            "kind": "gs1",
            "raw": "]d20104012345678901172705311012345\\x1d2112345678",
            "value": "0104012345678901172705311012345\x1d2112345678",
            "fields": {"gtin": "04012345678901", "expiry": "2027-05-31", "batch": "12345"},
        },
        {
            "aim": "]E0",
            "kind": "ean13",
            "raw": "]E06901234567892",
            "value": "6901234567892",
            "fields": {"gtin": "06901234567892"},
        },
        {
            "aim": "]C0",
            "kind": "trace20",
            "raw": "]C081234560123456789012",
            "value": "81234560123456789012",
            "fields": {"drug_id": "8123456", "serial": "0123456789012"},
        },
    ]
    parts = []
    for seq, sample in enumerate(samples, start=1):
        record = {**common, **sample}
        sealed, _ = seal(record, device, seq, GENESIS_HASH)
        parts.append(canonical(sealed))
    return b"".join(parts)[-DICTIONARY_BYTES:]


def train_dictionary(payloads: Iterable[bytes]) -> bytes:
    """A dictionary from recent canonical payloads of this journal.

    Hashes are random and never repeat, so they are blanked rather than wasting
    dictionary space; DEFLATE prefers near matches, so the newest records go last.
    """
    parts = []
    for payload in payloads:
        record = json.loads(payload)
        for key in ("hash", "prev_hash"):
            if key in record:
                record[key] = ""
        parts.append(canonical(record))
    return b"".join(parts)[-DICTIONARY_BYTES:]
