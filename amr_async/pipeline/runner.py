"""The pipeline runner: streams the input through a strategy, resumable at every stage.

Shape: one producer reads the input in batches on a worker thread (parse, validate, look
up each item's journaled state in one query per batch) and feeds a bounded queue; a fixed
pool of `concurrency` worker tasks takes items from it. Memory is bounded by the queue and
the batch size, never by the input: no task, future or record per input row is kept.

Per item the runner skips the stages the journal says are complete, runs the rest, journals
each completed stage, and finally commits the strategy's record, which the journal appends
to the output exactly once (see `amr_async.journal._output` for the order).

A run stops early, leaving everything resumable, when a budget cap is reached
(`BudgetExhausted`), when the teacher refuses every call (`TeacherUnavailable`: bad key,
exhausted quota), when the journal cannot write (disk full), or on `request_stop()`
(SIGINT/SIGTERM in the CLI): no new item or call starts, calls in flight finish and are
journaled, and the run's status and a one-line message are recorded.
"""

from __future__ import annotations

import asyncio
import enum
from collections import Counter, deque
from collections.abc import AsyncIterable, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import orjson

from amr_async.journal import CostTotals, ItemState, JournalError, RunJournal
from amr_async.pipeline._input import DEFAULT_MAX_LINE_BYTES, InputItem, InputReader, Reject
from amr_async.pipeline._teacher import BudgetExhausted, JournaledTeacher, TeacherUnavailable
from amr_async.pipeline.strategies.base import (
    DROPPED,
    ItemFailed,
    Speculative,
    Strategy,
    WindowAbandoned,
    Windowed,
)


class ExitCode(enum.IntEnum):
    """What `amr-async run` exits with."""

    OK = 0  # every item finished
    ERROR = 1  # unexpected error (message on stderr)
    USAGE = 2  # bad command line (argparse)
    PARTIAL = 3  # finished, but some input lines were rejected or items failed
    BUDGET = 4  # a budget cap stopped dispatch; resume with a higher cap
    STORAGE = 5  # the journal or output could not be written (e.g. disk full); resume later
    LOCKED = 6  # another process has the journal open for writing
    TEACHER = 7  # the teacher refuses every call (bad key, exhausted quota); resume once fixed
    INTERRUPTED = 130  # SIGINT/SIGTERM: stopped cleanly, resumable


@dataclass(slots=True, frozen=True)
class RunSettings:
    """How the runner streams.

    Attributes:
        concurrency: items in progress at once (worker tasks).
        batch_lines: input lines read, validated and looked up per batch.
        max_line_bytes: longer input lines are rejected.
        lookahead: windowed strategies only: input lines, beyond the window being
            finished and merged, whose items may start (rounded up to whole windows,
            at least one); None: as many windows as `concurrency` items fill, plus two
            (see `_windows_ahead`).
        reserve: windowed strategies only: the stages before the snapshot stage of items
            whose window is not open yet (the reserve) start only while fewer than this
            many items are in progress counting the open window's unfinished items (not
            those of windows opened speculatively) and the reserve's running ones,
            oldest first; so the reserve fills the open
            window's tail (e.g. one long sandbox job) instead of running all up front.
            None: a quarter of the window size, at least 4 (16 for windows of 64
            measured ~9% less wall time than 0 or 64 on the e2e benchmark, median of
            12 pairs); 0: no priority (the reserve starts at once).
        speculate: strategies that support it (`Speculative`) only: open a window before
            the one before it is merged, once what that one may still add is bounded (see
            `Speculative`); the outputs are the same either way, only the wall time is not.
    """

    concurrency: int = 64
    batch_lines: int = 256
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES
    lookahead: int | None = None
    reserve: int | None = None
    speculate: bool = True

    def __post_init__(self) -> None:
        if self.concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {self.concurrency}")
        if self.lookahead is not None and self.lookahead < 1:
            raise ValueError(f"lookahead must be >= 1, got {self.lookahead}")
        if self.batch_lines < 1:
            raise ValueError(f"batch_lines must be >= 1, got {self.batch_lines}")
        if self.reserve is not None and self.reserve < 0:
            raise ValueError(f"reserve must be >= 0, got {self.reserve}")


