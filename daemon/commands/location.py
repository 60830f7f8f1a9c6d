"""Where a command finds the daemon's state: ``--config``, ``--state-dir`` or ``--journal``.

Commands that read the state directory (status, tail, verify, export) take the same
options, resolved the same way: the directory named on the command line, or the one
the config file names (default ``/etc/scanfleet/scanfleet.toml``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from scanfleet.daemon.core.config import (
    DEFAULT_CONFIG_PATH,
    DEFAULT_STATE_DIR,
    JOURNAL_FILE,
    load_config,
)
from scanfleet.daemon.core.errors import ConfigError


class NoStateDirError(ConfigError):
    """Neither the arguments nor the default locations name a state directory."""

    def __init__(self, message: str) -> None:
        # A ConfigError for the callers (they print it), without config problems.
        self.source = "scanfleet"
        self.problems = ()
        Exception.__init__(self, message)


DEMO_STATE_DIR = Path("state/demo")
"""Where ``scanfleet run --demo`` keeps its journal (relative to the working directory)."""


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
    """The state directory the arguments name; ConfigError when the config is invalid.

    With neither ``--state-dir`` nor ``--config`` and no default config file, the
    default state dir is used when it holds a journal; else the error names every
    path tried and how to point the command at the demo's journal.
    """
    if args.state_dir is not None:
        return Path(args.state_dir)
    if args.config is not None or DEFAULT_CONFIG_PATH.exists():
        return load_config(args.config or DEFAULT_CONFIG_PATH).paths.state_dir
    if (DEFAULT_STATE_DIR / JOURNAL_FILE).exists():
        return DEFAULT_STATE_DIR
    hint = ""
    if (DEMO_STATE_DIR / JOURNAL_FILE).exists():
        hint = f" (a demo journal is in ./{DEMO_STATE_DIR})"
    raise NoStateDirError(
        f"no journal found: tried {DEFAULT_CONFIG_PATH} (no such file) and "
        f"{DEFAULT_STATE_DIR / JOURNAL_FILE} (no such file). Name the state directory with "
        f"--state-dir, e.g. --state-dir {DEMO_STATE_DIR} for the demo{hint}, or the daemon's "
        "config with --config FILE"
    )


def journal_path_from(args: argparse.Namespace) -> Path:
    """The journal file the arguments name; ConfigError when the config is invalid."""
    if getattr(args, "journal", None) is not None:
        return Path(args.journal)
    return state_dir_from(args) / JOURNAL_FILE
