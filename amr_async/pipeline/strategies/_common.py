"""What several strategies share: one teacher call per stage, code extraction, test parsing.

Every stage's answer is parsed with the Rust extractor (`amr_async.core.extract_functions`);
parsing runs in a worker thread so the event loop never waits on it. `Coalescer` batches
such calls from many items into one thread hop and one call into the core.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar

from amr_async.core import FunctionRecord, extract_functions, extract_functions_batch
from amr_async.pipeline._input import InputItem
from amr_async.pipeline._prompts import PromptTemplate
from amr_async.pipeline._teacher import JournaledTeacher
from amr_async.pipeline.strategies.base import ItemFailed
from amr_async.sandbox import AssertTest, Job, JobResult, Limits, Sandbox, asserts_of
from amr_async.teacher.types import Outcome

_FENCE = re.compile(r"```[ \t]*(?:python|py|python3)?[ \t]*\n(.*?)```", re.DOTALL | re.IGNORECASE)


async def ask(
    teacher: JournaledTeacher,
    template: PromptTemplate,
    item: InputItem,
    stage: str,
    *,
    model: str,
    max_tokens: int,
    temperature: float,
    **values: str,
) -> tuple[Outcome, dict[str, Any]]:
    """One teacher call for `stage`; returns the outcome and its usage (tokens and $).

    Raises:
        ItemFailed: the call did not end in an answer.
    """
    request = template.request(
        model=model, max_tokens=max_tokens, temperature=temperature, **values
    )
    outcome = await teacher.call(request, item_id=item.item_id, stage=stage)
    if not outcome.kind.is_success:
        raise ItemFailed(f"{stage}: teacher call ended {outcome.kind}: {outcome.error}")
    usage = outcome.usage
    return outcome, {
        "calls": 1,
        "input_tokens": usage.input_tokens,
        "output_tokens": usage.output_tokens,
        "cost_usd": teacher.price_of(model, usage),
    }


def add_usage(total: dict[str, Any], more: dict[str, Any]) -> dict[str, Any]:
    """`total` + `more`, field by field (a new dict)."""
    out = dict(total)
    for key, value in more.items():
        out[key] = out.get(key, 0) + value
    return out


_T = TypeVar("_T")
_R = TypeVar("_R")


class Coalescer(Generic[_T, _R]):
    """Runs `work` off the loop over the items many tasks ask for, one batch at a time.

    Why: every call into the Rust core's parser hands its work to a parser thread and
    waits (~30 us of CPU for a small answer; it was ~0.2 ms while each call started a
    512 MiB-stack thread), and every `to_thread` costs a hop each way; a batch pays both
    once (an answer in a batch costs ~20 us to extract). The first item starts a batch at once;
    items asked for while it runs go in the next one, so a lone caller waits no longer
    than before and a busy pipeline batches by itself (like a group commit).

    Callback-driven (an executor future and its done-callback): no task of its own. A
    cancelled caller's result is dropped. Shared by the tasks of one event loop.

    Args:
        work: one result per item, in order; must not raise for one bad item (an
            exception fails the whole batch).
    """

    __slots__ = ("_queue", "_running", "_work", "batches")

    def __init__(self, work: Callable[[list[_T]], Sequence[_R]]) -> None:
        self._work = work
        self._queue: list[tuple[_T, asyncio.Future[_R]]] = []
        self._running = False
        self.batches = 0  # batches run so far (tests, profiling)

    async def __call__(self, item: _T) -> _R:
        """`work([item, ...])`'s result for `item`."""
        return (await self.many([item]))[0]

    async def many(self, items: Sequence[_T]) -> list[_R]:
        """The results for `items`, in order (all in the same batch)."""
        if not items:
            return []
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[_R]] = []
        for item in items:
            future: asyncio.Future[_R] = loop.create_future()
            futures.append(future)
            self._queue.append((item, future))
        if not self._running:
            self._start(loop)
        return [await future for future in futures]

    def _start(self, loop: asyncio.AbstractEventLoop) -> None:
        batch = [(item, f) for item, f in self._queue if not f.done()]
        self._queue = []
        self._running = bool(batch)
        if not batch:
            return
        self.batches += 1
        job = loop.run_in_executor(None, self._work, [item for item, _ in batch])
        job.add_done_callback(lambda done: self._settle(loop, batch, done))

    def _settle(
        self,
        loop: asyncio.AbstractEventLoop,
        batch: list[tuple[_T, asyncio.Future[_R]]],
        job: asyncio.Future[Sequence[_R]],
    ) -> None:
        exc = asyncio.CancelledError() if job.cancelled() else job.exception()
        if exc is not None:
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
        else:
            for (_, future), result in zip(batch, job.result(), strict=True):
                if not future.done():
                    future.set_result(result)
        self._start(loop)


