"""The runner in-process: stage resume, failures, duplicates, journal lookups."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import orjson
import pytest

from amr_async.journal import Journal
from amr_async.pipeline import ExitCode, InputItem, JournaledTeacher, Runner, RunSettings
from amr_async.pipeline.strategies import ItemFailed, Stage, StageResult
from amr_async.pipeline.strategies.base import WindowAbandoned
from amr_async.teacher.types import ChatRequest, Message, Outcome, OutcomeKind, Provider, Usage


class _Teacher:
    """A double at the send seam: answers every request, counts what it was sent."""

    def __init__(self) -> None:
        self.sent: list[str] = []

    async def send(self, request: ChatRequest) -> Outcome:
        text = request.messages[-1].content
        self.sent.append(text)
        return Outcome(OutcomeKind.OK, text=f"re:{text}", usage=Usage(10, 5))


RAN: list[str] = []  # stage:item for every stage run (reset per test)


class _Ask:
    def __init__(self, name: str, fail_first: set[str] | None = None) -> None:
        self.name = name
        self.fail_first = fail_first if fail_first is not None else set()

    async def run(
        self, item: InputItem, outputs: Mapping[str, Any], teacher: JournaledTeacher
    ) -> StageResult:
        RAN.append(f"{self.name}:{item.item_id}")
        if item.item_id in self.fail_first:
            self.fail_first.discard(item.item_id)
            raise ItemFailed(f"{self.name} refused {item.item_id}")
        prior = "|".join(str(outputs[k]) for k in sorted(outputs))
        prompt = f"{self.name}:{item.instruction}:{prior}"
        request = ChatRequest(model="m", messages=(Message("user", prompt),), max_tokens=10)
        outcome = await teacher.call(request, item_id=item.item_id, stage=self.name)
        return StageResult(outcome.text, {"stage": self.name})


class _TwoStages:
    name = "two"

    def __init__(self, fail_second: set[str]) -> None:
        self._stages = (_Ask("first"), _Ask("second", fail_second))

    @property
    def stages(self) -> Sequence[Stage]:
        return self._stages

    def record(self, item: InputItem, outputs: Mapping[str, Any]) -> tuple[dict[str, Any], str]:
        return {"id": item.item_id, "out": outputs["second"]}, "ok"


async def _run(tmp: Path, double: _Teacher, fail_second: set[str], *, resume: bool) -> Any:
    with Journal.open(tmp / "j.db") as journal:
        run = journal.start_run(config={}, output_path=tmp / "out.jsonl", run_id="r", resume=resume)
        teacher = JournaledTeacher(double.send, provider=Provider.OPENAI, run=run)
        runner = Runner(
            strategy=_TwoStages(fail_second),
            teacher=teacher,
            input_path=tmp / "in.jsonl",
            rejects_path=tmp / "rejects.jsonl",
            run=run,
            settings=RunSettings(concurrency=3, batch_lines=2),
        )
        return await runner.run()


def _input(tmp: Path, ids: list[str]) -> None:
    (tmp / "in.jsonl").write_bytes(
        b"".join(orjson.dumps({"id": i, "instruction": f"do {i}"}) + b"\n" for i in ids)
    )


async def test_failed_item_resumes_at_its_failed_stage(tmp_path: Path) -> None:
    RAN.clear()
    _input(tmp_path, ["a", "b", "c"])
    double = _Teacher()
    report = await _run(tmp_path, double, {"b"}, resume=False)
    assert (report.done, report.failed, report.exit_code) == (2, 1, ExitCode.PARTIAL)
    assert sorted(double.sent) == sorted(
        [
            *("first:do a:", "first:do b:", "first:do c:"),
            *("second:do a:re:first:do a:", "second:do c:re:first:do c:"),
        ]
    )
    double.sent.clear()
    RAN.clear()
    report = await _run(tmp_path, double, set(), resume=True)
    assert RAN == ["second:b"]  # the first stage's journaled output was reused
    assert (report.done, report.already_done, report.failed) == (1, 2, 0)
    assert report.exit_code == ExitCode.OK
    # Only b's second stage was asked for: its first stage came from the journal.
    assert double.sent == ["second:do b:re:first:do b:"]
    records = [orjson.loads(x) for x in (tmp_path / "out.jsonl").read_bytes().splitlines()]
    assert sorted(r["id"] for r in records) == ["a", "b", "c"]


async def test_duplicate_ids_are_rejected_and_the_run_goes_on(tmp_path: Path) -> None:
    _input(tmp_path, ["a", "b", "a", "c", "b"])
    report = await _run(tmp_path, _Teacher(), set(), resume=False)
    assert (report.done, report.rejected, report.exit_code) == (3, 2, ExitCode.PARTIAL)
    rejects = [orjson.loads(x) for x in (tmp_path / "rejects.jsonl").read_bytes().splitlines()]
    assert [(r["line"], r["reason"]) for r in rejects] == [
        (3, "field 'id': duplicate of line 1"),
        (5, "field 'id': duplicate of line 2"),
    ]
    # On resume the same lines are the same items, and the same duplicates.
    report = await _run(tmp_path, _Teacher(), set(), resume=True)
    assert (report.done, report.already_done, report.rejected) == (0, 3, 2)


class _Bug(_Ask):
    """A stage with a bug: an unexpected exception (not `ItemFailed`) for one item."""

    async def run(
        self, item: InputItem, outputs: Mapping[str, Any], teacher: JournaledTeacher
    ) -> StageResult:
        if item.item_id == "i3":
            raise SystemError("a bug in a stage")
        return await super().run(item, outputs, teacher)


@pytest.mark.parametrize("windowed", [False, True])
async def test_an_unexpected_error_ends_the_run_instead_of_hanging_it(
    tmp_path: Path, windowed: bool
) -> None:
    # With the work queue full when the bug surfaced, the producer used to wait forever
    # to hand the (cancelled) workers their end markers.
    _input(tmp_path, [f"i{n}" for n in range(40)])
    strategy = _Windows() if windowed else _TwoStages(set())
    strategy._stages = (_Ask("first"), _Bug("second"))
    with Journal.open(tmp_path / "j.db") as journal:
        run = journal.start_run(config={}, output_path=tmp_path / "out.jsonl", run_id="r")
        teacher = JournaledTeacher(_Teacher().send, provider=Provider.OPENAI, run=run)
        runner = Runner(
            strategy=strategy,
            teacher=teacher,
            input_path=tmp_path / "in.jsonl",
            rejects_path=tmp_path / "rejects.jsonl",
            run=run,
            settings=RunSettings(concurrency=2, batch_lines=4),
        )
        task = asyncio.create_task(runner.run())
        done, _ = await asyncio.wait({task}, timeout=30)
        if not done:  # the old hang: cancel it so that the test ends
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        assert done, "the run hung"
        with pytest.raises(ExceptionGroup) as caught:
            task.result()
    assert caught.group_contains(SystemError, match="a bug in a stage")


async def test_no_journal_baseline_writes_plain_output(tmp_path: Path) -> None:
    _input(tmp_path, ["a", "b"])
    double = _Teacher()
    teacher = JournaledTeacher(double.send, provider=Provider.OPENAI, run=None)
    runner = Runner(
        strategy=_TwoStages(set()),
        teacher=teacher,
        input_path=tmp_path / "in.jsonl",
        rejects_path=tmp_path / "rejects.jsonl",
        run=None,
        plain_output=tmp_path / "plain.jsonl",
    )
    report = await runner.run()
    assert report.done == 2
    assert report.totals.calls == 4
    assert len((tmp_path / "plain.jsonl").read_bytes().splitlines()) == 2


class _Windows(_TwoStages):
    """`_TwoStages` in windows of two lines, gated at its second stage.

    At each window's opening it records the items that had started their first stage by
    then, so a test can see how far ahead of the windows the producer let items start.
    """

    snapshot_stage = "second"
    window_size = 2

    def __init__(self) -> None:
        super().__init__(set())
        self.started_at_open: list[set[str]] = []

    async def begin_window(self, index: int) -> None:
        self.started_at_open.append({r.split(":")[1] for r in RAN if r.startswith("first:")})

    async def end_window(self, records: Sequence[Mapping[str, Any]]) -> None:
        pass


async def test_items_start_at_most_the_lookahead_beyond_the_window_being_merged(
    tmp_path: Path,
) -> None:
    RAN.clear()
    ids = [f"i{n}" for n in range(10)]  # windows of two: i0 i1 | i2 i3 | ... | i8 i9
    _input(tmp_path, ids)
    strategy = _Windows()
    with Journal.open(tmp_path / "j.db") as journal:
        run = journal.start_run(config={}, output_path=tmp_path / "out.jsonl", run_id="r")
        teacher = JournaledTeacher(_Teacher().send, provider=Provider.OPENAI, run=run)
        runner = Runner(
            strategy=strategy,
            teacher=teacher,
            input_path=tmp_path / "in.jsonl",
            rejects_path=tmp_path / "rejects.jsonl",
            run=run,
            # Concurrency for every item at once; the lookahead (two lines: one window)
            # is what holds the later windows back.
            settings=RunSettings(concurrency=10, batch_lines=10, lookahead=2),
        )
        report = await runner.run()
    assert (report.done, report.exit_code) == (10, ExitCode.OK)
    assert len(strategy.started_at_open) == 5
    for w, started in enumerate(strategy.started_at_open):
        # When window w opens, window w - 1 is merged; only windows w and w + 1 may
        # have started.
        assert started <= {f"i{n}" for n in range(2 * w + 4)}, (w, sorted(started))
    # By the last window's opening every item had been let in (the run was not serial).
    assert strategy.started_at_open[-1] == set(ids)


class _WideWindows(_Windows):
    window_size = 4


class _Stalling(_Teacher):
    """Holds i0's second-stage call (a window's one long job) until every stage in
    `release_after` has run."""

    def __init__(self, release_after: set[str]) -> None:
        super().__init__()
        self.release_after = release_after
        self.release = asyncio.Event()

    async def send(self, request: ChatRequest) -> Outcome:
        if self.release_after <= set(RAN):
            self.release.set()
        if request.messages[-1].content.startswith("second:do i0:"):
            await self.release.wait()
        return await super().send(request)


async def test_the_reserve_waits_for_the_open_window_and_fills_its_stall(
    tmp_path: Path,
) -> None:
    RAN.clear()
    ids = [f"i{n}" for n in range(12)]  # windows of four: i0-i3 | i4-i7 | i8-i11
    _input(tmp_path, ids)
    later = {f"first:{i}" for i in ids[4:]}
    double = _Stalling(later)
    with Journal.open(tmp_path / "j.db") as journal:
        run = journal.start_run(config={}, output_path=tmp_path / "out.jsonl", run_id="r")
        teacher = JournaledTeacher(double.send, provider=Provider.OPENAI, run=run)
        runner = Runner(
            strategy=_WideWindows(),
            teacher=teacher,
            input_path=tmp_path / "in.jsonl",
            rejects_path=tmp_path / "rejects.jsonl",
            run=run,
            # Concurrency for every item at once; the reserve (four items in progress)
            # is what orders the work.
            settings=RunSettings(concurrency=12, batch_lines=12, reserve=4),
        )
        # The guard only turns a hang into a failure: the reserve not running during
        # the stall would never release it.
        report = await asyncio.wait_for(runner.run(), timeout=60)
    assert (report.done, report.exit_code) == (12, ExitCode.OK)
    # No later item started before window 0's items were past their first stage ...
    first_later = min(RAN.index(x) for x in later)
    assert {f"second:{i}" for i in ids[:4]} <= set(RAN[:first_later])
    # ... and all of them ran their first stage while window 0 waited on i0 alone.
    assert RAN.index("second:i4") > max(RAN.index(x) for x in later)


async def test_without_a_reserve_later_items_start_at_once(tmp_path: Path) -> None:
    RAN.clear()
    ids = [f"i{n}" for n in range(12)]
    _input(tmp_path, ids)
    double = _Stalling(set())
    with Journal.open(tmp_path / "j.db") as journal:
        run = journal.start_run(config={}, output_path=tmp_path / "out.jsonl", run_id="r")
        teacher = JournaledTeacher(double.send, provider=Provider.OPENAI, run=run)
        runner = Runner(
            strategy=_WideWindows(),
            teacher=teacher,
            input_path=tmp_path / "in.jsonl",
            rejects_path=tmp_path / "rejects.jsonl",
            run=run,
            settings=RunSettings(concurrency=12, batch_lines=12, reserve=0),
        )
        report = await runner.run()
    assert (report.done, report.exit_code) == (12, ExitCode.OK)
    # Every item's first stage ran before any second stage: nothing held them back.
    assert {x.split(":")[0] for x in RAN[:12]} == {"first"}


def test_reserve_must_not_be_negative() -> None:
    with pytest.raises(ValueError, match="reserve"):
        RunSettings(reserve=-1)


def test_lookahead_must_be_positive() -> None:
    with pytest.raises(ValueError, match="lookahead"):
        RunSettings(lookahead=0)


class _Speculating(_WideWindows):
    """`_WideWindows` that supports speculation (`Speculative`): an item's bound is known
    once its first stage is done; its gated stage waits for its window's real opening
    unless the window's bound (given to `speculate_window`) is empty."""

    def __init__(self) -> None:
        super().__init__()
        self.events: list[tuple[str, int]] = []
        self.finals: dict[int, asyncio.Future[None]] = {}
        self._stages = (_Ask("first"), _GatedAsk(self))

    def final(self, index: int) -> asyncio.Future[None]:
        return self.finals.setdefault(index, asyncio.get_running_loop().create_future())

    async def begin_window(self, index: int) -> None:
        self.events.append(("begin", index))
        if not self.final(index).done():
            self.final(index).set_result(None)

    async def end_window(self, records: Sequence[Mapping[str, Any]]) -> None:
        self.events.append(("end", len(records)))

    def additions_bound(self, outputs: Mapping[str, Any]) -> Sequence[str] | None:
        return [f"added by {outputs['first']}"] if "first" in outputs else None

    async def speculate_window(self, index: int, additions: Sequence[str]) -> bool:
        self.events.append(("speculate", index))
        self.bounds = list(additions)
        return True

    def abandon_windows(self) -> None:
        self.events.append(("abandon", -1))
        for future in self.finals.values():
            if not future.done():
                future.set_exception(WindowAbandoned())


