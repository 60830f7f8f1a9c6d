"""Every record the typed pipeline journals validates against its published JSON Schema.

The schemas in ``docs/schema/`` are generated from the pydantic models (the contract);
the pipeline builds records as frozen dataclasses (``daemon/core/records.py``). This runs a
session of reads of every record type through the real pipeline and journal and
validates each stored record, as a backend would, against the committed schema file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator

from support.golden_records import journal_payloads

SCHEMA_DIR = Path(__file__).resolve().parents[2] / "docs" / "schema"
SCHEMA_OF_TYPE = {
    "scan": "scan",
    "control": "control",
    "bill_summary": "bill-summary",
    "manual_entry": "manual-entry",
    "identity_read": "identity-read",
}


def _validator(name: str) -> Draft202012Validator:
    schema: dict[str, Any] = json.loads((SCHEMA_DIR / f"{name}.schema.json").read_text("utf-8"))
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)


def test_every_typed_record_validates_against_its_published_schema(tmp_path: Path) -> None:
    validators = {t: _validator(name) for t, name in SCHEMA_OF_TYPE.items()}
    seen: set[str] = set()
    for payload in journal_payloads(tmp_path):
        record = json.loads(payload)
        seen.add(record["type"])
        errors = [e.message for e in validators[record["type"]].iter_errors(record)]
        assert not errors, f"seq {record['seq']} ({record['type']}): {errors}"
    assert seen == set(SCHEMA_OF_TYPE)


def test_a_misspelled_field_is_caught_by_the_schema(tmp_path: Path) -> None:
    record = json.loads(journal_payloads(tmp_path)[0])
    record["verdikt"] = record.pop("verdict")
    assert list(_validator("scan").iter_errors(record))
