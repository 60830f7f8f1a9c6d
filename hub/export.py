"""The quarterly backup: a site or date range as JSONL and CSV with a manifest of hashes.

``records.jsonl`` holds every record's stored bytes verbatim, one per line, ordered by
site, device and seq, so each line re-hashes to its own ``hash`` with nothing but
SHA-256 and RFC 8785. ``manifest.json`` lists the files' SHA-256 and, per device, the
seq range, count and the hash of its last record; ``SHA256SUMS`` lets ``sha256sum -c``
check the files on a machine without scanfleet. :func:`verify_export` checks all of
it: files, each record's hash and the prev_hash links between consecutive seqs.
"""

from __future__ import annotations

import csv
import hashlib
import json
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from scanfleet.daemon.core.errors import ScanfleetError
from scanfleet.daemon.journal.codec import RecordError, record_hash

EXPORT_SCHEMA = "scanfleet.hub-export/1"
CSV_COLUMNS = (
    "site",
    "device",
    "seq",
    "id",
    "type",
    "time",
    "kind",
    "value",
    "verdict",
    "operation",
    "bill",
    "identity_ref",
    "split_unit",
    "split_units",
    "hash",
)


class ExportError(ScanfleetError, ValueError):
    """The output directory is unusable, or an export does not verify."""


@dataclass
class _DeviceSummary:
    site: str
    records: int = 0
    first_seq: int = 0
    last_seq: int = 0
    last_hash: str = ""


def export(
    conn: psycopg.Connection[tuple[Any, ...]],
    out: Path,
    *,
    site: str | None = None,
    since: date | None = None,
    until: date | None = None,
) -> dict[str, Any]:
    """Write the export into *out* (created; must be empty); returns the manifest."""
    out.mkdir(parents=True, exist_ok=True)
    if any(out.iterdir()):
        raise ExportError(f"{out} is not empty; an export never overwrites another")
    start = datetime(since.year, since.month, since.day, tzinfo=UTC) if since else None
    end = (
        datetime(until.year, until.month, until.day, tzinfo=UTC) + timedelta(days=1)
        if until
        else None
    )
    devices: dict[str, _DeviceSummary] = {}
    jsonl, csv_path = out / "records.jsonl", out / "records.csv"
    with (
        jsonl.open("wb") as lines,
        csv_path.open("w", encoding="utf-8", newline="") as table,
        conn.cursor(name="hub_export") as cur,
    ):
        writer = csv.writer(table)
        writer.writerow(CSV_COLUMNS)
        cur.execute(
            sql.SQL(
                "SELECT payload, {} FROM records"
                " WHERE (%(site)s::text IS NULL OR site = %(site)s)"
                " AND (%(start)s::timestamptz IS NULL OR time >= %(start)s)"
                " AND (%(end)s::timestamptz IS NULL OR time < %(end)s)"
                " ORDER BY site, device, seq"
            ).format(sql.SQL(", ").join(sql.Identifier(c) for c in CSV_COLUMNS)),
            {"site": site, "start": start, "end": end},
        )
        for payload, *cols in cur:
            lines.write(bytes(payload) + b"\n")
            row = dict(zip(CSV_COLUMNS, cols, strict=True))
            row["time"] = row["time"].astimezone(UTC).isoformat().replace("+00:00", "Z")
            writer.writerow([row[c] for c in CSV_COLUMNS])
            dev = devices.setdefault(row["device"], _DeviceSummary(site=row["site"]))
            dev.records += 1
            dev.first_seq = dev.first_seq or row["seq"]
            dev.last_seq = row["seq"]
            dev.last_hash = row["hash"]
    conn.commit()
    files = {p.name: _file_entry(p) for p in (jsonl, csv_path)}
    manifest = {
        "schema": EXPORT_SCHEMA,
        "created": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
        "selection": {
            "site": site,
            "since": since.isoformat() if since else None,
            "until": until.isoformat() if until else None,
        },
        "files": files,
        "records": sum(d.records for d in devices.values()),
        "devices": {name: d.__dict__ for name, d in sorted(devices.items())},
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    sums = "".join(f"{e['sha256']}  {name}\n" for name, e in files.items())
    sums += f"{_sha256(out / 'manifest.json')}  manifest.json\n"
    (out / "SHA256SUMS").write_text(sums, encoding="utf-8")
    return manifest


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _file_entry(path: Path) -> dict[str, Any]:
    return {"sha256": _sha256(path), "bytes": path.stat().st_size}


@dataclass
class Verification:
    """What :func:`verify_export` found."""

    records: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Nothing wrong."""
        return not self.problems


def verify_export(directory: Path) -> Verification:
    """Check an export offline: file hashes, every record's hash, the links between seqs."""
    result = Verification()
    try:
        manifest = json.loads((directory / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ExportError(f"{directory}: no readable manifest.json: {err}") from err
    for name, entry in manifest.get("files", {}).items():
        path = directory / name
        if not path.exists():
            result.problems.append(f"{name}: missing")
        elif _sha256(path) != entry.get("sha256"):
            result.problems.append(f"{name}: SHA-256 differs from the manifest")
    last: dict[str, tuple[int, str]] = {}
    with (directory / "records.jsonl").open("rb") as lines:
        for number, line in enumerate(lines, start=1):
            result.records += 1
            try:
                record = json.loads(line)
                body = {k: v for k, v in record.items() if k != "hash"}
                if record_hash(body) != record.get("hash"):
                    result.problems.append(f"line {number} ({record.get('id')}): hash mismatch")
            except (ValueError, AttributeError, RecordError) as err:
                result.problems.append(f"line {number}: not a record: {err}")
                continue
            device, seq = record.get("device"), record.get("seq")
            before = last.get(device)
            if (
                before
                and before[0] == seq - 1
                and record.get("type") != "journal_loss"
                and record.get("prev_hash") != before[1]
            ):
                result.problems.append(f"line {number} ({record.get('id')}): prev_hash link broken")
            last[device] = (seq, record.get("hash", ""))
    if result.records != manifest.get("records"):
        result.problems.append(
            f"records.jsonl holds {result.records} records, the manifest says "
            f"{manifest.get('records')}"
        )
    for device, summary in manifest.get("devices", {}).items():
        if last.get(device, (0, ""))[1] != summary.get("last_hash"):
            result.problems.append(f"{device}: last record's hash differs from the manifest")
    return result
