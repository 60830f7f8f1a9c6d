"""The framer for a ``framing`` preset of a device's config.

Kept apart from :mod:`scanfleet.drivers.framing` (the framers of plain serial streams)
because the presets also name framers of vendor protocols (:mod:`scanfleet.drivers.ssi`),
which build on ``framing``: the dependency runs one way.
"""

from __future__ import annotations

from scanfleet.drivers.framing import (
    ETX,
    RESYNC_SILENCE,
    STX,
    TERMINATORS,
    DelimiterFramer,
    Framer,
    HoneywellPacketFramer,
    IdleFramer,
)
from scanfleet.drivers.ssi import SsiFramer


def make_framer(
    framing: str,
    *,
    max_frame: int = 4096,
    idle_timeout: float = 0.05,
    suffix: bytes | None = None,
) -> Framer:
    """The framer for a SerialDeviceConfig ``framing`` preset."""
    resync = max(idle_timeout, RESYNC_SILENCE)
    if framing in TERMINATORS:
        return DelimiterFramer(TERMINATORS[framing], max_frame=max_frame, idle_timeout=resync)
    if framing == "suffix":
        if not suffix:
            raise ValueError("framing 'suffix' needs suffix bytes")
        return DelimiterFramer(suffix, max_frame=max_frame, idle_timeout=resync)
    if framing == "stx_etx":
        return DelimiterFramer(bytes([ETX]), start=STX, max_frame=max_frame, idle_timeout=resync)
    if framing == "idle":
        return IdleFramer(max_frame=max_frame, idle_timeout=idle_timeout)
    if framing == "honeywell_packet":
        return HoneywellPacketFramer(max_frame=max_frame, idle_timeout=resync)
    if framing == "ssi":
        return SsiFramer(max_frame=max_frame, idle_timeout=resync)
    raise ValueError(f"unknown framing {framing!r}")
