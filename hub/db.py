"""The hub's PostgreSQL database: connection and versioned schema migrations.

Like the daemon's journal (zigpy's appdb), every schema version is one SQL file in
``schema_sql/`` loaded with importlib.resources; ``hub_schema_migrations`` names the
versions applied. An upgrade runs every missing version in one transaction under an
advisory lock, so concurrent ``db upgrade`` runs (N ingest workers starting at once)
apply each version exactly once; a database newer than the code is refused.
"""

from __future__ import annotations

import logging
import os
from importlib import resources

import psycopg

from scanfleet.daemon.core.errors import ScanfleetError

log = logging.getLogger(__name__)

DATABASE_ENV = "SCANFLEET_HUB_DATABASE"
SCHEMA_VERSION = 4
_MIGRATION_LOCK = 0x5CF1_0001  # pg_advisory_xact_lock key of schema upgrades


class HubDatabaseError(ScanfleetError):
    """The hub database is unreachable, unmigrated or newer than this code."""


def schema_sql(version: int) -> str:
    """The SQL of schema version *version* (``schema_sql/v00N_*.sql``)."""
    package = resources.files("scanfleet.hub.schema_sql")
    for entry in package.iterdir():
        if entry.name.startswith(f"v{version:03d}_") and entry.name.endswith(".sql"):
            return entry.read_text(encoding="utf-8")
    raise HubDatabaseError(f"no migration for schema version {version}")


def resolve_dsn(dsn: str | None) -> str:
    """*dsn*, else ``$SCANFLEET_HUB_DATABASE``; a clear error when neither is given."""
    value = dsn or os.environ.get(DATABASE_ENV, "")
    if not value:
        raise HubDatabaseError(f"no database given: pass --database DSN or set ${DATABASE_ENV}")
    return value


def connect(dsn: str, *, autocommit: bool = False) -> psycopg.Connection[tuple[object, ...]]:
    """A connection to the hub database (libpq string or ``postgresql://`` URL)."""
    try:
        return psycopg.connect(dsn, autocommit=autocommit, application_name="scanfleet-hub")
    except psycopg.OperationalError as err:
        raise HubDatabaseError(f"cannot connect to the hub database: {err}") from err


def current_version(conn: psycopg.Connection[tuple[object, ...]]) -> int:
    """The highest schema version applied (0 for an empty database)."""
    row = conn.execute("SELECT to_regclass('hub_schema_migrations') IS NOT NULL").fetchone()
    if not row or not row[0]:
        return 0
    row = conn.execute("SELECT coalesce(max(version), 0) FROM hub_schema_migrations").fetchone()
    return int(row[0]) if row else 0  # type: ignore[call-overload]


def upgrade(
    conn: psycopg.Connection[tuple[object, ...]], target: int = SCHEMA_VERSION
) -> list[int]:
    """Apply every missing schema version up to *target*; returns the versions applied."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
        conn.execute(
            "CREATE TABLE IF NOT EXISTS hub_schema_migrations ("
            " version integer PRIMARY KEY,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        have = current_version(conn)
        if have > target:
            raise HubDatabaseError(
                f"the hub database has schema version {have}, newer than this code's {target}: "
                "upgrade scanfleet"
            )
        applied = []
        for version in range(have + 1, target + 1):
            log.info("applying hub schema version %d", version)
            conn.execute(schema_sql(version).encode())
            conn.execute("INSERT INTO hub_schema_migrations (version) VALUES (%s)", (version,))
            applied.append(version)
    return applied


def require_current(conn: psycopg.Connection[tuple[object, ...]]) -> None:
    """Refuse to work on a database that ``db upgrade`` has not brought to this version."""
    have = current_version(conn)
    if have != SCHEMA_VERSION:
        raise HubDatabaseError(
            f"the hub database has schema version {have}, this code needs {SCHEMA_VERSION}: "
            "run `scanfleet hub db upgrade`"
        )
