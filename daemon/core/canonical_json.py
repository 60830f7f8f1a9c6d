"""RFC 8785 (JCS) canonical JSON: the one form scanfleet hashes and signs.

Journal records are hashed over it (:mod:`scanfleet.daemon.journal.codec`) and pushed
config documents are signed over it (:mod:`scanfleet.daemon.remote.config`). It depends
on nothing of scanfleet but the error root, so the fleet tools can use it as well.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import rfc8785

from scanfleet.daemon.core.errors import ScanfleetError


class CanonicalJSONError(ScanfleetError, ValueError):
    """A value has no RFC 8785 form (NaN, an integer beyond 2**53, a lone surrogate…)."""


def canonical(value: Mapping[str, Any]) -> bytes:
    """RFC 8785 canonical JSON bytes of *value*.

    The ``rfc8785`` package is pure Python (~60 µs a scan record, twice per append);
    the C ``json`` encoder produces the same bytes whenever keys are ASCII (so code-point
    order equals JCS's UTF-16 order), integers are within 2**53 and floats are not
    integral and lie where Python's repr and ECMAScript agree on fixed notation.
    Anything else goes through ``rfc8785``.
    """
    if jcs_compatible(value):
        try:
            return FAST_ENCODER.encode(value).encode("utf-8")
        except (UnicodeEncodeError, ValueError):
            pass  # lone surrogates and the like: let rfc8785 give the precise error
    try:
        return rfc8785.dumps(value)
    except rfc8785.CanonicalizationError as err:
        raise CanonicalJSONError(f"not canonicalizable JSON: {err}") from err


FAST_ENCODER = json.JSONEncoder(
    ensure_ascii=False, sort_keys=True, separators=(",", ":"), allow_nan=False
)
"""The C encoder, which writes RFC 8785 bytes for any value :func:`jcs_compatible` accepts."""
_MAX_SAFE_INT = 2**53 - 1


def jcs_compatible(value: Any) -> bool:
    """True when :data:`FAST_ENCODER` gives *value*'s RFC 8785 bytes (see :func:`canonical`)."""
    # Called once per append on the whole record: written for speed (strings, the
    # common case, never cost a call; no generator frames).
    kind = type(value)
    if kind is dict:
        for key, item in value.items():
            if type(key) is not str or not key.isascii():
                return False
            if type(item) is str or item is None or jcs_compatible(item):
                continue
            return False
        return True
    if kind is list:
        for item in value:
            if type(item) is str or item is None or jcs_compatible(item):
                continue
            return False
        return True
    if value is None or kind is bool or isinstance(value, str):
        return True  # str subclasses (StrEnum members) encode as their value
    if kind is int:
        return bool(-_MAX_SAFE_INT <= value <= _MAX_SAFE_INT)
    if kind is float:
        return bool(1e-4 <= abs(value) < 1e16 and not value.is_integer())
    return False
