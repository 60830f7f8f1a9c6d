"""How a journal record is shown to people (live view, logs, ``scanfleet tail``).

Identity reads show only their masked form; nothing here ever sees plain identity,
because the journal never holds it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def record_kind(record: Mapping[str, Any]) -> str:
    """The code kind of a scan, or the record type of anything else (``identity_read``)."""
    return str(record.get("kind") or record.get("type", "?"))


def record_value(record: Mapping[str, Any]) -> str:
    """The scanned value, or for an identity read its masked ID number and name."""
    if record.get("type") == "identity_read":
        masked = record.get("masked") or {}
        return " ".join(str(v) for v in (masked.get("id_number"), masked.get("name")) if v)
    fields = record.get("fields") or {}
    if record.get("kind") == "gs1" and fields.get("hri"):
        # The element string holds invisible GS separators; people read the (AI) form.
        return str(fields["hri"])
    return str(record.get("value", ""))
