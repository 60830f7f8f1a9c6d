"""Dependencies and extras agree with the Debian package, and hardware libraries stay lazy."""

from __future__ import annotations

import io
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from scanfleet.daemon.commands.export import ExportError, Progress, write_sqlite

ROOT = Path(__file__).parents[2]

DEBIAN_NAME = {
    "pydantic": "python3-pydantic",
    "paho-mqtt": "python3-paho-mqtt",
    "rfc8785": "python3-rfc8785",
    "pyserial": "python3-serial",
    "cryptography": "python3-cryptography",
    "websockets": "python3-websockets",
    "segno": "python3-segno",
    "pyusb": "python3-usb",
    "evdev": "python3-evdev",
    "systemd-python": "python3-systemd",
    "pyudev": "python3-pyudev",
    "sqlite-utils": "sqlite-utils",
}
NOT_IN_THE_TERMINAL_PACKAGE = {"biip": "vendored from PyPI", "psycopg": "scanfleet-hub"}
HARDWARE = {"usb", "evdev", "pyudev", "systemd", "sqlite_utils"}


def _name(requirement: str) -> str:
    return re.split(r"[\[<>=!~ ]", requirement, maxsplit=1)[0].lower()


def _project() -> dict[str, object]:
    with (ROOT / "pyproject.toml").open("rb") as f:
        return dict(tomllib.load(f)["project"])


def _extra(extras: dict[str, list[str]], name: str) -> set[str]:
    out: set[str] = set()
    for requirement in extras[name]:
        nested = re.fullmatch(r"scanfleet\[(.*)\]", requirement)
        if nested:
            for inner in nested.group(1).split(","):
                out |= _extra(extras, inner.strip())
        else:
            out.add(_name(requirement))
    return out


def _terminal_depends() -> set[str]:
    control = (ROOT / "debian" / "control").read_text(encoding="utf-8")
    stanza = control.split("\nPackage: scanfleet\n", 1)[1].split("\n\n", 1)[0]
    depends = stanza.split("Depends:", 1)[1].split("\nSuggests:", 1)[0]
    names = {re.split(r"[ (]", d.strip(), maxsplit=1)[0] for d in depends.split(",")}
    return {n for n in names if n.startswith("python3-") or n == "sqlite-utils"} - {"python3"}


def test_the_debian_package_depends_on_exactly_core_and_the_terminal_extra() -> None:
    project = _project()
    extras: dict[str, list[str]] = project["optional-dependencies"]  # type: ignore[assignment]
    core = {_name(r) for r in project["dependencies"]}  # type: ignore[attr-defined]
    wanted = (core | _extra(extras, "terminal")) - set(NOT_IN_THE_TERMINAL_PACKAGE)
    assert {DEBIAN_NAME[n] for n in wanted} == _terminal_depends()


def test_hardware_libraries_are_extras_never_core() -> None:
    project = _project()
    core = {_name(r) for r in project["dependencies"]}  # type: ignore[attr-defined]
    extras: dict[str, list[str]] = project["optional-dependencies"]  # type: ignore[assignment]
    for library, extra in [
        ("pyusb", "usb"),
        ("evdev", "input"),
        ("systemd-python", "systemd"),
        ("pyudev", "udev"),
        ("sqlite-utils", "export"),
    ]:
        assert library not in core
        assert _extra(extras, extra) == {library}
        assert library in _extra(extras, "terminal")
    assert _extra(extras, "terminal") <= _extra(extras, "dev")


def test_starting_the_daemon_imports_no_hardware_library() -> None:
    code = (
        "import sys, scanfleet.daemon.cli, scanfleet.daemon.runner, scanfleet.drivers, "
        "scanfleet.drivers.serial, scanfleet.provisioning.service; "
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {sorted(HARDWARE)!r}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"


def test_export_to_sqlite_without_its_extra_says_which_to_install(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setitem(sys.modules, "sqlite_utils", None)  # import raises ImportError
    with pytest.raises(ExportError, match=r"scanfleet\[export\]"):
        write_sqlite([], tmp_path / "out.sqlite3", Progress(0, io.StringIO()))
