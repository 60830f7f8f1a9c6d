"""The narrow views the health report and the remote commands get of the daemon.

The supervisor (:class:`~scanfleet.daemon.runner.Daemon`) and its parts satisfy
these protocols structurally; :func:`~scanfleet.daemon.runner.build_daemon` wiring
hands each consumer the part it reads (the journal, the alarms, the station, the
overlay, the control channel) and the supervisor only as :class:`RunningState` or
:class:`Supervisor`. Nothing here imports the supervisor, so dependencies run one way
(ARCHITECTURE.md). A member appears here only when a consumer uses it.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any, Protocol

from scanfleet.daemon.core.alarms import Alarm
from scanfleet.daemon.core.config import Config
from scanfleet.daemon.intake.devices import DeviceState
from scanfleet.daemon.journal.reader import JournalStats, Record
from scanfleet.daemon.publish.state import BrokerState
from scanfleet.daemon.station.station import Origin


class JournalView(Protocol):
    """What health reads of the journal (its figures)."""

    def stats(self) -> JournalStats: ...


class JournalReplay(JournalView, Protocol):
    """What the ``resend`` command reads besides: the head and stored records."""

    @property
    def last_seq(self) -> int: ...

    def read_after(self, after_seq: int, *, limit: int, max_bytes: int) -> list[Record]: ...


class AlarmView(Protocol):
    """The active alarms (health, ``status``)."""

    def active(self) -> list[Alarm]: ...


class AlarmDesk(AlarmView, Protocol):
    """The active alarms and their acknowledgement (the ``ack`` command)."""

    def ack(self, code: str) -> bool: ...


class OverlayVersion(Protocol):
    """The version of the pushed config running now (None: the file only)."""

    @property
    def version(self) -> int | None: ...


class ConnectionView(Protocol):
    """Whether the control channel's broker connection is up."""

    @property
    def connected(self) -> bool: ...


class BrokerView(Protocol):
    """Where the publisher's connection loop is (``status``)."""

    @property
    def broker_state(self) -> BrokerState: ...


class StationDesk(Protocol):
    """The station context the ``status`` and ``station`` commands read and change."""

    def snapshot(self) -> dict[str, Any]: ...

    def status(self) -> dict[str, Any]: ...

    def set_operation(self, operation: str, *, origin: Origin = ...) -> object: ...

    def set_operator(self, operator: str | None, *, origin: Origin = ...) -> object: ...

    def set_bill(self, bill: str, *, origin: Origin = ...) -> object: ...

    def end_bill(self, *, origin: Origin = ...) -> object: ...


class SecretFilter(Protocol):
    """Takes secrets out of a command's reply or refusal."""

    def data(self, value: Any) -> Any: ...

    def text(self, text: str) -> str: ...


class WorkerView(Protocol):
    """One device worker as the ``devices`` command reports it."""

    @property
    def state(self) -> DeviceState: ...

    @property
    def reads(self) -> int: ...

    @property
    def problems(self) -> int: ...

    @property
    def last_problem(self) -> str | None: ...


class RunningState(Protocol):
    """What changes while the daemon runs: the running config, certificate, devices."""

    @property
    def config(self) -> Config: ...

    @property
    def cert_not_after(self) -> datetime | None: ...

    def device_states(self) -> dict[str, DeviceState]: ...


class Supervisor(RunningState, Protocol):
    """What the remote commands ask of the supervisor besides: its workers and actions."""

    @property
    def workers(self) -> Mapping[str, WorkerView]: ...

    def rebind(self, name: str | None = None) -> list[str]:
        """Reopen the named device (all when None); the names rebound."""
        ...

    def renew_certificate(self) -> datetime | None:
        """Renew the device certificate now; its new expiry."""
        ...

    def request_restart(self, *, delay: float = 0.0) -> None:
        """Stop cleanly after *delay* seconds and exit for systemd to start us again."""
        ...
