"""``scanfleet status``: journal depth, delivery and broker state, alarms.

The journal figures come from the journal file itself (opened read-only, so this
works while the daemon runs and when it does not); broker state, counters and
alarms come from the daemon's ``status.json``, which is trusted only while the
process that wrote it is alive and the file is fresh.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from scanfleet.daemon.commands.location import add_location_arguments, state_dir_from
from scanfleet.daemon.core.alarms import ALARMS_FILE, load_sticky
from scanfleet.daemon.core.config import JOURNAL_FILE
from scanfleet.daemon.core.errors import ConfigError, JournalError
from scanfleet.daemon.journal.journal import Journal
from scanfleet.daemon.publish.status import STATUS_FILE, pid_alive, read_status, status_age_s

STALE_AFTER_S = 30.0
"""A running daemon rewrites status.json at least every 10 s; older means it is gone."""


def register(subparsers: Any) -> None:
    """Add the ``status`` command."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "status",
        help="journal depth, oldest undelivered scan, broker state, alarms",
        description=(
            "Show what the journal holds and whether it reaches the broker. Works whether "
            "or not the daemon is running. Exit 0 when the status could be read, 1 when "
            "neither a journal nor a status file exists."
        ),
    )
    add_location_arguments(parser)
    parser.add_argument("--json", action="store_true", help="one JSON document")
    parser.set_defaults(func=_run)


def collect_status(state_dir: Path, now: datetime | None = None) -> dict[str, Any]:
    """Everything ``status`` shows, as one JSON-ready dict."""
    now = now or datetime.now(UTC)
    out: dict[str, Any] = {"state_dir": str(state_dir)}
    out["journal"] = _journal_figures(state_dir / JOURNAL_FILE, now)
    document = read_status(state_dir / STATUS_FILE)
    daemon: dict[str, Any] = {"running": False, "status_file": document is not None}
    if document is not None:
        pid = document.get("pid")
        age = status_age_s(document, now)
        alive = isinstance(pid, int) and pid_alive(pid)
        fresh = age is not None and age <= STALE_AFTER_S
        daemon.update(
            {
                "running": alive and fresh,
                "pid": pid,
                "pid_alive": alive,
                "status_age_s": None if age is None else round(age, 1),
                "version": document.get("version"),
                "device": document.get("device"),
                "site": document.get("site"),
            }
        )
        broker = dict(document.get("broker") or {})
        if not daemon["running"]:
            # The last state the daemon reported, kept for the post-mortem but flagged.
            broker["state_when_last_seen"] = broker.pop("state", None)
            broker["state"] = "unknown (daemon not running)"
        out["broker"] = broker
        out["counters"] = document.get("counters", {})
        out["alarms"] = document.get("alarms", [])
    else:
        out["broker"] = {"state": "unknown (no status file)"}
        out["alarms"] = []
    # Alarms that wait for an acknowledgement are shown even with the daemon down.
    shown = {a.get("code") for a in out["alarms"]}
    for code, alarm in load_sticky(state_dir / ALARMS_FILE).items():
        if code not in shown:
            out["alarms"].append(alarm.as_json())
    out["daemon"] = daemon
    return out


def _journal_figures(path: Path, now: datetime) -> dict[str, Any]:
    if not path.exists():
        return {"path": str(path), "exists": False}
    try:
        with Journal.open_readonly(path) as reader:
            stats = reader.stats()
    except JournalError as err:
        return {"path": str(path), "exists": True, "error": str(err)}
    oldest = stats.oldest_undelivered_time
    return {
        "path": str(path),
        "exists": True,
        "last_seq": stats.last_seq,
        "delivered_seq": stats.delivered_seq,
        "depth": stats.depth,
        "oldest_undelivered_time": oldest.isoformat() if oldest else None,
        "oldest_undelivered_age_s": round((now - oldest).total_seconds(), 1) if oldest else None,
        "size_bytes": stats.size_bytes,
        "budget_bytes": stats.budget_bytes,
        "pruned_through_seq": stats.pruned_through_seq,
    }


def _run(args: argparse.Namespace) -> int:
    try:
        state_dir = state_dir_from(args)
    except ConfigError as err:
        print(err, file=sys.stderr)
        return 1
    status = collect_status(state_dir)
    if args.json:
        json.dump(status, sys.stdout, indent=2, sort_keys=True)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(format_status(status))
    found = status["journal"].get("exists") or status["daemon"]["status_file"]
    return 0 if found else 1


def format_status(status: dict[str, Any]) -> str:
    """The human-readable form of :func:`collect_status`'s result."""
    lines = []
    daemon = status["daemon"]
    if daemon["running"]:
        lines.append(f"daemon:     running (pid {daemon['pid']}, version {daemon['version']})")
    elif daemon["status_file"]:
        why = "pid not alive" if not daemon.get("pid_alive") else "status file stale"
        lines.append(
            f"daemon:     NOT running ({why}; status written {daemon['status_age_s']} s ago)"
        )
    else:
        lines.append("daemon:     NOT running (no status file)")
    journal = status["journal"]
    if not journal.get("exists"):
        lines.append(f"journal:    none at {journal['path']}")
    elif "error" in journal:
        lines.append(f"journal:    unreadable: {journal['error']}")
    else:
        age = journal["oldest_undelivered_age_s"]
        lines.append(
            f"journal:    {journal['depth']} undelivered (last seq {journal['last_seq']}, "
            f"delivered through {journal['delivered_seq']})"
        )
        lines.append(
            "oldest:     " + ("nothing undelivered" if age is None else f"{age} s undelivered")
        )
        lines.append(
            f"space:      {journal['size_bytes']} of {journal['budget_bytes']} bytes"
            + (
                f", pruned through seq {journal['pruned_through_seq']}"
                if journal["pruned_through_seq"]
                else ""
            )
        )
    broker = status["broker"]
    where = f" ({broker['url']})" if broker.get("url") else ""
    if broker.get("protocol"):
        where += f", MQTT {broker['protocol']}"
    lines.append(f"broker:     {broker.get('state')}{where}")
    if "state_when_last_seen" in broker:
        lines.append(f"            last seen: {broker['state_when_last_seen']}")
    alarms = status["alarms"]
    if not alarms:
        lines.append("alarms:     none")
    for alarm in alarms:
        lines.append(f"alarm:      {alarm['code']} ({alarm['severity']}): {alarm['message']}")
    return "\n".join(lines) + "\n"
