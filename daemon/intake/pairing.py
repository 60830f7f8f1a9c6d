"""Identity pairing at the station: ID-card reads, the identity window, controlled drugs.

Each successful ID-card read becomes its own journal record (``type:
"identity_read"``) carrying only the sealed identity and its masked form. A committed,
accepted read opens the station's identity window; it closes after
``[identity_check] window_seconds``, on the next card read, or when the bill ends.
Scans of drugs listed in ``drug_prefixes`` inside the window get ``identity_ref`` = the
read's record id; outside one they are refused. Scans of other drugs never carry it.
"""

from __future__ import annotations

import base64
import logging
import threading
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Literal, TypeGuard

from pydantic import BaseModel, ConfigDict, Field

from scanfleet.daemon.core.config import IdentityCheckConfig
from scanfleet.daemon.core.model import (
    NAME_PATTERN,
    ClockSync,
    Kind,
    Operation,
    ParseResult,
    Source,
    Verdict,
)
from scanfleet.daemon.core.personal import (
    SEAL_ALG,
    PersonalData,
    id_number_problems,
    seal_personal,
)
from scanfleet.daemon.core.records import IDENTITY_READ_SCHEMA, IdentityBody, Stamp, StationContext
from scanfleet.drivers.idcard.text import CardRead

__all__ = ["IDENTITY_READ_SCHEMA", "IdentityRead", "IdentityWindow", "PairingDecision"]

log = logging.getLogger(__name__)

NO_WINDOW_REASON = "controlled drug: read the patient's ID card first (no identity window open)"
PREFIX_KINDS = (Kind.TRACE20, Kind.TRACE_OTHER)
"""Kinds whose first 7 characters are the 药品标识码 (drug identification code)."""


def is_card_read(read: object) -> TypeGuard[CardRead]:
    """True when a driver's read is an ID-card read, not a scan."""
    return isinstance(read, CardRead)


@dataclass(frozen=True)
class PairingDecision:
    """What the identity window says about one scan."""

    identity_ref: str | None = None
    refusal: str | None = None