@dataclass(slots=True)
class RunReport:
    """How a run (or one attempt of a resumed run) ended."""

    run_id: str | None
    status: str  # finished | partial | budget | stopped | failed | interrupted
    exit_code: ExitCode
    message: str
    done: int = 0  # items finished in this attempt
    already_done: int = 0  # items found finished in the journal (resume)
    failed: int = 0
    rejected: int = 0  # input lines rejected plus records dropped (all in the rejects file)
    dropped: int = 0  # finished items whose record the strategy dropped (verdict DROPPED)
    answered_from_journal: int = 0
    totals: CostTotals = field(default_factory=CostTotals)
    by_stage: dict[str, CostTotals] = field(default_factory=dict)


@dataclass(slots=True, eq=False)
class _Window:
    """One window of input lines (windowed strategies): its items and their progress."""

    index: int
    ids: list[str] = field(default_factory=list)  # in input order, finished ones included
    records: dict[str, dict[str, Any]] = field(default_factory=dict)  # finished here
    finishing: list[asyncio.Future[None]] = field(default_factory=list)  # record commits
    pending: int = 0  # items queued or running
    produced: bool = False  # the producer has moved past it
    opened: asyncio.Event = field(default_factory=asyncio.Event)  # snapshot taken
    complete: asyncio.Event = field(default_factory=asyncio.Event)  # nothing left to run
    # Speculation (see `Speculative`): per item id, what it may still add at the merge
    # (failed items: nothing), once known; `blind` when an item finished in an earlier
    # attempt (its bound is not in memory: no later window speculates past this one).
    bounds: dict[str, Sequence[str]] = field(default_factory=dict)
    blind: bool = False
    speculated: bool = False  # opened speculatively, or tried and refused
    begun: bool = False  # opened for real: every window before it merged

    def set_produced(self) -> None:
        self.produced = True
        self.check()

    def check(self) -> None:
        if self.produced and self.pending == 0:
            self.complete.set()


@dataclass(slots=True, frozen=True)
class ItemResult:
    """How one item ended, for `on_result` listeners (the library API, progress).

    Attributes:
        item_id: the item's id.
        line_no: its position in the input (1-based).
        instruction: the instruction.
        record: the output record when finished, else None.
        verdict: the record's verdict when finished.
        error: why the item failed or was rejected, else None.
    """

    item_id: str
    line_no: int
    instruction: str
    record: dict[str, Any] | None = None
    verdict: str | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        """The item finished with a record (its verdict may still say the tests failed)."""
        return self.record is not None

    @property
    def response(self) -> str | None:
        """The distilled response, when finished."""
        value = None if self.record is None else self.record.get("response")
        return value if isinstance(value, str) else None


OnResult = Callable[[ItemResult], Awaitable[None]]


@dataclass(slots=True)
class _Work:
    item: InputItem
    state: ItemState | None
    window: _Window | None = None


class _Stopped(Exception):
    """The run stopped while the item waited for its window: it stays for the resume."""


# What the item's worker treats as "left at the gate for the resume".
_LEFT_FOR_RESUME = (_Stopped, WindowAbandoned)


