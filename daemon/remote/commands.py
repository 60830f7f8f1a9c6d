"""The commands a fleet operator can send a device (``cmd/{name}``).

``status``, ``devices``, ``resend {from_seq, to_seq}``, ``rebind {device?}``,
``restart``, ``diagnostics``, ``rotate-cert`` and ``station {operation?, bill?,
operator?, end_bill?}``. Each returns a JSON object or raises
:class:`~scanfleet.daemon.remote.control.CommandError`; :class:`ControlChannel` turns both into
the reply. Read-only commands and ``resend`` are idempotent; ``rebind`` and ``restart``
repeat harmlessly.
"""

from __future__ import annotations

import collections
import logging
import platform
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from scanfleet.daemon import __version__
from scanfleet.daemon.core.errors import EnrollmentError, ScanfleetError
from scanfleet.daemon.core.identity import Identity
from scanfleet.daemon.publish.envelope import build_batch, scans_topic
from scanfleet.daemon.remote.control import CommandError
from scanfleet.daemon.remote.host import (
    AlarmDesk,
    BrokerView,
    JournalReplay,
    OverlayVersion,
    SecretFilter,
    StationDesk,
    Supervisor,
)
from scanfleet.daemon.station.station import StationError

log = logging.getLogger(__name__)

MAX_RESEND = 20_000
"""Most records one ``resend`` covers (bigger gaps take several requests)."""
RESEND_BATCH = 500
RESEND_BATCH_BYTES = 256 * 1024
LOG_LINES = 200
DIAGNOSTICS_MAX_BYTES = 64 * 1024
RESTART_DELAY = 1.0
"""Seconds between answering ``restart`` and SIGTERM (lets the reply go out)."""


class RecentLog(logging.Handler):
    """The last log lines, with the device's identity redacted (for ``diagnostics``)."""

    def __init__(self, redact: dict[str, str], size: int = LOG_LINES) -> None:
        super().__init__(logging.INFO)
        self.lines: collections.deque[str] = collections.deque(maxlen=size)
        self._redact = {k: v for k, v in redact.items() if k}
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        """Keep one formatted, redacted line."""
        try:
            line = self.format(record)
        except (TypeError, ValueError):
            return
        for secret, placeholder in self._redact.items():
            line = line.replace(secret, placeholder)
        self.lines.append(line[:1000])


def _int(args: dict[str, Any], key: str) -> int:
    value = args.get(key)
    if not isinstance(value, int) or isinstance(value, bool):
        raise CommandError("bad_request", f"{key} must be an integer")
    return value


