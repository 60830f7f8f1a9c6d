"""``scanfleet hub console`` (serve the web console) and ``scanfleet hub user`` (accounts)."""

from __future__ import annotations

import argparse
import getpass
import logging
import os
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from scanfleet.hub.cli import add_database_argument
from scanfleet.hub.db import HubDatabaseError, connect, require_current, resolve_dsn

log = logging.getLogger(__name__)

FLEET_DIR_ENV = "SCANFLEET_FLEET_DIR"


def register(subparsers: Any) -> None:
    """Add ``console`` and ``user``."""
    serve: argparse.ArgumentParser = subparsers.add_parser(
        "console",
        help="serve the fleet console (web) on the hub database",
        description=(
            "The web console for IT staff: fleet overview, device pages and actions, "
            "enrollment claims with QR codes, completeness/audit, people and roles. "
            "Serve it over TLS (--tls-cert/--tls-key) or behind a reverse proxy that "
            "terminates TLS (see docs/console.md)."
        ),
    )
    add_database_argument(serve)
    serve.add_argument("--listen", default="127.0.0.1:8080", help="HOST:PORT (%(default)s)")
    serve.add_argument("--tls-cert", type=Path, help="PEM certificate chain to serve HTTPS")
    serve.add_argument("--tls-key", type=Path, help="its private key")
    serve.add_argument(
        "--behind-proxy",
        action="store_true",
        help="a reverse proxy terminates TLS: trust its X-Forwarded-* headers (from "
        "--forwarded-allow-ips) and keep cookies Secure",
    )
    serve.add_argument("--forwarded-allow-ips", default="127.0.0.1")
    serve.add_argument(
        "--fleet-dir",
        type=Path,
        default=Path(os.environ.get(FLEET_DIR_ENV, "/var/lib/scanfleet-fleet")),
        help=f"the fleet CA directory (claims, certificates); default ${FLEET_DIR_ENV}",
    )
    serve.add_argument("--broker", help="mqtts://HOST:PORT of the device listener, for actions")
    serve.add_argument("--identity", help="fleet identity the console acts as (fleet.NAME)")
    serve.add_argument("--enroll-url", help="mqtts://HOST:PORT written into claims")
    serve.add_argument("--reload-command", help="broker reload after revocation")
    serve.add_argument(
        "--admin-socket",
        type=Path,
        help="the device broker's admin socket: revocation disconnects open sessions",
    )
    serve.add_argument(
        "--offline-after", type=float, default=300.0, help="seconds unheard = offline (%(default)s)"
    )
    serve.add_argument("--push-timeout", type=float, default=180.0, help="seconds (%(default)s)")
    serve.set_defaults(func=_serve)

    user: argparse.ArgumentParser = subparsers.add_parser(
        "user", help="console accounts: add (or reset), list, disable, enable"
    )
    sub = user.add_subparsers(title="user actions", metavar="ACTION", required=True)
    add = sub.add_parser("add", help="create an account or reset its password, role and scope")
    add_database_argument(add)
    add.add_argument("username")
    add.add_argument("--role", choices=("viewer", "operator", "admin"), required=True)
    add.add_argument("--site", action="append", default=[], help="site scope (repeat); none: all")
    add.add_argument("--language", choices=("en", "zh_Hans"), default="en")
    add.add_argument("--timezone", default="Asia/Shanghai")
    add.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    add.set_defaults(func=_user_add)
    ls = sub.add_parser("ls", help="list accounts")
    add_database_argument(ls)
    ls.set_defaults(func=_user_ls)
    for name in ("disable", "enable"):
        p = sub.add_parser(name, help=f"{name} an account")
        add_database_argument(p)
        p.add_argument("username")
        p.set_defaults(func=_user_toggle, disable=name == "disable")


def _fail(message: str) -> int:
    print(f"scanfleet hub: {message}", file=sys.stderr)
    return 1


def _serve(args: argparse.Namespace) -> int:
    try:
        import uvicorn

        from scanfleet.hub.console.app import create_app
        from scanfleet.hub.console.web import Settings
    except ImportError as err:
        return _fail(f"the console needs its extra: pip install 'scanfleet[console]' ({err})")

    try:
        dsn = resolve_dsn(args.database)
        with connect(dsn) as conn:
            require_current(conn)
    except HubDatabaseError as err:
        return _fail(str(err))
    if bool(args.tls_cert) != bool(args.tls_key):
        return _fail("--tls-cert and --tls-key go together")
    parts = urlsplit(f"//{args.listen}")
    if not parts.hostname or parts.port is None:
        return _fail(f"--listen: expected HOST:PORT, got {args.listen!r}")
    tls = args.tls_cert is not None
    loopback = parts.hostname in ("127.0.0.1", "::1", "localhost")
    if not (tls or args.behind_proxy or loopback):
        return _fail(
            "refusing plain HTTP on a non-loopback address: give --tls-cert/--tls-key "
            "or put a TLS reverse proxy in front (--behind-proxy)"
        )
    settings = Settings(
        database=dsn,
        fleet_dir=args.fleet_dir,
        broker=args.broker,
        identity=args.identity,
        enroll_url=args.enroll_url,
        reload_command=args.reload_command,
        admin_socket=args.admin_socket,
        # Plain HTTP is only allowed on loopback (development, tests): a Secure cookie
        # would not come back there.
        secure_cookies=tls or args.behind_proxy,
        offline_after_s=args.offline_after,
        push_timeout_s=args.push_timeout,
    )
    log.info("fleet console on %s://%s", "https" if tls else "http", args.listen)
    uvicorn.run(
        create_app(settings),
        host=parts.hostname,
        port=parts.port,
        ssl_certfile=str(args.tls_cert) if tls else None,
        ssl_keyfile=str(args.tls_key) if tls else None,
        proxy_headers=args.behind_proxy,
        forwarded_allow_ips=args.forwarded_allow_ips if args.behind_proxy else None,
        log_level="warning",
        access_log=False,
        # Open event streams never end by themselves: give them a moment, then stop.
        timeout_graceful_shutdown=5,
    )
    return 0


def _user_add(args: argparse.Namespace) -> int:
    from scanfleet.hub.console.auth import AuthError, Role, add_user

    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = getpass.getpass(f"password for {args.username}: ")
    try:
        with connect(resolve_dsn(args.database)) as conn:
            require_current(conn)
            add_user(
                conn,
                args.username,
                password,
                Role.parse(args.role),
                sites=tuple(args.site),
                language=args.language,
                timezone=args.timezone,
            )
    except (HubDatabaseError, AuthError) as err:
        return _fail(str(err))
    print(f"account {args.username}: {args.role}, sites {', '.join(args.site) or 'all'}")
    return 0


def _user_ls(args: argparse.Namespace) -> int:
    from scanfleet.hub.console.auth import users

    try:
        with connect(resolve_dsn(args.database)) as conn:
            rows = users(conn)
    except HubDatabaseError as err:
        return _fail(str(err))
    for user, disabled in rows:
        sites = ",".join(user.sites) or "*"
        print(f"{user.username}  {user.role.label}  {sites}  {'disabled' if disabled else ''}")
    return 0


def _user_toggle(args: argparse.Namespace) -> int:
    from scanfleet.hub.console.auth import set_disabled

    try:
        with connect(resolve_dsn(args.database)) as conn:
            found = set_disabled(conn, args.username, args.disable)
    except HubDatabaseError as err:
        return _fail(str(err))
    return 0 if found else _fail(f"no account {args.username}")
