"""The records the pipeline journals are byte for byte those of the committed fixture.

The fixture was written by the pipeline before records were typed (dicts); the hash
chain and every published record depend on these exact bytes, so a change of how
records are built must not change a single one of them.
"""

from __future__ import annotations

from pathlib import Path

from support.golden_records import FIXTURE, journal_payloads


def test_the_pipeline_writes_the_fixture_bytes(tmp_path: Path) -> None:
    expected = FIXTURE.read_bytes().splitlines()
    got = journal_payloads(tmp_path)
    assert len(got) == len(expected) == 25
    for n, (mine, theirs) in enumerate(zip(got, expected, strict=True), start=1):
        assert mine == theirs, f"record {n} differs"
