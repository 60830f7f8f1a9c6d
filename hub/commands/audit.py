"""``scanfleet hub audit``: completeness per site, device and day (采集率, 上传率)."""

from __future__ import annotations

import argparse
import csv
import sys
from datetime import date
from typing import Any

from scanfleet.hub.audit import DeviceAudit, as_json, audit
from scanfleet.hub.cli import add_database_argument
from scanfleet.hub.db import HubDatabaseError, connect, require_current, resolve_dsn

CSV_FIELDS = (
    "site",
    "device",
    "records",
    "last_seq",
    "contiguous_seq",
    "delivered_seq",
    "produced_seq",
    "gaps",
    "explained",
    "chain_breaks",
    "completeness",
    "last_seen",
)


def register(subparsers: Any) -> None:
    """Add ``audit``."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "audit",
        help="completeness per site/device/day; exit 1 when a gap is unexplained",
        description=(
            "For every device: records held, highest and contiguous seq, open gaps, gaps a "
            "journal_loss explains, chain breaks, completeness (held or explained / expected), "
            "and per day the scans by operation and verdict. Exit status 1 when any device has "
            "an unexplained gap."
        ),
    )
    add_database_argument(parser)
    parser.add_argument("--site", help="only this site")
    parser.add_argument("--device", help="only this device")
    parser.add_argument("--since", type=date.fromisoformat, help="days from DATE (YYYY-MM-DD) on")
    parser.add_argument(
        "--timezone", default="UTC", help="time zone of the days (e.g. Asia/Shanghai; default UTC)"
    )
    fmt = parser.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="one JSON object per device per line")
    fmt.add_argument("--csv", action="store_true", help="CSV, one row per device")
    parser.add_argument(
        "--no-verify",
        action="store_true",
        help="skip re-hashing the stored rows (faster; chain breaks found at ingest still count)",
    )
    parser.set_defaults(func=_audit)


def _audit(args: argparse.Namespace) -> int:
    try:
        with connect(resolve_dsn(args.database)) as conn:
            require_current(conn)
            result = audit(
                conn,
                site=args.site,
                device=args.device,
                since=args.since,
                timezone=args.timezone,
                verify=not args.no_verify,
            )
    except HubDatabaseError as err:
        print(f"scanfleet hub audit: {err}", file=sys.stderr)
        return 2
    if args.json:
        for item in result:
            print(as_json(item))
    elif args.csv:
        _csv(result)
    else:
        print(render_table(result))
    return 0 if all(item.complete for item in result) else 1


def _ranges(ranges: list[list[Any]]) -> str:
    return ";".join("-".join(str(x) for x in r[:2]) for r in ranges)


def _csv(result: list[DeviceAudit]) -> None:
    writer = csv.writer(sys.stdout)
    writer.writerow(CSV_FIELDS)
    for item in result:
        row = [getattr(item, name) for name in CSV_FIELDS]
        row[CSV_FIELDS.index("gaps")] = _ranges(item.gaps)
        row[CSV_FIELDS.index("explained")] = _ranges(item.explained)
        writer.writerow(row)


def render_table(result: list[DeviceAudit]) -> str:
    """The people's view: one line per device, then one per device and day."""
    if not result:
        return "no devices"
    head = (
        "SITE",
        "DEVICE",
        "RECORDS",
        "LAST",
        "CONTIG",
        "DELIV",
        "OPEN GAPS",
        "EXPLAINED",
        "BREAKS",
        "COMPLETE",
    )
    rows = [head]
    for d in result:
        rows.append(
            (
                d.site,
                d.device,
                str(d.records),
                str(d.last_seq),
                str(d.contiguous_seq),
                "-" if d.delivered_seq is None else str(d.delivered_seq),
                _ranges(d.gaps) or "-",
                _ranges(d.explained) or "-",
                str(d.chain_breaks),
                f"{d.completeness * 100:.2f} %",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    lines += ["", "SITE  DEVICE  DAY  RECORDS  MISSING  SCANS  BY OPERATION  BY VERDICT"]
    for d in result:
        for day, entry in sorted(d.days.items()):
            ops = ",".join(f"{k}={v}" for k, v in sorted(entry["operation"].items()))
            verdicts = ",".join(f"{k}={v}" for k, v in sorted(entry["verdict"].items()))
            lines.append(
                f"{d.site}  {d.device}  {day}  {entry['records']}  {entry['missing']}  "
                f"{entry['scans']}  "
                f"{ops or '-'}  {verdicts or '-'}"
            )
    incomplete = [d for d in result if not d.complete]
    lines.append("")
    lines.append(
        f"{len(result) - len(incomplete)} of {len(result)} devices complete"
        + (f"; unexplained gaps on {', '.join(d.device for d in incomplete)}" if incomplete else "")
    )
    return "\n".join(lines)
