"""Cost totals and budget caps."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class CostTotals:
    """Tokens and dollars of a set of journaled calls (a run, a stage, a call)."""

    calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0

    @property
    def tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    def add(self, input_tokens: int, output_tokens: int, cost_usd: float) -> None:
        self.calls += 1
        self.input_tokens += input_tokens
        self.output_tokens += output_tokens
        self.cost_usd += cost_usd

    def as_dict(self) -> dict[str, float | int]:
        return {
            "calls": self.calls,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "tokens": self.tokens,
            "cost_usd": round(self.cost_usd, 6),
        }


@dataclass(slots=True, frozen=True)
class Budget:
    """Caps on what a run may spend; None means no cap.

    A cap stops new dispatch once reached; calls already in flight finish and are
    journaled, so a run may end slightly above its cap (by at most what was in flight).
    """

    max_usd: float | None = None
    max_tokens: int | None = None

    def __post_init__(self) -> None:
        if self.max_usd is not None and self.max_usd < 0:
            raise ValueError(f"max_usd must be >= 0, got {self.max_usd}")
        if self.max_tokens is not None and self.max_tokens < 0:
            raise ValueError(f"max_tokens must be >= 0, got {self.max_tokens}")

    def exceeded(self, totals: CostTotals) -> str | None:
        """Why `totals` has reached a cap, or None while within every cap."""
        if self.max_usd is not None and totals.cost_usd >= self.max_usd:
            return f"${totals.cost_usd:.4f} spent of a ${self.max_usd:g} cap"
        if self.max_tokens is not None and totals.tokens >= self.max_tokens:
            return f"{totals.tokens} tokens spent of a {self.max_tokens} cap"
        return None
