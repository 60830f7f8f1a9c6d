"""``make install DESTDIR=… PREFIX=/usr``: the documented tree, a venv that runs at its
final path, a unit that ``systemd-analyze verify`` accepts and ``systemd-analyze
security`` rates at most 2.5, udev rules in step with discovery, and ``make uninstall``."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from scanfleet.drivers import discovery
from support.prereq import missing, require_executable

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "systemd" / "README.md"
RULES = ROOT / "systemd" / "70-scanfleet.rules"
MAX_EXPOSURE = 2.5
UNIT = "usr/lib/systemd/system/scanfleet.service"


def _make(*args: str) -> list[str]:
    """The make command line: the top-level Makefile once it includes install.mk."""
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    files = [] if "systemd/install.mk" in makefile else ["-f", "systemd/install.mk"]
    return ["make", "-s", "-C", str(ROOT), *files, *args]


def _documented_tree() -> set[str]:
    text = README.read_text(encoding="utf-8")
    block = text.split("<!-- installed-tree -->")[1].split("<!-- /installed-tree -->")[0]
    return {line.strip() for line in block.strip().strip("`").splitlines() if line.strip()}


def _tree(root: Path) -> set[str]:
    """Files under *root*, with a venv shown as its folder only (as the README lists it)."""
    out = set()
    for path in root.rglob("*"):
        rel = path.relative_to(root).as_posix()
        if "/venv/" in rel + "/":
            if rel.endswith("/venv"):
                out.add(rel + "/")
            continue
        if path.is_file() or path.is_symlink():
            out.add(rel)
    return out


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    require_executable("make")
    for header in ("/usr/include/systemd/sd-daemon.h",):
        if not Path(header).exists():
            missing("libsystemd-dev is not installed (systemd-python builds from source)")
    dest = tmp_path_factory.mktemp("destdir")
    result = subprocess.run(
        _make("install", f"DESTDIR={dest}", "PREFIX=/usr"),
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return dest


@pytest.fixture(scope="module")
def system_root(installed: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The installed tree plus the pieces of a Debian system the unit refers to
    (the host's own units, /bin/kill): what ``systemd-analyze --root`` checks against."""
    root = tmp_path_factory.mktemp("root")
    shutil.copytree(installed, root, symlinks=True, dirs_exist_ok=True)
    units = root / "usr/lib/systemd/system"
    for unit in Path("/usr/lib/systemd/system").iterdir():
        if not (units / unit.name).exists():
            if unit.is_symlink():
                (units / unit.name).symlink_to(unit.readlink())
            elif unit.is_dir():
                shutil.copytree(unit, units / unit.name, symlinks=True)
            else:
                shutil.copy2(unit, units / unit.name)
    shutil.copy2(shutil.which("kill") or "/usr/bin/kill", root / "usr/bin/kill")
    (root / "bin").symlink_to("usr/bin")
    return root


def _systemd_analyze() -> str:
    path = shutil.which("systemd-analyze")
    if path is None:
        missing("systemd-analyze is not installed (apt package systemd)")
    return path


def test_install_produces_exactly_the_documented_tree(installed: Path) -> None:
    assert _tree(installed) == _documented_tree()
    assert (installed / "usr/lib/scanfleet/venv/bin/python").exists()
    unit = (installed / UNIT).read_text(encoding="utf-8")
    assert "ExecStart=/usr/bin/scanfleet run --config /etc/scanfleet/scanfleet.toml" in unit
    assert re.findall(r"@[A-Z]+@", unit) == []  # every placeholder substituted


def test_the_venv_names_its_final_path_only(installed: Path) -> None:
    venv = installed / "usr/lib/scanfleet/venv"
    offenders = [
        p
        for p in [*venv.joinpath("bin").iterdir(), venv / "pyvenv.cfg"]
        if p.is_file() and not p.is_symlink() and str(installed) in p.read_text(errors="replace")
    ]
    assert offenders == []
    assert (
        venv.joinpath("bin/scanfleet")
        .read_text()
        .startswith("#!/usr/lib/scanfleet/venv/bin/python")
    )
    launcher = (installed / "usr/bin/scanfleet").read_text()
    assert "exec /usr/lib/scanfleet/venv/bin/scanfleet" in launcher


def test_the_installed_launcher_runs_the_daemon_from_its_final_path(installed: Path) -> None:
    unshare = shutil.which("unshare")
    if (
        unshare is None
        or subprocess.run(["id", "-u"], capture_output=True, text=True).stdout.strip() != "0"
    ):
        missing("needs root and unshare(1) to mount the tree at its final path")
    # In a private mount namespace the staged /usr/lib/scanfleet is at /usr/lib/scanfleet.
    script = (
        "set -e; mkdir -p /usr/lib/scanfleet; "
        f"mount --bind {installed}/usr/lib/scanfleet /usr/lib/scanfleet; "
        f"{installed}/usr/bin/scanfleet config check {installed}/etc/scanfleet/scanfleet.toml; "
        "/usr/lib/scanfleet/venv/bin/python -c 'import systemd.daemon, systemd.journal'"
    )
    result = subprocess.run(
        [unshare, "--mount", "--propagation", "private", "sh", "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_systemd_analyze_verify_is_clean_on_the_installed_tree(system_root: Path) -> None:
    result = subprocess.run(
        [_systemd_analyze(), "verify", f"--root={system_root}", f"/{UNIT}"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    # verify reports unknown keys as warnings with exit code 0: any output is a failure.
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_security_exposure_is_at_most_2_5(system_root: Path) -> None:
    result = subprocess.run(
        [
            _systemd_analyze(),
            "security",
            "--offline=yes",
            f"--root={system_root}",
            f"--threshold={int(MAX_EXPOSURE * 10)}",
            "--no-pager",
            "scanfleet.service",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    match = re.search(r"Overall exposure level for scanfleet\.service: (\d+\.\d)", result.stdout)
    assert match, result.stdout + result.stderr
    assert float(match.group(1)) <= MAX_EXPOSURE, result.stdout
    assert result.returncode == 0, result.stdout + result.stderr


def test_uninstall_removes_every_file_install_made_and_keeps_an_edited_config(
    installed: Path, tmp_path: Path
) -> None:
    dest = tmp_path / "dest"
    shutil.copytree(installed, dest, symlinks=True)
    config = dest / "etc/scanfleet/scanfleet.toml"
    config.write_text(config.read_text() + "\n# edited by the site\n")
    result = subprocess.run(
        _make("uninstall", f"DESTDIR={dest}", "PREFIX=/usr"),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert _tree(dest) == {"etc/scanfleet/scanfleet.toml"}

    pristine = tmp_path / "pristine"
    shutil.copytree(installed, pristine, symlinks=True)
    subprocess.run(
        _make("uninstall", f"DESTDIR={pristine}", "PREFIX=/usr"), check=True, capture_output=True
    )
    assert _tree(pristine) == set()


def _rules_ids() -> set[str]:
    text = RULES.read_text(encoding="utf-8")
    ids = set()
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        vendor = re.search(r'ATTRS\{idVendor\}=="([0-9a-f]{4})"', line)
        product = re.search(r'ATTRS\{idProduct\}=="([0-9a-f]{4})"', line)
        if vendor:
            ids.add(f"{vendor.group(1)}:{product.group(1)}" if product else vendor.group(1))
    return ids


def test_udev_rules_cover_every_device_discovery_knows() -> None:
    known = (
        set(discovery.SCANNER_VENDORS)
        | set(discovery.SCANNER_DEVICES)
        | set(discovery.USB_SERIAL_BRIDGES)
    )
    assert known <= _rules_ids()
