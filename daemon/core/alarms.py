"""Alarms: named conditions an operator or IT staff must know about.

Raised by the journal (full, pruned under pressure, quarantined), the publisher
(refused publishes, broker unreachable) and drivers (device gone, garbage);
published in the retained ``state`` message and shown by ``scanfleet status``.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
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


STICKY = frozenset({"journal_quarantined", "journal_loss"})
"""Alarms that stay, across restarts, until an operator acknowledges them."""
ALARMS_FILE = "alarms.json"


class AlarmSet:
    """Thread-safe set of active alarms keyed by code; listeners hear every change.

    With a *store* (``<state_dir>/alarms.json``), :data:`STICKY` alarms are written
    there when raised and come back at the next start; they end only with
    :meth:`ack` (``scanfleet alarms ack CODE``, or the ``ack`` remote command).
    """

    def __init__(self, store: Path | None = None) -> None:
        """An empty set; :meth:`load` brings back what *store* kept (this reads nothing)."""
        self._lock = threading.Lock()
        self._active: dict[str, Alarm] = {}
        self._listeners: list[Callable[[], None]] = []
        self.store = store
        self._store_mtime = 0

    @classmethod
    def load(cls, store: Path) -> AlarmSet:
        """The alarm set of a start: the sticky alarms kept in *store* are active again."""
        alarms = cls(store)
        for alarm in load_sticky(store).values():
            alarms._active[alarm.code] = alarm
        alarms._store_mtime = _mtime(store)
        return alarms

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
        if code in STICKY and self.store is not None:
            alarm = self._active.get(code)
            if alarm is not None:
                try:
                    with _locked(self.store) as sticky:
                        sticky[code] = alarm.as_json()
                except OSError as err:
                    log.warning("cannot persist alarm %s in %s: %s", code, self.store, err)
        self._notify()

    def clear(self, code: str) -> None:
        """Deactivate alarm *code* if it is active (sticky alarms need :meth:`ack`)."""
        if code in STICKY and self.store is not None:
            return
        self._drop(code)

    def ack(self, code: str) -> bool:
        """An operator acknowledged alarm *code*: end it (sticky or not); True if it was on."""
        if self.store is not None:
            acknowledge(self.store, code)
        known = code in self
        self._drop(code)
        return known

    def sync(self) -> None:
        """End sticky alarms another process acknowledged in the store (cheap: one stat)."""
        if self.store is None:
            return
        mtime = _mtime(self.store)
        if mtime == self._store_mtime:
            return
        self._store_mtime = mtime
        stored = load_sticky(self.store)
        for code in STICKY:
            if code in self and code not in stored:
                log.info("alarm %s acknowledged", code)
                self._drop(code)

    def _drop(self, code: str) -> None:
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


def _mtime(path: Path) -> int:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return 0


def load_sticky(store: Path) -> dict[str, Alarm]:
    """The persisted sticky alarms (a damaged file counts as none, with a warning)."""
    try:
        document = json.loads(store.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as err:
        log.warning("ignoring unreadable alarm store %s: %s", store, err)
        return {}
    out = {}
    for code, item in (document.get("sticky") or {}).items():
        try:
            out[code] = Alarm(
                code,
                str(item["message"]),
                Severity(item.get("severity", "critical")),
                datetime.fromisoformat(item["since"]),
                dict(item.get("details") or {}),
            )
        except (KeyError, TypeError, ValueError):
            continue
    return out


@contextlib.contextmanager
def _locked(store: Path) -> Iterator[dict[str, Any]]:
    """Read-modify-write of the store's ``sticky`` map under an exclusive flock."""
    lock = os.open(
        store.with_name(store.name + ".lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o640
    )
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            sticky = json.loads(store.read_text(encoding="utf-8")).get("sticky") or {}
        except (FileNotFoundError, ValueError):
            sticky = {}
        yield sticky
        tmp = store.with_name(f".{store.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"sticky": sticky}, indent=1, sort_keys=True) + "\n", "utf-8")
        os.replace(tmp, store)
    finally:
        os.close(lock)


def acknowledge(store: Path, code: str) -> bool:
    """Acknowledge sticky alarm *code* in *store* (from another process); True if it was there."""
    with _locked(store) as sticky:
        return sticky.pop(code, None) is not None
