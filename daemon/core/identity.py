"""Device identity: the device id is generated on the device at first start.

Enrollment later certifies this id; it never assigns one. The id is kept in
``{state_dir}/device-id`` so that it survives restarts and reinstalls of the
software (but not a wiped state directory).
"""

from __future__ import annotations

import logging
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from scanfleet.daemon.core.config import Config
from scanfleet.daemon.core.errors import IdentityError
from scanfleet.daemon.core.model import valid_name

log = logging.getLogger(__name__)

DEVICE_ID_FILE = "device-id"


@dataclass(frozen=True)
class Identity:
    """The site and device a terminal speaks for."""

    site: str
    device: str


def generate_device_id() -> str:
    """A new random device id: ``sf-`` and 12 hex digits (48 random bits)."""
    return f"sf-{secrets.token_hex(6)}"


def resolve_identity(config: Config) -> Identity:
    """Return the configured identity, generating and storing the device id if needed."""
    if config.identity.device:
        return Identity(config.identity.site, config.identity.device)
    return Identity(config.identity.site, load_or_create_device_id(config.paths.state_dir))


def load_or_create_device_id(state_dir: Path) -> str:
    """Read ``device-id`` from *state_dir*, creating it atomically on first use."""
    path = state_dir / DEVICE_ID_FILE
    try:
        device = path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        pass
    except (OSError, UnicodeDecodeError) as err:
        raise IdentityError(f"cannot read device id from {path}: {err}") from err
    else:
        if not valid_name(device):
            raise IdentityError(f"{path} holds an invalid device id {device!r}")
        return device

    device = generate_device_id()
    state_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{DEVICE_ID_FILE}.{os.getpid()}.tmp")
    with tmp.open("x", encoding="ascii") as fh:
        fh.write(device + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    try:
        # link() fails if another process won the race; then its id is the one.
        os.link(tmp, path)
    except FileExistsError:
        return load_or_create_device_id(state_dir)
    finally:
        tmp.unlink()
    _fsync_dir(state_dir)
    log.info("generated device id %s in %s", device, path)
    return device


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
