"""Desired configuration pushed over MQTT: validate, apply, probation, rollback, report.

The fleet publishes a retained document on ``scanfleet/v1/{site}/{device}/config``::

    {"schema": "scanfleet.desired-config/1", "version": 7, "mode": "overlay",
     "probation_s": 60, "config": {"station": {"operation": "dispense"}},
     "signature": "<base64 Ed25519 signature>"}

``overlay`` merges ``config`` into the local file's configuration (tables merge key by
key, arrays such as ``devices`` replace the whole array); ``replace`` replaces every
remotely settable section with ``config`` (unset ones take their defaults). The local
file stays the base: only the overlay document is stored (``remote-config.json`` in the
state directory) and re-applied on top of the file at every start and SIGHUP. An empty
retained message removes the overlay.

Sections that decide how the device reaches the broker or where its data lives
(``identity``, ``paths``, ``broker``, ``publisher``, ``journal``) cannot be set
remotely: a bad value there could cut the device off for good.

When ``STATE_DIR/fleet-config-key.pem`` (an Ed25519 public key) exists, only documents
signed with the matching private key are accepted. The signature covers the document
without ``signature`` as canonical JSON (sorted keys, no spaces, UTF-8).

After applying, the daemon watches for ``probation_s`` seconds: if a scanner that was
bound before (and is still configured) is not bound at the end, or the broker
connection is lost meanwhile, the previous configuration is restored. The outcome is
reported on the retained ``config/reported`` topic.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from scanfleet.daemon.core.config import Config
from scanfleet.daemon.core.desired_config import (
    ConfigReport,
    DesiredConfig,
    KeyedError,
    Rejected,
    Result,
    compose,
    compose_or_base,
    parse_document,
)
from scanfleet.daemon.core.errors import ConfigError, ConfigProblem
from scanfleet.daemon.core.statefiles import write_atomic

if TYPE_CHECKING:
    # cryptography is imported where a key is loaded or checked: a terminal without a
    # fleet config key never loads it.
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

log = logging.getLogger(__name__)

STATE_FILE = "remote-config.json"
KEY_FILE = "fleet-config-key.pem"


def load_key(state_dir: Path) -> Ed25519PublicKey | None:
    """The trusted fleet config key, when the device has one."""
    path = state_dir / KEY_FILE
    if not path.exists():
        return None
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        key = serialization.load_pem_public_key(path.read_bytes())
    except (OSError, ValueError) as err:
        raise ConfigError(str(path), [ConfigProblem("", f"unreadable public key: {err}")]) from err
    if not isinstance(key, Ed25519PublicKey):
        raise ConfigError(str(path), [ConfigProblem("", "not an Ed25519 public key")])
    return key


@dataclass(frozen=True)
class StoredOverlay:
    """What the state directory holds for :class:`RemoteConfig` at a start."""

    key: Ed25519PublicKey | None = None
    """The trusted fleet config key (``fleet-config-key.pem``), when the device has one."""
    active: DesiredConfig | None = None
    previous: DesiredConfig | None = None
    in_probation: bool = False
    last_digest: str | None = None
    last_report: ConfigReport | None = None

    @property
    def running(self) -> DesiredConfig | None:
        """The overlay a start runs: the last good one when a restart cut a probation short."""
        return self.previous if self.in_probation else self.active

    @classmethod
    def load(cls, state_dir: Path) -> StoredOverlay:
        """Read the key and ``remote-config.json`` (a damaged file counts as none)."""
        key = load_key(state_dir)
        path = state_dir / STATE_FILE
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            return cls(
                key=key,
                active=_doc_or_none(data.get("active")),
                previous=_doc_or_none(data.get("previous")),
                in_probation=bool(data.get("in_probation")),
                last_digest=data.get("last_digest"),
                last_report=ConfigReport.model_validate(data["last_report"])
                if data.get("last_report")
                else None,
            )
        except FileNotFoundError:
            return cls(key=key)
        except (OSError, ValueError, KeyError, TypeError) as err:
            # A damaged file must not stop the daemon: the file config alone runs.
            log.error("ignoring %s: %s", path, err)  # noqa: TRY400 - no traceback wanted
            return cls(key=key)


def compose_stored(base: Config, overlay: DesiredConfig | None) -> Config:
    """*base* with a stored *overlay*; the base alone when the overlay no longer fits."""
    try:
        return compose(base, overlay)
    except Rejected as err:
        version = overlay.version if overlay else None
        log.error("stored remote config v%s no longer fits the file: %s", version, err)  # noqa: TRY400
        return base


class RemoteConfig:
    """Keeps the pushed overlay, applies it through the daemon and rolls back.

    Args:
        state_dir: where ``remote-config.json`` (and the trusted key) live.
        device: device id for reports.
        stored: what the state directory held at the start (:meth:`StoredOverlay.load`).
        apply: makes a configuration the running one (the daemon rebinds drivers,
            changes station context and feedback, swaps the local API token); returns
            the changed settings that only a restart applies.
        bound_devices: names of the devices bound right now.
        report: publishes a report (retained) on ``config/reported``.
    """

    def __init__(
        self,
        state_dir: Path,
        device: str,
        stored: StoredOverlay,
        *,
        apply: Callable[[Config], list[str] | None],
        bound_devices: Callable[[], set[str]],
        report: Callable[[ConfigReport], None],
    ) -> None:
        """Take over *stored* (:meth:`StoredOverlay.load`); reads and writes nothing."""
        self.path = state_dir / STATE_FILE
        self.device = device
        self.key = stored.key
        self._apply = apply
        self._bound = bound_devices
        self._lost = threading.Event()
        self._report = report
        self._lock = threading.Lock()
        self._generation = 0
        self.active: DesiredConfig | None = stored.active
        self.last_digest: str | None = stored.last_digest
        self.last_report: ConfigReport | None = stored.last_report
        self._in_probation = False
        self._restart: list[str] = []
        """Settings of the last applied config that wait for a restart."""
        self._previous: DesiredConfig | None = None
        """The last good overlay while a new one is in probation (the rollback target)."""
        self._announce = False
        self._unsaved = False
        if stored.in_probation:
            # Restarted (or crashed) during probation: the new overlay never proved
            # itself, so the last good one runs; say so at the first connection.
            failed = self.active
            self.active = stored.previous
            self.last_report = self._make(
                failed.version if failed else None,
                "rolled_back",
                [KeyedError(key="", message="the daemon restarted during probation")],
            )
            self._announce = True
            self._unsaved = True

    def settle(self) -> None:
        """Write down the rollback of a restart during probation (the start's only write)."""
        if self._unsaved:
            self._save()
            self._unsaved = False

    # -- persistence ------------------------------------------------------------------------

    def _save(self) -> None:
        data = {
            "active": self.active.model_dump(mode="json", by_alias=True) if self.active else None,
            "previous": self._previous.model_dump(mode="json", by_alias=True)
            if self._previous
            else None,
            "in_probation": self._in_probation,
            "last_digest": self.last_digest,
            "last_report": self.last_report.model_dump(mode="json", by_alias=True)
            if self.last_report
            else None,
        }
        # 0600: a pushed local_api.token is in there.
        write_atomic(self.path, json.dumps(data).encode(), 0o600)

    # -- composition at start and reload ----------------------------------------------------

    def compose(self, base: Config) -> Config:
        """*base* with the stored overlay; the base alone when the overlay no longer fits."""
        return compose_stored(base, self.active)

    def connection_changed(self, connected: bool) -> None:
        """Told by the control channel; a loss during probation rolls back."""
        if not connected:
            self._lost.set()
        elif self._announce and self.last_report is not None:
            self._announce = False
            self._report(self.last_report)

    @property
    def version(self) -> int | None:
        """Version of the overlay running now (None: the file only)."""
        return self.active.version if self.active else None

    # -- a pushed document ------------------------------------------------------------------

    def handle(self, payload: bytes, base: Config) -> ConfigReport:
        """Process one message from the ``config`` topic; never raises for bad input."""
        with self._lock:
            digest = hashlib.sha256(payload).hexdigest()
            if digest == self.last_digest and self.last_report is not None:
                # The retained document again (reconnect): already decided.
                return self.last_report
            report = self._decide(payload, base)
            self.last_digest = digest
            self.last_report = report
            self._save()
        self._report(report)
        return report

    def _decide(self, payload: bytes, base: Config) -> ConfigReport:
        if not payload:
            if self.active is None:
                return self._make(None, "unchanged")
            cleared = self.active
            self.active = None
            self._in_probation = False
            self._previous = None
            if not self._try_apply(base):
                self.active = cleared
                return self._make(None, "rejected", [KeyedError(key="", message="apply failed")])
            return self._make(None, "cleared")
        try:
            doc = parse_document(payload, self.key)
            self._check_newer(doc)
            new = compose(base, doc)
        except Rejected as err:
            version = _version_of(payload)
            log.warning("pushed config v%s rejected: %s", version, err)
            return self._make(version, "rejected", err.errors)
        # A push during another's probation falls back to the last *proven* overlay.
        previous = self._previous if self._in_probation else self.active
        before = self._bound()
        self._lost.clear()
        self.active = doc
        if not self._try_apply(new):
            self.active = previous
            self._try_apply(compose_or_base(base, previous))
            return self._make(
                doc.version, "rolled_back", [KeyedError(key="", message="apply failed")]
            )
        log.info("pushed config v%d applied, probation %.0f s", doc.version, doc.probation_s)
        if doc.probation_s <= 0:
            return self._applied(doc.version)
        self._generation += 1
        self._in_probation = True
        self._previous = previous
        threading.Thread(
            target=self._probation,
            args=(self._generation, doc, previous, before, base),
            name="config-probation",
            daemon=True,
        ).start()
        return self._make(doc.version, "probation")

    def _check_newer(self, doc: DesiredConfig) -> None:
        if self.active is not None and doc.version <= self.active.version:
            message = f"not newer than the running version {self.active.version}"
            raise Rejected([KeyedError(key="version", message=message)])

    def _try_apply(self, config: Config) -> bool:
        try:
            self._restart = self._apply(config) or []
        except Exception:
            # Whatever applying raised (a driver that cannot be built, a bug), the
            # caller restores the previous configuration.
            log.exception("applying a configuration failed")
            return False
        return True

    def _probation(
        self,
        generation: int,
        doc: DesiredConfig,
        previous: DesiredConfig | None,
        bound_before: set[str],
        base: Config,
    ) -> None:
        time.sleep(doc.probation_s)
        with self._lock:
            lost = self._lost.is_set()
            if generation != self._generation or self.active is not doc:
                return  # a newer push took over
            self._in_probation = False
            self._previous = None
            configured = {d.name for d in compose_or_base(base, doc).devices}
            missing = sorted((bound_before & configured) - self._bound())
            errors: list[KeyedError] = []
            if missing:
                errors = [
                    KeyedError(key=f"devices.{n}", message="was bound before, not bound now")
                    for n in missing
                ]
            if lost:
                errors.append(KeyedError(key="", message="broker connection lost in probation"))
            if errors:
                log.error(
                    "pushed config v%d failed probation: %s; rolling back", doc.version, errors
                )
                self.active = previous
                self._try_apply(compose_or_base(base, previous))
                report = self._make(doc.version, "rolled_back", errors)
            else:
                log.info("pushed config v%d passed probation", doc.version)
                report = self._applied(doc.version)
            self.last_report = report
            self._save()
        self._report(report)

    def _applied(self, version: int) -> ConfigReport:
        """``applied`` only when everything took effect; else ``restart_required``."""
        if self._restart:
            return self._make(version, "restart_required", restart=self._restart)
        return self._make(version, "applied")

    def _make(
        self,
        version: int | None,
        result: Result,
        errors: list[KeyedError] | None = None,
        *,
        restart: list[str] | None = None,
    ) -> ConfigReport:
        return ConfigReport(
            device=self.device,
            version=version,
            result=result,
            errors=errors or [],
            restart_required=list(restart or []),
            active_version=self.version,
            time=datetime.now(UTC),
        )


def _doc_or_none(data: Any) -> DesiredConfig | None:
    return DesiredConfig.model_validate(data) if data else None


def _version_of(payload: bytes) -> int | None:
    try:
        version = json.loads(payload).get("version")
    except (ValueError, AttributeError, RecursionError):
        return None
    return version if isinstance(version, int) and not isinstance(version, bool) else None
