"""``scanfleet local``: the reference client of the local POS interface (Unix socket).

It shows how a POS or HIS talks to the daemon (docs/local-api.md): say hello with the
token, then read records and send requests, one JSON object per line.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
from io import BufferedIOBase
from pathlib import Path
from typing import Any

from scanfleet.daemon.core.config import DEFAULT_CONFIG_PATH, Config, load_config
from scanfleet.daemon.core.errors import ConfigError, ConfigProblem

TOKEN_ENV = "SCANFLEET_LOCAL_TOKEN"  # noqa: S105 - the variable name, not a token


def register(subparsers: Any) -> None:
    """Add the ``local`` command."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "local",
        help="talk to the running daemon's local POS interface",
        description=(
            "Reference client of the local interface: watch every record with its verdict, "
            "or change operation, bill and operator, or record an exempt/manual entry. "
            f"The token comes from --token-file, ${TOKEN_ENV} or the config's [local_api]."
        ),
    )
    parser.add_argument("--config", type=Path, help=f"config file (default {DEFAULT_CONFIG_PATH})")
    parser.add_argument("--socket", type=Path, help="socket path (default: from the config)")
    parser.add_argument("--token-file", type=Path, help="file holding the token")
    parser.add_argument("--json", action="store_true", help="print replies and records as JSON")
    actions = parser.add_subparsers(dest="action", required=True)
    watch = actions.add_parser("watch", help="print every record as the daemon commits it")
    watch.add_argument("-n", "--count", type=int, help="stop after this many records")
    actions.add_parser("status", help="current operation, bill, operator and bill progress")
    actions.add_parser("op", help="set the operation").add_argument("operation")
    actions.add_parser("bill", help="start a bill").add_argument("bill")
    actions.add_parser("end", help="end the open bill (prints its summary)")
    actions.add_parser("operator", help="set the operator ('' clears)").add_argument("operator")
    manual = actions.add_parser("manual", help="record an exempt/manual entry")
    manual.add_argument("entry", help="category;batch=…;exp=YYYY-MM-DD;qty=N;name=…")
    actions.add_parser("manifest", help="deliver a receiving manifest").add_argument(
        "file", type=Path
    )
    parser.set_defaults(func=_run)


def _config(args: argparse.Namespace) -> Config | None:
    if args.config is None and args.socket is not None:
        return None
    return load_config(args.config or DEFAULT_CONFIG_PATH)


def _token(args: argparse.Namespace, config: Config | None) -> str:
    if args.token_file is not None:
        return str(args.token_file.read_text(encoding="utf-8").strip())
    if os.environ.get(TOKEN_ENV):
        return os.environ[TOKEN_ENV]
    if config is not None and config.local_api.token_file is not None:
        return config.local_api.token_file.read_text(encoding="utf-8").strip()
    if config is not None and config.local_api.token is not None:
        return config.local_api.token
    raise ConfigError("<args>", [ConfigProblem("", f"no token: use --token-file or ${TOKEN_ENV}")])


def _request(args: argparse.Namespace) -> dict[str, Any] | None:
    from scanfleet.daemon.station.manual import parse_entry

    action = args.action
    if action == "op":
        return {"op": "set_operation", "operation": args.operation}
    if action == "bill":
        return {"op": "set_bill", "bill": args.bill}
    if action == "end":
        return {"op": "end_bill"}
    if action == "operator":
        return {"op": "set_operator", "operator": args.operator or None}
    if action == "manual":
        return {"op": "manual_entry", "entry": parse_entry(args.entry).model_dump(mode="json")}
    if action == "manifest":
        return {"op": "manifest", "manifest": json.loads(args.file.read_text(encoding="utf-8"))}
    if action == "status":
        return {"op": "status"}
    return None  # watch


def _send(stream: BufferedIOBase, message: dict[str, Any]) -> None:
    stream.write(json.dumps(message, ensure_ascii=False).encode() + b"\n")
    stream.flush()


def _show(message: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(message, ensure_ascii=False), flush=True)
        return
    if message.get("type") == "record":
        rec = message["record"]
        what = rec.get("value") or rec.get("action") or rec.get("category") or rec.get("status")
        reason = f"  ({rec['reason']})" if rec.get("reason") else ""
        print(
            f"{rec.get('seq', 0):>7}  {rec.get('type', '?'):12}  {rec.get('operation', ''):15}  "
            f"{rec.get('bill') or '-':14}  {rec.get('verdict', ''):8}  {what}{reason}",
            flush=True,
        )
    else:
        print(json.dumps(message, ensure_ascii=False, indent=2), flush=True)


def _run(args: argparse.Namespace) -> int:
    try:
        config = _config(args)
        token = _token(args, config)
    except (ConfigError, OSError) as err:
        print(f"scanfleet local: no token or config: {err}", file=sys.stderr)
        return 2
    path = args.socket
    if path is None and config is not None:
        path = config.local_api.socket or config.paths.state_dir / "local.sock"
    try:
        request = _request(args)
    except (ValueError, OSError) as err:
        print(f"scanfleet local: {err}", file=sys.stderr)
        return 2
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(str(path))
    except OSError as err:
        print(f"scanfleet local: cannot connect to {path}: {err}", file=sys.stderr)
        return 1
    with sock, sock.makefile("rwb") as stream:
        _send(stream, {"op": "hello", "token": token})
        hello = json.loads(stream.readline() or b"{}")
        if hello.get("type") != "hello":
            print(
                f"scanfleet local: refused: {hello.get('error', 'disconnected')}", file=sys.stderr
            )
            return 1
        if request is not None:
            _send(stream, {**request, "request_id": 1})
        seen = 0
        for line in stream:
            message = json.loads(line)
            if request is None:
                _show(message, args.json)
                seen += message.get("type") == "record"
                if args.count is not None and seen >= args.count:
                    return 0
            elif message.get("request_id") == 1:
                _show(message, args.json)
                return 0 if message.get("type") != "error" else 1
    return 1
