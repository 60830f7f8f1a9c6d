"""The console acting on a live terminal: config push and resend of a gap, end to end.

Real pieces only: mosquitto with the generated fleet configuration, the enrollment
service, a daemon (virtual scanner) enrolled from a claim, ``scanfleet hub ingest`` as
a backend identity into a private PostgreSQL, the console as its own fleet identity, and
Debian's Chromium driving the pages.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from scanfleet.daemon.core.config import Config
from scanfleet.daemon.remote.enroll import CLAIM_FILE
from scanfleet.daemon.runner import build_daemon
from scanfleet.drivers import virtual
from scanfleet.hub.db import connect, upgrade
from scanfleet.provisioning.ca import Role
from scanfleet.provisioning.claims import create_claim
from scanfleet.provisioning.service import EnrollmentService
from support.broker import MOSQUITTO_DIRS
from support.console import ConsoleServer, add_user, browser
from support.hub import query, start_ingest, stop, wait_for
from support.pki import FleetBroker, make_fleet
from support.postgres import PostgresCluster
from support.prereq import require_executable

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SITE = "store-3"
DEVICE = "sf-0000000000c3"
CHANNEL = "console-fleet-counter-3"
PASSWORD = "operator password"  # noqa: S105 (test account)


def _wait(predicate: Any, timeout: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


@pytest.fixture(scope="module")
def live(
    postgres_cluster: PostgresCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Any]]:
    """Broker, enrollment service, enrolled daemon, hub ingest and console, for the module."""
    work = tmp_path_factory.mktemp("console-fleet")
    fleet = make_fleet(work)
    svc = fleet.role(Role.FLEET, "svc")
    fleet.role(Role.FLEET, "console")
    fleet.role(Role.BACKEND, "hub")
    broker = FleetBroker(require_executable("mosquitto", *MOSQUITTO_DIRS), work / "broker", fleet)
    broker.start()
    url = f"mqtts://{broker.host}:{broker.port}"
    service = EnrollmentService(
        fleet.ca,
        host=broker.host,
        port=broker.service_port,
        admin_socket=broker.admin_socket,
        cert_file=str(svc.cert),
        key_file=str(svc.key),
        broker_url=url,
    )
    service_thread = threading.Thread(target=service.run, daemon=True)
    service_thread.start()

    dsn = postgres_cluster.dsn(postgres_cluster.create_database("console_fleet"))
    with connect(dsn) as conn:
        upgrade(conn)
    add_user(dsn, "operator", PASSWORD, "operator")
    # Automatic repair waits an hour here: the resend that repairs the gap is the one the
    # operator asks for in the console. The sweep still turns deleted rows into gaps.
    ingest = start_ingest(
        dsn,
        url,
        work,
        "--identity",
        "hub",
        "--fleet-dir",
        str(fleet.root),
        "--repair-after",
        "3600",
        "--sweep-interval",
        "1",
    )

    state_dir = work / "device"
    state_dir.mkdir()
    _, claim = create_claim(fleet.ca.registry, SITE, broker.host, broker.enroll_port)
    (state_dir / CLAIM_FILE).write_text(claim.token + "\n", encoding="utf-8")
    virtual.reset(CHANNEL)
    daemon = build_daemon(
        Config.model_validate(
            {
                "identity": {"site": SITE, "device": DEVICE},
                "paths": {"state_dir": str(state_dir)},
                "broker": {"url": "mqtts://127.0.0.1:1", "ca_file": str(fleet.ca_file)},
                "station": {"operation": "retail_sale"},
                "devices": [{"name": "counter", "driver": "virtual", "channel": CHANNEL}],
            }
        ),
        health_interval=1.0,
    )
    daemon.start()
    server: ConsoleServer | None = None
    try:
        assert _wait(lambda: daemon.control.connected), "daemon never connected"
        server = ConsoleServer(
            dsn,
            work,
            "--fleet-dir",
            str(fleet.root),
            "--broker",
            url,
            "--identity",
            "console",
            "--enroll-url",
            f"mqtts://{broker.host}:{broker.enroll_port}",
            "--push-timeout",
            "60",
        ).start()
        yield {"dsn": dsn, "daemon": daemon, "server": server, "work": work}
    finally:
        if server is not None:
            server.stop()
        daemon.shutdown()
        stop(ingest)
        service.stop()
        service_thread.join(10)
        broker.close()
        virtual.reset(CHANNEL)


@pytest.fixture(scope="module")
def page(live: dict[str, Any]) -> Iterator[Any]:
    """An operator signed in, in Debian's Chromium."""
    for chromium in browser():
        context = chromium.new_context()
        tab = context.new_page()
        url = live["server"].url
        tab.goto(f"{url}/login")
        tab.fill("input[name=username]", "operator")
        tab.fill("input[name=password]", PASSWORD)
        tab.click("button[type=submit]")
        tab.wait_for_url(f"{url}/")
        yield tab
        context.close()


def _scan(count: int, start: int) -> None:
    for i in range(start, start + count):
        virtual.inject(CHANNEL, f"8{i:019d}\r".encode())


def _held(dsn: str) -> int:
    return int(query(dsn, "SELECT count(*) FROM records WHERE device = %s", (DEVICE,))[0][0])


