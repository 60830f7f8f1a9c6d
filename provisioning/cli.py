"""``scanfleet fleet …``: the IT staff's side: CA, claims, broker config, enrollment service."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import FrameType
from typing import Any
from urllib.parse import urlsplit

from scanfleet.daemon.core.claims import ClaimError
from scanfleet.provisioning.broker import BrokerLayout, write_broker_config
from scanfleet.provisioning.broker_layout import DEFAULT_MAX_PACKET
from scanfleet.provisioning.ca import CAError, FleetCA, Role, role_common_name, write_private
from scanfleet.provisioning.claims import claim_qr_png, claim_qr_text, create_claim
from scanfleet.provisioning.inventory import (
    collect_states,
    inventory,
    known_devices,
    render_table,
)
from scanfleet.provisioning.remote import (
    FleetClient,
    build_document,
    diff,
    health_table,
    missing_ranges,
    reported_last_seq,
)
from scanfleet.provisioning.revocation import Revoker, run_reload
from scanfleet.provisioning.service import EnrollmentService

DEFAULT_FLEET_DIR = Path(os.environ.get("SCANFLEET_FLEET_DIR", "/var/lib/scanfleet-fleet"))


def register(subparsers: Any) -> None:
    """Add ``fleet`` and its actions."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "fleet", help="fleet CA, claims, broker config, enrollment service, inventory"
    )
    parser.add_argument(
        "--fleet-dir",
        type=Path,
        default=DEFAULT_FLEET_DIR,
        help="CA, registry and identities (default: $SCANFLEET_FLEET_DIR or %(default)s)",
    )
    sub = parser.add_subparsers(title="actions", metavar="ACTION", required=True)

    ca = sub.add_parser("ca", help="the fleet certificate authority")
    ca_sub = ca.add_subparsers(title="ca actions", metavar="ACTION", required=True)
    init = ca_sub.add_parser("init", help="create the CA key, certificate and an empty CRL")
    init.add_argument("--name", default="scanfleet fleet CA")
    init.set_defaults(func=_ca_init)

    ident = sub.add_parser("identity", help="issue a backend or fleet-service client certificate")
    ident.add_argument("--role", choices=[r.value for r in Role], required=True)
    ident.add_argument("--name", required=True)
    ident.add_argument("--days", type=int, default=365)
    ident.set_defaults(func=_identity)

    claim = sub.add_parser("claim", help="create or list enrollment claims")
    claim_sub = claim.add_subparsers(title="claim actions", metavar="ACTION", required=True)
    create = claim_sub.add_parser("create", help="a single-use claim for one site; prints it")
    create.add_argument("--site", required=True)
    create.add_argument(
        "--enroll-url", required=True, help="mqtts://HOST:PORT of the enrollment listener"
    )
    create.add_argument("--ttl-hours", type=float, default=24.0)
    create.add_argument("--device", help="bind to one device id (needed to re-enroll it)")
    create.add_argument(
        "--qr",
        nargs="?",
        const="",
        metavar="PNG",
        help="also draw the claim as a QR code on stderr and write it as a PNG "
        "(default claim-ID.png; mode 0600: it holds the secret); the terminal "
        "enrolls by reading it with its own scanner",
    )
    create.set_defaults(func=_claim_create)
    claim_ls = claim_sub.add_parser("ls", help="list claims (never their secrets)")
    claim_ls.set_defaults(func=_claim_ls)

    revoke = sub.add_parser("revoke", help="revoke certificates; rewrites the CRL")
    which = revoke.add_mutually_exclusive_group(required=True)
    which.add_argument("--device", metavar="SITE/DEVICE", help="every certificate of a device")
    which.add_argument("--serial", help="one certificate, hex serial")
    revoke.add_argument("--reason", default="unspecified")
    revoke.add_argument("--reload-command", help="e.g. 'systemctl reload mosquitto'")
    _admin_socket_arg(revoke)
    revoke.set_defaults(func=_revoke)

    crl = sub.add_parser("crl", help="renew the CRL when due (run daily from a timer)")
    crl.add_argument("--force", action="store_true", help="renew even when not due")
    crl.add_argument("--reload-command", help="e.g. 'systemctl reload mosquitto'")
    crl.set_defaults(func=_crl)

    conf = sub.add_parser(
        "broker-config",
        help="write the device and enrollment brokers' configs, ACLs and the enrollment unit",
    )
    conf.add_argument("--out", type=Path, required=True, help="directory for the files")
    conf.add_argument(
        "--host",
        action="append",
        default=[],
        help="broker host name or address for its server certificate (repeatable); "
        "the certificate is made when missing or when --host is given",
    )
    conf.add_argument("--device-port", type=int, default=8883)
    conf.add_argument("--enroll-port", type=int, default=8884)
    conf.add_argument(
        "--service-port",
        type=int,
        default=8885,
        help="enrollment broker's loopback listener for 'fleet serve' (default 8885)",
    )
    conf.add_argument("--bind", help="listen address (default: all)")
    conf.add_argument("--persistence-dir", type=Path, default=Path("/var/lib/mosquitto"))
    conf.add_argument("--max-queued-messages", type=int, default=1_000_000)
    conf.add_argument(
        "--max-packet-size",
        type=int,
        default=DEFAULT_MAX_PACKET,
        help="device broker packet limit in bytes (default 1 MiB; keep it above "
        "publisher.max_batch_bytes plus a few KiB)",
    )
    conf.add_argument(
        "--max-enroll-connections",
        type=int,
        default=200,
        help="clients at once on the anonymous enrollment listener (default 200)",
    )
    _admin_socket_arg(conf)
    conf.add_argument("--log-file", type=Path, help="default: syslog")
    conf.add_argument("--user", help="account mosquitto runs as (default: mosquitto)")
    conf.set_defaults(func=_broker_config)

    serve = sub.add_parser("serve", help="run the enrollment service")
    serve.add_argument(
        "--broker",
        required=True,
        help="mqtts://127.0.0.1:PORT of the enrollment broker's service listener (8885)",
    )
    serve.add_argument("--identity", required=True, help="fleet identity name (fleet.NAME)")
    serve.add_argument(
        "--public-broker-url",
        required=True,
        help="device listener URL given to devices, e.g. mqtts://broker.example.org:8883",
    )
    serve.add_argument(
        "--reload-command", help="run after the CRL changed, e.g. 'systemctl reload mosquitto'"
    )
    _protocol_arg(serve)
    _admin_socket_arg(serve)
    serve.set_defaults(func=_serve)

    ls = sub.add_parser("ls", help="devices: online/offline, journal depth, certificate expiry")
    _broker_args(ls)
    ls.add_argument("--json", action="store_true", help="JSON lines instead of a table")
    ls.set_defaults(func=_ls)

    config = sub.add_parser("config", help="push configuration to a device")
    config_sub = config.add_subparsers(title="config actions", metavar="ACTION", required=True)
    push = config_sub.add_parser("push", help="validate, show the diff, push, wait for the report")
    _broker_args(push)
    push.add_argument("target", metavar="SITE/DEVICE")
    push.add_argument("file", type=Path, help="JSON or TOML file with config sections")
    push.add_argument("--version", type=int, help="default: the device's current version + 1")
    push.add_argument("--mode", choices=["overlay", "replace"], default="overlay")
    push.add_argument("--probation", type=float, default=60.0, help="seconds (default 60)")
    push.add_argument("--sign-key", type=Path, help="Ed25519 private key (PEM) to sign with")
    push.add_argument("--timeout", type=float, default=120.0)
    push.set_defaults(func=_config_push)

    cmd = sub.add_parser("cmd", help="send a command to a device and print its reply")
    _broker_args(cmd)
    cmd.add_argument("target", metavar="SITE/DEVICE")
    cmd.add_argument("name", help="status, devices, resend, rebind, restart, diagnostics, …")
    cmd.add_argument("args", nargs="*", metavar="KEY=VALUE", help="values are JSON or strings")
    cmd.add_argument("--timeout", type=float, default=30.0)
    cmd.set_defaults(func=_cmd)

    health = sub.add_parser("health", help="devices with problems first (from health messages)")
    _broker_args(health)
    health.add_argument("--wait", type=float, default=5.0, help="seconds to listen")
    health.add_argument("--json", action="store_true")
    health.set_defaults(func=_health)

    gaps = sub.add_parser("gaps", help="compare a backend's received seq with the devices'")
    _broker_args(gaps)
    gaps.add_argument(
        "--received",
        type=Path,
        required=True,
        help='JSON from the backend: {"SITE/DEVICE": [[first_seq, last_seq], ...]}',
    )
    gaps.add_argument("--since", type=int, default=1, help="ignore seq below this")
    gaps.add_argument("--resend", action="store_true", help="ask devices to resend the gaps")
    gaps.add_argument("--wait", type=float, default=3.0, help="seconds to collect states")
    gaps.set_defaults(func=_gaps)


