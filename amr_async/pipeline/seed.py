"""The seed module DB by self-instruct (METHOD.md): the teacher writes functions, then their
tests; only functions that pass their tests in the sandbox enter the DB.

Per call (``seed-function`` prompt, one topic drawn by a seeded RNG from `DEFAULT_TOPICS`
or the user's list): the answer's first top-level function, with the imports and helpers
it uses, is the candidate. A candidate the DB already holds (AST hash) or nearly holds
(cosine ≥ the DB's novelty threshold), or that repeats one of this run, is skipped before
any test is bought. The rest get teacher-written assert tests (``tests`` prompt, as in the
pipeline), run in the sandbox; those that pass are added at the end of each round, in call
order, with `verdict="pass"`, `stage="seed"` and the tests stored.

Calls go through the journaled teacher in rounds (see `_generation`): rerunning the same
command with the same journal pays for nothing twice.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from amr_async.moduledb import Module, ModuleDB, Snapshot, UnparseableCode, describe
from amr_async.pipeline._generation import TeacherSettings
from amr_async.pipeline._prompts import PromptTemplate
from amr_async.pipeline._teacher import JournaledTeacher, TeacherUnavailable
from amr_async.pipeline.strategies._common import (
    functions_of,
    module_code,
    parse_asserts,
    run_tests,
)
from amr_async.sandbox import Sandbox

DEFAULT_TOPICS: tuple[str, ...] = (
    "string manipulation",
    "text parsing and tokenising",
    "list and sequence processing",
    "dictionaries and counting",
    "sorting and searching",
    "number theory and primes",
    "arithmetic on digits of integers",
    "geometry in the plane",
    "dates and times",
    "matrices and grids",
    "graphs and trees",
    "recursion and dynamic programming",
    "sets and combinatorics",
    "bit manipulation",
    "validation of user input",
    "intervals and ranges",
    "statistics of numeric data",
    "encoding and decoding (ciphers, run-length, bases)",
    "stacks and queues",
    "binary search over answers",
)


class SeedError(ValueError):
    """Seeding cannot go on (the message says why and what to do)."""


@dataclass(slots=True)
class SeedReport:
    """What a self-instruct seeding did."""

    added: list[int] = field(default_factory=list)
    calls: int = 0
    candidates: int = 0
    skipped: dict[str, int] = field(default_factory=dict)

    def skip(self, reason: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1


@dataclass(slots=True, frozen=True)
class SeedSettings:
    """How a self-instruct seeding runs.

    Attributes:
        n: modules wanted in the DB.
        calls: model and sampling of every call.
        topics: drawn per function call.
        seed: RNG seed of the topic draws.
        round_size: function calls sent together.
        max_calls: give up after this many function calls (default 4 × n + round_size).
        run_id: provenance of the added modules.
    """

    n: int
    calls: TeacherSettings
    topics: Sequence[str] = DEFAULT_TOPICS
    seed: int = 0
    round_size: int = 32
    max_calls: int | None = None
    run_id: str | None = None


async def _answer(
    teacher: JournaledTeacher,
    template: PromptTemplate,
    calls: TeacherSettings,
    item_id: str,
    stage: str,
    sample: int,
    **values: str,
) -> str | None:
    request = template.request(
        model=calls.model, max_tokens=calls.max_tokens, temperature=calls.temperature, **values
    )
    request = dataclasses.replace(request, sample_index=sample)
    outcome = await teacher.call(request, item_id=item_id, stage=stage)
    return outcome.text if outcome.kind.is_success else None


async def _candidate(answer: str | None) -> tuple[str | None, str | None]:
    """The module an answer offers (its main function, imports and helpers), or why none."""
    if answer is None:
        return None, "call_failed"
    functions = await functions_of(answer)
    if not functions:
        return None, "no_function"
    # The function the answer is about is one no other function calls (helpers come along).
    called = {name for f in functions for name in f.helpers}
    main = next((f for f in functions if f.name not in called), functions[0])
    return module_code(main, functions), None


async def seed_by_self_instruct(
    teacher: JournaledTeacher,
    templates: dict[str, PromptTemplate],
    db: ModuleDB,
    sandbox: Sandbox,
    settings: SeedSettings,
) -> SeedReport:
    """Add up to `settings.n` verified, teacher-written modules to `db`.

    Returns:
        The ids added (call order), the calls made and why candidates were skipped.
    """
    if settings.n < 1 or settings.round_size < 1:
        raise ValueError("n and round_size must be >= 1")
    if not settings.topics:
        raise ValueError("no topics to draw from")
    rng = random.Random(settings.seed)
    report = SeedReport()
    seen: set[str] = set()
    budget = settings.max_calls
    if budget is None:
        budget = 4 * settings.n + settings.round_size
    while len(report.added) < settings.n and report.calls < budget:
        size = min(settings.round_size, budget - report.calls)
        jobs = [
            (f"seed-{j:07d}", rng.choice(list(settings.topics)), j)
            for j in range(report.calls, report.calls + size)
        ]
        report.calls += size
        answers = await asyncio.gather(
            *(
                _answer(teacher, templates["seed-function"], settings.calls, item_id,
                        "seed-function", index, topic=topic, index=str(index + 1))
                for item_id, topic, index in jobs
            )
        )  # fmt: skip
        snapshot = db.snapshot()
        novel: list[tuple[str, str]] = []
        for (item_id, _, _), answer in zip(jobs, answers, strict=True):
            code, why = await _candidate(answer)
            if code is not None:
                why = await _known(db, snapshot, code, seen)
            if why is not None or code is None:
                report.skip(why or "no_function")
                continue
            report.candidates += 1
            novel.append((item_id, code))
        verified = await asyncio.gather(
            *(_verify(teacher, templates["tests"], settings.calls, i, c, sandbox) for i, c in novel)
        )
        now = time.time()
        modules: list[Module] = []
        for (item_id, code), (asserts, why) in zip(novel, verified, strict=True):
            if why is not None:
                report.skip(why)
                continue
            modules.append(
                Module(code=code, tests="\n".join(asserts), verdict="pass", verified_at=now,
                       run_id=settings.run_id, item_id=item_id, stage="seed")
            )  # fmt: skip
        room = settings.n - len(report.added)
        if modules[:room]:
            result = await db.add_many(modules[:room])
            report.added.extend(result.added)
            for rejection in result.rejected:
                report.skip(rejection.reason)
    return report


async def _known(db: ModuleDB, snapshot: Snapshot, code: str, seen: set[str]) -> str | None:
    """Why `code` is not new (to the DB or to this run), or None."""
    try:
        info = await asyncio.to_thread(describe, code)
    except UnparseableCode:
        return "unparseable"
    if info.ast_hash in seen:
        return "duplicate_in_run"
    found = await asyncio.to_thread(db.store.known_hashes, [info.ast_hash])
    if info.ast_hash in found:
        return "duplicate_ast"
    hits = await snapshot.search([code], k=1)
    if hits and hits[0] and hits[0][0].score >= db.novelty_threshold:
        return "near_duplicate"
    seen.add(info.ast_hash)
    return None


async def _verify(
    teacher: JournaledTeacher,
    template: PromptTemplate,
    calls: TeacherSettings,
    item_id: str,
    code: str,
    sandbox: Sandbox,
) -> tuple[list[str], str | None]:
    """The candidate's teacher-written tests, and why it failed (None: all passed)."""
    functions = await functions_of(code)
    name = functions[0].name if functions else "the function"
    answer = await _answer(
        teacher, template, calls, item_id, "tests", 0, function_name=name, code=code
    )
    if answer is None:
        return [], "call_failed"
    asserts = parse_asserts(answer)
    if not asserts:
        return [], "no_tests_parsed"
    result = await run_tests(sandbox, code, asserts)
    return asserts, None if result.passed else "tests_failed"


