"""The exception hierarchy.

Every error scanfleet raises derives from :class:`ScanfleetError`; where a builtin
exception has the same meaning the subclass inherits it too, so callers that only
know the builtin (``TimeoutError``, ``ImportError``, ``ValueError``) still catch it.
Errors carry their facts as attributes, not only in the message.
(tests/unit/test_errors.py holds every module to this.) The only exceptions outside
the root are the supervisor's private signal exceptions (``runner._Stop``,
``runner._Reload``): control flow, which a handler of ``ScanfleetError`` must not catch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


class ScanfleetError(Exception):
    """Root of every scanfleet exception."""


@dataclass(frozen=True)
class ConfigProblem:
    """One thing wrong with a configuration document."""

    path: str
    """Dotted key path, e.g. ``devices[0].baudrate`` (empty for the whole document)."""
    message: str
    line: int | None = None
    """1-based line in the file where the key (or its table) stands, when known."""

    def __str__(self) -> str:
        where = f"line {self.line}: " if self.line is not None else ""
        key = self.path or "<document>"
        return f"{where}{key}: {self.message}"


class ConfigError(ScanfleetError, ValueError):
    """A configuration file or document is invalid; ``problems`` lists every error found."""

    def __init__(self, source: str, problems: Sequence[ConfigProblem]) -> None:
        self.source = source
        self.problems = tuple(problems)
        lines = "\n".join(f"  {p}" for p in self.problems)
        super().__init__(f"{source}: {len(self.problems)} configuration error(s)\n{lines}")


class IdentityError(ScanfleetError, ValueError):
    """The device identity (site or device id) is missing or malformed."""


class DriverError(ScanfleetError):
    """A device driver failed."""


class DriverUnavailableError(DriverError, ImportError):
    """A driver's library (pyusb, evdev, …) is not installed or cannot load."""

    def __init__(self, driver: str, library: str, reason: str = "") -> None:
        self.driver = driver
        self.library = library
        msg = f"driver {driver!r} needs {library}"
        super().__init__(f"{msg}: {reason}" if reason else msg)


class DeviceGoneError(DriverError, OSError):
    """The device disappeared (unplugged, port closed under us)."""


class DriverTimeoutError(DriverError, TimeoutError):
    """A device did not answer in time."""


class JournalError(ScanfleetError):
    """The journal cannot do what was asked."""


class JournalFullError(JournalError, OSError):
    """Undelivered records fill the size budget: new reads are refused, never dropped silently."""

    def __init__(self, budget_bytes: int, used_bytes: int) -> None:
        self.budget_bytes = budget_bytes
        self.used_bytes = used_bytes
        super().__init__(
            f"journal full: {used_bytes} bytes of undelivered records in a budget of "
            f"{budget_bytes} bytes"
        )


class JournalDiskFullError(JournalError, OSError):
    """The file system is full: the journal cannot commit until space returns."""

    def __init__(self, path: str, needed_bytes: int, free_bytes: int) -> None:
        self.path = path
        self.needed_bytes = needed_bytes
        self.free_bytes = free_bytes
        super().__init__(
            f"disk full: the journal at {path} needs about {needed_bytes // 1024 + 1} KiB free "
            f"to commit, {free_bytes // 1024} KiB are left"
        )


class JournalSchemaError(JournalError):
    """The database was written by a newer scanfleet, or its schema is unknown."""


class JournalCorruptError(JournalError):
    """The journal failed its integrity check or its hash chain does not verify."""


class BrokerConnectionError(ScanfleetError, ConnectionError):
    """The MQTT broker refused or dropped the connection; ``reason`` says how."""

    def __init__(self, reason: str, code: int | None = None) -> None:
        self.reason = reason
        self.code = code
        super().__init__(f"broker connection: {reason}" + (f" (code {code})" if code else ""))


class BrokerRefusedError(BrokerConnectionError):
    """The broker (or the way to it) said no in a way retrying alone will not fix.

    ``cause`` is stable and machine-readable: ``protocol_version``, ``not_authorized``,
    ``bad_credentials``, ``client_id``, ``tls``, ``dns`` or ``refused`` (another CONNACK
    failure); ``reason`` says it for people.
    """

    def __init__(self, cause: str, reason: str, code: int | None = None) -> None:
        self.cause = cause
        super().__init__(reason, code)


class EnrollmentError(ScanfleetError):
    """The device could not enroll or renew its certificate with the fleet service."""
