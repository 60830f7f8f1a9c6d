"""Logging set-up shared by every subcommand."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

TRACE = 5
"""Below DEBUG: per-byte and per-event logs of drivers."""

logging.addLevelName(TRACE, "TRACE")

LEVELS = {"trace": TRACE, "debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING}


def setup_logging(level: str = "info") -> None:
    """Send log records to journald under systemd (with SCANFLEET_* fields), else stderr."""
    from scanfleet.daemon.core.journald import use_journal  # imports systemd-python lazily

    if use_journal(LEVELS[level]):
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(LEVELS[level])


def log_to_file(path: Path) -> None:
    """Send log records to *path* instead of stderr (while a live view owns the screen)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
