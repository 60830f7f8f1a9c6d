"""Alarms: named conditions an operator or IT staff must know about.

Raised by the journal (full, pruned under pressure, quarantined), the publisher
(refused publishes, broker unreachable) and drivers (device gone, garbage);
published in the retained ``state`` message and shown by ``scanfleet status``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

log = logging.getLogger(__name__)


class Severity(StrEnum):
    """How urgent an alarm is."""

    WARNING = "warning"
    ERROR = "error"
    CRITICAL = "critical"


@dataclass(frozen=True)
class Alarm:
    """One active alarm; ``code`` is stable and machine-readable, ``message`` is for people."""

    code: str
    message: str
    severity: Severity = Severity.ERROR
    since: datetime = field(default_factory=lambda: datetime.now(UTC))
    details: dict[str, Any] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        """The alarm as it appears in ``state`` and ``status --json``."""
        return {
            "code": self.code,
            "message": self.message,
            "severity": str(self.severity),
            "since": self.since.isoformat(),
            "details": self.details,
        }


class AlarmSet:
    """Thread-safe set of active alarms keyed by code; listeners hear every change."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._active: dict[str, Alarm] = {}
        self._listeners: list[Callable[[], None]] = []

    def raise_(
        self,
        code: str,
        message: str,
        severity: Severity = Severity.ERROR,
        **details: Any,
    ) -> None:
        """Activate (or update the message of) alarm *code*."""
        with self._lock:
            old = self._active.get(code)
            if old is not None and old.message == message and old.details == details:
                return
            since = old.since if old is not None else datetime.now(UTC)
            self._active[code] = Alarm(code, message, severity, since, details)
        if old is None:
            log.warning("alarm %s: %s", code, message)
        self._notify()

    def clear(self, code: str) -> None:
        """Deactivate alarm *code* if it is active."""
        with self._lock:
            gone = self._active.pop(code, None)
        if gone is not None:
            log.info("alarm %s cleared", code)
            self._notify()

    def active(self) -> list[Alarm]:
        """Active alarms, oldest first."""
        with self._lock:
            return sorted(self._active.values(), key=lambda a: a.since)

    def __contains__(self, code: object) -> bool:
        with self._lock:
            return code in self._active

    def add_listener(self, listener: Callable[[], None]) -> None:
        """Call *listener* (from the raising thread) after every change."""
        with self._lock:
            self._listeners.append(listener)

    def _notify(self) -> None:
        with self._lock:
            listeners = list(self._listeners)
        for listener in listeners:
            listener()