class _GatedAsk(_Ask):
    """The second stage: when `hold` is set, waits for the window's real opening."""

    def __init__(self, strategy: _Speculating) -> None:
        super().__init__("second")
        self.strategy = strategy
        self.hold = False

    async def run(
        self, item: InputItem, outputs: Mapping[str, Any], teacher: JournaledTeacher
    ) -> StageResult:
        if self.hold:
            await self.strategy.final((item.line_no - 1) // 4)
        return await super().run(item, outputs, teacher)


async def _run_speculating(
    tmp: Path, strategy: _Speculating, double: _Teacher, *, resume: bool = False, **kw: Any
) -> tuple[Runner, Any]:
    with Journal.open(tmp / "j.db") as journal:
        run = journal.start_run(config={}, output_path=tmp / "out.jsonl", run_id="r", resume=resume)
        teacher = JournaledTeacher(double.send, provider=Provider.OPENAI, run=run)
        runner = Runner(
            strategy=strategy,
            teacher=teacher,
            input_path=tmp / "in.jsonl",
            rejects_path=tmp / "rejects.jsonl",
            run=run,
            settings=RunSettings(concurrency=12, batch_lines=12, reserve=0, **kw),
        )
        return runner, await asyncio.wait_for(runner.run(), timeout=60)


async def test_a_window_opens_speculatively_while_the_one_before_stalls(tmp_path: Path) -> None:
    RAN.clear()
    ids = [f"i{n}" for n in range(12)]  # windows of four: i0-i3 | i4-i7 | i8-i11
    _input(tmp_path, ids)
    # i0's gated call is held until window 1's gated stages ran: only speculation gets there.
    double = _Stalling({f"second:{i}" for i in ids[4:8]})
    strategy = _Speculating()
    _, report = await _run_speculating(tmp_path, strategy, double)
    assert (report.done, report.exit_code) == (12, ExitCode.OK)
    events = strategy.events
    # Window 1 opened early, over window 0's bound; merges still came in order, and each
    # window opened for real only after the one before it was merged.
    assert events.index(("speculate", 1)) < events.index(("begin", 1))
    assert [e for e in events if e[0] in ("begin", "end")] == [
        ("begin", 0), ("end", 4), ("begin", 1), ("end", 4), ("begin", 2), ("end", 4),
    ]  # fmt: skip
    # Window 1's gated calls were answered while i0's was held.
    answered = [text.split(":")[1] for text in double.sent if text.startswith("second:")]
    assert answered.index("do i4") < answered.index("do i0")


async def test_no_speculation_when_turned_off(tmp_path: Path) -> None:
    RAN.clear()
    ids = [f"i{n}" for n in range(8)]
    _input(tmp_path, ids)
    strategy = _Speculating()
    _, report = await _run_speculating(tmp_path, strategy, _Teacher(), speculate=False)
    assert (report.done, report.exit_code) == (8, ExitCode.OK)
    assert not [e for e in strategy.events if e[0] == "speculate"]


async def test_a_stop_abandons_items_waiting_for_a_speculative_window(tmp_path: Path) -> None:
    RAN.clear()
    ids = [f"i{n}" for n in range(8)]
    _input(tmp_path, ids)
    double = _Stalling({"never"})  # i0's gated call waits until the test releases it
    strategy = _Speculating()
    strategy._stages[1].hold = True  # type: ignore[attr-defined]
    stopper: asyncio.Task[None] | None = None

    async def stop_when_window_1_waits(runner: Runner) -> None:
        def waiting() -> bool:
            started = sum(x.startswith("first:") for x in RAN)
            return started == 8 and ("speculate", 1) in strategy.events

        while not waiting():  # noqa: ASYNC110 - a test's poll of plain lists
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)  # window 1's items reach their gated stage and wait
        runner.request_stop()
        double.release.set()

    original = Runner.run

    async def run_and_stop(self: Runner) -> Any:
        nonlocal stopper
        stopper = asyncio.create_task(stop_when_window_1_waits(self))
        return await original(self)

    Runner.run = run_and_stop  # type: ignore[method-assign]
    try:
        _, report = await _run_speculating(tmp_path, strategy, double)
    finally:
        Runner.run = original  # type: ignore[method-assign]
    assert stopper is not None
    await stopper
    assert report.exit_code == ExitCode.INTERRUPTED
    assert ("abandon", -1) in strategy.events
    assert not any(x.startswith("second:i") and int(x[8:]) >= 4 for x in RAN)
    # The abandoned items stayed resumable: a resume finishes them.
    RAN.clear()
    _, report = await _run_speculating(tmp_path, _Speculating(), _Teacher(), resume=True)
    assert report.exit_code == ExitCode.OK
    assert report.done + report.already_done == 8
    records = [orjson.loads(x) for x in (tmp_path / "out.jsonl").read_bytes().splitlines()]
    assert sorted(r["id"] for r in records) == ids
