"""``scanfleet parse`` as a real process: real stdin bytes, real argv, real exit codes."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from scanfleet.daemon.core.model import ParseResult
from scanfleet.daemon.intake.classify import gs1_refusal
from scanfleet.daemon.intake.rawtext import unescape_raw

VECTOR_DIR = Path(__file__).resolve().parents[2] / "tests" / "data" / "classify"
KEYS = ["kind", "value", "aim", "fields", "raw", "problems"]


def _vectors() -> list[dict[str, Any]]:
    vectors = []
    for path in sorted(VECTOR_DIR.glob("*.jsonl")):
        vectors += [json.loads(line) for line in path.read_text("ascii").split("\n") if line]
    return vectors


# A malformed transport AIM is something only a driver can pass; the command line
# refuses it as a usage error (test_usage_errors_exit_2).
VECTORS = [v for v in _vectors() if re.fullmatch(r"\][A-Za-z][0-9]", v.get("aim", "]C0"))]


def scanfleet(*args: str | bytes, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    """Run ``python -m scanfleet.daemon ARGS`` with *stdin*; never raises on exit status."""
    return subprocess.run(
        [sys.executable, "-m", "scanfleet.daemon", *args],
        input=stdin,
        capture_output=True,
        timeout=120,
        check=False,
    )


def _options(vector: dict[str, Any]) -> list[str]:
    options = []
    if "aim" in vector:
        options += ["--aim", vector["aim"]]
    if "fnc1" in vector:
        options += ["--fnc1", vector["fnc1"]]
    return options


def _lines(proc: subprocess.CompletedProcess[bytes]) -> list[dict[str, Any]]:
    assert proc.returncode == 0, proc.stderr.decode()
    assert proc.stderr == b""
    return [json.loads(line) for line in proc.stdout.decode("utf-8").split("\n") if line]


def cli_expect(expect: dict[str, Any]) -> dict[str, Any]:
    """The classify result plus the default station's trace-code refusal the CLI adds."""
    refusal = gs1_refusal(ParseResult.model_validate(expect))
    if refusal is None:
        return expect
    return {**expect, "problems": [*expect["problems"], refusal]}


def test_junk_that_biip_reads_as_gs1_is_not_a_trace_code() -> None:
    junk = [b"37000", b"10ABC", b"99x", b"91internal", b"1111111111111111"]
    for line in _lines(scanfleet("parse", stdin=b"\n".join(junk) + b"\n")):
        refused = line["kind"] == "unknown" or any(
            p.startswith("not a trace code") for p in line["problems"]
        )
        assert refused, line
    (real,) = _lines(scanfleet("parse", stdin=b"]d2010950110102091717270630101234A\x1d21SN0001\n"))
    assert real["kind"] == "gs1"
    assert real["problems"] == []
    assert set(real["fields"]["elements"]) == {"01", "17", "10", "21"}


def test_trace_code_on_stdin_gives_trace20_with_aim_and_drug_id() -> None:
    # printf '%s\n' ']C082001234567890123456' | scanfleet parse
    (line,) = _lines(scanfleet("parse", stdin=b"]C082001234567890123456\n"))
    assert (line["kind"], line["aim"], line["fields"]["drug_id"]) == ("trace20", "]C0", "8200123")


def test_every_golden_vector_through_stdin_bytes() -> None:
    # One process per option set; each read is one LF-terminated stdin line, so reads
    # that contain an LF themselves go through argv instead (the next test).
    groups: dict[tuple[str, ...], list[dict[str, Any]]] = defaultdict(list)
    for vector in VECTORS:
        if b"\n" not in unescape_raw(vector["input"]):
            groups[tuple(_options(vector))].append(vector)
    assert sum(len(g) for g in groups.values()) > 80
    for options, vectors in groups.items():
        stdin = b"".join(unescape_raw(v["input"]) + b"\n" for v in vectors)
        got = _lines(scanfleet("parse", *options, stdin=stdin))
        assert len(got) == len(vectors)
        for vector, line in zip(vectors, got, strict=True):
            assert line == cli_expect(vector["expect"]), vector["name"]
            assert list(line) == KEYS


def test_golden_vectors_with_lf_inside_through_argv() -> None:
    vectors = [v for v in VECTORS if b"\n" in unescape_raw(v["input"])]
    assert vectors
    for vector in vectors:
        (line,) = _lines(scanfleet("parse", *_options(vector), unescape_raw(vector["input"])))
        assert line == cli_expect(vector["expect"]), vector["name"]


