"""Host-side QMP client: key typing through a QEMU USB keyboard and USB hotplug.

A small synchronous client over QEMU's unix socket; every read has a timeout. Events
that arrive while waiting for a command's reply are kept for :meth:`Qmp.wait_event`.
"""

from __future__ import annotations

import json
import logging
import socket
import time
from collections.abc import Callable, Iterable
from typing import Any

log = logging.getLogger(__name__)

#: Seconds per key. QEMU's keyboard queue holds 16 scancodes; bursts drop keys and a lost
#: key-up leaves a key held. >= 12 ms per key is reliable, 25 ms leaves a margin.
DEFAULT_PACE = 0.025
#: Characters in flight with acknowledged typing: 3 shifted keys are 12 queue entries.
ACK_WINDOW = 3

_NAMED = {
    "\n": ("ret", False),
    "\r": ("ret", False),
    "\t": ("tab", False),
    " ": ("spc", False),
    "-": ("minus", False),
    "_": ("minus", True),
    "=": ("equal", False),
    "+": ("equal", True),
    ".": ("dot", False),
    ">": ("dot", True),
    ",": ("comma", False),
    "<": ("comma", True),
    "/": ("slash", False),
    "?": ("slash", True),
    ";": ("semicolon", False),
    ":": ("semicolon", True),
    "'": ("apostrophe", False),
    '"': ("apostrophe", True),
    "[": ("bracket_left", False),
    "{": ("bracket_left", True),
    "]": ("bracket_right", False),
    "}": ("bracket_right", True),
    "\\": ("backslash", False),
    "|": ("backslash", True),
    "`": ("grave_accent", False),
    "~": ("grave_accent", True),
}
_SHIFTED_DIGITS = dict(zip(")!@#$%^&*(", "0123456789", strict=True))


class QmpError(RuntimeError):
    """QEMU answered a command with an error, or the socket failed."""


def keys_for(char: str) -> list[str]:
    """QEMU qcodes pressed together (modifier first) to type *char* on a US layout."""
    if char.isascii() and char.isdigit():
        return [char]
    if char.isascii() and char.isalpha():
        return ["shift", char.lower()] if char.isupper() else [char]
    if char in _SHIFTED_DIGITS:
        return ["shift", _SHIFTED_DIGITS[char]]
    if char in _NAMED:
        qcode, shifted = _NAMED[char]
        return ["shift", qcode] if shifted else [qcode]
    raise ValueError(f"no US-layout key for {char!r}")


