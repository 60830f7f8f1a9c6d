"""Wait for a device to appear: udev events, inotify on device folders, a slow poll last.

A device worker whose device is absent sleeps in :meth:`DeviceWatch.wait` until
something may have changed, then tries to open the device again:

- **udev** (pyudev's netlink monitor, ``source="udev"``): an ``add``/``change``/``bind``
  event in the device's subsystems (tty, input, usb, hidraw). udev sends it after its
  rules ran, so the ``/dev/serial/by-id`` and ``/dev/input/by-id`` links exist by then.
  Used when udev runs (``/run/udev/control`` exists) and pyudev imports.
- **inotify** on the folder of a configured path (or its nearest existing ancestor):
  covers what udev cannot see (a pseudo-terminal's symlink, a FIFO) and a machine
  without udev, where devtmpfs nodes still appear in ``/dev``.
- **a timer**: a slow safety poll (:data:`SAFETY_POLL`) when an event source covers the
  device, the old backoff cap (:data:`FALLBACK_POLL`) when none does.

Opening right after an event can still fail (permissions being applied, a port busy
for a moment), so for :data:`EVENT_RETRY_WINDOW` seconds after each event the worker
retries with its short backoff before going back to sleep.

Nothing here opens a device; the waits never spin, and :meth:`DeviceWatch.wake` ends
one at once from another thread (stop, reload).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
import os
import select
import struct
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

UDEV_CONTROL = Path("/run/udev/control")
"""udevd's control socket: present while udev runs (what libudev itself checks)."""
SAFETY_POLL = 60.0
"""Seconds between open attempts while an event source watches for the device."""
FALLBACK_POLL = 2.0
"""Seconds between open attempts when no event source can see the device."""
EVENT_RETRY_WINDOW = 5.0
"""Seconds after an event during which a failed open is retried with the short backoff."""

SUBSYSTEMS: dict[str, tuple[str, ...]] = {
    "serial": ("tty", "usb"),
    "idcard_serial": ("tty", "usb"),
    "evdev": ("input", "usb"),
    "usbhid": ("usb", "hidraw"),
    "idcard_usb": ("usb", "hidraw"),
}
"""udev subsystems whose events may bring a device of each driver back."""
DEVICE_FOLDERS: dict[str, str] = {
    "serial": "/dev",
    "idcard_serial": "/dev",
    "evdev": "/dev/input",
}
"""Where each driver's nodes appear when the config names no path (usb = vid:pid)."""

_IN_NONBLOCK = os.O_NONBLOCK
_IN_CLOEXEC = os.O_CLOEXEC
_IN_ATTRIB = 0x00000004
_IN_MOVED_TO = 0x00000080
_IN_CREATE = 0x00000100
_IN_DELETE_SELF = 0x00000400
_IN_MOVE_SELF = 0x00000800
_WATCH_MASK = _IN_ATTRIB | _IN_MOVED_TO | _IN_CREATE | _IN_DELETE_SELF | _IN_MOVE_SELF
_INOTIFY_EVENT = struct.Struct("iIII")


def udev_running() -> bool:
    """True when udevd runs here (its control socket exists)."""
    return UDEV_CONTROL.exists()


def import_pyudev() -> Any:
    """pyudev when udev runs and the library imports, else None (then: inotify and polling)."""
    if not udev_running():
        return None
    try:
        import pyudev
    except ImportError as err:
        log.warning("udev runs but pyudev does not import (%s): hotplug falls back to polling", err)
        return None
    return pyudev


class _Inotify:
    """A non-blocking inotify descriptor over a few folders (libc through ctypes)."""

    _libc: Any = None

    def __init__(self, folders: Iterable[str]) -> None:
        libc = _Inotify._load()
        self.fd: int = libc.inotify_init1(_IN_NONBLOCK | _IN_CLOEXEC)
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1 failed")
        watched = 0
        for folder in folders:
            if libc.inotify_add_watch(self.fd, os.fsencode(folder), _WATCH_MASK) >= 0:
                watched += 1
        if not watched:
            os.close(self.fd)
            raise OSError(ctypes.get_errno(), "no folder could be watched")

    @classmethod
    def _load(cls) -> Any:
        if cls._libc is None:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
            libc.inotify_init1.argtypes = [ctypes.c_int]
            libc.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
            cls._libc = libc
        return cls._libc

    def drain(self) -> list[str]:
        """Names of the entries the pending events are about ('' for a folder itself)."""
        names: list[str] = []
        while True:
            try:
                data = os.read(self.fd, 4096)
            except BlockingIOError:
                return names
            offset = 0
            while offset + _INOTIFY_EVENT.size <= len(data):
                _wd, _mask, _cookie, length = _INOTIFY_EVENT.unpack_from(data, offset)
                start = offset + _INOTIFY_EVENT.size
                names.append(data[start : start + length].rstrip(b"\0").decode(errors="replace"))
                offset = start + length

    def close(self) -> None:
        os.close(self.fd)


