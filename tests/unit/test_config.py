"""The daemon configuration: defaults, validation, and errors that name key and line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from scanfleet.daemon.core.config import (
    Config,
    example_config,
    load_config,
    locate_keys,
    parse_config,
)
from scanfleet.daemon.core.errors import ConfigError
from scanfleet.daemon.core.model import Operation
from scanfleet.drivers.serial import SerialDeviceConfig

BROKEN = """\
[identity]
site = "bad/site"

[broker]
urll = "mqtt://x"
keepalive = 1

[[devices]]
name = "a"
driver = "serial"
port = "/dev/ttyS0"
baudrate = 1234

[[devices]]
name = "b"
driver = "laserdisc"

[[devices]]
name = "c"
driver = "serial"
framing = "suffix"
port = "/dev/x"
"""


def test_empty_file_is_a_valid_config_with_defaults() -> None:
    config = parse_config("")
    assert config == Config()
    assert config.broker.url == "mqtt://localhost:1883"
    assert config.broker.port == 1883
    assert config.station.operation is Operation.RETAIL_SALE
    assert config.journal.retention_days == 100
    assert config.devices == []


def test_example_config_is_valid_and_binds_a_serial_scanner() -> None:
    config = parse_config(example_config(), source="example")
    assert config.identity.site == "pharmacy-001"
    (device,) = config.devices
    assert isinstance(device, SerialDeviceConfig)
    assert device.framing == "cr"
    assert device.baudrate == 115200


def test_every_problem_is_reported_with_key_path_and_line() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(BROKEN, source="broken.toml")
    found = {(p.path, p.line) for p in info.value.problems}
    assert ("identity.site", 2) in found
    assert ("broker.urll", 5) in found
    assert ("broker.keepalive", 6) in found
    assert ("devices[0].baudrate", 12) in found
    assert ("devices[1].driver", 16) in found
    assert ("devices[2]", 18) in found
    messages = {p.path: p.message for p in info.value.problems}
    assert messages["broker.urll"] == "unknown key"
    assert "suffix_hex" in messages["devices[2]"]


def test_toml_syntax_error_names_its_line() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config('[broker]\nurl = "mqtt://x\n', source="syntax.toml")
    (problem,) = info.value.problems
    assert problem.line == 2
    assert "TOML syntax" in problem.message


def test_duplicate_device_names_are_refused() -> None:
    text = '[[devices]]\nname="a"\ndriver="virtual"\n[[devices]]\nname="a"\ndriver="virtual"\n'
    with pytest.raises(ConfigError, match="used twice"):
        parse_config(text)


def test_serial_device_needs_exactly_one_of_port_and_usb() -> None:
    for extra in ("", 'port = "/dev/ttyS0"\nusb = "1a86:7523"\n'):
        with pytest.raises(ConfigError, match="exactly one"):
            parse_config(f'[[devices]]\nname = "s"\ndriver = "serial"\n{extra}')
    config = parse_config('[[devices]]\nname = "s"\ndriver = "serial"\nusb = "1A86:7523:ABC"\n')
    device = config.devices[0]
    assert isinstance(device, SerialDeviceConfig)
    assert device.usb == "1a86:7523:ABC".lower()


def test_broker_url_gives_host_port_and_tls() -> None:
    config = parse_config('[broker]\nurl = "mqtts://broker.example:8884"\n')
    assert (config.broker.host, config.broker.port, config.broker.tls) == (
        "broker.example",
        8884,
        True,
    )
    assert parse_config('[broker]\nurl = "mqtts://b"\n').broker.port == 8883


def test_key_locator_follows_tables_arrays_and_skips_multiline_values() -> None:
    text = (
        "# comment\n"
        "[station]\n"
        'name = "x"  # trailing [brackets]\n'
        "notes = '''\n"
        "[not_a_table]\n"
        "'''\n"
        "[[devices]]\n"
        "list = [\n"
        "  1,\n"
        "]\n"
        "[[devices]]\n"
        "a.b = 1\n"
    )
    lines = locate_keys(text)
    assert lines[("station",)] == 2
    assert lines[("station", "name")] == 3
    assert ("not_a_table",) not in lines
    assert lines[("devices", 0)] == 7
    assert lines[("devices", 0, "list")] == 8
    assert lines[("devices", 1)] == 11
    assert lines[("devices", 1, "a", "b")] == 12


def test_missing_and_unreadable_files_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="No such file"):
        load_config(tmp_path / "absent.toml")
    binary = tmp_path / "binary.toml"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(binary)


def test_config_check_cli_prints_file_line_key_message(tmp_path: Path) -> None:
    path = tmp_path / "broken.toml"
    path.write_text(BROKEN, encoding="utf-8")
    result = subprocess.run(
        [sys.executable, "-m", "scanfleet.daemon", "config", "check", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 1
    assert f"{path}:12: devices[0].baudrate:" in result.stderr
    assert f"{path}:5: broker.urll: unknown key" in result.stderr

    good = tmp_path / "good.toml"
    good.write_text(example_config(), encoding="utf-8")
    result = subprocess.run(
        [sys.executable, "-m", "scanfleet.daemon", "config", "check", str(good)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "OK" in result.stdout
