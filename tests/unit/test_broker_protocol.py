"""MQTT version choice, broker URL lists and credentials (issue 18), without a broker."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from scanfleet.daemon.commands.run import register
from scanfleet.daemon.core.config import BrokerConfig, parse_config
from scanfleet.daemon.core.errors import ConfigError
from scanfleet.daemon.publish.broker_protocol import ProtocolMemory
from scanfleet.daemon.remote.control import CommandError, ControlChannel, take_request_id

URL = "mqtt://broker.example:1883"
PW = "p"  # a test password


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def test_auto_tries_5_then_3_1_1_and_trusts_a_fallback_until_the_reprobe(tmp_path: Path) -> None:
    clock = Clock()
    path = tmp_path / "broker-protocol.json"
    memory = ProtocolMemory(path, 3600, clock)
    assert memory.attempts(URL, "auto") == ["5", "3.1.1"]
    assert memory.attempts(URL, "5") == ["5"]
    assert memory.attempts(URL, "3.1.1") == ["3.1.1"]
    memory.remember(URL, "3.1.1", probed=True)
    assert json.loads(path.read_text())[URL]["protocol"] == "3.1.1"
    # A restart reads the file: no refused MQTT 5 attempt again.
    memory = ProtocolMemory(path, 3600, clock)
    assert memory.attempts(URL, "auto") == ["3.1.1"]
    assert not memory.reprobe_due(URL)
    assert memory.attempts("mqtt://other:1883", "auto") == ["5", "3.1.1"]
    clock.now += 3600
    assert memory.reprobe_due(URL)
    assert memory.attempts(URL, "auto") == ["5", "3.1.1"]
    memory.remember(URL, "3.1.1", probed=True)  # the re-probe fell back again
    assert not memory.reprobe_due(URL)
    memory.remember(URL, "5", probed=True)  # the broker was upgraded
    assert memory.attempts(URL, "auto") == ["5", "3.1.1"]
    assert not memory.reprobe_due(URL)


@pytest.mark.parametrize("content", ["not json", "[1, 2]", '{"u": {"protocol": "4"}}'])
def test_a_damaged_memory_file_costs_only_a_probe(tmp_path: Path, content: str) -> None:
    path = tmp_path / "broker-protocol.json"
    path.write_text(content)
    assert ProtocolMemory(path, 3600).attempts("u", "auto") == ["5", "3.1.1"]


def test_url_takes_one_url_or_an_ordered_list() -> None:
    one = parse_config('[broker]\nurl = "mqtt://a:1883"\n').broker
    assert one.urls == ["mqtt://a:1883"]
    many = parse_config('[broker]\nurl = ["mqtts://a:8883", "mqtts://b"]\n').broker
    assert many.urls == ["mqtts://a:8883", "mqtts://b"]
    assert (many.host, many.port, many.tls) == ("a", 8883, True)
    assert many.at("mqtts://b").port == 8883
    with pytest.raises(ConfigError, match=r"broker\.url"):
        parse_config("[broker]\nurl = []\n")
    with pytest.raises(ConfigError, match=r"broker\.url"):
        parse_config('[broker]\nurl = ["mqtt://user:pw@a:1883"]\n')
    with pytest.raises(ConfigError, match=r"broker\.protocol"):
        parse_config('[broker]\nprotocol = "4"\n')


def test_credentials_come_from_the_config_a_file_or_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SCANFLEET_BROKER_USERNAME", raising=False)
    monkeypatch.delenv("SCANFLEET_BROKER_PASSWORD", raising=False)
    assert BrokerConfig().credentials() == (None, None)
    secret = tmp_path / "password"
    secret.write_text("s3cret\n")
    assert BrokerConfig(username="u", password_file=secret).credentials() == ("u", "s3cret")
    monkeypatch.setenv("SCANFLEET_BROKER_USERNAME", "env-user")
    monkeypatch.setenv("SCANFLEET_BROKER_PASSWORD", "env-pw")
    assert BrokerConfig().credentials() == ("env-user", "env-pw")
    assert BrokerConfig(username="u", password=PW).credentials() == ("u", PW)
    with pytest.raises(ValueError, match="not both"):
        BrokerConfig(password=PW, password_file=secret)


def _run_args(argv: list[str]) -> object:
    import argparse

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    return parser.parse_args(["run", *argv])


def test_run_broker_is_repeatable_and_demo_uses_the_config_files_broker(tmp_path: Path) -> None:
    from scanfleet.daemon.commands.run import _load

    config_file = tmp_path / "scanfleet.toml"
    config_file.write_text('[broker]\nurl = "mqtt://site-broker:1883"\nprotocol = "3.1.1"\n')
    config, path = _load(_run_args(["--demo", "--config", str(config_file)]))  # type: ignore[arg-type]
    assert path is None
    assert config.broker.urls == ["mqtt://site-broker:1883"]
    assert config.broker.protocol == "3.1.1"
    assert config.identity.site == "demo"
    config, _ = _load(
        _run_args(["--demo", "--broker", "mqtt://a:1", "--broker", "mqtt://b:2"])  # type: ignore[arg-type]
    )
    assert config.broker.urls == ["mqtt://a:1", "mqtt://b:2"]
    with pytest.raises(ConfigError, match=r"broker\.url"):
        _load(_run_args(["--demo", "--broker", "ftp://x"]))  # type: ignore[arg-type]


def test_a_3_1_1_request_is_answered_on_its_own_response_topic() -> None:
    channel = ControlChannel(
        "s1",
        "dev-1",
        commands=lambda name, args: {"echo": args},
        on_config=lambda b: None,
        wake=lambda: None,
    )
    channel.handle("scanfleet/v1/s1/dev-1/cmd/status", b'{"request_id": "ab12", "x": 1}', None)
    [(topic, payload, _, _)] = channel.take_outgoing()
    assert topic == "scanfleet/v1/s1/dev-1/cmd/status/response/ab12"
    body = json.loads(payload)
    assert body["request_id"] == "ab12"
    assert body["result"] == {"echo": {"x": 1}}, "request_id is not passed to the command"
    channel.handle("scanfleet/v1/s1/dev-1/cmd/status", b'{"request_id": "../../x"}', None)
    [(topic, payload, _, _)] = channel.take_outgoing()
    assert topic == "scanfleet/v1/s1/dev-1/cmd/status/response"
    assert json.loads(payload)["error"]["code"] == "bad_request"
    with pytest.raises(CommandError):
        take_request_id({"request_id": "a" * 65})


def test_diagnostics_never_carry_the_broker_password(tmp_path: Path) -> None:
    import logging

    from scanfleet.daemon.core.config import Config
    from scanfleet.daemon.runner import build_daemon

    config = Config.model_validate(
        {
            "identity": {"site": "s1", "device": "dev-pw"},
            "paths": {"state_dir": str(tmp_path)},
            "broker": {"url": "mqtt://127.0.0.1:1", "username": "u", "password": "hunter2"},
        }
    )
    daemon = build_daemon(config)
    try:
        # The path a remote "diagnostics" command takes: run() redacts the whole reply.
        bundle = daemon.commands.run("diagnostics", {})
        assert "hunter2" not in json.dumps(bundle)
        assert bundle["config"]["broker"]["password"] == "<redacted>"  # noqa: S105
    finally:
        daemon.publisher.stop()
        daemon.journal.close()
        logging.getLogger().removeHandler(daemon.recent_log)
