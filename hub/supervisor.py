"""``--workers N``: N ingest worker processes under one supervisor.

Each worker is an ordinary ``scanfleet hub ingest --worker-index I`` process with its
own stable client id (so its persistent session survives its restarts); the
supervisor restarts a worker that died (kill -9, out of memory) after a backoff and,
on SIGTERM, passes SIGTERM on and waits. Workers need no coordination beyond
PostgreSQL's unique key; the same command on another machine adds more.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import threading
from collections.abc import Sequence

from scanfleet.daemon.core.backoff import Backoff

log = logging.getLogger(__name__)

STOP_TIMEOUT = 30.0


class Supervisor:
    """Start, watch and stop the worker processes."""

    def __init__(self, argv: Sequence[str], workers: int, stop: threading.Event) -> None:
        self.argv = list(argv)
        self.workers = workers
        self.stop = stop
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        self._backoff = {i: Backoff(0.5, 30.0) for i in range(workers)}
        self._restart_at: dict[int, float] = {}

    def _start(self, index: int) -> None:
        cmd = [sys.executable, "-m", "scanfleet.daemon", *self.argv, "--worker-index", str(index)]
        self.procs[index] = subprocess.Popen(cmd)
        log.info("ingest worker %d started (pid %d)", index, self.procs[index].pid)

    def run(self) -> int:
        """Supervise until :attr:`stop` is set; then stop every worker."""
        for index in range(self.workers):
            self._start(index)
        clock = 0.0
        while not self.stop.wait(0.2):
            clock += 0.2
            for index, proc in list(self.procs.items()):
                code = proc.poll()
                if code is None:
                    continue
                if index not in self._restart_at:
                    delay = self._backoff[index].next()
                    log.warning(
                        "ingest worker %d exited with %s; restarting in %.1f s", index, code, delay
                    )
                    self._restart_at[index] = clock + delay
                elif clock >= self._restart_at[index]:
                    del self._restart_at[index]
                    self._start(index)
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        failed = 0
        for index, proc in self.procs.items():
            try:
                code = proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                log.warning("ingest worker %d did not stop; killing it", index)
                proc.kill()
                code = proc.wait()
            failed += code not in (0, -signal.SIGTERM)
        return 1 if failed else 0
