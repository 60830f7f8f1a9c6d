"""``scanfleet firstboot``: take over the claim and config on an SD image's boot partition."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from scanfleet.daemon.core.config import DEFAULT_CONFIG_PATH
from scanfleet.daemon.remote.claim_intake import DEFAULT_BOOT_DIR, import_boot_files


def register(subparsers: Any) -> None:
    """Add the ``firstboot`` command."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "firstboot",
        help="move a claim and config from the boot partition into place (run as root)",
        description=(
            "Move BOOT_DIR/scanfleet.toml (only if it validates) and BOOT_DIR/fleet-ca.pem "
            "into the config directory, and BOOT_DIR/claim into the state directory (0600, "
            "owned like the directory); each is removed from the boot partition, which "
            "cannot keep a file private. The daemon then enrolls with the claim. The unit "
            "runs this as root before the daemon starts (ExecStartPre=+). Exits 0 even when "
            "a file is left behind (it says why): the daemon still starts."
        ),
    )
    parser.add_argument(
        "--boot-dir", type=Path, default=DEFAULT_BOOT_DIR, help="default: %(default)s"
    )
    parser.add_argument(
        "--config", type=Path, default=DEFAULT_CONFIG_PATH, help="default: %(default)s"
    )
    parser.add_argument(
        "--state-dir", type=Path, help="default: paths.state_dir of the (new) config"
    )
    parser.set_defaults(func=_firstboot)


def _firstboot(args: argparse.Namespace) -> int:
    if not args.boot_dir.is_dir():
        return 0
    try:
        done = import_boot_files(args.boot_dir, args.config, args.state_dir)
    except OSError as err:
        print(f"scanfleet firstboot: {err}", file=sys.stderr)
        return 0
    for line in done.moved:
        print(f"scanfleet firstboot: moved {line}")
    for line in done.problems:
        print(f"scanfleet firstboot: {line}", file=sys.stderr)
    return 0
