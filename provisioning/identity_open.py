"""Backend side of identity protection: the key pair and opening sealed identity records.

The terminal only ever holds the public key. The private key stays with the
authorized backend service; :func:`open_records` decrypts ``identity_read`` records
taken from the journal (``scanfleet tail --json``) or from MQTT scan batches.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from scanfleet.daemon.core.personal import generate_keypair, open_personal, public_key_of


def write_keypair(private_path: Path) -> str:
    """Create a key pair, write the private key to *private_path* (mode 0600); return the public.

    :raises FileExistsError: *private_path* exists (a key is never overwritten).
    """
    private, public = generate_keypair()
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as out:
        out.write(private + "\n")
    return public


def read_private_key(path: Path) -> str:
    """The base64 private key stored in *path*."""
    return path.read_text(encoding="ascii").strip()


def public_key_from_file(path: Path) -> str:
    """The public key belonging to the private key in *path*."""
    return public_key_of(read_private_key(path))


def iter_records(text: str) -> Iterator[dict[str, Any]]:
    """Journal records in *text*: one JSON document, JSON lines, or scan-batch envelopes."""
    stripped = text.strip()
    if not stripped:
        return
    try:
        docs: Iterable[Any] = [json.loads(stripped)]
    except json.JSONDecodeError:
        docs = (json.loads(line) for line in stripped.splitlines() if line.strip())
    for doc in docs:
        items = doc if isinstance(doc, list) else [doc]
        for item in items:
            if isinstance(item, dict) and isinstance(item.get("scans"), list):
                yield from (r for r in item["scans"] if isinstance(r, dict))
            elif isinstance(item, dict):
                yield item


def open_records(records: Iterable[dict[str, Any]], private_key: str) -> Iterator[dict[str, Any]]:
    """For each sealed ``identity_read`` record: its id, masked form and opened identity.

    :raises SealError: a record was not sealed for this key, or was altered.
    """
    for record in records:
        if record.get("type") != "identity_read" or not record.get("sealed"):
            continue
        yield {
            "id": record.get("id"),
            "time": record.get("time"),
            "card_type": record.get("card_type"),
            "masked": record.get("masked"),
            "identity": open_personal(record["sealed"], private_key),
        }
