"""Host-side client of the guest agent (see agent.py for the wire format).

``guest.run(func, *args)`` ships a module-level function by file path and name into the
guest, runs it there in the long-lived agent process and returns its JSON result.
``guest.submit`` does the same without waiting, so the host can act (type keys, write
to a socket, unplug a device) while the guest function waits for it; the guest function
calls ``hil.agent.notify(value)`` when it is ready and the host waits for that notice.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import logging
import queue
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from hil.agent import decode, dumps

log = logging.getLogger(__name__)

DEFAULT_CALL_TIMEOUT = 120.0


class GuestError(AssertionError):
    """A guest function raised; carries the guest's exception type and traceback."""

    def __init__(self, func: str, error: str, message: str, guest_traceback: str) -> None:
        super().__init__(f"{func} raised {error} in the guest: {message}\n{guest_traceback}")
        self.error = error
        self.guest_traceback = guest_traceback


class GuestGone(RuntimeError):
    """The agent connection closed: the guest crashed or powered off."""


def function_ref(func: Callable[..., Any]) -> dict[str, str]:
    """How the agent finds *func*: its source file and qualified name."""
    qualname = getattr(func, "__qualname__", "")
    if not qualname or "<locals>" in qualname or "<lambda>" in qualname:
        raise TypeError(f"{func!r}: only module-level functions can run in the guest")
    path = inspect.getsourcefile(func)
    if path is None:
        raise TypeError(f"{func!r} has no source file to load in the guest")
    return {"path": path, "func": qualname}


class GuestCall:
    """A call running in the guest: its notices and, eventually, its result."""

    def __init__(self, call_id: int, name: str, gone: Callable[[], str | None]) -> None:
        self.id = call_id
        self.name = name
        self._gone = gone
        self._notices: queue.Queue[Any] = queue.Queue()
        self._done = threading.Event()
        self._reply: dict[str, Any] = {}
        self.last_notice_value: Any = None

    def last_notice(self) -> int:
        """The latest integer notice (a reader's running count), 0 before any."""
        value = self.last_notice_value
        return value if isinstance(value, int) else 0

    def _deliver(self, message: dict[str, Any]) -> None:
        if "notice" in message:
            self.last_notice_value = message["notice"]
            self._notices.put(message["notice"])
        else:
            self._reply = message
            self._done.set()

    def wait_notice(self, timeout: float = 60.0) -> Any:
        """Next value the guest function passed to ``notify``; fails if it returned first."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                return self._notices.get(timeout=0.2)
            except queue.Empty:
                pass
            if self._done.is_set():
                self.result(0)  # raises the guest's error, if that is why it ended
                raise AssertionError(f"{self.name} returned without the awaited notice")
            self._check_gone()
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name}: no notice from the guest in {timeout} s")

    def result(self, timeout: float = DEFAULT_CALL_TIMEOUT) -> Any:
        """The guest function's return value; raises :class:`GuestError` if it raised."""
        deadline = time.monotonic() + timeout
        while not self._done.wait(0.2):
            self._check_gone()
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name} did not return within {timeout} s in the guest")
        reply = self._reply
        if not reply.get("ok"):
            raise GuestError(
                self.name,
                reply.get("error", "?"),
                reply.get("message", ""),
                reply.get("traceback", ""),
            )
        return reply.get("result")

    def _check_gone(self) -> None:
        why = self._gone()
        if why is not None and not self._done.is_set():
            raise GuestGone(f"{self.name}: {why}")


class Guest:
    """Connection to the agent inside the guest."""

    def __init__(self, sock_path: str, describe_death: Callable[[], str]) -> None:
        self._describe_death = describe_death
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.connect(sock_path)
        self._lock = threading.Lock()
        self._calls: dict[int, GuestCall] = {}
        self._next_id = 1
        self._gone: str | None = None
        self.hello: dict[str, Any] | None = None
        self._hello_seen = threading.Event()
        self._reader = threading.Thread(
            target=self._read_loop, name="hil-agent-reader", daemon=True
        )
        self._reader.start()

    def _read_loop(self) -> None:
        buffer = b""
        try:
            while True:
                chunk = self._sock.recv(65536)
                if not chunk:
                    break
                buffer += chunk
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    self._dispatch(json.loads(line, object_hook=decode))
        except OSError as err:
            log.debug("agent socket: %s", err)
        self._gone = "the guest agent connection closed"

    def _dispatch(self, message: dict[str, Any]) -> None:
        if "hello" in message:
            self.hello = message["hello"]
            self._hello_seen.set()
            return
        with self._lock:
            call = self._calls.get(message.get("id", -1))
            if call is not None and "notice" not in message:
                del self._calls[call.id]
        if call is None:
            log.warning("agent message for no call: %s", message)
        else:
            call._deliver(message)

    def gone(self) -> str | None:
        """Why the agent is unreachable, with the console tail; None while it is up."""
        if self._gone is None:
            return None
        return f"{self._gone}\n{self._describe_death()}"

    def wait_hello(self, timeout: float, alive: Callable[[], bool]) -> dict[str, Any]:
        """Block until the agent announced itself, the guest died, or *timeout* passed."""
        deadline = time.monotonic() + timeout
        while not self._hello_seen.wait(0.5):
            if not alive():
                raise GuestGone("QEMU exited before the guest agent started")
            if time.monotonic() > deadline:
                raise TimeoutError(f"guest agent did not start within {timeout} s")
        assert self.hello is not None
        return self.hello

    def _send(self, request: dict[str, Any], name: str) -> GuestCall:
        with self._lock:
            if self._gone is not None:
                raise GuestGone(f"{name}: {self.gone()}")
            call_id = self._next_id
            self._next_id += 1
            line = dumps({"id": call_id, **request})  # TypeError for non-JSON arguments
            call = GuestCall(call_id, name, self.gone)
            self._calls[call_id] = call
            self._sock.sendall(line)
        return call

    def submit(self, func: Callable[..., Any], *args: Any, **kwargs: Any) -> GuestCall:
        """Start ``func(*args, **kwargs)`` in the guest; returns at once."""
        ref = function_ref(func)
        return self._send({"op": "call", **ref, "args": args, "kwargs": kwargs}, ref["func"])

    def run(
        self,
        func: Callable[..., Any],
        *args: Any,
        timeout: float = DEFAULT_CALL_TIMEOUT,
        **kwargs: Any,
    ) -> Any:
        """Run ``func(*args, **kwargs)`` in the guest and return its JSON result."""
        return self.submit(func, *args, **kwargs).result(timeout)

    def run_named(
        self, target: str, *args: Any, timeout: float = DEFAULT_CALL_TIMEOUT, **kwargs: Any
    ) -> Any:
        """Run ``"package.module:function"`` (imported by name in the guest)."""
        module, _, func = target.partition(":")
        request = {"op": "call", "module": module, "func": func, "args": args, "kwargs": kwargs}
        return self._send(request, target).result(timeout)

    def ping(self, timeout: float = 10.0) -> dict[str, Any]:
        """Round trip to the agent; returns its hello data."""
        result: dict[str, Any] = self._send({"op": "ping"}, "ping").result(timeout)
        return result

    def close(self, exit_agent: bool = True) -> None:
        """Ask the agent to exit (which powers the guest off) and disconnect."""
        if exit_agent and self._gone is None:
            try:
                self._sock.sendall(dumps({"op": "exit"}))
            except OSError as err:
                log.debug("agent exit request: %s", err)
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)  # wakes the reader thread's recv
        self._sock.close()
        self._reader.join(timeout=5)
