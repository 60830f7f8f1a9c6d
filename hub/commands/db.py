"""``scanfleet hub db …``: the hub database's schema."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from scanfleet.hub.cli import add_database_argument
from scanfleet.hub.db import SCHEMA_VERSION, HubDatabaseError, connect, resolve_dsn, upgrade


def register(subparsers: Any) -> None:
    """Add ``db`` and its actions."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "db", help="create or upgrade the hub database schema"
    )
    sub = parser.add_subparsers(title="db actions", metavar="ACTION", required=True)
    up = sub.add_parser(
        "upgrade",
        help=f"apply every missing schema version (up to {SCHEMA_VERSION}); idempotent",
    )
    add_database_argument(up)
    up.set_defaults(func=_upgrade)


def _upgrade(args: argparse.Namespace) -> int:
    try:
        with connect(resolve_dsn(args.database)) as conn:
            applied = upgrade(conn)
    except HubDatabaseError as err:
        print(f"scanfleet hub db upgrade: {err}", file=sys.stderr)
        return 1
    if applied:
        print(f"hub database upgraded to schema version {applied[-1]} (applied {applied})")
    else:
        print(f"hub database already at schema version {SCHEMA_VERSION}")
    return 0
