"""Capped exponential backoff with jitter, as pure arithmetic over loop time.

A link that failed to connect (or a device that stopped answering) is retried after ``first``
seconds, then twice that, up to ``cap``; each delay is multiplied by a random factor in
``[1 - jitter, 1]`` so that many devices that failed together do not retry in lockstep. Nothing
here sleeps: the owner records a failure at loop time ``now`` and refuses requests (fast) until
:meth:`Backoff.retry_at`, so a dead device costs no CPU and blocks nobody.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable

__all__ = ["Backoff"]


class Backoff:
    """The retry schedule of one link or device.

    Args:
        first: seconds before the first retry (> 0).
        cap: the longest delay, seconds (>= first).
        jitter: fraction (0..1) by which a delay may be shortened at random.
        rng: returns a float in [0, 1); injectable for exact tests.

    Raises:
        ValueError: a bound is not finite, ``first`` <= 0, ``cap`` < ``first`` or ``jitter``
            outside 0..1.
    """

    def __init__(
        self,
        *,
        first: float = 0.1,
        cap: float = 10.0,
        jitter: float = 0.2,
        rng: Callable[[], float] = random.random,
    ) -> None:
        if not (math.isfinite(first) and first > 0):
            raise ValueError(f"backoff first delay must be > 0 seconds, got {first!r}")
        if not (math.isfinite(cap) and cap >= first):
            raise ValueError(f"backoff cap must be >= first delay {first!r}, got {cap!r}")
        if not 0 <= jitter <= 1:
            raise ValueError(f"backoff jitter must be within 0..1, got {jitter!r}")
        self.first = first
        self.cap = cap
        self.jitter = jitter
        self._rng = rng
        self._failures = 0
        self._retry_at = -math.inf

    @property
    def failures(self) -> int:
        """Consecutive failures since the last success."""
        return self._failures

    @property
    def retry_at(self) -> float:
        """Loop time before which no attempt should be made (``-inf`` when not backing off)."""
        return self._retry_at

    def delay(self, failures: int) -> float:
        """The un-jittered delay after ``failures`` consecutive failures, in seconds."""
        if failures <= 0:
            return 0.0
        return min(self.cap, self.first * 2.0 ** min(failures - 1, 64))

    def failed(self, now: float) -> float:
        """Record a failure at loop time ``now``; returns the seconds until the next attempt."""
        self._failures += 1
        wait = self.delay(self._failures) * (1.0 - self.jitter * self._rng())
        self._retry_at = now + wait
        return wait

    def succeeded(self) -> None:
        """Record a success: the next failure starts again from ``first``."""
        self._failures = 0
        self._retry_at = -math.inf

    def backing_off(self, now: float) -> bool:
        """True while loop time ``now`` is before the next allowed attempt."""
        return now < self._retry_at
