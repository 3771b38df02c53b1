"""Offline prompt-token counting for the TPM limiter, corrected from reported usage.

Tokens are never counted over the network (DESIGN.md). `TokenCounter` is the seam. The
dispatcher's default is `OfflineCounter`, the Rust core's `count_tokens`: exact for OpenAI's
cl100k_base and o200k_base, an over-estimate for Anthropic (whose tokenizer is not
published), cl100k_base as the estimate for other OpenAI-compatible servers' models
(`encoding_for` picks). `EstimatingCounter` (about 4 characters per token) remains for
callers who want no tokenizer at all. Whatever the counter, `CorrectionFactor` learns the
ratio of the tokens the provider reports to the tokens counted, so reservations converge on
the provider's figure.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from amr_async.core import ENCODINGS, count_tokens
from amr_async.teacher.types import ChatRequest, Provider

# OpenAI model families tokenised with o200k_base; older OpenAI models use cl100k_base.
_O200K_PREFIXES = (
    "gpt-4o",
    "gpt-4.1",
    "gpt-4.5",
    "gpt-5",
    "chatgpt-4o",
    "gpt-oss",
    "o1",
    "o3",
    "o4",
)

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


def encoding_for(provider: Provider, model: str) -> str:
    """The `count_tokens` encoding for a model.

    Anthropic: "anthropic_estimate". OpenAI's gpt-4o, gpt-4.1, gpt-5 and o-series:
    "o200k_base". Anything else (gpt-4, gpt-3.5, open models behind an OpenAI-compatible
    server): "cl100k_base", exact for the former and an estimate for the latter, which the
    correction factor adjusts.
    """
    if provider is Provider.ANTHROPIC:
        return "anthropic_estimate"
    name = model.lower().rsplit("/", 1)[-1]
    return "o200k_base" if name.startswith(_O200K_PREFIXES) else "cl100k_base"


class OfflineCounter:
    """Token counts from the Rust core (`amr_async.core.count_tokens`), with a small cache.

    Every text of at least `exact_min_chars` characters (default: all) is counted exactly;
    texts that recur (a stage's system prompt goes with every request) once, through an LRU
    of `cache_size` texts; a request's uncached texts go to Rust in one batch. One call
    costs ~2 us of CPU for a short text (the core counts small batches on the calling
    thread; a pool hand-off cost 10-80 us on a busy machine). Shorter texts than
    `exact_min_chars` are estimated like `EstimatingCounter`. Not thread-safe; one loop.

    Args:
        encoding: one of `amr_async.core.ENCODINGS`.
        cache_size: texts remembered; 0 turns the cache off.
        exact_min_chars: shortest text counted exactly; 0 counts every text exactly.
        chars_per_token: the estimate for shorter texts.

    Raises:
        ValueError: unknown encoding or a negative size.
    """

    __slots__ = ("_cache", "_cache_size", "_estimate", "_exact_min_chars", "encoding", "hits")

    def __init__(
        self,
        encoding: str,
        *,
        cache_size: int = 256,
        exact_min_chars: int = 0,
        chars_per_token: float = 4.0,
    ) -> None:
        if encoding not in ENCODINGS:
            raise ValueError(f"encoding: unknown {encoding!r}, expected one of {ENCODINGS}")
        if cache_size < 0 or exact_min_chars < 0:
            raise ValueError(
                f"cache_size and exact_min_chars must be >= 0, got {cache_size}, {exact_min_chars}"
            )
        self.encoding = encoding
        self._cache: OrderedDict[str, int] = OrderedDict()
        self._cache_size = cache_size
        self._exact_min_chars = exact_min_chars
        self._estimate = EstimatingCounter(chars_per_token)
        self.hits = 0

    def count(self, texts: Sequence[str]) -> list[int]:
        cache = self._cache
        counts: list[int] = []
        missing: list[str] = []
        for text in texts:
            if len(text) < self._exact_min_chars:
                counts.append(math.ceil(len(text) / self._estimate.chars_per_token))
                continue
            n = cache.get(text)
            if n is None:
                missing.append(text)
                counts.append(-1)
            else:
                self.hits += 1
                cache.move_to_end(text)
                counts.append(n)
        if not missing:
            return counts
        fresh = iter(count_tokens(missing, self.encoding))
        for i, n in enumerate(counts):
            if n == -1:
                counts[i] = m = next(fresh)
                if self._cache_size:
                    cache[texts[i]] = m
                    if len(cache) > self._cache_size:
                        cache.popitem(last=False)
        return counts


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
