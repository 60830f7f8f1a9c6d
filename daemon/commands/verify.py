"""``scanfleet verify``: recompute the journal's hash chain (and SQLite's integrity check)."""

from __future__ import annotations

import argparse
import sqlite3
import sys
from pathlib import Path
from typing import Any

from scanfleet.daemon.commands.location import add_location_arguments, journal_path_from
from scanfleet.daemon.core.errors import ConfigError, JournalCorruptError, JournalError
from scanfleet.daemon.journal.journal import Journal
from scanfleet.daemon.journal.recovery import quarantined_files
from scanfleet.daemon.journal.salvage import assess


def register(subparsers: Any) -> None:
    """Add the ``verify`` command."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "verify",
        help="check the journal's hash chain (and with --full, SQLite's integrity)",
        description=(
            "Recompute every record's hash and its link to the previous record, from the "
            "pruning anchor (or genesis) to the last record. Works read-only while the "
            "daemon runs. Exit 0 when the chain is intact, 1 when it is broken (the message "
            "names the first bad seq) or the journal cannot be read. A damaged file is read "
            "page by page: the output says which seqs are readable and which are not. "
            "Damaged journals set aside beside it (journal.sqlite3.corrupt-*) are listed "
            "with the same report; check one alone with --journal FILE."
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
    except ConfigError as err:
        print(err, file=sys.stderr)
        return 1
    code = _verify(path, full=args.full)
    # Damaged journals set aside are part of the answer: their records may be missing.
    for aside in quarantined_files(path):
        print(f"{aside}: quarantined (set aside as damaged): {assess(aside)}")
    return code


def _verify(path: Path, *, full: bool) -> int:
    try:
        with Journal.open_readonly(path) as reader:
            result = reader.verify(full=full)
    except (JournalCorruptError, sqlite3.DatabaseError) as err:
        if not path.exists():
            print(f"scanfleet verify: {err}", file=sys.stderr)
            return 1
        # Read what is readable, page by page, and say exactly what is not.
        print(f"{path}: journal DAMAGED ({err}): {assess(path)}")
        return 1
    except JournalError as err:
        print(f"scanfleet verify: {err}", file=sys.stderr)
        return 1
    print(f"{path}: {result}")
    return 0 if result.ok else 1
