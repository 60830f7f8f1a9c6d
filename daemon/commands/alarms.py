"""``scanfleet alarms``: list the alarms that wait for an operator, and acknowledge them.

Critical alarms about data (``journal_quarantined``, ``journal_loss``) stay, across
restarts, until acknowledged here or with the ``ack`` remote command. A running daemon
notices an acknowledgement within a second.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from scanfleet.daemon.commands.location import add_location_arguments, state_dir_from
from scanfleet.daemon.core.alarms import ALARMS_FILE, acknowledge, load_sticky
from scanfleet.daemon.core.errors import ConfigError


def register(subparsers: Any) -> None:
    """Add the ``alarms`` command."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "alarms",
        help="list alarms waiting for acknowledgement; 'alarms ack CODE' ends one",
        description=(
            "Without arguments: list the alarms that persist until an operator acknowledges "
            "them (journal_quarantined, journal_loss). 'ack CODE' acknowledges one; the "
            "daemon, if running, drops it within a second. Exit 1 when there is no such "
            "alarm to acknowledge."
        ),
    )
    parser.add_argument("action", nargs="?", choices=("list", "ack"), default="list")
    parser.add_argument("code", nargs="?", help="the alarm code to acknowledge")
    parser.add_argument("--json", action="store_true", help="list as one JSON document")
    add_location_arguments(parser)
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    try:
        store = state_dir_from(args) / ALARMS_FILE
    except ConfigError as err:
        print(err, file=sys.stderr)
        return 1
    if args.action == "ack":
        if not args.code:
            print("scanfleet alarms ack: name the alarm code to acknowledge", file=sys.stderr)
            return 2
        if not store.parent.is_dir():
            print(f"scanfleet alarms: no state directory {store.parent}", file=sys.stderr)
            return 1
        if not acknowledge(store, args.code):
            print(f"scanfleet alarms: no unacknowledged alarm {args.code!r}", file=sys.stderr)
            return 1
        print(f"alarm {args.code} acknowledged")
        return 0
    sticky = load_sticky(store)
    if args.json:
        print(json.dumps([a.as_json() for a in sticky.values()], indent=1))
        return 0
    if not sticky:
        print("no alarms waiting for acknowledgement")
    for alarm in sticky.values():
        print(f"{alarm.code} [{alarm.severity}] since {alarm.since:%Y-%m-%d %H:%M:%S}Z")
        print(f"  {alarm.message}")
        print(f"  acknowledge: scanfleet alarms ack {alarm.code}")
    return 0
