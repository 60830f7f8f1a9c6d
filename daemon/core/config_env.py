"""What ``config check`` verifies beyond the document: the paths ``run`` will write.

A state directory that is a file, cannot be created, is not writable or lies on a
read-only mount passes schema validation but makes ``scanfleet run`` fail at start;
each of these is reported as a :class:`ConfigProblem` with the key's line.
"""

from __future__ import annotations

import os
from pathlib import Path

from scanfleet.daemon.core.config import Config, locate_keys
from scanfleet.daemon.core.errors import ConfigProblem


def environment_problems(config: Config, text: str) -> list[ConfigProblem]:
    """Problems ``run`` would hit with the paths of *config* (*text*: the file, for lines)."""
    lines = locate_keys(text)
    line = lines.get(("paths", "state_dir")) or lines.get(("paths",))
    problem = state_dir_problem(config.paths.state_dir)
    return [ConfigProblem("paths.state_dir", problem, line)] if problem else []


def state_dir_problem(state_dir: Path) -> str | None:
    """Why the daemon could not use *state_dir*, or None."""
    existing = state_dir
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if existing.exists() and not existing.is_dir():
        return f"{existing} is not a directory"
    if _read_only_mount(existing):
        return f"{existing} is on a read-only file system"
    if not os.access(existing, os.W_OK | os.X_OK):
        what = "state directory" if existing == state_dir else f"parent {existing}"
        return f"the {what} is not writable by this user (uid {os.geteuid()})"
    return None


def _read_only_mount(path: Path) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False
