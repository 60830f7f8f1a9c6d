"""``{state_dir}/status.json``: what the running daemon tells ``scanfleet status``.

The publisher rewrites the file atomically (temporary file + rename) when its
content changes, at most once per ``min_interval`` seconds, and otherwise every
``heartbeat`` seconds so a reader can tell a live daemon from a stale file. It
holds no journal figures: ``scanfleet status`` reads those from the journal
itself, read-only, so they are right even when the daemon is not running.
"""

from __future__ import annotations

import json
import logging
import os
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

STATUS_FILE = "status.json"
STATUS_SCHEMA = "scanfleet.status/1"


class StatusFile:
    """Rate-limited atomic writer of the status file."""

    def __init__(self, path: Path, *, min_interval: float = 1.0, heartbeat: float = 10.0) -> None:
        self.path = path
        self.min_interval = min_interval
        self.heartbeat = heartbeat
        self._last_write: float | None = None
        self._last_content: dict[str, Any] | None = None
        self._failed = False

    def update(self, content: dict[str, Any], *, force: bool = False) -> bool:
        """Write *content* if it changed (or the heartbeat is due); True when written.

        *force* skips the rate limit (state transitions, shutdown).
        """
        now = time.monotonic()
        elapsed = float("inf") if self._last_write is None else now - self._last_write
        changed = content != self._last_content
        if not force and (
            elapsed < self.min_interval or (not changed and elapsed < self.heartbeat)
        ):
            return False
        document = {
            "schema": STATUS_SCHEMA,
            "written_at": datetime.now(UTC).isoformat(),
            **content,
        }
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps(document, sort_keys=True) + "\n", encoding="utf-8")
            # rename() is atomic: a reader sees the old or the new file, never half of one.
            tmp.replace(self.path)
        except OSError as err:
            # The status file is a convenience; publishing must go on without it.
            if not self._failed:
                log.warning("cannot write %s: %s", self.path, err)
            self._failed = True
            return False
        self._failed = False
        self._last_write = now
        self._last_content = content
        return True


def read_status(path: Path) -> dict[str, Any] | None:
    """The status document at *path*, or None when there is none (or it is unreadable)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as err:
        log.warning("cannot read %s: %s", path, err)
        return None
    return data if isinstance(data, dict) else None


def pid_alive(pid: int) -> bool:
    """True when a process with *pid* exists (it may belong to another user)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def status_age_s(document: dict[str, Any], now: datetime | None = None) -> float | None:
    """Seconds since the daemon wrote *document*, or None when it carries no valid time."""
    try:
        written = datetime.fromisoformat(document["written_at"])
    except (KeyError, TypeError, ValueError):
        return None
    return ((now or datetime.now(UTC)) - written).total_seconds()
