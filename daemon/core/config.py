"""The daemon's TOML configuration: pydantic models, defaults and a loader that
reports every problem with its key path and line.

The file is the base configuration of a terminal. Every section is optional; an
empty file (or none, for ``scanfleet run --demo``) is a valid configuration.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Iterator, Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, TypeAlias, Union, get_args

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from scanfleet.daemon.core.errors import ConfigError, ConfigProblem
from scanfleet.daemon.core.model import NAME_PATTERN, Kind, Operation

DEFAULT_CONFIG_PATH = Path("/etc/scanfleet/scanfleet.toml")
DEFAULT_STATE_DIR = Path("/var/lib/scanfleet")
JOURNAL_FILE = "journal.sqlite3"


class _Section(BaseModel):
    # A misspelt key is an error, not a silently ignored setting.
    model_config = ConfigDict(extra="forbid", frozen=True)


class IdentityConfig(_Section):
    """Who this terminal is. ``device`` is generated at first start when left out."""

    site: Annotated[str, Field(pattern=NAME_PATTERN)] = "default"
    device: Annotated[str | None, Field(pattern=NAME_PATTERN)] = None


class PathsConfig(_Section):
    """Where the daemon keeps its state (journal, generated device id, remote config)."""

    state_dir: Path = DEFAULT_STATE_DIR

    @property
    def journal_file(self) -> Path:
        """The journal in the state directory."""
        return self.state_dir / JOURNAL_FILE


BROKER_URL_PATTERN = r"^mqtts?://[^/\s:@]+(:\d{1,5})?/?$"
BrokerUrl = Annotated[str, Field(pattern=BROKER_URL_PATTERN)]
MqttVersion = Literal["5", "3.1.1"]
"""An MQTT protocol version scanfleet speaks."""
BrokerProtocol = Literal["5", "3.1.1", "auto"]
USERNAME_ENV = "SCANFLEET_BROKER_USERNAME"
PASSWORD_ENV = "SCANFLEET_BROKER_PASSWORD"  # noqa: S105 - a variable name, not a secret


class BrokerConfig(_Section):
    """The MQTT broker the daemon talks to (it makes no other connection).

    ``url`` is one URL or a list tried in order: the publisher stays on the URL that
    works and moves to the next one when a connection attempt fails or an
    established connection is lost (a clustered broker, or a primary and a standby).
    """

    url: BrokerUrl | Annotated[list[BrokerUrl], Field(min_length=1, max_length=16)] = (
        "mqtt://localhost:1883"
    )
    protocol: BrokerProtocol = "auto"
    """MQTT protocol version. ``auto``: try 5, fall back to 3.1.1 when the broker refuses
    version 5; the result is remembered per URL and probed again every
    ``reprobe_interval_s``. Under 3.1.1 the broker cannot say why it refused a publish
    (docs/brokers.md)."""
    reprobe_interval_s: Annotated[float, Field(ge=60)] = 86400.0
    """How long an ``auto`` fallback to 3.1.1 is trusted before MQTT 5 is tried again."""
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    keepalive: Annotated[int, Field(ge=5, le=3600)] = 30
    client_id: str | None = None
    username: str | None = None
    """Broker user name; else from ``username_file`` or $SCANFLEET_BROKER_USERNAME."""
    username_file: Path | None = None
    password: str | None = None
    """Broker password (prefer ``password_file`` or $SCANFLEET_BROKER_PASSWORD: keeps it
    out of the config file, the diagnostics bundle and the command line)."""
    password_file: Path | None = None

    @model_validator(mode="after")
    def _one_source_each(self) -> BrokerConfig:
        if self.username is not None and self.username_file is not None:
            raise ValueError("give 'username' or 'username_file', not both")
        if self.password is not None and self.password_file is not None:
            raise ValueError("give 'password' or 'password_file', not both")
        return self

    @property
    def urls(self) -> list[str]:
        """Every broker URL, in the order they are tried."""
        return [self.url] if isinstance(self.url, str) else list(self.url)

    def at(self, url: str) -> BrokerConfig:
        """This configuration with *url* as its only URL (what one connection uses)."""
        return self.model_copy(update={"url": url})

    @property
    def tls(self) -> bool:
        """True for ``mqtts://`` URLs or when a CA file is configured (first URL)."""
        return self.urls[0].startswith("mqtts://") or self.ca_file is not None

    @property
    def host(self) -> str:
        """Host part of the first URL."""
        return self.urls[0].split("://", 1)[1].rstrip("/").rsplit(":", 1)[0]

    @property
    def port(self) -> int:
        """Port part of the first URL; 1883, or 8883 for TLS, when left out."""
        hostport = self.urls[0].split("://", 1)[1].rstrip("/")
        if ":" in hostport:
            return int(hostport.rsplit(":", 1)[1])
        return 8883 if self.tls else 1883

    def credentials(self) -> tuple[str | None, str | None]:
        """``(username, password)``: the config value, else its file, else the environment.

        Read at every connect, so a rotated password file takes effect at the next
        reconnect. Raises :class:`OSError` when a configured file cannot be read.
        """
        username = self.username
        if username is None and self.username_file is not None:
            username = _read_secret(self.username_file)
        if username is None:
            username = os.environ.get(USERNAME_ENV) or None
        password = self.password
        if password is None and self.password_file is not None:
            password = _read_secret(self.password_file)
        if password is None:
            password = os.environ.get(PASSWORD_ENV) or None
        return username, password


