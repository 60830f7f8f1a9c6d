"""Realistic scan record bodies for journal, publisher and benchmark tests.

``make_scan_body(i, rng)`` returns what the pipeline hands to ``Journal.append``: every
field of a :class:`scanfleet.daemon.model.Scan` except ``device``, ``seq``, ``id``,
``prev_hash`` and ``hash`` (the journal adds those). The read itself comes from the
simulator's default counter mix (``scanfleet.drivers.sim.codes``), so benchmarks and
tests store the same shapes a pharmacy counter produces. Fields are built here from the
generated sample's known kind; when ``scanfleet.daemon.classify`` exists its result is
used instead, so the bodies carry exactly what the daemon would record.
"""

from __future__ import annotations

import importlib
import random
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from scanfleet.daemon.model import Kind
from scanfleet.drivers.sim.codes import CodeSample, generate_sample

EPOCH = datetime(2026, 11, 2, 8, 30, tzinfo=UTC)
"""Wall-clock time of body 0; body i is i * 2.5 s later (a busy counter)."""

BOOT_ID = "5f0c6a3e-9b1d-4c2a-8e7f-1a2b3c4d5e6f"

OPERATORS = ("op-0117", "op-0342", "op-0508")


def _raw_text(data: bytes) -> str:
    # The Scan.raw convention: printable ASCII as is, backslash doubled, other bytes \xNN.
    out = []
    for byte in data:
        if byte == 0x5C:
            out.append("\\\\")
        elif 0x20 <= byte <= 0x7E:
            out.append(chr(byte))
        else:
            out.append(f"\\x{byte:02x}")
    return "".join(out)


def _fields_for(sample: CodeSample) -> tuple[dict[str, Any], list[str]]:
    value = sample.data.decode("ascii", "replace")
    if sample.kind is Kind.TRACE20:
        return {"drug_id": value[:7], "serial": value[7:]}, []
    if sample.kind is Kind.GS1:
        head, _, tail = value.partition("\x1d")
        gtin, expiry, lot = head[2:16], head[18:24], head[26:]
        return {
            "gtin": gtin,
            "expiry": f"20{expiry[:2]}-{expiry[2:4]}-{expiry[4:]}",
            "batch": lot,
            "serial": tail[2:],
            "element_strings": {"01": gtin, "17": expiry, "10": lot, "21": tail[2:]},
        }, []
    if sample.kind is Kind.EAN13:
        return {"gtin": value.zfill(14), "check_digit_ok": True}, []
    if sample.kind is Kind.DRUG_STANDARD_CODE:
        return {"code": value}, []
    if sample.kind is Kind.UNKNOWN:
        return {}, ["no rule matches this read"]
    return {"text": value}, []


def _classifier() -> Callable[..., Any] | None:
    try:
        module = importlib.import_module("scanfleet.daemon.classify")
    except ImportError:
        return None
    func = getattr(module, "classify", None)
    return func if callable(func) else None


_CLASSIFY = _classifier()


def make_scan_body(i: int, rng: random.Random) -> dict[str, Any]:
    """Body of the *i*-th scan of a busy counter (deterministic for a given rng state)."""
    sample = generate_sample(rng)
    raw = sample.raw(aim=True)
    parsed: dict[str, Any] | None = None
    if _CLASSIFY is not None:
        try:
            result = _CLASSIFY(raw)
            parsed = result.model_dump(mode="json")
        except (TypeError, ValueError):
            parsed = None  # a different classify signature: fall back to building fields
    if parsed is None:
        fields, problems = _fields_for(sample)
        parsed = {
            "kind": str(sample.kind),
            "value": sample.data.decode("ascii", "replace"),
            "aim": sample.aim,
            "fields": fields,
            "raw": _raw_text(raw),
            "problems": problems,
        }
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
