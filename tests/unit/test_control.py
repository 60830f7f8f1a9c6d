"""The control channel in-process: every request gets one reply, nothing crashes it.

The commands run against a real, not started :class:`Daemon` (real journal file,
real station); nothing here connects to a broker.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from scanfleet.daemon.core.config import Config
from scanfleet.daemon.remote.control import ControlChannel, RateLimiter
from scanfleet.daemon.runner import Daemon, build_daemon

PREFIX = "scanfleet/v1/s1/dev-1"
SAFE_COMMANDS = ["status", "devices", "resend", "rebind", "diagnostics", "rotate-cert", "station"]
"""Every command but ``restart`` (which would SIGTERM the test process)."""
RESULTS = {"applied", "probation", "rejected", "rolled_back", "cleared", "unchanged"}
FIXTURE_OK = [HealthCheck.function_scoped_fixture]


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    state = tmp_path_factory.mktemp("state")
    config = Config.model_validate(
        {
            "identity": {"site": "s1", "device": "dev-1"},
            "paths": {"state_dir": str(state)},
            "broker": {"url": "mqtt://127.0.0.1:1"},
        }
    )
    d = build_daemon(config)
    for n in range(5):
        d.journal.append({"type": "scan", "value": f"code-{n}"})
    yield d
    for worker in d.workers.values():  # pushed configs may have bound virtual devices
        worker.stop()
    d.publisher.stop()  # never started: closes its wake-up socket pair
    d.journal.close()
    logging.getLogger().removeHandler(d.recent_log)


def replies(channel: ControlChannel) -> list[tuple[str, dict[str, Any], Properties | None]]:
    return [(t, json.loads(p), props) for t, p, _, props in channel.take_outgoing()]


def request_props(correlation: bytes) -> Properties:
    props = Properties(PacketTypes.PUBLISH)
    props.CorrelationData = correlation
    props.ResponseTopic = f"{PREFIX}/cmd/status/response"
    return props


def test_status_reply_carries_the_correlation_data(daemon: Daemon) -> None:
    channel = daemon.control
    channel.take_outgoing()
    channel.handle(f"{PREFIX}/cmd/status", b"", request_props(b"req-1"))
    [(topic, body, props)] = replies(channel)
    assert topic == f"{PREFIX}/cmd/status/response"
    assert props is not None
    assert getattr(props, "CorrelationData", None) == b"req-1"
    assert body["ok"] is True
    assert body["result"]["journal"]["last_seq"] == 5


def test_unknown_and_malformed_commands_get_error_replies(daemon: Daemon) -> None:
    channel = daemon.control
    channel.take_outgoing()
    channel.handle(f"{PREFIX}/cmd/format-disk", b"{}", None)
    channel.handle(f"{PREFIX}/cmd/resend", b"not json", None)
    channel.handle(f"{PREFIX}/cmd/resend", b'{"from_seq": "1", "to_seq": 2}', None)
    codes = [body["error"]["code"] for _, body, _ in replies(channel)]
    assert codes == ["unknown_command", "bad_request", "bad_request"]


def test_resend_republishes_the_range_from_the_journal(daemon: Daemon) -> None:
    channel = daemon.control
    channel.take_outgoing()
    channel.handle(f"{PREFIX}/cmd/resend", b'{"from_seq": 2, "to_seq": 4}', None)
    out = channel.take_outgoing()
    batches = [json.loads(p) for t, p, _, _ in out if t.endswith("/scans")]
    assert [(b["first_seq"], b["last_seq"]) for b in batches] == [(2, 4)]
    assert [s["value"] for s in batches[0]["scans"]] == ["code-1", "code-2", "code-3"]
    reply = json.loads(out[-1][1])
    assert reply["result"]["records"] == 3


def test_diagnostics_redact_the_identity_in_log_lines(daemon: Daemon) -> None:
    logging.getLogger("scanfleet.test").warning("device dev-1 at site s1 misbehaves")
    result = daemon.commands.run("diagnostics", {})
    assert any("<device> at site <site>" in line for line in result["log"])
    assert not any("dev-1" in line for line in result["log"])


def test_rate_limit_refills_over_time() -> None:
    limiter = RateLimiter(burst=2, per_minute=60)
    assert [limiter.allow("x", now=0.0) for _ in range(3)] == [True, True, False]
    assert limiter.allow("y", now=0.0), "buckets are per command"
    assert limiter.allow("x", now=1.0)


def test_a_flood_of_requests_is_answered_rate_limited_not_dropped(daemon: Daemon) -> None:
    channel = ControlChannel(
        "s1", "dev-1", commands=daemon.commands.run, on_config=lambda p: None, wake=lambda: None
    )
    for _ in range(15):
        channel.handle(f"{PREFIX}/cmd/devices", b"", None)
    bodies = [body for _, body, _ in replies(channel)]
    assert len(bodies) == 15
    assert [b["ok"] for b in bodies].count(False) == 5
    assert all(b["error"]["code"] == "rate_limited" for b in bodies if not b["ok"])


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)
payloads = st.one_of(
    st.binary(max_size=200),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.fixed_dictionaries(
        {"from_seq": json_values, "to_seq": json_values, "device": json_values}
    ).map(lambda v: json.dumps(v).encode()),
)


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(name=st.sampled_from([*SAFE_COMMANDS, "", "x" * 300, "ümlaut"]), payload=payloads)
def test_fuzzed_commands_always_get_exactly_one_reply(
    daemon: Daemon, name: str, payload: bytes
) -> None:
    channel = ControlChannel(
        "s1", "dev-1", commands=daemon.commands.run, on_config=lambda p: None, wake=lambda: None
    )
    channel.handle(f"{PREFIX}/cmd/{name}", payload, request_props(b"c"))
    out = [json.loads(p) for t, p, _, _ in channel.take_outgoing() if t.endswith("/response")]
    assert len(out) == 1
    assert out[0]["command"] == name
    assert out[0]["ok"] or out[0]["error"]["code"] != "failed", out[0]


desired = st.fixed_dictionaries(
    {"version": st.integers(min_value=-2, max_value=10**6), "config": json_values},
    optional={
        "mode": st.sampled_from(["overlay", "replace", "other"]),
        "probation_s": st.floats(allow_nan=True),
        "schema": st.text(max_size=30),
    },
)


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(payload=st.one_of(st.binary(max_size=200), desired.map(lambda d: json.dumps(d).encode())))
def test_fuzzed_config_documents_always_get_a_report(daemon: Daemon, payload: bytes) -> None:
    reports = daemon.remote.handle(payload, daemon.file_config)
    assert reports.result in {
        "applied",
        "probation",
        "rejected",
        "rolled_back",
        "cleared",
        "unchanged",
    }
    if reports.result == "rejected":
        assert reports.errors
    # Whatever was pushed, the running config is a valid Config for the same identity.
    assert daemon.config.identity == daemon.file_config.identity


def test_asyncapi_document_references_existing_schemas_of_every_topic() -> None:
    docs = Path(__file__).resolve().parents[2] / "docs"
    text = (docs / "asyncapi.yaml").read_text(encoding="utf-8")
    refs = set(re.findall(r'\$ref: "(schema/[a-z-]+\.schema\.json)"', text))
    assert refs, "the document points at the generated schemas"
    assert all((docs / ref).exists() for ref in refs), refs
    for name in ["scan-batch", "state", "health", "desired-config", "config-reported"]:
        assert f"schema/{name}.schema.json" in refs, name
    assert "schema/cmd-response.schema.json" in refs
    for topic in ["scans", "state", "health", "config", "config/reported", "cmd/{name}"]:
        assert f'address: "scanfleet/v1/{{site}}/{{device}}/{topic}"' in text, topic
