"""``scanfleet record`` captures raw input events that replay to the same scan."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from scanfleet.drivers import keymaps as km
from scanfleet.drivers.base import DriverProblem
from scanfleet.drivers.framing import Frame
from scanfleet.drivers.wedge import trace


def test_recorded_events_replay_to_the_scan_that_was_typed(tmp_path: Path) -> None:
    fifo = tmp_path / "event-kbd"
    os.mkfifo(fifo)
    writer = os.open(fifo, os.O_RDWR | os.O_NONBLOCK)  # a writer exists before the reader
    out = tmp_path / "trace.jsonl"
    proc = subprocess.Popen(
        [sys.executable, "-m", "scanfleet.daemon", "record", str(fifo), "-o", str(out),
         "--layout", "de", "--seconds", "30"],
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        assert proc.stderr is not None
        while "scan now" not in (line := proc.stderr.readline()):  # recording has started
            assert line, "record exited before it started"
        code = "0106901234567892\x1d21Qz#@"
        events = trace.type_text(km.DE, code, t0=time.monotonic())
        os.write(writer, b"".join(e.pack() for e in events))
        time.sleep(0.5)
        proc.terminate()  # SIGTERM ends the recording and writes the file
        assert proc.wait(30) == 0
    finally:
        os.close(writer)
        if proc.stderr is not None:
            proc.stderr.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    header, recorded = trace.read_trace(out)
    assert header["layout"] == "de"
    assert [(e.type, e.code, e.value) for e in recorded] == [
        (e.type, e.code, e.value) for e in events
    ]
    decoded = trace.decode_events(recorded, km.DE)
    assert [x for x in decoded if isinstance(x, DriverProblem)] == []
    assert [x.data for x in decoded if isinstance(x, Frame)] == [code.encode() + b"\r"]
