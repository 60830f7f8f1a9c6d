"""What the health report and the remote commands see of the running daemon.

The supervisor (:class:`~scanfleet.daemon.runner.Daemon`) satisfies these protocols
structurally and hands itself to :class:`~scanfleet.daemon.remote.health.HealthReporter`
and :class:`~scanfleet.daemon.remote.commands.RemoteCommands` through their
constructors; neither imports the supervisor, so dependencies run one way
(ARCHITECTURE.md). A member appears here only when one of them uses it.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Protocol

from scanfleet.daemon.core.alarms import AlarmSet
from scanfleet.daemon.core.config import Config
from scanfleet.daemon.core.identity import Identity
from scanfleet.daemon.core.redact import Redactor
from scanfleet.daemon.intake.devices import DeviceState, DeviceWorker
from scanfleet.daemon.journal.journal import Journal
from scanfleet.daemon.publish.publisher import Publisher
from scanfleet.daemon.remote.config import RemoteConfig
from scanfleet.daemon.remote.control import ControlChannel
from scanfleet.daemon.station.station import Station


class HealthSource(Protocol):
    """What the periodic health message reads."""

    @property
    def config(self) -> Config: ...

    @property
    def identity(self) -> Identity: ...

    @property
    def journal(self) -> Journal: ...

    @property
    def alarms(self) -> AlarmSet: ...

    @property
    def remote(self) -> RemoteConfig: ...

    @property
    def control(self) -> ControlChannel: ...

    @property
    def cert_not_after(self) -> datetime | None: ...

    def device_states(self) -> dict[str, DeviceState]: ...


class CommandHost(HealthSource, Protocol):
    """What the remote commands read and ask for, besides what health reads."""

    @property
    def publisher(self) -> Publisher: ...

    @property
    def station(self) -> Station: ...

    @property
    def workers(self) -> Mapping[str, DeviceWorker]: ...

    @property
    def redactor(self) -> Redactor: ...

    def rebind(self, name: str | None = None) -> list[str]:
        """Reopen the named device (all when None); the names rebound."""
        ...

    def renew_certificate(self) -> datetime | None:
        """Renew the device certificate now; its new expiry."""
        ...

    def request_restart(self, *, delay: float = 0.0) -> None:
        """Stop cleanly after *delay* seconds and exit for systemd to start us again."""
        ...
