"""Logging set-up shared by every subcommand."""

from __future__ import annotations

import logging
import sys

TRACE = 5
"""Below DEBUG: per-byte and per-event logs of drivers."""

logging.addLevelName(TRACE, "TRACE")

LEVELS = {"trace": TRACE, "debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING}


def setup_logging(level: str = "info") -> None:
    """Send log records to stderr (journald picks stderr up under systemd)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(LEVELS[level])