def _read_secret(path: Path) -> str:
    # One line; the trailing newline an editor or `echo` leaves is not part of it.
    return path.read_text(encoding="utf-8").rstrip("\r\n")


class PublisherConfig(_Section):
    """How the journal is published."""

    live_lane: bool = True
    """During a backlog drain, send each new scan at once (and once more in order when the
    drain reaches it), so a live scan reaches the backend within one batch instead of
    waiting behind the whole backlog. Consumers dedup by ``id`` either way."""
    max_batch_scans: Annotated[int, Field(ge=1, le=5000)] = 500
    max_batch_bytes: Annotated[int, Field(ge=4096, le=16 << 20)] = 256 * 1024
    health_interval_s: Annotated[float, Field(ge=5, le=3600)] = 60.0
    """Seconds between ``health`` messages."""


class JournalConfig(_Section):
    """Size budget and retention of the local journal."""

    max_bytes: Annotated[int, Field(ge=1 << 20, le=1 << 40)] = 256 << 20
    retention_days: Annotated[int, Field(ge=1, le=36500)] = 100
    """At most 100 years: a cutoff before year 1 would crash the daemon."""


DEFAULT_ACCEPT_KINDS = (Kind.TRACE20, Kind.GS1, Kind.TRACE_OTHER, Kind.MA)


class StationConfig(_Section):
    """Default station context attached to every scan, and what the station accepts."""

    name: str | None = None
    operation: Operation = Operation.RETAIL_SALE
    operator: str | None = None
    accept_kinds: list[Kind] = Field(default_factory=lambda: list(DEFAULT_ACCEPT_KINDS))
    """Kinds of code that count as a trace-code scan. Anything else (an EAN-13 product
    barcode, a 本位码, a leaflet URL) is journaled as refused with a bad-read signal, so
    the operator knows to scan the trace code instead."""
    gs1_required_ais: list[Annotated[str, Field(pattern=r"^[0-9]{2,4}$")]] = Field(
        default_factory=lambda: ["01", "21"]
    )
    """A ``gs1`` read is a trace code only with all of these AIs (GTIN and serial by
    default: what identifies a unit); otherwise it is refused naming the missing AI."""
    control_prefix: Annotated[str, Field(min_length=2, max_length=16, pattern=r"^[!-~]+$")] = "#SF:"
    """Reads starting with this are station control barcodes (``#SF:OP=receiving``),
    journaled as ``type: "control"`` records, never as scans (docs/station.md)."""
    manifest_dir: Path | None = None
    """Where receiving manifests are looked up as ``<bill>.json`` when a bill starts."""
    duplicate_check: bool = True
    """Flag a code scanned again for the same operation at this device (duplicate_of)."""
    duplicate_window_days: Annotated[int | None, Field(ge=1, le=36500)] = None
    """How far back a repeat counts; default: the journal's retention."""
    split_packs: dict[
        Annotated[str, Field(pattern=r"^[0-9A-Za-z]{7,}$")], Annotated[int, Field(ge=2)]
    ] = Field(default_factory=dict)
    """拆零: 7-digit product prefix (or a whole code) → units per pack; such a code may be
    scanned up to that many times for the same operation before it is a duplicate."""


