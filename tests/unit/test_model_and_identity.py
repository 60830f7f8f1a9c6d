"""The scan record contract, its committed JSON Schemas, and device identity."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import jsonschema
import pytest
from pydantic import ValidationError

from scanfleet.daemon.core.config import parse_config
from scanfleet.daemon.core.errors import IdentityError
from scanfleet.daemon.core.identity import load_or_create_device_id, resolve_identity
from scanfleet.daemon.core.model import GENESIS_HASH, Operation, Scan
from scanfleet.daemon.schemas import message_models, render_schema, stale_files

SCHEMA_DIR = Path(__file__).resolve().parents[2] / "docs" / "schema"


def _scan(**overrides: object) -> dict[str, object]:
    record: dict[str, object] = {
        "schema": "scanfleet.scan/1",
        "type": "scan",
        "device": "sf-0123456789ab",
        "seq": 1,
        "id": "sf-0123456789ab:1",
        "time": "2026-11-25T01:02:03.456+00:00",
        "clock": "synced",
        "t_mono": 1234.5,
        "source": {"driver": "serial", "device": "counter", "port": "/dev/ttyACM0"},
        "raw": "]C083711700173703755001\\x0d",
        "aim": "]C0",
        "kind": "trace20",
        "value": "83711700173703755001",
        "fields": {"drug_id": "8371170", "serial": "0173703755001"},
        "problems": [],
        "verdict": "accepted",
        "reason": None,
        "operation": "retail_sale",
        "station": "counter-1",
        "bill": None,
        "operator": None,
        "identity_ref": None,
        "prev_hash": GENESIS_HASH,
        "hash": "a" * 64,
    }
    record.update(overrides)
    return record


def test_scan_record_round_trips_with_schema_alias() -> None:
    scan = Scan.model_validate(_scan())
    dumped = scan.model_dump(mode="json")
    assert dumped["schema"] == "scanfleet.scan/1"
    assert "schema_" not in dumped
    assert Scan.model_validate(dumped) == scan
    assert scan.operation is Operation.RETAIL_SALE


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"id": "sf-0123456789ab:2"}, "id must be"),
        ({"time": "2026-11-25T01:02:03"}, "timezone"),
        ({"prev_hash": "0" * 63}, "pattern"),
        ({"device": "bad/device", "id": "bad/device:1"}, "pattern"),
        ({"operation": "selling"}, "operation"),
        ({"surprise": 1}, "Extra inputs"),
    ],
)
def test_scan_record_rejects_broken_contract(override: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        Scan.model_validate(_scan(**override))


def test_committed_json_schemas_are_current() -> None:
    stale = stale_files(SCHEMA_DIR)
    assert not stale, f"run `make schema` and commit: stale {stale}"


def test_scan_schema_accepts_a_valid_record_and_refuses_a_broken_one() -> None:
    schema = json.loads(render_schema("scan", message_models()["scan"]))
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    assert list(validator.iter_errors(_scan())) == []
    assert list(validator.iter_errors(_scan(verdict="maybe")))


def test_device_id_is_generated_once_and_kept(tmp_path: Path) -> None:
    config = parse_config(f'[paths]\nstate_dir = "{tmp_path}/state"\n[identity]\nsite = "s1"\n')
    first = resolve_identity(config)
    assert re.fullmatch(r"sf-[0-9a-f]{12}", first.device)
    assert first.site == "s1"
    assert resolve_identity(config) == first
    assert (tmp_path / "state" / "device-id").read_text().strip() == first.device


def test_configured_device_id_wins_and_is_not_stored(tmp_path: Path) -> None:
    config = parse_config(f'[paths]\nstate_dir = "{tmp_path}"\n[identity]\ndevice = "counter-7"\n')
    assert resolve_identity(config).device == "counter-7"
    assert not (tmp_path / "device-id").exists()


def test_corrupt_stored_device_id_is_an_error_not_a_new_identity(tmp_path: Path) -> None:
    (tmp_path / "device-id").write_text("not/valid\n")
    with pytest.raises(IdentityError, match="invalid device id"):
        load_or_create_device_id(tmp_path)


def test_concurrent_first_starts_agree_on_one_device_id(tmp_path: Path) -> None:
    code = (
        "import sys; from pathlib import Path; "
        "from scanfleet.daemon.core.identity import load_or_create_device_id as f; "
        "print(f(Path(sys.argv[1])))"
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE)
        for _ in range(4)
    ]
    ids = {proc.communicate(timeout=60)[0].decode().strip() for proc in procs}
    assert all(proc.returncode == 0 for proc in procs)
    assert len(ids) == 1
    assert ids == {(tmp_path / "device-id").read_text().strip()}


def test_scan_time_serialises_as_utc_iso() -> None:
    scan = Scan.model_validate(_scan(time=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)))
    assert scan.model_dump(mode="json")["time"] == "2026-01-02T03:04:05Z"
