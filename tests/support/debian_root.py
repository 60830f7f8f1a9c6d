"""A Debian 13 (trixie) root file system for the package tests, and the packages.

The base root (debootstrap minbase plus systemd, udev, kmod and mosquitto: the test's
own infrastructure, not scanfleet's dependencies) is made once and kept in a stable
cache directory (``$SCANFLEET_DEB_CACHE``, default ``~/.cache/scanfleet-deb``); each
test copies it, so ``apt-get install ./scanfleet_….deb`` in the copy resolves
scanfleet's dependencies from the Debian registry as on a real terminal.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from support.prereq import missing, require_executable

ROOT = Path(__file__).resolve().parents[2]
MIRROR = os.environ.get("SCANFLEET_DEBIAN_MIRROR", "http://deb.debian.org/debian")
SUITE = "trixie"
BASE_PACKAGES = ("systemd", "systemd-sysv", "udev", "kmod", "mosquitto", "mosquitto-clients")
BASE_STAMP = ".scanfleet-base-v1"


def cache_dir() -> Path:
    """Where the base root is kept between runs."""
    default = Path.home() / ".cache" / "scanfleet-deb"
    path = Path(os.environ.get("SCANFLEET_DEB_CACHE", default))
    path.mkdir(parents=True, exist_ok=True)
    return path


def _run(
    cmd: list[str], log: Path, *, timeout: float = 1200, env: dict[str, str] | None = None
) -> None:
    with log.open("ab") as out:
        out.write(f"$ {' '.join(cmd)}\n".encode())
        out.flush()
        done = subprocess.run(
            cmd, stdout=out, stderr=subprocess.STDOUT, timeout=timeout, check=False, env=env
        )
    if done.returncode != 0:
        tail = log.read_text(errors="replace")[-3000:]
        raise AssertionError(f"{' '.join(cmd)} exited {done.returncode}\n{tail}")


def chroot(root: Path, *args: str, log: Path, timeout: float = 1200) -> None:
    """Run *args* in *root* (non-interactive apt/dpkg), output appended to *log*."""
    env = {
        "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
        "DEBIAN_FRONTEND": "noninteractive",
        "LC_ALL": "C.UTF-8",
        "HOME": "/root",
    }
    _run(["chroot", str(root), *args], log, timeout=timeout, env=env)


def chroot_output(root: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run *args* in *root* and return its output."""
    return subprocess.run(
        ["chroot", str(root), *args],
        capture_output=True,
        text=True,
        check=check,
        timeout=600,
        env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C.UTF-8", "HOME": "/root"},
    )


@dataclass(frozen=True)
class BaseRoot:
    """The cached trixie base root and how long making it took (0 when cached)."""

    path: Path
    seconds: float


def base_root() -> BaseRoot:
    """The cached base root, made first if needed (one maker at a time: a lock file)."""
    if os.geteuid() != 0:
        missing("debootstrap and chroot need root")
    require_executable("debootstrap")
    cache = cache_dir()
    root = cache / f"{SUITE}-base"
    with (cache / "lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (root / BASE_STAMP).exists():
            return BaseRoot(root, 0.0)
        started = time.monotonic()
        shutil.rmtree(root, ignore_errors=True)
        log = cache / "base.log"
        log.unlink(missing_ok=True)
        _run(
            ["debootstrap", "--variant=minbase", SUITE, str(root), MIRROR],
            log,
            env={**os.environ, "LC_ALL": "C"},
        )
        chroot(
            root,
            "apt-get",
            "install",
            "-y",
            "-q",
            "--no-install-recommends",
            *BASE_PACKAGES,
            log=log,
        )
        # The test starts its own broker from the fleet's generated config.
        chroot(root, "systemctl", "disable", "mosquitto.service", log=log)
        chroot(root, "apt-get", "clean", log=log)
        (root / BASE_STAMP).write_text(f"{SUITE} {MIRROR}\n", encoding="utf-8")
        return BaseRoot(root, time.monotonic() - started)


def copy_root(base: Path, dest: Path) -> Path:
    """A private copy of *base* at *dest* (a test may change anything in it)."""
    subprocess.run(["cp", "-a", "--reflink=auto", str(base), str(dest)], check=True, timeout=600)
    return dest


@dataclass(frozen=True)
class Debs:
    """Two builds of the package: the one installed first and the upgrade."""

    old: Path
    new: Path
    seconds: float
    """Wall time of one `make deb`."""


def build_deb(version: str, out: Path) -> Path:
    """`make deb DEB_VERSION=version` into *out*; returns the scanfleet .deb."""
    for tool in ("dpkg-buildpackage", "dh", "help2man"):
        require_executable(tool)
    out.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["make", "-s", "-C", str(ROOT), "deb", f"DEB_VERSION={version}", f"DEB_DIR={out}"],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    deb = out / f"scanfleet_{version}_all.deb"
    assert deb.exists(), sorted(p.name for p in out.iterdir())
    return deb


@contextlib.contextmanager
def mounted_proc(root: Path) -> Iterator[None]:
    """/proc in *root* while the block runs (systemd-tmpfiles wants it)."""
    proc = root / "proc"
    subprocess.run(["mount", "-t", "proc", "proc", str(proc)], check=True)
    try:
        yield
    finally:
        subprocess.run(["umount", "-l", str(proc)], check=False)
