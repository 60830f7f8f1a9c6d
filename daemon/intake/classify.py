"""Classification: from the bytes a scanner sent to a typed :class:`ParseResult`.

:func:`classify` is a pure function on the scan hot path. It never raises: anything
it cannot make sense of becomes kind ``unknown`` with the reason in ``problems``.

Normalisation, in this order:

1. Input over :data:`MAX_RAW` bytes is not examined (``unknown``).
2. A leading STX is framing: stripped, recorded as ``fields.stx = true``.
3. An AIM symbology identifier (``]`` + letter + digit, e.g. ``]C0``, ``]d2``) at the
   start is stripped and recorded in ``aim``. It wins over the transport's ``aim``
   argument (HID POS, SSI) because it was sent with this very read; when both are given
   and differ, ``problems`` says so.
4. A trailing run of CR, LF, TAB and ETX is stripped, recorded (in raw text form) as
   ``fields.terminator``.
5. The bytes must be UTF-8 without control characters other than GS (0x1D).
6. A configured FNC1 substitute becomes GS. Only when the substituted text is GS1 data
   is it kept: a ``#`` in a URL or an MA code stays a ``#``.

Then the first matching rule decides the kind (shared/DESIGN.md §5, docs/code-kinds.md):
GS1 AIM or GS → ``gs1``; ``8`` + 19 digits → ``trace20``; ``]E0``/``]E4`` or 13 digits →
``ean13``; ``869`` + 11 digits → ``drug_standard_code``; ``MA.`` → ``ma``; http(s) →
``url``; 20 letters/digits → ``trace_other``; biip accepts a GS1 element string →
``gs1``; otherwise ``unknown``. A failed check digit is a ``false`` flag plus a problem,
never a different kind. The 20-digit 码上放心 code has no public check digit; none is
computed.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from scanfleet.daemon.core.model import Kind, ParseResult
from scanfleet.daemon.intake.rawtext import escape_raw

if TYPE_CHECKING:
    # biip is imported on the first read that may be GS1 (its GS1 company-prefix table
    # alone holds ~15 MB resident): a terminal that scans only 码上放心 codes never loads it.
    from biip.gs1_element_strings import GS1ElementStrings

log = logging.getLogger(__name__)

MAX_RAW = 4096
"""Reads longer than this many bytes are not examined (kind ``unknown``)."""

GS = "\x1d"
"""Group separator: how FNC1 reaches the host inside GS1 data."""

GS1_AIMS = frozenset({"]C1", "]d2", "]Q3", "]e0", "]J1"})
"""AIM identifiers that declare GS1 data (GS1-128, GS1 DataMatrix, GS1 QR, DataBar, DotCode)."""

EAN_AIMS = frozenset({"]E0", "]E4"})
"""AIM identifiers of EAN/UPC symbols (]E0 EAN-13/UPC, ]E4 EAN-8)."""

_STX = 0x02
_TERMINATORS = b"\r\n\t\x03"
_AIM_BYTES = re.compile(rb"\][A-Za-z][0-9]")
_AIM_TEXT = re.compile(r"\][A-Za-z][0-9]")
# C0 controls except GS, DEL and the C1 controls (U+0080-U+009F).
_CONTROL = re.compile(r"[\x00-\x1c\x1e-\x1f\x7f-\x9f]")
_TRACE20 = re.compile(r"8[0-9]{19}")
_DIGITS = re.compile(r"[0-9]+")
_EAN13 = re.compile(r"[0-9]{13}")
_DRUG_STANDARD_CODE = re.compile(r"869[0-9]{11}")
_URL = re.compile(r"https?://", re.IGNORECASE)
_TRACE_OTHER = re.compile(r"[0-9A-Za-z]{20}")
_GTIN = re.compile(r"[0-9]{14}")

_EAN_FORMATS = {8: "EAN-8", 12: "UPC-A", 13: "EAN-13"}

# Letter-prefixed MA/IDcode fields after MA.<country>.<type>.<company>.<product>
# (shared/reference/codes.md §2.2). Values are kept as printed.
_MA_FIELDS = {
    "S": "serial",
    "M": "production_date",
    "P": "production_date",
    "L": "batch",
    "D": "sterilisation_batch",
    "E": "expiry",
    "V": "validity",
    "C": "check",
}


def gs1_check_digit_ok(digits: str) -> tuple[bool, int]:
    """Whether the last digit of *digits* is its GS1 mod-10 check digit, and what it should be."""
    total = 0
    for i, ch in enumerate(reversed(digits[:-1])):
        total += int(ch) * (3 if i % 2 == 0 else 1)
    expected = (10 - total % 10) % 10
    return int(digits[-1]) == expected, expected


def classify(
    raw: bytes, *, aim: str | None = None, fnc1_substitute: str | None = None
) -> ParseResult:
    """Classify one raw read; never raises.

    *aim* is the symbology the transport reported, if any (an AIM prefix in the data
    wins). *fnc1_substitute* is the character the scanners send instead of GS for FNC1.
    """
    try:
        return _classify(raw, aim, fnc1_substitute)
    except Exception as err:
        # A bug here must not take the scan pipeline down: the read is still journaled
        # (raw is lossless) as unknown, and the error is logged for a fix.
        log.exception("classifier failed on raw %s", escape_raw(bytes(raw)))
        return _result(Kind.UNKNOWN, "", None, {}, bytes(raw), [f"internal error: {err!r}"])


def _result(
    kind: Kind,
    value: str,
    aim: str | None,
    fields: dict[str, Any],
    raw: bytes,
    problems: list[str],
) -> ParseResult:
    # Every argument is built here with the right type, so validation would only cost
    # time on the hot path.
    return ParseResult.model_construct(
        kind=kind, value=value, aim=aim, fields=fields, raw=escape_raw(raw), problems=problems
    )


def _classify(raw: bytes, transport_aim: str | None, substitute: str | None) -> ParseResult:
    problems: list[str] = []
    if len(raw) > MAX_RAW:
        problems.append(f"read is {len(raw)} bytes, over the {MAX_RAW}-byte limit; not examined")
        return _result(Kind.UNKNOWN, "", None, {}, raw, problems)

    data = raw
    envelope: dict[str, Any] = {}
    if data[:1] == b"\x02":
        data = data[1:]
        envelope["stx"] = True
    aim: str | None = None
    if _AIM_BYTES.match(data):
        aim = data[:3].decode("ascii")
        data = data[3:]
    stripped = data.rstrip(_TERMINATORS)
    if len(stripped) < len(data):
        envelope["terminator"] = escape_raw(data[len(stripped) :])
        data = stripped
    aim = _resolve_aim(aim, transport_aim, problems)

    if data.isascii():
        text = data.decode("ascii")
    else:
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as err:
            problems.append(f"not UTF-8: byte 0x{data[err.start]:02x} at offset {err.start}")
            return _result(
                Kind.UNKNOWN, data.decode("utf-8", "replace"), aim, envelope, raw, problems
            )
    if not text:
        problems.append("empty read")
        return _result(Kind.UNKNOWN, text, aim, envelope, raw, problems)
    control = _CONTROL.search(text)
    if control is not None:
        problems.append(
            f"control character U+{ord(control.group()):04X} at offset {control.start()}"
        )
        return _result(Kind.UNKNOWN, text, aim, envelope, raw, problems)

    kind, value, fields = _apply_rules(text, aim, substitute, problems)
    return _result(kind, value, aim, {**fields, **envelope}, raw, problems)


def _resolve_aim(in_band: str | None, transport: str | None, problems: list[str]) -> str | None:
    if transport is not None and not _AIM_TEXT.fullmatch(transport):
        problems.append(f"transport symbology {transport!r} is not an AIM identifier; ignored")
        transport = None
    if in_band is not None and transport is not None and in_band != transport:
        problems.append(f"transport reported symbology {transport} but the data carries {in_band}")
    return in_band if in_band is not None else transport


def _apply_rules(
    text: str, aim: str | None, substitute: str | None, problems: list[str]
) -> tuple[Kind, str, dict[str, Any]]:
    # Rule 1: GS1 by symbology or by a real GS. The scanner declared it, so even data
    # biip rejects stays gs1 (with the reason).
    if aim in GS1_AIMS or GS in text:
        with_gs = text.replace(substitute, GS) if substitute else text
        return (Kind.GS1, *_gs1_message(with_gs, problems, strict=True))
    if substitute and substitute in text:
        # Only a substitute marks separators: GS1 only if biip agrees, else the
        # character is data (a '#' in a URL, say) and the other rules decide.
        attempt: list[str] = []
        value, fields = _gs1_message(text.replace(substitute, GS), attempt, strict=False)
        if fields:
            problems.extend(attempt)
            return Kind.GS1, value, fields
    # Rule 2: the 码上放心 20-digit trace code; before any GS1 attempt, because biip
    # reads 8200…, 8020…, 8110…, 8004…, 8013… as GS1 AIs.
    if _TRACE20.fullmatch(text):
        return (
            Kind.TRACE20,
            text,
            {"drug_id": text[:7], "serial": text[7:], "special_drug": text.startswith("89")},
        )
    # Rule 3
    if aim in EAN_AIMS or _EAN13.fullmatch(text):
        return Kind.EAN13, text, _ean_fields(text, problems)
    # Rule 4
    if _DRUG_STANDARD_CODE.fullmatch(text):
        return Kind.DRUG_STANDARD_CODE, text, {"check_valid": _check(text, problems)}
    # Rule 5
    if text.startswith("MA."):
        return Kind.MA, text, _ma_fields(text, problems)
    if _URL.match(text):
        return Kind.URL, text, _url_fields(text, problems)
    # Rule 6
    if _TRACE_OTHER.fullmatch(text):
        return Kind.TRACE_OTHER, text, {}
    # Rule 7: whatever biip accepts as an element string (no separator needed), but
    # never a fragment shorter than a GTIN: biip reads "37000" or "99x" as GS1 too.
    attempt = []
    value, fields = _gs1_message(text, attempt, strict=False) if len(text) >= 14 else (text, {})
    if fields:
        problems.extend(attempt)
        return Kind.GS1, value, fields
    # Rule 8
    problems.append("matches no known code shape")
    return Kind.UNKNOWN, text, {}


DEFAULT_REQUIRED_AIS = ("01", "21")
"""AIs a GS1 read needs to identify a unit (a trace code): GTIN and serial."""
AI_NAMES = {"01": "GTIN", "21": "serial", "10": "batch", "17": "expiry", "11": "production date"}


def gs1_refusal(result: ParseResult, required: Sequence[str] = DEFAULT_REQUIRED_AIS) -> str | None:
    """Why a ``gs1`` read is not a trace code (the first missing required AIs), or None."""
    if result.kind is not Kind.GS1:
        return None
    elements = result.fields.get("elements") or {}
    missing = [ai for ai in required if ai not in elements]
    if not missing:
        return None
    names = ", ".join(f"({ai}) {AI_NAMES.get(ai, 'element')}".rstrip() for ai in missing)
    return f"not a trace code: GS1 data without {names}"


def _check(digits: str, problems: list[str]) -> bool:
    ok, expected = gs1_check_digit_ok(digits)
    if not ok:
        problems.append(f"check digit {digits[-1]} is wrong: GS1 mod-10 gives {expected}")
    return ok


def _ean_fields(text: str, problems: list[str]) -> dict[str, Any]:
    fmt = _EAN_FORMATS.get(len(text)) if _DIGITS.fullmatch(text) else None
    if fmt is None:
        problems.append(f"not an EAN/UPC number: expected 8, 12 or 13 digits, got {text!r}")
        return {"format": None, "check_valid": False}
    return {"format": fmt, "check_valid": _check(text, problems)}


def _gs1_message(text: str, problems: list[str], *, strict: bool) -> tuple[str, dict[str, Any]]:
    """Value and fields of GS1 element-string data; fields are empty when biip rejects it.

    With *strict* (the read is GS1 by rule 1) the fields keep their keys, null.
    """
    # A leading GS is the FNC1 that flags GS1 data, a trailing one is padding:
    # neither is part of the element string.
    from biip import ParseError
    from biip.gs1_messages import GS1Message

    value = text.strip(GS)
    try:
        message = GS1Message.parse(value)
    except (ParseError, ValueError) as err:
        problems.append(f"not a valid GS1 element string: {err}")
        if not strict:
            return value, {}
        return value, {
            **dict.fromkeys(("gtin", "gtin_valid", "expiry", "batch", "serial", "hri")),
            "elements": {},
        }
    return value, _gs1_fields(message.element_strings, message.as_hri(), problems)


def _gs1_fields(elements: GS1ElementStrings, hri: str, problems: list[str]) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "gtin": None,
        "gtin_valid": None,
        "expiry": None,
        "batch": None,
        "serial": None,
        "hri": hri,
        "elements": {},
    }
    for element in elements:
        ai = element.ai.ai
        fields["elements"][ai] = element.value
        if ai == "01":
            fields["gtin"] = element.value
            fields["gtin_valid"] = bool(_GTIN.fullmatch(element.value)) and _check(
                element.value, problems
            )
        elif ai == "17" and element.date is not None:
            fields["expiry"] = element.date.isoformat()
        elif ai == "10":
            fields["batch"] = element.value
        elif ai == "21":
            fields["serial"] = element.value
    return fields


def _ma_fields(text: str, problems: list[str]) -> dict[str, Any]:
    parts = text.split(".")
    fields: dict[str, Any] = {"parts": parts}
    if len(parts) < 5 or not all(parts[:5]):
        problems.append(
            "MA code has fewer than the 5 fields MA.<country>.<type>.<company>.<product>"
        )
        return fields
    fields.update(country=parts[1], company=parts[3], product=parts[4])
    for part in parts[5:]:
        name = _MA_FIELDS.get(part[:1])
        if name is not None:
            fields[name] = part[1:]
    return fields


def _url_fields(text: str, problems: list[str]) -> dict[str, Any]:
    try:
        parts = urlsplit(text)
        host = parts.hostname
    except ValueError as err:
        problems.append(f"malformed URL: {err}")
        return {"scheme": text.split(":", 1)[0].lower(), "host": None, "digital_link": False}
    fields: dict[str, Any] = {"scheme": parts.scheme, "host": host, "digital_link": False}
    if not host:
        problems.append("URL has no host")
    from biip import ParseError
    from biip.gs1_digital_link_uris import GS1DigitalLinkURI

    try:
        link = GS1DigitalLinkURI.parse(text)
    except (ParseError, ValueError):
        # Most URLs are not GS1 Digital Links; that is not a problem.
        return fields
    fields["digital_link"] = True
    fields.update(_gs1_fields(link.element_strings, link.as_gs1_message().as_hri(), problems))
    return fields
