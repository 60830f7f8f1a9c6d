"""Wall clock, monotonic clock and whether the wall clock can be trusted.

Terminals in clinics often boot without a network and with no RTC battery; a scan
stamped 1970 must say so. The kernel's own view (``adjtimex``: TIME_ERROR means
"not synchronised") is read without changing anything.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

from scanfleet.daemon.core.model import ClockSync

log = logging.getLogger(__name__)

_TIME_ERROR = 5
_CACHE_SECONDS = 30.0


class _Timex(ctypes.Structure):
    # struct timex from <sys/timex.h>; only the first fields matter, the tail is padding
    # large enough for every architecture's layout.
    _fields_ = (
        ("modes", ctypes.c_uint),
        ("offset", ctypes.c_long),
        ("freq", ctypes.c_long),
        ("maxerror", ctypes.c_long),
        ("esterror", ctypes.c_long),
        ("status", ctypes.c_int),
        ("_rest", ctypes.c_byte * 256),
    )


class ClockState:
    """Cached clock-sync state (the syscall is cheap, but not per scan)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._checked = -_CACHE_SECONDS
        self._state = ClockSync.UNKNOWN
        self._adjtimex = _load_adjtimex()

    def sync_state(self) -> ClockSync:
        """Synced, unsynced, or unknown where the kernel cannot be asked."""
        now = time.monotonic()
        with self._lock:
            if now - self._checked >= _CACHE_SECONDS:
                self._state = self._query()
                self._checked = now
            return self._state

    def _query(self) -> ClockSync:
        if self._adjtimex is None:
            return ClockSync.UNKNOWN
        buf = _Timex()  # modes = 0: read only
        result = self._adjtimex(ctypes.byref(buf))
        if result < 0:
            return ClockSync.UNKNOWN
        return ClockSync.UNSYNCED if result == _TIME_ERROR else ClockSync.SYNCED


def _load_adjtimex() -> Callable[[Any], int] | None:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name, use_errno=True)
        func = libc.adjtimex
    except (OSError, AttributeError):
        log.info("adjtimex unavailable; clock sync state will be 'unknown'")
        return None
    func.argtypes = (ctypes.POINTER(_Timex),)
    func.restype = ctypes.c_int
    return cast(Callable[[Any], int], func)


def utc_now() -> datetime:
    """The wall clock in UTC."""
    return datetime.now(UTC)


def boot_id() -> str | None:
    """The kernel's boot id, which makes monotonic timestamps comparable across records."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text(encoding="ascii").strip()
    except OSError:
        return None
