"""``scanfleet tail``: follow the scans of a running daemon, read-only."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from scanfleet.daemon.commands.location import add_location_arguments, journal_path_from
from scanfleet.daemon.core.errors import ConfigError, JournalError
from scanfleet.daemon.ui.display import record_kind, record_value


def register(subparsers: Any) -> None:
    """Add the ``tail`` command."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "tail",
        help="show the latest scans and follow new ones (read-only)",
        description=(
            "Print the last N journal records and, with --follow (default), every new one "
            "as the daemon commits it. Opens the journal read-only: it never changes it and "
            "never delays the daemon."
        ),
    )
    add_location_arguments(parser)
    parser.add_argument("-n", "--lines", type=int, default=10, help="default: %(default)s")
    parser.add_argument("--no-follow", dest="follow", action="store_false", help="print and exit")
    parser.add_argument("--json", action="store_true", help="the canonical records, one per line")
    parser.set_defaults(func=_run)


def format_record(record: dict[str, Any]) -> str:
    """One human-readable line for a journal record."""
    text = (
        f"{record.get('time', '')[:23]:23}  {record.get('seq', 0):>8}  {record_kind(record):18}  "
        f"{record.get('verdict', ''):8}  {record_value(record)}"
    )
    if record.get("reason"):
        text += f"  ({record['reason']})"
    return text


def _run(args: argparse.Namespace) -> int:
    from scanfleet.daemon.journal.reader import open_readonly

    try:
        path = journal_path_from(args)
    except ConfigError as err:
        print(err, file=sys.stderr)
        return 1
    if not path.exists():
        print(f"scanfleet tail: no journal at {path} (has the daemon run yet?)", file=sys.stderr)
        return 1
    try:
        reader = open_readonly(path)
    except JournalError as err:
        print(f"scanfleet tail: {err}", file=sys.stderr)
        return 1
    with reader:
        after = max(0, reader.last_seq - max(0, args.lines))
        while True:
            records = reader.read_after(after, limit=500, max_bytes=1 << 20)
            for rec in records:
                if args.json:
                    sys.stdout.write(rec.payload.decode() + "\n")
                else:
                    sys.stdout.write(format_record(json.loads(rec.payload)) + "\n")
                after = rec.seq
            sys.stdout.flush()
            if not args.follow:
                return 0
            if not records:
                time.sleep(0.2)
