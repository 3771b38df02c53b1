"""AMR-Evol and the baselines end to end against the scripted teacher (a test double).

The scripted teacher answers at the send seam (no HTTP), so these tests are about the
pipeline's behaviour: stages, fallbacks, windows, DB growth, reproducibility, resume. No
quality is measured here: the emulator's answers come from a bank, not from a model.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from amr_async.config import Config
from amr_async.emulator import Bank
from amr_async.emulator.scripted import ScriptedTeacher
from amr_async.journal import Journal
from amr_async.moduledb import HashEmbedder, Module, ModuleDB, SearchHit
from amr_async.pipeline import JournaledTeacher, Runner, RunSettings
from amr_async.pipeline._input import InputItem
from amr_async.pipeline._prompts import PromptError, load_templates
from amr_async.pipeline.cli import _strategy
from amr_async.pipeline.strategies._search import unchanged_by
from amr_async.pipeline.strategies.amr_evol import (
    AmrEvolConfig,
    AmrEvolStrategy,
    SpeculationStats,
)
from amr_async.pipeline.strategies.baselines import AnsRepairStrategy, CallSettings, CotStrategy
from amr_async.sandbox import Sandbox
from amr_async.teacher.types import ChatRequest, Outcome, OutcomeKind, Provider, Usage


class _Scripted:
    """The emulator's scripted teacher at the send seam; counts calls per prompt kind."""

    def __init__(self, bank: Bank, *, bug_rate: float = 0.0, no_code_evolve: bool = False):
        self.teacher = ScriptedTeacher(bank, seed=7, bug_rate=bug_rate)
        self.calls = 0
        self.no_code_evolve = no_code_evolve

    async def send(self, request: ChatRequest) -> Outcome:
        self.calls += 1
        question = request.messages[-1].content
        text = "\n".join([request.system or "", *(m.content for m in request.messages)])
        if self.no_code_evolve and "### TASK: evolve" in text:
            answer = "I would rather not write code for this."
        else:
            answer = self.teacher.answer(text, question)
        return Outcome(
            OutcomeKind.OK,
            text=answer,
            usage=Usage(len(text) // 4, len(answer) // 4),
            finish_reason="stop",
        )


@pytest.fixture(scope="module")
def bank() -> Bank:
    return Bank.load()


@pytest.fixture
async def sandbox() -> AsyncIterator[Sandbox]:
    async with Sandbox(parallelism=2, isolation="none") as box:
        yield box


def _instruction(task: Any) -> str:
    """A question that names its function, as real instructions do."""
    return f"Write a Python function `{task.entry_point}(...)`. {task.instruction}"


def _write_input(path: Path, bank: Bank, n: int, *, offset: int = 0) -> None:
    tasks = bank.tasks[offset : offset + n]
    path.write_bytes(
        b"".join(
            orjson.dumps({"id": f"t{i:03d}", "instruction": _instruction(t)}) + b"\n"
            for i, t in enumerate(tasks)
        )
    )


async def _run_amr(
    tmp: Path,
    bank: Bank,
    sandbox: Sandbox,
    *,
    concurrency: int,
    window: int,
    seed: list[Module] | None = None,
    double: _Scripted | None = None,
    config: dict[str, Any] | None = None,
    resume: bool = False,
    stop_after: int | None = None,
    speculate: bool = True,
    stats: list[SpeculationStats] | None = None,
) -> tuple[Any, list[dict[str, Any]], list[tuple[str, str | None]], _Scripted]:
    double = double or _Scripted(bank)
    db = await ModuleDB.open(tmp / "db", HashEmbedder(256))
    try:
        if seed and len(db) == 0:
            await db.add_many(seed)
        with Journal.open(tmp / "j.db") as journal:
            run = journal.start_run(
                config={}, output_path=tmp / "out.jsonl", run_id="r", resume=resume
            )
            teacher = JournaledTeacher(double.send, provider=Provider.OPENAI, run=run)
            strategy = AmrEvolStrategy(
                AmrEvolConfig(model="m", window_size=window, **(config or {})),
                templates=load_templates(),
                db=db,
                sandbox=sandbox,
                run_id="r",
            )
            runner = Runner(
                strategy=strategy,
                teacher=teacher,
                input_path=tmp / "in.jsonl",
                rejects_path=tmp / "rejects.jsonl",
                run=run,
                settings=RunSettings(concurrency=concurrency, batch_lines=8, speculate=speculate),
            )
            if stats is not None:
                stats.append(strategy.speculation)
            if stop_after is not None:
                # Stop (as SIGTERM does) once this many calls were sent: mid-run, mid-window.
                inner = double.send

                async def send(request: ChatRequest) -> Outcome:
                    if double.calls >= stop_after:
                        runner.request_stop()
                    return await inner(request)

                teacher._send = send
            report = await runner.run()
        rows = await _db_rows(db)
    finally:
        await db.aclose()
    out = tmp / "out.jsonl"
    records = [orjson.loads(x) for x in out.read_bytes().splitlines()] if out.exists() else []
    return report, records, rows, double


async def _db_rows(db: ModuleDB) -> list[tuple[str, str | None]]:
    hits = await db.snapshot().search(["def"], k=10_000, min_similarity=-2.0)
    rows = sorted((h.module.id, h.module.code, h.module.item_id) for h in hits[0]) if hits else []
    return [(code, item) for _, code, item in rows]


def _by_id(records: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {r["id"]: r for r in records}


async def test_amr_evol_end_to_end_grows_the_db_only_with_verified_modules(
    tmp_path: Path, bank: Bank, sandbox: Sandbox
) -> None:
    _write_input(tmp_path / "in.jsonl", bank, 12)
    double = _Scripted(bank, bug_rate=0.3)
    report, records, rows, _ = await _run_amr(
        tmp_path, bank, sandbox, concurrency=4, window=4, double=double,
        config={"final_check": True, "keep_raw": True},
    )  # fmt: skip
    assert report.done == 12
    assert report.failed == 0
    assert len(records) == 12
    verified = [m for r in records for m in r["modules_verified"]]
    assert verified, "some functions must pass their tests"
    # Every DB module is one that passed its tests in the sandbox, with its tests stored.
    verified_codes = {m["code"] for m in verified}
    assert rows
    assert all(code in verified_codes for code, _ in rows)
    # Failing candidates exist (bugs were injected) and never enter the DB.
    failed = [c for r in records for c in r["candidates"] if c.get("passed") is False]
    assert failed
    for r in records:
        assert r["strategy"] == "amr-evol"
        assert r["provenance"]["decompose"] == "ok"
        assert r["provenance"]["retrieve_by"] == "stubs"
        assert r["stubs"]
        assert "```" in r["raw"]["evolve"]
        assert set(r["usage"]) >= {"direct", "decompose", "evolve"}
        assert r["usage"]["direct"]["calls"] == 1
        assert "final_check" in r
    # Later windows retrieved modules that earlier windows added.
    assert any(r["modules_retrieved"] for r in records[4:])
    assert report.totals.calls == double.calls


async def test_fallback_no_code_in_evolution_keeps_the_direct_answer(
    tmp_path: Path, bank: Bank, sandbox: Sandbox
) -> None:
    _write_input(tmp_path / "in.jsonl", bank, 3)
    double = _Scripted(bank, no_code_evolve=True)
    report, records, _, _ = await _run_amr(
        tmp_path, bank, sandbox, concurrency=2, window=2, double=double
    )
    assert report.done == 3
    for r in records:
        assert r["provenance"]["evolve"] == "no_code_kept_direct"
        assert r["response"].startswith("Here is a Python solution.")


async def test_fallback_no_stubs_retrieves_by_the_direct_answer(
    tmp_path: Path, bank: Bank, sandbox: Sandbox
) -> None:
    # Instructions the bank does not know: the decomposition is still a stub, so break the
    # stub template instead: a user template directory whose decompose prompt asks for prose.
    prompts = tmp_path / "prompts"
    prompts.mkdir()
    (prompts / "decompose.toml").write_text(
        'system = "s"\nuser = "### TASK: instruction\\n$instruction\\n$direct_answer"\n'
    )
    _write_input(tmp_path / "in.jsonl", bank, 2)
    seed = [Module(code=bank.tasks[50].solution, verdict="pass")]
    double = _Scripted(bank)
    db = await ModuleDB.open(tmp_path / "db", HashEmbedder(256))
    await db.add_many(seed)
    await db.aclose()
    with Journal.open(tmp_path / "j.db") as journal:
        run = journal.start_run(config={}, output_path=tmp_path / "out.jsonl", run_id="r")
        async with _open(tmp_path) as db2:
            strategy = AmrEvolStrategy(
                AmrEvolConfig(model="m", window_size=8),
                templates=load_templates(prompts),
                db=db2,
                sandbox=sandbox,
            )
            runner = Runner(
                strategy=strategy,
                teacher=JournaledTeacher(double.send, provider=Provider.OPENAI, run=run),
                input_path=tmp_path / "in.jsonl",
                rejects_path=tmp_path / "rejects.jsonl",
                run=run,
            )
            report = await runner.run()
    assert report.done == 2
    records = [orjson.loads(x) for x in (tmp_path / "out.jsonl").read_bytes().splitlines()]
    for r in records:
        assert r["provenance"]["decompose"] == "no_stubs"
        assert r["provenance"]["retrieve_by"] == "direct_answer"
        assert len(r["modules_retrieved"]) == 1  # k=1 for the one query


class _open:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.db: ModuleDB | None = None

    async def __aenter__(self) -> ModuleDB:
        self.db = await ModuleDB.open(self.tmp / "db", HashEmbedder(256))
        return self.db

    async def __aexit__(self, *exc: object) -> None:
        assert self.db is not None
        await self.db.aclose()


@pytest.mark.parametrize("window", [1, 5])
async def test_same_input_same_db_and_outputs_at_concurrency_1_and_500(
    tmp_path: Path, bank: Bank, sandbox: Sandbox, window: int
) -> None:
    results = []
    for concurrency in (1, 500):
        tmp = tmp_path / f"c{concurrency}"
        tmp.mkdir()
        _write_input(tmp / "in.jsonl", bank, 10, offset=20)
        _, records, rows, _ = await _run_amr(
            tmp, bank, sandbox, concurrency=concurrency, window=window,
            seed=[Module(code=bank.tasks[3].solution, verdict="pass")],
            double=_Scripted(bank, bug_rate=0.2),
        )  # fmt: skip
        results.append((_by_id(records), rows))
    (out1, db1), (out500, db500) = results
    assert len(out1) == 10
    assert out1 == out500
    assert len(db1) > 1
    assert db1 == db500


class _HoldsFirstTests(_Scripted):
    """Holds the first tests call for a while: its window waits for it (as for a sandbox
    job running to its CPU limit), so the windows after it open speculatively."""

    def __init__(self, bank: Bank, **kw: Any) -> None:
        super().__init__(bank, **kw)
        self.held = False

    async def send(self, request: ChatRequest) -> Outcome:
        if not self.held and "### TASK: tests" in (request.system or "") + str(request.messages):
            self.held = True
            await asyncio.sleep(0.5)
        return await super().send(request)


async def test_speculative_windows_give_the_same_outputs_and_db(
    tmp_path: Path, bank: Bank, sandbox: Sandbox
) -> None:
    # Line 9 asks line 1's question again: its functions duplicate line 1's, which enter
    # the DB at window 0's merge, so its novelty check must wait for that merge.
    tasks = [*bank.tasks[60:68], bank.tasks[60], *bank.tasks[68:75]]
    results = []
    for speculate, concurrency in ((False, 1), (True, 16)):
        tmp = tmp_path / f"{speculate}"
        tmp.mkdir()
        (tmp / "in.jsonl").write_bytes(
            b"".join(
                orjson.dumps({"id": f"t{i:02d}", "instruction": _instruction(t)}) + b"\n"
                for i, t in enumerate(tasks)
            )
        )
        stats: list[SpeculationStats] = []
        _, records, rows, _ = await _run_amr(
            tmp, bank, sandbox, concurrency=concurrency, window=4, speculate=speculate,
            seed=[Module(code=bank.tasks[3].solution, verdict="pass")],
            double=_HoldsFirstTests(bank, bug_rate=0.2), stats=stats,
        )  # fmt: skip
        results.append((_by_id(records), rows, stats[0]))
    (plain, plain_db, off), (ahead, ahead_db, on) = results
    assert off.windows == 0
    assert on.windows >= 1
    assert on.proven + on.waited >= 1
    assert len(plain) == len(tasks)
    assert plain == ahead
    assert plain_db == ahead_db
    again = plain["t08"]["candidates"]
    assert again
    assert all(c["novel"] is False for c in again)


_ADD_UP = "def add_up(xs):\n    return sum(xs)\n"


async def _ahead_of_window_0(db: ModuleDB, sandbox: Sandbox) -> AmrEvolStrategy:
    """Windows of one line; window 1 opened speculatively while window 0 may add `_ADD_UP`."""
    strategy = AmrEvolStrategy(
        AmrEvolConfig(model="m", window_size=1),
        templates=load_templates(),
        db=db,
        sandbox=sandbox,
    )
    await strategy.begin_window(0)
    assert await strategy.speculate_window(1, [_ADD_UP])
    return strategy


def _extract_add_up(strategy: AmrEvolStrategy) -> asyncio.Task[Any]:
    """The `extract` stage of window 1's item, whose evolved answer is `_ADD_UP`."""
    extract = strategy.stages[4]
    assert extract.name == "extract"
    outputs = {"evolve": {"response": f"```python\n{_ADD_UP}```"}}
    return asyncio.create_task(
        extract.run(InputItem("b", 2, "again"), outputs, None)  # type: ignore[arg-type]
    )


async def _merge_add_up_and_open_window_1(strategy: AmrEvolStrategy) -> None:
    module = {"name": "f", "code": _ADD_UP, "tests": "assert True"}
    await strategy.end_window([{"id": "a", "modules_verified": [module]}])
    await strategy.begin_window(1)


_ADD_UP_KNOWN = [{"name": "add_up", "code": _ADD_UP, "known": "duplicate_ast:0"}]


async def test_a_speculative_novelty_check_that_waits_sees_the_merge_it_waited_for(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    async with _open(tmp_path) as db:
        strategy = await _ahead_of_window_0(db, sandbox)
        running = _extract_add_up(strategy)
        # It cannot prove `_ADD_UP` new (window 0 may add it), so it waits ...
        while strategy.speculation.waited == 0:  # noqa: ASYNC110 - a test's poll
            await asyncio.sleep(0.01)
        assert not running.done()
        # ... and window 0 adds it.
        await _merge_add_up_and_open_window_1(strategy)
        result = await asyncio.wait_for(running, timeout=30)
    assert result.output["functions"] == _ADD_UP_KNOWN


async def test_stop_and_resume_mid_run_gives_the_same_outputs_and_db(
    tmp_path: Path, bank: Bank, sandbox: Sandbox
) -> None:
    whole = tmp_path / "whole"
    whole.mkdir()
    _write_input(whole / "in.jsonl", bank, 12, offset=40)
    _, expected, expected_db, _ = await _run_amr(
        whole, bank, sandbox, concurrency=8, window=4, double=_Scripted(bank, bug_rate=0.2)
    )
    part = tmp_path / "part"
    part.mkdir()
    _write_input(part / "in.jsonl", bank, 12, offset=40)
    report, _, _, _ = await _run_amr(
        part, bank, sandbox, concurrency=8, window=4,
        double=_Scripted(bank, bug_rate=0.2), stop_after=25,
    )  # fmt: skip
    assert report.status == "interrupted"
    assert report.done < 12
    report, records, rows, _ = await _run_amr(
        part, bank, sandbox, concurrency=3, window=4,
        double=_Scripted(bank, bug_rate=0.2), resume=True,
    )  # fmt: skip
    assert report.exit_code == 0
    assert _by_id(records) == _by_id(expected)
    assert rows == expected_db


async def test_window_merges_in_input_order_not_id_order(
    tmp_path: Path, bank: Bank, sandbox: Sandbox
) -> None:
    # Two lines ask the same question: both verify the same new functions inside one
    # window, and only one copy may enter the DB: the earlier input line's, although its
    # id sorts last.
    task = bank.tasks[30]
    lines = [("z-first", task), ("a-second", task), ("m-third", bank.tasks[31])]
    (tmp_path / "in.jsonl").write_bytes(
        b"".join(orjson.dumps({"id": i, "instruction": _instruction(t)}) + b"\n" for i, t in lines)
    )
    _, records, rows, _ = await _run_amr(tmp_path, bank, sandbox, concurrency=3, window=3)
    first, second = _by_id(records)["z-first"], _by_id(records)["a-second"]
    assert first["modules_verified"]
    assert first["modules_verified"] == second["modules_verified"]
    owners = {code: item for code, item in rows}
    for module in first["modules_verified"]:
        assert owners[module["code"]] == "z-first"
    assert "a-second" not in owners.values()
    assert "m-third" in owners.values()


async def test_drop_failed_keeps_failing_records_out_of_the_output_and_in_the_rejects(
    tmp_path: Path, bank: Bank, sandbox: Sandbox
) -> None:
    _write_input(tmp_path / "in.jsonl", bank, 12, offset=70)
    config = {"final_check": True, "drop_failed": True}
    report, records, _, _ = await _run_amr(
        tmp_path, bank, sandbox, concurrency=4, window=4,
        double=_Scripted(bank, bug_rate=0.4), config=config,
    )  # fmt: skip
    rejects = [orjson.loads(x) for x in (tmp_path / "rejects.jsonl").read_bytes().splitlines()]
    assert report.dropped == len(rejects) > 0
    assert report.exit_code == 3  # partial: the output lacks lines
    assert report.done == 12
    assert len(records) + len(rejects) == 12
    assert all(r["final_check"]["passed"] is not False for r in records)
    kept_ids = {r["id"] for r in records}
    for reject in rejects:
        assert reject["reason"].startswith("dropped: final check failed:")
        dropped = reject["record"]
        assert dropped["verdict"] == "dropped"
        assert dropped["final_check"]["passed"] is False
        assert dropped["id"] not in kept_ids
        assert reject["line"] == int(dropped["id"][1:]) + 1
    # A resume reads the input again and rewrites the rejects file: the dropped records are
    # listed again and still not emitted.
    before = sorted(orjson.dumps(r) for r in rejects)
    report, again, _, _ = await _run_amr(
        tmp_path, bank, sandbox, concurrency=4, window=4,
        double=_Scripted(bank, bug_rate=0.4), config=config, resume=True,
    )  # fmt: skip
    assert report.already_done == 12
    assert _by_id(again) == _by_id(records)
    lines = (tmp_path / "rejects.jsonl").read_bytes().splitlines()
    assert sorted(orjson.dumps(orjson.loads(x)) for x in lines) == before


async def test_cot_and_ansrepair_baselines(tmp_path: Path, bank: Bank, sandbox: Sandbox) -> None:
    _write_input(tmp_path / "in.jsonl", bank, 8)
    templates = load_templates()
    for name in ("cot", "ansrepair"):
        double = _Scripted(bank, bug_rate=0.5)
        strategy: Any = (
            CotStrategy(CallSettings("m"), templates)
            if name == "cot"
            else AnsRepairStrategy(CallSettings("m"), templates, sandbox)
        )
        with Journal.open(tmp_path / f"{name}.db") as journal:
            run = journal.start_run(config={}, output_path=tmp_path / f"{name}.jsonl")
            runner = Runner(
                strategy=strategy,
                teacher=JournaledTeacher(double.send, provider=Provider.OPENAI, run=run),
                input_path=tmp_path / "in.jsonl",
                rejects_path=tmp_path / "rejects.jsonl",
                run=run,
            )
            report = await runner.run()
        assert report.done == 8
        records = [orjson.loads(x) for x in (tmp_path / f"{name}.jsonl").read_bytes().splitlines()]
        if name == "cot":
            assert double.calls == 8
            assert all("step by step" in r["response"] for r in records)
        else:
            repaired = [r for r in records if r["repaired"]]
            clean = [r for r in records if r["check"] and r["check"]["passed"]]
            assert repaired
            assert clean
            for r in repaired:
                assert r["check"]["passed"] is False
                assert "repair" in r["usage"]
                assert r["response"].startswith("Here is the corrected solution.")
            assert double.calls == 8 * 2 + len(repaired)


def test_user_template_with_unknown_placeholder_is_named(tmp_path: Path) -> None:
    (tmp_path / "evolve.toml").write_text('system = ""\nuser = "$instruction $oops"\n')
    with pytest.raises(PromptError, match=r"evolve\.toml.*\$oops"):
        load_templates(tmp_path)
    (tmp_path / "evolve.toml").write_text("system = [")
    with pytest.raises(PromptError, match=r"evolve\.toml: not valid TOML"):
        load_templates(tmp_path)


def test_shipped_templates_render_with_their_marker() -> None:
    templates = load_templates()
    for kind, template in templates.items():
        values = {name: "X" for name in template.user.get_identifiers()}
        _, user = template.render(**values)
        assert f"### TASK: {kind}" in user


@pytest.mark.parametrize(
    "text",
    [
        "assert f(1) == 2\nassert  f(\n  2,\r\n 3) == [1,\n 2]\nx = 1; assert g('é') == 'ü'\r\n",
        "```python\nassert h('\u2028') == 1  # a separator str.splitlines would cut at\n```\n"
        "```py\nassert (a\n\x0c+ b)\nassert 1, 'msg'\n```",
        "def t():\n    pass\nassert k()\n",
        "assert broken(\n",
    ],
)
def test_parse_asserts_gives_the_source_segments_ast_gives(text: str) -> None:
    # Oracle: the stdlib's own `ast.get_source_segment`, which the fast path replaces.
    import ast

    from amr_async.pipeline.strategies._common import _FENCE, parse_asserts

    expected = []
    for block in _FENCE.findall(text) or [text]:
        try:
            tree = ast.parse(block)
        except SyntaxError:
            continue
        expected += [
            ast.get_source_segment(block, n) for n in tree.body if isinstance(n, ast.Assert)
        ]
    assert parse_asserts(text) == expected


async def test_parsed_tests_are_the_asserts_and_judge_as_their_text_does() -> None:
    # `parse_tests` (one parse, planned) and `parse_asserts` (text) find the same asserts;
    # run in the sandbox, the planned tests and their text give the same verdicts.
    from amr_async.pipeline.strategies._common import parse_asserts, parse_tests, run_tests
    from amr_async.sandbox import Sandbox

    answer = (
        "```python\nassert add(1, 2) == 3\nassert add(\n  2, 2) == 5, 'off'\n"
        "x = 1; assert add('é', 'ü') == 'éü'\n```\n```python\nassert add(1 == \n```\n"
        "```py\nassert add([1], [2]) == [1, 2]\nassert sub(1, 1) == 0\n```"
    )
    tests = parse_tests(answer)
    assert [t.source for t in tests] == parse_asserts(answer)
    assert len(tests) == 5
    code = "def add(a, b):\n    return a + b\n"
    async with Sandbox(parallelism=2, cache_size=0, isolation="none") as sandbox:
        planned = await run_tests(sandbox, code, tests)
        text = await run_tests(sandbox, code, [t.source for t in tests])
    assert [(t.status, t.message, t.value) for t in planned.tests] == [
        (t.status, t.message, t.value) for t in text.tests
    ]
    assert [str(t.status) for t in planned.tests] == [
        "passed", "failed", "passed", "passed", "error",
    ]  # fmt: skip


async def test_sandbox_flags_reach_the_strategy_and_the_sandbox(tmp_path: Path) -> None:
    import contextlib

    from amr_async.config import Config
    from amr_async.pipeline.cli import _strategy

    base = Config(model="m", db=str(tmp_path / "db"), test_timeout=0.25, sandbox_parallelism=3)
    async with contextlib.AsyncExitStack() as stack:
        amr = await _strategy(base.replace(strategy="amr-evol").to_dict(), None, stack)
        assert isinstance(amr, AmrEvolStrategy)
        assert amr.config.test_timeout_s == 0.25
        assert amr._shared.sandbox.parallelism == 3
        repair = await _strategy(base.replace(strategy="ansrepair").to_dict(), None, stack)
        assert isinstance(repair, AnsRepairStrategy)
        assert repair.stages[1].test_timeout_s == 0.25  # type: ignore[attr-defined]
        # The limit binds: a candidate that loops is stopped at the configured time.
        from amr_async.pipeline.strategies._common import run_tests

        result = await run_tests(
            amr._shared.sandbox, "def f():\n    while True:\n        pass\n", ["assert f() == 1"],
            timeout_s=amr.config.test_timeout_s,
        )  # fmt: skip
        assert not result.passed
        assert result.tests[0].message == "exceeded the time limit of 0.25 s"


async def test_novelty_hashes_agree_with_describe(tmp_path: Path) -> None:
    # The novelty check hashes without describing; what it calls unparseable, and each
    # hash, must be what `moduledb.describe` (the DB's own view) says.
    from amr_async.moduledb import UnparseableCode, describe
    from amr_async.pipeline.strategies.amr_evol import _hash_and_look_up

    stored = "def add(a, b):\n    return a + b\n"
    codes = [
        "def plus(x, y):\n    return x + y\n",  # the stored one, renamed: same hash
        "import math\n\n\ndef area(r):\n    return math.pi * r * r\n",
        "async def fetch(u):\n    return u\n",
        "x = 1\n",  # no function
        "def broken(:\n    pass\n",  # CPython refuses it
        "def f():\n    return 1\n\0",  # null byte
    ]
    async with await ModuleDB.open(tmp_path / "db", HashEmbedder()) as db:
        added = await db.add_many([Module(stored, verdict="pass")])
        looked_up = _hash_and_look_up(db.store, codes)
    for code, (code_hash, found) in zip(codes, looked_up, strict=True):
        try:
            expected: str | None = describe(code).ast_hash
        except UnparseableCode:
            expected = None
        assert code_hash == expected, code
        assert found == ((added.added[0], "add") if code is codes[0] else None)
    assert [h is None for h, _ in looked_up] == [False, False, False, True, True, True]


async def test_run_command_starts_the_sandbox_at_the_first_window(tmp_path: Path) -> None:
    """`amr-async run` builds amr-evol with the zygote not yet started: it starts at the
    first window's snapshot (overlapping the first calls), before any item passes the gate,
    and stops with the strategy's exit stack."""
    cfg = Config(strategy="amr-evol", model="m", db=str(tmp_path / "db"), isolation="none")
    async with contextlib.AsyncExitStack() as stack:
        strategy = await _strategy(cfg.to_dict(), "r", stack, defer_sandbox=True)
        assert isinstance(strategy, AmrEvolStrategy)
        sandbox = strategy._shared.sandbox
        assert sandbox.zygote_pid is None
        await strategy.begin_window(0)
        pid = sandbox.zygote_pid
        assert pid is not None
        os.kill(pid, 0)  # the zygote is alive (raises when it is not)
        await strategy.end_window([])
        await strategy.begin_window(1)  # later windows find it started
        assert sandbox.zygote_pid == pid
    assert sandbox.zygote_pid is None  # closed with the stack


async def test_a_novelty_lookup_begun_before_the_merge_is_not_trusted_after_it(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    # The window opens for real while its item's hash lookup is in flight: the lookup ran
    # before the merge stored `_ADD_UP`, so it must not be read against the real snapshot.
    async with _open(tmp_path) as db:
        strategy = await _ahead_of_window_0(db, sandbox)
        shared = strategy._shared
        lookup = shared.known_hash
        looked, release = asyncio.Event(), asyncio.Event()

        class _Held:
            """The first lookup returns only once the test releases it."""

            async def many(self, codes: Any) -> Any:
                found = await lookup.many(codes)
                if not looked.is_set():
                    looked.set()
                    await release.wait()
                return found

        shared.known_hash = _Held()  # type: ignore[assignment]
        running = _extract_add_up(strategy)
        await asyncio.wait_for(looked.wait(), timeout=30)
        await _merge_add_up_and_open_window_1(strategy)
        release.set()
        result = await asyncio.wait_for(running, timeout=30)
    assert result.output["functions"] == _ADD_UP_KNOWN


def _hit(score: float) -> SearchHit:
    return SearchHit(score, None)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("scores", "best", "k", "min_similarity", "unchanged"),
    [
        ([0.9, 0.8], 0.7, 2, 0.0, True),  # below the k-th hit
        ([0.9, 0.8], 0.799, 2, 0.0, False),  # within the f16 margin of it
        ([0.9, 0.8], 0.85, 2, 0.0, False),  # would displace the k-th hit
        ([0.9], 0.5, 2, 0.6, True),  # fewer than k hits: below min_similarity
        ([0.9], 0.65, 2, 0.6, False),  # fewer than k hits: would join them
        ([], float("-inf"), 1, -1.0, True),  # nothing ahead
        ([], -0.5, 1, -1.0, False),  # an empty result gains anything that scores
    ],
)
def test_a_search_is_unchanged_only_by_modules_scoring_below_its_floor(
    scores: list[float], best: float, k: int, min_similarity: float, unchanged: bool
) -> None:
    row = [_hit(s) for s in scores]
    assert unchanged_by(row, best, k, min_similarity) is unchanged
