"""Every exception scanfleet defines derives from ScanfleetError (one root to catch)."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

from scanfleet.daemon.core.errors import ScanfleetError

PACKAGES = ("scanfleet.daemon", "scanfleet.drivers", "scanfleet.provisioning", "scanfleet.hub")

CONTROL_FLOW = {"scanfleet.daemon.runner._Stop", "scanfleet.daemon.runner._Reload"}
"""Signals turned into exceptions in the supervisor's main thread: not errors, and a
handler catching ScanfleetError must never swallow a SIGTERM."""


def _modules() -> list[str]:
    # ``scanfleet`` is a namespace over four folders (an editable install cannot
    # list it), so each top-level package is walked on its own.
    names = list(PACKAGES)
    for package in PACKAGES:
        path = importlib.import_module(package).__path__
        for info in pkgutil.walk_packages(path, f"{package}."):
            if not info.name.endswith("__main__"):
                names.append(info.name)
    return names


def test_every_exception_class_has_the_scanfleet_root() -> None:
    outside = []
    for name in _modules():
        module = importlib.import_module(name)
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if cls.__module__ != name or not issubclass(cls, BaseException):
                continue
            qualified = f"{name}.{cls.__qualname__}"
            if qualified in CONTROL_FLOW:
                continue
            if not issubclass(cls, ScanfleetError):
                outside.append(qualified)
    assert outside == []
    assert len(_modules()) > 100  # the walk really found the code


def test_the_control_flow_signals_still_exist() -> None:
    # If the supervisor renames them, the exemption above must follow (or go away).
    for qualified in CONTROL_FLOW:
        module, _, cls = qualified.rpartition(".")
        assert hasattr(importlib.import_module(module), cls)
