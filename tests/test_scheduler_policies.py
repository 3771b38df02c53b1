"""Retry policy and budget, circuit breaker, token counting and correction, pricing."""

from __future__ import annotations

import math
import random
from pathlib import Path

import pytest

from amr_async.scheduler import (
    BreakerConfig,
    BreakerState,
    CircuitBreaker,
    CorrectionFactor,
    EstimatingCounter,
    OfflineCounter,
    PricingError,
    PricingTable,
    RateWindow,
    RetryBudget,
    RetryPolicy,
    encoding_for,
    prompt_tokens,
)
from amr_async.teacher.types import ChatRequest, Message, OutcomeKind, Provider, Usage


def test_backoff_is_full_jitter_exponential_and_capped() -> None:
    policy = RetryPolicy(base_s=1.0, max_backoff_s=8.0)
    rng = random.Random(7)
    for retry, ceiling in [(1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (10, 8.0)]:
        draws = [policy.backoff_s(retry, rng) for _ in range(500)]
        assert all(0.0 <= d <= ceiling for d in draws)
        assert max(draws) > 0.9 * ceiling  # the whole range is used...
        assert min(draws) < 0.1 * ceiling  # ...down to zero (full jitter)


def test_retry_budget_is_a_share_of_first_attempts() -> None:
    budget = RetryBudget(ratio=0.1, minimum=2)
    assert budget.try_spend()
    assert budget.try_spend()
    assert not budget.try_spend()
    for _ in range(30):
        budget.on_first_attempt()
    spent = sum(budget.try_spend() for _ in range(10))
    assert spent == 3
    assert budget.denied == 8


def test_breaker_opens_half_opens_and_closes() -> None:
    breaker = CircuitBreaker(BreakerConfig(window=4, min_calls=4, failure_ratio=0.75, open_s=10))
    for kind in (OutcomeKind.OK, OutcomeKind.SERVER_ERROR, OutcomeKind.CONNECTION):
        assert not breaker.record(kind, 0.0)
    assert breaker.record(OutcomeKind.OVERLOADED, 1.0)  # 3 of 4 failed
    assert breaker.state is BreakerState.OPEN
    assert breaker.wait_s(1.0) == pytest.approx(10.0)
    assert not breaker.record(OutcomeKind.OK, 2.0)  # a late answer does not close it
    assert breaker.wait_s(11.0) == 0.0
    assert breaker.state is BreakerState.HALF_OPEN
    breaker.on_send()  # the probe
    assert breaker.wait_s(11.0) == math.inf  # one probe at a time
    assert breaker.record(OutcomeKind.SERVER_ERROR, 12.0)  # probe failed
    assert breaker.state is BreakerState.OPEN
    assert breaker.wait_s(12.0) == pytest.approx(20.0)  # cool-down doubled
    assert breaker.wait_s(32.0) == 0.0
    breaker.on_send()
    assert breaker.record(OutcomeKind.OK, 33.0)
    assert breaker.state is BreakerState.CLOSED
    assert breaker.wait_s(33.0) == 0.0


def test_breaker_ignores_client_errors_and_429() -> None:
    breaker = CircuitBreaker(BreakerConfig(window=4, min_calls=4, failure_ratio=0.5))
    for kind in [OutcomeKind.RATE_LIMITED, OutcomeKind.INVALID_REQUEST, OutcomeKind.AUTH] * 3:
        breaker.record(kind, 0.0)
    assert breaker.state is BreakerState.CLOSED


def test_breaker_abort_frees_the_probe() -> None:
    breaker = CircuitBreaker(BreakerConfig(window=1, min_calls=1, failure_ratio=1.0, open_s=1))
    breaker.record(OutcomeKind.TIMEOUT, 0.0)
    assert breaker.wait_s(1.0) == 0.0
    breaker.on_send()
    breaker.on_abort()  # the probe's caller was cancelled
    assert breaker.wait_s(1.0) == 0.0


def test_offline_counter_is_exact_for_openai_encodings() -> None:
    # "tiktoken is great!" is 6 tokens in both encodings (OpenAI cookbook); Anthropic's
    # estimate is ceil(1.2 x cl100k_base).
    text = "tiktoken is great!"
    assert OfflineCounter("o200k_base", exact_min_chars=0).count([text]) == [6]
    assert OfflineCounter("cl100k_base", exact_min_chars=0).count([text, ""]) == [6, 0]
    assert OfflineCounter("anthropic_estimate", exact_min_chars=0).count([text]) == [8]
    with pytest.raises(ValueError, match="encoding"):
        OfflineCounter("p50k_base")


def test_offline_counter_estimates_short_texts_and_counts_long_ones_exactly() -> None:
    counter = OfflineCounter("o200k_base", exact_min_chars=100)
    short = "\U0001f600" * 20  # 20 characters: estimated, ceil(20 / 4)
    long = "\U0001f600" * 200
    exact_long = OfflineCounter("o200k_base", exact_min_chars=0).count([long])[0]
    assert exact_long != 50  # the estimate would say ceil(200 / 4)
    assert counter.count([short, long]) == [5, exact_long]


def test_offline_counter_counts_a_recurring_text_once() -> None:
    system = "You are a professional coder. " * 50
    counter = OfflineCounter("o200k_base", cache_size=2, exact_min_chars=0)
    uncached = OfflineCounter("o200k_base", cache_size=0, exact_min_chars=0)
    for i in range(5):
        texts = [f"question {i} " * 3, system]
        assert counter.count(texts) == uncached.count(texts)
    assert counter.hits == 4  # the system prompt, after its first count
    assert uncached.hits == 0
    counter.count(["a", "b", "c"])  # the LRU evicts the oldest, the system prompt
    counter.count([system])
    assert counter.hits == 4


def test_encoding_for_models() -> None:
    assert encoding_for(Provider.ANTHROPIC, "claude-sonnet-4-5") == "anthropic_estimate"
    for model in ("gpt-4o-mini", "gpt-4.1", "o3-mini", "openai/gpt-5", "GPT-4o"):
        assert encoding_for(Provider.OPENAI, model) == "o200k_base"
    for model in ("gpt-4", "gpt-3.5-turbo", "meta-llama/Llama-3.1-8B-Instruct"):
        assert encoding_for(Provider.OPENAI, model) == "cl100k_base"


def test_prompt_tokens_estimate_and_correction() -> None:
    request = ChatRequest(
        model="m", messages=(Message("user", "x" * 400),), max_tokens=10, system="y" * 40
    )
    assert prompt_tokens(EstimatingCounter(), request) == 100 + 10 + 2 * 4
    factor = CorrectionFactor(smoothing=0.5)
    assert factor.apply(100) == 100
    factor.observe(100, 130)  # first observation replaces the prior
    assert factor.apply(100) == 130
    factor.observe(100, 110)
    assert factor.value == pytest.approx(1.2)
    factor.observe(100, 0)  # nothing to learn
    factor.observe(1, 10_000)  # bounded
    assert factor.value <= 4.0


def test_pricing_shipped_prefix_cached_and_batch() -> None:
    table = PricingTable.load()
    usage = Usage(input_tokens=1_000_000, output_tokens=1_000_000, cached_input_tokens=500_000)
    # gpt-4o-mini: 0.5M uncached × 0.15 + 0.5M cached × 0.075 + 1M out × 0.60
    assert table.cost("gpt-4o-mini", usage) == pytest.approx(0.075 + 0.0375 + 0.60)
    assert table.cost("gpt-4o-mini-2024-07-18", usage) == table.cost("gpt-4o-mini", usage)
    assert table.cost("gpt-4o-mini", Usage(1_000_000, 1_000_000), batch=True) == pytest.approx(
        0.075 + 0.30
    )
    # Anthropic reports cache reads apart from input tokens.
    anthropic = Usage(input_tokens=1_000_000, output_tokens=0, cached_input_tokens=1_000_000)
    cost = table.cost("claude-3-5-haiku-20241022", anthropic, cached_in_input=False)
    assert cost == pytest.approx(0.80 + 0.08)
    assert table.cost("no-such-model", usage) is None


def test_pricing_lookups_are_remembered_with_the_same_answers() -> None:
    table = PricingTable.load()
    first = [table.price(m) for m in ("gpt-4o-mini-2024-07-18", "gpt-4o-mini", "no-such-model")]
    again = [table.price(m) for m in ("gpt-4o-mini-2024-07-18", "gpt-4o-mini", "no-such-model")]
    assert first == again
    assert first[0] is first[1]  # the dated name falls back to its listed prefix
    assert first[2] is None
    assert "no-such-model" not in table
    assert "gpt-4o-mini-2024-07-18" in table


def test_pricing_override_merges_and_errors_name_the_place(tmp_path: Path) -> None:
    good = tmp_path / "prices.toml"
    good.write_text(
        '[models."gpt-4o-mini"]\noutput = 1.0\n[models."local"]\ninput = 0\noutput = 0\n'
    )
    table = PricingTable.load([good])
    assert table.cost("gpt-4o-mini", Usage(0, 1_000_000)) == pytest.approx(1.0)
    assert table.cost("gpt-4o-mini", Usage(1_000_000, 0)) == pytest.approx(0.15)  # kept
    assert "local" in table
    bad = tmp_path / "bad.toml"
    bad.write_text('[models."x"]\ninput = "cheap"\noutput = 1\n')
    with pytest.raises(PricingError, match=r"bad\.toml: models\.'x'\.input"):
        PricingTable.load([bad])
    partial = tmp_path / "partial.toml"
    partial.write_text('[models."y"]\ninput = 1\n')
    with pytest.raises(PricingError, match="needs both input and output"):
        PricingTable.load([partial])


def test_rate_window_trailing_minute() -> None:
    window = RateWindow(60, now=0.0)
    for t in range(120):
        window.add(10, float(t))
    assert window.per_minute(119.5) == pytest.approx(600)
    assert window.per_minute(500.0) == 0.0
