"""What a terminal loads: heavy libraries only when the feature that needs them is used.

Each check runs in a fresh interpreter (a subprocess), because this test process has
long imported everything. The daemon's resident memory (``make bench BENCH=rss``)
depends on these staying lazy; a top-level import added in the wrong module makes
one of these tests fail instead of silently costing megabytes on every terminal.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

from scanfleet.daemon.cli import COMMANDS, build_parser, chosen_command
from scanfleet.drivers.registry import BACKENDS

HEAVY = (
    "asyncio",  # the local API's event loop
    "websockets",  # the local API's WebSocket
    "biip",  # GS1 parsing: ~15 MB for its company-prefix table
    "cryptography",  # enrollment, signed remote config, sealing ID-card data
    "segno",  # claim QR codes (fleet side)
    "psycopg",  # the hub
    "sqlite_utils",  # export and the fleet registry
    "scanfleet.hub",
    "scanfleet.daemon.schemas",  # JSON Schema generation
    "scanfleet.provisioning.registry",
)


def _loaded_after(code: str) -> set[str]:
    """The HEAVY modules (or their submodules) a fresh interpreter holds after *code*."""
    probe = (
        f"import json, sys\n{code}\n"
        f"heavy = {HEAVY!r}\n"
        "print(json.dumps(sorted(h for h in heavy"
        " if any(m == h or m.startswith(h + '.') for m in sys.modules))))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=False, timeout=120
    )
    assert out.returncode == 0, out.stderr
    return set(json.loads(out.stdout))


def test_the_daemon_start_path_loads_no_heavy_library() -> None:
    # What `scanfleet run` imports before its first scan: the CLI with only the run
    # command, the driver registry completing the config (it imports every driver
    # module), the supervisor, and every driver (a terminal may configure all of them).
    drivers = "; ".join(f"import {backend.module}" for backend in BACKENDS.values())
    code = (
        "from scanfleet.daemon.cli import build_parser; build_parser('run')\n"
        "from scanfleet.drivers.registry import complete_config; complete_config()\n"
        "import scanfleet.daemon.commands.run, scanfleet.daemon.runner\n"
        f"{drivers}\n"
        "from scanfleet.daemon.intake.classify import classify\n"
        "assert classify(b'81234567890123456789').kind.value == 'trace20'"
    )
    assert _loaded_after(code) == set()


def test_help_loads_no_command_module() -> None:
    code = (
        "import contextlib, io\n"
        "from scanfleet.daemon.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
        "    main(['--help'])\n"
        "assert not [m for m in sys.modules if m.startswith('scanfleet.daemon.commands.')]\n"
        "assert 'pydantic' not in sys.modules"
    )
    assert _loaded_after(code) == set()


def test_the_first_gs1_read_loads_biip_and_parses_it() -> None:
    code = (
        "from scanfleet.daemon.intake.classify import classify\n"
        "r = classify(b'0103453120000011172512311021ABC', aim=']d2')\n"
        "assert r.kind.value == 'gs1' and r.fields['gtin'] == '03453120000011', r"
    )
    assert _loaded_after(code) == {"biip"}


def test_the_command_list_says_what_each_module_registers() -> None:
    # COMMANDS repeats each command's help so that --help imports nothing; the full
    # parser (every module imported) must agree with it, name by name, in order.
    full = build_parser()
    action = next(a for a in full._actions if isinstance(a, argparse._SubParsersAction))
    registered = {choice.dest: choice.help for choice in action._choices_actions}
    assert registered == {name: help_text for name, (_, help_text) in COMMANDS.items()}
    assert list(registered) == list(COMMANDS)


def test_the_chosen_command_is_the_first_word_that_is_not_an_option() -> None:
    assert chosen_command(["--log-level", "debug", "run", "--config", "x"]) == "run"
    assert chosen_command(["--log-level=debug", "status"]) == "status"
    assert chosen_command(["--help"]) == ""
    assert chosen_command(["fleet", "claim", "--site", "s"]) == "fleet"


def test_the_daemon_caps_malloc_arenas_unless_the_operator_did() -> None:
    code = (
        "import os, platform\n"
        "from scanfleet.daemon.commands.run import limit_malloc_arenas\n"
        "assert limit_malloc_arenas() is (platform.libc_ver()[0] == 'glibc')\n"
        "os.environ['MALLOC_ARENA_MAX'] = '4'\n"
        "assert limit_malloc_arenas() is False"
    )
    assert _loaded_after(code) == set()
