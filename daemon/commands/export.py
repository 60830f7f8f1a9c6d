"""``scanfleet export``: the journal as JSONL, CSV or a flat SQLite file (quarterly backup).

JSONL is the canonical record bytes one per line, exactly as stored and hashed, so a
backup can be re-verified without scanfleet. CSV flattens the main scan columns for a
spreadsheet. ``sqlite`` writes a plain, uncompressed table (via sqlite-utils) for
ad-hoc inspection with any SQLite tool.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import stat
import sys
import time
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from scanfleet.daemon.commands.location import add_location_arguments, journal_path_from
from scanfleet.daemon.core.errors import ConfigError, JournalError, ScanfleetError
from scanfleet.daemon.journal.journal import Record
from scanfleet.daemon.journal.readable import Readable, Selection
from scanfleet.daemon.journal.recovery import quarantined_files

CSV_COLUMNS = (
    "seq",
    "id",
    "device",
    "time",
    "type",
    "kind",
    "value",
    "aim",
    "raw",
    "verdict",
    "reason",
    "operation",
    "station",
    "bill",
    "operator",
    "identity_ref",
    "clock",
    "source_driver",
    "source_device",
    "source_port",
    "problems",
    "fields",
    "prev_hash",
    "hash",
)


def register(subparsers: Any) -> None:
    """Add the ``export`` command."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "export",
        help="write journal records as JSONL, CSV or SQLite (backup, inspection)",
        description=(
            "Export journal records in seq order, optionally limited to a seq range or a "
            "time range [--since, --until). Works read-only while the daemon runs. A "
            "progress bar goes to stderr when it is a terminal. Times without a zone are UTC."
        ),
    )
    add_location_arguments(parser, journal=True)
    parser.add_argument("--format", choices=("jsonl", "csv", "sqlite"), default="jsonl")
    parser.add_argument("--from-seq", type=int, metavar="N", help="first seq (inclusive)")
    parser.add_argument("--to-seq", type=int, metavar="M", help="last seq (inclusive)")
    parser.add_argument("--since", type=_iso, metavar="ISO", help="records at or after this time")
    parser.add_argument("--until", type=_iso, metavar="ISO", help="records before this time")
    parser.add_argument(
        "-o", "--output", type=Path, help="output file (default stdout; required for sqlite)"
    )
    parser.set_defaults(func=_run)


def _iso(text: str) -> datetime:
    try:
        value = datetime.fromisoformat(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"not an ISO-8601 time: {text!r}") from err
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def flatten(record: dict[str, Any]) -> dict[str, Any]:
    """The CSV/SQLite columns of one record (blank where a record type lacks one)."""
    source = record.get("source") or {}
    row = {name: record.get(name) for name in CSV_COLUMNS}
    row["source_driver"] = source.get("driver")
    row["source_device"] = source.get("device")
    row["source_port"] = source.get("port")
    row["problems"] = "; ".join(record.get("problems") or [])
    row["fields"] = json.dumps(record.get("fields") or {}, ensure_ascii=False, sort_keys=True)
    return row


class Progress:
    """A one-line progress bar on a terminal's stderr; silent otherwise."""

    def __init__(self, total: int, stream: IO[str]) -> None:
        self.total = total
        self.stream = stream
        self.enabled = stream.isatty()
        self.done = 0
        self._next = 0.0

    def tick(self, n: int = 1) -> None:
        """Count *n* more records; redraw at most ten times a second."""
        self.done += n
        now = time.monotonic()
        if self.enabled and (now >= self._next or self.done == self.total):
            self._next = now + 0.1
            share = self.done / self.total if self.total else 1.0
            bar = "#" * int(share * 30)
            self.stream.write(f"\rexport [{bar:<30}] {self.done}/{self.total} ({share:.0%})")
            self.stream.flush()

    def finish(self) -> None:
        """End the bar's line."""
        if self.enabled:
            self.stream.write("\n")
            self.stream.flush()


def write_jsonl(records: Iterable[Record], out: IO[bytes], progress: Progress) -> int:
    """Canonical payloads, one per line."""
    n = 0
    for record in records:
        out.write(record.payload + b"\n")
        n += 1
        progress.tick()
    return n