def _nearest_folder(path: str) -> str:
    """The folder holding *path*, or its nearest existing ancestor (by-id folders come and go)."""
    folder = Path(path).absolute().parent
    while not folder.is_dir() and folder != folder.parent:
        folder = folder.parent
    return str(folder)


class DeviceWatch:
    """Sleeps until a configured device may have appeared (see the module docstring).

    *driver* is the config's driver name; *paths* the configured device paths, if any.
    Call :meth:`arm` before each open attempt (so an event that comes during the attempt
    is not lost), then :meth:`wait` when it failed; :meth:`close` at the end.
    """

    def __init__(self, driver: str, paths: Iterable[str] = ()) -> None:
        self.driver = driver
        self.subsystems = SUBSYSTEMS.get(driver, ())
        self._paths = [p for p in paths if p]
        self._default_folder = DEVICE_FOLDERS.get(driver)
        self._inotify_ok = True
        self._pyudev = import_pyudev() if self.subsystems else None
        self._monitor: Any = None
        self._inotify: _Inotify | None = None
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._retry_until = 0.0

    @property
    def sources(self) -> list[str]:
        """The event sources in use once armed: ``udev``, ``inotify`` (maybe none)."""
        out = []
        if self._monitor is not None:
            out.append("udev")
        if self._inotify is not None:
            out.append("inotify")
        return out

    def arm(self) -> None:
        """Start listening (idempotent); from now on no event is missed."""
        if self._pyudev is not None and self._monitor is None:
            try:
                monitor = self._pyudev.Monitor.from_netlink(self._pyudev.Context())
                for subsystem in self.subsystems:
                    monitor.filter_by(subsystem)
                monitor.start()
            except OSError as err:
                log.warning("udev monitor unavailable (%s): hotplug by inotify/polling", err)
                self._pyudev = None
            else:
                self._monitor = monitor
        if self._inotify is None and self._inotify_ok:
            # Recomputed on each arm: the nearest existing folder changes as by-id
            # folders come and go.
            folders = {_nearest_folder(p) for p in self._paths}
            if not folders and self._default_folder:
                folders = {self._default_folder}
            if not folders:
                self._inotify_ok = False
                return
            try:
                self._inotify = _Inotify(sorted(folders))
            except OSError as err:
                log.debug("inotify on %s unavailable: %s", sorted(folders), err)
                self._inotify_ok = False

    def wait(self, retry_delay: float, now: float, *, failing: bool = False) -> str | None:
        """Sleep until an event, :meth:`wake` or the poll timer; what woke it (None: timer).

        *retry_delay* is the worker's short backoff, used while an event is recent
        (*now* < the end of the retry window), when no event source watches, and when
        the device is there but *failing* to open (busy, grabbed): its release makes
        no event.
        """
        sources = [fd for fd in (self._udev_fd(), self._inotify_fd()) if fd is not None]
        if not sources:
            timeout = min(retry_delay, FALLBACK_POLL)
        elif failing or now < self._retry_until:
            timeout = retry_delay
        else:
            timeout = SAFETY_POLL
        ready, _, _ = select.select([self._wake_r, *sources], [], [], timeout)
        reason = None
        if self._wake_r in ready:
            with contextlib.suppress(BlockingIOError):
                os.read(self._wake_r, 64)
            reason = "wake"
        if self._monitor is not None and self._monitor.fileno() in ready:
            reason = self._udev_events() or reason
        if self._inotify is not None and self._inotify.fd in ready:
            names = self._inotify.drain()
            # A new by-id folder or a replaced link: watch again from the nearest folder.
            self._inotify.close()
            self._inotify = None
            self.arm()
            reason = f"inotify {','.join(n for n in names if n) or 'folder'}"
        if reason is not None and reason != "wake":
            self._retry_until = time.monotonic() + EVENT_RETRY_WINDOW
        return reason

    def _udev_events(self) -> str | None:
        """Drain the monitor; a description of the events that may bring a device back."""
        found = []
        while (device := self._monitor.poll(timeout=0)) is not None:
            if device.action in ("add", "change", "bind", "move"):
                found.append(f"{device.action} {device.subsystem} {device.sys_name}")
        return f"udev {'; '.join(found)}" if found else None

    def _udev_fd(self) -> int | None:
        return None if self._monitor is None else int(self._monitor.fileno())

    def _inotify_fd(self) -> int | None:
        return None if self._inotify is None else self._inotify.fd

    def wake(self) -> None:
        """End a :meth:`wait` in another thread now. Thread-safe, never blocks."""
        with contextlib.suppress(BlockingIOError, OSError):
            os.write(self._wake_w, b"\0")

    def disarm(self) -> None:
        """Stop listening while the device is bound (events would only pile up)."""
        self._monitor = None  # pyudev closes its netlink socket when collected
        if self._inotify is not None:
            self._inotify.close()
            self._inotify = None

    def close(self) -> None:
        """Release everything (idempotent)."""
        self.disarm()
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._wake_r = self._wake_w = -1
