"""``scanfleet identity``: backend key pair and opening sealed identity (authorized use)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from scanfleet.daemon.core.personal import SealError


def register(subparsers: Any) -> None:
    """Add the ``identity`` command with ``keygen`` and ``open``."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "identity",
        help="backend key pair for ID-card data; open sealed identity records",
        description=(
            "ID-card reads are sealed on the terminal for the backend's X25519 key. "
            "'keygen' makes that key pair (the private key never goes to a terminal); "
            "'open' decrypts identity_read records for authorized backend use."
        ),
    )
    sub = parser.add_subparsers(title="actions", metavar="ACTION", required=True)
    keygen = sub.add_parser("keygen", help="create the backend key pair")
    keygen.add_argument(
        "--private-key", type=Path, required=True, help="file to create (mode 0600)"
    )
    keygen.set_defaults(func=_keygen)
    opener = sub.add_parser(
        "open",
        help="decrypt identity_read records (journal records, JSON lines or scan batches)",
    )
    opener.add_argument("--private-key", type=Path, required=True)
    opener.add_argument(
        "input", nargs="?", type=Path, help="file with records (default: standard input)"
    )
    opener.set_defaults(func=_open)


def _keygen(args: argparse.Namespace) -> int:
    from scanfleet.provisioning.identity_open import write_keypair

    try:
        public = write_keypair(args.private_key)
    except FileExistsError:
        print(
            f"scanfleet identity keygen: {args.private_key} exists, not overwritten",
            file=sys.stderr,
        )
        return 1
    print(f'[identity_check]\npublic_key = "{public}"')
    print(f"private key written to {args.private_key}; keep it off the terminals", file=sys.stderr)
    return 0


def _open(args: argparse.Namespace) -> int:
    from scanfleet.provisioning.identity_open import iter_records, open_records, read_private_key

    try:
        key = read_private_key(args.private_key)
        text = args.input.read_text(encoding="utf-8") if args.input else sys.stdin.read()
    except OSError as err:
        print(f"scanfleet identity open: {err}", file=sys.stderr)
        return 1
    try:
        opened = 0
        for item in open_records(iter_records(text), key):
            sys.stdout.write(json.dumps(item, ensure_ascii=False, sort_keys=True) + "\n")
            opened += 1
    except (SealError, ValueError) as err:
        print(f"scanfleet identity open: {err}", file=sys.stderr)
        return 1
    if not opened:
        print(
            "scanfleet identity open: no sealed identity_read records in the input", file=sys.stderr
        )
        return 1
    return 0
