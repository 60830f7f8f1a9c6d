"""The ``scanfleet`` console script: one entry point, one subcommand per job."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from scanfleet.daemon import __version__
from scanfleet.daemon.core.logs import LEVELS, setup_logging

COMMAND_MODULES = (
    "scanfleet.daemon.commands.config",
    "scanfleet.daemon.commands.schema",
    "scanfleet.daemon.commands.parse",
    "scanfleet.daemon.commands.identity",
    "scanfleet.daemon.commands.run",
    "scanfleet.daemon.commands.tail",
    "scanfleet.daemon.commands.status",
    "scanfleet.daemon.commands.devices",
    "scanfleet.daemon.commands.simulate",
    "scanfleet.daemon.commands.verify",
    "scanfleet.daemon.commands.export",
    "scanfleet.daemon.commands.alarms",
    "scanfleet.daemon.commands.enroll",
    "scanfleet.daemon.commands.firstboot",
    "scanfleet.provisioning.cli",
    "scanfleet.daemon.commands.local",
    "scanfleet.daemon.commands.record",
    "scanfleet.hub.cli",
)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand registered."""
    parser = argparse.ArgumentParser(
        prog="scanfleet",
        description=(
            "Edge daemon and fleet tooling for drug-traceability scanning terminals: binds "
            "scanners, classifies and journals every scan, publishes to an MQTT broker."
        ),
    )
    parser.add_argument("--version", action="version", version=f"scanfleet {__version__}")
    parser.add_argument(
        "--log-level", choices=sorted(LEVELS), default="info", help="default: %(default)s"
    )
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as err:
            # A part packaged separately (the hub: Debian package scanfleet-hub) that is
            # not installed: its command is absent. A missing dependency still raises.
            if err.name and (name == err.name or name.startswith(f"{err.name}.")):
                continue
            raise
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the console script; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "func"):
        parser.print_help(sys.stderr)
        return 2
    setup_logging(args.log_level)
    try:
        code: int = args.func(args)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # "scanfleet parse … | head": the reader went away; that is not an error.
        sys.stderr.close()
        return 0
    return code


if __name__ == "__main__":
    sys.exit(main())