def write_csv(records: Iterable[Record], out: IO[bytes], progress: Progress) -> int:
    """A header line and one flattened row per record (UTF-8)."""
    text = io.TextIOWrapper(out, encoding="utf-8", newline="", write_through=True)
    writer = csv.DictWriter(text, fieldnames=CSV_COLUMNS, extrasaction="ignore")
    writer.writeheader()
    n = 0
    for record in records:
        writer.writerow(flatten(record.as_dict()))
        n += 1
        progress.tick()
    text.flush()
    text.detach()
    return n


def write_sqlite(records: Iterable[Record], path: Path, progress: Progress) -> int:
    """A flat ``records`` table (plus the full record as JSON) via sqlite-utils."""
    try:
        import sqlite_utils  # only this format needs it
    except ImportError as err:
        raise ExportError(
            "--format sqlite needs sqlite-utils: pip install 'scanfleet[export]'"
        ) from err

    def rows() -> Iterator[dict[str, Any]]:
        for record in records:
            row = flatten(record.as_dict())
            row["record"] = record.payload.decode("utf-8")
            progress.tick()
            yield row

    db = sqlite_utils.Database(path)
    table = db.table("records")
    table.insert_all(rows(), pk="seq", batch_size=1000)
    count = int(table.count)
    db.close()
    return count


def _run(args: argparse.Namespace) -> int:
    if args.format == "sqlite" and args.output is None:
        print("scanfleet export: --format sqlite needs -o FILE", file=sys.stderr)
        return 2
    try:
        path = journal_path_from(args)
    except ConfigError as err:
        print(err, file=sys.stderr)
        return 1
    if not path.exists():
        print(f"scanfleet export: no journal at {path}", file=sys.stderr)
        return 1
    source = Readable(path, Selection(args.from_seq, args.to_seq, args.since, args.until))
    with source:
        progress = Progress(source.count() if sys.stderr.isatty() else 0, sys.stderr)
        try:
            count = _write(args, source.records(), progress)
        except (JournalError, ExportError) as err:
            print(f"scanfleet export: {err}", file=sys.stderr)
            return 1
        finally:
            progress.finish()
    print(f"scanfleet export: {count} records from {path}", file=sys.stderr)
    if source.damage is not None:
        print(
            f"scanfleet export: {path} is damaged, read page by page: {source.damage}",
            file=sys.stderr,
        )
    for aside in quarantined_files(path):
        print(f"scanfleet export: quarantined journal beside it: {aside}", file=sys.stderr)
    return 0


class ExportError(ScanfleetError):
    """An export that cannot be written as asked."""


def _regular_or_missing(path: Path) -> bool:
    try:
        return stat.S_ISREG(path.stat().st_mode)
    except FileNotFoundError:
        return True


def _write(args: argparse.Namespace, records: Iterable[Record], progress: Progress) -> int:
    if args.output is None:
        out = sys.stdout.buffer
        count = (write_csv if args.format == "csv" else write_jsonl)(records, out, progress)
        out.flush()
        return count
    target = Path(args.output)
    if not _regular_or_missing(target):
        # A device, FIFO, /dev/stdout or terminal is written in place: renaming a file
        # over it would replace the device node (as root: /dev/null itself).
        if args.format == "sqlite":
            raise ExportError(f"--format sqlite needs a regular file, not {target}")
        with target.open("wb") as out:
            write = write_csv if args.format == "csv" else write_jsonl
            count = write(records, out, progress)
            out.flush()
        return count
    # Write beside the target and rename: a half-written backup never looks complete.
    tmp = target.with_name(f".{target.name}.partial")
    tmp.unlink(missing_ok=True)
    try:
        if args.format == "sqlite":
            count = write_sqlite(records, tmp, progress)
        else:
            with tmp.open("wb") as out:
                write = write_csv if args.format == "csv" else write_jsonl
                count = write(records, out, progress)
                out.flush()
                os.fsync(out.fileno())
        tmp.replace(target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return count
