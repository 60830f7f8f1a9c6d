"""JSON Schemas of every message scanfleet publishes or prints, generated from the models.

The generated files are committed under ``docs/schema/``; ``scanfleet schema --check``
(and a test) fail when they are stale.
"""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel

from scanfleet.daemon.core.desired_config import ConfigReport, DesiredConfig
from scanfleet.daemon.core.enrollment import EnrollRequest, EnrollResponse
from scanfleet.daemon.core.model import JournalLoss, ParseResult, Scan
from scanfleet.daemon.intake.pairing import IdentityRead
from scanfleet.daemon.publish.envelope import DeviceState, ScanBatch
from scanfleet.daemon.remote.control import CommandResponse
from scanfleet.daemon.remote.health import Health
from scanfleet.daemon.station.manual import ManualEntry
from scanfleet.daemon.station.receiving import BillSummary
from scanfleet.daemon.station.station import ControlRecord

SCHEMA_BASE_ID = "https://scanfleet.invalid/schema/"
"""Base of the ``$id`` of each schema (an identifier, not a download address)."""


def message_models() -> dict[str, type[BaseModel]]:
    """Name → model of every documented message type."""
    return {
        "parse-result": ParseResult,
        "scan": Scan,
        "scan-batch": ScanBatch,
        "state": DeviceState,
        "identity-read": IdentityRead,
        "control": ControlRecord,
        "bill-summary": BillSummary,
        "manual-entry": ManualEntry,
        "journal-loss": JournalLoss,
        "enroll-request": EnrollRequest,
        "enroll-response": EnrollResponse,
        "desired-config": DesiredConfig,
        "config-reported": ConfigReport,
        "cmd-response": CommandResponse,
        "health": Health,
    }


def render_schema(name: str, model: type[BaseModel]) -> str:
    """The JSON Schema of *model* as stable, pretty-printed text."""
    schema = model.model_json_schema(mode="serialization")
    schema = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": f"{SCHEMA_BASE_ID}{name}.schema.json",
        **schema,
    }
    return json.dumps(schema, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def schema_files() -> dict[str, str]:
    """File name → content of every schema file."""
    return {f"{name}.schema.json": render_schema(name, m) for name, m in message_models().items()}


def stale_files(directory: Path) -> list[str]:
    """Names of schema files in *directory* that are missing or differ from the models."""
    stale = []
    for filename, content in schema_files().items():
        path = directory / filename
        if not path.exists() or path.read_text(encoding="utf-8") != content:
            stale.append(filename)
    return stale
