"""``scanfleet enroll``: enroll this terminal with a claim now, instead of at the next start."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from scanfleet.daemon.commands.config import print_config_error
from scanfleet.daemon.core.claims import Claim, ClaimError
from scanfleet.daemon.core.config import DEFAULT_CONFIG_PATH, load_config
from scanfleet.daemon.core.errors import ConfigError, EnrollmentError, IdentityError
from scanfleet.daemon.core.identity import resolve_identity
from scanfleet.daemon.core.statefiles import write_atomic
from scanfleet.daemon.remote.enroll import CLAIM_FILE, ensure_enrolled


def register(subparsers: Any) -> None:
    """Add the ``enroll`` command."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "enroll",
        help="enroll this terminal with a claim (or renew its certificate when due)",
        description=(
            "Store the claim in the state directory and enroll: the device key is made "
            "here (0600) and never sent; the certificate lands in STATE_DIR/tls/. "
            "Without --claim, renews the certificate when it is due."
        ),
    )
    parser.add_argument(
        "--config", type=Path, default=DEFAULT_CONFIG_PATH, help="default: %(default)s"
    )
    parser.add_argument("--claim", help="the claim token (scanfleet-claim://…)")
    parser.add_argument("--timeout", type=float, default=30.0)
    parser.set_defaults(func=_enroll)


def _enroll(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config)
    except ConfigError as err:
        print_config_error(err)
        return 1
    try:
        if args.claim:
            Claim.parse(args.claim)
            path = config.paths.state_dir / CLAIM_FILE
            # Created 0600 with os.open: never readable by others, not even briefly.
            write_atomic(path, args.claim.strip().encode() + b"\n", 0o600)
        enrolled = ensure_enrolled(
            config, resolve_identity(config), timeout=args.timeout, force=bool(args.claim)
        )
    except (ClaimError, EnrollmentError, IdentityError) as err:
        print(f"scanfleet enroll: {err}", file=sys.stderr)
        return 1
    if enrolled.not_after is None:
        print("not enrolled: no claim given and no enrollment certificate in use")
        return 1
    ident = enrolled.identity
    print(
        f"enrolled as {ident.site}/{ident.device}; certificate valid until "
        f"{enrolled.not_after:%Y-%m-%d}; broker {enrolled.broker.url}"
    )
    return 0