def _windows_ahead(settings: RunSettings, window_size: int) -> int:
    """How many windows the producer may open beyond the one being finished and merged.

    Each window's gated stages wait for the merge of the window before, so a run is a
    chain of windows, and what runs beside the chain is the later windows' stages before
    the gate. By default items start as far ahead as the concurrency allows: they do
    that work early, all at once. A `lookahead` of one window instead (its work beside
    each window's chain) measured no better on the e2e benchmark (README, design notes).
    """
    if settings.lookahead is None:
        return max(2, settings.concurrency // window_size + 2)
    lines = min(settings.lookahead, settings.concurrency)
    return max(1, -(-lines // window_size))


def _gate_index(strategy: Strategy) -> int:
    """Index of the first stage that reads the window's snapshot (0 when not declared)."""
    name = getattr(strategy, "snapshot_stage", None)
    names = [stage.name for stage in strategy.stages]
    return names.index(name) if name in names else 0


class Runner:
    """Runs one strategy over one input file. Not reusable: one `run()` per instance.

    Args:
        strategy: the stages and record.
        teacher: the journaled door to the teacher.
        input_path: the input JSONL.
        rejects_path: where rejected lines are reported.
        run: the run's journal (writes the output); None only for benchmarks' baseline,
            which then needs `plain_output`.
        plain_output: output file written directly when there is no journal (no
            exactly-once guarantee: the benchmark baseline only).
        settings: streaming knobs.
        items: items to process instead of reading `input_path` (the library API); their
            line numbers must be 1, 2, 3, ... in order.
        on_result: awaited with each finished or failed item (a slow listener slows the
            workers: that is the backpressure of `Engine.distill`).
    """

    def __init__(
        self,
        *,
        strategy: Strategy,
        teacher: JournaledTeacher,
        input_path: Path | None,
        rejects_path: Path | None,
        run: RunJournal | None,
        plain_output: Path | None = None,
        settings: RunSettings | None = None,
        items: AsyncIterable[InputItem] | None = None,
        on_result: OnResult | None = None,
    ) -> None:
        if run is None and plain_output is None and on_result is None:
            raise ValueError("without a journal the runner needs plain_output or on_result")
        if (input_path is None) == (items is None):
            raise ValueError("give exactly one of input_path and items")
        self.strategy = strategy
        self.teacher = teacher
        self.input_path = input_path
        self.rejects_path = rejects_path
        self.run_journal = run
        self.settings = settings or RunSettings()
        self._plain_output = plain_output
        self._plain: BinaryIO | None = None
        self._stop: str | None = None
        self._stop_message = ""
        self._in_flight: dict[str, int] = {}  # item id -> line, queued or running
        # Finished items whose final commit was not yet known done at the last batch load
        # (the load cannot see them): item id -> (line, commit future).
        self._finishing: dict[str, tuple[int, asyncio.Future[None]]] = {}
        self._report = RunReport(run.run_id if run else None, "running", ExitCode.OK, "")
        # Windowed strategies (see `Windowed`): the producer's current window, and the
        # windows not yet merged, in order, for the closer task (bounded: backpressure).
        self._windowed = strategy if isinstance(strategy, Windowed) else None
        self._gate = _gate_index(strategy) if self._windowed is not None else 0
        self._window: _Window | None = None
        self._open_windows: list[_Window] = []
        self._speculative = (
            strategy if isinstance(strategy, Speculative) and self.settings.speculate else None
        )
        # Set whenever a window may have become ready to open speculatively, or complete.
        self._progress = asyncio.Event()
        self._windows: asyncio.Queue[_Window | None] = asyncio.Queue(
            maxsize=_windows_ahead(self.settings, self._window_size())
        )
        # The reserve (see `RunSettings.reserve`): its items running their pre-snapshot
        # stages, and the ones waiting to, in input order, with their window.
        reserve = self.settings.reserve
        self._reserve_limit = max(4, self._window_size() // 4) if reserve is None else reserve
        self._reserve_running = 0
        self._reserve_waiting: deque[tuple[_Window, asyncio.Future[bool]]] = deque()
        # Dropped records (verdict DROPPED) waiting for the producer's next trip to the
        # rejects file; written by the workers on the loop, swapped out by the producer.
        self._dropped: list[Reject] = []
        self._items = items
        self._on_result = on_result
        self._reader: InputReader | None = None
        # Live counters for progress displays: stages completed in this attempt, by name.
        self.stage_counts: Counter[str] = Counter()

    def request_stop(
        self, reason: str = "interrupted", message: str = "stopped on request"
    ) -> None:
        """Start no new item or call; calls in flight finish. Safe to call repeatedly."""
        if self._stop is None:
            self._stop = reason
            self._stop_message = message
            # Items waiting for their window's snapshot wake up and leave (resumable).
            for window in self._open_windows:
                window.opened.set()
            self._progress.set()
            if self._speculative is not None:
                self._speculative.abandon_windows()
            self._grant_reserve()

    def _window_size(self) -> int:
        return self._windowed.window_size if self._windowed is not None else 1

    @property
    def stopping(self) -> bool:
        return self._stop is not None

    @property
    def report(self) -> RunReport:
        """The live counts (done, failed, ...); final once `run()` returned."""
        return self._report

    @property
    def in_progress(self) -> int:
        """Items queued or running now."""
        return len(self._in_flight)

    @property
    def rejected_so_far(self) -> int:
        """Input lines rejected so far."""
        return self._reader.rejected if self._reader is not None else self._report.rejected

    async def run(self) -> RunReport:
        """Process the whole input (or until stopped) and record how the run ended."""
        if self._items is not None:
            return await self._run_items(self._items)
        assert self.input_path is not None
        assert self.rejects_path is not None
        reader = await asyncio.to_thread(
            InputReader,
            self.input_path,
            self.rejects_path,
            max_line_bytes=self.settings.max_line_bytes,
        )
        self._reader = reader
        if self._plain_output is not None and self.run_journal is None:
            self._plain = self._plain_output.open("wb")

        async def next_batch(rejects: list[Reject]) -> list[InputItem | Reject]:
            return await asyncio.to_thread(_write_then_read, reader, rejects, self.settings)

        async def write_rejects(rejects: list[Reject]) -> None:
            if rejects:
                await asyncio.to_thread(reader.write_rejects, rejects)

        try:
            await self._run_batches(next_batch, write_rejects)
        finally:
            await asyncio.to_thread(reader.close)
            if self._plain is not None:
                self._plain.close()
        self._report.rejected = reader.rejected
        return await self._finish()

    async def _run_items(self, items: AsyncIterable[InputItem]) -> RunReport:
        """`run()` over items given by the caller: one per batch, so none waits for a batch."""
        source = aiter(items)

        async def next_batch(rejects: list[Reject]) -> list[InputItem | Reject]:
            await self._report_rejects(rejects)
            item = await anext(source, None)
            return [] if item is None else [item]

        await self._run_batches(next_batch, self._report_rejects)
        return await self._finish()

    async def _report_rejects(self, rejects: list[Reject]) -> None:
        for r in rejects:
            if r.record is not None:
                continue  # a dropped record: its listener already heard of it when it finished
            self._report.rejected += 1
            if self._on_result is not None:
                await self._on_result(ItemResult("", r.line_no, "", error=r.reason))

    async def _run_batches(
        self,
        next_batch: Callable[[list[Reject]], Awaitable[list[InputItem | Reject]]],
        write_rejects: Callable[[list[Reject]], Awaitable[None]],
    ) -> None:
        """Workers, the window closer and the producer, until the input ends or a stop."""
        concurrency = self.settings.concurrency
        queue: asyncio.Queue[_Work | None] = asyncio.Queue(maxsize=concurrency)
        async with asyncio.TaskGroup() as tg:
            for _ in range(concurrency):
                tg.create_task(self._worker(queue))
            if self._windowed is not None:
                tg.create_task(self._close_windows())
            try:
                await write_rejects(await self._produce(next_batch, queue))
            finally:
                if self._window is not None:
                    self._window.set_produced()
                    self._progress.set()
            # End markers after a normal end only: when a task has failed, the TaskGroup
            # has cancelled the workers and the closer, and a full queue would wait forever.
            if self._windowed is not None:
                await self._windows.put(None)
            for _ in range(concurrency):
                await queue.put(None)
        # Items dropped after the producer's last trip to the reader.
        if dropped := self._take_dropped():
            await write_rejects(dropped)

    # --------------------------------------------------------------- producer

    async def _produce(
        self,
        next_batch: Callable[[list[Reject]], Awaitable[list[InputItem | Reject]]],
        queue: asyncio.Queue[_Work | None],
    ) -> list[Reject]:
        """Feed the workers batch by batch; returns the rejects not yet written."""
        rejects: list[Reject] = []
        run = self.run_journal
        while self._stop is None:
            batch = await next_batch(rejects)
            rejects = []
            if not batch:
                break
            items = [b for b in batch if isinstance(b, InputItem)]
            rejects.extend(b for b in batch if isinstance(b, Reject))
            # Pruned before the load: what is committed by now the load sees; the rest
            # stays here, so a duplicate id is caught either way.
            self._finishing = {k: v for k, v in self._finishing.items() if not v[1].done()}
            states: dict[str, ItemState] = {}
            if run is not None and items:
                states = await run.journal.read(run.load_items, [i.item_id for i in items])
            dropped_ids: list[tuple[int, str, str]] = []
            for item in items:
                if self._stop is not None:
                    break
                state = states.get(item.item_id)
                first = self._in_flight.get(item.item_id)
                if first is None and item.item_id in self._finishing:
                    first = self._finishing[item.item_id][0]
                if first is None and state is not None:
                    first = state.line_no
                if first is not None and first != item.line_no:
                    rejects.append(Reject(item.line_no, f"field 'id': duplicate of line {first}"))
                    continue
                window = await self._enter_window(item) if self._windowed is not None else None
                if state is not None and state.state in ("done", DROPPED):
                    if window is not None:
                        window.blind = True
                    self._report.already_done += 1
                    if state.state == DROPPED:  # the rejects file is rewritten every run
                        dropped_ids.append((item.line_no, item.item_id, state.reason or ""))
                    continue
                self._in_flight[item.item_id] = item.line_no
                if window is not None:
                    window.pending += 1
                await queue.put(_Work(item, state, window))
            if dropped_ids and run is not None:
                kept = await run.journal.read(run.load_records, [i for _, i, _ in dropped_ids])
                self._dropped.extend(
                    Reject(line, reason, kept.get(item_id)) for line, item_id, reason in dropped_ids
                )
            rejects.extend(self._take_dropped())
        return rejects

    # ---------------------------------------------------------------- windows

    async def _enter_window(self, item: InputItem) -> _Window:
        """The item's window: the current one, or a new one handed to the closer."""
        index = (item.line_no - 1) // self._window_size()
        window = self._window
        if window is None or window.index != index:
            if window is not None:
                window.set_produced()
                self._progress.set()
            window = _Window(index)
            self._open_windows.append(window)
            if self._stop is not None:
                window.opened.set()
            self._window = window
            await self._windows.put(window)  # waits while too many windows are unmerged
        window.ids.append(item.item_id)
        return window

    async def _close_windows(self) -> None:
        """Open each window in turn, wait for its items and their commits, then merge.

        Window w+1 opens (its snapshot is taken) only after window w is merged, so
        every item of w+1 that reaches the gate stage reads the DB after windows <= w;
        stages before the gate run ahead while w finishes.
        """
        assert self._windowed is not None
        while (window := await self._windows.get()) is not None:
            if self._stop is None:
                await self._windowed.begin_window(window.index)
            window.begun = True
            window.opened.set()
            self._grant_reserve()  # its items waiting in the reserve now go first
            while not window.complete.is_set():
                self._progress.clear()
                await self._speculate()
                if not window.complete.is_set():
                    await self._progress.wait()
            await asyncio.gather(*window.finishing, return_exceptions=True)
            self._open_windows.remove(window)
            if self._stop is not None:
                continue  # merged on resume instead, with the same records
            records = window.records
            missing = [i for i in window.ids if i not in records]
            run = self.run_journal
            if missing and run is not None:
                records.update(await run.journal.read(run.load_records, missing))
            await self._windowed.end_window([records[i] for i in window.ids if i in records])

    async def _speculate(self) -> None:
        """Open the first unopened window speculatively if every window before it is bounded.

        The windows before it are those not merged yet (the one being finished, and any
        opened speculatively); their items' bounds together are what the merges until its
        real opening may add (see `Speculative`). Tried once per window.
        """
        strategy = self._speculative
        if strategy is None or self._stop is not None:
            return
        additions: list[str] = []
        for window in self._open_windows:
            if not window.opened.is_set():
                if not window.speculated:
                    window.speculated = True
                    if await strategy.speculate_window(window.index, additions):
                        window.opened.set()
                        self._grant_reserve()
                return
            if window.blind or not window.produced or len(window.bounds) < len(window.ids):
                return
            for codes in window.bounds.values():
                additions.extend(codes)

    # ---------------------------------------------------------------- workers

    async def _worker(self, queue: asyncio.Queue[_Work | None]) -> None:
        while (work := await queue.get()) is not None:
            item = work.item
            try:
                if self._stop is None:  # once stopping, queued items stay for the resume
                    await self._process(work)
            except BudgetExhausted as exc:
                self.request_stop("budget", f"budget reached: {exc}")
            except TeacherUnavailable as exc:
                self.request_stop("teacher", str(exc))
            except JournalError as exc:
                self.request_stop("storage", str(exc))
            except _LEFT_FOR_RESUME:
                pass  # left at the gate for the resume
            finally:
                del self._in_flight[item.item_id]
                if work.window is not None:
                    work.window.pending -= 1
                    work.window.check()
                    self._progress.set()
                    self._grant_reserve()

    async def _process(self, work: _Work) -> None:
        item, state = work.item, work.state
        run = self.run_journal
        outputs: dict[str, Any] = dict(state.outputs) if state is not None else {}
        stages = self.strategy.stages
        last: str | None = state.stage if state is not None else None
        gated = work.window is None
        reserved = False  # counted in `_reserve_running`
        self._bound(work, outputs)
        try:
            for index, stage in enumerate(stages):
                if stage.name in outputs:
                    continue  # completed in an earlier attempt
                if not gated and not reserved and index < self._gate:
                    assert work.window is not None
                    reserved = await self._enter_reserve(work.window)
                    if self._stop is not None:
                        raise _Stopped
                if reserved and index >= self._gate:
                    reserved = self._leave_reserve()
                if not gated and index >= self._gate:
                    assert work.window is not None
                    await work.window.opened.wait()
                    if self._stop is not None:
                        raise _Stopped
                    gated = True
                result = await stage.run(item, outputs, self.teacher)
                outputs[stage.name] = result.output
                last = stage.name
                self.stage_counts[stage.name] += 1
                self._bound(work, outputs)
                # The last stage's output travels in the final record instead.
                if run is not None and index < len(stages) - 1:
                    run.record_stage(
                        item.item_id, item.line_no, stage.name, result.output, result.provenance
                    )
        except ItemFailed as exc:
            if work.window is not None:
                work.window.bounds[item.item_id] = ()  # a failed item adds nothing
            self._report.failed += 1
            if run is not None:
                await run.fail_item(item.item_id, item.line_no, str(exc), stage=last)
            if self._on_result is not None:
                await self._on_result(
                    ItemResult(item.item_id, item.line_no, item.instruction, error=str(exc))
                )
            return
        finally:
            if reserved:  # failed or stopped inside the reserve
                self._leave_reserve()
        record, verdict = self.strategy.record(item, outputs)
        if work.window is not None:
            work.window.records[item.item_id] = record
        if verdict == DROPPED:
            reason = f"dropped: {record.get('dropped') or 'by the strategy'}"
            self._dropped.append(Reject(item.line_no, reason, record))
            self._report.dropped += 1
        if run is not None:
            # Not awaited: the answers are durable already; the worker takes the next item
            # while the record commits (checked in `_on_committed` and at the end).
            if verdict == DROPPED:
                committed = run.drop_item(
                    item.item_id, item.line_no, record, reason=reason, stage=last
                )
            else:
                committed = run.finish_item(
                    item.item_id, item.line_no, record, stage=last, verdict=verdict
                )
            committed.add_done_callback(self._on_committed)
            self._finishing[item.item_id] = (item.line_no, committed)
            if work.window is not None:
                work.window.finishing.append(committed)
        elif verdict != DROPPED and self._plain is not None:
            self._plain.write(orjson.dumps(record) + b"\n")  # baseline only: page-cache write
        self._report.done += 1
        if self._on_result is not None:
            await self._on_result(
                ItemResult(item.item_id, item.line_no, item.instruction, record, verdict)
            )

    def _bound(self, work: _Work, outputs: dict[str, Any]) -> None:
        """Note what the item may still add at its window's merge, once the strategy knows
        (asked again after each stage: a later bound is tighter, e.g. accepted modules only)."""
        window = work.window
        if self._speculative is None or window is None:
            return
        bound = self._speculative.additions_bound(outputs)
        if bound is not None:
            new = work.item.item_id not in window.bounds
            window.bounds[work.item.item_id] = bound
            if new:
                self._progress.set()

    # ---------------------------------------------------------------- reserve

    def _reserve_open(self) -> bool:
        """Whether one more reserve item may run its pre-snapshot stages now."""
        busy = self._reserve_running
        for window in self._open_windows:
            # Not a speculative window's items: many of them wait for the real snapshot,
            # and the reserve is there to fill exactly that wait.
            if window.begun:
                busy += window.pending
        return busy < self._reserve_limit

    async def _enter_reserve(self, window: _Window) -> bool:
        """Wait for the item's turn to run its pre-snapshot stages; True: counted.

        Items of an open window (or any item once stopping) go at once, uncounted.
        """
        if window.opened.is_set() or self._reserve_limit == 0:
            return False
        if not self._reserve_waiting and self._reserve_open():
            self._reserve_running += 1
            return True
        turn: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._reserve_waiting.append((window, turn))
        return await turn

    def _leave_reserve(self) -> bool:
        """The item's pre-snapshot stages ended: let the next reserve item go. Returns False."""
        self._reserve_running -= 1
        self._grant_reserve()
        return False

    def _grant_reserve(self) -> None:
        """Wake waiting reserve items: all of a window just opened, else oldest first."""
        waiting = self._reserve_waiting
        # In input order, so the items of open windows (windows open in order) lead.
        while waiting and (self._stop is not None or waiting[0][0].opened.is_set()):
            _, turn = waiting.popleft()
            if not turn.done():
                turn.set_result(False)
        while waiting and self._reserve_open():
            _, turn = waiting.popleft()
            if not turn.done():
                self._reserve_running += 1
                turn.set_result(True)

    def _take_dropped(self) -> list[Reject]:
        taken, self._dropped = self._dropped, []
        return taken

    def _on_committed(self, future: asyncio.Future[None]) -> None:
        if not future.cancelled() and (exc := future.exception()) is not None:
            self.request_stop("storage", str(exc))

    # ------------------------------------------------------------------- end

    async def _finish(self) -> RunReport:
        report = self._report
        run = self.run_journal
        # Every final record committed (or the storage error known) before reporting.
        await asyncio.gather(*(f for _, f in self._finishing.values()), return_exceptions=True)
        self._finishing.clear()
        report.totals = self.teacher.totals
        if run is not None:
            report.answered_from_journal = run.calls_answered_from_journal
        if self._stop == "storage":
            report.status, report.exit_code = "failed", ExitCode.STORAGE
        elif self._stop == "budget":
            report.status, report.exit_code = "budget", ExitCode.BUDGET
        elif self._stop == "teacher":
            report.status, report.exit_code = "stopped", ExitCode.TEACHER
        elif self._stop is not None:
            report.status, report.exit_code = "interrupted", ExitCode.INTERRUPTED
        elif report.failed or report.rejected:
            report.status, report.exit_code = "partial", ExitCode.PARTIAL
        else:
            report.status, report.exit_code = "finished", ExitCode.OK
        report.message = self._one_line(report)
        if run is not None and self._stop != "storage":
            try:
                await run.stop(report.status, report.message)
                report.by_stage = await run.journal.read(run.cost_by_stage)
            except JournalError as exc:
                report.status, report.exit_code = "failed", ExitCode.STORAGE
                report.message = str(exc)
        return report

    def _one_line(self, report: RunReport) -> str:
        t = report.totals
        counts = (
            f"{report.done} done, {report.already_done} already done, {report.failed} failed, "
            f"{report.rejected} rejected; {t.tokens} tokens, ${t.cost_usd:.4f}"
        )
        if self._stop == "budget":
            return f"{self._stop_message}; resume with a higher cap ({counts})"
        if self._stop in ("storage", "teacher"):
            return f"stopped: {self._stop_message}; resume once fixed ({counts})"
        if self._stop is not None:
            return f"interrupted: {self._stop_message}; resume with --resume ({counts})"
        extra = f"; rejects in {self.rejects_path}" if report.rejected else ""
        return f"{report.status}: {counts}{extra}"


def _write_then_read(
    reader: InputReader, rejects: list[Reject], settings: RunSettings
) -> list[InputItem | Reject]:
    """One trip to the reader thread: flush rejects found so far, read the next batch."""
    reader.write_rejects(rejects)
    return reader.read_batch(settings.batch_lines)
