"""TokenBucket and Aimd with a fake clock: pure arithmetic, no sleeping."""

from __future__ import annotations

import math

import pytest

from amr_async.scheduler import Aimd, AimdConfig, TokenBucket


def test_bucket_starts_full_and_refills_continuously() -> None:
    bucket = TokenBucket(capacity=10, rate=2, now=0.0)
    assert bucket.level(0.0) == 10
    bucket.take(10, 0.0)
    assert bucket.wait_s(1, 0.0) == pytest.approx(0.5)
    assert bucket.level(0.25) == pytest.approx(0.5)  # no fixed window: half a token
    assert bucket.wait_s(1, 0.5) == 0.0
    assert bucket.level(100.0) == 10  # never above capacity


def test_bucket_oversized_request_waits_for_full_then_leaves_debt() -> None:
    bucket = TokenBucket(capacity=10, rate=1, now=0.0, level=4)
    assert bucket.wait_s(25, 0.0) == pytest.approx(6.0)  # until full, not forever
    bucket.take(25, 6.0)
    assert bucket.level(6.0) == pytest.approx(-15)
    assert bucket.wait_s(1, 6.0) == pytest.approx(16.0)  # the debt slows what follows


def test_bucket_refund_and_clamp() -> None:
    bucket = TokenBucket(capacity=100, rate=10, now=0.0)
    bucket.take(80, 0.0)
    bucket.give(50, 0.0)
    assert bucket.level(0.0) == 70
    bucket.give(500, 0.0)
    assert bucket.level(0.0) == 100
    bucket.clamp(30, 0.0)
    assert bucket.level(0.0) == 30
    bucket.clamp(90, 0.0)  # clamp only lowers
    assert bucket.level(0.0) == 30


def test_bucket_reconfigure_keeps_level_under_new_capacity() -> None:
    bucket = TokenBucket(capacity=100, rate=10, now=0.0)
    bucket.reconfigure(capacity=40, rate=1, now=0.0)
    assert bucket.level(0.0) == 40
    bucket.take(40, 0.0)
    assert bucket.level(10.0) == pytest.approx(10)
    with pytest.raises(ValueError, match="capacity"):
        bucket.reconfigure(capacity=0, rate=1, now=0.0)
    with pytest.raises(ValueError, match="capacity"):
        TokenBucket(capacity=1, rate=0, now=0.0)


def test_aimd_cuts_once_per_burst_and_recovers_additively() -> None:
    config = AimdConfig(decrease=0.5, increase_per_s=0.1, floor=0.1, cooldown_s=1.0)
    aimd = Aimd(config, now=0.0)
    assert aimd.on_congestion(10.0)
    assert aimd.factor == 0.5
    # More 429s of the same burst (within the cooldown) do not cut again.
    assert not aimd.on_congestion(10.3)
    assert not aimd.on_congestion(10.9)
    assert aimd.factor == 0.5
    # A new burst later cuts again.
    assert aimd.on_congestion(11.5)
    assert aimd.factor == 0.25
    # Successes grow it back linearly with time: 0.1 per second.
    for t in range(12, 17):
        aimd.on_success(float(t))
    assert aimd.factor == pytest.approx(0.25 + 0.05 + 0.4)
    for t in range(17, 40):
        aimd.on_success(float(t))
    assert aimd.factor == 1.0


def test_aimd_floor_and_no_jump_after_idle() -> None:
    aimd = Aimd(AimdConfig(decrease=0.1, floor=0.05, cooldown_s=0.0, max_gap_s=1.0), now=0.0)
    for t in range(5):
        aimd.on_congestion(float(t))
    assert aimd.factor == 0.05
    aimd.on_success(1000.0)  # an hour of silence credits at most max_gap_s
    assert aimd.factor == pytest.approx(0.05 + 0.05 * 1.0)
    assert not math.isnan(aimd.factor)


def test_aimd_config_validates() -> None:
    with pytest.raises(ValueError, match="decrease"):
        AimdConfig(decrease=1.5)
