"""The library API: `Engine`, for asyncio programs that distil inside their own event loop.

```python
from amr_async import Config, Engine

config = Config(model="gpt-4o-mini", strategy="amr-evol", db="modules", journal="run.db")
async with Engine(config) as engine:                  # key from $OPENAI_API_KEY
    async for result in engine.distill(["Write fizzbuzz.", {"id": "7", "instruction": ...}]):
        print(result.item_id, result.verdict, result.response or result.error)
    one = await engine.distill_one("Reverse a linked list.")
    hits = await engine.modules.search(["def parse_date(text: str) -> date:"], k=5)
```

The engine creates no event loop and installs no signal handlers (unless `handle_signals`).
One engine per loop; any number of tasks may call it at once. What it holds — the teacher
client and its connection pool, the dispatcher (limits, retries), the journal, the module DB,
the sandbox — opens in `__aenter__` and closes in `__aexit__`, which also stops any
`distill` still running.

- `distill(items)` streams results as items finish (not in input order). A consumer that
  stops iterating (`break`, an exception, cancellation) stops the work: no new item or call
  starts, the tasks are cancelled and awaited, and the journal records the run as
  interrupted. With a journal, every paid answer is kept, so running the same items again
  pays only for what was not answered.
- `distill_one(instruction)` runs one item through the strategy and returns its result. For
  amr-evol, each such call is its own DB window (frozen snapshot, then merge of the item's
  verified modules): calls of a windowed strategy run one at a time, and a `distill` holds
  the DB for its whole run.

Errors: `ConfigError` (bad settings), `BudgetExhausted` (a cap is reached),
`TeacherUnavailable` (the teacher refuses every call: bad key, quota, unknown model).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import signal
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Mapping
from functools import partial
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import orjson

from amr_async.config import Config, ConfigError
from amr_async.journal import Budget, Journal, RunJournal
from amr_async.pipeline._input import InputItem, Reject, parse_line
from amr_async.pipeline._teacher import BudgetExhausted, JournaledTeacher, TeacherUnavailable
from amr_async.pipeline.runner import ExitCode, ItemResult, Runner, RunReport, RunSettings
from amr_async.pipeline.strategies.base import ItemFailed, Strategy, Windowed
from amr_async.teacher.types import Provider

if TYPE_CHECKING:
    from amr_async.moduledb import ModuleDB
    from amr_async.scheduler import Dispatcher, MetricsSnapshot, PricingTable

__all__ = [
    "BudgetExhausted",
    "Config",
    "ConfigError",
    "Engine",
    "Item",
    "ItemResult",
    "TeacherUnavailable",
]

Item = str | Mapping[str, Any]
"""An instruction, or a mapping with `instruction` and an optional `id` (an input line)."""


class _State(enum.Enum):
    UNOPENED = "unopened"  # constructed; `async with` not entered yet
    OPEN = "open"  # inside `async with`: usable
    CLOSED = "closed"  # left `async with`: refuses every call, cannot reopen


class Engine:
    """The distillation engine for one event loop; see the module docstring.

    Args:
        config: the settings (`Config`); keys come from the environment only.
        handle_signals: on SIGINT/SIGTERM, stop every running `distill` gracefully (only
            for programs that own their loop; off by default).
    """

    def __init__(self, config: Config, *, handle_signals: bool = False) -> None:
        if config.model is None:
            raise ConfigError("model is not set: Config(model='gpt-4o-mini') or similar")
        if config.strategy == "amr-evol" and config.db is None:
            raise ConfigError("db is not set: amr-evol needs Config(db='modules-dir')")
        self.config = config
        self.handle_signals = handle_signals
        self._state = _State.UNOPENED
        self._stack = contextlib.AsyncExitStack()
        self._dispatcher: Dispatcher | None = None
        self._pricing: PricingTable | None = None
        self._journal: Journal | None = None
        self._session: RunJournal | None = None
        self._teacher: JournaledTeacher | None = None
        self._strategy: Strategy | None = None
        self._db: ModuleDB | None = None
        self._window_lock = asyncio.Lock()
        self._runners: set[Runner] = set()
        self._tasks: set[asyncio.Task[RunReport]] = set()
        self.last_report: RunReport | None = None

    def __repr__(self) -> str:
        c = self.config
        return f"<Engine {c.strategy} {c.provider}:{c.model} {self._state.value}>"

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> Engine:
        if self._state is not _State.UNOPENED:
            raise RuntimeError(f"an Engine opens once; this one is {self._state.value}")
        self._state = _State.OPEN
        try:
            await self._open()
        except BaseException:
            self._state = _State.CLOSED
            await self._stack.aclose()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop running work and close everything (idempotent)."""
        if self._state is _State.CLOSED:
            return
        self._state = _State.CLOSED
        for runner in self._runners:
            runner.request_stop("interrupted", "the engine closed")
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._stack.aclose()

    async def _open(self) -> None:
        from amr_async.moduledb import ModuleDB, make_embedder
        from amr_async.pipeline.cli import _strategy
        from amr_async.scheduler import Dispatcher, Endpoint, PricingTable
        from amr_async.teacher.factory import make_client

        cfg, stack = self.config, self._stack
        provider = Provider(cfg.provider)
        self._pricing = await asyncio.to_thread(PricingTable.load, cfg.pricing)
        client = make_client(provider, base_url=cfg.base_url, config=cfg.client_config())
        stack.push_async_callback(client.aclose)
        self._dispatcher = Dispatcher([Endpoint(client)], pricing=self._pricing)
        stack.push_async_callback(self._dispatcher.aclose, 0.0)
        if cfg.journal is not None:
            self._journal = journal = await asyncio.to_thread(Journal.open, Path(cfg.journal))
            stack.push_async_callback(asyncio.to_thread, journal.close)
            self._session = await self._start_run()
            stack.push_async_callback(self._session.stop, "finished", "engine closed")
        self._teacher = self._journaled(self._session)
        if cfg.db is not None:
            self._db = await ModuleDB.open(Path(cfg.db), make_embedder(cfg.embedder))
            stack.push_async_callback(self._db.aclose)
        run_id = self._session.run_id if self._session is not None else None
        self._strategy = await _strategy(cfg.to_dict(), run_id, stack, db=self._db)
        if self.handle_signals:
            loop = asyncio.get_running_loop()
            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(signum, self._on_signal)
                stack.callback(loop.remove_signal_handler, signum)

    async def _start_run(self) -> RunJournal:
        assert self._journal is not None
        return await asyncio.to_thread(
            partial(
                self._journal.start_run,
                config=self.config.to_dict(resumable_only=True),
                cache=True,  # answers journaled by earlier runs are never bought again
            )
        )

    def _journaled(self, run: RunJournal | None) -> JournaledTeacher:
        assert self._dispatcher is not None
        assert self._pricing is not None
        provider = Provider(self.config.provider)
        return JournaledTeacher(
            self._dispatcher.submit,
            provider=provider,
            run=run,
            budget=Budget(max_usd=self.config.budget_usd, max_tokens=self.config.budget_tokens),
            price=partial(self._pricing.cost, cached_in_input=provider is Provider.OPENAI),
        )

    def _on_signal(self) -> None:
        for runner in self._runners:
            runner.request_stop("interrupted", "signal received")

    def _open_parts(self) -> tuple[Strategy, JournaledTeacher]:
        if self._state is not _State.OPEN or self._strategy is None or self._teacher is None:
            raise RuntimeError(f"the Engine is {self._state.value}: use `async with Engine(...)`")
        return self._strategy, self._teacher

    # ------------------------------------------------------------------ public

    @property
    def modules(self) -> ModuleDB:
        """The functional-module database (`search`, `stats`, `snapshot`, ...).

        Raises:
            RuntimeError: the engine is not open, or no `db` is configured.
        """
        self._open_parts()
        if self._db is None:
            raise RuntimeError("no module database: set Config(db='modules-dir')")
        return self._db

    def metrics(self) -> MetricsSnapshot:
        """The dispatcher's counters: calls, retries, tokens, $, rates against limits."""
        self._open_parts()
        assert self._dispatcher is not None
        return self._dispatcher.metrics()

    async def distill_one(self, instruction: str, *, item_id: str | None = None) -> ItemResult:
        """Distil one instruction; see the module docstring.

        Args:
            instruction: the coding instruction.
            item_id: its id (default: derived from the instruction, as for an input line).

        Returns:
            The result; `result.ok` is False with `result.error` when a stage failed.

        Raises:
            ValueError: the instruction is empty.
            BudgetExhausted: a budget cap is reached.
            TeacherUnavailable: the teacher refuses every call.
        """
        strategy, teacher = self._open_parts()
        obj: dict[str, Any] = {"instruction": instruction}
        if item_id is not None:
            obj["id"] = item_id
        item = _item(obj, 1)
        if isinstance(item, Reject):
            raise ValueError(item.reason)
        windowed = strategy if isinstance(strategy, Windowed) else None
        if windowed is None:
            return await _run_item(strategy, teacher, item)
        async with self._window_lock:
            await windowed.begin_window(0)  # the item is line 1: window 0
            result: ItemResult | None = None
            try:
                result = await _run_item(strategy, teacher, item)
            finally:
                # Always closed (an empty window on failure) so the next one starts clean.
                records = [result.record] if result is not None and result.record else []
                await windowed.end_window(records)
            return result

    async def distill(
        self, items: Iterable[Item] | AsyncIterable[Item]
    ) -> AsyncIterator[ItemResult]:
        """Distil `items`, yielding each result as it finishes; see the module docstring.

        Bad items (no instruction, duplicate id, ...) come back as results with `error` set
        and `item_id` empty; their position in `items` is `line_no` (1-based).

        Raises:
            BudgetExhausted: after the last result, when a budget cap stopped the run.
            TeacherUnavailable: likewise, when the teacher refused every call.
        """
        strategy, _ = self._open_parts()
        run = await self._start_run() if self._journal is not None else None
        teacher = self._journaled(run)
        results: asyncio.Queue[ItemResult] = asyncio.Queue(maxsize=self.config.concurrency)
        runner = Runner(
            strategy=strategy,
            teacher=teacher,
            input_path=None,
            rejects_path=None,
            run=run,
            settings=RunSettings(
                concurrency=self.config.concurrency, max_line_bytes=self.config.max_line_bytes
            ),
            items=_items(items, results),
            on_result=results.put,
        )
        windowed = isinstance(strategy, Windowed)
        async with self._window_lock if windowed else contextlib.nullcontext():
            task = asyncio.create_task(runner.run())
            self._runners.add(runner)
            self._tasks.add(task)
            try:
                async for result in _drain(results, task):
                    yield result
                report = task.result()
            finally:
                self._runners.discard(runner)
                self._tasks.discard(task)
                if not task.done():
                    runner.request_stop("interrupted", "the consumer stopped iterating")
                    task.cancel()
                    await asyncio.gather(task, return_exceptions=True)
                    if run is not None and self._state is _State.OPEN:
                        await run.stop("interrupted", "the consumer stopped iterating")
        self.last_report = report
        if report.exit_code is ExitCode.BUDGET:
            raise BudgetExhausted(report.message)
        if report.exit_code is ExitCode.TEACHER:
            raise TeacherUnavailable(report.message)


