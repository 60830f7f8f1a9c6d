"""Modes of the daemon's state directory and files, whatever umask it was started with.

The state directory holds the journal (trace data, personal data of patients), the
station index and ``remote-config.json`` (which can hold the local API token). The
shipped unit sets ``UMask=0027``; a daemon started by hand with umask 022 would leave
them world-readable. So the daemon sets its own umask (0027: files at most 0640,
directories at most 0750; the service group may read) and tightens a state directory
an earlier run left open. Secret files are created with their final mode (``os.open``
with 0600), never chmod-ed afterwards.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

log = logging.getLogger(__name__)

DAEMON_UMASK = 0o027


def restrict_umask() -> None:
    """Make the process umask at least 0027 (a stricter one stays)."""
    old = os.umask(DAEMON_UMASK)
    os.umask(old | DAEMON_UMASK)


def secure_state_dir(path: Path) -> None:
    """Create *path* 0750, or take group write and every 'other' bit off an existing one."""
    path.mkdir(parents=True, exist_ok=True, mode=0o750)
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o027:
        log.warning("state dir %s was %o: now %o", path, mode, mode & ~0o027)
        path.chmod(mode & ~0o027)


def write_atomic(path: Path, data: bytes, mode: int) -> None:
    """Write *path* atomically, created with its final *mode* (never readable by others
    when *mode* says so, not even briefly)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_TRUNC, mode)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
