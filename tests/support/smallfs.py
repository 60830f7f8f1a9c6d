"""A small tmpfs of a test's own, to fill up (root only)."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

from support.prereq import missing


@contextlib.contextmanager
def small_tmpfs(where: Path, size: str = "16m") -> Iterator[Path]:
    """Mount a tmpfs of *size* at *where* for the block; skip (or fail) when we cannot."""
    if os.geteuid() != 0:
        missing("filling a file system needs root to mount a small tmpfs")
    where.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(where)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        missing(f"cannot mount a tmpfs at {where}: {done.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def fill(directory: Path, name: str = "filler") -> Path:
    """Write a file in *directory* until the file system is full; returns it."""
    path = directory / name
    chunk = b"\0" * 65536
    # Unbuffered: a buffered writer keeps what a failed flush could not write and tries
    # again when the file is closed, where ENOSPC escaped (seen once in a full run).
    with contextlib.suppress(OSError), path.open("ab", buffering=0) as f:
        while f.write(chunk):
            pass
    # Single bytes too: "full" must mean not one more block.
    with contextlib.suppress(OSError), path.open("ab", buffering=0) as f:
        while f.write(b"\0"):
            pass
    return path
