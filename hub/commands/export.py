"""``scanfleet hub export`` and ``scanfleet hub verify-export``: the offline backup."""

from __future__ import annotations

import argparse
import hashlib
import sys
from datetime import date
from pathlib import Path
from typing import Any

from scanfleet.hub.cli import add_database_argument
from scanfleet.hub.db import HubDatabaseError, connect, require_current, resolve_dsn
from scanfleet.hub.export import ExportError, export, verify_export


def register(subparsers: Any) -> None:
    """Add ``export`` and ``verify-export``."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "export",
        help="a site or date range as JSONL + CSV with a manifest of hashes",
        description=(
            "Writes records.jsonl (each record's stored bytes, verbatim), records.csv, "
            "manifest.json and SHA256SUMS into DIR (new or empty). Check it offline with "
            "`scanfleet hub verify-export DIR` or `sha256sum -c SHA256SUMS`."
        ),
    )
    add_database_argument(parser)
    parser.add_argument("--out", type=Path, required=True, metavar="DIR")
    parser.add_argument("--site", help="only this site")
    parser.add_argument("--since", type=date.fromisoformat, help="records from DATE (UTC) on")
    parser.add_argument("--until", type=date.fromisoformat, help="records up to DATE (UTC)")
    parser.set_defaults(func=_export)

    check = subparsers.add_parser(
        "verify-export",
        help="check an export offline: file hashes, record hashes, chain links",
    )
    check.add_argument("directory", type=Path, metavar="DIR")
    check.set_defaults(func=_verify)


def _export(args: argparse.Namespace) -> int:
    try:
        with connect(resolve_dsn(args.database)) as conn:
            require_current(conn)
            manifest = export(conn, args.out, site=args.site, since=args.since, until=args.until)
    except (HubDatabaseError, ExportError, OSError) as err:
        print(f"scanfleet hub export: {err}", file=sys.stderr)
        return 1
    digest = hashlib.sha256((args.out / "manifest.json").read_bytes()).hexdigest()
    print(
        f"exported {manifest['records']} records of {len(manifest['devices'])} devices to "
        f"{args.out}; manifest SHA-256 {digest} (keep it apart from the export)"
    )
    return 0


def _verify(args: argparse.Namespace) -> int:
    try:
        result = verify_export(args.directory)
    except ExportError as err:
        print(f"scanfleet hub verify-export: {err}", file=sys.stderr)
        return 2
    for problem in result.problems[:100]:
        print(problem)
    if result.ok:
        print(f"{args.directory}: {result.records} records verified")
        return 0
    print(f"{args.directory}: {len(result.problems)} problems", file=sys.stderr)
    return 1
