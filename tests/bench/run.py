"""Run the benchmarks: ``make bench``.

Every ``tests/bench/bench_*.py`` module has ``run() -> Iterable[dict]``; each dict
is printed as one JSON line on stdout (and nothing else goes to stdout). Each
benchmark measures its own baseline in the same run and reports a ratio, because
the machines are shared and absolute figures drift.

    python tests/bench/run.py [NAME ...]     # e.g. append drain
"""

from __future__ import annotations

import importlib.util
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main(argv: list[str]) -> int:
    """Run the named benchmarks (default: all) and print their JSON lines."""
    sys.path.insert(0, str(HERE.parent))  # for tests/support
    names = argv or sorted(p.stem.removeprefix("bench_") for p in HERE.glob("bench_*.py"))
    failed = 0
    for name in names:
        path = HERE / f"bench_{name}.py"
        if not path.exists():
            print(f"bench: no benchmark {name!r}", file=sys.stderr)
            return 2
        spec = importlib.util.spec_from_file_location(f"bench_{name}", path)
        assert spec is not None
        assert spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        started = time.monotonic()
        print(f"bench: running {name} …", file=sys.stderr)
        try:
            for result in module.run():
                print(json.dumps({"bench": name, **result}, sort_keys=True), flush=True)
        except Exception as err:
            print(f"bench: {name} failed: {err!r}", file=sys.stderr)
            failed += 1
        print(f"bench: {name} took {time.monotonic() - started:.1f} s", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
