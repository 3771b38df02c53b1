"""The dispatcher: every teacher call, within the provider's limits, retried only when useful.

Dispatcher          submit(request, priority=...) -> Outcome; run_all(items, ...)
Endpoint            a teacher client and its per-model Limits
Limiter             per (provider, base_url, model): RPM, TPM or input/output TPM,
                    in-flight cap; learns from rate-limit headers; AIMD on 429s
TokenBucket, Aimd   the arithmetic under the limiter (explicit clock)
RetryPolicy         backoff with full jitter, Retry-After, deadline, retry budget
CircuitBreaker      per endpoint: closed / open / half-open
PricingTable        $ per model from pricing.toml, user-overridable
MetricsSnapshot     what the progress UI shows
shutdown_on_signals SIGINT/SIGTERM -> graceful shutdown, for CLIs that own the loop
"""

from amr_async.scheduler._aimd import Aimd as Aimd
from amr_async.scheduler._aimd import AimdConfig as AimdConfig
from amr_async.scheduler._breaker import BreakerConfig as BreakerConfig
from amr_async.scheduler._breaker import BreakerState as BreakerState
from amr_async.scheduler._breaker import CircuitBreaker as CircuitBreaker
from amr_async.scheduler._bucket import TokenBucket as TokenBucket
from amr_async.scheduler._dispatcher import Client as Client
from amr_async.scheduler._dispatcher import Dispatcher as Dispatcher
from amr_async.scheduler._dispatcher import Endpoint as Endpoint
from amr_async.scheduler._errors import Abandoned as Abandoned
from amr_async.scheduler._errors import DispatcherClosed as DispatcherClosed
from amr_async.scheduler._errors import SchedulerError as SchedulerError
from amr_async.scheduler._errors import UnknownEndpoint as UnknownEndpoint
from amr_async.scheduler._limiter import Cost as Cost
from amr_async.scheduler._limiter import Limiter as Limiter
from amr_async.scheduler._limiter import LimiterState as LimiterState
from amr_async.scheduler._limiter import LimiterTuning as LimiterTuning
from amr_async.scheduler._limiter import Limits as Limits
from amr_async.scheduler._metrics import MetricsSnapshot as MetricsSnapshot
from amr_async.scheduler._metrics import RateWindow as RateWindow
from amr_async.scheduler._pricing import Price as Price
from amr_async.scheduler._pricing import PricingError as PricingError
from amr_async.scheduler._pricing import PricingTable as PricingTable
from amr_async.scheduler._retry import RetryBudget as RetryBudget
from amr_async.scheduler._retry import RetryPolicy as RetryPolicy
from amr_async.scheduler._signals import shutdown_on_signals as shutdown_on_signals
from amr_async.scheduler._tokens import CorrectionFactor as CorrectionFactor
from amr_async.scheduler._tokens import EstimatingCounter as EstimatingCounter
from amr_async.scheduler._tokens import OfflineCounter as OfflineCounter
from amr_async.scheduler._tokens import TokenCounter as TokenCounter
from amr_async.scheduler._tokens import encoding_for as encoding_for
from amr_async.scheduler._tokens import prompt_tokens as prompt_tokens

__all__ = [
    "Abandoned",
    "Aimd",
    "AimdConfig",
    "BreakerConfig",
    "BreakerState",
    "CircuitBreaker",
    "Client",
    "CorrectionFactor",
    "Cost",
    "Dispatcher",
    "DispatcherClosed",
    "Endpoint",
    "EstimatingCounter",
    "Limiter",
    "LimiterState",
    "LimiterTuning",
    "Limits",
    "MetricsSnapshot",
    "OfflineCounter",
    "Price",
    "PricingError",
    "PricingTable",
    "RateWindow",
    "RetryBudget",
    "RetryPolicy",
    "SchedulerError",
    "TokenBucket",
    "TokenCounter",
    "UnknownEndpoint",
    "encoding_for",
    "prompt_tokens",
    "shutdown_on_signals",
]
