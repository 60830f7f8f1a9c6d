"""classify() on the hot path: microseconds per read, per code shape and for the counter mix.

The baseline is the least any classifier does per read (decode the bytes, match one
regular expression); ``ratio`` is classify's time over that floor, which stays
comparable across the shared, noisy machines where absolute figures drift.
"""

from __future__ import annotations

import random
import re
import time
from collections.abc import Callable, Iterator
from typing import Any

from scanfleet.daemon.intake.classify import classify
from scanfleet.drivers.sim.codes import generate_sample

SHAPES: dict[str, bytes] = {
    "trace20": b"]C083711700173703755001\r",
    "trace20_lookalike_8200": b"82001230123456789012\r",
    "ean13": b"]E06901234567892\r",
    "drug_standard_code": b"86912345678908\r",
    "gs1_datamatrix": b"]d2010950110102091717270630101234A\x1d21SN0001\r",
    "url_digital_link": b"]Q1https://id.gs1cn.org/01/06901234567892/10/ABC123\r",
    "unknown": b"SKU-A7731\r",
}

_FLOOR = re.compile(r"8[0-9]{19}")


def _per_call_us(func: Callable[[bytes], Any], reads: list[bytes], rounds: int) -> float:
    best = float("inf")
    for _ in range(rounds):
        started = time.perf_counter()
        for read in reads:
            func(read)
        best = min(best, time.perf_counter() - started)
    return best / len(reads) * 1e6


def _floor(read: bytes) -> Any:
    return _FLOOR.fullmatch(read.decode("utf-8"))


def run() -> Iterator[dict[str, Any]]:
    """One line per code shape and one for the simulated counter mix."""
    rng = random.Random(7)
    mix = [generate_sample(rng).raw(aim=True) + b"\r" for _ in range(5000)]
    cases = {name: [read] * 2000 for name, read in SHAPES.items()}
    cases["counter_mix"] = mix
    for name, reads in cases.items():
        baseline = _per_call_us(_floor, reads, rounds=5)
        us = _per_call_us(classify, reads, rounds=5)
        yield {
            "case": name,
            "us_per_read": round(us, 2),
            "baseline_us": round(baseline, 3),
            "ratio": round(us / baseline, 1),
            "reads": len(reads),
        }