def _top_level_functions(texts: list[str]) -> list[list[FunctionRecord]]:
    """The top-level functions of each answer (one parser-thread hand-off for the batch)."""
    found = extract_functions_batch(texts, threads=1)
    return [[r for r in records if not r.is_method] for records in found]


def function_extractor() -> Coalescer[str, list[FunctionRecord]]:
    """`functions_of` for many concurrent items: batches their texts (see `Coalescer`)."""
    return Coalescer(_top_level_functions)


async def functions_of(text: str) -> list[FunctionRecord]:
    """The top-level functions in an answer (methods left out), via the Rust extractor.

    Functions from a block with a syntax error elsewhere are kept: their own text parses.
    """
    records = await asyncio.to_thread(extract_functions, text)
    return [r for r in records if not r.is_method]


def module_code(record: FunctionRecord, others: Sequence[FunctionRecord]) -> str:
    """`record`'s source with its imports and the helpers it calls from the same answer.

    The function comes first (the DB describes a module by its first function).
    """
    by_name = {r.name: r for r in others}
    seen = {record.name}
    helpers: list[FunctionRecord] = []
    todo = list(record.helpers)
    while todo:
        name = todo.pop(0)
        helper = by_name.get(name)
        if helper is None or name in seen:
            continue
        seen.add(name)
        helpers.append(helper)
        todo.extend(helper.helpers)
    imports = list(dict.fromkeys([*record.imports, *(i for h in helpers for i in h.imports)]))
    parts = [record.source.rstrip(), *(h.source.rstrip() for h in helpers)]
    head = "\n".join(imports) + "\n\n" if imports else ""
    return head + "\n\n\n".join(parts) + "\n"


def answer_code(text: str) -> str:
    """All fenced Python blocks of an answer joined (the whole text when it has none)."""
    blocks = _FENCE.findall(text)
    return "\n\n".join(b.strip("\n") for b in blocks) + "\n" if blocks else text


def stub_text(record: FunctionRecord) -> str:
    """A stub: the signature and docstring, body `...` (what retrieval embeds)."""
    signature = record.signature.rstrip()
    if not signature.startswith(("def ", "async def ")):
        signature = f"def {signature}"
    if not signature.endswith(":"):
        signature += ":"
    doc = (record.docstring or "").strip()
    body = f'    """{doc}"""\n    ...' if doc else "    ..."
    return f"{signature}\n{body}\n"


def parse_tests(text: str) -> list[AssertTest]:
    """The top-level `assert` statements of a tests answer (its fenced blocks, or the text),
    each planned for the sandbox from this one parse (`amr_async.sandbox.asserts_of`).

    Statements that do not parse are dropped one block at a time (a block that does not
    parse gives no tests).
    """
    return _tests_in(text, planned=True)


def parse_asserts(text: str) -> list[str]:
    """The source of each test `parse_tests` finds (not planned: for callers that keep text)."""
    return [t.source for t in _tests_in(text, planned=False)]


def _tests_in(text: str, *, planned: bool) -> list[AssertTest]:
    out: list[AssertTest] = []
    for block in _FENCE.findall(text) or [text]:
        try:
            out.extend(asserts_of(block, planned=planned))
        except SyntaxError:
            continue
    return out


async def run_tests(
    sandbox: Sandbox,
    code: str,
    asserts: Sequence[str | AssertTest],
    *,
    timeout_s: float | None = None,
    fail_fast: bool = False,
) -> JobResult:
    """Run assert-style tests against `code` in the sandbox.

    Args:
        sandbox: where they run.
        code: the module under test.
        asserts: one `assert` statement per test (its text, or a test from `parse_tests`).
        timeout_s: per-test limit (CPU-time based; the sandbox default when None).
        fail_fast: stop at the first test that does not pass (the rest are skipped).
    """
    limits = Limits() if timeout_s is None else Limits(test_timeout_s=timeout_s)
    tests = [a if isinstance(a, AssertTest) else AssertTest(a) for a in asserts]
    job = Job(code=code, tests=tests, limits=limits, fail_fast=fail_fast)
    return await sandbox.run(job)


def verdict_summary(result: JobResult) -> dict[str, Any]:
    """A JSON-ready summary of a sandbox result."""
    failed = [
        {"index": t.index, "status": str(t.status), "message": t.message[:300]}
        for t in result.tests
        if str(t.status) != "passed"
    ]
    return {
        "passed": result.passed,
        "tests": len(result.tests),
        "failed": failed,
        "module_error": result.module_error,
    }
