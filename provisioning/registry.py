"""The fleet registry: issued certificates, revocations and claims, in one SQLite file.

One file in the fleet directory, WAL mode, every change in its own transaction, so the
enrollment service, ``fleet claim create`` and ``fleet revoke`` can run at the same time.

The schema is versioned like the journal's (zigpy's appdb): ``schema_sql/schema_vN.sql``,
``PRAGMA user_version``, every migration of an open in one transaction, a file newer than
the code refused. A registry written before it had a version is adopted as version 1.
A claim is consumed by one conditional UPDATE: two devices racing for the same claim
cannot both win.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from scanfleet.daemon.core.errors import ScanfleetError

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
"""The schema this code writes; older files are migrated, newer ones refused."""

MIGRATIONS: dict[int, str] = {}
"""SQL of each step version N-1 -> N. Empty while there is only version 1."""


class RegistrySchemaError(ScanfleetError):
    """The registry was written by a newer scanfleet, or is not a registry at all."""


def schema_sql(version: int) -> str:
    """Text of ``schema_v{version}.sql``."""
    package = resources.files("scanfleet.provisioning.schema_sql")
    return package.joinpath(f"schema_v{version}.sql").read_text(encoding="utf-8")


def user_version(db: sqlite3.Connection) -> int:
    """``PRAGMA user_version`` of *db*."""
    return int(db.execute("PRAGMA user_version").fetchone()[0])


def open_schema(db: sqlite3.Connection, path: Path) -> None:
    """Bring *db* (autocommit connection) to :data:`SCHEMA_VERSION` in one transaction.

    A new file gets ``schema_v{SCHEMA_VERSION}.sql``; a file from before the schema
    had a version is adopted as version 1 when its tables are version 1's; every
    later step runs from :data:`MIGRATIONS`. All steps commit together or not at all,
    and a file newer than this code, or a database that is not a registry, is refused.
    """
    if _checked_version(db, path) == SCHEMA_VERSION:
        return
    db.execute("BEGIN IMMEDIATE")
    try:
        version = _checked_version(db, path)  # another process may have migrated it
        if version == 0 and _user_tables(db):
            _adopt_unversioned(db, path)
            log.info("fleet registry %s: adopted as schema version 1", path)
            version = 1
        elif version == 0:
            _run_script(db, schema_sql(SCHEMA_VERSION))
            version = SCHEMA_VERSION
        for target in range(version + 1, SCHEMA_VERSION + 1):
            _run_script(db, MIGRATIONS[target])
            log.info("fleet registry %s migrated to schema version %d", path, target)
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise


def _checked_version(db: sqlite3.Connection, path: Path) -> int:
    version = user_version(db)
    if version > SCHEMA_VERSION:
        raise RegistrySchemaError(
            f"{path} has registry schema version {version}, this scanfleet knows only up "
            f"to {SCHEMA_VERSION}: refusing to open a registry written by a newer release"
        )
    return version


def _user_tables(db: sqlite3.Connection) -> list[str]:
    rows = db.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
    )
    return sorted(str(r[0]) for r in rows)


def _shape(db: sqlite3.Connection) -> dict[str, list[tuple[str, str, int, int]]]:
    """Per table: (column, type, not null, primary key) of every column."""
    return {
        table: [
            (str(c[1]), str(c[2]).upper(), int(c[3]), int(c[5]))
            for c in db.execute(f"PRAGMA table_info({table})")  # names from sqlite_master
        ]
        for table in _user_tables(db)
    }


def _adopt_unversioned(db: sqlite3.Connection, path: Path) -> None:
    """A registry from before ``user_version``: keep it when it is version 1's shape."""
    expected = sqlite3.connect(":memory:")
    try:
        expected.executescript(schema_sql(1))
        want = _shape(expected)
    finally:
        expected.close()
    have = _shape(db)
    if have != want:
        raise RegistrySchemaError(
            f"{path} has tables {sorted(have)} but no schema version, and they are not "
            "those of a fleet registry: refusing to adopt it"
        )
    # The unversioned code created the index with IF NOT EXISTS; make sure it is there.
    db.execute("CREATE INDEX IF NOT EXISTS certs_cn ON certs (cn)")


def _run_script(db: sqlite3.Connection, script: str) -> None:
    # executescript() would COMMIT our transaction first; run statement by statement.
    statement = ""
    for line in script.splitlines(keepends=True):
        statement += line
        if sqlite3.complete_statement(statement):
            db.execute(statement)
            statement = ""
    if statement.strip() and not all(
        ln.strip().startswith("--") or not ln.strip() for ln in statement.splitlines()
    ):
        raise RegistrySchemaError(f"incomplete SQL statement in schema: {statement!r}")


def _iso(when: datetime) -> str:
    # Fixed width, so SQL string comparison orders like time.
    return when.astimezone(UTC).isoformat(timespec="microseconds")


def _parse(text: str) -> datetime:
    return datetime.fromisoformat(text)


@dataclass(frozen=True)
class CertRecord:
    """One issued certificate as the registry knows it."""

    serial: int
    cn: str
    kind: str
    not_after: datetime
    revoked_at: datetime | None


@dataclass(frozen=True)
class ClaimRecord:
    """One claim (the secret itself is never stored, only its hash)."""

    id: str
    site: str
    device: str | None
    expires_at: datetime
    used_at: datetime | None
    used_by: str | None


