"""The live terminal view of ``scanfleet run`` on a TTY.

A plain ANSI redraw (no curses dependency): the last scans with their kind and
verdict, journal depth, broker state, devices and alarms. When the view is on,
log records go to a file in the state directory so they do not tear the screen.
"""

from __future__ import annotations

import collections
import shutil
import sys
import threading
from typing import Any, Protocol, TextIO

from scanfleet.daemon.core.alarms import Alarm
from scanfleet.daemon.core.identity import Identity
from scanfleet.daemon.intake.devices import DeviceState
from scanfleet.daemon.journal.reader import JournalStats
from scanfleet.daemon.publish.state import BrokerState
from scanfleet.daemon.ui.stationview import record_line, station_lines

_CLEAR = "\x1b[H\x1b[2J"
_GREEN = "\x1b[32m"
_RED = "\x1b[31m"
_BOLD = "\x1b[1m"
_RESET = "\x1b[0m"


class JournalFigures(Protocol):
    """The journal's figures."""

    def stats(self) -> JournalStats: ...


class BrokerLink(Protocol):
    """The publisher's connection as the view shows it."""

    @property
    def connected(self) -> bool: ...

    @property
    def broker_state(self) -> BrokerState: ...

    @property
    def url(self) -> str: ...


class StationStatus(Protocol):
    """The station context and bill progress."""

    def status(self) -> dict[str, Any]: ...


class AlarmList(Protocol):
    """The active alarms."""

    def active(self) -> list[Alarm]: ...


class ViewSource(Protocol):
    """What the live view reads of the running daemon."""

    @property
    def identity(self) -> Identity: ...

    @property
    def journal(self) -> JournalFigures: ...

    @property
    def publisher(self) -> BrokerLink: ...

    @property
    def station(self) -> StationStatus: ...

    @property
    def alarms(self) -> AlarmList: ...

    def device_states(self) -> dict[str, DeviceState]: ...


class LiveView:
    """Redraws a status screen; :meth:`on_record` is the pipeline's record listener."""

    def __init__(self, daemon: ViewSource, out: TextIO = sys.stdout, rows: int = 12) -> None:
        self._daemon = daemon
        self._out = out
        self._recent: collections.deque[dict[str, Any]] = collections.deque(maxlen=rows)
        self._lock = threading.Lock()

    def on_record(self, record: dict[str, Any]) -> None:
        """Keep *record* for the next redraw (called from the pipeline's thread)."""
        with self._lock:
            self._recent.append(record)

    def render(self) -> str:
        """The screen as text."""
        d = self._daemon
        stats = d.journal.stats()
        width = shutil.get_terminal_size((100, 30)).columns
        buffering = stats.depth and not d.publisher.connected
        lines = [
            f"{_BOLD}scanfleet{_RESET}  site {d.identity.site}  device {d.identity.device}"
            f"  broker {d.publisher.broker_state} ({d.publisher.url})",
            f"journal: last seq {stats.last_seq}, delivered {stats.delivered_seq}, "
            f"waiting {stats.depth}"
            + ("  (buffering until the broker is reachable)" if buffering else ""),
            "devices: "
            + (", ".join(f"{n} {s}" for n, s in d.device_states().items()) or "none configured"),
            "",
            *station_lines(d.station.status()),
            "",
            f"{'seq':>7}  {'time':8}  {'kind':18}  {'verdict':8}  value",
        ]
        with self._lock:
            recent = list(self._recent)
        for rec in reversed(recent):
            lines.append(record_line(rec)[: width + len(_GREEN) + len(_RESET)])
        alarms = d.alarms.active()
        lines += ["", f"alarms: {len(alarms)}"]
        lines += [f"  {_RED}{a.code}{_RESET}: {a.message}"[: width + 9] for a in alarms]
        lines += ["", "Ctrl+C stops (every scan already beeped good is safe in the journal)."]
        return "\n".join(lines)

    def draw(self) -> None:
        """Redraw the whole screen."""
        self._out.write(_CLEAR + self.render() + "\n")
        self._out.flush()