class RemoteCommands:
    """Carries out commands against the running daemon, through narrow views of its parts."""

    def __init__(
        self,
        *,
        identity: Identity,
        supervisor: Supervisor,
        journal: JournalReplay,
        alarms: AlarmDesk,
        station: StationDesk,
        overlay: OverlayVersion,
        broker: BrokerView,
        publish: Callable[[str, bytes], None],
        redactor: SecretFilter,
        recent_log: RecentLog | None = None,
    ) -> None:
        """Wire the views (no I/O); *publish* sends on the control channel (``resend``)."""
        self.identity = identity
        self.supervisor = supervisor
        self.journal = journal
        self.alarms = alarms
        self._station = station
        self.overlay = overlay
        self.broker = broker
        self._publish = publish
        self.redactor = redactor
        self.recent_log = recent_log
        self._handlers = {
            "status": self.status,
            "devices": self.devices,
            "resend": self.resend,
            "rebind": self.rebind,
            "restart": self.restart,
            "diagnostics": self.diagnostics,
            "rotate-cert": self.rotate_cert,
            "station": self.station,
            "ack": self.ack,
        }
        self._restarting = False

    @property
    def names(self) -> list[str]:
        """Known command names."""
        return sorted(self._handlers)

    def run(self, name: str, args: dict[str, Any]) -> dict[str, Any]:
        """Run command *name* with *args*; raise CommandError for refusals."""
        handler = self._handlers.get(name)
        if handler is None:
            raise CommandError("unknown_command", f"unknown command {name[:64]!r}")
        try:
            reply: dict[str, Any] = self.redactor.data(handler(args))
        except CommandError as err:
            raise CommandError(err.code, self.redactor.text(err.message)) from err
        return reply

    # -- read-only --------------------------------------------------------------------------

    def status(self, args: dict[str, Any]) -> dict[str, Any]:
        """Versions, broker, journal, alarms, config version, station context."""
        stats = self.journal.stats()
        return {
            "version": __version__,
            "site": self.identity.site,
            "device": self.identity.device,
            "broker": str(self.broker.broker_state),
            "journal": {
                "last_seq": stats.last_seq,
                "delivered_seq": stats.delivered_seq,
                "depth": stats.depth,
                "pruned_through_seq": stats.pruned_through_seq,
            },
            "alarms": [a.as_json() for a in self.alarms.active()],
            "config_version": self.overlay.version,
            "station": self._station.snapshot(),
            "devices": {n: str(s) for n, s in self.supervisor.device_states().items()},
        }

    def ack(self, args: dict[str, Any]) -> dict[str, Any]:
        """Acknowledge alarm ``code`` (ends a sticky alarm such as journal_quarantined)."""
        code = args.get("code")
        if not isinstance(code, str) or not code:
            raise CommandError("bad_request", 'ack needs {"code": "<alarm code>"}')
        if not self.alarms.ack(code):
            raise CommandError("not_found", f"no active alarm {code[:64]!r}")
        return {"acknowledged": code}

    def devices(self, args: dict[str, Any]) -> dict[str, Any]:
        """Configured devices: driver, state, reads, problems."""
        configured = {dev.name: dev for dev in self.supervisor.config.devices}
        out: dict[str, Any] = {}
        for name, dev in configured.items():
            worker = self.supervisor.workers.get(name)
            out[name] = {
                "driver": dev.driver,
                "state": str(worker.state) if worker else "stopped",
                "reads": worker.reads if worker else 0,
                "problems": worker.problems if worker else 0,
                "last_problem": worker.last_problem if worker else None,
            }
        return {"devices": out}

    def diagnostics(self, args: dict[str, Any]) -> dict[str, Any]:
        """A bounded bundle: versions, running config (secrets out), log lines, journal stats."""
        config = self.supervisor.config.model_dump(mode="json")  # redacted by run()
        stats = self.journal.stats()
        lines = list(self.recent_log.lines) if self.recent_log else []
        bundle: dict[str, Any] = {
            "versions": {
                "scanfleet": __version__,
                "python": platform.python_version(),
                "platform": platform.platform(),
            },
            "config": config,
            "config_version": self.overlay.version,
            "journal": {
                "last_seq": stats.last_seq,
                "delivered_seq": stats.delivered_seq,
                "depth": stats.depth,
                "size_bytes": stats.size_bytes,
                "budget_bytes": stats.budget_bytes,
                "pruned_through_seq": stats.pruned_through_seq,
            },
            "log": lines,
        }
        # Oldest log lines go first until the bundle fits.
        while len(repr(bundle)) > DIAGNOSTICS_MAX_BYTES and bundle["log"]:
            bundle["log"] = bundle["log"][len(bundle["log"]) // 4 + 1 :]
        return bundle

    # -- actions ----------------------------------------------------------------------------

    def resend(self, args: dict[str, Any]) -> dict[str, Any]:
        """Publish records ``from_seq`` … ``to_seq`` again from the journal (gap repair)."""
        first, last = _int(args, "from_seq"), _int(args, "to_seq")
        newest = self.journal.last_seq
        if first < 1 or last < first:
            raise CommandError("bad_request", "need 1 <= from_seq <= to_seq")
        if last - first + 1 > MAX_RESEND:
            raise CommandError("bad_request", f"at most {MAX_RESEND} records per request")
        last = min(last, newest)
        topic = scans_topic(self.identity.site, self.identity.device)
        sent = batches = 0
        first_sent: int | None = None
        after = first - 1
        while after < last:
            records = self.journal.read_after(
                after, limit=min(RESEND_BATCH, last - after), max_bytes=RESEND_BATCH_BYTES
            )
            records = [r for r in records if r.seq <= last]
            if not records:
                break
            self._publish(
                topic,
                build_batch(self.identity.device, records[0].seq, [r.payload for r in records]),
            )
            first_sent = first_sent if first_sent is not None else records[0].seq
            sent += len(records)
            batches += 1
            after = records[-1].seq
        log.info("resend %d..%d: %d records in %d batches", first, last, sent, batches)
        return {
            "from_seq": first,
            "to_seq": last,
            "first_sent": first_sent,
            "records": sent,
            "batches": batches,
            "unavailable": max(0, last - first + 1 - sent),
        }

    def rebind(self, args: dict[str, Any]) -> dict[str, Any]:
        """Close and reopen one device (``device``) or all of them."""
        name = args.get("device")
        if name is not None and not isinstance(name, str):
            raise CommandError("bad_request", "device must be a string")
        try:
            names = self.supervisor.rebind(name)
        except KeyError as err:
            raise CommandError("unknown_device", f"no device {name!r} configured") from err
        return {"rebound": names}

    def restart(self, args: dict[str, Any]) -> dict[str, Any]:
        """Stop cleanly, exit with status 75; systemd's ``Restart=on-failure`` starts it again."""
        if not self._restarting:
            self._restarting = True
            # Later, so that this reply still goes out.
            self.supervisor.request_restart(delay=RESTART_DELAY)
        return {"restarting": True, "at": datetime.now(UTC).isoformat()}

    def rotate_cert(self, args: dict[str, Any]) -> dict[str, Any]:
        """Renew the device certificate now (early); the next reconnect uses it."""
        d = self.supervisor
        if d.cert_not_after is None:
            raise CommandError("not_enrolled", "the device does not use an enrolled certificate")
        try:
            enrolled = d.renew_certificate()
        except EnrollmentError as err:
            raise CommandError("renewal_failed", str(err)) from err
        return {"not_after": enrolled.isoformat() if enrolled else None}

    def station(self, args: dict[str, Any]) -> dict[str, Any]:
        """Change station context: ``operation``, ``operator``, ``bill``, ``end_bill``."""
        st = self._station
        try:
            if args.get("end_bill") is True:
                st.end_bill(origin="remote")
            if "operation" in args:
                st.set_operation(str(args["operation"]), origin="remote")
            if "operator" in args:
                op = args["operator"]
                st.set_operator(None if op is None else str(op), origin="remote")
            if "bill" in args:
                st.set_bill(str(args["bill"]), origin="remote")
        except (StationError, ScanfleetError) as err:
            raise CommandError("station_refused", str(err)) from err
        return {"station": st.status()}
