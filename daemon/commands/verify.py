"""``scanfleet verify``: recompute the journal's hash chain (and SQLite's integrity check)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from scanfleet.daemon.commands.location import add_location_arguments, journal_path_from
from scanfleet.daemon.errors import ConfigError, JournalError
from scanfleet.daemon.journal import Journal


def register(subparsers: Any) -> None:
    """Add the ``verify`` command."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "verify",
        help="check the journal's hash chain (and with --full, SQLite's integrity)",
        description=(
            "Recompute every record's hash and its link to the previous record, from the "
            "pruning anchor (or genesis) to the last record. Works read-only while the "
            "daemon runs. Exit 0 when the chain is intact, 1 when it is broken (the message "
            "names the first bad seq) or the journal cannot be read."
        ),
    )
    add_location_arguments(parser, journal=True)
    parser.add_argument(
        "--full", action="store_true", help="also run PRAGMA integrity_check (slow on big files)"
    )
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    try:
        path = journal_path_from(args)
        with Journal.open_readonly(path) as reader:
            result = reader.verify(full=args.full)
    except ConfigError as err:
        print(err, file=sys.stderr)
        return 1
    except JournalError as err:
        print(f"scanfleet verify: {err}", file=sys.stderr)
        return 1
    print(f"{path}: {result}")
    return 0 if result.ok else 1
