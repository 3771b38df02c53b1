"""A circuit breaker per endpoint (provider, base_url).

    CLOSED ──(≥ failure_ratio of the last `window` answers failed, ≥ min_calls)──► OPEN
    OPEN ──(open_s elapsed)──► HALF_OPEN: exactly one probe may go
    HALF_OPEN ──probe succeeds──► CLOSED;  ──probe fails──► OPEN for twice as long (≤ max_open_s)

Failures are 5xx, overload, connection and timeout outcomes: the endpoint is sick. Any other
answer (including 4xx and 429) shows the endpoint is up. While open, requests wait (bounded
by their deadline) instead of being sent into a dead endpoint.
"""

from __future__ import annotations

import enum
import math
from collections import deque
from dataclasses import dataclass

from amr_async.teacher.types import OutcomeKind

_FAILURES = frozenset(
    {OutcomeKind.SERVER_ERROR, OutcomeKind.OVERLOADED, OutcomeKind.CONNECTION, OutcomeKind.TIMEOUT}
)


class BreakerState(enum.StrEnum):
    CLOSED = "closed"  # traffic flows
    OPEN = "open"  # nothing is sent until the cool-down ends
    HALF_OPEN = "half_open"  # one probe decides


@dataclass(slots=True, frozen=True)
class BreakerConfig:
    """When a breaker opens and how long it stays open.

    Attributes:
        window: how many recent answers are considered.
        min_calls: answers needed in the window before it may open.
        failure_ratio: share of failures in the window that opens it.
        open_s: first cool-down.
        max_open_s: longest cool-down (it doubles on each failed probe).
    """

    window: int = 20
    min_calls: int = 10
    failure_ratio: float = 0.5
    open_s: float = 5.0
    max_open_s: float = 60.0

    def __post_init__(self) -> None:
        if self.window < 1 or not 1 <= self.min_calls <= self.window:
            raise ValueError(f"BreakerConfig needs 1 <= min_calls <= window: {self}")
        if not 0.0 < self.failure_ratio <= 1.0 or self.open_s <= 0:
            raise ValueError(f"BreakerConfig values out of range: {self}")


def is_endpoint_failure(kind: OutcomeKind) -> bool:
    """Whether `kind` says the endpoint itself is failing."""
    return kind in _FAILURES


class CircuitBreaker:
    """The breaker of one endpoint, driven by an explicit clock.

    Args:
        config: thresholds and cool-downs.
    """

    __slots__ = ("_config", "_cooldown", "_failures", "_opened_at", "_probing", "_recent", "state")

    def __init__(self, config: BreakerConfig) -> None:
        self._config = config
        self.state = BreakerState.CLOSED
        self._recent: deque[bool] = deque(maxlen=config.window)
        self._failures = 0
        self._opened_at = 0.0
        self._cooldown = config.open_s
        self._probing = False

    def wait_s(self, now: float) -> float:
        """Seconds until a request may be sent; inf while a half-open probe is out."""
        if self.state is BreakerState.OPEN:
            remaining = self._opened_at + self._cooldown - now
            if remaining > 0:
                return remaining
            self.state = BreakerState.HALF_OPEN
            self._probing = False
        if self.state is BreakerState.HALF_OPEN and self._probing:
            return math.inf
        return 0.0

    def on_send(self) -> None:
        """A request was let through (after `wait_s` returned 0)."""
        if self.state is BreakerState.HALF_OPEN:
            self._probing = True

    def on_abort(self) -> None:
        """A let-through request ended without an answer (cancelled): free the probe slot."""
        if self.state is BreakerState.HALF_OPEN:
            self._probing = False

    def record(self, kind: OutcomeKind, now: float) -> bool:
        """Record an answer's kind. Returns whether the state changed."""
        failed = is_endpoint_failure(kind)
        if self.state is BreakerState.HALF_OPEN:
            if not self._probing:
                return False  # an answer to a request sent before the breaker opened
            self._probing = False
            if failed:
                self._cooldown = min(self._config.max_open_s, self._cooldown * 2)
                self._open(now)
            else:
                self._close()
            return True
        if self.state is BreakerState.OPEN:
            return False  # late answers to requests sent before opening do not count
        if len(self._recent) == self._recent.maxlen and self._recent[0]:
            self._failures -= 1
        self._recent.append(failed)
        self._failures += failed
        if len(
            self._recent
        ) >= self._config.min_calls and self._failures >= self._config.failure_ratio * len(
            self._recent
        ):
            self._open(now)
            return True
        return False

    def _open(self, now: float) -> None:
        self.state = BreakerState.OPEN
        self._opened_at = now

    def _close(self) -> None:
        self.state = BreakerState.CLOSED
        self._cooldown = self._config.open_s
        self._recent.clear()
        self._failures = 0
