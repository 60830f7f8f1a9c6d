"""``scanfleet schema``: print, write or check the JSON Schemas of scanfleet's messages."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from scanfleet.daemon.schemas import message_models, render_schema, schema_files, stale_files


def register(subparsers: Any) -> None:
    """Add the ``schema`` command."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "schema",
        help="print, write or check the JSON Schemas of scanfleet's messages",
        description="Without options, print the schema of NAME (or list the names).",
    )
    parser.add_argument("name", nargs="?", choices=sorted(message_models()))
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--write", type=Path, metavar="DIR", help="write every schema into DIR")
    group.add_argument(
        "--check", type=Path, metavar="DIR", help="exit 1 if DIR's schemas are missing or stale"
    )
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    if args.write:
        args.write.mkdir(parents=True, exist_ok=True)
        for filename, content in schema_files().items():
            (args.write / filename).write_text(content, encoding="utf-8")
            print(args.write / filename)
        return 0
    if args.check:
        stale = stale_files(args.check)
        for filename in stale:
            print(f"{args.check / filename}: stale or missing", file=sys.stderr)
        return 1 if stale else 0
    if args.name:
        sys.stdout.write(render_schema(args.name, message_models()[args.name]))
        return 0
    for name in sorted(message_models()):
        print(name)
    return 0
