"""When to retry: exponential backoff with full jitter, Retry-After, per-item deadline, budgets.

A failed attempt is retried only when its kind is retryable (`OutcomeKind.retryable`), the
request has attempts left, the global retry budget has a token, and the retry can start
before the item's deadline. The server's Retry-After is honoured as given (no cap): if it
points past the deadline the item ends now with that outcome rather than waiting in vain.
"""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(slots=True, frozen=True)
class RetryPolicy:
    """Retry constants of a dispatcher.

    Attributes:
        max_attempts: attempts per request, the first included.
        base_s: backoff before the first retry is drawn from [0, base_s]; doubles per retry.
        max_backoff_s: cap of our own backoff (not of the server's Retry-After).
        deadline_s: per item, from `submit` to the start of its last attempt.
        budget_ratio: retries may be at most this share of first attempts (global budget).
        budget_min: retries always allowed at start, before any traffic has earned more.
    """

    max_attempts: int = 6
    base_s: float = 0.5
    max_backoff_s: float = 60.0
    deadline_s: float = 900.0
    budget_ratio: float = 0.5
    budget_min: float = 50.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(f"RetryPolicy.max_attempts must be >= 1, got {self.max_attempts}")
        if min(self.base_s, self.max_backoff_s, self.deadline_s, self.budget_ratio) < 0:
            raise ValueError(f"RetryPolicy values must be >= 0: {self}")

    def backoff_s(self, retry: int, rng: random.Random) -> float:
        """Full-jitter backoff before retry number `retry` (1 for the first retry)."""
        ceiling = min(self.max_backoff_s, self.base_s * 2.0 ** (retry - 1))
        return rng.uniform(0.0, ceiling)


class RetryBudget:
    """A global budget: each first attempt earns `ratio` retries, each retry spends one.

    The balance starts at `minimum` and is capped at `minimum` plus what 1,000 first
    attempts earn, so a long clean stretch cannot bank an unbounded retry storm.

    Args:
        ratio: retries earned per first attempt.
        minimum: the starting balance.
    """

    __slots__ = ("_balance", "_cap", "_ratio", "denied")

    def __init__(self, ratio: float, minimum: float) -> None:
        self._ratio = ratio
        self._balance = minimum
        self._cap = minimum + ratio * 1_000
        self.denied = 0

    def on_first_attempt(self) -> None:
        self._balance = min(self._cap, self._balance + self._ratio)

    def try_spend(self) -> bool:
        """Take one retry if the budget allows it."""
        if self._balance >= 1.0:
            self._balance -= 1.0
            return True
        self.denied += 1
        return False

    @property
    def balance(self) -> float:
        return self._balance
