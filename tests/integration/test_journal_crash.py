"""Durability: a record whose append returned survives SIGKILL of the appending process."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from scanfleet.daemon.journal.journal import Journal

DEVICE = "sf-0a1b2c3d4e5f"
TESTS = Path(__file__).resolve().parents[1]

# The child appends flat out from two threads and reports each record on stdout only
# after append() returned: that line is the "good read" the operator would have had.
CHILD = textwrap.dedent(
    """
    import random, sys, threading
    from pathlib import Path
    sys.path.insert(0, sys.argv[3])
    from scanfleet.daemon.journal.journal import Journal
    from support.scans import make_scan_body

    journal = Journal.open(Path(sys.argv[1]), sys.argv[2])
    lock = threading.Lock()
    print("ready", journal.last_seq, flush=True)

    def worker(n):
        rng = random.Random(n * 7919 + journal.last_seq)
        i = 0
        while True:
            record = journal.append(make_scan_body(i, rng))
            i += 1
            with lock:
                sys.stdout.write("%d %s\\n" % (record["seq"], record["hash"]))
                sys.stdout.flush()

    threads = [threading.Thread(target=worker, args=(n,), daemon=True) for n in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    """
)


@pytest.mark.integration
def test_every_acknowledged_append_survives_sigkill_and_restart(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite3"
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    rng = random.Random(2026)
    acknowledged: dict[int, str] = {}
    for _round in range(8):
        child = subprocess.Popen(
            [sys.executable, str(script), str(path), DEVICE, str(TESTS)],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert child.stdout is not None
        ready = child.stdout.readline().split()
        assert ready[0] == "ready"
        # Restart picks up exactly where the last acknowledged (or later) record left off.
        assert int(ready[1]) >= max(acknowledged, default=0)
        kill_after = rng.randint(5, 400)
        for _ in range(kill_after):
            seq, digest = child.stdout.readline().split()
            acknowledged[int(seq)] = digest
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=30)
        # Lines written before the kill are acknowledged appends too.
        for line in child.stdout:
            seq, digest = line.split()
            acknowledged[int(seq)] = digest
        child.stdout.close()

    with Journal.open(path, DEVICE) as journal:
        stored = {r.seq: r.as_dict()["hash"] for r in journal.reader.iter_records()}
        assert sorted(stored) == list(range(1, journal.last_seq + 1))  # no gaps
        missing = [seq for seq in acknowledged if stored.get(seq) != acknowledged[seq]]
        assert missing == []
        result = journal.verify(full=True)
        assert result.ok, str(result)
