"""AMR-Evol (METHOD.md): direct → decompose → retrieve → evolve → verify new modules.

Stages, each journaled so a resumed item restarts after its last completed one:

``direct``     R_d = teacher(I).
``decompose``  teacher(I, R_d) → function stubs, parsed with the Rust extractor.
               Fallback: no stub parses → retrieval by the direct answer's code
               (provenance ``decompose: no_stubs``).
``retrieve``   per stub, the `k` most similar verified modules with cosine ≥
               `min_similarity`, from the window's frozen DB snapshot.
``evolve``     R_amr = teacher(I, stubs, modules) (stubs left out when
               `evolve_with_stubs` is off). Fallback: no function parses in the answer →
               keep R_d (provenance ``evolve: no_code_kept_direct``).
``extract``    R_amr's top-level functions as modules (with the helpers they call), and
               which of them the snapshot already knows (same AST hash, or cosine ≥
               `novelty_max_cosine`).
``verify``     the new ones get teacher-written assert tests (stage ``tests``) run in
               the sandbox; those that pass are this item's accepted modules.
               Optionally (`final_check`) every generated test also runs against R_amr as
               a whole; with `drop_failed` a failing item's record is dropped: kept out of
               the output, listed with its reason in the rejects file.

DB growth is reproducible: the runner runs items in windows of `window_size` input lines;
`begin_window` freezes a snapshot that all of the window's items read from `retrieve` on
(their `direct` and `decompose` calls run ahead, while the window before finishes), and
`end_window`
adds the window's accepted modules in input order once every item of the window is
finished. Size 1 is strictly online.

While a window waits for its last items (typically one sandbox job running to its CPU
limit), the next one may open speculatively (`Speculative`): its `retrieve` and `extract`
search the DB as merged so far, plus, in the same hop, every module the unmerged windows
may still add (the accepted modules of their finished items, the new functions of their
items in `verify`). When none of those could enter a search's result (exact f16 index
only: the proof needs exact scores), that result is the one the real snapshot gives;
otherwise the stage waits for the real snapshot. Outputs never depend on it.
"""

from __future__ import annotations

import ast
import asyncio
import time
from collections.abc import Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from amr_async import _python_ast
from amr_async.core import FunctionRecord, ast_hash
from amr_async.moduledb import Module, ModuleDB, ModuleStore, SearchHit, Snapshot
from amr_async.pipeline._input import InputItem
from amr_async.pipeline._prompts import PromptTemplate, code_block
from amr_async.pipeline._teacher import JournaledTeacher
from amr_async.pipeline.strategies._common import (
    Coalescer,
    add_usage,
    answer_code,
    ask,
    function_extractor,
    module_code,
    parse_tests,
    run_tests,
    stub_text,
    verdict_summary,
)
from amr_async.pipeline.strategies._search import (
    F32,
    SCORE_MARGIN,
    SnapshotSearcher,
    unchanged_by,
)
from amr_async.pipeline.strategies.base import DROPPED, Stage, StageResult, WindowAbandoned
from amr_async.sandbox import Sandbox
from amr_async.teacher.types import Outcome, OutcomeKind

# A code's AST hash (None: unparseable) and the stored module (id, name) with that hash.
_Known = tuple[str | None, tuple[int, str] | None]


@dataclass(slots=True)
class _View:
    """How one window's items read the DB.

    `final` resolves to the window's snapshot when it opens for real. A window opened
    speculatively reads `base` (the DB as merged so far) and must prove that what the
    windows before it may still add (`ahead`: AST hashes and vectors) cannot change a result.
    """

    final: asyncio.Future[Snapshot]
    base: Snapshot | None = None
    ahead_hashes: frozenset[str] = frozenset()
    ahead_vectors: F32 | None = None

    async def settled(self) -> Snapshot:
        """The real snapshot (waits for the window to open; `WindowAbandoned` on a stop)."""
        return await asyncio.shield(self.final)


@dataclass(slots=True)
class SpeculationStats:
    """How speculation went (see `Speculative`): windows opened early, and how many
    searches of their items were proven unchanged or waited for the real snapshot."""

    windows: int = 0
    proven: int = 0
    waited: int = 0


