"""Capped exponential backoff with jitter: the publisher's reconnects and the device
workers' reopens wait the same way."""

from __future__ import annotations

import random


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
