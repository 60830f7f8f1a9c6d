"""``scanfleet verify``: recompute the journal's hash chain (and SQLite's integrity check)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from scanfleet.daemon.config import DEFAULT_CONFIG_PATH, load_config
from scanfleet.daemon.errors import ConfigError, JournalError
from scanfleet.daemon.journal import Journal

JOURNAL_FILE = "journal.sqlite3"


def add_journal_arguments(parser: argparse.ArgumentParser) -> None:
    """``--config`` / ``--state-dir`` / ``--journal``: where the journal is."""
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--config",
        type=Path,
        help=f"config file naming the state dir (default {DEFAULT_CONFIG_PATH})",
    )
    where.add_argument("--state-dir", type=Path, help=f"state directory holding {JOURNAL_FILE}")
    where.add_argument("--journal", type=Path, help="the journal file itself")


def journal_path(args: argparse.Namespace) -> Path:
    """The journal file the arguments name; ConfigError when the config is invalid."""
    if args.journal is not None:
        return Path(args.journal)
    if args.state_dir is not None:
        return Path(args.state_dir) / JOURNAL_FILE
    return load_config(args.config or DEFAULT_CONFIG_PATH).paths.state_dir / JOURNAL_FILE


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
    add_journal_arguments(parser)
    parser.add_argument(
        "--full", action="store_true", help="also run PRAGMA integrity_check (slow on big files)"
    )
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    try:
        path = journal_path(args)
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
