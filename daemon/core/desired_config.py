"""The desired-config document the fleet pushes: its format, signature and composition.

The fleet publishes a retained document on ``scanfleet/v1/{site}/{device}/config``::

    {"schema": "scanfleet.desired-config/1", "version": 7, "mode": "overlay",
     "probation_s": 60, "config": {"station": {"operation": "dispense"}},
     "signature": "<base64 Ed25519 signature>"}

``overlay`` merges ``config`` into the local file's configuration (tables merge key by
key, arrays such as ``devices`` replace the whole array); ``replace`` replaces every
remotely settable section with ``config`` (unset ones take their defaults).

Sections that decide how the device reaches the broker or where its data lives
(``identity``, ``paths``, ``broker``, ``publisher``, ``journal``) cannot be set
remotely: a bad value there could cut the device off for good.

The signature covers the document without ``signature`` as RFC 8785 canonical JSON
(the journal's, :mod:`~scanfleet.daemon.core.canonical_json`); a signature over the
older sorted-keys form (:func:`legacy_canonical`) is still accepted. The fleet side
composes and signs documents with the same functions
(:mod:`scanfleet.provisioning.remote`); the daemon applies them
(:mod:`scanfleet.daemon.remote.config`).
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from scanfleet.daemon.core.canonical_json import canonical as jcs
from scanfleet.daemon.core.config import Config, validate_config
from scanfleet.daemon.core.errors import ConfigError, ScanfleetError
from scanfleet.daemon.core.model import NAME_PATTERN

if TYPE_CHECKING:
    # cryptography is imported where a signature is checked: a terminal without a fleet
    # config key never loads it.
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

DESIRED_SCHEMA = "scanfleet.desired-config/1"
REPORTED_SCHEMA = "scanfleet.config-reported/1"
REMOTE_SECTIONS = ("station", "classify", "identity_check", "local_api", "devices")
"""Top-level sections a pushed document may set."""
MAX_DOCUMENT_BYTES = 256 * 1024

Result = Literal[
    "applied", "restart_required", "probation", "rejected", "rolled_back", "cleared", "unchanged"
]


class DesiredConfig(BaseModel):
    """The retained message on ``scanfleet/v1/{site}/{device}/config``."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    schema_: Literal["scanfleet.desired-config/1"] = Field(
        default="scanfleet.desired-config/1", alias="schema"
    )
    version: int = Field(ge=1, description="Increases with every push; older ones are refused.")
    mode: Literal["overlay", "replace"] = "overlay"
    probation_s: float = Field(default=60.0, ge=0, le=3600)
    config: dict[str, Any] = Field(description="Config sections, as in the TOML file.")
    signature: str | None = Field(
        default=None, description="Base64 Ed25519 signature of the canonical document."
    )


class KeyedError(BaseModel):
    """One problem, at a dotted key path of the pushed document."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    key: str
    message: str


class ConfigReport(BaseModel):
    """The retained message on ``scanfleet/v1/{site}/{device}/config/reported``."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    schema_: Literal["scanfleet.config-reported/1"] = Field(
        default="scanfleet.config-reported/1", alias="schema"
    )
    device: Annotated[str, Field(pattern=NAME_PATTERN)]
    version: int | None = Field(description="Version of the document this report is about.")
    result: Result
    errors: list[KeyedError] = Field(default_factory=list)
    restart_required: list[str] = Field(
        default_factory=list,
        description="Settings that changed but only take effect at the next restart "
        "(result 'restart_required' instead of 'applied').",
    )
    active_version: int | None = Field(description="Version running now; null: file only.")
    time: datetime


def canonical(document: Mapping[str, Any]) -> bytes:
    """The bytes a signature covers: *document* without ``signature``, RFC 8785 JSON.

    The same canonical JSON the journal hashes its records with. Raises
    :class:`~scanfleet.daemon.core.canonical_json.CanonicalJSONError` (a ``ValueError``)
    for a document RFC 8785 cannot express (NaN, integers beyond 2**53).
    """
    return jcs({k: v for k, v in document.items() if k != "signature"})


def legacy_canonical(document: Mapping[str, Any]) -> bytes:
    """What signatures made before issue 16 covered: sorted keys, no spaces, UTF-8.

    It differs from RFC 8785 for integral floats (``60.0`` against ``60``), exponents
    and non-ASCII key order. Documents signed this way may still be retained on the
    broker, so :func:`parse_document` accepts either form; nothing signs with it.
    """
    body = {k: v for k, v in document.items() if k != "signature"}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def merge(base: Mapping[str, Any], overlay: Mapping[str, Any]) -> dict[str, Any]:
    """Tables merge key by key; anything else (arrays included) is replaced."""
    out = dict(base)
    for key, value in overlay.items():
        old = out.get(key)
        if isinstance(old, Mapping) and isinstance(value, Mapping):
            out[key] = merge(old, value)
        else:
            out[key] = value
    return out


