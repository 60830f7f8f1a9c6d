"""Guest agent: one long-lived Python process inside the QEMU guest.

Started once per boot by ``vng --exec``; it serves JSON-line requests from the host over
the virtio-serial port named ``scanfleet.agent`` and runs the named module-level
functions in-process, each call in its own thread, because a new Python process costs
2-5 s under TCG. Standard library only: it must start before anything else is known to work.

Wire format, one JSON object per line, bytes travel as ``{"__bytes__": "<base64>"}``:

* host -> guest ``{"id": 1, "op": "call", "path": "/abs/file.py", "func": "name",
  "args": [...], "kwargs": {...}}`` (``"module": "scanfleet.x"`` instead of ``"path"``
  imports by module name), or ``{"id": 2, "op": "ping"}`` or ``{"op": "exit"}``.
* guest -> host ``{"id": 1, "ok": true, "result": ...}``, ``{"id": 1, "ok": false,
  "error": "ValueError", "message": "...", "traceback": "..."}``, progress notices
  ``{"id": 1, "notice": ...}`` sent by :func:`notify`, and once ``{"hello": {...}}``.

When the host side goes away (pytest killed), the port reads EOF and the agent exits,
which ends ``vng --exec`` and powers the guest off: no QEMU outlives its test session.
"""

from __future__ import annotations

import base64
import importlib
import importlib.util
import json
import logging
import os
import platform
import sys
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

PORT_NAME = "scanfleet.agent"
log = logging.getLogger("hil.agent")

_write_lock = threading.Lock()
_modules: dict[str, ModuleType] = {}
_modules_lock = threading.Lock()
_current = threading.local()
_port_fd = -1


def encode(value: object) -> object:
    """JSON ``default`` hook: bytes become ``{"__bytes__": base64}``."""
    if isinstance(value, bytes | bytearray | memoryview):
        return {"__bytes__": base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def decode(obj: dict[str, Any]) -> object:
    """JSON ``object_hook``: the inverse of :func:`encode`."""
    if len(obj) == 1 and "__bytes__" in obj:
        return base64.b64decode(obj["__bytes__"])
    return obj


def dumps(message: dict[str, Any]) -> bytes:
    """One wire line."""
    return json.dumps(message, default=encode, separators=(",", ":")).encode() + b"\n"


def _write(data: bytes) -> None:
    with _write_lock:
        view = memoryview(data)
        while view:
            view = view[os.write(_port_fd, view) :]


def _send(message: dict[str, Any]) -> None:
    _write(dumps(message))


def notify(value: object = None) -> None:
    """From a guest function: tell the host the call reached a point (e.g. "grabbed")."""
    call_id = getattr(_current, "call_id", None)
    if call_id is None:
        raise RuntimeError("notify() called outside an agent call")
    _send({"id": call_id, "notice": value})


def _load(path: str) -> ModuleType:
    # Modules are imported once and cached, so module globals keep guest-side state
    # (an open device, a running broker) between calls.
    with _modules_lock:
        module = _modules.get(path)
        if module is None:
            name = "hilguest_" + Path(path).stem + "_" + str(len(_modules))
            spec = importlib.util.spec_from_file_location(name, path)
            if spec is None or spec.loader is None:
                raise ImportError(f"cannot import {path}")
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module
            spec.loader.exec_module(module)
            _modules[path] = module
        return module


def _resolve(request: dict[str, Any]) -> Callable[..., object]:
    qualname: str = request["func"]
    if "module" in request:
        target: Any = importlib.import_module(request["module"])
        where = request["module"]
    else:
        target = _load(request["path"])
        where = request["path"]
    for part in qualname.split("."):
        target = getattr(target, part)
    if not callable(target):
        raise TypeError(f"{qualname} in {where} is not callable")
    return target


def _run_call(request: dict[str, Any]) -> None:
    call_id = request["id"]
    _current.call_id = call_id
    try:
        func = _resolve(request)
        result = func(*request.get("args", []), **request.get("kwargs", {}))
        reply = {"id": call_id, "ok": True, "result": result}
        data = dumps(reply)  # fail here, not half-way through a write, if unserialisable
    except BaseException as exc:  # every failure goes back to the host test
        data = dumps(
            {
                "id": call_id,
                "ok": False,
                "error": type(exc).__name__,
                "message": str(exc),
                "traceback": traceback.format_exc(),
            }
        )
    _write(data)


def find_port(timeout: float = 60.0) -> str:
    """Device node of the virtio-serial port named :data:`PORT_NAME`."""
    deadline = time.monotonic() + timeout
    while True:
        for entry in Path("/sys/class/virtio-ports").glob("vport*"):
            name_file = entry / "name"
            if name_file.exists() and name_file.read_text().strip() == PORT_NAME:
                return f"/dev/{entry.name}"
        if time.monotonic() > deadline:
            raise TimeoutError(f"no virtio port named {PORT_NAME}")
        time.sleep(0.1)


def _hello() -> dict[str, Any]:
    return {
        "hello": {
            "pid": os.getpid(),
            "python": sys.version.split()[0],
            "kernel": platform.release(),
            "executable": sys.executable,
        }
    }


def serve(port: str) -> None:
    """Serve requests until the host says exit or disconnects."""
    global _port_fd  # one port per process, shared by the call threads
    _port_fd = os.open(port, os.O_RDWR)
    _send(_hello())
    buffer = b""
    seen_host = False
    while True:
        chunk = os.read(_port_fd, 65536)
        if not chunk:
            # EOF: no host connected. Before the first request the host may not have
            # connected yet; after it, the host went away and the guest must power off.
            if seen_host:
                log.warning("host disconnected; agent exits")
                return
            time.sleep(0.1)
            continue
        seen_host = True
        buffer += chunk
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            if not line.strip():
                continue
            request = json.loads(line, object_hook=decode)
            op = request.get("op")
            if op == "exit":
                return
            if op == "ping":
                _send({"id": request["id"], "ok": True, "result": _hello()["hello"]})
            elif op == "call":
                threading.Thread(
                    target=_run_call, args=(request,), name=f"call-{request['id']}", daemon=True
                ).start()
            else:
                _send({"id": request.get("id"), "ok": False, "error": "ValueError",
                       "message": f"unknown op {op!r}", "traceback": ""})  # fmt: skip


def main() -> int:
    """Entry point inside the guest."""
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="agent: %(message)s")
    tests_dir = str(Path(__file__).resolve().parent.parent)
    if tests_dir not in sys.path:
        # Guest functions import helpers as `hil.gadget` and `support.x`, like the tests.
        sys.path.insert(0, tests_dir)
    # The agent module itself must be importable as hil.agent so notify() reaches the
    # same globals (port fd, current call) when a guest function imports it.
    import hil  # only importable once tests_dir is on sys.path

    sys.modules["hil.agent"] = sys.modules[__name__]
    hil.agent = sys.modules[__name__]
    serve(find_port())
    return 0


if __name__ == "__main__":
    sys.exit(main())
