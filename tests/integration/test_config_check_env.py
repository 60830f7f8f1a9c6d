"""``config check`` reports what ``run`` would fail on, as FILE:LINE: KEY: MESSAGE."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from support.smallfs import small_tmpfs

pytestmark = pytest.mark.integration


def check(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "scanfleet.daemon", "config", "check", str(config)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


def write(tmp_path: Path, state_dir: Path, extra: str = "") -> Path:
    path = tmp_path / "scanfleet.toml"
    path.write_text(
        f'[identity]\nsite = "s"\n\n[paths]\nstate_dir = "{state_dir}"\n{extra}', "utf-8"
    )
    return path


def test_a_state_dir_under_a_file_is_reported_with_its_line(tmp_path: Path) -> None:
    (tmp_path / "file").touch()
    done = check(write(tmp_path, tmp_path / "file" / "state"))
    assert done.returncode == 1
    assert f"scanfleet.toml:5: paths.state_dir: {tmp_path / 'file'} is not a directory" in (
        done.stderr
    )
    assert "Traceback" not in done.stderr


def test_out_of_range_numbers_are_reported_not_crashed_on(tmp_path: Path) -> None:
    extra = "\n[journal]\nretention_days = 99999999\nmax_bytes = 1\n"
    done = check(write(tmp_path, tmp_path / "state", extra))
    assert done.returncode == 1
    assert "scanfleet.toml:8: journal.retention_days: Input should be less than or equal" in (
        done.stderr
    )
    assert "scanfleet.toml:9: journal.max_bytes:" in done.stderr


def test_a_state_dir_on_a_read_only_mount_is_reported(tmp_path: Path) -> None:
    with small_tmpfs(tmp_path / "ro", "1m") as mount:
        subprocess.run(["mount", "-o", "remount,ro", str(mount)], check=True)
        done = check(write(tmp_path, mount / "state"))
    assert done.returncode == 1
    assert "paths.state_dir:" in done.stderr
    assert "read-only file system" in done.stderr
