"""Offline prompt-token counting for the TPM limiter, corrected from reported usage.

Tokens are never counted over the network (DESIGN.md). `TokenCounter` is the seam: the
default `EstimatingCounter` is a documented estimate (about 4 characters per token); an exact
counter (the Rust `count_tokens(texts, encoding)` of the core) plugs in behind the same
interface. Whatever the counter, `CorrectionFactor` learns the ratio of the tokens the
provider reports to the tokens counted, so reservations converge on the provider's figure.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from amr_async.teacher.types import ChatRequest

# Per-message framing (role markers) that chat formats add around each message's text.
MESSAGE_OVERHEAD_TOKENS = 4


@runtime_checkable
class TokenCounter(Protocol):
    """Counts tokens of a batch of texts offline."""

    def count(self, texts: Sequence[str]) -> list[int]:
        """Token counts, one per text."""
        ...


class EstimatingCounter:
    """ceil(characters / `chars_per_token`) per text: no vocabulary, no network.

    English prose and code average 3.5–4.5 characters per token with the OpenAI and
    Anthropic tokenizers; the correction factor absorbs the difference.
    """

    __slots__ = ("chars_per_token",)

    def __init__(self, chars_per_token: float = 4.0) -> None:
        if chars_per_token <= 0:
            raise ValueError(f"chars_per_token must be > 0, got {chars_per_token}")
        self.chars_per_token = chars_per_token

    def count(self, texts: Sequence[str]) -> list[int]:
        return [math.ceil(len(text) / self.chars_per_token) for text in texts]


def prompt_tokens(counter: TokenCounter, request: ChatRequest) -> int:
    """Counted prompt tokens of `request`: its texts plus per-message framing."""
    texts = [m.content for m in request.messages]
    if request.system:
        texts.append(request.system)
    return sum(counter.count(texts)) + MESSAGE_OVERHEAD_TOKENS * len(texts)


class CorrectionFactor:
    """Ratio of reported to counted prompt tokens, learned as a moving average.

    Args:
        smoothing: weight of each new observation (0 < smoothing ≤ 1).
        bounds: the factor stays within these, so one odd answer cannot wreck the limiter.
    """

    __slots__ = ("_bounds", "_smoothing", "observations", "value")

    def __init__(self, smoothing: float = 0.05, bounds: tuple[float, float] = (0.25, 4.0)):
        if not 0.0 < smoothing <= 1.0:
            raise ValueError(f"smoothing must be in (0, 1], got {smoothing}")
        self._smoothing = smoothing
        self._bounds = bounds
        self.value = 1.0
        self.observations = 0

    def apply(self, counted: int) -> int:
        """The reservation for `counted` tokens."""
        return math.ceil(counted * self.value)

    def observe(self, counted: int, reported: int) -> None:
        """Learn from one answer whose prompt we counted as `counted` and the provider as
        `reported` (ignored when either is 0: nothing to learn from)."""
        if counted <= 0 or reported <= 0:
            return
        ratio = min(max(reported / counted, self._bounds[0]), self._bounds[1])
        # The first observation replaces the prior; later ones are averaged in.
        weight = 1.0 if self.observations == 0 else self._smoothing
        self.value += weight * (ratio - self.value)
        self.observations += 1
