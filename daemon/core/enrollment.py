"""The enrollment exchange on the wire: topics and the request and response messages.

Shared by the device (:mod:`scanfleet.daemon.remote.enroll`) and the fleet's
enrollment service (:mod:`scanfleet.provisioning.service`).
"""

from __future__ import annotations

from typing import Final, Literal

from pydantic import BaseModel, ConfigDict, Field

from scanfleet.daemon.core.model import NAME_PATTERN

ENROLL_REQUEST_SCHEMA: Final = "scanfleet.enroll-request/1"
ENROLL_RESPONSE_SCHEMA: Final = "scanfleet.enroll-response/1"


def request_topic(client_id: str) -> str:
    """``scanfleet/v1/enroll/{client}/request``."""
    return f"scanfleet/v1/enroll/{client_id}/request"


def response_topic(client_id: str) -> str:
    """``scanfleet/v1/enroll/{client}/response``."""
    return f"scanfleet/v1/enroll/{client_id}/response"


class EnrollRequest(BaseModel):
    """A device asks for a certificate (``…/enroll/{client}/request``)."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    schema_: Literal["scanfleet.enroll-request/1"] = Field(
        default=ENROLL_REQUEST_SCHEMA, alias="schema"
    )
    kind: Literal["enroll", "renew"]
    site: str = Field(pattern=NAME_PATTERN)
    device: str = Field(pattern=NAME_PATTERN)
    nonce: str = Field(max_length=64, description="Echoed in the response.")
    csr: str = Field(max_length=4096, description="PEM CSR for the device's new key.")
    claim: str | None = Field(
        default=None, max_length=128, description="Claim secret (kind 'enroll')."
    )
    cert: str | None = Field(
        default=None, max_length=8192, description="Current certificate PEM (kind 'renew')."
    )
    proof: str | None = Field(
        default=None,
        max_length=512,
        description="Base64 ECDSA-SHA256 signature of the CSR's DER by the current key (renew).",
    )


class EnrollResponse(BaseModel):
    """The fleet service's answer (``…/enroll/{client}/response``)."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    schema_: Literal["scanfleet.enroll-response/1"] = Field(
        default=ENROLL_RESPONSE_SCHEMA, alias="schema"
    )
    nonce: str
    ok: bool
    error: str | None = None
    cert: str | None = Field(default=None, description="Signed device certificate (PEM).")
    ca: str | None = Field(default=None, description="Fleet CA certificate (PEM).")
    broker_url: str | None = Field(default=None, description="mqtts:// URL of the device listener.")
