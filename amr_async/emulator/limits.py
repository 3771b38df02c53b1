"""Sliding one-minute windows for requests and tokens, and a concurrency gate.

The clock is injected so that tests can move time by hand.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

WINDOW_S = 60.0


class _Entry:
    __slots__ = ("amount", "at")

    def __init__(self, at: float, amount: int) -> None:
        self.at = at
        self.amount = amount


class SlidingWindow:
    """Amounts charged within the last 60 s against a limit.

    An entry's amount can be settled later (Anthropic's output reservation at max_tokens is
    corrected to the real count when the answer is done).
    """

    __slots__ = ("_clock", "_entries", "_used", "limit")

    def __init__(self, limit: int, clock: Callable[[], float]) -> None:
        self.limit = limit
        self._clock = clock
        self._entries: deque[_Entry] = deque()
        self._used = 0

    def _expire(self, now: float) -> None:
        entries = self._entries
        while entries and entries[0].at <= now - WINDOW_S:
            self._used -= entries.popleft().amount

    def used(self) -> int:
        self._expire(self._clock())
        return self._used

    def remaining(self) -> int:
        return max(0, self.limit - self.used())

    def wait_for(self, amount: int) -> float | None:
        """Seconds until `amount` fits, 0 if it fits now, None if it can never fit."""
        if amount > self.limit:
            return None
        now = self._clock()
        self._expire(now)
        excess = self._used + amount - self.limit
        if excess <= 0:
            return 0.0
        freed = 0
        for entry in self._entries:
            freed += entry.amount
            if freed >= excess:
                return entry.at + WINDOW_S - now
        return WINDOW_S  # unreachable while amount <= limit

    def charge(self, amount: int) -> _Entry:
        entry = _Entry(self._clock(), amount)
        self._entries.append(entry)
        self._used += amount
        return entry

    def settle(self, entry: _Entry, amount: int) -> None:
        """Correct a charged entry's amount (no-op once it has left the window)."""
        if self._entries and entry.at > self._clock() - WINDOW_S:
            self._used += amount - entry.amount
            entry.amount = amount

    def reset_s(self) -> float:
        """Seconds until the window is fully replenished (its newest entry expires)."""
        now = self._clock()
        self._expire(now)
        if not self._entries:
            return 0.0
        return max(0.0, self._entries[-1].at + WINDOW_S - now)


@dataclass(slots=True)
class Admission:
    """A request let through: what it charged, so it can be settled and released."""

    output_entry: _Entry | None = None
    counted_concurrency: bool = False


@dataclass(slots=True, frozen=True)
class Refusal:
    """A request refused by a limit."""

    limit_name: str  # "requests", "tokens", "input_tokens", "output_tokens", "concurrency"
    limit: int
    retry_after_s: float
    # The request alone exceeds the limit: waiting cannot help, it must be made smaller.
    too_large: bool = False
    requested: int = 0


@dataclass(slots=True, frozen=True)
class WindowState:
    limit: int
    remaining: int
    reset_s: float


class RouteLimits:
    """The limits of one protocol route.

    Args:
        rpm, tpm, itpm, otpm, max_concurrency: see `Limits`; None means unlimited.
        clock: monotonic seconds.
    """

    def __init__(
        self,
        *,
        rpm: int | None,
        tpm: int | None,
        itpm: int | None,
        otpm: int | None,
        max_concurrency: int | None,
        clock: Callable[[], float],
    ) -> None:
        self.requests = SlidingWindow(rpm, clock) if rpm else None
        self.tokens = SlidingWindow(tpm, clock) if tpm else None
        self.input_tokens = SlidingWindow(itpm, clock) if itpm else None
        self.output_tokens = SlidingWindow(otpm, clock) if otpm else None
        self.max_concurrency = max_concurrency
        self.in_flight = 0

    def admit(self, charges: dict[str, int]) -> Admission | Refusal:
        """Admit a request charging `charges` per window name, or refuse it.

        Args:
            charges: amounts for "requests", "tokens", "input_tokens", "output_tokens";
                windows not configured are skipped.

        Returns:
            An `Admission` (everything charged) or the first `Refusal` (nothing charged).
        """
        if self.max_concurrency is not None and self.in_flight >= self.max_concurrency:
            return Refusal("concurrency", self.max_concurrency, 1.0)
        windows = self._windows()
        for name, window in windows:
            amount = charges.get(name, 0)
            wait = window.wait_for(amount)
            if wait is None:
                # Can never fit. OpenAI answers 429 "Request too large"; retry-after is a
                # full window, but only a smaller request can succeed.
                return Refusal(name, window.limit, WINDOW_S, too_large=True, requested=amount)
            if wait > 0:
                return Refusal(name, window.limit, wait)
        admission = Admission()
        for name, window in windows:
            entry = window.charge(charges.get(name, 0))
            if name == "output_tokens":
                admission.output_entry = entry
        if self.max_concurrency is not None:
            self.in_flight += 1
            admission.counted_concurrency = True
        return admission

    def finish(self, admission: Admission, output_tokens: int | None) -> None:
        """Release the concurrency slot and settle the output reservation to the real count."""
        if admission.counted_concurrency:
            self.in_flight -= 1
            admission.counted_concurrency = False
        if output_tokens is not None and admission.output_entry is not None and self.output_tokens:
            self.output_tokens.settle(admission.output_entry, output_tokens)

    def _windows(self) -> list[tuple[str, SlidingWindow]]:
        pairs = [
            ("requests", self.requests),
            ("tokens", self.tokens),
            ("input_tokens", self.input_tokens),
            ("output_tokens", self.output_tokens),
        ]
        return [(n, w) for n, w in pairs if w is not None]

    def state(self, name: str) -> WindowState | None:
        window: SlidingWindow | None = getattr(self, name)
        if window is None:
            return None
        return WindowState(window.limit, window.remaining(), window.reset_s())
