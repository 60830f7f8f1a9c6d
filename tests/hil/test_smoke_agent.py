"""The harness itself: the guest boots the stock kernel and runs functions in-process."""

from __future__ import annotations

import os
import platform

from hil.guest import Guest


def describe_guest() -> dict[str, object]:
    """Runs in the guest."""
    return {"kernel": platform.release(), "pid": os.getpid(), "blob": bytes(range(256))}


def test_guest_runs_functions_in_one_long_lived_agent(guest: Guest) -> None:
    first = guest.run(describe_guest)
    second = guest.run(describe_guest)
    assert first["pid"] == second["pid"]
    assert first["kernel"].endswith("-amd64")
    assert first["blob"] == bytes(range(256))