class Registry:
    """Access to ``fleet.sqlite3``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, timeout=10.0, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            open_schema(db, path)
        finally:
            db.close()

    @contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.path, timeout=10.0, isolation_level=None)
        try:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
        finally:
            db.close()

    # -- certificates ----------------------------------------------------------------------

    def add_cert(self, cert: x509.Certificate, cn: str, *, kind: str) -> None:
        """Record an issued certificate."""
        with self._db() as db:
            db.execute(
                "INSERT INTO certs (serial, cn, kind, not_before, not_after, issued_at, pem)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    format(cert.serial_number, "x"),
                    cn,
                    kind,
                    _iso(cert.not_valid_before_utc),
                    _iso(cert.not_valid_after_utc),
                    _iso(datetime.now(UTC)),
                    cert.public_bytes(serialization.Encoding.PEM).decode(),
                ),
            )

    def certs(self, *, kind: str | None = None, cn: str | None = None) -> list[CertRecord]:
        """Issued certificates, newest first, optionally of one kind or one CN."""
        query = "SELECT serial, cn, kind, not_after, revoked_at FROM certs WHERE 1=1"
        params: list[str] = []
        if kind is not None:
            query += " AND kind = ?"
            params.append(kind)
        if cn is not None:
            query += " AND cn = ?"
            params.append(cn)
        with self._db() as db:
            rows = db.execute(query + " ORDER BY issued_at DESC", params).fetchall()
        return [
            CertRecord(int(s, 16), c, k, _parse(na), _parse(r) if r else None)
            for s, c, k, na, r in rows
        ]

    def active_certs(self, cn: str, *, now: datetime | None = None) -> list[CertRecord]:
        """Unrevoked, unexpired certificates of *cn*."""
        now = now or datetime.now(UTC)
        return [c for c in self.certs(cn=cn) if c.revoked_at is None and c.not_after > now]

    def revoke(self, serial: int, reason: str) -> None:
        """Mark *serial* revoked (idempotent); KeyError when it was never issued here."""
        with self._db() as db:
            cur = db.execute(
                "UPDATE certs SET revoked_at = COALESCE(revoked_at, ?), reason = ? "
                "WHERE serial = ?",
                (_iso(datetime.now(UTC)), reason, format(serial, "x")),
            )
            if cur.rowcount == 0:
                raise KeyError(f"no certificate with serial {serial:x}")

    def is_revoked(self, serial: int) -> bool:
        """True when *serial* is revoked."""
        with self._db() as db:
            row = db.execute(
                "SELECT revoked_at FROM certs WHERE serial = ?", (format(serial, "x"),)
            ).fetchone()
        return row is not None and row[0] is not None

    def revoked(self) -> list[tuple[int, datetime]]:
        """(serial, revocation time) of every revoked certificate not yet expired."""
        now = _iso(datetime.now(UTC))
        with self._db() as db:
            rows = db.execute(
                "SELECT serial, revoked_at FROM certs WHERE revoked_at IS NOT NULL"
                " AND not_after > ?",
                (now,),
            ).fetchall()
        return [(int(s, 16), _parse(r)) for s, r in rows]

    def next_crl_number(self) -> int:
        """A monotonically increasing CRL number."""
        with self._db() as db:
            db.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('crl_number', 0)")
            db.execute("UPDATE meta SET value = value + 1 WHERE key = 'crl_number'")
            (value,) = db.execute("SELECT value FROM meta WHERE key = 'crl_number'").fetchone()
        return int(value)

    # -- claims ----------------------------------------------------------------------------

    def add_claim(
        self, claim_id: str, secret_hash: str, site: str, device: str | None, expires_at: datetime
    ) -> None:
        """Record a new claim."""
        with self._db() as db:
            db.execute(
                "INSERT INTO claims (id, secret_hash, site, device, created_at, expires_at)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (claim_id, secret_hash, site, device, _iso(datetime.now(UTC)), _iso(expires_at)),
            )

    def find_claim(self, secret_hash: str) -> ClaimRecord | None:
        """The claim whose secret hashes to *secret_hash*."""
        with self._db() as db:
            row = db.execute(
                "SELECT id, site, device, expires_at, used_at, used_by FROM claims"
                " WHERE secret_hash = ?",
                (secret_hash,),
            ).fetchone()
        if row is None:
            return None
        cid, site, device, expires, used_at, used_by = row
        return ClaimRecord(
            cid, site, device, _parse(expires), _parse(used_at) if used_at else None, used_by
        )

    def consume_claim(self, claim_id: str, used_by: str, now: datetime) -> bool:
        """Mark the claim used if it is still unused and unexpired; False when it was not."""
        with self._db() as db:
            cur = db.execute(
                "UPDATE claims SET used_at = ?, used_by = ?"
                " WHERE id = ? AND used_at IS NULL AND expires_at > ?",
                (_iso(now), used_by, claim_id, _iso(now)),
            )
            return cur.rowcount == 1

    def withdraw_claim(self, claim_id: str, reason: str) -> bool:
        """Make an unused claim unusable (marked used by *reason*); False when it was not open."""
        now = _iso(datetime.now(UTC))
        with self._db() as db:
            cur = db.execute(
                "UPDATE claims SET used_at = ?, used_by = ?"
                " WHERE id = ? AND used_at IS NULL AND expires_at > ?",
                (now, reason, claim_id, now),
            )
            return cur.rowcount == 1

    def claims(self) -> list[ClaimRecord]:
        """Every claim, newest first."""
        with self._db() as db:
            rows = db.execute(
                "SELECT id, site, device, expires_at, used_at, used_by FROM claims"
                " ORDER BY created_at DESC"
            ).fetchall()
        return [
            ClaimRecord(c, s, d, _parse(e), _parse(u) if u else None, b)
            for c, s, d, e, u, b in rows
        ]
