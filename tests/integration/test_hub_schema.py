"""The hub database schema: versioned, idempotent, partitioned by month."""

from __future__ import annotations

import psycopg
import pytest

from scanfleet.daemon.cli import main
from scanfleet.hub.db import SCHEMA_VERSION, HubDatabaseError, connect, current_version, upgrade

pytestmark = pytest.mark.integration


def test_db_upgrade_creates_schema_and_is_idempotent(
    hub_database: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["hub", "db", "upgrade", "--database", hub_database]) == 0
    assert f"schema version {SCHEMA_VERSION}" in capsys.readouterr().out
    assert main(["hub", "db", "upgrade", "--database", hub_database]) == 0
    assert "already at schema version" in capsys.readouterr().out
    with connect(hub_database) as conn:
        assert current_version(conn) == SCHEMA_VERSION
        tables = {
            row[0]
            for row in conn.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
            ).fetchall()
        }
    assert {
        "records",
        "record_ids",
        "conflicts",
        "chain_breaks",
        "devices",
        "gaps",
        "resend_requests",
        "health",
        "alerts",
    } <= tables


def test_db_upgrade_reads_the_environment(
    hub_database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SCANFLEET_HUB_DATABASE", hub_database)
    assert main(["hub", "db", "upgrade"]) == 0


def test_db_upgrade_without_database_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("SCANFLEET_HUB_DATABASE", raising=False)
    assert main(["hub", "db", "upgrade"]) == 1
    assert "--database" in capsys.readouterr().err


def test_records_land_in_a_month_partition_made_on_first_use(hub_database: str) -> None:
    with connect(hub_database) as conn:
        upgrade(conn)
        with conn.transaction():
            name = conn.execute("SELECT hub_ensure_partition('2026-03-31T23:59:59Z')").fetchone()
            again = conn.execute("SELECT hub_ensure_partition('2026-03-01T00:00:00Z')").fetchone()
        assert name == again == ("records_202603",)
        conn.execute(
            "INSERT INTO records (id, site, device, seq, type, time, hash, prev_hash, hash_ok,"
            " payload) VALUES ('d1:1', 's1', 'd1', 1, 'scan', '2026-03-15T10:00:00Z', 'h', 'p',"
            " true, '\\x7b7d')"
        )
        row = conn.execute("SELECT tableoid::regclass::text FROM records").fetchone()
        assert row == ("records_202603",)
        # No month partition: the insert is refused, never silently dropped.
        with pytest.raises(psycopg.errors.CheckViolation), conn.transaction():
            conn.execute(
                "INSERT INTO records (id, site, device, seq, type, time, hash, prev_hash, hash_ok,"
                " payload) VALUES ('d1:2', 's1', 'd1', 2, 'scan', '2031-01-01T00:00:00Z', 'h', 'p',"
                " true, '\\x7b7d')"
            )


def test_database_newer_than_the_code_is_refused(hub_database: str) -> None:
    with connect(hub_database) as conn:
        upgrade(conn)
        conn.execute(
            "INSERT INTO hub_schema_migrations (version) VALUES (%s)", (SCHEMA_VERSION + 1,)
        )
        conn.commit()
        with pytest.raises(HubDatabaseError, match="newer than this code"):
            upgrade(conn)


def test_v4_keeps_one_key_per_table_on_a_database_holding_records(hub_database: str) -> None:
    insert = (
        "INSERT INTO records (id, site, device, seq, type, time, hash, prev_hash, hash_ok,"
        " payload) VALUES ('d1:1', 's1', 'd1', 1, 'scan', '2026-03-15T10:00:00Z', 'h', 'p',"
        " true, '\\x7b7d')"
    )
    with connect(hub_database) as conn:
        upgrade(conn, 3)
        with conn.transaction():
            conn.execute("SELECT hub_ensure_partition('2026-03-15T10:00:00Z')")
        conn.execute(
            "INSERT INTO record_ids (id, device, seq, time, hash)"
            " VALUES ('d1:1', 'd1', 1, '2026-03-15T10:00:00Z', 'h')"
        )
        conn.execute(insert)
        conn.commit()
        upgrade(conn)
        assert current_version(conn) == SCHEMA_VERSION
        keys = conn.execute(
            "SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid"
            " AND a.attnum = ANY(i.indkey) WHERE i.indrelid = 'records_202603'::regclass"
            " AND i.indisprimary ORDER BY array_position(i.indkey, a.attnum)"
        ).fetchall()
        assert [k for (k,) in keys] == ["device", "seq", "time"]
        # The same record again is refused by the new key, on the partition made before it.
        with pytest.raises(psycopg.errors.UniqueViolation), conn.transaction():
            conn.execute(insert)
        # record_ids keeps its one key: the id (device:seq).
        with pytest.raises(psycopg.errors.UniqueViolation), conn.transaction():
            conn.execute(
                "INSERT INTO record_ids (id, device, seq, time, hash)"
                " VALUES ('d1:1', 'd1', 1, '2026-03-16T10:00:00Z', 'other')"
            )
