"""The limiter of one (provider, base_url, model): requests, tokens and in-flight calls.

Each limited dimension is a continuously refilling `TokenBucket` whose rate is the per-minute
limit / 60, scaled by a utilisation target (`headroom`) and the AIMD factor; its capacity is
`burst_s` seconds of that rate. A small burst matters: providers (and our emulator) count
over sliding one-minute windows, and a bucket holding a whole minute would let a full
minute's traffic out at once and then keep refilling while the server's window is still full.

Where each limit comes from, per dimension:

- configured (`Limits`), else a conservative default until the first answer;
- then from the rate-limit headers of every response: the advertised limit becomes the rate
  (never above a configured one) and the reported remaining caps the bucket's level (shrink
  when the server sees less headroom than we predicted; the rate grows back to the advertised
  limit as the AIMD factor recovers);
- a dimension nobody configured and the server does not advertise on a successful answer is
  dropped (OpenAI-compatible servers such as vLLM send no limits): the in-flight cap and AIMD
  still protect it.

Token costs: requests cost 1; input tokens the offline estimate; output tokens are reserved
at `max_tokens` and, where the provider settles them (Anthropic), refunded from the reported
usage when the answer arrives; OpenAI charges prompt + max_tokens on admission, so only the
input estimate is corrected there.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields

from amr_async.scheduler._aimd import Aimd, AimdConfig
from amr_async.scheduler._bucket import TokenBucket
from amr_async.teacher.types import Outcome, OutcomeKind, Provider, RateLimitInfo, Usage

DIMENSIONS = ("requests", "tokens", "input_tokens", "output_tokens")


@dataclass(slots=True, frozen=True)
class Limits:
    """Limits of one model on one endpoint; None means "learn it from the server".

    Attributes:
        rpm: requests per minute.
        tpm: tokens per minute, input plus output (OpenAI's only token limit).
        itpm: input tokens per minute (Anthropic).
        otpm: output tokens per minute (Anthropic).
        max_in_flight: requests in progress at once (never learned: no header reports it).
    """

    rpm: float | None = None
    tpm: float | None = None
    itpm: float | None = None
    otpm: float | None = None
    max_in_flight: int | None = None

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if value is not None and not value > 0:
                raise ValueError(f"Limits.{f.name} must be > 0 or None, got {value}")

    def per_dimension(self) -> dict[str, float | None]:
        return {
            "requests": self.rpm,
            "tokens": self.tpm,
            "input_tokens": self.itpm,
            "output_tokens": self.otpm,
        }


@dataclass(slots=True, frozen=True)
class LimiterTuning:
    """Constants shared by every limiter of a dispatcher.

    Attributes:
        defaults: the conservative limits used until the server says otherwise.
        default_max_in_flight: in-flight cap when none is configured.
        burst_s: bucket capacity, in seconds of the rate.
        headroom: share of a limit the limiter aims for. Against a sliding one-minute
            window, a bucket holding `burst_s` of rate r admits at most r × (60 + burst_s)
            in any minute, so headroom ≤ 60 / (60 + burst_s) (0.984 for 1 s) never
            overshoots; 0.98 leaves a little for clock skew between us and the server.
        aimd: the back-off constants.
    """

    defaults: Limits = field(
        default_factory=lambda: Limits(rpm=60, tpm=40_000, itpm=40_000, otpm=8_000)
    )
    default_max_in_flight: int = 256
    burst_s: float = 1.0
    headroom: float = 0.98
    aimd: AimdConfig = field(default_factory=AimdConfig)

    def __post_init__(self) -> None:
        if not 0.0 < self.headroom <= 1.0:
            raise ValueError(f"LimiterTuning.headroom must be in (0, 1], got {self.headroom}")
        if self.burst_s <= 0 or self.default_max_in_flight < 1:
            raise ValueError(f"LimiterTuning values out of range: {self}")


@dataclass(slots=True, frozen=True)
class Cost:
    """What one attempt reserves in each dimension."""

    input_tokens: int
    output_tokens: int

    @property
    def tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    def of(self, dimension: str) -> float:
        if dimension == "requests":
            return 1.0
        if dimension == "tokens":
            return float(self.tokens)
        if dimension == "input_tokens":
            return float(self.input_tokens)
        return float(self.output_tokens)


@dataclass(slots=True, frozen=True)
class DimensionState:
    """One dimension as the metrics show it."""

    source: str  # "configured", "learned", "default"
    limit_per_min: float  # the base limit (configured/advertised/default)
    current_per_min: float  # what the limiter currently aims for (× headroom × AIMD)
    level: float


@dataclass(slots=True, frozen=True)
class LimiterState:
    """A limiter as the metrics show it."""

    dimensions: dict[str, DimensionState]
    in_flight: int
    max_in_flight: int
    aimd_factor: float


class _Dimension:
    __slots__ = ("advertised", "bucket", "configured", "default", "dropped")

    def __init__(self, configured: float | None, default: float) -> None:
        self.configured = configured
        self.advertised: float | None = None
        self.dropped = False  # unconfigured and not advertised: not limited here
        self.default = default
        self.bucket: TokenBucket | None = None

    @property
    def base(self) -> float:
        if self.advertised is not None:
            return min(self.advertised, self.configured or math.inf)
        return self.configured if self.configured is not None else self.default

    @property
    def source(self) -> str:
        """Which figure binds: the configured one, the advertised one, or the default."""
        if self.configured is not None and (
            self.advertised is None or self.configured <= self.advertised
        ):
            return "configured"
        return "learned" if self.advertised is not None else "default"


class Limiter:
    """Admission control for one (provider, base_url, model).

    Callers ask `wait_s(cost)`; when it is 0 they `acquire(cost)`, send, then `release`.
    Not thread-safe; one event loop.

    Args:
        limits: configured limits (None fields are learned).
        provider: decides which token dimensions exist and how output is settled.
        tuning: shared constants.
        now: the current time.
    """

    def __init__(self, limits: Limits, provider: Provider, tuning: LimiterTuning, now: float):
        self._provider = provider
        self._tuning = tuning
        self._aimd = Aimd(tuning.aimd, now)
        self._refund_output = provider is Provider.ANTHROPIC
        configured = limits.per_dimension()
        defaults = tuning.defaults.per_dimension()
        wanted = ["requests", "tokens"]
        if provider is Provider.ANTHROPIC:
            # Anthropic limits input and output separately; a combined limit only if given.
            wanted = ["requests", "input_tokens", "output_tokens"]
            if limits.tpm is not None:
                wanted.append("tokens")
        self._dims: dict[str, _Dimension] = {
            name: _Dimension(configured[name], defaults[name] or 1.0) for name in wanted
        }
        self._max_in_flight = limits.max_in_flight or tuning.default_max_in_flight
        self.in_flight = 0
        self._apply(now)

    # -- admission ---------------------------------------------------------------------

    @property
    def max_in_flight(self) -> int:
        """The in-flight cap now (scaled by the AIMD factor, at least 1)."""
        return max(1, int(self._max_in_flight * self._aimd.factor))

    @property
    def charges_prompt_tokens(self) -> bool:
        """Whether a live dimension charges prompt tokens (else counting them buys nothing).

        False once the server has answered without advertising a token limit nobody
        configured (vLLM, llama.cpp, an unlimited emulator): those dimensions are dropped.
        """
        dims = self._dims
        return any(
            dims[name].bucket is not None for name in ("tokens", "input_tokens") if name in dims
        )

    def wait_s(self, cost: Cost, now: float) -> float:
        """Seconds until `cost` fits; 0 if it fits now; inf while the in-flight cap is full."""
        if self.in_flight >= self.max_in_flight:
            return math.inf
        wait = 0.0
        for name, dim in self._dims.items():
            if dim.bucket is not None:
                wait = max(wait, dim.bucket.wait_s(cost.of(name), now))
        return wait

    def acquire(self, cost: Cost, now: float) -> None:
        """Reserve `cost` (after `wait_s` returned 0)."""
        self.in_flight += 1
        for name, dim in self._dims.items():
            if dim.bucket is not None:
                dim.bucket.take(cost.of(name), now)

    def release(self, cost: Cost, usage: Usage | None, now: float, *, sent: bool = True) -> None:
        """End an attempt: free its in-flight slot and settle its reservation.

        Args:
            cost: what `acquire` reserved.
            usage: what the server reported, if it answered.
            now: the current time.
            sent: False when the request never left (everything is refunded).
        """
        self.in_flight -= 1
        for name, dim in self._dims.items():
            if dim.bucket is None:
                continue
            if not sent:
                dim.bucket.give(cost.of(name), now)
            elif usage is not None and name != "requests":
                delta = cost.of(name) - self._actual(name, cost, usage)
                if delta > 0:
                    dim.bucket.give(delta, now)
                elif delta < 0:
                    dim.bucket.take(-delta, now)

    def _actual(self, name: str, cost: Cost, usage: Usage) -> float:
        """What the provider finally charged in `name` for an answer with `usage`."""
        output = usage.output_tokens if self._refund_output else cost.output_tokens
        if name == "input_tokens":
            return float(usage.input_tokens)
        if name == "output_tokens":
            return float(output)
        return float(usage.input_tokens + output)

    # -- learning ------------------------------------------------------------------------

    def observe(self, outcome: Outcome, now: float) -> None:
        """Learn from one response: rate-limit headers, and AIMD on 429 or success."""
        if outcome.status is not None:
            self._learn(outcome.rate_limits, outcome.kind.is_success, now)
        if outcome.kind is OutcomeKind.RATE_LIMITED:
            if self._aimd.on_congestion(now):
                self._apply(now)
        elif outcome.kind.is_success and self._aimd.on_success(now):
            self._apply(now)

    def _learn(self, info: RateLimitInfo, success: bool, now: float) -> None:
        changed = False
        for name, dim in self._dims.items():
            limit, remaining = self._reported(info, name)
            if limit is None and remaining is None:
                # The server does not advertise this dimension; nobody configured it.
                unclaimed = dim.configured is None and dim.advertised is None
                if success and unclaimed and dim.bucket is not None:
                    dim.dropped = True
                    dim.bucket = None
                continue
            if limit is not None and limit > 0 and limit != dim.advertised:
                dim.advertised = float(limit)
                dim.dropped = False
                changed = True
            if remaining is not None and dim.bucket is not None:
                dim.bucket.clamp(float(remaining), now)
        if changed:
            self._apply(now)

    def _reported(self, info: RateLimitInfo, name: str) -> tuple[int | None, int | None]:
        """(limit, remaining) the server reported for dimension `name`."""
        if name == "requests":
            return info.limit_requests, info.remaining_requests
        if name == "tokens":
            if self._provider is Provider.ANTHROPIC:
                # Anthropic's tokens-* headers report the most restrictive of its token
                # limits, not a combined one: a configured combined limit is not learned.
                return None, None
            return info.limit_tokens, info.remaining_tokens
        if name == "input_tokens":
            return info.limit_input_tokens, info.remaining_input_tokens
        return info.limit_output_tokens, info.remaining_output_tokens

    def _apply(self, now: float) -> None:
        """Recompute every bucket's rate and capacity from its base limit and the factor."""
        scale = self._tuning.headroom * self._aimd.factor
        for dim in self._dims.values():
            if dim.dropped:
                continue
            rate = dim.base * scale / 60.0
            capacity = max(rate * self._tuning.burst_s, 1.0)
            if dim.bucket is None:
                dim.bucket = TokenBucket(capacity, rate, now)
            else:
                dim.bucket.reconfigure(capacity, rate, now)

    # -- metrics -------------------------------------------------------------------------

    def state(self, now: float) -> LimiterState:
        scale = self._tuning.headroom * self._aimd.factor
        dims = {
            name: DimensionState(
                source=dim.source,
                limit_per_min=dim.base,
                current_per_min=dim.base * scale,
                level=dim.bucket.level(now),
            )
            for name, dim in self._dims.items()
            if dim.bucket is not None
        }
        return LimiterState(dims, self.in_flight, self.max_in_flight, self._aimd.factor)