def test_a_config_pushed_from_the_console_is_validated_previewed_and_applied(
    live: dict[str, Any], page: Any
) -> None:
    dsn, url = live["dsn"], live["server"].url
    wait_for(
        lambda: bool(query(dsn, "SELECT 1 FROM devices WHERE device = %s", (DEVICE,))),
        60,
        "the hub to know the device",
    )
    page.goto(f"{url}/devices/{DEVICE}")
    # An invalid value is refused before anything is published.
    page.fill("textarea[name=sections]", '[station]\noperation = "juggling"')
    page.click("button[name=step][value=preview]")
    assert "station.operation" in page.inner_text("#push-result")
    assert page.locator("#push-confirm").count() == 0
    page.fill("textarea[name=sections]", '[station]\noperation = "receiving"')
    page.fill("input[name=probation_s]", "1")
    page.click("button[name=step][value=preview]")
    assert '+    "operation": "receiving"' in page.inner_text("#push-result pre.diff")
    page.click("#push-confirm")
    page.wait_for_selector("#push-outcome", timeout=90_000)
    assert page.inner_text("#push-outcome") == "Result: applied"
    assert str(live["daemon"].config.station.operation) == "receiving"
    history = query(dsn, "SELECT version, result, pushed_by FROM console_config_pushes")
    assert history == [(1, "applied", "operator")]
    assert query(dsn, "SELECT result FROM console_audit WHERE action = 'config.push'") == [
        ("applied",)
    ]


def test_a_resend_requested_from_the_console_repairs_the_gap(
    live: dict[str, Any], page: Any
) -> None:
    dsn, url = live["dsn"], live["server"].url
    before = _held(dsn)
    _scan(10, 1000)
    wait_for(lambda: _held(dsn) >= before + 10, 60, "the scans in the hub")
    last = int(query(dsn, "SELECT max(seq) FROM records WHERE device = %s", (DEVICE,))[0][0])
    first_gone, last_gone = last - 6, last - 4
    with connect(dsn) as conn:
        for table in ("records", "record_ids"):
            conn.execute(
                f"DELETE FROM {table} WHERE device = %s AND seq BETWEEN %s AND %s",  # noqa: S608
                (DEVICE, first_gone, last_gone),
            )
    gap = f"{first_gone}-{last_gone}"
    wait_for(
        lambda: bool(
            query(
                dsn,
                "SELECT 1 FROM gaps WHERE device = %s AND from_seq = %s AND to_seq = %s"
                " AND status = 'open'",
                (DEVICE, first_gone, last_gone),
            )
        ),
        30,
        "the hub to open a gap for the deleted rows",
    )
    page.goto(f"{url}/devices/{DEVICE}")
    assert page.inner_text(f"tr[data-gap='{gap}'] td:nth-child(2)") == "open"
    page.click(f"button[data-resend-gap='{gap}']")
    page.wait_for_selector("#result")
    assert page.inner_text("#result p") == "ok"

    def repaired() -> bool:
        page.goto(f"{url}/devices/{DEVICE}")
        row = page.locator(f"tr[data-gap='{gap}'] td:nth-child(2)")
        return row.count() == 1 and row.inner_text() == "repaired"

    assert _wait(repaired, 60), page.inner_text("main")
    back = query(
        dsn,
        "SELECT count(*) FROM records WHERE device = %s AND seq BETWEEN %s AND %s",
        (DEVICE, first_gone, last_gone),
    )
    assert back == [(3,)]
    assert query(dsn, "SELECT target, result FROM console_audit WHERE action = 'cmd.resend'") == [
        (f"{SITE}/{DEVICE}", "ok")
    ]
    # In the hub's books like one of its own repairs.
    assert query(
        dsn, "SELECT from_seq, to_seq, status FROM resend_requests WHERE device = %s", (DEVICE,)
    ) == [(first_gone, last_gone, "ok")]


def test_the_overview_updates_live_and_status_and_diagnostics_answer(
    live: dict[str, Any], page: Any
) -> None:
    url = live["server"].url
    page.goto(f"{url}/?q={DEVICE}")
    page.wait_for_selector("#live.on")  # the event stream is open
    assert page.get_attribute("#live", "data-updated") is None
    _scan(1, 5000)
    page.wait_for_selector("#live[data-updated]", timeout=30_000)
    assert page.locator(f"tr[data-device='{DEVICE}'] .state.on").count() == 1
    page.goto(f"{url}/devices/{DEVICE}")
    page.click("button[data-command=status]")
    page.wait_for_selector("#result")
    assert page.inner_text("#result p") == "ok"
    assert f'"device": "{DEVICE}"' in page.inner_text("#result pre")
    page.click("button[data-command=diagnostics]")
    page.wait_for_selector("#result")
    assert page.inner_text("#result p") == "ok"
    page.fill("input[name=device_name]", "counter")
    page.click("button[data-command=rebind]")
    page.wait_for_selector("#result")
    assert page.inner_text("#result p") == "ok"
    commands = query(
        live["dsn"], "SELECT action, result FROM console_audit WHERE action LIKE 'cmd.%%'"
    )
    assert {("cmd.status", "ok"), ("cmd.diagnostics", "ok"), ("cmd.rebind", "ok")} <= set(commands)
