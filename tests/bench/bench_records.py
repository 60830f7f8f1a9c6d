"""Benchmark ``records``: the cost of building one scan record body, typed two ways.

Issue 16 asks for typed records on the data path, as pydantic models or frozen
dataclasses, chosen by measured cost. Each figure is microseconds per scan to build
the typed body from the parsed read and turn it into the JSON object the journal
serializes:

- ``dataclass_us``: :class:`scanfleet.daemon.core.records.ScanBody` + ``to_body()`` (what
  the pipeline does);
- ``pydantic_validate_us``: the published :class:`scanfleet.daemon.core.model.Scan` model
  validated from the same fields, then ``model_dump(mode="json", by_alias=True)``;
- ``pydantic_construct_us``: ``Scan.model_construct`` (no validation) + the same dump;
- ``dict_us``: the plain dict the pipeline built before (the floor).

Medians over rounds; ``pydantic_validate_ratio`` = pydantic_validate_us / dataclass_us.
"""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Callable, Iterator
from typing import Any

from scanfleet.daemon.core.model import Scan
from scanfleet.daemon.core.records import ScanBody
from support.scans import make_scan_body, make_scan_record

ROUNDS = 7
PER_ROUND = 2000
_SEALED = {"device": "dev-1", "seq": 1, "id": "dev-1:1", "prev_hash": "0" * 64, "hash": "a" * 64}


def _time(build: Callable[[int], object]) -> float:
    started = time.perf_counter()
    for i in range(PER_ROUND):
        build(i)
    return (time.perf_counter() - started) / PER_ROUND * 1e6


def run() -> Iterator[dict[str, Any]]:
    """One JSON line: microseconds per scan body."""
    rng = random.Random(5)
    dicts = [make_scan_body(i, rng) for i in range(PER_ROUND)]
    rng = random.Random(5)
    typed = [make_scan_record(i, rng) for i in range(PER_ROUND)]
    full = [{**d, **_SEALED} for d in dicts]

    def dataclass(i: int) -> object:
        t = typed[i]
        body = ScanBody(
            stamp=t.stamp,
            context=t.context,
            station=t.station,
            raw=t.raw,
            aim=t.aim,
            kind=t.kind,
            value=t.value,
            fields=t.fields,
            problems=t.problems,
            verdict=t.verdict,
            reason=t.reason,
        )
        return body.to_body()

    def pydantic_validate(i: int) -> object:
        return Scan.model_validate(full[i]).model_dump(mode="json", by_alias=True)

    def pydantic_construct(i: int) -> object:
        return Scan.model_construct(**full[i]).model_dump(mode="json", by_alias=True)

    def plain(i: int) -> object:
        return {**dicts[i], "source": dict(dicts[i]["source"])}

    figures: dict[str, list[float]] = {
        name: [] for name in ("dataclass", "pydantic_validate", "pydantic_construct", "dict")
    }
    builders = {
        "dataclass": dataclass,
        "pydantic_validate": pydantic_validate,
        "pydantic_construct": pydantic_construct,
        "dict": plain,
    }
    for _ in range(ROUNDS):
        for name, build in builders.items():
            figures[name].append(_time(build))
    medians = {name: statistics.median(values) for name, values in figures.items()}
    yield {
        **{f"{name}_us": round(value, 2) for name, value in medians.items()},
        "pydantic_validate_ratio": round(medians["pydantic_validate"] / medians["dataclass"], 1),
        "rounds": ROUNDS,
    }
