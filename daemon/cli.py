"""The ``scanfleet`` console script: one entry point, one subcommand per job.

Only the chosen command's module is imported: ``scanfleet run`` does not load the
hub's PostgreSQL driver nor the schema generator, and ``scanfleet --help`` loads no
command at all (each is listed from :data:`COMMANDS`).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
from collections.abc import Sequence

from scanfleet.daemon import __version__
from scanfleet.daemon.core.logs import LEVELS, setup_logging

COMMANDS: dict[str, tuple[str, str]] = {
    "config": (
        "scanfleet.daemon.commands.config",
        "check a configuration file or print an example",
    ),
    "schema": (
        "scanfleet.daemon.commands.schema",
        "print, write or check the JSON Schemas of scanfleet's messages",
    ),
    "parse": (
        "scanfleet.daemon.commands.parse",
        "classify raw scans (arguments or stdin lines) and print the results",
    ),
    "identity": (
        "scanfleet.daemon.commands.identity",
        "backend key pair for ID-card data; open sealed identity records",
    ),
    "run": (
        "scanfleet.daemon.commands.run",
        "run the daemon: bind scanners, journal every scan, publish to the broker",
    ),
    "tail": (
        "scanfleet.daemon.commands.tail",
        "show the latest scans and follow new ones (read-only)",
    ),
    "status": (
        "scanfleet.daemon.commands.status",
        "journal depth, oldest undelivered scan, broker state, alarms",
    ),
    "devices": (
        "scanfleet.daemon.commands.devices",
        "list serial and input devices and which look like scanners",
    ),
    "simulate": (
        "scanfleet.daemon.commands.simulate",
        "run a simulated device (serial scanner or ID-card reader) on a pty",
    ),
    "verify": (
        "scanfleet.daemon.commands.verify",
        "check the journal's hash chain (and with --full, SQLite's integrity)",
    ),
    "export": (
        "scanfleet.daemon.commands.export",
        "write journal records as JSONL, CSV or SQLite (backup, inspection)",
    ),
    "alarms": (
        "scanfleet.daemon.commands.alarms",
        "list alarms waiting for acknowledgement; 'alarms ack CODE' ends one",
    ),
    "enroll": (
        "scanfleet.daemon.commands.enroll",
        "enroll this terminal with a claim (or renew its certificate when due)",
    ),
    "firstboot": (
        "scanfleet.daemon.commands.firstboot",
        "move a claim and config from the boot partition into place (run as root)",
    ),
    "fleet": (
        "scanfleet.provisioning.cli",
        "fleet CA, claims, broker config, enrollment service, inventory",
    ),
    "local": (
        "scanfleet.daemon.commands.local",
        "talk to the running daemon's local POS interface",
    ),
    "record": (
        "scanfleet.daemon.commands.record",
        "capture a wedge or USB-HID scanner's raw events to a replayable trace",
    ),
    "hub": (
        "scanfleet.hub.cli",
        "the central hub: ingest into PostgreSQL, audit completeness, export",
    ),
}
"""Command name → (module with ``register(subparsers)``, one-line help for the list).

The help text repeats the one the module registers (a unit test keeps them equal),
so that listing the commands imports none of them."""

COMMAND_MODULES = tuple(module for module, _ in COMMANDS.values())


def _installed(module: str) -> bool:
    """False for a part packaged separately (the hub: Debian package scanfleet-hub)."""
    package = ".".join(module.split(".")[:2])
    return importlib.util.find_spec(package) is not None


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The argument parser; every command registered in full, or only *command*.

    With *command* given, the other commands are listed by name and help only, and
    their modules (with what they import) are never loaded.
    """
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
    for name, (module_name, help_text) in COMMANDS.items():
        if not _installed(module_name):
            continue
        if command is not None and name != command:
            subparsers.add_parser(name, help=help_text)
            continue
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as err:
            # A part that is not installed: its command is absent. A missing dependency
            # still raises.
            if err.name and (module_name == err.name or module_name.startswith(f"{err.name}.")):
                continue
            raise
        module.register(subparsers)
    return parser


def chosen_command(argv: Sequence[str]) -> str:
    """The command *argv* names ("" when none): its first word that is not an option."""
    words = iter(argv)
    for word in words:
        if word == "--log-level":
            next(words, None)
        elif not word.startswith("-"):
            return word
    return ""


def main(argv: Sequence[str] | None = None) -> int:
    """Run the console script; returns the process exit code."""
    if argv is None:
        argv = sys.argv[1:]
    parser = build_parser(chosen_command(argv))
    args = parser.parse_args(argv)
    if not hasattr(args, "func"):
        parser.print_help(sys.stderr)
        return 2
    setup_logging(args.log_level)
    # The composition root: the configuration learns the drivers' config models here
    # (after argument parsing, so --help does not import every driver).
    from scanfleet.drivers import registry

    registry.complete_config()
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
