"""``scanfleet hub duplicates``: repeated codes across the fleet, legitimate or not."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from datetime import date
from typing import Any

from scanfleet.hub.cli import add_database_argument
from scanfleet.hub.db import HubDatabaseError, connect, require_current, resolve_dsn
from scanfleet.hub.duplicates import repeats


def register(subparsers: Any) -> None:
    """Add ``duplicates``."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "duplicates",
        help="same code, same operation, across devices and sites: split pack, return or real",
        description=(
            "Every accepted scan that repeats an earlier one of the same code for the same "
            "operation, classified: split_pack (the record says which unit of how many), "
            "after_return (a return came in between) or duplicate. Exit 1 when a real "
            "duplicate exists."
        ),
    )
    add_database_argument(parser)
    parser.add_argument("--site", help="only this site")
    parser.add_argument("--since", type=date.fromisoformat, help="scans from DATE on")
    parser.add_argument("--all", action="store_true", help="also list legitimate repeats")
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    parser.set_defaults(func=_duplicates)


def _duplicates(args: argparse.Namespace) -> int:
    try:
        with connect(resolve_dsn(args.database)) as conn:
            require_current(conn)
            found = repeats(conn, site=args.site, since=args.since)
    except HubDatabaseError as err:
        print(f"scanfleet hub duplicates: {err}", file=sys.stderr)
        return 2
    shown = [r for r in found if args.all or r.verdict == "duplicate"]
    for r in shown:
        if args.json:
            print(json.dumps(asdict(r), ensure_ascii=False))
        else:
            print(
                f"{r.verdict:12} {r.value} {r.operation} {r.site}/{r.device}#{r.seq} {r.time} "
                f"(earlier {r.earlier_site}/{r.earlier_device}#{r.earlier_seq})"
            )
    counts = {
        v: sum(1 for r in found if r.verdict == v)
        for v in ("duplicate", "split_pack", "after_return")
    }
    print(
        f"{counts['duplicate']} duplicates, {counts['split_pack']} split-pack units, "
        f"{counts['after_return']} repeats after a return",
        file=sys.stderr,
    )
    return 1 if counts["duplicate"] else 0
