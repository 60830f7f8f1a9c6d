"""Skip-or-fail for missing test prerequisites.

Under ``SCANFLEET_REQUIRE_ALL=1`` (set by .ci/run) a test that would skip because
mosquitto, QEMU or another prerequisite is missing fails instead.
"""

from __future__ import annotations

import os
import shutil
from typing import NoReturn

import pytest


def require_all() -> bool:
    """True when missing prerequisites must fail tests instead of skipping them."""
    return os.environ.get("SCANFLEET_REQUIRE_ALL", "") not in ("", "0")


def missing(reason: str) -> NoReturn:
    """Skip the current test for *reason*, or fail it under SCANFLEET_REQUIRE_ALL."""
    if require_all():
        pytest.fail(f"prerequisite missing (SCANFLEET_REQUIRE_ALL=1): {reason}", pytrace=False)
    pytest.skip(reason)


def require_executable(name: str, *extra_dirs: str) -> str:
    """Path of executable *name* (also looked up in *extra_dirs*), or skip/fail."""
    path = shutil.which(name) or shutil.which(name, path=os.pathsep.join(extra_dirs))
    if path is None:
        missing(f"{name} is not installed (make setup installs it)")
    return path
