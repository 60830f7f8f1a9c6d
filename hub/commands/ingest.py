"""``scanfleet hub ingest``: consume the fleet's records into PostgreSQL until SIGTERM."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import Any

from pydantic import ValidationError

from scanfleet.daemon.core.config import BrokerConfig
from scanfleet.hub.cli import add_database_argument
from scanfleet.hub.db import HubDatabaseError, resolve_dsn
from scanfleet.hub.ingest import IngestSettings, IngestWorker, default_client_id
from scanfleet.hub.repair import RepairSettings
from scanfleet.hub.supervisor import Supervisor
from scanfleet.provisioning.ca import FleetCA, Role, role_common_name

IDENTITY_CLIENT_ID = "@identity"


def register(subparsers: Any) -> None:
    """Add ``ingest``."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "ingest",
        help="consume scans, state and health from the broker into PostgreSQL (until SIGTERM)",
        description=(
            "Shared-subscription consumer with a persistent session: stores every record "
            "byte for byte, acknowledges only after commit, verifies the hash chain, keeps "
            "per-device watermarks and gaps and asks devices to resend what is missing."
        ),
    )
    add_database_argument(parser)
    parser.add_argument(
        "--broker", required=True, help="mqtt://HOST:PORT or mqtts://HOST:PORT (with --identity)"
    )
    parser.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    parser.add_argument(
        "--group", default="scanfleet-hub", help="shared-subscription group (default %(default)s)"
    )
    parser.add_argument(
        "--client-id",
        help=(
            "MQTT client id (a prefix with --workers > 1); default hub-HOST-GROUP-INDEX; "
            f"{IDENTITY_CLIENT_ID} uses each worker's certificate CN"
        ),
    )
    parser.add_argument(
        "--identity",
        help=(
            "backend identity NAME from `fleet identity --role backend` (mTLS); "
            "NAME1,NAME2,… gives each worker its own"
        ),
    )
    parser.add_argument(
        "--fleet-dir",
        type=Path,
        default=Path(os.environ.get("SCANFLEET_FLEET_DIR", "/var/lib/scanfleet-fleet")),
        help="where --identity's certificate lives (default: $SCANFLEET_FLEET_DIR or %(default)s)",
    )
    parser.add_argument("--window", type=int, default=1000, help="unacked messages in flight")
    parser.add_argument("--batch", type=int, default=500, help="messages per transaction at most")
    parser.add_argument(
        "--batch-wait",
        type=float,
        default=0.05,
        help="longest a batch keeps reading before it commits (it commits sooner when idle)",
    )
    parser.add_argument(
        "--session-expiry", type=int, default=7 * 24 * 3600, help="seconds (default 7 days)"
    )
    parser.add_argument("--no-repair", action="store_true", help="never send resend requests")
    parser.add_argument(
        "--repair-after", type=float, default=30.0, help="seconds a gap waits before a resend"
    )
    parser.add_argument(
        "--repair-interval", type=float, default=60.0, help="seconds between resends to a device"
    )
    parser.add_argument(
        "--sweep-interval",
        type=float,
        default=3600.0,
        help="seconds between full reconciliations of every device from the records (a full "
        "scan: finds rows deleted behind the hub's back)",
    )
    parser.add_argument("--worker-index", type=int, default=None, help=argparse.SUPPRESS)
    parser.set_defaults(func=_ingest)


def _fail(message: str) -> int:
    print(f"scanfleet hub ingest: {message}", file=sys.stderr)
    return 2


def _identities(args: argparse.Namespace) -> list[str]:
    if not args.identity:
        return []
    names = [n.strip() for n in args.identity.split(",") if n.strip()]
    if len(names) not in (1, args.workers):
        raise ValueError(f"--identity names {len(names)} identities for {args.workers} workers")
    return [
        n if n.startswith(f"{Role.BACKEND.value}.") else role_common_name(Role.BACKEND, n)
        for n in names
    ]


def _broker(args: argparse.Namespace, index: int) -> tuple[BrokerConfig, str | None]:
    identities = _identities(args)
    if not identities:
        return BrokerConfig(url=args.broker), None
    cn = identities[index % len(identities)]
    paths = FleetCA(args.fleet_dir).paths
    cert, key = paths.identity(cn)
    if not cert.exists():
        raise ValueError(f"no identity {cn} in {args.fleet_dir} (fleet identity --role backend)")
    return BrokerConfig(url=args.broker, ca_file=paths.ca_cert, cert_file=cert, key_file=key), cn


def _client_id(args: argparse.Namespace, index: int, cn: str | None) -> str:
    if args.client_id == IDENTITY_CLIENT_ID:
        if cn is None:
            raise ValueError(f"--client-id {IDENTITY_CLIENT_ID} needs --identity")
        return cn
    if args.client_id:
        return args.client_id if args.workers == 1 else f"{args.client_id}-{index}"
    return default_client_id(args.group, index)


def _child_argv(args: argparse.Namespace) -> list[str]:
    argv = ["hub", "ingest", "--database", args.database, "--broker", args.broker]
    argv += ["--workers", str(args.workers), "--group", args.group]
    for flag in ("client_id", "identity"):
        if getattr(args, flag):
            argv += [f"--{flag.replace('_', '-')}", getattr(args, flag)]
    argv += ["--fleet-dir", str(args.fleet_dir), "--window", str(args.window)]
    argv += ["--batch", str(args.batch), "--batch-wait", str(args.batch_wait)]
    argv += ["--session-expiry", str(args.session_expiry)]
    argv += ["--repair-after", str(args.repair_after)]
    argv += ["--repair-interval", str(args.repair_interval)]
    argv += ["--sweep-interval", str(args.sweep_interval)]
    if args.no_repair:
        argv.append("--no-repair")
    return argv


def _ingest(args: argparse.Namespace) -> int:
    try:
        args.database = resolve_dsn(args.database)
    except HubDatabaseError as err:
        return _fail(str(err))
    if args.workers < 1 or args.window < 1 or args.batch < 1:
        return _fail("--workers, --window and --batch must be at least 1")
    # Every worker's broker settings are checked here, so a bad identity or URL is one
    # clear error instead of N workers restarting forever.
    try:
        for index in range(args.workers):
            _client_id(args, index, _broker(args, index)[1])
        index = args.worker_index or 0
        broker, cn = _broker(args, index)
        client_id = _client_id(args, index, cn)
    except (ValueError, ValidationError) as err:
        return _fail(str(err))
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    if args.workers > 1 and args.worker_index is None:
        return Supervisor(_child_argv(args), args.workers, stop).run()
    settings = IngestSettings(
        dsn=args.database,
        broker=broker,
        client_id=client_id,
        group=args.group,
        window=args.window,
        batch_max=min(args.batch, args.window),
        batch_wait=args.batch_wait,
        session_expiry=args.session_expiry,
        repair=RepairSettings(
            enabled=not args.no_repair,
            interval=min(5.0, max(args.repair_after / 2, 0.2)),
            repair_after=args.repair_after,
            min_interval=args.repair_interval,
            sweep_interval=args.sweep_interval,
        ),
    )
    IngestWorker(settings, stop).run()
    return 0
