"""A continuously refilling token bucket driven by an explicit clock.

Time is passed in (`now`, seconds on any monotonic clock) rather than read, so the bucket is
pure arithmetic: the dispatcher feeds it `loop.time()`, tests feed it a fake clock.
"""

from __future__ import annotations

import math


class TokenBucket:
    """Capacity `capacity`, refilled at `rate` units per second, continuously.

    The level may go negative: a request larger than the whole capacity is let through when
    the bucket is full and leaves a debt that refill pays back, so an oversized request is
    slowed to the configured rate instead of blocking forever (the provider decides whether
    it fits at all). Not shared across event loops; not thread-safe.

    Args:
        capacity: the most that can be taken at once (the burst).
        rate: refill per second.
        now: the current time.
        level: starting level; full when omitted.
    """

    __slots__ = ("_level", "_stamp", "capacity", "rate")

    def __init__(self, capacity: float, rate: float, now: float, level: float | None = None):
        if capacity <= 0 or rate <= 0:
            raise ValueError(f"capacity and rate must be > 0, got {capacity} and {rate}")
        self.capacity = float(capacity)
        self.rate = float(rate)
        self._level = self.capacity if level is None else min(float(level), self.capacity)
        self._stamp = now

    def _refill(self, now: float) -> None:
        if now > self._stamp:
            self._level = min(self.capacity, self._level + (now - self._stamp) * self.rate)
            self._stamp = now

    def level(self, now: float) -> float:
        """The level at `now` (negative while a debt is being paid back)."""
        self._refill(now)
        return self._level

    def wait_s(self, amount: float, now: float) -> float:
        """Seconds until `amount` may be taken; 0 when it may be taken now.

        An amount above the capacity may be taken once the bucket is full.
        """
        self._refill(now)
        need = min(amount, self.capacity)
        if self._level >= need:
            return 0.0
        return (need - self._level) / self.rate

    def take(self, amount: float, now: float) -> None:
        """Debit `amount` unconditionally (callers check `wait_s` first)."""
        self._refill(now)
        self._level -= amount

    def give(self, amount: float, now: float) -> None:
        """Credit `amount` back (a refund), never above the capacity."""
        self._refill(now)
        self._level = min(self.capacity, self._level + amount)

    def clamp(self, ceiling: float, now: float) -> None:
        """Lower the level to at most `ceiling` (the server reports less headroom)."""
        self._refill(now)
        if ceiling < self._level:
            self._level = ceiling

    def reconfigure(self, capacity: float, rate: float, now: float) -> None:
        """Change capacity and rate from `now` on, keeping the level (capped at the capacity)."""
        if capacity <= 0 or rate <= 0 or math.isnan(capacity) or math.isnan(rate):
            raise ValueError(f"capacity and rate must be > 0, got {capacity} and {rate}")
        self._refill(now)
        self.capacity = float(capacity)
        self.rate = float(rate)
        self._level = min(self._level, self.capacity)