class ClassifyConfig(_Section):
    """How raw reads are normalised before classification."""

    fnc1_substitute: Annotated[str | None, Field(min_length=1, max_length=1)] = None
    """A printable character the scanners are set to send instead of GS (0x1D) for FNC1."""

    @field_validator("fnc1_substitute")
    @classmethod
    def _printable_ascii(cls, value: str | None) -> str | None:
        if value is not None and not (0x21 <= ord(value) <= 0x7E):
            raise ValueError("must be one printable ASCII character such as '|' or '~'")
        return value


class DeviceConfigBase(_Section):
    """What every ``[[devices]]`` entry has; a driver's config model adds the rest.

    Each driver module defines its model as a subclass that narrows ``driver`` to the
    ``Literal`` name(s) it is registered under (drivers/registry.py). The drivers sit
    above this module: it never imports them. :func:`register_device_models`, called
    by the registry (``registry.complete_config()``) at the program's start, completes
    :class:`Config` with their union.
    """

    name: Annotated[str, Field(pattern=NAME_PATTERN)]
    operation: Operation | None = None
    """Overrides the station's operation for scans from this device."""
    driver: str


DeviceConfig: TypeAlias = DeviceConfigBase
"""A device config as code that holds one sees it (each is a driver's own subclass)."""

if TYPE_CHECKING:
    _RegisteredDevices: TypeAlias = DeviceConfigBase
# At run time _RegisteredDevices stays undefined until register_device_models() gives
# pydantic the union of the drivers' models: Config cannot validate before that.


class IdentityCheckConfig(_Section):
    """Controlled drugs that need the patient's ID card, and how identity is protected."""

    public_key: str | None = None
    """Backend's X25519 public key (base64, ``scanfleet identity keygen``). ID-card reads
    are refused while it is missing: identity is never stored unsealed."""
    window_seconds: Annotated[float, Field(gt=0, le=3600)] = 120.0
    """How long after an ID-card read scans of listed drugs pair with it."""
    drug_prefixes: list[Annotated[str, Field(pattern=r"^[0-9A-Za-z]{7}$")]] = Field(
        default_factory=list
    )
    """7-character 药品标识码 (first 7 characters of a 20-character trace code) of drugs
    that may only be dispensed after an ID-card read."""
    publish_photo: bool = False
    """Seal the WLT photo into identity records (off: the photo never leaves the reader)."""
    publish_fingerprint: bool = False
    """Seal the fingerprint block too (off: it never leaves the reader)."""

    @field_validator("public_key")
    @classmethod
    def _x25519(cls, value: str | None) -> str | None:
        from scanfleet.daemon.core.personal import valid_public_key

        if value is not None and not valid_public_key(value):
            raise ValueError("must be a base64 X25519 public key (scanfleet identity keygen)")
        return value


class LocalApiConfig(_Section):
    """The local POS/HIS interface (docs/local-api.md); off by default."""

    enabled: bool = False
    socket: Path | None = None
    """Unix socket path; default ``<state_dir>/local.sock``."""
    websocket_port: Annotated[int | None, Field(ge=0, le=65535)] = None
    """Port of the WebSocket on 127.0.0.1; none: no WebSocket; 0: any free port."""
    token: Annotated[str | None, Field(min_length=16)] = None
    token_file: Path | None = None
    """File holding the token (preferred over ``token``: keeps it out of the config)."""

    @model_validator(mode="after")
    def _token_when_enabled(self) -> LocalApiConfig:
        if self.enabled and self.token is None and self.token_file is None:
            raise ValueError("local_api.enabled needs token or token_file")
        return self