def _broker_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--broker", required=True, help="mqtts://HOST:PORT of the device listener")
    parser.add_argument("--identity", required=True, help="fleet identity name (fleet.NAME)")
    _protocol_arg(parser)


def _protocol_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--protocol",
        choices=("auto", "5", "3.1.1"),
        default="auto",
        help="MQTT version (auto: 5, or 3.1.1 when the broker refuses 5; default: auto)",
    )


def _admin_socket_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--admin-socket",
        type=Path,
        default=BrokerLayout.admin_socket,
        help="the device broker's admin socket, used to disconnect revoked identities "
        f"(default {BrokerLayout.admin_socket})",
    )


def _ca(args: argparse.Namespace) -> FleetCA:
    return FleetCA(args.fleet_dir)


def _host_port(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    if parts.scheme != "mqtts" or not parts.hostname or parts.port is None:
        raise SystemExit(f"expected mqtts://HOST:PORT, got {url!r}")
    return parts.hostname, parts.port


def _fail(message: str) -> int:
    print(f"scanfleet fleet: {message}", file=sys.stderr)
    return 1


def _ca_init(args: argparse.Namespace) -> int:
    try:
        ca = FleetCA.init(args.fleet_dir, name=args.name)
    except CAError as err:
        return _fail(str(err))
    print(f"fleet CA created: {ca.paths.ca_cert} (ship this file to devices as broker.ca_file)")
    return 0


def _identity(args: argparse.Namespace) -> int:
    try:
        cert, key = _ca(args).issue_role(Role(args.role), args.name, days=args.days)
    except CAError as err:
        return _fail(str(err))
    print(f"{role_common_name(Role(args.role), args.name)}: {cert} {key}")
    print("regenerate the broker config (fleet broker-config) and reload both brokers")
    return 0


def _claim_create(args: argparse.Namespace) -> int:
    host, port = _host_port(args.enroll_url)
    try:
        claim_id, claim = create_claim(
            _ca(args).registry,
            args.site,
            host,
            port,
            ttl=timedelta(hours=args.ttl_hours),
            device=args.device,
        )
    except (CAError, ClaimError) as err:
        return _fail(str(err))
    print(
        f"# claim {claim_id} for site {args.site}, valid {args.ttl_hours:g} h, single use",
        file=sys.stderr,
    )
    if args.qr is not None:
        png = Path(args.qr or f"claim-{claim_id}.png")
        try:
            write_private(png, claim_qr_png(claim))
        except OSError as err:
            return _fail(f"cannot write the QR code: {err}")
        # stdout stays the token alone (scripts capture it); the picture goes to stderr.
        print(claim_qr_text(claim), end="", file=sys.stderr)
        print(f"# QR code written to {png}", file=sys.stderr)
    print(claim.token)
    return 0


def _claim_ls(args: argparse.Namespace) -> int:
    now = datetime.now(UTC)
    for c in _ca(args).registry.claims():
        if c.used_at is not None:
            status = f"used {c.used_at:%Y-%m-%d %H:%M} by {c.used_by}"
        elif c.expires_at <= now:
            status = "expired"
        else:
            status = f"open until {c.expires_at:%Y-%m-%d %H:%M}Z"
        print(f"{c.id}  {c.site}  {c.device or '*'}  {status}")
    return 0


def _revoke(args: argparse.Namespace) -> int:
    ca = _ca(args)
    if args.device:
        serials = [c.serial for c in ca.registry.certs(cn=args.device) if c.revoked_at is None]
        if not serials:
            return _fail(f"no unrevoked certificate for {args.device}")
    else:
        serials = [int(args.serial, 16)]
    revoker = Revoker(ca, args.reload_command, args.admin_socket)
    try:
        cns = revoker.revoke(serials, args.reason)
    except KeyError as err:
        return _fail(str(err))
    print(f"revoked {len(serials)} certificate(s) of {', '.join(cns)}; CRL {ca.paths.crl}")
    return 0


def _crl(args: argparse.Namespace) -> int:
    ca = _ca(args)
    if args.force:
        ca.write_crl()
    elif not ca.renew_crl_if_due():
        print("CRL is current")
        return 0
    print(f"CRL renewed: {ca.paths.crl}")
    run_reload(args.reload_command)
    return 0


def _broker_config(args: argparse.Namespace) -> int:
    try:
        ca = _ca(args)
        if args.host or not ca.paths.server_cert.exists():
            if not args.host:
                return _fail("no broker server certificate yet: give --host NAME")
            ca.issue_server(args.host)
    except CAError as err:
        return _fail(str(err))
    layout = BrokerLayout(
        device_port=args.device_port,
        enroll_port=args.enroll_port,
        service_port=args.service_port,
        bind_address=args.bind,
        persistence_dir=args.persistence_dir,
        max_queued_messages=args.max_queued_messages,
        max_packet_size=args.max_packet_size,
        max_enroll_connections=args.max_enroll_connections,
        admin_socket=args.admin_socket,
        log_file=args.log_file,
        user=args.user,
    )
    files = write_broker_config(ca, args.out, layout)
    print(f"device broker: {files.conf} ({files.device_acl}; admin {files.dynsec})")
    print(f"enrollment broker: {files.enroll_conf} (systemd unit {files.enroll_unit})")
    return 0


def _identity_files(ca: FleetCA, name: str) -> tuple[str, str]:
    cn = name if name.startswith(f"{Role.FLEET.value}.") else role_common_name(Role.FLEET, name)
    cert, key = ca.paths.identity(cn)
    if not cert.exists():
        raise CAError(f"no identity {cn} (fleet identity --role fleet --name …)")
    return str(cert), str(key)


def _serve(args: argparse.Namespace) -> int:
    try:
        ca = _ca(args)
        cert, key = _identity_files(ca, args.identity)
    except CAError as err:
        return _fail(str(err))
    host, port = _host_port(args.broker)
    service = EnrollmentService(
        ca,
        host=host,
        port=port,
        cert_file=cert,
        key_file=key,
        broker_url=args.public_broker_url,
        reload_command=args.reload_command,
        admin_socket=args.admin_socket,
        protocol="3.1.1" if args.protocol == "3.1.1" else "5",
    )

    def stop(signum: int, frame: FrameType | None) -> None:
        service.stop()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    service.run()
    return 0


def _ls(args: argparse.Namespace) -> int:
    try:
        ca = _ca(args)
        cert, key = _identity_files(ca, args.identity)
    except CAError as err:
        return _fail(str(err))
    host, port = _host_port(args.broker)
    try:
        states = collect_states(
            host,
            port,
            ca_file=str(ca.paths.ca_cert),
            cert_file=cert,
            key_file=key,
            devices=known_devices(ca),
            protocol=args.protocol,
        )
    except (OSError, ConnectionError) as err:
        return _fail(f"broker {args.broker}: {err}")
    rows = inventory(ca, states)
    if args.json:
        for row in rows:
            print(json.dumps(asdict(row), default=str, sort_keys=True))
    else:
        print(render_table(rows))
    return 0


def _fleet_client(args: argparse.Namespace) -> FleetClient:
    ca = _ca(args)
    cert, key = _identity_files(ca, args.identity)
    host, port = _host_port(args.broker)
    return FleetClient(
        host,
        port,
        ca_file=str(ca.paths.ca_cert),
        cert_file=cert,
        key_file=key,
        protocol=args.protocol,
    )


def _read_sections(path: Path) -> dict[str, Any]:
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".toml":
        import tomllib

        return tomllib.loads(text)
    value = json.loads(text)
    if not isinstance(value, dict):
        raise TypeError("the file must hold an object of config sections")
    return value


def _config_push(args: argparse.Namespace) -> int:
    from scanfleet.daemon.core.desired_config import Rejected

    try:
        sections = _read_sections(args.file)
        client = _fleet_client(args)
    except (OSError, ValueError, TypeError, CAError) as err:
        return _fail(str(err))
    try:
        current = client.current_config(args.target)
        version = args.version or ((current or {}).get("version", 0) + 1)
        try:
            doc = build_document(
                sections,
                version,
                mode=args.mode,
                probation_s=args.probation,
                sign_key=args.sign_key,
            )
        except Rejected as err:
            for e in err.errors:
                print(f"invalid: {e.key}: {e.message}", file=sys.stderr)
            return 1
        print(diff(current, doc) or "(no change in config sections)")
        report = client.push(args.target, doc, args.timeout)
    finally:
        client.close()
    if report is None:
        return _fail(f"no final report from {args.target} within {args.timeout:.0f} s")
    print(json.dumps(report, indent=2, sort_keys=True))
    if report["result"] == "restart_required":
        needs = ", ".join(report.get("restart_required", []))
        print(f"applied except {needs}: restart the daemon to apply those", file=sys.stderr)
        return 2
    return 0 if report["result"] == "applied" else 1


def _cmd(args: argparse.Namespace) -> int:
    params: dict[str, Any] = {}
    for item in args.args:
        key, sep, value = item.partition("=")
        if not sep:
            return _fail(f"expected KEY=VALUE, got {item!r}")
        try:
            params[key] = json.loads(value)
        except ValueError:
            params[key] = value
    try:
        client = _fleet_client(args)
    except (OSError, CAError) as err:
        return _fail(str(err))
    try:
        reply = client.command(args.target, args.name, params, args.timeout)
    finally:
        client.close()
    if reply is None:
        return _fail(f"no reply from {args.target} within {args.timeout:.0f} s")
    print(json.dumps(reply, indent=2, sort_keys=True))
    return 0 if reply.get("ok") else 1


def _health(args: argparse.Namespace) -> int:
    try:
        client = _fleet_client(args)
    except (OSError, CAError) as err:
        return _fail(str(err))
    try:
        entries = client.health(args.wait)
    finally:
        client.close()
    if args.json:
        for target, entry in sorted(entries.items()):
            print(json.dumps({"device": target, **entry}, sort_keys=True, default=str))
    else:
        print(health_table(entries))
    return 0


def _gaps(args: argparse.Namespace) -> int:
    try:
        raw = json.loads(args.received.read_text(encoding="utf-8"))
        received = {t: [(int(a), int(b)) for a, b in spans] for t, spans in raw.items()}
        client = _fleet_client(args)
    except (OSError, ValueError, TypeError, AttributeError, CAError) as err:
        return _fail(f"{args.received}: {err}")
    failed = 0
    try:
        reported = reported_last_seq(client.health(args.wait))
        for target, last_seq in sorted(reported.items()):
            gaps = missing_ranges(received.get(target, []), last_seq, args.since)
            for first, last in gaps:
                line = f"{target}  missing {first}..{last}"
                if args.resend:
                    span = {"from_seq": first, "to_seq": last}
                    reply = client.command(target, "resend", span, 30.0)
                    ok = bool(reply and reply.get("ok"))
                    failed += not ok
                    line += "  resend " + ("requested" if ok else f"failed: {reply}")
                print(line)
            if not gaps:
                print(f"{target}  complete through {last_seq}")
    finally:
        client.close()
    return 1 if failed else 0
