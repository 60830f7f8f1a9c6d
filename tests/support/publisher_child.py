"""A process that journals scans and publishes them until it is killed (crash tests).

    python publisher_child.py JOURNAL BROKER_URL REPORT SEED

Every seq whose ``append`` returned is written to REPORT as one line and flushed
before the next append, so the parent knows which records were promised durable
when it SIGKILLs this process.
"""

from __future__ import annotations

import logging
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from scanfleet.daemon.core.alarms import AlarmSet
from scanfleet.daemon.core.backoff import Backoff
from scanfleet.daemon.core.config import BrokerConfig
from scanfleet.daemon.core.identity import Identity
from scanfleet.daemon.journal.journal import Journal
from scanfleet.daemon.publish.publisher import Publisher
from support.scans import make_scan_body

SITE = "crash-site"
DEVICE = "sf-00000000dead"


def main(argv: list[str]) -> int:
    """Append and publish until killed."""
    journal_path, url, report_path, seed = Path(argv[0]), argv[1], Path(argv[2]), int(argv[3])
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    rng = random.Random(seed)
    alarms = AlarmSet()
    journal = Journal.open(journal_path, DEVICE, alarms=alarms)
    publisher = Publisher(
        journal,
        BrokerConfig(url=url, keepalive=5),
        Identity(SITE, DEVICE),
        alarms,
        max_batch_scans=rng.choice([1, 7, 50, 500]),
        window=rng.choice([1, 4, 16]),
        backoff=Backoff(initial=0.05, maximum=0.5),
        connect_timeout=3.0,
    )
    publisher.start()
    with report_path.open("a", encoding="ascii") as report:
        while True:
            record = journal.append(make_scan_body(journal.last_seq, rng))
            report.write(f"{record['seq']}\n")
            report.flush()
            publisher.wake()
            # Bursts and pauses: sometimes a backlog builds, sometimes scans go out live.
            time.sleep(rng.choice([0.0, 0.0, 0.001, 0.005, 0.02]))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
