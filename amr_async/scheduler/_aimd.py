"""Additive-increase / multiplicative-decrease of one limiter's send rate.

The factor scales a limiter's rates and its in-flight cap. A 429 burst cuts it by
`decrease` (once per `cooldown_s`: the 429s of requests already in flight when the first one
came back belong to the same congestion event); time without congestion grows it back by
`increase_per_s` per second of successful traffic, up to 1.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True, frozen=True)
class AimdConfig:
    """How one limiter backs off and recovers.

    Attributes:
        decrease: factor multiplied on a congestion event (0 < decrease < 1).
        increase_per_s: factor added per second of successes.
        floor: the factor never goes below this.
        cooldown_s: congestion events closer together than this count once.
        max_gap_s: longest stretch of time one success may credit (no jump after idling).
    """

    decrease: float = 0.7
    increase_per_s: float = 0.05
    floor: float = 0.05
    cooldown_s: float = 1.0
    max_gap_s: float = 1.0

    def __post_init__(self) -> None:
        if not 0.0 < self.decrease < 1.0:
            raise ValueError(f"AimdConfig.decrease must be in (0, 1), got {self.decrease}")
        if not 0.0 < self.floor <= 1.0:
            raise ValueError(f"AimdConfig.floor must be in (0, 1], got {self.floor}")
        if self.increase_per_s < 0 or self.cooldown_s < 0 or self.max_gap_s < 0:
            raise ValueError(f"AimdConfig values must be >= 0: {self}")


class Aimd:
    """The AIMD factor of one limiter, driven by an explicit clock.

    Args:
        config: the constants.
        now: the current time.
    """

    __slots__ = ("_config", "_last_credit", "_last_cut", "factor")

    def __init__(self, config: AimdConfig, now: float) -> None:
        self._config = config
        self.factor = 1.0
        self._last_cut = -float("inf")
        self._last_credit = now

    def on_congestion(self, now: float) -> bool:
        """A 429 (rate-limit) came back. Returns whether the factor changed."""
        self._last_credit = now
        if now - self._last_cut < self._config.cooldown_s:
            return False
        self._last_cut = now
        old = self.factor
        self.factor = max(self._config.floor, self.factor * self._config.decrease)
        return self.factor != old

    def on_success(self, now: float) -> bool:
        """A request succeeded. Returns whether the factor changed."""
        gap = min(max(0.0, now - self._last_credit), self._config.max_gap_s)
        self._last_credit = now
        if self.factor >= 1.0:
            return False
        self.factor = min(1.0, self.factor + gap * self._config.increase_per_s)
        return True
