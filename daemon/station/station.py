"""The station: current operation, bill and operator, and the checks scans go through.

Changes come from configuration, control barcodes (``#SF:OP=receiving``), the local
POS interface and remote commands; all of them are plain methods here
(:meth:`Station.set_operation`, :meth:`Station.set_bill`, :meth:`Station.end_bill`, …).
Every change is journaled as a ``type: "control"`` record, in the same ordered stream as
scans, so a backend can replay the context; control records are never scans. A bill's
end writes a ``bill_summary`` record. See docs/station.md.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable
from dataclasses import replace
from typing import Any, Literal

from pydantic import Field

from scanfleet.daemon.core.alarms import AlarmSet
from scanfleet.daemon.core.config import Config
from scanfleet.daemon.core.errors import ConfigError, ScanfleetError
from scanfleet.daemon.core.model import Operation, StationRecord, Verdict
from scanfleet.daemon.core.records import (
    CONTROL_SCHEMA,
    Action,
    BillSummaryBody,
    ControlBody,
    Origin,
    RecordBody,
    ScanBody,
    Stamp,
    StationContext,
)
from scanfleet.daemon.journal.journal import Journal
from scanfleet.daemon.station.duplicates import DuplicateIndex
from scanfleet.daemon.station.index_guard import IndexGuard
from scanfleet.daemon.station.manual import EntryRequest, entry_body, parse_entry
from scanfleet.daemon.station.receiving import BillProgress, Check, Manifest, load_manifest

__all__ = ["CONTROL_SCHEMA", "ControlRecord", "Origin", "Station", "StationError"]

log = logging.getLogger(__name__)

_ACTIONS: dict[str, Action] = {
    "OP": "operation",
    "BILL": "bill",
    "OPERATOR": "operator",
    "END": "end_bill",
    "EXEMPT": "manual",
    "MANUAL": "manual",
}

_BILL_RE = re.compile(r"^[^\s/\\]{1,100}$")
_FILE_SAFE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")


class ControlRecord(StationRecord):
    """A ``control`` journal record: a change of station context. Never a scan."""

    schema_: Literal["scanfleet.control/1"] = Field(default="scanfleet.control/1", alias="schema")
    type: Literal["control"] = "control"
    source: dict[str, Any] | None = Field(
        default=None, description="The scanner, for a control barcode."
    )
    raw: str | None = Field(default=None, description="The control barcode as read.")
    action: Literal["operation", "bill", "operator", "end_bill", "manual", "enroll", "unknown"]
    argument: str | None = None
    verdict: Literal["accepted", "refused"]
    reason: str | None = None
    station: str | None = None
    operation: Operation = Field(description="The operation after this change.")
    bill: str | None = Field(description="The bill after this change.")
    operator: str | None = Field(description="The operator after this change.")


class StationError(ScanfleetError, ValueError):
    """A station change that cannot be made (bad operation, bill name, entry)."""


class Station:
    """Operation/bill/operator state of one terminal and the per-scan checks."""

    def __init__(
        self,
        config: Config,
        append: Callable[[RecordBody], dict[str, Any]],
        now_stamp: Callable[[], Stamp],
        *,
        index: DuplicateIndex | None = None,
        alarms: AlarmSet | None = None,
    ) -> None:
        self._config = config
        self._append = append
        self._now_stamp = now_stamp
        self.index = index
        self._alarms = alarms or AlarmSet()
        self._lock = threading.RLock()
        self.operation: Operation = config.station.operation
        self.bill: str | None = None
        self.operator: str | None = config.station.operator
        self.progress: BillProgress | None = None
        self.last_summary: dict[str, Any] | None = None
        self._manifests: dict[str, Manifest] = {}
        self._bill_seq: int | None = None
        self._guard = IndexGuard(self._alarms)

    # -- configuration ------------------------------------------------------------

    def update_config(self, config: Config) -> None:
        """Use a reloaded config; a changed default operation/operator takes effect now."""
        with self._lock:
            old = self._config.station
            if config.station.operation != old.operation:
                self.operation = config.station.operation
            if config.station.operator != old.operator:
                self.operator = config.station.operator
            self._config = config

    @property
    def prefix(self) -> str:
        """The control-barcode prefix."""
        return self._config.station.control_prefix

    def is_control(self, value: str) -> bool:
        """True when *value* is a control barcode."""
        return value.startswith(self.prefix)

    def snapshot(self) -> dict[str, Any]:
        """The station context as JSON (status, station view): operation, bill, operator."""
        with self._lock:
            return {"operation": str(self.operation), "bill": self.bill, "operator": self.operator}

    def context(self) -> StationContext:
        """The station context for a record: operation, bill, operator."""
        with self._lock:
            return StationContext(self.operation, self.bill, self.operator)

    def status(self) -> dict[str, Any]:
        """Context and bill progress (station view, local API ``status``)."""
        with self._lock:
            progress = None
            if self.progress is not None:
                progress = {
                    "manifest": self.progress.manifest is not None,
                    "expected_units": self.progress.expected_units,
                    "received_units": self.progress.received_units,
                    "scans": self.progress.accepted,
                    "refused": self.progress.refused,
                }
            return {**self.snapshot(), "progress": progress, "last_summary": self.last_summary}

    # -- changes (plain methods: barcodes, local API and remote commands call these) ---

    def set_operation(
        self, operation: Operation | str, *, origin: Origin = "local_api"
    ) -> dict[str, Any]:
        """Switch the current operation; returns the journaled control record."""
        try:
            op = Operation(operation)
        except ValueError as err:
            raise StationError(f"unknown operation {operation!r}") from err
        with self._lock:
            self.operation = op
            return self._control("operation", str(op), origin)

    def set_operator(self, operator: str | None, *, origin: Origin = "local_api") -> dict[str, Any]:
        """Set (or with None/"" clear) the operator; returns the control record."""
        if operator is not None and len(operator) > 64:
            raise StationError("operator name longer than 64 characters")
        with self._lock:
            self.operator = operator or None
            return self._control("operator", self.operator, origin)

    def set_bill(self, bill: str, *, origin: Origin = "local_api") -> list[dict[str, Any]]:
        """Start bill *bill* (ending an open one first); returns the records journaled."""
        if not _BILL_RE.match(bill):
            raise StationError(f"bad bill number {bill!r}: 1-100 characters, no spaces or slashes")
        with self._lock:
            records = self.end_bill(origin=origin) if self.bill is not None else []
            manifest = self._manifests.pop(bill, None) or self._manifest_file(bill)
            self.bill = bill
            self.progress = BillProgress(bill, manifest)
            self._alarms.clear("bill_differences")
            records.append(self._control("bill", bill, origin))
            return records

    def end_bill(self, *, origin: Origin = "local_api") -> list[dict[str, Any]]:
        """End the open bill: a control record and its ``bill_summary``; returns both."""
        with self._lock:
            if self.bill is None or self.progress is None:
                raise StationError("no bill is open")
            control = self._control("end_bill", self.bill, origin)
            body = BillSummaryBody(
                stamp=self._stamp(),
                station=self._config.station.name,
                origin=origin,
                context=self.context(),
                tally=self.progress.tally(),
            )
            summary = self._journal(body)
            self.last_summary = summary
            if summary["status"] == "differences":
                self._alarms.raise_(
                    "bill_differences",
                    f"bill {self.bill} differs from its manifest: "
                    f"{len(summary['missing'])} missing, {len(summary['extra'])} extra code(s)",
                )
            self.bill = None
            self.progress = None
            self._bill_seq = None
            self._persist()
            return [control, summary]

    def load_manifest(self, manifest: Manifest) -> None:
        """Deliver a receiving manifest (backend push or local file) for its bill."""
        with self._lock:
            if self.bill == manifest.bill and self.progress is not None:
                if self.progress.accepted or self.progress.refused:
                    raise StationError(f"bill {manifest.bill} already has scans")
                self.progress = BillProgress(manifest.bill, manifest)
            else:
                self._manifests[manifest.bill] = manifest
            self._persist()

    def manual_entry(
        self, request: EntryRequest, *, origin: Origin = "local_api"
    ) -> dict[str, Any]:
        """Record a manual/exempt entry; returns the journaled ``manual_entry`` record."""
        with self._lock:
            body = entry_body(
                request, self._stamp(), self._config.station.name, self.context(), origin
            )
            return self._journal(body)

    def warn(self, code: str, message: str) -> None:
        """Show a backend warning (e.g. the platform reports a duplicate) as an alarm."""
        self._alarms.raise_(f"backend_warning:{code}", message)

    # -- reads from a scanner -------------------------------------------------------

    def control_read(self, value: str, raw: str, stamp: Stamp) -> tuple[list[dict[str, Any]], bool]:
        """Act on a control barcode; returns the records journaled and whether all went well."""
        command = value[len(self.prefix) :]
        key, _, arg = command.partition("=")
        key = key.strip().upper()
        base = (stamp, raw)
        with self._lock:
            self._read_base = base
            try:
                return self._dispatch(key, arg)
            except (StationError, ValueError) as err:
                action = _ACTIONS.get(key, "unknown")
                refused = self._control(action, arg or None, "barcode", refused=str(err), base=base)
                return [refused], False
            finally:
                self._read_base = None

    def enrollment(
        self,
        argument: str | None,
        origin: Origin,
        *,
        refused: str | None = None,
        stamp: Stamp | None = None,
    ) -> dict[str, Any]:
        """Journal an enrollment event (claim read, enrolled, failed) as an ``enroll`` record.

        *argument* names the site (never the claim's secret); *stamp* is a scanned
        claim's time and source (its raw text is not recorded).
        """
        base = None if stamp is None else (stamp, None)
        with self._lock:
            return self._control("enroll", argument, origin, refused=refused, base=base)

    def _dispatch(self, key: str, arg: str) -> tuple[list[dict[str, Any]], bool]:
        if key == "OP":
            return [self.set_operation(arg.strip().lower(), origin="barcode")], True
        if key == "BILL":
            return self.set_bill(arg.strip(), origin="barcode"), True
        if key == "OPERATOR":
            return [self.set_operator(arg.strip(), origin="barcode")], True
        if key == "END":
            records = self.end_bill(origin="barcode")
            return records, records[-1]["status"] != "differences"
        if key in ("EXEMPT", "MANUAL"):
            return [self.manual_entry(parse_entry(arg), origin="barcode")], True
        raise StationError(f"unknown control barcode {key!r}")

    def scan(self, body: ScanBody, *, fixed_operation: bool) -> dict[str, Any]:
        """Check an accepted-so-far scan body against duplicates and the bill, journal it."""
        with self._lock:
            operation = body.context.operation if fixed_operation else self.operation
            body = replace(body, context=StationContext(operation, self.bill, self.operator))
            check: Check | None = None
            if body.verdict is Verdict.ACCEPTED:
                body, check = self._checked(body)
            record = self._journal(body)
            if self.progress is not None:
                self.progress.commit(
                    body.value, check, record["seq"], body.verdict is Verdict.ACCEPTED
                )
            return record

    def _checked(self, body: ScanBody) -> tuple[ScanBody, Check | None]:
        """Duplicate and manifest checks of an accepted scan: the body they make of it."""
        reasons: list[str | None] = []
        problems = body.problems
        op, value = body.context.operation, body.value
        dup = self._guard.run(self.index, "check", lambda i: i.check(value, op))
        if dup is None and self.index is not None:
            problems = [*problems, "duplicate check unavailable"]
        split_units = split_unit = duplicate_of = None
        if dup is not None and dup.limit > 1:
            # 拆零: say which unit of how many, so the centre needs no config.
            split_units = dup.limit
            if dup.duplicate_of is None:
                split_unit = dup.uses + 1
        if dup is not None and dup.duplicate_of is not None:
            duplicate_of = dup.duplicate_of
            reasons.append(dup.reason)
        check = self.progress.check(value) if self.progress is not None else None
        if check is not None and check.reason:
            reasons.append(check.reason)
        verdict, reason = body.verdict, body.reason
        if reasons:
            verdict, reason = Verdict.REFUSED, "; ".join(r for r in reasons if r)
        body = replace(
            body,
            problems=problems,
            split_units=split_units,
            split_unit=split_unit,
            duplicate_of=duplicate_of,
            expected=check.expected if check is not None else None,
            verdict=verdict,
            reason=reason,
        )
        return body, check

    # -- internals -----------------------------------------------------------------

    _read_base: tuple[Stamp, str | None] | None = None
    """Stamp and raw text of the control barcode being handled."""

    def _stamp(self) -> Stamp:
        """Time, clock and source: of the control barcode being handled, else of now."""
        return self._read_base[0] if self._read_base is not None else self._now_stamp()

    def _journal(self, body: RecordBody) -> dict[str, Any]:
        record = self._append(body)
        self._guard.run(self.index, "add", lambda i: i.add_record(record))
        return record

    def _control(
        self,
        action: Action,
        argument: str | None,
        origin: Origin,
        *,
        refused: str | None = None,
        base: tuple[Stamp, str | None] | None = None,
    ) -> dict[str, Any]:
        stamp, raw = base or self._read_base or (self._now_stamp(), None)
        body = ControlBody(
            stamp=stamp,
            raw=raw,
            station=self._config.station.name,
            origin=origin,
            action=action,
            argument=argument,
            verdict=Verdict.REFUSED if refused else Verdict.ACCEPTED,
            reason=refused,
            context=self.context(),
        )
        record = self._journal(body)
        if action == "bill" and not refused:
            self._bill_seq = record["seq"]
        self._persist()
        log.info("station %s: %s %s (%s)", action, argument, body.verdict, origin)
        return record

    def _persist(self) -> None:
        if self.index is None:
            return
        manifest = self.progress.manifest if self.progress is not None else None
        state = {
            "operation": str(self.operation),
            "operator": self.operator,
            "bill": self.bill,
            "bill_seq": self._bill_seq,
            "manifest": manifest.model_dump(mode="json") if manifest else None,
            "pending": [m.model_dump(mode="json") for m in self._manifests.values()],
        }
        self._guard.run(self.index, "save state", lambda i: i.save_state(state))

    def restore(self, journal: Journal) -> None:
        """Come back with the context of the last run; replay the open bill's scans."""
        self._guard.journal = journal
        state = self._guard.run(self.index, "load state", lambda i: i.load_state())
        if not state:
            return
        with self._lock:
            try:
                self.operation = Operation(state["operation"])
                self.operator = state.get("operator")
                self._manifests = {
                    m.bill: m
                    for m in (Manifest.model_validate(x) for x in state.get("pending", []))
                }
                bill, bill_seq = state.get("bill"), state.get("bill_seq")
                if bill is None or bill_seq is None:
                    return
                raw = state.get("manifest")
                manifest = Manifest.model_validate(raw) if raw else None
            except (KeyError, ValueError) as err:
                log.warning("station state not restored: %s", err)
                return
            self.bill, self._bill_seq = bill, int(bill_seq)
            self.progress = BillProgress(bill, manifest)
            replayed = 0
            after = self._bill_seq
            while batch := journal.read_after(after, limit=500, max_bytes=4 << 20):
                for rec in batch:
                    after = rec.seq
                    record = rec.as_dict()
                    if record.get("type") == "scan" and record.get("bill") == bill:
                        check = self.progress.check(record["value"])
                        accepted = record.get("verdict") == Verdict.ACCEPTED
                        self.progress.commit(record["value"], check, rec.seq, accepted)
                        replayed += 1
            log.info("station: bill %s reopened after restart (%d scans replayed)", bill, replayed)

    def _manifest_file(self, bill: str) -> Manifest | None:
        directory = self._config.station.manifest_dir
        if directory is None or not _FILE_SAFE_RE.match(bill):
            return None
        path = directory / f"{bill}.json"
        if not path.exists():
            return None
        try:
            return load_manifest(path)
        except ConfigError as err:
            self._alarms.raise_("manifest_unusable", str(err))
            return None
