"""``scanfleet hub``: registered as a group, clear errors before anything starts."""

from __future__ import annotations

from pathlib import Path

import pytest

from scanfleet.daemon.cli import main
from scanfleet.hub.cli import HUB_COMMAND_MODULES
from scanfleet.hub.ingest import derive_client_id, subscriptions


def test_every_hub_action_is_registered(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["hub", "--help"])
    out = capsys.readouterr().out
    for action in ("db", "ingest", "audit", "export", "verify-export", "duplicates"):
        assert action in out
    assert len(HUB_COMMAND_MODULES) >= 5


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--broker", "http://example"], "String should match pattern"),
        (["--broker", "mqtt://127.0.0.1:1", "--client-id", "@identity"], "needs --identity"),
        (["--broker", "mqtt://127.0.0.1:1", "--workers", "0"], "at least 1"),
        (
            ["--broker", "mqtts://127.0.0.1:1", "--identity", "a,b,c", "--workers", "2"],
            "3 identities for 2 workers",
        ),
    ],
)
def test_ingest_refuses_bad_settings_at_once(
    extra: list[str], message: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    argv = ["hub", "ingest", "--database", "dbname=x", "--fleet-dir", str(tmp_path), *extra]
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_client_ids_are_stable_per_host_group_and_worker() -> None:
    assert derive_client_id("hub-a", "scanfleet-hub", 1) == "hub-hub-a-scanfleet-hub-1"
    assert derive_client_id("hub a/b", "g", 0) == "hub-hub-a-b-g-0"
    assert subscriptions("g")[:3] == [
        "$share/g/scanfleet/v1/+/+/scans",
        "$share/g/scanfleet/v1/+/+/state",
        "$share/g/scanfleet/v1/+/+/health",
    ]