async def _drain(
    results: asyncio.Queue[ItemResult], task: asyncio.Task[RunReport]
) -> AsyncIterator[ItemResult]:
    """Results from `results` until `task` has ended and the queue is empty."""
    while True:
        if not results.empty():
            yield results.get_nowait()
            continue
        if task.done():
            return
        getter = asyncio.ensure_future(results.get())
        try:
            await asyncio.wait({getter, task}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not getter.done():
                getter.cancel()
        if getter.done() and not getter.cancelled():
            yield getter.result()


async def _items(
    items: Iterable[Item] | AsyncIterable[Item], results: asyncio.Queue[ItemResult]
) -> AsyncIterator[InputItem]:
    """Validated items; a bad one goes straight to `results` as an error."""
    if isinstance(items, AsyncIterable):
        source: AsyncIterator[Item] = aiter(items)
    else:
        source = _async(items)
    line_no = 0
    async for raw in source:
        line_no += 1
        parsed = _item(raw, line_no)
        if isinstance(parsed, Reject):
            await results.put(ItemResult("", line_no, "", error=parsed.reason))
        else:
            yield parsed


async def _async(items: Iterable[Item]) -> AsyncIterator[Item]:
    for item in items:
        yield item


def _item(raw: Item | object, line_no: int) -> InputItem | Reject:
    """An item validated exactly as an input line is (id rules, empty instructions, ...)."""
    obj = {"instruction": raw} if isinstance(raw, str) else raw
    if not isinstance(obj, Mapping):
        return Reject(line_no, f"expected a string or a mapping, got {type(raw).__name__}")
    try:
        line = orjson.dumps(dict(obj))
    except TypeError as exc:
        return Reject(line_no, f"not JSON-serialisable: {exc}")
    parsed = parse_line(line, line_no)
    return Reject(line_no, "empty item") if parsed is None else parsed


async def _run_item(strategy: Strategy, teacher: JournaledTeacher, item: InputItem) -> ItemResult:
    outputs: dict[str, Any] = {}
    try:
        for stage in strategy.stages:
            outputs[stage.name] = (await stage.run(item, outputs, teacher)).output
    except ItemFailed as exc:
        return ItemResult(item.item_id, item.line_no, item.instruction, error=str(exc))
    record, verdict = strategy.record(item, outputs)
    return ItemResult(item.item_id, item.line_no, item.instruction, record, verdict)
