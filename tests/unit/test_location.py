"""Inspection commands find the journal without a config, or say where they looked."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from scanfleet.daemon.commands import location
from scanfleet.daemon.core.errors import ConfigError


def args(**kw: object) -> argparse.Namespace:
    return argparse.Namespace(**{"state_dir": None, "config": None, "journal": None, **kw})


@pytest.fixture
def defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(location, "DEFAULT_CONFIG_PATH", tmp_path / "etc" / "scanfleet.toml")
    monkeypatch.setattr(location, "DEFAULT_STATE_DIR", tmp_path / "var")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_without_config_the_default_state_dir_is_used_when_it_holds_a_journal(
    defaults: Path,
) -> None:
    (defaults / "var").mkdir()
    (defaults / "var" / "journal.sqlite3").touch()
    assert location.state_dir_from(args()) == defaults / "var"


def test_without_anything_the_error_names_the_paths_tried_and_the_demo(defaults: Path) -> None:
    (defaults / "state" / "demo").mkdir(parents=True)
    (defaults / "state" / "demo" / "journal.sqlite3").touch()
    with pytest.raises(ConfigError) as caught:
        location.journal_path_from(args())
    text = str(caught.value)
    assert str(defaults / "etc" / "scanfleet.toml") in text
    assert str(defaults / "var" / "journal.sqlite3") in text
    assert "--state-dir state/demo" in text
    assert "a demo journal is in ./state/demo" in text