@dataclass(frozen=True, slots=True)
class AmrEvolConfig:
    """Knobs of the method (METHOD.md's decisions) and of the run.

    Attributes:
        model: teacher model.
        max_tokens: output tokens per call.
        temperature: sampling temperature (the paper: 0).
        k: modules retrieved per stub.
        min_similarity: retrieved modules need at least this cosine (0: paper behaviour).
        novelty_max_cosine: a function this similar to a stored module is not new.
        evolve_with_stubs: give the evolution prompt the stubs too (Eq. 4); off =
            retrieved modules only.
        window_size: input lines per DB window (1 = strictly online).
        final_check: run the generated tests against R_amr and record a verdict.
        drop_failed: with `final_check`, drop records whose R_amr fails (the runner
            lists them in the rejects file instead of the output).
        keep_raw: put each stage's raw teacher answer in the record.
        test_timeout_s: per-test limit in the sandbox (CPU time; a candidate stops at its
            first failing test: one failure keeps it out). A buggy candidate that loops
            costs this much per job, not the sandbox's 5 s default per test.
    """

    model: str
    max_tokens: int = 3000
    temperature: float = 0.0
    k: int = 1
    min_similarity: float = 0.0
    novelty_max_cosine: float = 0.9
    evolve_with_stubs: bool = True
    window_size: int = 64
    final_check: bool = False
    drop_failed: bool = False
    keep_raw: bool = False
    test_timeout_s: float = 1.0

    def __post_init__(self) -> None:
        if self.k < 1:
            raise ValueError(f"k must be >= 1, got {self.k}")
        if self.window_size < 1:
            raise ValueError(f"window_size must be >= 1, got {self.window_size}")
        if not self.test_timeout_s > 0:
            raise ValueError(f"test_timeout_s must be > 0, got {self.test_timeout_s}")


