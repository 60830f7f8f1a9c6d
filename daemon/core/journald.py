"""Logging to the systemd journal with fields IT staff can filter on.

Under systemd (``JOURNAL_STREAM`` naming our stderr, or ``INVOCATION_ID`` set) and
with systemd-python installed, log records go to journald as native entries:
``journalctl -u scanfleet SCANFLEET_DEVICE=counter-scanner`` or
``journalctl SCANFLEET_SEQ=1234`` then find them. Elsewhere logging stays on stderr.

Only the fields in :data:`FIELDS` ever leave as journal fields. systemd-python's own
``JournalHandler.emit`` copies every attribute of the log record, plus ``str(args)``
of the call, into fields: that would repeat each argument a second time and let any
``extra=`` reach the journal. Identity data never reaches a log line in scanfleet;
this keeps it that way for fields too.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping
from typing import Any

FIELDS = {
    "scanfleet_device": "SCANFLEET_DEVICE",
    "scanfleet_seq": "SCANFLEET_SEQ",
    "scanfleet_kind": "SCANFLEET_KIND",
    "scanfleet_verdict": "SCANFLEET_VERDICT",
}
"""``extra=`` keys a log call may pass → the journal field each becomes."""

DEVICE_THREAD_PREFIX = "device-"
"""Device workers run in threads named ``device-{name}``: their records get SCANFLEET_DEVICE."""

SYSLOG_IDENTIFIER = "scanfleet"

log = logging.getLogger(__name__)


def under_systemd(environ: Mapping[str, str] | None = None) -> bool:
    """True when systemd started this process and its stderr goes to the journal."""
    env = os.environ if environ is None else environ
    stream = env.get("JOURNAL_STREAM", "")
    if stream:
        try:
            st = os.fstat(sys.stderr.fileno())
        except (OSError, ValueError, AttributeError):
            return False  # no real stderr: not the stream systemd handed us
        return stream == f"{st.st_dev}:{st.st_ino}"
    return bool(env.get("INVOCATION_ID"))


def journal_fields(record: logging.LogRecord) -> dict[str, str]:
    """The SCANFLEET_* fields of *record* (from ``extra=`` and the thread name)."""
    fields: dict[str, str] = {}
    thread = record.threadName or ""
    if thread.startswith(DEVICE_THREAD_PREFIX):
        fields["SCANFLEET_DEVICE"] = thread[len(DEVICE_THREAD_PREFIX) :]
    for attr, field in FIELDS.items():
        value = getattr(record, attr, None)
        if value is not None:
            fields[field] = str(value)
    return fields


def journal_handler(**constant: str) -> logging.Handler | None:
    """A handler that writes native journal entries, or None without systemd-python.

    *constant* fields (e.g. ``SCANFLEET_SITE``) go with every entry.
    """
    try:
        from systemd.journal import JournalHandler
    except ImportError:
        return None

    class ScanfleetJournalHandler(JournalHandler):  # type: ignore[misc]  # untyped C binding
        """systemd-python's handler with a closed set of fields (see the module doc)."""

        def emit(self, record: logging.LogRecord) -> None:
            try:
                message = self.format(record)
                self.send(
                    message,
                    PRIORITY=str(self.map_priority(record.levelno)),
                    LOGGER=record.name,
                    THREAD_NAME=record.threadName or "",
                    CODE_FILE=record.pathname,
                    CODE_LINE=record.lineno,
                    CODE_FUNC=record.funcName,
                    **self._extra,
                    **journal_fields(record),
                )
            except Exception:  # noqa: BLE001 - logging must never raise into the caller
                self.handleError(record)

    for name in constant:
        if not name.startswith("SCANFLEET_"):
            raise ValueError(f"constant journal fields are SCANFLEET_*: {name}")
    handler: logging.Handler = ScanfleetJournalHandler(
        SYSLOG_IDENTIFIER=SYSLOG_IDENTIFIER, **constant
    )
    handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
    return handler


def use_journal(level: int, **constant: str) -> bool:
    """Route the root logger to journald when under systemd; True when it did."""
    if not under_systemd():
        return False
    handler = journal_handler(**constant)
    if handler is None:
        log.warning("running under systemd without systemd-python: logging to stderr")
        return False
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    return True


def log_committed(record: dict[str, Any]) -> None:
    """Pipeline listener: one line per committed record, with its seq as a field.

    Carries seq, type, kind, verdict and device only: never the code's value and never
    anything of an identity read.
    """
    source = record.get("source") or {}
    kind = record.get("kind") or record.get("type", "record")
    log.info(
        "committed seq %s: %s, %s",
        record.get("seq"),
        kind,
        record.get("verdict"),
        extra={
            "scanfleet_seq": record.get("seq"),
            "scanfleet_device": source.get("device"),
            "scanfleet_kind": kind,
            "scanfleet_verdict": record.get("verdict"),
        },
    )