def add_seed_arguments(p: argparse.ArgumentParser) -> None:
    """The options `amr-async db seed --self-instruct N` adds to `db seed`."""
    from amr_async.pipeline._generation import add_teacher_arguments

    g = p.add_argument_group("self-instruct (--self-instruct N)")
    g.add_argument(
        "--self-instruct",
        type=int,
        metavar="N",
        help="instead of a directory: have the teacher write N verified modules",
    )
    g.add_argument("--topics", type=Path, help="topics to draw from, one per line")
    g.add_argument("--max-calls", type=int, help="give up after this many function calls")
    g.add_argument("--isolation", choices=["auto", "namespaces", "none"], default="auto")
    # The teacher options are only required with --self-instruct (checked at run time).
    add_teacher_arguments(p, temperature=0.7, required=False)


async def seed_command(db: ModuleDB, args: argparse.Namespace) -> dict[str, Any]:
    """`db seed --self-instruct N`: run it on an open DB; returns the JSON summary.

    Raises:
        ValueError: bad options (named).
        TeacherUnavailable: the teacher refuses every call.
    """
    from amr_async.journal import Journal, JournalError
    from amr_async.pipeline._generation import journaled_teacher, open_run
    from amr_async.pipeline._prompts import load_templates

    for name in ("journal", "model"):
        if getattr(args, name) is None:
            raise ValueError(f"--{name} is required with --self-instruct")
    topics: Sequence[str] = DEFAULT_TOPICS
    if args.topics is not None:
        topics = [t.strip() for t in args.topics.read_text(encoding="utf-8").splitlines()]
        topics = [t for t in topics if t]
        if not topics:
            raise ValueError(f"{args.topics}: no topic (one per line)")
    templates = load_templates(args.prompts)
    run_id = args.run_id or "db-seed-self-instruct"
    # Opened on the loop's thread (the journal's connections belong to it), before any
    # other work of this command runs.
    try:
        journal = Journal.open(args.journal)
    except JournalError as exc:
        raise SeedError(str(exc)) from None
    try:
        config = {"command": "db seed --self-instruct", "n": args.self_instruct, "db": str(args.db)}
        run = open_run(journal, run_id, config)
        settings = SeedSettings(
            n=args.self_instruct,
            calls=TeacherSettings(args.model, args.max_tokens, args.temperature),
            topics=topics, seed=args.seed, round_size=args.round_size,
            max_calls=args.max_calls, run_id=run_id,
        )  # fmt: skip
        try:
            async with (
                journaled_teacher(args, run) as teacher,
                Sandbox(isolation=args.isolation) as sandbox,
            ):
                report = await seed_by_self_instruct(teacher, templates, db, sandbox, settings)
        except TeacherUnavailable as exc:
            raise SeedError(f"{exc}; run again once fixed (answers so far are journaled)") from None
        await run.stop("finished" if len(report.added) >= settings.n else "partial")
    finally:
        journal.close()
    return {
        "self_instruct": settings.n,
        "added": len(report.added),
        "calls": report.calls,
        "candidates": report.candidates,
        "skipped": report.skipped,
    }


__all__ = [
    "DEFAULT_TOPICS",
    "SeedError",
    "SeedReport",
    "SeedSettings",
    "add_seed_arguments",
    "seed_by_self_instruct",
    "seed_command",
]