class Rejected(ScanfleetError):
    """A pushed document is refused; ``errors`` say where."""

    def __init__(self, errors: list[KeyedError]) -> None:
        super().__init__("; ".join(f"{e.key}: {e.message}" for e in errors))
        self.errors = errors


def parse_document(payload: bytes, key: Ed25519PublicKey | None) -> DesiredConfig:
    """Decode, check the signature and the shape of a pushed document; raise Rejected."""
    if len(payload) > MAX_DOCUMENT_BYTES:
        raise Rejected([KeyedError(key="", message=f"larger than {MAX_DOCUMENT_BYTES} bytes")])
    try:
        raw = json.loads(payload)
    except (ValueError, RecursionError) as err:
        raise Rejected([KeyedError(key="", message=f"not JSON: {err}")]) from err
    if not isinstance(raw, dict):
        raise Rejected([KeyedError(key="", message="not a JSON object")])
    try:
        doc = DesiredConfig.model_validate(raw)
    except ValidationError as err:
        raise Rejected(
            [
                KeyedError(key=".".join(str(p) for p in e["loc"]), message=e["msg"])
                for e in err.errors(include_url=False)
            ]
        ) from err
    if key is not None:
        _verify(raw, doc, key)
    forbidden = sorted(set(doc.config) - set(REMOTE_SECTIONS))
    if forbidden:
        raise Rejected(
            [KeyedError(key=f"config.{s}", message="cannot be set remotely") for s in forbidden]
        )
    return doc


def _verify(raw: Mapping[str, Any], doc: DesiredConfig, key: Ed25519PublicKey) -> None:
    if doc.signature is None:
        raise Rejected([KeyedError(key="signature", message="a signed document is required")])
    from cryptography.exceptions import InvalidSignature

    refused = Rejected([KeyedError(key="signature", message="signature does not verify")])
    try:
        signature = base64.b64decode(doc.signature, validate=True)
    except (binascii.Error, ValueError) as err:
        raise refused from err
    for form in (canonical, legacy_canonical):
        try:
            key.verify(signature, form(raw))
        except (InvalidSignature, ValueError):
            continue
        return
    raise refused


def compose(base: Config, doc: DesiredConfig | None) -> Config:
    """The configuration that runs: *base* (the file) with *doc* applied; raise Rejected."""
    if doc is None:
        return base
    base_data = base.model_dump(mode="json", exclude_none=True)
    if doc.mode == "overlay":
        data = merge(base_data, doc.config)
    else:
        data = {k: v for k, v in base_data.items() if k not in REMOTE_SECTIONS} | doc.config
    try:
        config = validate_config(data, source=f"pushed config v{doc.version}")
    except ConfigError as err:
        raise Rejected(
            [
                KeyedError(key=f"config.{p.path}".rstrip("."), message=p.message)
                for p in err.problems
            ]
        ) from err
    _check_paths(base, config)
    return config


PUSHED_PATH_ROOTS = (Path("/run/scanfleet"),)
"""Besides the state directory, where a pushed path may point (device nodes: /dev too)."""


def _check_paths(base: Config, config: Config) -> None:
    """Refuse a pushed path setting outside the state dir and /run/scanfleet.

    A pushed ``local_api.socket`` elsewhere would let the fleet (or whoever pushes)
    have the daemon replace any file; a ``token_file`` would have it read one. Paths
    the local file set are the site's own choice and stay as they are.
    """
    before = dict(_path_settings(base))
    roots = (Path(os.path.normpath(config.paths.state_dir.absolute())), *PUSHED_PATH_ROOTS)
    errors = []
    for key, path in _path_settings(config):
        if before.get(key) == path:
            continue
        allowed = (*roots, Path("/dev")) if key.startswith("devices.") else roots
        where = Path(os.path.normpath(path.absolute()))
        if not any(where.is_relative_to(root) for root in allowed):
            message = f"{path} is outside {' and '.join(str(r) for r in allowed)}"
            errors.append(KeyedError(key=f"config.{key}", message=message))
    if errors:
        raise Rejected(errors)


def _path_settings(config: Config) -> list[tuple[str, Path]]:
    """Every Path-valued setting of the remotely settable sections, by dotted key."""
    found: list[tuple[str, Path]] = []

    def walk(value: Any, key: str) -> None:
        if isinstance(value, Path):
            found.append((key, value))
        elif isinstance(value, BaseModel):
            for name in type(value).model_fields:
                walk(getattr(value, name), f"{key}.{name}")
        elif isinstance(value, list | tuple):
            for i, item in enumerate(value):
                walk(item, f"{key}.{getattr(item, 'name', i)}")

    for section in REMOTE_SECTIONS:
        walk(getattr(config, section), section)
    return found


def compose_or_base(base: Config, doc: DesiredConfig | None) -> Config:
    """Like :func:`compose`, falling back to *base* (the rollback target must not fail)."""
    try:
        return compose(base, doc)
    except Rejected:
        return base