class Qmp:
    """A connected QMP session; use as a context manager or call :meth:`close`."""

    def __init__(self, path: str, timeout: float = 30.0) -> None:
        self.path = path
        self.timeout = timeout
        self.events: list[dict[str, Any]] = []
        self._buffer = b""
        deadline = time.monotonic() + timeout
        while True:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                self._sock.connect(path)
                break
            except (FileNotFoundError, ConnectionRefusedError) as err:
                self._sock.close()
                if time.monotonic() > deadline:
                    raise QmpError(f"QMP socket {path} not reachable in {timeout} s") from err
                time.sleep(0.1)
        greeting = self._read_message(timeout)
        if "QMP" not in greeting:
            raise QmpError(f"not a QMP greeting: {greeting}")
        self.execute("qmp_capabilities")

    def close(self) -> None:
        """Close the socket (QEMU keeps running)."""
        self._sock.close()

    def __enter__(self) -> Qmp:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _read_message(self, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no QMP message within {timeout} s")
            self._sock.settimeout(remaining)
            try:
                chunk = self._sock.recv(65536)
            except TimeoutError:
                continue
            if not chunk:
                raise QmpError("QEMU closed the QMP socket")
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        message: dict[str, Any] = json.loads(line)
        return message

    def execute(self, command: str, timeout: float | None = None, **arguments: Any) -> Any:
        """Run *command* and return its ``return`` value; raise :class:`QmpError` on error."""
        request: dict[str, Any] = {"execute": command}
        if arguments:
            request["arguments"] = arguments
        self._sock.sendall(json.dumps(request).encode() + b"\n")
        limit = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + limit
        while True:
            message = self._read_message(max(0.0, deadline - time.monotonic()))
            if "event" in message:
                self.events.append(message)
            elif "error" in message:
                raise QmpError(f"{command}: {message['error'].get('desc', message['error'])}")
            elif "return" in message:
                return message["return"]

    def wait_event(
        self,
        name: str,
        timeout: float = 30.0,
        match: Callable[[dict[str, Any]], bool] = lambda _event: True,
    ) -> dict[str, Any]:
        """Return (and consume) the first event *name* satisfying *match*."""
        deadline = time.monotonic() + timeout
        while True:
            for event in self.events:
                if event["event"] == name and match(event):
                    self.events.remove(event)
                    return event
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no QMP event {name} within {timeout} s")
            message = self._read_message(remaining)
            if "event" in message:
                self.events.append(message)

    # --- keyboard -----------------------------------------------------------------------

    def _keys(self, qcodes: Iterable[str], down: bool, device: str | None) -> None:
        events = [
            {"type": "key", "data": {"down": down, "key": {"type": "qcode", "data": q}}}
            for q in qcodes
        ]
        args: dict[str, Any] = {"events": events}
        if device is not None:
            args["device"] = device
        self.execute("input-send-event", **args)

    def press(
        self, qcodes: list[str], device: str | None = None, pace: float = DEFAULT_PACE
    ) -> None:
        """Press *qcodes* together (modifiers first), release them, taking *pace* seconds."""
        self._keys(qcodes, True, device)
        time.sleep(pace / 2)
        self._keys(reversed(qcodes), False, device)
        time.sleep(pace / 2)

    def type_text(
        self,
        text: str,
        device: str | None = None,
        pace: float = DEFAULT_PACE,
        acked: Callable[[], int] | None = None,
        window: int = ACK_WINDOW,
        ack_timeout: float = 60.0,
    ) -> None:
        """Type *text* on a US layout, one key per *pace* seconds (never a burst).

        Pacing alone is reliable only while the guest gets CPU: a starved guest stops
        polling the keyboard and QEMU's 16-entry queue drops keys. With *acked* (how many
        characters the reader has received so far, e.g. ``call.last_notice``), at most
        *window* characters are ever in flight, whatever the load.

        Without *device* the keys go to QEMU's active keyboard, the most recently plugged
        one (the usb-kbd). QEMU accepts *device* only for devices bound to a display
        console, which a ``-display none`` guest has not.
        """
        if pace < 0.012:
            raise ValueError("pace below 12 ms per key overflows QEMU's keyboard queue")
        for typed, char in enumerate(text):
            if acked is not None:
                deadline = time.monotonic() + ack_timeout
                while typed - acked() >= window:
                    if time.monotonic() > deadline:
                        raise TimeoutError(
                            f"reader acknowledged {acked()} of {typed} keys in {ack_timeout} s"
                        )
                    time.sleep(0.005)
            self.press(keys_for(char), device=device, pace=pace)

    # --- hotplug ------------------------------------------------------------------------

    def device_del(self, device_id: str, timeout: float = 60.0) -> None:
        """Unplug *device_id* and wait until QEMU reports it deleted."""
        self.execute("device_del", id=device_id)
        self.wait_event(
            "DEVICE_DELETED", timeout, lambda e: e.get("data", {}).get("device") == device_id
        )
        log.debug("unplugged %s", device_id)

    def device_add(self, driver: str, device_id: str, **properties: Any) -> None:
        """Plug a new *driver* device named *device_id* (e.g. ``bus="xhci.0"``)."""
        self.execute("device_add", driver=driver, id=device_id, **properties)
        log.debug("plugged %s (%s)", device_id, driver)
