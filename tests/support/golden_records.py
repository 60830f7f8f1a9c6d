"""A fixed session of reads through the real pipeline, for the byte-identity fixture.

``journal_payloads(directory)`` runs the pipeline (real journal, real duplicate index,
real station, classification and pairing) over a scripted mix of reads with fixed
times, boot id and clock state, and returns the canonical payload of every journal
record it wrote. ``tests/data/records/pipeline-golden.jsonl`` holds those payloads as
committed by the dict-built pipeline before records became typed; the test compares
the current pipeline's bytes with it, so the hash chain and the published records stay
byte for byte what they were. Regenerate (only for an intended format change) with
``python tests/support/golden_records.py``.
"""

from __future__ import annotations

import json
import queue
import sys
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

from scanfleet.daemon.core.alarms import AlarmSet
from scanfleet.daemon.core.clock import ClockState
from scanfleet.daemon.core.config import Config
from scanfleet.daemon.core.model import ClockSync
from scanfleet.daemon.intake.devices import DeviceWorker, Incoming
from scanfleet.daemon.intake.pipeline import Pipeline
from scanfleet.daemon.journal.journal import Journal
from scanfleet.daemon.station.duplicates import open_index, policy
from scanfleet.drivers.base import Read
from scanfleet.drivers.idcard.text import CardRead, decode_text
from scanfleet.drivers.sim.idcard import SAMPLE_CARDS

FIXTURE = Path(__file__).resolve().parents[1] / "data" / "records" / "pipeline-golden.jsonl"
DEVICE = "dev-golden"
BOOT_ID = "6b1c1a52-6c61-4b47-9a3e-6f0ad1b0c0de"
START = datetime(2026, 11, 25, 8, 0, 0, 123456, tzinfo=UTC)

READS: list[tuple[str, bytes, str | None]] = [
    # (device, data, aim)
    ("counter", b"]C083711700200000000051\r", None),  # trace20, accepted
    ("counter", b"6901234567892\r", None),  # ean13: refused
    ("counter", b"83711700200000000051\r", None),  # the same code again: duplicate
    ("counter", b"]d20104012345678901172705311012345\x1d2112345678\r", None),  # gs1
    ("counter", b"0104012345678901\r", None),  # gs1 without serial
    ("counter", b"#SF:OP=receiving\r", None),  # control: operation
    ("counter", b"#SF:BILL=RK-7\r", None),  # control: bill (a manifest file exists)
    ("counter", b"83711700200000000061\r", None),  # expected by the manifest
    ("counter", b"83711700200000000099\r", None),  # unexpected
    ("counter", b"83711700200000000061\r", None),  # already scanned
    ("counter", b"#SF:OPERATOR=li\r", None),
    ("counter", b"#SF:EXEMPT=herbal;batch=B1;exp=2027-01-31;qty=3\r", None),
    ("counter", b"#SF:MANUAL=uncoded;name=Gauze;note=no code printed\r", None),
    ("counter", b"#SF:MANUAL=split;qty=x\r", None),  # refused: bad quantity
    ("counter", b"#SF:END\r", None),  # end_bill + bill_summary with differences
    ("counter", b"#SF:TELEPORT=1\r", None),  # unknown control: refused
    ("counter", b"#SF:OP=retail_sale\r", None),
    ("counter", b"8123456000000000001A\r", None),  # split pack: unit 1
    ("counter", b"81234560000000000012\r", None),
    ("counter", b"81234560000000000012\r", None),  # split pack: unit 2
    ("counter", b"\x01\x02garbage\xff\r", None),  # unknown: refused with problems
    ("card", b"", None),  # an ID-card read, refused: no backend key configured
    ("counter", b"83711800200000000077\r", None),  # listed drug without a window: refused
    ("fixed", b"83711700200000000088\r", None),  # a device with a fixed operation
]


class _FixedClock(ClockState):
    def sync_state(self) -> ClockSync:
        return ClockSync.SYNCED


def _config(state_dir: Path, manifest_dir: Path) -> Config:
    return Config.model_validate(
        {
            "identity": {"site": "site-g", "device": DEVICE},
            "paths": {"state_dir": str(state_dir)},
            "station": {
                "name": "counter-1",
                "operation": "retail_sale",
                "manifest_dir": str(manifest_dir),
                "split_packs": {"8123456": 3},
            },
            "identity_check": {"drug_prefixes": ["8371180"], "window_seconds": 60},
            "devices": [
                {"name": "counter", "driver": "virtual", "channel": "golden-1"},
                {"name": "card", "driver": "virtual", "channel": "golden-2"},
                {
                    "name": "fixed",
                    "driver": "virtual",
                    "channel": "golden-3",
                    "operation": "dispense",
                },
            ],
        }
    )


def _read(device: str, data: bytes, aim: str | None, n: int) -> Read:
    when = START + timedelta(seconds=n, microseconds=n * 1111)
    t_mono = 1000.0 + n * 1.25 + 0.000001
    if device == "card":
        sample = SAMPLE_CARDS["mainland"]
        return CardRead(
            data=b"",
            t_mono=t_mono,
            time=when,
            card=decode_text(sample.text()),
            port="/dev/ttyUSB1",
        )
    return Read(data=data, t_mono=t_mono, time=when, aim=aim, port="/dev/ttyACM0")


def journal_payloads(directory: Path) -> list[bytes]:
    """Run the scripted reads through a real pipeline; the payload of every record."""
    manifests = directory / "manifests"
    manifests.mkdir()
    (manifests / "RK-7.json").write_text(
        json.dumps(
            {
                "bill": "RK-7",
                "supplier": "Acme",
                "items": ["83711700200000000061", "83711700200000000062"],
            }
        ),
        encoding="utf-8",
    )
    config = _config(directory / "state", manifests)
    alarms = AlarmSet()
    journal = Journal.open(directory / "journal.sqlite3", DEVICE, alarms=alarms)
    try:
        pipeline = Pipeline(journal, config, alarms, clock=_FixedClock())
        pipeline._boot_id = BOOT_ID  # the machine's boot id would change the bytes
        (directory / "state").mkdir(exist_ok=True)
        index = open_index(directory / "state", journal, **policy(config))
        pipeline.station.index = index
        workers = {
            d.name: DeviceWorker(d, queue.Queue(), alarms) for d in config.devices
        }  # never started: feedback finds no bound driver, which the pipeline counts
        try:
            for n, (device, data, aim) in enumerate(READS):
                pipeline.handle(Incoming(workers[device], _read(device, data, aim, n)))
            return [r.payload for r in journal.read_after(0, limit=1000, max_bytes=1 << 24)]
        finally:
            index.close()
    finally:
        journal.close()


def main() -> None:
    """Write the fixture from the current pipeline."""
    with tempfile.TemporaryDirectory() as tmp:
        payloads = journal_payloads(Path(tmp))
    FIXTURE.parent.mkdir(parents=True, exist_ok=True)
    FIXTURE.write_bytes(b"".join(p + b"\n" for p in payloads))
    print(f"wrote {len(payloads)} records to {FIXTURE}", file=sys.stderr)


if __name__ == "__main__":
    main()
