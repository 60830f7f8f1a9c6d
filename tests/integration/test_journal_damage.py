"""Real journal files damaged in four ways: nothing salvageable is lost, no id is reused,
whatever is gone is declared in one journal_loss record, verify/export read what is left."""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import rfc8785

from scanfleet.daemon.core.alarms import AlarmSet
from scanfleet.daemon.core.model import JournalLoss
from scanfleet.daemon.journal.journal import Journal
from scanfleet.daemon.journal.recovery import quarantined_files
from scanfleet.daemon.journal.store import Checkpointer
from support.broker import Mosquitto
from support.corrupt import smash
from support.daemon import DaemonProcess, write_config
from support.faults import scanfleet, wait_for
from support.mqtt import Collector
from support.scans import EPOCH, make_scan_body

pytestmark = pytest.mark.integration

DEVICE = "sf-00000000d00d"
RECORDS = 600
DELIVERED = 200


def clock() -> Any:
    return EPOCH + timedelta(days=1)


def spans(loss: dict[str, Any]) -> set[int]:
    ranges = [*loss["lost"], *([loss["reserved"]] if loss["reserved"] else [])]
    return {s for r in ranges for s in range(r["first_seq"], r["last_seq"] + 1)}


@pytest.fixture(scope="module")
def originals(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two journals of RECORDS records, DELIVERED delivered: one closed cleanly (all in
    the database file), one copied while open without checkpoints (all in the WAL)."""
    base = tmp_path_factory.mktemp("damage")
    rng = random.Random(15)
    bodies = [make_scan_body(i, rng) for i in range(RECORDS)]
    closed = base / "closed" / "journal.sqlite3"
    with Journal.open(closed, DEVICE, clock=clock) as j:
        for body in bodies:
            j.append(body)
        j.mark_delivered(DELIVERED)
    walled = base / "walled" / "journal.sqlite3"
    interval = Checkpointer.INTERVAL
    Checkpointer.INTERVAL = 3600.0  # keep every frame in the WAL, as after a SIGKILL
    try:
        with Journal.open(walled, DEVICE, clock=clock) as j:
            for body in bodies:
                j.append(body)
            j.mark_delivered(DELIVERED)
            crashed = base / "crashed"
            shutil.copytree(walled.parent, crashed, ignore=shutil.ignore_patterns("*.lock"))
    finally:
        Checkpointer.INTERVAL = interval
    return {"closed": closed, "walled": crashed / "journal.sqlite3"}


def payloads(path: Path) -> dict[int, bytes]:
    with Journal.open_readonly(path) as reader:
        return {r.seq: r.payload for r in reader.iter_records()}


@pytest.mark.parametrize("pattern", ["header", "index", "data", "wal"])
def test_damage_is_salvaged_declared_and_never_reuses_an_id(
    originals: dict[str, Path], tmp_path: Path, pattern: str
) -> None:
    source = originals["walled" if pattern == "wal" else "closed"]
    expected = payloads(originals["closed"])
    shutil.copytree(source.parent, tmp_path / "state")
    path = tmp_path / "state" / "journal.sqlite3"
    smash(path, pattern)

    alarms = AlarmSet()
    with Journal.open(path, DEVICE, alarms=alarms, clock=clock) as j:
        assert "journal_quarantined" in alarms
        stored = {r.seq: r.payload for r in j.read_after(0, limit=10**6, max_bytes=1 << 40)}
        loss_seq = max(stored)
        loss = json.loads(stored.pop(loss_seq))
        JournalLoss.model_validate(loss)
        # Salvaged records are the originals byte for byte, with their own ids.
        for seq, payload in stored.items():
            assert payload == expected[seq]
        # Every undelivered seq is either delivered again or declared; none is reused.
        assert set(stored) | spans(loss) == set(range(DELIVERED + 1, loss_seq))
        assert not set(stored) & spans(loss)
        assert loss_seq > RECORDS
        assert loss["reserved"] is None or loss["reserved"]["first_seq"] > RECORDS
        assert loss["anchor_seq"] >= 1
        if pattern == "data":
            assert loss["lost_count"] > 0
            assert "journal_loss" in alarms
        else:  # leaves intact (or a newer copy in a later WAL frame): everything salvaged
            assert loss["lost_count"] == 0, loss
        assert j.append(make_scan_body(0, random.Random(1)))["seq"] == loss_seq + 1
        assert j.verify(full=True).ok

    # The damaged file is kept, listed by verify and readable by export.
    (aside,) = quarantined_files(path)
    verify = subprocess.run(
        [sys.executable, "-m", "scanfleet.daemon", "verify", "--state-dir", str(path.parent)],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert "quarantined" in verify.stdout
    assert aside.name in verify.stdout
    if pattern in ("header", "data"):
        out = tmp_path / "aside.jsonl"
        export = subprocess.run(
            [
                sys.executable,
                "-m",
                "scanfleet.daemon",
                "export",
                "--journal",
                str(aside),
                "-o",
                str(out),
            ],
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
        )
        assert export.returncode == 0, export.stderr
        assert "damaged" in export.stderr
        lines = out.read_bytes().splitlines()
        assert lines
        assert all(line == expected[json.loads(line)["seq"]] for line in lines)
        if pattern == "data":
            assert "unreadable" in export.stderr
            assert len(lines) < RECORDS
        else:
            assert len(lines) == RECORDS


def test_a_lost_journal_file_continues_after_the_head_file(
    originals: dict[str, Path], tmp_path: Path
) -> None:
    shutil.copytree(originals["closed"].parent, tmp_path / "state")
    path = tmp_path / "state" / "journal.sqlite3"
    path.unlink()  # replaced SD card image, operator "reset": the seq must not restart
    with Journal.open(path, DEVICE, clock=clock) as j:
        (record,) = j.read_after(0, limit=10, max_bytes=1 << 20)
        loss = record.as_dict()
        assert loss["type"] == "journal_loss"
        assert loss["seq"] > RECORDS
        assert loss["lost"] == [{"first_seq": DELIVERED + 1, "last_seq": RECORDS}]
        assert loss["quarantined_file"] == ""


def test_without_a_head_file_the_chain_restarts_under_a_new_epoch(
    originals: dict[str, Path], tmp_path: Path
) -> None:
    shutil.copytree(originals["closed"].parent, tmp_path / "state")
    path = tmp_path / "state" / "journal.sqlite3"
    (tmp_path / "state" / "journal.sqlite3.head").unlink()
    smash(path, "header")
    with Journal.open(path, DEVICE, clock=clock) as j:
        loss = j.read_after(RECORDS + 1, limit=10, max_bytes=1 << 20)[-1].as_dict()
        assert loss["type"] == "journal_loss"
        assert (loss["epoch"], loss["anchor_seq"]) == (1, 0)
        assert loss["prev_hash"] == "0" * 64
        # Above any seq the device can have used: 1000 per second since 1970.
        assert loss["seq"] > int(clock().timestamp()) * 1000
        assert j.append(make_scan_body(0, random.Random(2)))["seq"] == loss["seq"] + 1
        assert j.verify().ok


@pytest.mark.parametrize("pattern", ["header", "index", "data", "wal"])
def test_the_daemon_delivers_what_was_salvaged_and_the_loss_record_without_stalling(
    originals: dict[str, Path], tmp_path: Path, mosquitto: Mosquitto, pattern: str
) -> None:
    source = originals["walled" if pattern == "wal" else "closed"]
    expected = payloads(originals["closed"])
    state = tmp_path / "state"
    shutil.copytree(source.parent, state)
    smash(state / "journal.sqlite3", pattern)
    config = write_config(
        tmp_path / "scanfleet.toml",
        f'[identity]\nsite = "site-x"\ndevice = "{DEVICE}"\n\n[paths]\nstate_dir = "{state}"\n'
        f'\n[broker]\nurl = "{mosquitto.url}"\n',
    )
    backend = Collector(mosquitto.host, mosquitto.port, f"scanfleet/v1/site-x/{DEVICE}/#")
    daemon = DaemonProcess(config, tmp_path / "daemon.log", log_level="info").start()
    try:
        assert wait_for(lambda: any(s["type"] == "journal_loss" for s in backend.scans()), 60), (
            daemon.run_log()
        )
        status = json.loads(scanfleet("status", "--state-dir", str(state), "--json").stdout)
        assert "journal_quarantined" in {a["code"] for a in status["alarms"]}
        assert daemon.stop() == 0
    finally:
        if daemon.alive():
            daemon.kill()
        backend.close()
    received = {s["seq"]: s for s in backend.scans()}
    (loss,) = [s for s in received.values() if s["type"] == "journal_loss"]
    # The publisher went on past the gaps to the loss record (it used to loop forever).
    assert status["journal"]["delivered_seq"] == loss["seq"]
    for seq, record in received.items():
        if seq != loss["seq"]:
            assert rfc8785.dumps(record) == expected[seq], "salvaged records travel verbatim"
    assert set(received) | spans(loss) == set(range(DELIVERED + 1, loss["seq"] + 1))
