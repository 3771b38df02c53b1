"""Live counters of a dispatcher, and the snapshot the progress UI reads.

Counting is O(1) per attempt; `Dispatcher.metrics()` builds an immutable `MetricsSnapshot`.
Achieved rates are measured over a trailing window of per-second slots (no list per request).
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field

from amr_async.scheduler._limiter import LimiterState
from amr_async.teacher.types import OutcomeKind


class RateWindow:
    """Sum of amounts over the trailing `span_s` seconds, in one-second slots.

    Args:
        span_s: the window, in whole seconds.
        now: the current time (the window's measurements start here).
    """

    __slots__ = ("_slots", "_span", "_start", "_tick")

    def __init__(self, span_s: int, now: float) -> None:
        self._span = span_s
        self._slots = [0.0] * span_s
        self._start = now
        self._tick = math.floor(now)

    def _advance(self, now: float) -> None:
        tick = math.floor(now)
        if tick == self._tick:
            return
        if tick - self._tick >= self._span:
            self._slots = [0.0] * self._span
        else:
            for t in range(self._tick + 1, tick + 1):
                self._slots[t % self._span] = 0.0
        self._tick = max(self._tick, tick)

    def add(self, amount: float, now: float) -> None:
        self._advance(now)
        self._slots[math.floor(now) % self._span] += amount

    def per_minute(self, now: float) -> float:
        """The trailing window's sum as a per-minute rate (shorter at the very start)."""
        self._advance(now)
        elapsed = min(float(self._span), max(now - self._start, 1.0))
        return sum(self._slots) * 60.0 / elapsed


@dataclass(slots=True, frozen=True)
class MetricsSnapshot:
    """One look at a dispatcher.

    Attributes:
        submitted: calls to `submit`.
        finished: submits that returned an outcome.
        sent: attempts that went out (first tries and retries).
        ok: final outcomes that are complete answers.
        truncated: final outcomes cut at max_tokens (kept, not re-bought).
        final_by_kind: every final outcome by kind.
        attempts_by_kind: every attempt's outcome by kind.
        retries_by_kind: retries, by the kind of the attempt that caused them.
        final_by_attempts: final outcomes of calls that were sent, by how many attempts
            they took (1 = no retry).
        rate_limited: 429 rate-limit answers.
        retry_budget_denied: retries refused by the global budget.
        in_flight: attempts on the wire now.
        waiting: submits waiting for capacity now.
        achieved_rpm: attempts sent over the trailing minute.
        achieved_tpm: tokens (input + output, as reported) over the trailing minute.
        limit_rpm: sum over limiters of the requests/min they currently aim for.
        limit_tpm: the same for tokens/min (combined, or input + output).
        tokens_in: reported prompt tokens (cached included).
        tokens_out: reported output tokens.
        cached_tokens_in: reported cached prompt tokens.
        cost_usd: dollars by the pricing table.
        unpriced_models: models that had usage but no price.
        limiters: per "provider base_url model", the limiter's state.
        breakers: per endpoint, the breaker state.
        stopped: per endpoint stopped by a non-retryable failure, its first example.
    """

    submitted: int
    finished: int
    sent: int
    ok: int
    truncated: int
    final_by_kind: dict[str, int]
    attempts_by_kind: dict[str, int]
    retries_by_kind: dict[str, int]
    final_by_attempts: dict[int, int]
    rate_limited: int
    retry_budget_denied: int
    in_flight: int
    waiting: int
    achieved_rpm: float
    achieved_tpm: float
    limit_rpm: float
    limit_tpm: float
    tokens_in: int
    tokens_out: int
    cached_tokens_in: int
    cost_usd: float
    unpriced_models: tuple[str, ...]
    limiters: dict[str, LimiterState] = field(default_factory=dict)
    breakers: dict[str, str] = field(default_factory=dict)
    stopped: dict[str, str] = field(default_factory=dict)


class Metrics:
    """Mutable counters owned by one dispatcher."""

    def __init__(self, now: float) -> None:
        self.submitted = 0
        self.finished = 0
        self.sent = 0
        self.final_by_kind: Counter[OutcomeKind] = Counter()
        self.attempts_by_kind: Counter[OutcomeKind] = Counter()
        self.retries_by_kind: Counter[OutcomeKind] = Counter()
        self.final_by_attempts: Counter[int] = Counter()
        self.tokens_in = 0
        self.tokens_out = 0
        self.cached_tokens_in = 0
        self.cost_usd = 0.0
        self.unpriced_models: set[str] = set()
        self.requests = RateWindow(60, now)
        self.tokens = RateWindow(60, now)
