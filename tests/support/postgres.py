"""A private PostgreSQL cluster for tests and benchmarks, on a free loopback port.

Never the machine's own PostgreSQL: the cluster is made with the Debian package's
``initdb``/``pg_ctl`` in a temporary directory. PostgreSQL refuses to run as root, so
when the tests run as root the cluster belongs to the ``postgres`` user and lives in
a directory that user can reach (pytest's own temporary directories are private to
root). One cluster serves a whole test session; every test gets a fresh database.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from support.broker import free_port
from support.prereq import missing

PG_BIN_DIRS = ("/usr/lib/postgresql/15/bin", "/usr/lib/postgresql/16/bin")


def find_pg_bin() -> Path | None:
    """The directory holding initdb and pg_ctl, or None when PostgreSQL is not installed."""
    for directory in PG_BIN_DIRS:
        if (Path(directory) / "initdb").exists() and (Path(directory) / "pg_ctl").exists():
            return Path(directory)
    found = shutil.which("pg_ctl")
    return Path(found).parent if found else None


class PostgresCluster:
    """One private PostgreSQL cluster; restartable (cleanly or by crash) on the same port."""

    def __init__(self, bindir: Path, *, port: int | None = None) -> None:
        self.bindir = bindir
        self.port = port or free_port()
        self.host = "127.0.0.1"
        # As root the server runs as postgres, which must reach the directory: /tmp
        # itself, never a private $TMPDIR.
        where = "/tmp" if os.geteuid() == 0 else None
        self.root = Path(tempfile.mkdtemp(prefix="scanfleet-pg-", dir=where))
        self.datadir = self.root / "data"
        self.sockdir = self.root / "sock"
        self.log_path = self.root / "postgres.log"
        self._counter = itertools.count(1)
        self._user: str | None = None
        self._uid = self._gid = -1
        if os.geteuid() == 0:
            entry = pwd.getpwnam("postgres")
            self._user, self._uid, self._gid = "postgres", entry.pw_uid, entry.pw_gid
        self.superuser = self._user or pwd.getpwuid(os.geteuid()).pw_name

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            list(args),
            check=check,
            capture_output=True,
            text=True,
            user=self._user,
            cwd=self.root,
            timeout=120,
        )

    def init(self) -> None:
        """initdb with trust authentication on loopback and a socket in our directory."""
        # The postgres user must traverse the directory; it holds no secret.
        os.chmod(self.root, 0o755)  # noqa: S103
        self.sockdir.mkdir()
        self.log_path.touch()
        if self._user:
            for path in (self.root, self.sockdir, self.log_path):
                os.chown(path, self._uid, self._gid)
        self._run(
            str(self.bindir / "initdb"),
            "-D",
            str(self.datadir),
            "-A",
            "trust",
            "-U",
            self.superuser,
            "--encoding=UTF8",
            "--locale=C",
            "--no-sync",
        )
        settings = [
            f"port = {self.port}",
            f"listen_addresses = '{self.host}'",
            f"unix_socket_directories = '{self.sockdir}'",
            "max_connections = 100",
            "shared_buffers = 32MB",
            # Tests crash the server (immediate stop), never the machine: the OS page cache
            # survives, so fsync can go for speed. synchronous_commit must stay on: the
            # hub acknowledges a message once its COMMIT returned, and an asynchronous
            # commit is lost by a server crash (a test caught exactly that).
            "fsync = off",
            "full_page_writes = off",
            "log_min_messages = warning",
        ]
        with (self.datadir / "postgresql.conf").open("a", encoding="utf-8") as conf:
            conf.write("\n".join(settings) + "\n")

    def start(self) -> None:
        """Start the cluster and wait until it accepts connections."""
        self._run(
            str(self.bindir / "pg_ctl"),
            "-D",
            str(self.datadir),
            "-l",
            str(self.log_path),
            "-w",
            "-t",
            "60",
            "start",
        )

    def stop(self, mode: str = "fast") -> None:
        """Stop the cluster; ``immediate`` is a crash (recovery runs at the next start)."""
        self._run(
            str(self.bindir / "pg_ctl"),
            "-D",
            str(self.datadir),
            "-m",
            mode,
            "-w",
            "stop",
            check=False,
        )

    def restart(self, mode: str = "fast") -> None:
        """Stop (by *mode*) and start again on the same port with the same data."""
        self.stop(mode)
        self.start()

    def kill(self) -> None:
        """SIGKILL the postmaster (the harshest crash short of the machine's)."""
        pidfile = self.datadir / "postmaster.pid"
        with contextlib.suppress(FileNotFoundError, ValueError, ProcessLookupError):
            os.kill(int(pidfile.read_text().split()[0]), signal.SIGKILL)
        time.sleep(0.2)

    def running(self) -> bool:
        """True while the postmaster answers pg_ctl status."""
        status = self._run(
            str(self.bindir / "pg_ctl"), "-D", str(self.datadir), "status", check=False
        )
        return status.returncode == 0

    def dsn(self, dbname: str = "postgres") -> str:
        """A libpq connection string for *dbname* over loopback TCP."""
        return f"host={self.host} port={self.port} user={self.superuser} dbname={dbname}"

    def url(self, dbname: str = "postgres") -> str:
        """The same as a ``postgresql://`` URL."""
        return f"postgresql://{self.superuser}@{self.host}:{self.port}/{dbname}"

    def create_database(self, prefix: str = "test") -> str:
        """A new empty database; returns its name."""
        name = f"{prefix}_{os.getpid()}_{next(self._counter)}"
        self.psql("postgres", f'CREATE DATABASE "{name}"')
        return name

    def drop_database(self, name: str) -> None:
        """Drop *name*, disconnecting whoever still uses it."""
        self.psql("postgres", f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def psql(self, dbname: str, sql: str) -> str:
        """Run *sql* with psql (as the cluster's superuser); returns unaligned output."""
        result = self._run(
            str(self.bindir / "psql"),
            "-X",
            "-q",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            self.host,
            "-p",
            str(self.port),
            "-U",
            self.superuser,
            "-d",
            dbname,
            "-c",
            sql,
        )
        return result.stdout

    def log(self) -> str:
        """The server log so far (for assertion messages)."""
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""

    def destroy(self) -> None:
        """Stop the cluster and remove its directory."""
        self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[PostgresCluster]:
    """A private PostgreSQL cluster for the whole session (skip/fail when not installed)."""
    bindir = find_pg_bin()
    if bindir is None:
        missing("PostgreSQL (initdb, pg_ctl) is not installed (make setup installs it)")
    cluster = PostgresCluster(bindir)
    try:
        cluster.init()
        cluster.start()
    except BaseException:
        cluster.destroy()
        raise
    yield cluster
    cluster.destroy()


@pytest.fixture
def hub_database(postgres_cluster: PostgresCluster) -> Iterator[str]:
    """A fresh, empty database of this test alone; its libpq DSN."""
    if not postgres_cluster.running():
        postgres_cluster.start()
    name = postgres_cluster.create_database()
    yield postgres_cluster.dsn(name)
    if not postgres_cluster.running():
        postgres_cluster.start()
    postgres_cluster.drop_database(name)