class Config(_Section):
    """The whole daemon configuration (``/etc/scanfleet/scanfleet.toml``)."""

    identity: IdentityConfig = IdentityConfig()
    paths: PathsConfig = PathsConfig()
    broker: BrokerConfig = BrokerConfig()
    publisher: PublisherConfig = PublisherConfig()
    journal: JournalConfig = JournalConfig()
    station: StationConfig = StationConfig()
    classify: ClassifyConfig = ClassifyConfig()
    identity_check: IdentityCheckConfig = IdentityCheckConfig()
    local_api: LocalApiConfig = LocalApiConfig()
    devices: list[_RegisteredDevices] = Field(default_factory=list)

    @field_validator("devices")
    @classmethod
    def _unique_names(cls, value: list[DeviceConfig]) -> list[DeviceConfig]:
        seen: set[str] = set()
        for dev in value:
            if dev.name in seen:
                raise ValueError(f"device name {dev.name!r} is used twice")
            seen.add(dev.name)
        return value


_registered_drivers: list[str] = []
"""The ``driver`` names register_device_models() accepted, in registry order."""


def register_device_models(models: Sequence[type[DeviceConfigBase]]) -> None:
    """Complete :class:`Config`: ``[[devices]]`` entries are one of *models*.

    The union is discriminated by each model's ``driver`` literal(s). Called again, it
    replaces the previous set.
    """
    names = [str(name) for model in models for name in _driver_literals(model)]
    union: Any = Annotated[Union[tuple(models)], Field(discriminator="driver")]  # noqa: UP007
    Config.model_rebuild(force=True, _types_namespace={"_RegisteredDevices": union})
    _registered_drivers[:] = names


def _driver_literals(model: type[DeviceConfigBase]) -> tuple[object, ...]:
    return get_args(model.model_fields["driver"].annotation)


def registered_drivers() -> list[str]:
    """The ``driver`` names a configuration accepts.

    :raises RuntimeError: no driver has been registered (see :class:`DeviceConfigBase`).
    """
    if not _registered_drivers:
        raise RuntimeError(
            "no device drivers registered: call scanfleet.drivers.registry.complete_config() "
            "before reading a configuration"
        )
    return list(_registered_drivers)


def load_config(path: Path) -> Config:
    """Read and validate a config file; raise :class:`ConfigError` listing every problem."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(str(path), [ConfigProblem("", f"not UTF-8 text: {err}")]) from err
    except OSError as err:
        raise ConfigError(str(path), [ConfigProblem("", err.strerror or str(err))]) from err
    return parse_config(text, source=str(path))


def parse_config(text: str, source: str = "<config>") -> Config:
    """Validate TOML *text* as a :class:`Config`."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        match = re.search(r"\(at line (\d+), column \d+\)", str(err))
        line = int(match.group(1)) if match else None
        raise ConfigError(source, [ConfigProblem("", f"TOML syntax: {err}", line)]) from err
    return validate_config(data, source=source, text=text)


def validate_config(data: Mapping[str, Any], source: str, text: str | None = None) -> Config:
    """Validate an already parsed document; *text*, when given, supplies line numbers."""
    registered_drivers()  # a clear error instead of pydantic's "not fully defined"
    try:
        return Config.model_validate(data)
    except ValidationError as err:
        lines = locate_keys(text) if text is not None else {}
        raise ConfigError(source, _problems(err, lines)) from err


def _problems(
    err: ValidationError, lines: Mapping[tuple[str | int, ...], int]
) -> list[ConfigProblem]:
    problems: list[ConfigProblem] = []
    for item in err.errors(include_url=False):
        loc = _strip_union_tags(item["loc"])
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = "unknown key"
        elif item["type"] in ("union_tag_invalid", "union_tag_not_found"):
            loc = (*loc, "driver")
            known = ", ".join(registered_drivers())
            message = f"unknown or missing driver; known drivers: {known}"
        problems.append(ConfigProblem(_dotted(loc), message, _line_for(loc, lines)))
    return problems


def _strip_union_tags(loc: Sequence[str | int]) -> tuple[str | int, ...]:
    # A discriminated union inserts the tag ("serial") after the list index.
    tags = set(registered_drivers())
    out: list[str | int] = []
    for i, part in enumerate(loc):
        if i > 0 and isinstance(loc[i - 1], int) and part in tags:
            continue
        out.append(part)
    return tuple(out)


