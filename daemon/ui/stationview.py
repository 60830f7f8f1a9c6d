"""The station part of the full-screen view: what a pharmacist reads at a glance.

The current operation and bill in reverse video, the bill's progress against its manifest,
the last bill's result, and each record as one line whose words say what happened
(``DUPLICATE of #12``, ``NOT ON BILL``, ``exempt 中药饮片 x3``). The live view of
``scanfleet run`` (daemon/ui/liveview.py) draws these lines above its own.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from scanfleet.daemon.station.manual import CHINESE_NAMES, Category
from scanfleet.daemon.ui.display import record_kind, record_value

GREEN = "\x1b[32m"
RED = "\x1b[31m"
YELLOW = "\x1b[33m"
BOLD = "\x1b[1m"
REVERSE = "\x1b[7m"
RESET = "\x1b[0m"

OPERATION_LABELS = {
    "receiving": "RECEIVING 入库验收",
    "sale_return_in": "SALE RETURN 销售退货",
    "transfer_in": "TRANSFER IN 调拨入库",
    "dispatch": "DISPATCH 销售出库",
    "purchase_return_out": "PURCHASE RETURN 退货出库",
    "transfer_out": "TRANSFER OUT 调拨出库",
    "retail_sale": "RETAIL SALE 零售",
    "dispense": "DISPENSE 发药",
    "vaccination": "VACCINATION 接种",
    "recall": "RECALL 召回",
    "destruction": "DESTRUCTION 销毁",
    "stocktake": "STOCKTAKE 盘点",
    "other": "OTHER 其他",
}


def station_lines(status: Mapping[str, Any]) -> list[str]:
    """The station block from :meth:`Station.status`."""
    op = str(status.get("operation", "?"))
    bill = status.get("bill")
    operator = status.get("operator") or "-"
    lines = [
        f"{REVERSE}{BOLD} {OPERATION_LABELS.get(op, op)} {RESET}   "
        f"bill {BOLD}{bill or '-'}{RESET}   operator {operator}"
    ]
    progress = status.get("progress")
    if progress:
        if progress.get("manifest"):
            expected, received = progress["expected_units"], progress["received_units"]
            width = 30
            filled = width * received // expected if expected else width
            colour = GREEN if received == expected else YELLOW
            lines.append(
                f"manifest  {colour}[{'#' * filled}{'.' * (width - filled)}]{RESET} "
                f"{received}/{expected} units   scans {progress['scans']}, "
                f"refused {progress['refused']}"
            )
        else:
            lines.append(f"no manifest   scans {progress['scans']}, refused {progress['refused']}")
    summary = status.get("last_summary")
    if summary:
        if summary.get("status") == "differences":
            lines.append(
                f"{RED}{BOLD}last bill {summary['bill']}: DIFFERENCES — "
                f"{len(summary['missing'])} missing, {len(summary['extra'])} extra: do not receive"
                f"{RESET}"
            )
        else:
            lines.append(f"{GREEN}last bill {summary['bill']}: {summary['status']}{RESET}")
    return lines


def record_words(record: Mapping[str, Any]) -> str:
    """What a record means, in a few words."""
    kind = record.get("type")
    if kind == "control":
        return f"set {record.get('action')} {record.get('argument') or ''}".rstrip()
    if kind == "bill_summary":
        return f"bill {record.get('bill')} ended: {record.get('status')}"
    if kind == "manual_entry":
        try:
            name = CHINESE_NAMES[Category(str(record.get("category")))]
        except ValueError:
            name = str(record.get("category"))
        return f"{record.get('kind')} {name} x{record.get('quantity')}"
    words = record_value(record)
    if record.get("duplicate_of") is not None:
        words += f"  DUPLICATE of #{record['duplicate_of']}"
    if record.get("expected") == "unexpected":
        words += "  NOT ON BILL"
    elif record.get("expected") == "already_scanned":
        words += "  ALREADY RECEIVED"
    return words


def record_line(record: Mapping[str, Any]) -> str:
    """One coloured line for a record in the last-scans list."""
    refused = record.get("verdict") == "refused" or record.get("status") == "differences"
    colour = RED if refused else GREEN
    verdict = record.get("verdict") or record.get("status") or ""
    reason = f"  ({record['reason']})" if record.get("reason") else ""
    return (
        f"{record.get('seq', 0):>7}  {str(record.get('time', ''))[11:19]:8}  "
        f"{record_kind(record):18}  {colour}{verdict:8}{RESET}  {record_words(record)}{reason}"
    )
