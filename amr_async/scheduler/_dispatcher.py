"""The dispatcher: every teacher call goes through `Dispatcher.submit`.

Per call: wait for the (provider, base_url, model) limiter and the endpoint's circuit
breaker, by priority → send with a per-request timeout → learn from the answer (rate-limit
headers, AIMD, breaker, token correction, metrics, $) → retry with backoff or return the
final `Outcome`. The journal is not the dispatcher's business: `pipeline._teacher.
JournaledTeacher` wraps `submit`, since it also needs the item and stage of each call.

Memory: a call that can go at once costs no future at all; a waiting call costs one heap
entry and one future; nothing is allocated per input row that has not been submitted
(`run_all` pulls inputs only as workers free up). Waiters are woken by one timer per lane
(the earliest time the head of the lane can go) or by a release, never by polling.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import math
import random
from collections import Counter
from collections.abc import (
    AsyncIterable,
    Awaitable,
    Callable,
    Iterable,
    Mapping,
    Sequence,
)
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from amr_async.scheduler._breaker import BreakerConfig, CircuitBreaker
from amr_async.scheduler._errors import Abandoned, DispatcherClosed, UnknownEndpoint
from amr_async.scheduler._limiter import Cost, Limiter, LimiterTuning, Limits
from amr_async.scheduler._metrics import Metrics, MetricsSnapshot
from amr_async.scheduler._pricing import Price, PricingTable
from amr_async.scheduler._retry import RetryBudget, RetryPolicy
from amr_async.scheduler._tokens import (
    CorrectionFactor,
    OfflineCounter,
    TokenCounter,
    encoding_for,
    prompt_tokens,
)
from amr_async.teacher.types import ChatRequest, Outcome, OutcomeKind, Provider, Usage

logger = logging.getLogger("amr_async.scheduler")

K = TypeVar("K")

# Non-retryable kinds that stop every call to the endpoint: no other request can succeed
# with the same key or the same exhausted account.
_ENDPOINT_FATAL = frozenset({OutcomeKind.AUTH, OutcomeKind.QUOTA_EXHAUSTED})


class Client(Protocol):
    """What the dispatcher needs of a teacher client (`amr_async.teacher` clients fit)."""

    @property
    def provider(self) -> Provider: ...

    @property
    def base_url(self) -> str: ...

    async def send(self, request: ChatRequest) -> Outcome:
        """Send one request; classify every failure into the `Outcome` (never raise)."""
        ...


@dataclass(slots=True, frozen=True)
class Endpoint:
    """One client and the limits of the models it serves.

    Attributes:
        client: the wire client; its `provider` and `base_url` key the limiters.
        limits: per model name; the entry "*" applies to models not listed. Fields left
            None are learned from the server's headers.
        name: how `submit(endpoint=...)` picks it; defaults to "provider base_url".
    """

    client: Client
    limits: Mapping[str, Limits] = field(default_factory=dict)
    name: str | None = None

    @property
    def key(self) -> str:
        return self.name or f"{self.client.provider.value} {self.client.base_url}"


class _Waiter:
    __slots__ = ("cost", "fut")

    def __init__(self, fut: asyncio.Future[bool], cost: Cost) -> None:
        self.fut = fut
        self.cost = cost


class _EndpointState:
    __slots__ = ("breaker", "endpoint", "fatal", "lanes", "reported")

    def __init__(self, endpoint: Endpoint, breaker: BreakerConfig) -> None:
        self.endpoint = endpoint
        self.breaker = CircuitBreaker(breaker)
        self.fatal: Outcome | None = None
        self.lanes: dict[str, _Lane] = {}
        self.reported: set[OutcomeKind] = set()


class _Lane:
    """The waiting line and limiter of one (provider, base_url, model)."""

    __slots__ = (
        "correction",
        "counter",
        "ep",
        "limiter",
        "model",
        "price",
        "timer",
        "timer_at",
        "waiters",
    )

    def __init__(
        self,
        ep: _EndpointState,
        model: str,
        limiter: Limiter,
        price: Price | None,
        counter: TokenCounter,
    ):
        self.ep = ep
        self.model = model
        self.limiter = limiter
        self.price = price
        self.counter = counter
        self.correction = CorrectionFactor()
        self.waiters: list[tuple[int, int, _Waiter]] = []
        self.timer: asyncio.TimerHandle | None = None
        self.timer_at = math.inf


class Dispatcher:
    """Sends teacher calls within every limit, retries what can succeed, reports the rest.

    Any number of tasks of one event loop may call `submit` at once; the dispatcher binds to
    the loop of its first call and creates no loop, thread or task of its own.

    Args:
        endpoints: the clients and their limits.
        retry: backoff, attempts, deadline and retry budget.
        tuning: limiter defaults, burst, headroom, AIMD.
        breaker: circuit-breaker thresholds.
        pricing: the $ table; the shipped one when None.
        counter: offline prompt-token counter for every model; when None, each model gets
            the Rust core's counter for its encoding (`encoding_for`).
        request_timeout_s: longest one attempt may take on the wire, enforced here on top of
            the client's own timeouts (`teacher.Timeouts`); None leaves it to the client.
        batch_prices: price answers at Batch API rates.
        rng: backoff jitter source (seed it for reproducible tests).
    """

    def __init__(
        self,
        endpoints: Sequence[Endpoint],
        *,
        retry: RetryPolicy | None = None,
        tuning: LimiterTuning | None = None,
        breaker: BreakerConfig | None = None,
        pricing: PricingTable | None = None,
        counter: TokenCounter | None = None,
        request_timeout_s: float | None = None,
        batch_prices: bool = False,
        rng: random.Random | None = None,
    ) -> None:
        if not endpoints:
            raise ValueError("Dispatcher needs at least one endpoint")
        self._retry = retry or RetryPolicy()
        self._tuning = tuning or LimiterTuning()
        self._pricing = pricing or PricingTable.load()
        self._counter = counter
        self._counters: dict[str, TokenCounter] = {}  # by encoding, shared between lanes
        self._request_timeout_s = request_timeout_s
        self._batch_prices = batch_prices
        self._rng = rng or random.Random()
        self._budget = RetryBudget(self._retry.budget_ratio, self._retry.budget_min)
        self._endpoints: dict[str, _EndpointState] = {}
        for endpoint in endpoints:
            if endpoint.key in self._endpoints:
                raise ValueError(f"two endpoints named {endpoint.key!r}")
            self._endpoints[endpoint.key] = _EndpointState(endpoint, breaker or BreakerConfig())
        self._default_endpoint = next(iter(self._endpoints)) if len(endpoints) == 1 else None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._metrics: Metrics | None = None
        self._seq = itertools.count()
        self._in_flight = 0
        self._waiting = 0
        self._idle: asyncio.Event | None = None
        self._closing: asyncio.Event | None = None
        self._closed = False
        # Tasks inside `client.send`, with the time their attempt times out (inf: never).
        # One timeout applies to every attempt, so insertion order is deadline order and
        # one shared timer (`_expire_sends`) serves them all: no timer per request.
        self._sending: dict[asyncio.Task[Any], float] = {}
        self._send_timer: asyncio.TimerHandle | None = None
        self._timed_out: set[asyncio.Task[Any]] = set()  # cancelled by `_expire_sends`
        self._abandoned: set[asyncio.Task[Any]] = set()  # cancelled by `aclose`

    # -- public --------------------------------------------------------------------------

    async def submit(
        self,
        request: ChatRequest,
        *,
        priority: int = 0,
        endpoint: str | None = None,
        deadline_s: float | None = None,
    ) -> Outcome:
        """Make one teacher call and return its final outcome.

        Args:
            request: the call.
            priority: higher goes first among calls waiting for the same limiter; give
                later pipeline stages higher numbers so items finish and free memory.
            endpoint: which endpoint; may be omitted when there is only one.
            deadline_s: overrides `RetryPolicy.deadline_s` for this call.

        Returns:
            A success (ok or truncated) or a classified failure. Non-retryable failures
            that stop an endpoint (auth, quota) come back at once, unsent, for every later call.

        Raises:
            DispatcherClosed: shutdown began before the call was made (or, `Abandoned`,
                while it was on the wire). Nothing was recorded for it.
            UnknownEndpoint: `endpoint` names no configured endpoint.
        """
        if self._closed:
            raise DispatcherClosed("dispatcher is shutting down; call not made")
        loop, metrics = self._bind()
        ep = self._endpoint(endpoint)
        metrics.submitted += 1
        lane = self._lane(ep, request.model, loop.time())
        # Counted on the first attempt that a token limit applies to: ~0.3 ms of CPU for a
        # long prompt, wasted where no token dimension is live (vLLM, llama.cpp).
        counted: int | None = None
        deadline = loop.time() + (self._retry.deadline_s if deadline_s is None else deadline_s)
        seq = next(self._seq)  # FIFO within a priority; retries keep their place
        attempts = 0
        last: Outcome | None = None
        while True:
            if ep.fatal is not None:
                outcome = last if last is not None else _not_sent(ep.fatal)
                break
            if self._closed:
                raise DispatcherClosed("dispatcher is shutting down; call not made")
            if counted is None and lane.limiter.charges_prompt_tokens:
                counted = prompt_tokens(lane.counter, request)
            cost = Cost(lane.correction.apply(counted or 0), request.max_tokens)
            if not await self._acquire(lane, cost, priority, seq, deadline):
                if ep.fatal is not None:
                    continue
                outcome = last or Outcome(
                    OutcomeKind.TIMEOUT, error="deadline passed while waiting for capacity"
                )
                break
            if attempts == 0:
                self._budget.on_first_attempt()
            attempts += 1
            outcome = await self._attempt(lane, request, cost, counted or 0)
            last = outcome
            kind = outcome.kind
            if kind is OutcomeKind.OK or kind is OutcomeKind.TRUNCATED or not kind.retryable:
                break
            delay = self._retry_delay(outcome, attempts, loop.time(), deadline)
            if delay is None:
                break
            metrics.retries_by_kind[outcome.kind] += 1
            await self._sleep(delay)
        metrics.final_by_kind[outcome.kind] += 1
        metrics.finished += 1
        if attempts:
            metrics.final_by_attempts[attempts] += 1
        return outcome

    async def run_all(
        self,
        items: Iterable[tuple[K, ChatRequest]] | AsyncIterable[tuple[K, ChatRequest]],
        on_outcome: Callable[[K, Outcome], Awaitable[None]],
        *,
        concurrency: int,
        priority: int = 0,
        endpoint: str | None = None,
    ) -> int:
        """Submit every item with at most `concurrency` at once, pulling inputs lazily.

        No task, future or copy exists for an input row until a worker is free to take it:
        a 10-million-row iterator costs `concurrency` workers. Stops pulling when the
        dispatcher shuts down (rows not yet finished are simply not reported).

        Args:
            items: (key, request) pairs, sync or async.
            on_outcome: awaited with each key and its final outcome.
            concurrency: workers; size it to what the limits can keep in flight.
            priority: passed to `submit`.
            endpoint: passed to `submit`.

        Returns:
            How many items finished.
        """
        if concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {concurrency}")
        done = 0
        sync_source = iter(items) if isinstance(items, Iterable) else None
        async_source = None if isinstance(items, Iterable) else aiter(items)
        lock = asyncio.Lock()  # one async iterator must not be advanced concurrently

        async def pull() -> tuple[K, ChatRequest] | None:
            if sync_source is not None:
                return next(sync_source, None)  # no await: atomic on the loop
            assert async_source is not None
            async with lock:
                return await anext(async_source, None)

        async def worker() -> None:
            nonlocal done
            while not self._closed:
                item = await pull()
                if item is None:
                    return
                key, request = item
                try:
                    outcome = await self.submit(request, priority=priority, endpoint=endpoint)
                except DispatcherClosed:
                    return
                await on_outcome(key, outcome)
                done += 1

        async with asyncio.TaskGroup() as group:
            for _ in range(concurrency):
                group.create_task(worker())
        return done

    def metrics(self) -> MetricsSnapshot:
        """A consistent snapshot of the counters and of every limiter and breaker."""
        loop, m = self._bind()
        now = loop.time()
        limiters = {}
        limit_rpm = limit_tpm = 0.0
        for ep in self._endpoints.values():
            for lane in ep.lanes.values():
                state = lane.limiter.state(now)
                limiters[f"{ep.endpoint.key} {lane.model}"] = state
                dims = state.dimensions
                if "requests" in dims:
                    limit_rpm += dims["requests"].current_per_min
                if "tokens" in dims:
                    limit_tpm += dims["tokens"].current_per_min
                else:
                    limit_tpm += sum(
                        dims[d].current_per_min
                        for d in ("input_tokens", "output_tokens")
                        if d in dims
                    )
        return MetricsSnapshot(
            submitted=m.submitted,
            finished=m.finished,
            sent=m.sent,
            ok=m.final_by_kind[OutcomeKind.OK],
            truncated=m.final_by_kind[OutcomeKind.TRUNCATED],
            final_by_kind=_by_kind(m.final_by_kind),
            attempts_by_kind=_by_kind(m.attempts_by_kind),
            retries_by_kind=_by_kind(m.retries_by_kind),
            final_by_attempts=dict(sorted(m.final_by_attempts.items())),
            rate_limited=m.attempts_by_kind[OutcomeKind.RATE_LIMITED],
            retry_budget_denied=self._budget.denied,
            in_flight=self._in_flight,
            waiting=self._waiting,
            achieved_rpm=m.requests.per_minute(now),
            achieved_tpm=m.tokens.per_minute(now),
            limit_rpm=limit_rpm,
            limit_tpm=limit_tpm,
            tokens_in=m.tokens_in,
            tokens_out=m.tokens_out,
            cached_tokens_in=m.cached_tokens_in,
            cost_usd=m.cost_usd,
            unpriced_models=tuple(sorted(m.unpriced_models)),
            limiters=limiters,
            breakers={key: ep.breaker.state.value for key, ep in self._endpoints.items()},
            stopped={
                key: f"{ep.fatal.kind.value}: {ep.fatal.error or ''}".strip()
                for key, ep in self._endpoints.items()
                if ep.fatal is not None
            },
        )

    @property
    def stopped(self) -> bool:
        """True when every endpoint was stopped by a non-retryable failure (auth, quota)."""
        return all(ep.fatal is not None for ep in self._endpoints.values())

    @property
    def closed(self) -> bool:
        return self._closed

    async def aclose(self, grace_s: float = 30.0) -> None:
        """Shut down: take no new calls, let in-flight calls finish within `grace_s`.

        Waiting calls get `DispatcherClosed` at once (they were never sent); calls still on
        the wire when the grace period ends get `Abandoned`. Idempotent.
        """
        self._bind()
        self._closed = True
        assert self._closing is not None
        assert self._idle is not None
        self._closing.set()
        for ep in self._endpoints.values():
            for lane in ep.lanes.values():
                self._release_waiters(lane, DispatcherClosed("dispatcher shut down; not sent"))
        if self._in_flight:
            try:
                async with asyncio.timeout(grace_s):
                    await self._idle.wait()
            except TimeoutError:
                # Cancel the sends still out; each raises `Abandoned` to its caller.
                self._abandoned.update(self._sending)
                for task in list(self._sending):
                    task.cancel()
                await self._idle.wait()
        if self._send_timer is not None:
            self._send_timer.cancel()
            self._send_timer = None

    # -- internals -----------------------------------------------------------------------

    def _bind(self) -> tuple[asyncio.AbstractEventLoop, Metrics]:
        loop = asyncio.get_running_loop()
        if self._loop is None:
            self._loop = loop
            self._metrics = Metrics(loop.time())
            self._idle = asyncio.Event()
            self._idle.set()
            self._closing = asyncio.Event()
        elif self._loop is not loop:
            raise RuntimeError("a Dispatcher is bound to the event loop of its first call")
        assert self._metrics is not None
        return loop, self._metrics

    def _bound(self) -> tuple[asyncio.AbstractEventLoop, Metrics]:
        """The loop and metrics of a dispatcher already bound (internal hot path)."""
        assert self._loop is not None
        assert self._metrics is not None
        return self._loop, self._metrics

    def _endpoint(self, name: str | None) -> _EndpointState:
        if name is None:
            if self._default_endpoint is None:
                raise UnknownEndpoint("several endpoints: submit(endpoint=...) must name one")
            name = self._default_endpoint
        try:
            return self._endpoints[name]
        except KeyError:
            raise UnknownEndpoint(f"no endpoint named {name!r}") from None

    def _lane(self, ep: _EndpointState, model: str, now: float) -> _Lane:
        lane = ep.lanes.get(model)
        if lane is None:
            limits = ep.endpoint.limits
            configured = limits.get(model) or limits.get("*") or Limits()
            limiter = Limiter(configured, ep.endpoint.client.provider, self._tuning, now)
            lane = ep.lanes[model] = _Lane(
                ep, model, limiter, self._pricing.price(model), self._counter_for(ep, model)
            )
        return lane

    def _counter_for(self, ep: _EndpointState, model: str) -> TokenCounter:
        if self._counter is not None:
            return self._counter
        encoding = encoding_for(ep.endpoint.client.provider, model)
        counter = self._counters.get(encoding)
        if counter is None:
            counter = self._counters[encoding] = OfflineCounter(encoding)
        return counter

    async def _acquire(
        self, lane: _Lane, cost: Cost, priority: int, seq: int, deadline: float
    ) -> bool:
        """Wait for the limiter and breaker; True once the cost is reserved.

        False when the deadline passed first or the endpoint was stopped.
        """
        loop = self._loop
        assert loop is not None
        now = loop.time()
        if not lane.waiters and self._wait_s(lane, cost, now) == 0.0:
            self._grant(lane, cost, now)
            return True
        waiter = _Waiter(loop.create_future(), cost)
        heapq.heappush(lane.waiters, (-priority, seq, waiter))
        self._waiting += 1
        self._pump(lane)
        try:
            async with asyncio.timeout_at(deadline):
                return await waiter.fut
        except TimeoutError:
            # A grant that raced with the deadline still stands.
            if waiter.fut.done() and not waiter.fut.cancelled():
                return waiter.fut.result()
            waiter.fut.cancel()
            return False
        except BaseException:
            # Cancelled by the caller: undo a grant that raced with the cancellation, so
            # the reserved capacity is not lost.
            if waiter.fut.done() and not waiter.fut.cancelled() and not waiter.fut.exception():
                if waiter.fut.result():
                    lane.limiter.release(cost, None, loop.time(), sent=False)
                    lane.ep.breaker.on_abort()
                    self._pump(lane)
            else:
                waiter.fut.cancel()
            raise
        finally:
            self._waiting -= 1

    def _wait_s(self, lane: _Lane, cost: Cost, now: float) -> float:
        wait = lane.ep.breaker.wait_s(now)
        if wait == 0.0:
            wait = lane.limiter.wait_s(cost, now)
        return wait

    def _grant(self, lane: _Lane, cost: Cost, now: float) -> None:
        lane.limiter.acquire(cost, now)
        lane.ep.breaker.on_send()

    def _pump(self, lane: _Lane) -> None:
        """Grant waiting calls of `lane` in priority order while capacity allows."""
        loop = self._loop
        assert loop is not None
        now = loop.time()
        waiters = lane.waiters
        while waiters:
            waiter = waiters[0][2]
            if waiter.fut.done():  # cancelled or timed out: drop lazily
                heapq.heappop(waiters)
                continue
            if lane.ep.fatal is not None:
                self._release_waiters(lane, None)
                return
            wait = self._wait_s(lane, waiter.cost, now)
            if wait > 0.0:
                if wait != math.inf:
                    self._arm(lane, now + wait)
                return  # else a release or the breaker's verdict wakes the lane
            heapq.heappop(waiters)
            self._grant(lane, waiter.cost, now)
            waiter.fut.set_result(True)

    def _arm(self, lane: _Lane, at: float) -> None:
        if lane.timer is not None and lane.timer_at <= at:
            return
        if lane.timer is not None:
            lane.timer.cancel()
        assert self._loop is not None
        lane.timer_at = at
        lane.timer = self._loop.call_at(at, self._on_timer, lane)

    def _on_timer(self, lane: _Lane) -> None:
        lane.timer = None
        lane.timer_at = math.inf
        self._pump(lane)

    def _release_waiters(self, lane: _Lane, exc: BaseException | None) -> None:
        """Wake every waiter of `lane`: with `exc`, or with "not granted" when None."""
        while lane.waiters:
            _, _, waiter = heapq.heappop(lane.waiters)
            if not waiter.fut.done():
                if exc is None:
                    waiter.fut.set_result(False)
                else:
                    waiter.fut.set_exception(exc)
        if lane.timer is not None:
            lane.timer.cancel()
            lane.timer = None
            lane.timer_at = math.inf

    async def _attempt(
        self, lane: _Lane, request: ChatRequest, cost: Cost, counted: int
    ) -> Outcome:
        """Send once (the cost is already reserved) and learn from the answer."""
        loop, metrics = self._bound()
        ep = lane.ep
        self._in_flight += 1
        assert self._idle is not None
        self._idle.clear()
        metrics.sent += 1
        metrics.requests.add(1, loop.time())
        task = asyncio.current_task()
        assert task is not None
        timeout = self._request_timeout_s
        if timeout is None:
            self._sending[task] = math.inf
        else:
            self._sending[task] = deadline = loop.time() + timeout
            if self._send_timer is None:
                self._send_timer = loop.call_at(deadline, self._expire_sends)
        try:
            outcome = await ep.endpoint.client.send(request)
        except asyncio.CancelledError:
            # Cancelled by the shared timeout timer (and by no one else): a timeout.
            if task in self._timed_out and task.uncancel() == 0:
                outcome = Outcome(OutcomeKind.TIMEOUT, error=f"no answer within {timeout} s")
            else:
                self._finish_attempt(lane, cost, None)
                # Cancelled by `aclose` (and by no one else): report it as abandoned.
                if task in self._abandoned and task.uncancel() == 0:
                    raise Abandoned("in flight when the shutdown grace period ended") from None
                raise
        except BaseException:
            self._finish_attempt(lane, cost, None)
            raise
        finally:
            del self._sending[task]
            self._timed_out.discard(task)
        self._finish_attempt(lane, cost, outcome)
        self._learn(lane, request, outcome, counted)
        return outcome

    def _expire_sends(self) -> None:
        """The shared timer: cancel the sends past their deadline, re-arm for the next."""
        loop = self._loop
        assert loop is not None
        self._send_timer = None
        now = loop.time()
        expired = []
        for task, deadline in self._sending.items():  # in deadline order
            if deadline > now:
                if deadline != math.inf:
                    self._send_timer = loop.call_at(deadline, self._expire_sends)
                break
            if task not in self._timed_out:
                expired.append(task)
        for task in expired:
            self._timed_out.add(task)
            task.cancel()

    def _finish_attempt(self, lane: _Lane, cost: Cost, outcome: Outcome | None) -> None:
        loop = self._loop
        assert loop is not None
        assert self._idle is not None
        now = loop.time()
        answered = outcome is not None and outcome.status is not None
        lane.limiter.release(cost, outcome.usage if answered and outcome else None, now)
        if outcome is None:
            lane.ep.breaker.on_abort()
        self._in_flight -= 1
        if self._in_flight == 0:
            self._idle.set()

    def _learn(self, lane: _Lane, request: ChatRequest, outcome: Outcome, counted: int) -> None:
        loop, metrics = self._bound()
        now = loop.time()
        ep = lane.ep
        kind = outcome.kind
        success = kind is OutcomeKind.OK or kind is OutcomeKind.TRUNCATED
        lane.limiter.observe(outcome, now)
        breaker_changed = ep.breaker.record(kind, now)
        metrics.attempts_by_kind[kind] += 1
        usage = outcome.usage
        if success:
            lane.correction.observe(counted, _reported_prompt_tokens(ep, usage))
        if usage.input_tokens or usage.output_tokens:
            metrics.tokens_in += usage.input_tokens
            metrics.tokens_out += usage.output_tokens
            metrics.cached_tokens_in += usage.cached_input_tokens
            metrics.tokens.add(usage.input_tokens + usage.output_tokens, now)
            if lane.price is None:
                metrics.unpriced_models.add(request.model)
            else:
                metrics.cost_usd += lane.price.cost(
                    usage,
                    batch=self._batch_prices,
                    cached_in_input=ep.endpoint.client.provider is not Provider.ANTHROPIC,
                )
        if not success and not kind.retryable:
            self._report_once(ep, request, outcome)
            if kind in _ENDPOINT_FATAL and ep.fatal is None:
                ep.fatal = outcome
                for other in ep.lanes.values():
                    self._release_waiters(other, None)
        if breaker_changed:
            for other in ep.lanes.values():
                self._pump(other)
        else:
            self._pump(lane)

    def _report_once(self, ep: _EndpointState, request: ChatRequest, outcome: Outcome) -> None:
        """Log the first non-retryable failure of each kind per endpoint, loudly."""
        if outcome.kind in ep.reported:
            return
        ep.reported.add(outcome.kind)
        consequence = (
            "every further call to this endpoint fails at once, unsent"
            if outcome.kind in _ENDPOINT_FATAL
            else "not retried; further ones are counted, not logged"
        )
        logger.error(
            "%s from %s (model %s, HTTP %s, request id %s): %s -- %s",
            outcome.kind.value,
            ep.endpoint.key,
            request.model,
            outcome.status,
            outcome.request_id,
            outcome.error or "no detail",
            consequence,
        )

    def _retry_delay(
        self, outcome: Outcome, attempts: int, now: float, deadline: float
    ) -> float | None:
        """Seconds to wait before retrying, or None to end with `outcome`."""
        if attempts >= self._retry.max_attempts:
            return None
        delay = self._retry.backoff_s(attempts, self._rng)
        if outcome.retry_after_s is not None:
            delay = max(delay, outcome.retry_after_s)  # honoured as given, never capped
        if now + delay >= deadline:
            return None
        if not self._budget.try_spend():
            return None
        return delay

    async def _sleep(self, delay: float) -> None:
        """Back off for `delay` seconds, ending early when shutdown begins."""
        assert self._closing is not None
        if self._closing.is_set():
            return
        try:
            async with asyncio.timeout(delay):
                await self._closing.wait()
        except TimeoutError:
            pass


def _by_kind(counter: Counter[OutcomeKind]) -> dict[str, int]:
    return {kind.value: n for kind, n in counter.items() if n}


def _reported_prompt_tokens(ep: _EndpointState, usage: Usage) -> int:
    """The whole prompt as the provider counted it (Anthropic reports cache reads and
    writes apart from `input_tokens`; OpenAI includes cached tokens in it)."""
    if ep.endpoint.client.provider is Provider.ANTHROPIC:
        return usage.input_tokens + usage.cached_input_tokens + usage.cache_creation_tokens
    return usage.input_tokens


def _not_sent(fatal: Outcome) -> Outcome:
    """The outcome of a call refused because its endpoint was stopped by `fatal`."""
    return Outcome(
        fatal.kind,
        status=None,
        error=f"not sent: endpoint stopped after {fatal.kind.value} ({fatal.error or 'no detail'})",
    )
