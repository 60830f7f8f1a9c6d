"""Claims that reach a running, not yet enrolled terminal, and the first-boot hand-over.

Two ways in besides ``scanfleet enroll --claim``:

* **Scanned**: the person at the counter scans the claim's QR code with the terminal's
  own scanner. The pipeline hands the token to :meth:`ClaimEnroller.offer` (never to
  the classifier, the journal or a log); it is stored 0600 as ``STATE_DIR/claim``.
* **Boot partition**: :func:`import_boot_files` (``scanfleet firstboot``, run as root
  by the unit's ``ExecStartPre=+``) moves ``BOOT_DIR/claim`` into the state directory
  (0600, owned by the daemon's user) and ``BOOT_DIR/scanfleet.toml`` and
  ``BOOT_DIR/fleet-ca.pem`` into ``/etc/scanfleet/``. The FAT partition cannot keep
  a file private, so the claim leaves it at once, before enrollment is tried.

:class:`ClaimEnroller` then enrolls in the background: a claim that fails stays in the
state directory, raises the ``enrollment`` alarm (state message, live view) and is
tried again with capped exponential backoff, never in a tight loop. Success and each
new kind of failure become an ``enroll`` control record in the journal. After success
the daemon restarts itself (exit 75, ``Restart=on-failure``) so every part starts
with the enrolled broker settings.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scanfleet.daemon.core.alarms import AlarmSet
from scanfleet.daemon.core.backoff import Backoff
from scanfleet.daemon.core.claims import Claim, ClaimError
from scanfleet.daemon.core.config import Config, load_config
from scanfleet.daemon.core.errors import ConfigError, EnrollmentError, ScanfleetError
from scanfleet.daemon.core.identity import Identity
from scanfleet.daemon.remote.enroll import CLAIM_FILE, ensure_enrolled
from scanfleet.daemon.station.station import Origin, Station

log = logging.getLogger(__name__)

DEFAULT_BOOT_DIR = Path("/boot/firmware/scanfleet")
BOOT_CONFIG = "scanfleet.toml"
BOOT_CA = "fleet-ca.pem"
ALARM = "enrollment"
RETRY_INITIAL = 10.0
RETRY_MAX = 900.0
"""A failing claim is tried again after 10 s, doubling up to 15 minutes."""


class FirstBootError(ScanfleetError):
    """A boot-partition file could not be taken over (it is left where it is)."""


def write_claim(path: Path, token: str, *, owner: tuple[int, int] | None = None) -> None:
    """Store *token* in *path*, created 0600 (never readable by others, not even briefly)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, token.strip().encode() + b"\n")
        if owner is not None:
            os.fchown(fd, *owner)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


