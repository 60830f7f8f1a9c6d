"""``scanfleet hub …``: the central side (ingest, audit, export, database).

Each action lives in its own module under ``scanfleet.hub.commands`` with a
``register(subparsers)`` function, like the top-level commands; adding an action is
one line in :data:`HUB_COMMAND_MODULES`.
"""

from __future__ import annotations

import argparse
import importlib
from typing import Any

HUB_COMMAND_MODULES = (
    "scanfleet.hub.commands.db",
    "scanfleet.hub.commands.ingest",
    "scanfleet.hub.commands.audit",
    "scanfleet.hub.commands.export",
    "scanfleet.hub.commands.duplicates",
    "scanfleet.hub.console.cli",
)


def register(subparsers: Any) -> None:
    """Add ``hub`` and every action of :data:`HUB_COMMAND_MODULES`."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "hub",
        help="the central hub: ingest into PostgreSQL, audit completeness, export",
        description=(
            "The central side of the fleet: consume every terminal's records from the broker "
            "into PostgreSQL, prove completeness per site/device/day and repair gaps."
        ),
    )
    sub = parser.add_subparsers(title="actions", metavar="ACTION", required=True)
    for name in HUB_COMMAND_MODULES:
        importlib.import_module(name).register(sub)


def add_database_argument(parser: argparse.ArgumentParser) -> None:
    """``--database DSN`` (default ``$SCANFLEET_HUB_DATABASE``), shared by every action."""
    parser.add_argument(
        "--database",
        metavar="DSN",
        help="libpq connection string or postgresql:// URL (default: $SCANFLEET_HUB_DATABASE)",
    )
