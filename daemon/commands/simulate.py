"""``scanfleet simulate serial|idcard|fleet``: simulated devices for demos, tests and benches."""

from __future__ import annotations

import argparse
import json
import resource
import signal
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import Any

FRAMINGS = ("cr", "lf", "crlf", "suffix", "stx_etx", "idle", "honeywell_packet", "ssi")


def register(subparsers: Any) -> None:
    """Add ``simulate serial`` and ``simulate idcard``."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "simulate", help="run a simulated device (serial scanner or ID-card reader) on a pty"
    )
    sub = parser.add_subparsers(title="devices", metavar="DEVICE", required=True)
    serial = sub.add_parser(
        "serial",
        help="a serial barcode scanner on a pseudo-terminal",
        description=(
            "Create a pty that behaves like a serial barcode scanner and emit a realistic "
            "pharmacy-counter code mix. The pty path (or --link) is printed on stdout as "
            "soon as it exists; a JSON summary follows when the simulator stops (--count "
            "reached, Ctrl-C or SIGTERM) with the feedback the host sent, counted by kind."
        ),
    )
    serial.add_argument("--framing", choices=FRAMINGS, default="cr", help="default: %(default)s")
    serial.add_argument("--suffix-hex", help="terminator bytes for --framing suffix, e.g. 09")
    serial.add_argument("--aim", action="store_true", help="prefix each code with its AIM id")
    serial.add_argument("--rate", type=float, default=1.0, help="codes per second (default 1)")
    serial.add_argument("--count", type=int, help="stop after this many codes")
    serial.add_argument("--seed", type=int, default=0, help="random seed of the code mix")
    serial.add_argument(
        "--link", type=Path, help="keep a stable symlink to the pty here (like /dev/serial/by-id)"
    )
    serial.add_argument(
        "--noise-every", type=int, default=0, metavar="N", help="noise burst before every Nth code"
    )
    serial.add_argument(
        "--overlong-every", type=int, default=0, metavar="N", help="send every Nth frame over-long"
    )
    serial.add_argument(
        "--wrong-terminator-every",
        type=int,
        default=0,
        metavar="N",
        help="end every Nth frame wrongly",
    )
    serial.add_argument(
        "--corrupt-every",
        type=int,
        default=0,
        metavar="N",
        help="SSI: bad checksum on every Nth code",
    )
    serial.add_argument(
        "--disconnect-every",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="pull the cable periodically",
    )
    serial.add_argument(
        "--down", type=float, default=2.0, metavar="SECONDS", help="how long it stays unplugged"
    )
    serial.add_argument(
        "--good-read-hex", help="bytes the host sends for a good read (custom preset)"
    )
    serial.add_argument(
        "--bad-read-hex", help="bytes the host sends for a bad read (custom preset)"
    )
    serial.set_defaults(func=_serial)

    from scanfleet.drivers.sim.idcard import register_idcard  # pure Python, no device libraries

    register_idcard(sub)

    fleet = sub.add_parser(
        "fleet",
        help="many lightweight terminals publishing chained records to a broker",
        description=(
            "N simulated terminals in one process, each its own MQTT 5 client with the real "
            "envelope, topics, record hashing and retained state; they redeliver what was not "
            "acknowledged and answer resend. Prints a JSON summary at the end."
        ),
    )
    fleet.add_argument("--broker", required=True, help="mqtt://HOST:PORT")
    fleet.add_argument("--devices", type=int, default=100, help="terminals (default 100)")
    fleet.add_argument("--sites", type=int, default=10, help="sites they spread over")
    fleet.add_argument(
        "--rate", type=float, default=0.5, help="records per second per terminal (default 0.5)"
    )
    fleet.add_argument("--duration", type=float, default=60.0, help="seconds (default 60)")
    fleet.add_argument(
        "--disconnect-every",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="mean time between one terminal's random connection drops",
    )
    fleet.add_argument(
        "--storm-every",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="every terminal drops and reconnects at once, this often",
    )
    fleet.add_argument(
        "--linger",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="stay connected this long after the last record, answering resend (SIGTERM ends it)",
    )
    fleet.add_argument("--prefix", default="sim", help="device and site name prefix")
    fleet.add_argument("--seed", type=int, default=0)
    fleet.set_defaults(func=_fleet)


def _serial(args: argparse.Namespace) -> int:
    from scanfleet.drivers.sim.serial_scanner import SerialScannerSimulator

    if args.framing == "suffix" and not args.suffix_hex:
        print("scanfleet simulate serial: --framing suffix needs --suffix-hex", file=sys.stderr)
        return 2
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = signal.signal(signal.SIGTERM, on_signal)
    sim = SerialScannerSimulator(
        framing=args.framing,
        suffix=bytes.fromhex(args.suffix_hex) if args.suffix_hex else b"",
        aim=args.aim,
        rate=args.rate,
        count=args.count,
        seed=args.seed,
        link=args.link,
        noise_every=args.noise_every,
        overlong_every=args.overlong_every,
        wrong_terminator_every=args.wrong_terminator_every,
        corrupt_every=args.corrupt_every,
        good_read=bytes.fromhex(args.good_read_hex) if args.good_read_hex else None,
        bad_read=bytes.fromhex(args.bad_read_hex) if args.bad_read_hex else None,
    )
    print(sim.path, flush=True)
    sim.start()
    try:
        while not stop.is_set() and not sim.done:
            if args.disconnect_every and stop.wait(args.disconnect_every):
                break
            if args.disconnect_every:
                sim.disconnect()
                print(f"# unplugged for {args.down:g} s", file=sys.stderr, flush=True)
                stop.wait(args.down)
                sim.reconnect()
                print(f"# plugged back in at {sim.tty}", file=sys.stderr, flush=True)
            else:
                stop.wait(0.2)
        if sim.done:
            # Let the host's last feedback arrive before counting it.
            stop.wait(1.0)
    except KeyboardInterrupt:
        pass
    finally:
        sim.stop()
        signal.signal(signal.SIGTERM, previous)
    kinds: dict[str, int] = {}
    for event in sim.feedback:
        kinds[event.kind] = kinds.get(event.kind, 0) + 1
    summary = {
        "path": sim.path,
        "framing": args.framing,
        "sent": len(sim.sent),
        "sent_clean": sum(1 for s in sim.sent if s.clean),
        "good_reads": kinds.get("good_read", 0),
        "bad_reads": kinds.get("bad_read", 0),
        "scanner_beep_silenced": not sim.own_beep,
        "feedback": kinds,
        "naks_received": sim.naks_received,
        "retransmissions": sim.retransmissions,
    }
    print(json.dumps(summary, sort_keys=True), flush=True)
    return 0


def _fleet(args: argparse.Namespace) -> int:
    from scanfleet.daemon.commands.fleet_sim import FleetSettings, FleetSimulator
    from scanfleet.daemon.core.config import BrokerConfig

    try:
        broker = BrokerConfig(url=args.broker)
    except ValueError as err:
        print(f"scanfleet simulate fleet: bad --broker: {err}", file=sys.stderr)
        return 2
    if broker.tls or args.devices < 1 or args.rate < 0:
        print(
            "scanfleet simulate fleet: mqtt:// only, --devices >= 1, --rate >= 0", file=sys.stderr
        )
        return 2
    settings = FleetSettings(
        host=broker.host,
        port=broker.port,
        devices=args.devices,
        sites=max(1, args.sites),
        rate=args.rate,
        duration=args.duration,
        disconnect_every=args.disconnect_every,
        storm_every=args.storm_every,
        prefix=args.prefix,
        seed=args.seed,
        linger=args.linger,
    )
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    # One socket per terminal: lift the soft descriptor limit as far as allowed.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < args.devices + 64:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    summary = FleetSimulator(settings, stop).run()
    print(json.dumps(summary, sort_keys=True), flush=True)
    return 0