@dataclass(slots=True)
class _Shared:
    """What the stages of one strategy share: the DB, its window snapshot, the sandbox."""

    config: AmrEvolConfig
    templates: Mapping[str, PromptTemplate]
    db: ModuleDB
    sandbox: Sandbox
    run_id: str | None
    views: dict[int, _View] = field(default_factory=dict)  # by window index
    speculation: SpeculationStats = field(default_factory=SpeculationStats)
    merges: list[dict[str, Any]] = field(default_factory=list)
    # Parsing and hashing batched across the items in flight (see `Coalescer`).
    functions_of: Coalescer[str, list[FunctionRecord]] = field(default_factory=function_extractor)
    known_hash: Coalescer[str, _Known] = field(init=False)
    # Snapshot searches (retrieval, novelty) batched the same way.
    searcher: SnapshotSearcher = field(init=False)

    def __post_init__(self) -> None:
        self.known_hash = Coalescer(partial(_hash_and_look_up, self.db.store))
        self.searcher = SnapshotSearcher(self.db)

    def view(self, item: InputItem) -> _View:
        """The view of the item's window (lines `w*size+1 ... (w+1)*size` are window w)."""
        view = self.views.get((item.line_no - 1) // self.config.window_size)
        if view is None:
            raise RuntimeError("amr-evol: the item's DB window is not open (see begin_window)")
        return view

    def ask(
        self, teacher: JournaledTeacher, kind: str, item: InputItem, stage: str, **values: str
    ) -> Coroutine[Any, Any, tuple[Outcome, dict[str, Any]]]:
        """One call with the `kind` template and the configured model and sampling.

        Returns `ask`'s coroutine itself, not one awaiting it: every resumption of a call
        (the dispatcher's waits) passes through each coroutine frame stacked above it.
        """
        c = self.config
        return ask(
            teacher, self.templates[kind], item, stage,
            model=c.model, max_tokens=c.max_tokens, temperature=c.temperature, **values,
        )  # fmt: skip


class _Stage:
    """A stage of this strategy: a name and the strategy's shared state."""

    name = ""

    def __init__(self, shared: _Shared) -> None:
        self.shared = shared


def _answer_output(outcome: Outcome, usage: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """A teacher stage's journaled output: its answer, why it ended, its usage, `extra`."""
    return {"raw": outcome.text, "finish_reason": outcome.finish_reason, "usage": usage, **extra}


class _Direct(_Stage):
    name = "direct"

    async def run(
        self, item: InputItem, outputs: Mapping[str, Any], teacher: JournaledTeacher
    ) -> StageResult:
        outcome, usage = await self.shared.ask(
            teacher, "direct", item, self.name, instruction=item.instruction
        )
        out = {"response": outcome.text, "finish_reason": outcome.finish_reason, "usage": usage}
        return StageResult(out, {"kind": str(outcome.kind)})


class _Decompose(_Stage):
    name = "decompose"

    async def run(
        self, item: InputItem, outputs: Mapping[str, Any], teacher: JournaledTeacher
    ) -> StageResult:
        direct = outputs["direct"]["response"]
        outcome, usage = await self.shared.ask(
            teacher, "decompose", item, self.name,
            instruction=item.instruction, direct_answer=code_block(answer_code(direct)),
        )  # fmt: skip
        stubs = [stub_text(r) for r in await self.shared.functions_of(outcome.text)]
        fallback = None if stubs else "no_stubs"
        out = _answer_output(outcome, usage, stubs=stubs, fallback=fallback)
        return StageResult(out, {"fallback": fallback})


class _Retrieve(_Stage):
    name = "retrieve"

    async def run(
        self, item: InputItem, outputs: Mapping[str, Any], teacher: JournaledTeacher
    ) -> StageResult:
        stubs: list[str] = outputs["decompose"]["stubs"]
        by = "stubs" if stubs else "direct_answer"
        queries = stubs or [answer_code(outputs["direct"]["response"])]
        hits = await self._search(self.shared.view(item), queries)
        seen: set[int] = set()
        modules: list[dict[str, Any]] = []
        for query_index, row in enumerate(hits):
            for hit in row:
                if hit.module.id in seen:
                    continue
                seen.add(hit.module.id)
                modules.append(
                    {
                        "id": hit.module.id,
                        "name": hit.module.name,
                        "score": round(float(hit.score), 6),
                        "query": query_index,
                        "code": hit.module.code,
                    }
                )
        out = {"by": by, "modules": modules}
        return StageResult(out, {"by": by, "retrieved": len(modules)})

    async def _search(self, view: _View, queries: list[str]) -> list[list[SearchHit]]:
        """The window snapshot's hits; ahead of it when proven the same (see `_View`)."""
        s, c = self.shared, self.shared.config
        if view.base is not None and not view.final.done():
            assert view.ahead_vectors is not None
            hits, best = await s.searcher.search_ahead(
                view.base, queries, view.ahead_vectors, k=c.k, min_similarity=c.min_similarity
            )
            if all(
                unchanged_by(row, b, c.k, c.min_similarity)
                for row, b in zip(hits, best, strict=True)
            ):
                s.speculation.proven += 1
                return hits
            s.speculation.waited += 1
        snapshot = await view.settled()
        return await s.searcher.search(snapshot, queries, k=c.k, min_similarity=c.min_similarity)


class _Evolve(_Stage):
    name = "evolve"

    async def run(
        self, item: InputItem, outputs: Mapping[str, Any], teacher: JournaledTeacher
    ) -> StageResult:
        with_stubs = self.shared.config.evolve_with_stubs
        stubs: list[str] = outputs["decompose"]["stubs"] if with_stubs else []
        modules = outputs["retrieve"]["modules"]
        outcome, usage = await self.shared.ask(
            teacher, "evolve", item, self.name,
            instruction=item.instruction,
            stubs=code_block("\n\n".join(stubs)) if stubs else "(none)",
            modules=code_block("\n\n".join(m["code"].rstrip() for m in modules))
            if modules
            else "(none)",
        )  # fmt: skip
        has_code = bool(await self.shared.functions_of(outcome.text))
        fallback = None if has_code else "no_code_kept_direct"
        response = outcome.text if has_code else outputs["direct"]["response"]
        out = _answer_output(outcome, usage, response=response, fallback=fallback)
        return StageResult(out, {"fallback": fallback})


class _Extract(_Stage):
    name = "extract"

    async def run(
        self, item: InputItem, outputs: Mapping[str, Any], teacher: JournaledTeacher
    ) -> StageResult:
        s = self.shared
        functions = await s.functions_of(outputs["evolve"]["response"])
        codes = [module_code(r, functions) for r in functions]
        # Novelty of all the answer's functions at once (one thread hop, one search).
        known = await self._known(codes, s.view(item))
        out = {
            "functions": [
                {"name": r.name, "code": code, "known": reason}
                for r, code, reason in zip(functions, codes, known, strict=True)
            ]
        }
        return StageResult(out, {"functions": len(codes), "new": known.count(None)})

    async def _known(self, codes: list[str], view: _View) -> list[str | None]:
        """Why each of `codes` is not new to the window's snapshot, or None when it is."""
        if not codes:
            return []
        s = self.shared
        # Decided before the lookup: a lookup begun ahead of the window's merge may miss
        # what that merge stores, even if the window has opened for real by its end.
        ahead = view.base is not None and not view.final.done()
        looked_up = await s.known_hash.many(codes)
        if ahead:
            assert view.base is not None
            reasons = await self._novelty(codes, looked_up, view.base, view)
            if reasons is not None:
                s.speculation.proven += 1
                return reasons
            s.speculation.waited += 1
            snapshot = await view.settled()
            # Looked up again: the merges just waited for may have stored one of them.
            looked_up = await s.known_hash.many(codes)
        else:
            snapshot = await view.settled()
        reasons = await self._novelty(codes, looked_up, snapshot, None)
        assert reasons is not None
        return reasons

    async def _novelty(
        self,
        codes: list[str],
        looked_up: list[_Known],
        snapshot: Snapshot,
        ahead: _View | None,
    ) -> list[str | None] | None:
        """`_known` against `snapshot`; with `ahead`, None unless proven unchanged by what
        the windows before may still add."""
        reasons: list[str | None] = [None] * len(codes)
        unknown: list[int] = []
        for i, (code_hash, found) in enumerate(looked_up):
            if code_hash is None:
                reasons[i] = "unparseable"
                continue
            if ahead is not None and code_hash in ahead.ahead_hashes:
                return None
            # The hash index covers the live DB; only modules inside the snapshot count.
            if found is not None and found[0] < len(snapshot):
                reasons[i] = f"duplicate_ast:{found[0]}"
            else:
                unknown.append(i)
        if not unknown:
            return reasons
        texts = [codes[i] for i in unknown]
        threshold = self.shared.config.novelty_max_cosine
        if ahead is None:
            hits = await self.shared.searcher.search(snapshot, texts, k=1)
        else:
            assert ahead.ahead_vectors is not None
            hits, best = await self.shared.searcher.search_ahead(
                snapshot, texts, ahead.ahead_vectors, k=1
            )
            for row, b in zip(hits, best, strict=True):
                top = row[0].score if row else float("-inf")
                # Unchanged top hit, or no hit of either kind reaches the threshold.
                if not (
                    unchanged_by(row, b, 1, -1.0)
                    or (top < threshold and b < threshold - SCORE_MARGIN)
                ):
                    return None
        for i, row in zip(unknown, hits, strict=True):
            if row and row[0].score >= threshold:
                hit = row[0]
                reasons[i] = f"near_duplicate:{hit.module.id}:{hit.score:.3f}"
        return reasons


class _Verify(_Stage):
    name = "verify"

    async def run(
        self, item: InputItem, outputs: Mapping[str, Any], teacher: JournaledTeacher
    ) -> StageResult:
        s = self.shared
        c = s.config
        response: str = outputs["evolve"]["response"]
        functions: list[dict[str, Any]] = outputs["extract"]["functions"]
        # The new functions are tested and run concurrently; results in answer order.
        jobs = [self._check(item, teacher, f["name"], f["code"], f["known"]) for f in functions]
        if sum(f["known"] is None for f in functions) > 1:
            checks = await asyncio.gather(*jobs)
        else:  # nothing to overlap: plain awaits spare a task per function
            checks = [await job for job in jobs]
        usage: dict[str, Any] = {}
        candidates: list[dict[str, Any]] = []
        accepted: list[dict[str, Any]] = []
        all_tests: list[str] = []
        raw_tests: dict[str, str] = {}
        for f, (entry, code, asserts, raw, used) in zip(functions, checks, strict=True):
            candidates.append(entry)
            if raw is None:
                continue
            usage = add_usage(usage, used)
            raw_tests[f["name"]] = raw
            all_tests.extend(asserts)
            if entry.get("passed"):
                accepted.append({"name": f["name"], "code": code, "tests": "\n".join(asserts)})
        out: dict[str, Any] = {
            "candidates": candidates,
            "accepted": accepted,
            "usage": usage,
            "raw_tests": raw_tests,
        }
        if c.final_check:
            if all_tests:
                result = await run_tests(
                    s.sandbox, answer_code(response), all_tests, timeout_s=c.test_timeout_s
                )
                out["final_check"] = verdict_summary(result)
            else:
                out["final_check"] = {
                    "passed": None,
                    "tests": 0,
                    "failed": [],
                    "module_error": None,
                }
        return StageResult(out, {"accepted": len(accepted), "candidates": len(candidates)})

    async def _check(
        self,
        item: InputItem,
        teacher: JournaledTeacher,
        name: str,
        code: str,
        known: str | None,
    ) -> tuple[dict[str, Any], str, list[str], str | None, dict[str, Any]]:
        """One function: (candidate entry, module code, tests, raw tests answer, usage).

        A function the snapshot knows (`known` says why) gets no tests call (raw answer None).
        """
        entry: dict[str, Any] = {"name": name}
        if known is not None:
            entry.update(novel=False, reason=known)
            return entry, code, [], None, {}
        entry["novel"] = True
        outcome, used = await self.shared.ask(
            teacher, "tests", item, "tests", function_name=name, code=code
        )
        tests = parse_tests(outcome.text)  # parsed and planned once, here
        asserts = [t.source for t in tests]
        entry["tests"] = len(asserts)
        if not asserts:
            entry.update(passed=False, reason="no_tests_parsed")
            return entry, code, asserts, outcome.text, used
        c = self.shared.config
        result = await run_tests(
            self.shared.sandbox, code, tests, timeout_s=c.test_timeout_s, fail_fast=True
        )
        entry["passed"] = result.passed
        if not result.passed:
            entry["reason"] = "tests_failed"
        return entry, code, asserts, outcome.text, used


def _hash_and_look_up(store: ModuleStore, codes: Sequence[str]) -> list[_Known]:
    """Each code's AST hash and the stored module with it; one SQLite query for all.

    Unparseable exactly where `moduledb.describe` says so (CPython refuses it, it defines
    no top-level function, or the Rust parser refuses it), without describing what the
    novelty check does not read (signature, docstring, node count: most of its CPU).
    """
    parseable = [code for code in codes if _defines_a_function(code)]
    hashes = dict(zip(parseable, ast_hash(parseable, include_name=False, threads=1), strict=True))
    found = [h for h in hashes.values() if h is not None]
    stored = store.known_hashes(found) if found else {}
    out: list[_Known] = []
    for code in codes:
        code_hash = hashes.get(code)
        out.append((code_hash, stored.get(code_hash) if code_hash is not None else None))
    return out


def _ahead(searcher: SnapshotSearcher, codes: list[str]) -> tuple[frozenset[str], F32]:
    """AST hashes (as `_hash_and_look_up` computes them) and vectors of `codes`."""
    parseable = [code for code in codes if _defines_a_function(code)]
    hashes = ast_hash(parseable, include_name=False, threads=1) if parseable else []
    return frozenset(h for h in hashes if h is not None), searcher.embed_ahead(codes)


def _defines_a_function(code: str) -> bool:
    """CPython parses `code` and it defines a top-level function (`describe`'s own test)."""
    try:
        tree = _python_ast.parse(code)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return False
    return any(isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) for node in tree.body)


_USAGE_STAGES = ("direct", "decompose", "evolve", "verify")


class AmrEvolStrategy:
    """The AMR-Evol strategy; see the module docstring.

    Args:
        config: the method's knobs.
        templates: prompt templates by kind (`load_templates`).
        db: the module database (grows at each window's end).
        sandbox: runs the generated tests.
        run_id: provenance for the modules added.
    """

    name = "amr-evol"
    # Direct and decompose need no DB: they run ahead while the previous window finishes.
    snapshot_stage = "retrieve"

    def __init__(
        self,
        config: AmrEvolConfig,
        *,
        templates: Mapping[str, PromptTemplate],
        db: ModuleDB,
        sandbox: Sandbox,
        run_id: str | None = None,
    ) -> None:
        self.config = config
        self._shared = _Shared(config, templates, db, sandbox, run_id)
        self._stages: tuple[Stage, ...] = (
            _Direct(self._shared),
            _Decompose(self._shared),
            _Retrieve(self._shared),
            _Evolve(self._shared),
            _Extract(self._shared),
            _Verify(self._shared),
        )

    @property
    def stages(self) -> Sequence[Stage]:
        return self._stages

    @property
    def window_size(self) -> int:
        return self.config.window_size

    @property
    def merges(self) -> list[dict[str, Any]]:
        """One summary per window merged in this attempt (added ids, rejections)."""
        return self._shared.merges

    async def begin_window(self, index: int) -> None:
        """Freeze the DB as window `index`'s items will see it.

        The sandbox is started here if it is not yet (a no-op after the first window): the
        runner calls this for the first window while the first items' `direct` calls run,
        so the zygote's start overlaps them, and no item reaches `verify` before it is up.

        Raises:
            SandboxError: the sandbox could not start.
        """
        await self._shared.sandbox.start()
        snapshot = self._shared.db.snapshot()
        view = self._shared.views.get(index)
        if view is None:
            future = asyncio.get_running_loop().create_future()
            self._shared.views[index] = _View(future)
            future.set_result(snapshot)
        elif not view.final.done():  # opened speculatively: now for real
            view.final.set_result(snapshot)

    def additions_bound(self, outputs: Mapping[str, Any]) -> Sequence[str] | None:
        """The accepted modules once verified; before that, the new functions once extracted."""
        if "verify" in outputs:
            return [m["code"] for m in outputs["verify"]["accepted"]]
        if "extract" in outputs:
            return [f["code"] for f in outputs["extract"]["functions"] if f["known"] is None]
        return None

    async def speculate_window(self, index: int, additions: Sequence[str]) -> bool:
        """Open window `index` over the DB as merged so far (see the module docstring)."""
        s = self._shared
        if not s.searcher.can_search_ahead:
            return False
        hashes, vectors = await asyncio.to_thread(_ahead, s.searcher, list(additions))
        future: asyncio.Future[Snapshot] = asyncio.get_running_loop().create_future()
        s.views[index] = _View(future, s.db.snapshot(), hashes, vectors)
        s.speculation.windows += 1
        return True

    def abandon_windows(self) -> None:
        """Stages waiting for a speculatively opened window raise `WindowAbandoned`."""
        for view in self._shared.views.values():
            if not view.final.done():
                view.final.set_exception(WindowAbandoned())
                view.final.exception()  # retrieved: no "never retrieved" log if none waits

    @property
    def speculation(self) -> SpeculationStats:
        """How speculation went in this attempt."""
        return self._shared.speculation

    async def end_window(self, records: Sequence[Mapping[str, Any]]) -> None:
        """Merge the accepted modules of the window's finished records (input order)."""
        now = time.time()
        additions = [
            Module(
                code=m["code"],
                tests=m["tests"],
                verdict="pass",
                verified_at=now,
                run_id=self._shared.run_id,
                item_id=str(r["id"]),
                stage="evolve",
            )
            for r in records
            for m in r.get("modules_verified", ())
        ]
        # In input order (records come in input order; an item's modules in answer order):
        # `add_many` admits in the order given, so of two near-duplicates the earlier
        # input line wins, whatever the item ids are.
        result = await self._shared.db.add_many(additions) if additions else None
        self._shared.merges.append(
            {
                "offered": len(additions),
                "added": list(result.added) if result else [],
                "rejected": len(result.rejected) if result else 0,
            }
        )
        # Windows end in order: the one ending is the oldest open one.
        if self._shared.views:
            del self._shared.views[min(self._shared.views)]

    def record(self, item: InputItem, outputs: Mapping[str, Any]) -> tuple[dict[str, Any], str]:
        c = self.config
        direct, decompose, retrieve = outputs["direct"], outputs["decompose"], outputs["retrieve"]
        evolve, verify = outputs["evolve"], outputs["verify"]
        provenance = {
            "decompose": decompose["fallback"] or "ok",
            "retrieve_by": retrieve["by"],
            "evolve": evolve["fallback"] or "ok",
        }
        usage = {
            stage: outputs[stage]["usage"] for stage in _USAGE_STAGES if outputs[stage]["usage"]
        }
        usage["tests"] = usage.pop("verify", {})
        truncated = evolve["finish_reason"] in ("length", "max_tokens")
        verdict = str(OutcomeKind.TRUNCATED if truncated else OutcomeKind.OK)
        record: dict[str, Any] = {
            "id": item.item_id,
            "instruction": item.instruction,
            "response": evolve["response"],
            "strategy": self.name,
            "model": c.model,
            "verdict": verdict,
            "provenance": provenance,
            "stubs": decompose["stubs"],
            "modules_retrieved": [
                {k: m[k] for k in ("id", "name", "score")} for m in retrieve["modules"]
            ],
            "modules_verified": verify["accepted"],
            "candidates": verify["candidates"],
            "usage": usage,
        }
        if "final_check" in verify:
            record["final_check"] = verify["final_check"]
            if c.drop_failed and verify["final_check"]["passed"] is False:
                # The runner keeps a dropped record out of the output and lists it, record
                # and all, in the rejects file (and the journal).
                check = verify["final_check"]
                record["dropped"] = (
                    f"final check failed: {len(check['failed'])} of {check['tests']} tests"
                )
                verdict = DROPPED
                record["verdict"] = verdict
        if c.keep_raw:
            record["raw"] = {
                "direct": direct["response"],
                "decompose": decompose["raw"],
                "evolve": evolve["raw"],
                "tests": verify["raw_tests"],
            }
        return record, verdict


__all__ = ["AmrEvolConfig", "AmrEvolStrategy"]
