"""``scanfleet hub audit``: the completeness figures, their formats and the exit status."""

from __future__ import annotations

import csv
import io
import json
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import pytest

from scanfleet.daemon.cli import main
from scanfleet.hub.db import connect, upgrade
from scanfleet.hub.records import parse_scans, parse_topic
from scanfleet.hub.store import Batch, store
from support.hub import Chain, query

pytestmark = pytest.mark.integration

SITE, DEVICE = "site-q", "sf-0000000000aa"


def _store(dsn: str, chain: Chain, first: int, last: int) -> None:
    with connect(dsn) as conn:
        rows = parse_scans(parse_topic(chain.topic), chain.batch(first, last))
        store(conn, Batch(rows=rows))


@pytest.fixture
def dsn(hub_database: str) -> str:
    with connect(hub_database) as conn:
        upgrade(conn)
    return hub_database


def _audit(capsys: pytest.CaptureFixture[str], dsn: str, *extra: str) -> tuple[int, str]:
    code = main(["hub", "audit", "--database", dsn, *extra])
    return code, capsys.readouterr().out


def test_an_unexplained_gap_fails_the_audit_in_every_format(
    dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    chain = Chain(SITE, DEVICE)
    for i in range(20):
        chain.add(operation="retail_sale" if i % 4 else "sale_return_in")
    _store(dsn, chain, 1, 10)
    _store(dsn, chain, 16, 20)
    code, out = _audit(capsys, dsn, "--json")
    assert code == 1
    (dev,) = [json.loads(line) for line in out.splitlines()]
    assert dev["site"] == SITE
    assert dev["device"] == DEVICE
    assert dev["records"] == 15
    assert dev["last_seq"] == 20
    assert dev["contiguous_seq"] == 10
    assert dev["gaps"] == [[11, 15]]
    assert dev["explained"] == []
    assert dev["chain_breaks"] == 0
    assert dev["completeness"] == 0.75
    (day,) = dev["days"].values()
    assert day["scans"] == 15
    assert sum(day["operation"].values()) == 15
    assert day["missing"] == 5  # on the day of seq 10, the last held before the gap
    assert day["completeness"] == 0.75
    code, out = _audit(capsys, dsn, "--csv")
    assert code == 1
    rows = list(csv.DictReader(io.StringIO(out)))
    assert rows[0]["gaps"] == "11-15"
    assert rows[0]["completeness"] == "0.75"
    code, out = _audit(capsys, dsn)
    assert code == 1
    assert "75.00 %" in out
    assert "unexplained gaps on sf-0000000000aa" in out


def test_the_devices_delivered_seq_above_what_arrived_is_a_gap(
    dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    chain = Chain(SITE, DEVICE)
    for _ in range(10):
        chain.add()
    _store(dsn, chain, 1, 8)
    query(dsn, "UPDATE devices SET delivered_seq = 10, produced_seq = 12")
    code, out = _audit(capsys, dsn, "--json")
    dev = json.loads(out)
    assert code == 1
    assert dev["gaps"] == [[9, 10]]
    assert dev["expected"] == 10
    assert dev["pending"] == 2
    _store(dsn, chain, 9, 10)
    code, out = _audit(capsys, dsn, "--json", "--site", SITE)
    assert code == 0
    assert json.loads(out)["completeness"] == 1.0


def test_a_declared_loss_is_explained_and_passes(
    dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    chain = Chain(SITE, DEVICE)
    for _ in range(5):
        chain.add()
    chain.seq = 7
    chain.add(type="journal_loss", lost=[{"first_seq": 6, "last_seq": 7}], reason="bad card")
    _store(dsn, chain, 1, 5)
    with connect(dsn) as conn:
        rows = parse_scans(parse_topic(chain.topic), chain.batch(8, 8))
        store(conn, Batch(rows=rows))
    code, out = _audit(capsys, dsn, "--json", "--device", DEVICE)
    dev = json.loads(out)
    assert code == 0
    assert dev["gaps"] == []
    assert dev["explained"] == [[6, 7, "bad card"]]
    assert dev["completeness"] == 1.0


def test_export_verifies_offline_and_catches_an_edited_line(
    dsn: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    chain = Chain(SITE, DEVICE)
    for _ in range(30):
        chain.add()
    _store(dsn, chain, 1, 30)
    out = tmp_path / "q4"
    assert main(["hub", "export", "--database", dsn, "--out", str(out), "--site", SITE]) == 0
    assert "exported 30 records of 1 devices" in capsys.readouterr().out
    lines = (out / "records.jsonl").read_bytes().splitlines()
    assert lines == [chain.payloads[s] for s in range(1, 31)]
    assert (out / "records.csv").read_text().count("\n") == 31
    assert subprocess.run(["sha256sum", "-c", "SHA256SUMS"], cwd=out, check=False).returncode == 0
    assert main(["hub", "verify-export", str(out)]) == 0
    # Refuses to overwrite an earlier export.
    assert main(["hub", "export", "--database", dsn, "--out", str(out)]) == 1
    capsys.readouterr()
    lines[4] = lines[4].replace(b'"accepted"', b'"refused"')
    (out / "records.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    assert main(["hub", "verify-export", str(out)]) == 1
    report = capsys.readouterr().out
    assert "records.jsonl: SHA-256 differs" in report
    assert "sf-0000000000aa:5): hash mismatch" in report


def test_the_duplicate_view_tells_split_packs_and_returns_from_real_duplicates(
    dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    pack, drug, twice = "83711700200000000051", "83711700200000000099", "83711700200000000077"
    a = Chain("site-a", "sf-0000000000a1")
    b = Chain("site-b", "sf-0000000000b1", start=datetime(2026, 12, 1, 9, 0, tzinfo=UTC))
    a.add(value=pack, split_unit=1, split_units=2)
    a.add(value=pack, split_unit=2, split_units=2)
    a.add(value=drug)
    a.add(value=drug, operation="sale_return_in")
    a.add(value=drug)  # sold again after the return: legitimate
    a.add(value=twice)
    b.add(value=twice)  # the same code sold at another site: a real duplicate
    _store(dsn, a, 1, 6)
    _store(dsn, b, 1, 1)
    assert main(["hub", "duplicates", "--database", dsn, "--all", "--json"]) == 1
    out = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    verdicts = {(r["value"], r["device"], r["seq"]): r["verdict"] for r in out}
    assert verdicts == {
        (pack, "sf-0000000000a1", 2): "split_pack",
        (drug, "sf-0000000000a1", 5): "after_return",
        (twice, "sf-0000000000b1", 1): "duplicate",
    }
    (dup,) = [r for r in out if r["verdict"] == "duplicate"]
    assert (dup["earlier_site"], dup["earlier_device"], dup["earlier_seq"]) == (
        "site-a",
        "sf-0000000000a1",
        6,
    )
