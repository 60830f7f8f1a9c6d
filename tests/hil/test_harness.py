"""The harness's host-side logic that needs no guest: kernel choice, key mapping, decoding."""

from __future__ import annotations

from pathlib import Path

import pytest

from hil.guest import function_ref
from hil.guest_input import decode_boot_reports
from hil.qmp import keys_for
from hil.vm import find_kernel, find_prerequisites


def make_kernel(boot: Path, modules: Path, version: str) -> Path:
    kernel = boot / f"vmlinuz-{version}"
    kernel.write_bytes(b"")
    (modules / version).mkdir()
    return kernel


def test_the_newest_generic_kernel_with_modules_is_chosen_over_cloud_kernels(
    tmp_path: Path,
) -> None:
    boot, modules = tmp_path / "boot", tmp_path / "modules"
    boot.mkdir()
    modules.mkdir()
    make_kernel(boot, modules, "6.1.0-9-amd64")
    newest = make_kernel(boot, modules, "6.1.0-56-amd64")
    make_kernel(boot, modules, "6.1.0-60-cloud-amd64")
    (boot / "vmlinuz-6.1.0-70-amd64").write_bytes(b"")  # modules not installed
    assert find_kernel(boot, modules) == newest


def test_no_kernel_is_found_when_only_a_cloud_kernel_is_installed(tmp_path: Path) -> None:
    boot, modules = tmp_path / "boot", tmp_path / "modules"
    boot.mkdir()
    modules.mkdir()
    make_kernel(boot, modules, "6.1.0-56-cloud-amd64")
    assert find_kernel(boot, modules) is None


def test_characters_map_to_us_layout_key_chords() -> None:
    assert keys_for("7") == ["7"]
    assert keys_for("a") == ["a"]
    assert keys_for("Q") == ["shift", "q"]
    assert keys_for("\n") == ["ret"]
    assert keys_for("(") == ["shift", "9"]
    with pytest.raises(ValueError, match="no US-layout key"):
        keys_for("\x1d")


def test_boot_keyboard_reports_decode_to_the_typed_text() -> None:
    shift = 0x02
    reports = [
        bytes([0, 0, 0x1E, 0, 0, 0, 0, 0]),  # 1
        bytes(8),
        bytes([shift, 0, 0, 0, 0, 0, 0, 0]),
        bytes([shift, 0, 0x04, 0, 0, 0, 0, 0]),  # A
        bytes(8),
        bytes([0, 0, 0x27, 0, 0, 0, 0, 0]),  # 0
        bytes([0, 0, 0x27, 0x28, 0, 0, 0, 0]),  # 0 still held, Enter pressed
        bytes(8),
    ]
    assert decode_boot_reports(reports) == "1A0\n"


def nested_function_is_refused() -> None:
    def inner() -> None:
        return None

    with pytest.raises(TypeError, match="module-level"):
        function_ref(inner)


def test_only_module_level_functions_can_be_shipped_to_the_guest() -> None:
    nested_function_is_refused()
    ref = function_ref(make_kernel)
    assert ref == {"path": __file__, "func": "make_kernel"}


def test_a_missing_qemu_is_reported_as_a_reason_not_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty directory: no qemu, no busybox
    reason = find_prerequisites()
    assert isinstance(reason, str)
    assert "qemu-system-x86_64" in reason or "virtme-ng" in reason
