"""``scanfleet parse``: classify raw scans and print one result per line."""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Iterable, Iterator
from typing import Any, BinaryIO

from scanfleet.daemon.core.model import ParseResult
from scanfleet.daemon.intake.classify import classify, gs1_refusal
from scanfleet.daemon.intake.rawtext import unescape_raw

EPILOG = r"""
Each SCAN argument, or else each line of standard input, is one raw read. Standard
input is read as bytes and split on LF only: the LF ends the line and is not part of
the read; everything else (a GS for FNC1, a CR the scanner sent) is classified as is.
One JSON object per read is printed, with exactly these keys:

  {"kind","value","aim","fields","raw","problems"}

kind is one of gs1, trace20, ean13, drug_standard_code, ma, url, trace_other,
unknown (docs/code-kinds.md); raw is the read losslessly: printable ASCII as is, a
backslash as \\, every other byte as \xNN. The exit status is 0 even for unknown
reads; 2 means the command line (or an --escaped input) was wrong. A gs1 read
without (01) GTIN and (21) serial gets the problem "not a trace code: …" (a
station refuses it; [station] gs1_required_ais changes the list).

examples:
  printf '%s\n' ']C082001234567890123456' | scanfleet parse
      -> kind trace20, aim "]C0", fields.drug_id "8200123"
  printf ']d2010950110102091717270630101234A\x1d21SN0001\r\n' | scanfleet parse
      -> kind gs1 with gtin, expiry 2027-06-30, batch 1234A, serial SN0001
  scanfleet parse --format table 6901234567892 86912345678908 MA.156.M0.100001.1234567
  scanfleet parse --fnc1 '|' '010950110102091717270630101234A|21SN0001'
  scanfleet parse --escaped ']d2010950110102091717270630101234A\x1d21SN0001'
  scanfleet parse --format table < reads-from-the-counter.txt
"""

_TABLE_SKIP = frozenset({"hri", "elements", "parts", "terminator", "stx", "scheme"})
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_KIND_WIDTH = 18
_VALUE_WIDTH = 34
_AIM_WIDTH = 4
_FIELDS_WIDTH = 64


def register(subparsers: Any) -> None:
    """Add the ``parse`` command."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "parse",
        help="classify raw scans (arguments or stdin lines) and print the results",
        description="Classify raw scans as the daemon does and print one result per read.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "scans", nargs="*", metavar="SCAN", help="raw reads; without any, read stdin lines"
    )
    parser.add_argument(
        "--format",
        choices=("json", "table"),
        default="json",
        help="json: one compact object per line (default); table: aligned columns for people",
    )
    parser.add_argument(
        "--fnc1",
        type=_fnc1_char,
        metavar="CHAR",
        help="the character the scanner sends instead of GS (0x1D) for FNC1, e.g. '|'",
    )
    parser.add_argument(
        "--aim",
        type=_aim_id,
        metavar="ID",
        help="symbology reported by the transport (e.g. ]E4), as HID POS or SSI would",
    )
    parser.add_argument(
        "--escaped",
        action="store_true",
        help="inputs are in the raw text form (\\xNN, \\\\), e.g. copied from a raw field",
    )
    parser.set_defaults(func=_run)


def _fnc1_char(text: str) -> str:
    # The same rule as classify.fnc1_substitute in the config file.
    if len(text) != 1 or not 0x21 <= ord(text) <= 0x7E:
        raise argparse.ArgumentTypeError("must be one printable ASCII character such as '|'")
    return text


def _aim_id(text: str) -> str:
    if not re.fullmatch(r"\][A-Za-z][0-9]", text):
        raise argparse.ArgumentTypeError("must be an AIM identifier such as ]E4 or ]d2")
    return text


def _stdin_reads(stream: BinaryIO) -> Iterator[bytes]:
    # Iterating a binary stream splits on LF only; reading line by line keeps an
    # interactive session (a keyboard-wedge scanner into a terminal) answering per scan.
    for line in stream:
        yield line[:-1] if line.endswith(b"\n") else line


def _run(args: argparse.Namespace) -> int:
    reads: Iterable[bytes]
    if args.scans:
        # fsencode undoes the surrogateescape of argv, so non-UTF-8 bytes arrive intact.
        reads = [os.fsencode(scan) for scan in args.scans]
    else:
        reads = _stdin_reads(sys.stdin.buffer)
    out = sys.stdout.buffer
    if args.format == "table":
        out.write(_table_header().encode("utf-8"))
    bad_input = False
    for number, data in enumerate(reads, start=1):
        if args.escaped:
            try:
                data = unescape_raw(data.decode("ascii"))
            except ValueError as err:
                # UnicodeDecodeError is a ValueError too: the raw text form is ASCII.
                print(f"scanfleet parse: input {number}: {err}", file=sys.stderr)
                bad_input = True
                continue
        result = classify(data, aim=args.aim, fnc1_substitute=args.fnc1)
        refusal = gs1_refusal(result)
        if refusal is not None:
            # What a station with the default [station] gs1_required_ais would say.
            result = result.model_copy(update={"problems": [*result.problems, refusal]})
        line = _table_row(result) if args.format == "table" else _json_line(result)
        out.write(line.encode("utf-8"))
        out.flush()
    return 2 if bad_input else 0


def _json_line(result: ParseResult) -> str:
    return (
        json.dumps(result.model_dump(mode="json"), ensure_ascii=False, separators=(",", ":")) + "\n"
    )


def _printable(text: str) -> str:
    return _CONTROL.sub(
        lambda m: "<GS>" if m.group() == "\x1d" else f"\\x{ord(m.group()):02x}", text
    )


def _cell(text: str, width: int) -> str:
    if len(text) > width:
        text = text[: width - 1] + "…"
    return text.ljust(width)


def _table_header() -> str:
    return (
        " ".join(
            (
                _cell("KIND", _KIND_WIDTH),
                _cell("VALUE", _VALUE_WIDTH),
                _cell("AIM", _AIM_WIDTH),
                _cell("FIELDS", _FIELDS_WIDTH),
                "PROBLEMS",
            )
        )
        + "\n"
    )


def _notable(key: str, value: object) -> bool:
    # A person scanning the table wants the identifying fields and the flags that
    # are off their normal state (a failed check, a special drug, a Digital Link).
    if key in _TABLE_SKIP or value is None or isinstance(value, dict | list):
        return False
    if isinstance(value, bool):
        return value is not key.endswith("_valid")
    return True


def _table_row(result: ParseResult) -> str:
    fields = " ".join(
        f"{key}={json.dumps(value) if isinstance(value, bool) else value}"
        for key, value in result.fields.items()
        if _notable(key, value)
    )
    row = " ".join(
        (
            _cell(str(result.kind), _KIND_WIDTH),
            _cell(_printable(result.value), _VALUE_WIDTH),
            _cell(result.aim or "-", _AIM_WIDTH),
            # Fields are what a person looks for: padded for alignment, never cut.
            _printable(fields).ljust(_FIELDS_WIDTH),
            "; ".join(_printable(p) for p in result.problems),
        )
    )
    return row.rstrip() + "\n"
