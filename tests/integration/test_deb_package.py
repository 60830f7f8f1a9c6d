"""The Debian package on a Debian 13 root (debootstrap, chroot, apt): installs on
Debian's own Python packages, the unit is enabled and idle, upgrades keep the journal,
a downgrade below the journal's schema is refused, remove keeps the journal and only
purge deletes it. The QEMU boot of the same root is tests/hil/test_deb_firstboot.py."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from support.debian_root import (
    ROOT,
    BaseRoot,
    Debs,
    base_root,
    build_deb,
    chroot,
    chroot_output,
    copy_root,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

OLD, NEW = "0.1.0+t1", "0.1.0+t2"
JOURNAL = "/var/lib/scanfleet/journal.sqlite3"


@pytest.fixture(scope="module")
def debs(tmp_path_factory: pytest.TempPathFactory) -> Debs:
    out = tmp_path_factory.mktemp("debs")
    started = time.monotonic()
    old = build_deb(OLD, out)
    seconds = time.monotonic() - started
    return Debs(old, build_deb(NEW, out), seconds)


@pytest.fixture(scope="module")
def base() -> BaseRoot:
    return base_root()


@pytest.fixture
def root(base: BaseRoot, debs: Debs, tmp_path: Path) -> Iterator[Path]:
    path = copy_root(base.path, tmp_path / "root")
    (path / "srv/debs").mkdir(parents=True)
    for deb in (debs.old, debs.new):
        shutil.copy2(deb, path / "srv/debs" / deb.name)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _sh(root: Path, script: str, check: bool = True) -> str:
    done = chroot_output(root, "sh", "-c", script, check=False)
    assert not check or done.returncode == 0, done.stdout + done.stderr
    return done.stdout + done.stderr


def test_installs_with_apt_on_debian_13_upgrades_keeping_the_journal_and_refuses_a_downgrade(
    root: Path, base: BaseRoot, debs: Debs, tmp_path: Path
) -> None:
    log = tmp_path / "apt.log"
    started = time.monotonic()
    chroot(root, "apt-get", "install", "-y", "-q", f"/srv/debs/{debs.old.name}", log=log)
    install_seconds = time.monotonic() - started
    print(
        f"deb: {debs.old.name} {debs.old.stat().st_size} bytes, make deb {debs.seconds:.1f} s, "
        f"apt install (with dependencies) {install_seconds:.1f} s, "
        f"base root {f'made in {base.seconds:.1f} s' if base.seconds else 'cached'}"
    )
    assert _sh(root, "scanfleet --version").strip() == "scanfleet 0.1.0"
    # Debian's own libraries, only biip from the package's private directory.
    where = _sh(
        root,
        'python3 -c \'import sys; sys.path.append("/usr/share/scanfleet/vendor"); '
        "import pydantic, paho.mqtt, sqlite_utils, rfc8785, segno, biip, scanfleet.daemon; "
        "[print(m.__name__, m.__file__) for m in (pydantic, paho.mqtt, sqlite_utils, rfc8785, "
        "segno, biip, scanfleet.daemon)]'",
    )
    for line in where.splitlines():
        name, path = line.split()
        expected = "/usr/share/scanfleet/vendor/" if name == "biip" else "/usr/lib/python3/"
        assert path.startswith(expected), line
    assert "scanfleet:x:" in _sh(root, "getent passwd scanfleet")
    assert (root / "etc/systemd/system/multi-user.target.wants/scanfleet.service").is_symlink()
    assert not (root / "etc/scanfleet/scanfleet.toml").exists(), "the unit waits for a config"
    assert (root / "etc/scanfleet/scanfleet.toml.example").exists()
    assert (root / "usr/share/man/man1/scanfleet-run.1.gz").exists()
    assert '"kind":"trace20"' in _sh(root, "scanfleet parse 83711700173703755001")

    # The hub is its own package, built when the tree has hub/ (issue 17); the terminal
    # package's CLI works without it either way.
    hub = debs.old.with_name(f"scanfleet-hub_{OLD}_all.deb")
    assert hub.exists() == (ROOT / "hub").is_dir()
    assert " hub " not in _sh(root, "scanfleet --help")
    if hub.exists():
        shutil.copy2(hub, root / "srv/debs" / hub.name)
        chroot(root, "apt-get", "install", "-y", "-q", f"/srv/debs/{hub.name}", log=log)
        assert "usage: scanfleet hub" in _sh(root, "scanfleet hub --help")
        chroot(root, "apt-get", "remove", "-y", "-q", "scanfleet-hub", log=log)

    # A journal (schema this version writes) and a site config survive the upgrade.
    (root / "var/lib/scanfleet").mkdir(exist_ok=True)
    _sh(root, f"python3 -c \"import sqlite3; c=sqlite3.connect('{JOURNAL}'); "
        "c.execute('PRAGMA user_version=1'); c.execute('create table t(x)'); "
        "c.commit()\"")  # fmt: skip
    example = (root / "etc/scanfleet/scanfleet.toml.example").read_text(encoding="utf-8")
    (root / "etc/scanfleet/scanfleet.toml").write_text(example, encoding="utf-8")
    chroot(root, "apt-get", "install", "-y", "-q", f"/srv/debs/{debs.new.name}", log=log)
    assert NEW in _sh(root, "dpkg-query -W scanfleet")
    assert _sh(root, f"python3 -c \"import sqlite3; print(sqlite3.connect('{JOURNAL}')"
               ".execute('PRAGMA user_version').fetchone()[0])\"").strip() == "1"  # fmt: skip
    assert (root / "etc/scanfleet/scanfleet.toml").read_text(encoding="utf-8") == example

    # A journal written by a newer schema: going back to the older package is refused
    # before anything is unpacked.
    _sh(root, f"python3 -c \"import sqlite3; c=sqlite3.connect('{JOURNAL}'); "
        "c.execute('PRAGMA user_version=99'); c.commit()\"")  # fmt: skip
    refused = _sh(root, f"dpkg -i /srv/debs/{debs.old.name}", check=False)
    assert "refusing the downgrade" in refused, refused
    assert "journal schema 99" in refused, refused
    assert NEW in _sh(root, "dpkg-query -W scanfleet")

    # remove keeps the journal and the config; purge deletes them.
    chroot(root, "apt-get", "remove", "-y", "-q", "scanfleet", log=log)
    assert (root / JOURNAL.lstrip("/")).exists()
    assert (root / "etc/scanfleet/scanfleet.toml").exists()
    assert not (root / "usr/bin/scanfleet").exists()
    chroot(root, "apt-get", "purge", "-y", "-q", "scanfleet", log=log)
    assert not (root / "var/lib/scanfleet").exists()
    assert not (root / "etc/scanfleet").exists()