@dataclass
class BootImport:
    """What :func:`import_boot_files` did."""

    moved: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def _install_public(src: Path, dest: Path, mode: int) -> None:
    """Copy *src* to *dest* atomically with *mode*, group of dest's directory."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    shutil.copyfile(src, tmp)
    os.chmod(tmp, mode)
    if os.geteuid() == 0:
        os.chown(tmp, 0, dest.parent.stat().st_gid)
    os.replace(tmp, dest)


def import_boot_files(
    boot_dir: Path, config_path: Path, state_dir: Path | None = None
) -> BootImport:
    """Move the boot partition's claim, config and fleet CA to where the daemon reads them.

    A config that does not validate stays on the boot partition (and the one in
    *config_path* stays in force); so does a claim that is not a claim token. The
    state directory is the validated config's ``paths.state_dir`` unless given.
    """
    done = BootImport()
    boot_config = boot_dir / BOOT_CONFIG
    if boot_config.is_file():
        try:
            load_config(boot_config)
        except ConfigError as err:
            done.problems.append(f"{boot_config} not taken over: {err}")
        else:
            _install_public(boot_config, config_path, 0o640)
            boot_config.unlink()
            done.moved.append(f"{boot_config} -> {config_path}")
    boot_ca = boot_dir / BOOT_CA
    if boot_ca.is_file():
        _install_public(boot_ca, config_path.parent / BOOT_CA, 0o644)
        boot_ca.unlink()
        done.moved.append(f"{boot_ca} -> {config_path.parent / BOOT_CA}")
    boot_claim = boot_dir / CLAIM_FILE
    if boot_claim.is_file():
        if state_dir is None:
            try:
                state_dir = load_config(config_path).paths.state_dir
            except ConfigError as err:
                done.problems.append(f"{boot_claim} kept: no usable {config_path}: {err}")
                return done
        try:
            token = boot_claim.read_text(encoding="utf-8").strip()
            Claim.parse(token)
        except (OSError, UnicodeDecodeError, ClaimError) as err:
            done.problems.append(f"{boot_claim} kept: {err}")
            return done
        state_dir.mkdir(parents=True, exist_ok=True)
        st = state_dir.stat()
        write_claim(state_dir / CLAIM_FILE, token, owner=(st.st_uid, st.st_gid))
        boot_claim.unlink()
        done.moved.append(f"{boot_claim} -> {state_dir / CLAIM_FILE}")
    return done


class ClaimEnroller:
    """Enrolls a running, not yet enrolled daemon with the claim in its state directory."""

    def __init__(
        self,
        config: Config,
        identity: Identity,
        alarms: AlarmSet,
        station: Station,
        *,
        enrolled: bool,
        on_enrolled: Callable[[], None],
        backoff: Backoff | None = None,
        first_error: str | None = None,
    ) -> None:
        self._config = config
        self._identity = identity
        self._alarms = alarms
        self._station = station
        self._on_enrolled = on_enrolled
        self._backoff = backoff or Backoff(RETRY_INITIAL, RETRY_MAX)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._origin: Origin = "config"
        self._last_error: str | None = None
        self.enrolled = enrolled
        self.state = "enrolled" if enrolled else "not enrolled"
        """For the state message: enrolled, not enrolled, enrolling, failed: REASON."""
        self._first_error = first_error
        self._thread = threading.Thread(target=self._run, name="claim-enroller", daemon=True)
        if first_error is not None:
            self.state = f"failed: {first_error}"
            self._alarms.raise_(
                ALARM, f"enrollment failed, the claim is kept and retried: {first_error}"
            )

    @property
    def claim_path(self) -> Path:
        """Where a claim waits for enrollment."""
        return self._config.paths.state_dir / CLAIM_FILE

    def offer(self, token: str) -> tuple[str | None, str | None]:
        """A scanned claim: (its site, refusal reason or None when it will be used)."""
        try:
            claim = Claim.parse(token)
        except ClaimError as err:
            return None, f"not a valid claim: {err}"
        if self.enrolled:
            return claim.site, "already enrolled: a scanned claim is read only before enrollment"
        with self._lock:
            write_claim(self.claim_path, claim.token)
            self._origin = "barcode"
            self._last_error = None
            self._backoff.reset()
        self._wake.set()
        return claim.site, None

    def start(self) -> None:
        """Start trying (only does anything while not enrolled); journal a failed first try."""
        if self.enrolled:
            return
        if self._first_error is not None:
            self._failed(self._first_error, self._claim_site(), "config")
        self._thread.start()

    def stop(self) -> None:
        """Stop trying."""
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(5)

    def extra(self) -> dict[str, Any]:
        """The ``enrollment`` entry of the state message's ``extra``."""
        return {"enrollment": self.state}

    def _claim_site(self) -> str | None:
        try:
            return Claim.parse(self.claim_path.read_text(encoding="utf-8")).site
        except (OSError, UnicodeDecodeError, ClaimError):
            return None

    def _run(self) -> None:
        delay = 0.0 if self._last_error is None else self._backoff.next()
        while not self._stop.is_set():
            self._wake.wait(delay)
            self._wake.clear()
            if self._stop.is_set():
                return
            if not self.claim_path.exists():
                delay = RETRY_MAX  # nothing to do until a claim is scanned (offer wakes us)
                continue
            if self._attempt():
                return
            delay = self._backoff.next()
            log.info("next enrollment attempt in %.0f s", delay)

    def _attempt(self) -> bool:
        with self._lock:
            origin = self._origin
        try:
            site = Claim.parse(self.claim_path.read_text(encoding="utf-8")).site
        except (OSError, UnicodeDecodeError, ClaimError) as err:
            self._failed(f"{self.claim_path}: {err}", None, origin)
            return False
        self.state = "enrolling"
        try:
            enrolled = ensure_enrolled(self._config, self._identity)
        except EnrollmentError as err:
            self._failed(str(err), site, origin)
            return False
        if enrolled.not_after is None:  # the claim vanished meanwhile
            self.state = "not enrolled"
            return False
        self.enrolled = True
        self.state = "enrolled"
        self._alarms.clear(ALARM)
        ident = enrolled.identity
        log.info("enrolled as %s/%s with a %s claim; restarting", ident.site, ident.device, origin)
        self._station.enrollment(f"{ident.site}/{ident.device}", origin)
        self._on_enrolled()
        return True

    def _failed(self, error: str, site: str | None = None, origin: Origin = "config") -> None:
        self.state = f"failed: {error}"
        self._alarms.raise_(ALARM, f"enrollment failed, the claim is kept and retried: {error}")
        log.warning("enrollment failed (the claim is kept and retried): %s", error)
        # One journal record per distinct failure, not one per retry.
        if error != self._last_error:
            self._last_error = error
            self._station.enrollment(site, origin, refused=error)
