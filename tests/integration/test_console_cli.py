"""``scanfleet hub console`` and ``hub user`` from the command line: TLS, refusals, accounts."""

from __future__ import annotations

import http.client
import ssl
from pathlib import Path

import pytest

from scanfleet.daemon.cli import main
from scanfleet.hub.db import connect, upgrade
from support.console import ConsoleServer, add_user
from support.pki import make_fleet

pytestmark = pytest.mark.integration


def test_the_console_serves_https_with_a_certificate_and_secure_cookies(
    hub_database: str, tmp_path: Path
) -> None:
    with connect(hub_database) as conn:
        upgrade(conn)
    add_user(hub_database, "admin", "a long password", "admin")
    fleet = make_fleet(tmp_path)  # its server certificate names 127.0.0.1
    paths = fleet.ca.paths
    server = ConsoleServer(
        hub_database,
        tmp_path,
        "--tls-cert",
        str(paths.server_cert),
        "--tls-key",
        str(paths.server_key),
        "--fleet-dir",
        str(fleet.root),
    ).start()
    try:
        context = ssl.create_default_context(cafile=str(fleet.ca_file))
        https = http.client.HTTPSConnection("127.0.0.1", server.port, context=context, timeout=30)
        https.request("GET", "/login")
        answer = https.getresponse()
        answer.read()
        assert answer.status == 200
        assert "max-age" in answer.headers["Strict-Transport-Security"]
        assert "frame-ancestors 'none'" in answer.headers["Content-Security-Policy"]
        https.request(
            "POST",
            "/login",
            body="username=admin&password=a+long+password",
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        answer = https.getresponse()
        answer.read()
        assert answer.status == 303
        cookie = answer.headers["Set-Cookie"]
        assert "Secure" in cookie
        assert "HttpOnly" in cookie
        assert "SameSite=strict" in cookie
        https.close()
    finally:
        server.stop()


def test_plain_http_is_refused_off_loopback_and_an_unmigrated_database_is_named(
    hub_database: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["hub", "console", "--database", hub_database]) == 1
    assert "hub db upgrade" in capsys.readouterr().err
    with connect(hub_database) as conn:
        upgrade(conn)
    assert main(["hub", "console", "--database", hub_database, "--listen", "0.0.0.0:8443"]) == 1
    assert "refusing plain HTTP" in capsys.readouterr().err


def test_accounts_from_the_command_line(
    hub_database: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    with connect(hub_database) as conn:
        upgrade(conn)
    add_user(hub_database, "wang", "password of ten", "operator", "store-1", "store-2")
    assert main(["hub", "user", "ls", "--database", hub_database]) == 0
    assert "wang  operator  store-1,store-2" in capsys.readouterr().out
    assert main(["hub", "user", "disable", "wang", "--database", hub_database]) == 0
    assert main(["hub", "user", "ls", "--database", hub_database]) == 0
    assert "disabled" in capsys.readouterr().out
    monkeypatch.setattr("sys.stdin", __import__("io").StringIO("short\n"))
    args = ["hub", "user", "add", "li", "--role", "viewer", "--password-stdin"]
    assert main([*args, "--database", hub_database]) == 1
    assert "at least 10 characters" in capsys.readouterr().err