class IdentityWindow:
    """The station's identity window. Thread-safe; times are ``time.monotonic()``."""

    def __init__(self, config: IdentityCheckConfig) -> None:
        self._config = config
        self._lock = threading.Lock()
        self._ref: str | None = None
        self._opened_at = 0.0

    def update_config(self, config: IdentityCheckConfig) -> None:
        """Use a reloaded ``[identity_check]`` section (an open window keeps running)."""
        self._config = config

    def requires_identity(self, result: ParseResult) -> bool:
        """True when *result* is a scan of a drug listed in ``drug_prefixes``."""
        if result.kind not in PREFIX_KINDS or not self._config.drug_prefixes:
            return False
        return result.value[:7] in self._config.drug_prefixes

    def open(self, record_id: str, t_mono: float) -> None:
        """A card read was committed as *record_id*: pair the following listed drugs with it."""
        with self._lock:
            self._ref, self._opened_at = record_id, t_mono
        log.info("identity window opened by %s for %.0f s", record_id, self._config.window_seconds)

    def close(self, why: str) -> None:
        """Close the window (next card read, bill end)."""
        with self._lock:
            if self._ref is None:
                return
            ref, self._ref = self._ref, None
        log.info("identity window of %s closed: %s", ref, why)

    def end_bill(self) -> None:
        """The bill ended: the next customer's drugs must not pair with this identity."""
        self.close("bill ended")

    def current(self, t_mono: float) -> str | None:
        """The record id of the open window at *t_mono*, or None (closing it on timeout)."""
        with self._lock:
            if self._ref is None:
                return None
            if t_mono - self._opened_at > self._config.window_seconds:
                ref, self._ref = self._ref, None
                log.info("identity window of %s closed: timed out", ref)
                return None
            return self._ref

    def pair(self, result: ParseResult, t_mono: float) -> PairingDecision:
        """Pair a scan: its identity_ref, or why it is refused; nothing for unlisted drugs."""
        if not self.requires_identity(result):
            return PairingDecision()
        ref = self.current(t_mono)
        if ref is None:
            return PairingDecision(refusal=NO_WINDOW_REASON)
        return PairingDecision(identity_ref=ref)

    def identity_body(
        self,
        read: CardRead,
        stamp: Stamp,
        context: StationContext,
        station: str | None,
    ) -> IdentityBody:
        """The journal body of an ID-card read: sealed identity plus its masked form.

        A read is refused (with its reason) when its number fails the check or when no
        backend public key is configured; a refused read carries only the masked form.
        The caller must :meth:`close` the old window before journaling it, and
        :meth:`open` a new one once an accepted read is committed.
        """
        config = self._config
        card = read.card
        plain = card.personal.plain()
        problems = id_number_problems(
            str(plain.get("id_number", "")), card_type=str(card.card_type), birth=plain.get("birth")
        )
        sealed = None
        contains: list[str] = []
        reason = None
        if problems:
            reason = "ID card refused: " + "; ".join(problems)
        elif config.public_key is None:
            reason = "ID card refused: no backend public key in [identity_check]"
        else:
            if config.publish_photo and read.photo:
                plain["photo_wlt"] = base64.b64encode(read.photo).decode("ascii")
            if config.publish_fingerprint and read.fingerprint:
                plain["fingerprint"] = base64.b64encode(read.fingerprint).decode("ascii")
            sealed = seal_personal(PersonalData(plain), config.public_key)
            contains = sorted(plain)
        return IdentityBody(
            stamp=stamp,
            context=context,
            station=station,
            card_type=str(card.card_type),
            masked=card.personal.masked(),
            sealed=sealed,
            seal_alg=SEAL_ALG if sealed else None,
            sealed_fields=contains,
            problems=problems,
            verdict=Verdict.REFUSED if reason else Verdict.ACCEPTED,
            reason=reason,
            window_seconds=config.window_seconds,
        )


class MaskedIdentity(BaseModel):
    """The masked identity shown on the terminal."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id_number: str = Field(description="e.g. '110105********002X'")
    name: str | None = Field(default=None, description="All but the first character masked.")
    name_en: str | None = None


class IdentityRead(BaseModel):
    """A journal record of one ID-card read (published in the same envelope as scans).

    ``sealed`` is the identity for the backend only: base64 of version (1) | ephemeral
    X25519 public key (32) | ChaCha20-Poly1305 ciphertext of the JSON fields, key from
    HKDF-SHA256 (``scanfleet identity open`` decrypts it). Nothing else carries plain
    identity.
    """

    model_config = ConfigDict(
        frozen=True, extra="forbid", validate_by_name=True, serialize_by_alias=True
    )

    schema_: Literal["scanfleet.identity-read/1"] = Field(
        default="scanfleet.identity-read/1", alias="schema"
    )
    type: Literal["identity_read"] = "identity_read"
    device: Annotated[str, Field(pattern=NAME_PATTERN)]
    seq: Annotated[int, Field(ge=1)]
    id: str = Field(description="'{device}:{seq}'; paired scans carry it as identity_ref.")
    time: datetime
    clock: ClockSync = ClockSync.UNKNOWN
    t_mono: float
    boot_id: str | None = None
    source: Source
    card_type: Literal["mainland", "hk_macau_taiwan", "foreign_2017", "foreign_2023"]
    masked: MaskedIdentity
    sealed: str | None = Field(description="Sealed identity, or null when the read was refused.")
    seal_alg: Literal["x25519-hkdf-sha256-chacha20poly1305/1"] | None = None
    sealed_fields: list[str] = Field(default_factory=list, description="Field names sealed.")
    problems: list[str] = Field(default_factory=list)
    verdict: Verdict
    reason: str | None = None
    window_seconds: float
    operation: Operation
    station: str | None = None
    bill: str | None = None
    operator: str | None = None
    prev_hash: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
    hash: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
