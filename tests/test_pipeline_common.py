"""`Coalescer`: many tasks' items, few batches, each caller its own result."""

from __future__ import annotations

import asyncio
import threading

import pytest

from amr_async.core import extract_functions
from amr_async.pipeline.strategies._common import Coalescer, function_extractor


class GatedWork:
    """Doubles each item; the first batch waits for `release` (so others pile up)."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.release = threading.Event()

    def __call__(self, items: list[int]) -> list[int]:
        self.batches.append(list(items))
        if len(self.batches) == 1:
            assert self.release.wait(10)
        return [2 * i for i in items]


async def _until(predicate: object) -> None:
    for _ in range(1000):
        if callable(predicate) and predicate():
            return
        await asyncio.sleep(0.001)
    raise AssertionError("condition not reached")


async def test_items_asked_while_a_batch_runs_go_in_one_next_batch() -> None:
    work = GatedWork()
    coalescer = Coalescer(work)
    first = asyncio.create_task(coalescer(1))
    await _until(lambda: work.batches)
    rest = [asyncio.create_task(coalescer(i)) for i in range(2, 7)]
    await asyncio.sleep(0.01)  # all five are queued behind the running batch
    work.release.set()
    assert await first == 2
    assert await asyncio.gather(*rest) == [4, 6, 8, 10, 12]
    assert work.batches == [[1], [2, 3, 4, 5, 6]]
    assert coalescer.batches == 2


async def test_many_keeps_order_in_one_batch_and_a_lone_call_is_not_delayed() -> None:
    work = GatedWork()
    work.release.set()
    coalescer = Coalescer(work)
    assert await coalescer.many([3, 1, 2]) == [6, 2, 4]
    assert await coalescer.many([]) == []
    assert await coalescer(5) == 10
    assert work.batches == [[3, 1, 2], [5]]


async def test_a_cancelled_caller_is_dropped_and_the_others_still_get_theirs() -> None:
    work = GatedWork()
    coalescer = Coalescer(work)
    first = asyncio.create_task(coalescer(1))
    await _until(lambda: work.batches)
    doomed = asyncio.create_task(coalescer(2))
    kept = asyncio.create_task(coalescer(3))
    await asyncio.sleep(0.01)
    doomed.cancel()
    work.release.set()
    assert (await first, await kept) == (2, 6)
    with pytest.raises(asyncio.CancelledError):
        await doomed
    assert work.batches == [[1], [3]]  # the cancelled item was not even computed


async def test_an_exception_fails_its_batch_only() -> None:
    calls = 0

    def flaky(items: list[int]) -> list[int]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("boom")
        return items

    coalescer = Coalescer(flaky)
    with pytest.raises(RuntimeError, match="boom"):
        await coalescer(1)
    assert await coalescer(2) == 2


async def test_function_extractor_matches_the_extractor_alone() -> None:
    answers = [
        "```python\ndef f(x):\n    return g(x)\n\ndef g(y):\n    return y\n```",
        "class A:\n    def m(self):\n        return 1\n\ndef top():\n    pass\n",
        "no code at all",
    ]
    extractor = function_extractor()
    got = await asyncio.gather(*(extractor(a) for a in answers))
    for answer, records in zip(answers, got, strict=True):
        alone = [r for r in extract_functions(answer) if not r.is_method]
        assert [(r.name, r.source) for r in records] == [(r.name, r.source) for r in alone]
    assert [len(r) for r in got] == [2, 1, 0]
