"""Realistic scan record bodies for journal, publisher and benchmark tests.

``make_scan_body(i, rng)`` returns what the pipeline hands to ``Journal.append``: every
field of a :class:`scanfleet.daemon.core.model.Scan` except ``device``, ``seq``, ``id``,
``prev_hash`` and ``hash`` (the journal adds those). The read itself comes from the
simulator's default counter mix (``scanfleet.drivers.sim.codes``) and is classified by
the daemon's own ``classify``, so benchmarks and tests store exactly the shapes a
pharmacy counter produces. ``make_scan_record`` is the same scan as the typed
:class:`~scanfleet.daemon.core.records.ScanBody` the pipeline builds (same bytes once journaled).
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from typing import Any

from scanfleet.daemon.core.model import ClockSync, Kind, Operation, Verdict
from scanfleet.daemon.core.records import ReadSource, ScanBody, Stamp, StationContext
from scanfleet.daemon.intake.classify import classify
from scanfleet.drivers.sim.codes import generate_code

EPOCH = datetime(2026, 11, 2, 8, 30, tzinfo=UTC)
"""Wall-clock time of body 0; body i is i * 2.5 s later (a busy counter)."""

BOOT_ID = "5f0c6a3e-9b1d-4c2a-8e7f-1a2b3c4d5e6f"

OPERATORS = ("op-0117", "op-0342", "op-0508")


def make_scan_body(i: int, rng: random.Random) -> dict[str, Any]:
    """Body of the *i*-th scan of a busy counter (deterministic for a given rng state)."""
    parsed = classify(generate_code(rng, aim=True)).model_dump(mode="json")
    refused = rng.random() < 0.03
    time = EPOCH + timedelta(seconds=2.5 * i, microseconds=rng.randrange(1_000_000))
    return {
        "schema": "scanfleet.scan/1",
        "type": "scan",
        "time": time.isoformat().replace("+00:00", "Z"),
        "clock": "synced",
        "t_mono": round(18_000.0 + 2.5 * i + rng.random(), 6),
        "boot_id": BOOT_ID,
        "source": {
            "driver": "serial",
            "device": "counter1",
            "port": "/dev/serial/by-id/usb-Honeywell_Imaging_1950g_22151B1234-if00",
            "vid_pid": "0c2e:0b61",
        },
        "raw": parsed["raw"],
        "aim": parsed["aim"],
        "kind": parsed["kind"],
        "value": parsed["value"],
        "fields": parsed["fields"],
        "problems": parsed["problems"],
        "verdict": "refused" if refused else "accepted",
        "reason": "duplicate scan in this bill" if refused else None,
        "operation": "retail_sale",
        "station": "counter-1",
        "bill": f"POS-20261102-{i // 4:06d}",
        "operator": OPERATORS[(i // 200) % len(OPERATORS)],
        "identity_ref": None,
    }


def make_scan_record(i: int, rng: random.Random) -> ScanBody:
    """The same scan as :func:`make_scan_body`, typed the way the pipeline builds it."""
    body = make_scan_body(i, rng)
    source = body["source"]
    return ScanBody(
        stamp=Stamp(
            time=body["time"],
            clock=ClockSync(body["clock"]),
            t_mono=body["t_mono"],
            boot_id=body["boot_id"],
            source=ReadSource(
                source["driver"], source["device"], source["port"], source["vid_pid"]
            ),
        ),
        context=StationContext(Operation(body["operation"]), body["bill"], body["operator"]),
        station=body["station"],
        raw=body["raw"],
        aim=body["aim"],
        kind=Kind(body["kind"]),
        value=body["value"],
        fields=body["fields"],
        problems=body["problems"],
        verdict=Verdict(body["verdict"]),
        reason=body["reason"],
    )
