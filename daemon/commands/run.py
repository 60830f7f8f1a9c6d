"""``scanfleet run``: the daemon."""

from __future__ import annotations

import argparse
import ctypes
import logging
import os
import sys
from pathlib import Path
from typing import Any

from scanfleet.daemon.commands.config import print_config_error
from scanfleet.daemon.commands.location import DEMO_STATE_DIR
from scanfleet.daemon.core.config import DEFAULT_CONFIG_PATH, Config, load_config, validate_config
from scanfleet.daemon.core.config_env import state_dir_problem
from scanfleet.daemon.core.errors import ConfigError, ScanfleetError
from scanfleet.daemon.core.statefiles import restrict_umask
from scanfleet.daemon.ui.display import record_kind, record_value

log = logging.getLogger(__name__)

EX_CONFIG = 78
"""sysexits.h EX_CONFIG: the configuration is wrong; restarting will not help."""
M_ARENA_MAX = -8
"""glibc's ``mallopt`` parameter for the number of malloc arenas (<malloc.h>)."""
MALLOC_ARENAS = 2
"""Arenas the daemon's threads share (glibc's default is 8 per core)."""


def register(subparsers: Any) -> None:
    """Add the ``run`` command."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "run",
        help="run the daemon: bind scanners, journal every scan, publish to the broker",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Run the scanfleet daemon with a config file, or with --demo on a simulated\n"
            "serial scanner (no file, no hardware, no broker needed).\n\n"
            "Signals: SIGTERM/SIGINT stop after flushing; SIGHUP reloads the config file\n"
            "(an invalid new file is refused and the running config kept).\n"
            f"Exit codes: 0 stopped cleanly, {EX_CONFIG} invalid configuration, 1 other failure."
        ),
    )
    parser.add_argument(
        "--config",
        type=Path,
        help=f"default: {DEFAULT_CONFIG_PATH}; with --demo only its [broker] section is used",
    )
    parser.add_argument(
        "--demo",
        action="store_true",
        help="simulated serial scanner on a pseudo-terminal; journal under ./state/demo; "
        "publishes to mqtt://localhost:1883 (or --broker, or --config's [broker]) when a "
        "broker is there, buffers otherwise",
    )
    parser.add_argument("--state-dir", type=Path, help="override [paths] state_dir")
    parser.add_argument(
        "--broker",
        metavar="URL",
        action="append",
        help="override [broker] url; give it several times for an ordered failover list",
    )
    parser.add_argument("--broker-username", metavar="NAME", help="override [broker] username")
    parser.add_argument(
        "--broker-password-file",
        type=Path,
        metavar="FILE",
        help="read the broker password from FILE (or set $SCANFLEET_BROKER_PASSWORD; "
        "never on the command line)",
    )
    parser.add_argument(
        "--view",
        choices=("auto", "on", "off"),
        default="auto",
        help="live terminal view (auto: when stdout is a terminal)",
    )
    parser.add_argument(
        "--demo-rate", type=float, default=0.5, metavar="PER_S", help="demo scans per second"
    )
    parser.set_defaults(func=_run)


def _load(args: argparse.Namespace) -> tuple[Config, Path | None]:
    if args.demo:
        # The demo has its own scanner, identity and state; a config file given with it
        # contributes where to publish (its [broker]), and says so.
        config = Config.model_validate({"identity": {"site": "demo"}})
        if args.config is not None:
            config = config.model_copy(update={"broker": load_config(args.config).broker})
            log.info("demo: publishing to the [broker] of %s", args.config)
        path = None
    else:
        path = args.config or DEFAULT_CONFIG_PATH
        config = load_config(path)
    paths = config.paths
    if args.state_dir or args.demo:
        paths = paths.model_copy(update={"state_dir": args.state_dir or DEMO_STATE_DIR})
    overrides: dict[str, Any] = {}
    if args.broker:
        overrides["url"] = args.broker[0] if len(args.broker) == 1 else args.broker
    if args.broker_username:
        overrides["username"] = args.broker_username
        overrides["username_file"] = None
    if args.broker_password_file:
        overrides["password_file"] = args.broker_password_file
        overrides["password"] = None
    broker = config.broker
    if overrides:
        data = {**broker.model_dump(exclude_unset=True), **overrides}
        broker = validate_config({"broker": data}, source="command line").broker
    return config.model_copy(update={"paths": paths, "broker": broker}), path


def limit_malloc_arenas(arenas: int = MALLOC_ARENAS) -> bool:
    """Let the daemon's threads share *arenas* glibc malloc arenas; False where not applied.

    Each of the daemon's dozen threads would otherwise get an arena of its own for the
    few allocations it makes, each keeping pages resident (~3 MB in all, measured by
    ``make bench BENCH=rss``); at a few scans per second the threads never contend. An
    operator's ``MALLOC_ARENA_MAX`` wins, and a libc without ``mallopt`` (musl) is left
    alone. Must run before the threads start.
    """
    if "MALLOC_ARENA_MAX" in os.environ:
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(M_ARENA_MAX, arenas))


def _run(args: argparse.Namespace) -> int:
    # The daemon process's files are private whatever umask it was started with
    # (the shipped unit sets UMask=0027; a shell usually has 022).
    restrict_umask()
    limit_malloc_arenas()
    try:
        config, path = _load(args)
    except ConfigError as err:
        print_config_error(err)
        print("scanfleet run: invalid configuration, not started", file=sys.stderr)
        return EX_CONFIG
    problem = state_dir_problem(config.paths.state_dir)
    if problem is not None:
        print(f"{path or '<demo>'}: paths.state_dir: {problem}", file=sys.stderr)
        print("scanfleet run: cannot use the state directory, not started", file=sys.stderr)
        return EX_CONFIG
    from scanfleet.daemon.runner import build_daemon  # the daemon's imports only when running it

    simulator = None
    if args.demo:
        from scanfleet.daemon.commands.demo import start_demo_scanner

        simulator, config = start_demo_scanner(config, rate=args.demo_rate)
    try:
        daemon = build_daemon(config, config_path=path)
    except (ScanfleetError, OSError) as err:
        log.error("cannot start: %s", err)  # noqa: TRY400 - the message says what is wrong
        if simulator is not None:
            simulator.stop()
        return 1
    from scanfleet.daemon.service.sdnotify import SystemdAdapter

    SystemdAdapter(daemon).attach()  # a no-op unless started by systemd (NOTIFY_SOCKET)
    view_on = args.view == "on" or (args.view == "auto" and sys.stdout.isatty())
    tick = None
    if view_on:
        from scanfleet.daemon.core.logs import log_to_file
        from scanfleet.daemon.ui.liveview import LiveView

        log_to_file(config.paths.state_dir / "scanfleet.log")
        view = LiveView(daemon)
        daemon.pipeline.add_listener(view.on_record)
        tick = view.draw
    elif args.demo:
        daemon.pipeline.add_listener(_log_record)
    else:
        from scanfleet.daemon.core.journald import log_committed

        daemon.pipeline.add_listener(log_committed)  # SCANFLEET_SEQ in the journal
    try:
        return daemon.serve(tick=tick)
    finally:
        if simulator is not None:
            simulator.stop()


def _log_record(record: dict[str, Any]) -> None:
    log.info(
        "scan seq=%s kind=%s verdict=%s value=%s%s",
        record["seq"],
        record_kind(record),
        record.get("verdict"),
        record_value(record),
        f" reason={record['reason']}" if record.get("reason") else "",
    )