def test_every_golden_vector_through_escaped_input() -> None:
    for options in {tuple(_options(v)) for v in VECTORS}:
        vectors = [v for v in VECTORS if tuple(_options(v)) == options]
        stdin = "".join(v["input"] + "\n" for v in vectors).encode("ascii")
        got = _lines(scanfleet("parse", "--escaped", *options, stdin=stdin))
        assert got == [cli_expect(v["expect"]) for v in vectors]


def test_crlf_from_the_scanner_is_a_recorded_terminator_not_line_noise() -> None:
    (line,) = _lines(scanfleet("parse", stdin=b"]d20109501101020917\x1d21X\r\n"))
    assert line["kind"] == "gs1"
    assert line["value"] == "0109501101020917\x1d21X"
    assert line["raw"] == "]d20109501101020917\\x1d21X\\x0d"
    assert line["fields"]["terminator"] == "\\x0d"


def test_last_line_without_lf_and_blank_lines_are_reads_too() -> None:
    lines = _lines(scanfleet("parse", stdin=b"6901234567892\n\n83711700173703755001"))
    assert [line["kind"] for line in lines] == ["ean13", "unknown", "trace20"]
    assert lines[1]["problems"] == ["empty read"]


def test_non_utf8_argv_bytes_arrive_intact() -> None:
    (line,) = _lines(scanfleet("parse", b"\xff8371"))
    assert line["raw"] == "\\xff8371"
    assert line["kind"] == "unknown"


def test_output_is_compact_json_one_object_per_line() -> None:
    proc = scanfleet("parse", "83711700173703755001", "6901234567892")
    out = proc.stdout.decode()
    assert out.count("\n") == 2
    assert ": " not in out
    assert ", " not in out


def test_unknown_reads_still_exit_zero() -> None:
    proc = scanfleet("parse", "SKU-A7731", "")
    assert proc.returncode == 0
    assert [json.loads(x)["kind"] for x in proc.stdout.decode().split("\n") if x] == [
        "unknown",
        "unknown",
    ]


@pytest.mark.parametrize(
    "args",
    [
        ["--fnc1", "ab"],
        ["--fnc1", "\x1d"],
        ["--format", "xml"],
        ["--aim", "E0"],
        ["--no-such-option"],
    ],
)
def test_usage_errors_exit_2(args: list[str]) -> None:
    proc = scanfleet("parse", *args, "83711700173703755001")
    assert proc.returncode == 2
    assert proc.stdout == b""
    assert b"usage:" in proc.stderr


def test_malformed_escaped_input_exits_2_after_the_good_lines() -> None:
    proc = scanfleet("parse", "--escaped", stdin=b"83711700173703755001\n\\x1D\n")
    assert proc.returncode == 2
    assert json.loads(proc.stdout)["kind"] == "trace20"
    assert b"input 2" in proc.stderr


def test_table_format_aligns_columns_for_people() -> None:
    proc = scanfleet(
        "parse",
        "--format",
        "table",
        "]C082001234567890123456",
        "]d2010950110102091717270630101234A\x1d21SN0001",
        "86912345678900",
        b"\xff",
        "]d2010950110102091717270630101234567890ABCDEFGHIJ\x1d21SERIAL-0123456789",
    )
    assert proc.returncode == 0
    header, *rows = proc.stdout.decode().rstrip("\n").split("\n")
    assert header.split() == ["KIND", "VALUE", "AIM", "FIELDS", "PROBLEMS"]
    columns = [header.index(name) for name in ("VALUE", "AIM", "FIELDS", "PROBLEMS")]
    *rows, long_row = rows
    assert len(rows) == 4
    for row in rows:
        # Rows end after their last non-empty cell; every cell that is there starts
        # under its header, after a blank.
        for start in columns:
            if start < len(row):
                assert row[start - 1] == " ", (row, start)
    aim = columns[1]
    assert [row[aim : aim + 3] for row in rows] == ["]C0", "]d2", "-  ", "-  "]
    assert "drug_id=8200123" in rows[0]
    assert "<GS>" in rows[1] or "…" in rows[1]
    assert "serial=SN0001" in rows[1]
    assert "check digit 0 is wrong" in rows[2]
    assert "not UTF-8" in rows[3]
    # Long fields are not cut, a long value is.
    assert "batch=1234567890ABCDEFGHIJ serial=SERIAL-0123456789" in long_row
    assert "…" in long_row


def test_help_explains_the_output_with_examples() -> None:
    proc = scanfleet("parse", "--help")
    assert proc.returncode == 0
    text = proc.stdout.decode()
    assert "examples:" in text
    assert '{"kind","value","aim","fields","raw","problems"}' in text
    assert "printf '%s\\n' ']C082001234567890123456' | scanfleet parse" in text
