"""The fleet registry's versioned schema: new files, the unversioned files written before
it had a version, migrations in one transaction, newer and foreign files refused."""

from __future__ import annotations

import shutil
import sqlite3
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from scanfleet.provisioning import registry as registry_module
from scanfleet.provisioning.ca import CAError, FleetCA
from scanfleet.provisioning.registry import (
    SCHEMA_VERSION,
    Registry,
    RegistrySchemaError,
    user_version,
)

UNVERSIONED = Path(__file__).parents[1] / "data" / "registry" / "unversioned-fleet.sqlite3"
"""Written by the registry code of main 55675ab (no user_version); see its README."""


def version_of(path: Path) -> int:
    db = sqlite3.connect(path)
    try:
        return user_version(db)
    finally:
        db.close()


def columns(path: Path, table: str) -> list[str]:
    db = sqlite3.connect(path)
    try:
        return [str(r[1]) for r in db.execute(f"PRAGMA table_info({table})")]
    finally:
        db.close()


@pytest.fixture
def unversioned(tmp_path: Path) -> Path:
    path = tmp_path / "fleet.sqlite3"
    shutil.copy(UNVERSIONED, path)
    assert version_of(path) == 0
    return path


def test_a_new_registry_is_written_at_the_current_schema_version(tmp_path: Path) -> None:
    path = tmp_path / "fleet.sqlite3"
    reg = Registry(path)
    assert version_of(path) == SCHEMA_VERSION == 1
    assert reg.certs() == []
    assert reg.next_crl_number() == 1


def test_an_unversioned_registry_from_the_previous_code_is_adopted_with_its_data(
    unversioned: Path,
) -> None:
    reg = Registry(unversioned)
    assert version_of(unversioned) == 1
    certs = {c.cn: c for c in reg.certs()}
    assert sorted(certs) == [
        "backend.hub",
        "fleet.ops",
        "localhost",
        "pharmacy-1/sf-000000000001",
        "pharmacy-1/sf-000000000002",
    ]
    assert certs["pharmacy-1/sf-000000000002"].revoked_at is not None
    assert certs["pharmacy-1/sf-000000000001"].revoked_at is None
    assert certs["pharmacy-1/sf-000000000002"].serial == int(
        "47855a223c9b0ebede613010b7dfd82e4733a710", 16
    )
    revoked = [serial for serial, _ in reg.revoked()]
    assert revoked == [certs["pharmacy-1/sf-000000000002"].serial]
    claims = reg.claims()
    assert len(claims) == 2
    assert {(c.device, c.used_by) for c in claims} == {
        (None, "pharmacy-1/sf-000000000004"),
        ("sf-000000000003", None),
    }
    # The CRL numbering goes on where the old file left it (3 CRLs written).
    assert reg.next_crl_number() == 4
    # And it keeps working as a registry: new claims, revocations.
    reg.add_claim("c0ffee00", "h" * 64, "pharmacy-2", None, datetime.now(UTC) + timedelta(1))
    assert reg.find_claim("h" * 64) is not None
    reg.revoke(certs["fleet.ops"].serial, "superseded")
    assert reg.is_revoked(certs["fleet.ops"].serial)


def test_reopening_a_current_registry_changes_nothing(unversioned: Path) -> None:
    Registry(unversioned)
    before = unversioned.read_bytes()
    Registry(unversioned)
    assert version_of(unversioned) == 1
    assert unversioned.read_bytes() == before


def test_a_registry_from_a_newer_release_is_refused_untouched(tmp_path: Path) -> None:
    path = tmp_path / "fleet.sqlite3"
    Registry(path)
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.close()
    with pytest.raises(RegistrySchemaError, match="newer release"):
        Registry(path)
    assert version_of(path) == SCHEMA_VERSION + 1


def test_a_database_that_is_not_a_registry_is_refused_untouched(tmp_path: Path) -> None:
    path = tmp_path / "fleet.sqlite3"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE scans (seq INTEGER PRIMARY KEY)")
    db.commit()
    db.close()
    with pytest.raises(RegistrySchemaError, match="not those of a fleet registry"):
        Registry(path)
    assert version_of(path) == 0
    assert columns(path, "scans") == ["seq"]


def test_an_unversioned_file_with_other_columns_is_not_adopted(unversioned: Path) -> None:
    db = sqlite3.connect(unversioned)
    db.execute("ALTER TABLE claims ADD COLUMN surprise TEXT")
    db.commit()
    db.close()
    with pytest.raises(RegistrySchemaError):
        Registry(unversioned)
    assert version_of(unversioned) == 0


def test_migrations_run_in_order_and_all_in_one_transaction(
    unversioned: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(registry_module, "SCHEMA_VERSION", 3)
    monkeypatch.setattr(
        registry_module,
        "MIGRATIONS",
        {
            2: "ALTER TABLE certs ADD COLUMN note TEXT;",
            3: "UPDATE certs SET note = 'v3 was here';\nSELECT * FROM no_such_table;",
        },
    )
    with pytest.raises(sqlite3.OperationalError, match="no_such_table"):
        Registry(unversioned)
    # Step 2 succeeded, step 3 failed: nothing of either stays, not even the adoption.
    assert version_of(unversioned) == 0
    assert "note" not in columns(unversioned, "certs")

    monkeypatch.setitem(registry_module.MIGRATIONS, 3, "UPDATE certs SET note = 'v3';")
    Registry(unversioned)
    assert version_of(unversioned) == 3
    db = sqlite3.connect(unversioned)
    assert {r[0] for r in db.execute("SELECT note FROM certs")} == {"v3"}
    db.close()


def test_processes_opening_a_new_registry_at_once_all_succeed(tmp_path: Path) -> None:
    path = tmp_path / "fleet.sqlite3"
    errors: list[BaseException] = []

    def open_it() -> None:
        try:
            Registry(path)
        except BaseException as err:
            errors.append(err)

    threads = [threading.Thread(target=open_it) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert version_of(path) == SCHEMA_VERSION


def test_the_ca_reports_a_registry_it_cannot_open_as_a_ca_error(tmp_path: Path) -> None:
    ca = FleetCA.init(tmp_path / "fleet")
    db = sqlite3.connect(ca.paths.registry)
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 5}")
    db.close()
    with pytest.raises(CAError, match="newer release"):
        FleetCA(tmp_path / "fleet")