def _dotted(loc: Sequence[str | int]) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _line_for(loc: tuple[str | int, ...], lines: Mapping[tuple[str | int, ...], int]) -> int | None:
    for end in range(len(loc), 0, -1):
        if loc[:end] in lines:
            return lines[loc[:end]]
    return None


_KEY = r'(?:[A-Za-z0-9_-]+|"[^"]*"|\'[^\']*\')'
_TABLE_RE = re.compile(rf"^\s*\[\s*({_KEY}(?:\s*\.\s*{_KEY})*)\s*\]\s*(?:#.*)?$")
_ARRAY_RE = re.compile(rf"^\s*\[\[\s*({_KEY}(?:\s*\.\s*{_KEY})*)\s*\]\]\s*(?:#.*)?$")
_ASSIGN_RE = re.compile(rf"^\s*({_KEY}(?:\s*\.\s*{_KEY})*)\s*=")


def _split_key(dotted: str) -> list[str]:
    return [part.strip().strip("\"'") for part in re.findall(_KEY, dotted)]


def locate_keys(text: str) -> dict[tuple[str | int, ...], int]:
    """Map key paths (``("devices", 0, "baudrate")``) to the 1-based line that sets them.

    Only lines that start a table or an assignment are read; the contents of
    multi-line strings and arrays are skipped.
    """
    found: dict[tuple[str | int, ...], int] = {}
    counts: dict[tuple[str | int, ...], int] = {}
    table: tuple[str | int, ...] = ()
    for lineno, line in _logical_lines(text):
        if m := _ARRAY_RE.match(line):
            base = _resolve(_split_key(m.group(1)), counts, last_array=True)
            index = counts.get(base, -1) + 1
            counts[base] = index
            table = (*base, index)
            found.setdefault(base, lineno)
            found[table] = lineno
        elif m := _TABLE_RE.match(line):
            table = _resolve(_split_key(m.group(1)), counts, last_array=False)
            found.setdefault(table, lineno)
        elif m := _ASSIGN_RE.match(line):
            found[(*table, *_split_key(m.group(1)))] = lineno
    return found


def _resolve(
    parts: list[str], counts: Mapping[tuple[str | int, ...], int], *, last_array: bool
) -> tuple[str | int, ...]:
    # "[devices.options]" after "[[devices]]" belongs to the newest devices element.
    path: tuple[str | int, ...] = ()
    for i, part in enumerate(parts):
        path = (*path, part)
        is_last = i == len(parts) - 1
        if path in counts and not (is_last and last_array):
            path = (*path, counts[path])
    return path


def _logical_lines(text: str) -> Iterator[tuple[int, str]]:
    """Yield (line number, line) for lines that begin outside a string or array value."""
    depth = 0
    in_multiline: str | None = None
    for lineno, line in enumerate(text.splitlines(), start=1):
        starts_clean = depth == 0 and in_multiline is None
        i = 0
        while i < len(line):
            if in_multiline:
                end = line.find(in_multiline, i)
                if end < 0:
                    break
                i = end + 3
                in_multiline = None
                continue
            ch = line[i]
            if line.startswith(('"""', "'''"), i):
                in_multiline = line[i : i + 3]
                i += 3
                continue
            if ch in "\"'":
                end = line.find(ch, i + 1)
                while ch == '"' and end > 0 and line[end - 1] == "\\":
                    end = line.find(ch, end + 1)
                i = len(line) if end < 0 else end + 1
                continue
            if ch == "#":
                break
            if ch in "[{" and not (depth == 0 and starts_clean and _is_header(line)):
                depth += 1
            elif ch in "]}" and depth > 0:
                depth -= 1
            i += 1
        if starts_clean:
            yield lineno, line


def _is_header(line: str) -> bool:
    return bool(_TABLE_RE.match(line) or _ARRAY_RE.match(line))


def example_config() -> str:
    """A commented example configuration (``scanfleet config example``)."""
    # The file stays at the top of the package (daemon/): packaging installs it from there.
    return (
        resources.files("scanfleet.daemon")
        .joinpath("scanfleet.example.toml")
        .read_text(encoding="utf-8")
    )
