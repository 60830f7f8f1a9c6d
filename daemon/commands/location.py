"""Where a command finds the daemon's state: ``--config``, ``--state-dir`` or ``--journal``.

Commands that read the state directory (status, tail, verify, export) take the same
options, resolved the same way: the directory named on the command line, or the one
the config file names (default ``/etc/scanfleet/scanfleet.toml``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from scanfleet.daemon.config import DEFAULT_CONFIG_PATH, JOURNAL_FILE, load_config


def add_location_arguments(parser: argparse.ArgumentParser, *, journal: bool = False) -> None:
    """Add ``--config`` / ``--state-dir`` (and with *journal*, ``--journal``)."""
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--config",
        type=Path,
        help=f"config file naming the state dir (default {DEFAULT_CONFIG_PATH})",
    )
    where.add_argument("--state-dir", type=Path, help=f"state directory holding {JOURNAL_FILE}")
    if journal:
        where.add_argument("--journal", type=Path, help="the journal file itself")


def state_dir_from(args: argparse.Namespace) -> Path:
    """The state directory the arguments name; ConfigError when the config is invalid."""
    if args.state_dir is not None:
        return Path(args.state_dir)
    return load_config(args.config or DEFAULT_CONFIG_PATH).paths.state_dir


def journal_path_from(args: argparse.Namespace) -> Path:
    """The journal file the arguments name; ConfigError when the config is invalid."""
    if getattr(args, "journal", None) is not None:
        return Path(args.journal)
    return state_dir_from(args) / JOURNAL_FILE
