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
from typing import Any, TextIO

from scanfleet.daemon.runner import Daemon
from scanfleet.daemon.ui.stationview import record_line, station_lines

_CLEAR = "\x1b[H\x1b[2J"
_GREEN = "\x1b[32m"
_RED = "\x1b[31m"
_BOLD = "\x1b[1m"
_RESET = "\x1b[0m"


class LiveView:
    """Redraws a status screen; fed by the pipeline's record listener."""

    def __init__(self, daemon: Daemon, out: TextIO = sys.stdout, rows: int = 12) -> None:
        self._daemon = daemon
        self._out = out
        self._recent: collections.deque[dict[str, Any]] = collections.deque(maxlen=rows)
        self._lock = threading.Lock()
        daemon.pipeline.add_listener(self._on_record)

    def _on_record(self, record: dict[str, Any]) -> None:
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
