"""``scanfleet config``: check a configuration file, print the example."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from scanfleet.daemon.core.config import DEFAULT_CONFIG_PATH, example_config, load_config
from scanfleet.daemon.core.config_env import environment_problems
from scanfleet.daemon.core.errors import ConfigError


def register(subparsers: Any) -> None:
    """Add ``config check`` and ``config example``."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "config", help="check a configuration file or print an example"
    )
    sub = parser.add_subparsers(title="actions", metavar="ACTION", required=True)
    check = sub.add_parser(
        "check",
        help="validate a config file; print every error with its key path and line",
        description=(
            "Validate a scanfleet TOML configuration. Exit 0 when valid, 1 when not "
            "(every problem is printed as 'FILE:LINE: KEY: MESSAGE')."
        ),
    )
    check.add_argument("file", type=Path, nargs="?", default=DEFAULT_CONFIG_PATH)
    check.set_defaults(func=_check)
    example = sub.add_parser("example", help="print a commented example configuration")
    example.set_defaults(func=_example)


def _check(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.file)
    except ConfigError as err:
        print_config_error(err)
        return 1
    # What the document cannot tell: paths the daemon must write (run would fail there).
    problems = environment_problems(config, args.file.read_text(encoding="utf-8"))
    if problems:
        print_config_error(ConfigError(str(args.file), problems))
        return 1
    print(f"{args.file}: OK ({len(config.devices)} device(s), site {config.identity.site!r})")
    return 0


def print_config_error(err: ConfigError) -> None:
    """Print a ConfigError as compiler-style lines on stderr."""
    for problem in err.problems:
        where = f"{err.source}:{problem.line}" if problem.line is not None else err.source
        print(f"{where}: {problem.path or '<document>'}: {problem.message}", file=sys.stderr)


def _example(args: argparse.Namespace) -> int:
    sys.stdout.write(example_config())
    return 0
