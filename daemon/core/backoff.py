"""Capped exponential backoff with jitter: the publisher's reconnects and the device
workers' reopens wait the same way. A cheap TCP probe lets a long backoff end as soon
as the other side listens again."""

from __future__ import annotations

import errno
import random
import socket

PROBE_INTERVAL = (1.0, 3.0)
"""Seconds between probes during a backoff, drawn uniformly: the jitter spreads a fleet
that lost the same broker, and a probe is one TCP handshake, no TLS and no MQTT."""


class Backoff:
    """Capped exponential backoff with jitter.

    Attempt *n* (from 0) waits a random time in ``[d/2, d]`` where
    ``d = min(maximum, initial * factor**n)``: never zero (no hot loop against a
    dead broker), never above the cap, and spread so a fleet that lost the same
    broker does not come back in lock step.
    """

    def __init__(
        self,
        initial: float = 0.5,
        maximum: float = 60.0,
        factor: float = 2.0,
        rng: random.Random | None = None,
    ) -> None:
        if not 0 < initial <= maximum:
            raise ValueError("need 0 < initial <= maximum")
        self.initial = initial
        self.maximum = maximum
        self.factor = factor
        self.attempts = 0
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not cryptography

    def next(self) -> float:
        """The delay before the next attempt (and count the attempt)."""
        ceiling = min(self.maximum, self.initial * self.factor ** min(self.attempts, 64))
        self.attempts += 1
        return self._rng.uniform(ceiling / 2, ceiling)

    def reset(self) -> None:
        """Start again from ``initial`` (after a connection that worked)."""
        self.attempts = 0


def listening(host: str, port: int, timeout: float = 1.0) -> bool:
    """True when a TCP connection to *host*:*port* opens (then closed at once)."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def probe_delay(rng: random.Random | None = None) -> float:
    """Seconds until the next probe during a backoff."""
    return (rng or random).uniform(*PROBE_INTERVAL)


_DOWN = frozenset({errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH})


def unreachable(err: BaseException) -> bool:
    """True when *err* (or its cause) says nothing listened: refused or unreachable."""
    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in _DOWN:
            return True
        seen = seen.__cause__
    return False
