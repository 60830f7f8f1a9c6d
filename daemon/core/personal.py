"""Personal identity data: number checks, masking and sealing for the backend.

Identity from an ID card is sensitive personal information. The rules here:

- the ID number's GB 11643 MOD 11-2 check character and a sane birth date are the
  hard gate (no area-code lookup: it rejects valid permit numbers);
- what is shown anywhere on the terminal (journal, MQTT, logs, ``tail``, exceptions)
  is the masked form: ``110105********002X``, ``张**``;
- the plain fields are sealed for the backend with an X25519 sealed box (ephemeral
  X25519 + HKDF-SHA256 + ChaCha20-Poly1305, from ``cryptography``); only the holder of
  the backend's private key can open it (``scanfleet identity open``).
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Mapping
from datetime import date
from typing import TYPE_CHECKING, Any

from scanfleet.daemon.core.errors import ScanfleetError

if TYPE_CHECKING:
    # cryptography (~9 MB resident) is imported by the functions that seal or open, on
    # the first ID-card read: the checks and masking here are needed without it.
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

SEAL_ALG = "x25519-hkdf-sha256-chacha20poly1305/1"
"""Name of the sealing construction, carried in every record next to the ciphertext."""
_SEAL_VERSION = 1
_HKDF_INFO = b"scanfleet identity seal v1"
_NONCE = bytes(12)  # every message has a fresh ephemeral key, so its AEAD key is single-use

_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_CHECK_CHARS = "10X98765432"
_ID18_RE = re.compile(r"^\d{17}[\dX]$")
_ID15_RE = re.compile(r"^[A-Z0-9]{15}$")
OLDEST_BIRTH = date(1890, 1, 1)


class SealError(ScanfleetError, ValueError):
    """A key or sealed box is malformed, or the box does not open with this key."""


def check_character(first17: str) -> str:
    """The GB 11643 (ISO 7064 MOD 11-2) check character of 17 digits."""
    total = sum(int(d) * w for d, w in zip(first17, _WEIGHTS, strict=True))
    return _CHECK_CHARS[total % 11]


def _birth_problem(text: str, today: date) -> str | None:
    try:
        born = date(int(text[0:4]), int(text[4:6]), int(text[6:8]))
    except ValueError:
        return "birth date in the number is not a calendar date"
    if born > today:
        return "birth date in the number is in the future"
    if born < OLDEST_BIRTH:
        return "birth date in the number is implausibly old"
    return None


def id_number_problems(
    number: str, *, card_type: str = "mainland", birth: str | None = None, today: date | None = None
) -> list[str]:
    """Why *number* is not a valid number for a card of *card_type*; empty when it is.

    18-character numbers (mainland cards, ``J`` permits with 81/82/83 area codes, ``Y``
    2023 foreigner cards starting with 9) get the MOD 11-2 check, the birth-date check
    and, when *birth* (the card's birth field, YYYYMMDD) is given, a consistency check.
    The 15-character ``I`` (2017 foreigner) number has no public check rule: only its
    shape is checked. Messages never contain the number itself.
    """
    today = today or date.today()  # noqa: DTZ011 - a birth date is a local calendar date
    if card_type == "foreign_2017":
        if not _ID15_RE.match(number):
            return ["permanent-residence number is not 15 letters/digits"]
        return []
    if not _ID18_RE.match(number):
        return ["ID number is not 17 digits and a check character"]
    problems = []
    if check_character(number[:17]) != number[17]:
        problems.append("ID number check character is wrong")
    if (bad := _birth_problem(number[6:14], today)) is not None:
        problems.append(bad)
    if birth is not None and birth != number[6:14]:
        problems.append("birth date on the card does not match the ID number")
    if card_type == "hk_macau_taiwan" and number[:2] not in ("81", "82", "83"):
        problems.append("residence-permit number does not start with 81, 82 or 83")
    if card_type == "foreign_2023" and not number.startswith("9"):
        problems.append("2023 foreigner card number does not start with 9")
    return problems


def mask_id_number(number: str) -> str:
    """``11010519491231002X`` → ``110105********002X``; shorter numbers keep 3 + 3."""
    if len(number) == 18:
        return number[:6] + "*" * 8 + number[-4:]
    if len(number) <= 6:
        return "*" * len(number)
    return number[:3] + "*" * (len(number) - 6) + number[-3:]


def mask_name(name: str) -> str:
    """All but the first character masked: ``张三丰`` → ``张**``."""
    return name[:1] + "*" * max(0, len(name) - 1)


class PersonalData:
    """Plain identity fields, held so that they cannot leak by accident.

    ``repr()`` and ``str()`` show only the masked form; the plain fields are reachable
    only through :meth:`plain` (for sealing) — never log or print that.
    """

    __slots__ = ("_fields",)

    def __init__(self, fields: Mapping[str, Any]) -> None:
        self._fields = dict(fields)

    def plain(self) -> dict[str, Any]:
        """The plain fields (to seal; never to show)."""
        return dict(self._fields)

    def masked(self) -> dict[str, str]:
        """The masked form shown on the terminal and carried in records."""
        out = {"id_number": mask_id_number(str(self._fields.get("id_number", "")))}
        for key in ("name", "name_en"):
            if self._fields.get(key):
                out[key] = mask_name(str(self._fields[key]))
        return out

    def __repr__(self) -> str:
        return f"PersonalData({self.masked()})"

    __str__ = __repr__

    def __reduce__(self) -> Any:
        # Pickling would write the plain fields somewhere unnoticed.
        raise TypeError("PersonalData cannot be pickled")


def generate_keypair() -> tuple[str, str]:
    """A new backend key pair as (private, public), each base64 of 32 raw bytes."""
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    private = X25519PrivateKey.generate()
    return _b64(_raw_private(private)), _b64(_raw_public(private.public_key()))


def public_key_of(private_b64: str) -> str:
    """The public key (base64) belonging to a private key (base64)."""
    return _b64(_raw_public(_load_private(private_b64).public_key()))


def seal(plaintext: bytes, public_b64: str) -> str:
    """Encrypt *plaintext* for the holder of the private key of *public_b64*; base64 out.

    Layout: version (1) | ephemeral public key (32) | ChaCha20-Poly1305 ciphertext+tag.
    """
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
    from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

    recipient = _load_public(public_b64)
    ephemeral = X25519PrivateKey.generate()
    eph_pub = _raw_public(ephemeral.public_key())
    key = _derive(ephemeral.exchange(recipient), eph_pub, _raw_public(recipient))
    box = ChaCha20Poly1305(key).encrypt(_NONCE, plaintext, bytes([_SEAL_VERSION]) + eph_pub)
    return _b64(bytes([_SEAL_VERSION]) + eph_pub + box)


def open_sealed(sealed_b64: str, private_b64: str) -> bytes:
    """Decrypt what :func:`seal` produced.

    :raises SealError: malformed input, or a box not sealed for this key (or altered).
    """
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey
    from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

    private = _load_private(private_b64)
    try:
        blob = base64.b64decode(sealed_b64, validate=True)
    except ValueError as err:
        raise SealError("sealed identity is not base64") from err
    if len(blob) < 1 + 32 + 16 or blob[0] != _SEAL_VERSION:
        raise SealError("sealed identity has an unknown version or is truncated")
    eph_pub = blob[1:33]
    shared = private.exchange(X25519PublicKey.from_public_bytes(eph_pub))
    key = _derive(shared, eph_pub, _raw_public(private.public_key()))
    try:
        return ChaCha20Poly1305(key).decrypt(_NONCE, blob[33:], blob[:33])
    except InvalidTag as err:
        raise SealError(
            "sealed identity does not open with this key (wrong key or altered)"
        ) from err


def seal_personal(data: PersonalData, public_b64: str) -> str:
    """Seal the plain fields of *data* as canonical-ish JSON (sorted keys, UTF-8)."""
    text = json.dumps(data.plain(), ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    return seal(text.encode("utf-8"), public_b64)


def open_personal(sealed_b64: str, private_b64: str) -> dict[str, Any]:
    """Inverse of :func:`seal_personal` (backend side)."""
    value = json.loads(open_sealed(sealed_b64, private_b64).decode("utf-8"))
    if not isinstance(value, dict):
        raise SealError("sealed identity is not a JSON object")
    return value


def _derive(shared: bytes, eph_pub: bytes, recipient_pub: bytes) -> bytes:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=eph_pub + recipient_pub, info=_HKDF_INFO)
    return hkdf.derive(shared)


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def _raw_public(key: X25519PublicKey) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _raw_private(key: X25519PrivateKey) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.private_bytes(
        serialization.Encoding.Raw,
        serialization.PrivateFormat.Raw,
        serialization.NoEncryption(),
    )


def _decode_key(text: str, what: str) -> bytes:
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except ValueError as err:
        raise SealError(f"{what} key is not base64") from err
    if len(raw) != 32:
        raise SealError(f"{what} key must be 32 bytes, not {len(raw)}")
    return raw


def _load_public(text: str) -> X25519PublicKey:
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey

    return X25519PublicKey.from_public_bytes(_decode_key(text, "public"))


def _load_private(text: str) -> X25519PrivateKey:
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    return X25519PrivateKey.from_private_bytes(_decode_key(text, "private"))


def valid_public_key(text: str) -> bool:
    """True when *text* is a base64 X25519 public key."""
    try:
        _load_public(text)
    except SealError:
        return False
    return True
