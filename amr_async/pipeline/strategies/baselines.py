"""The paper's other baselines: `cot` (one-shot chain of thought) and `ansrepair`.

``cot``        one call: think step by step, then code.
``ansrepair``  direct answer → the teacher writes assert tests for it → they run in the
               sandbox → on failure one repair call given the wrong solution and the
               failing tests; the repaired answer is kept when it has code (else R_d).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from amr_async.core import FunctionRecord
from amr_async.pipeline._input import InputItem
from amr_async.pipeline._prompts import PromptTemplate, code_block
from amr_async.pipeline._teacher import JournaledTeacher
from amr_async.pipeline.strategies._common import (
    Coalescer,
    answer_code,
    ask,
    function_extractor,
    parse_asserts,
    run_tests,
    verdict_summary,
)
from amr_async.pipeline.strategies.base import Stage, StageResult
from amr_async.sandbox import Sandbox
from amr_async.teacher.types import OutcomeKind


@dataclass(frozen=True, slots=True)
class CallSettings:
    """Model and sampling of every call of a baseline."""

    model: str
    max_tokens: int = 3000
    temperature: float = 0.0

    def kwargs(self) -> dict[str, Any]:
        return {"model": self.model, "max_tokens": self.max_tokens, "temperature": self.temperature}


@dataclass(slots=True)
class _Single:
    """One templated call whose answer is the response (direct, cot)."""

    kind: str
    template: PromptTemplate
    calls: CallSettings

    @property
    def name(self) -> str:
        return self.kind

    async def run(
        self, item: InputItem, outputs: Mapping[str, Any], teacher: JournaledTeacher
    ) -> StageResult:
        outcome, usage = await ask(
            teacher, self.template, item, self.kind, instruction=item.instruction,
            **self.calls.kwargs(),
        )  # fmt: skip
        return StageResult(
            {"response": outcome.text, "finish_reason": outcome.finish_reason, "usage": usage},
            {"kind": str(outcome.kind)},
        )


def _verdict(finish_reason: str | None) -> str:
    truncated = finish_reason in ("length", "max_tokens")
    return str(OutcomeKind.TRUNCATED if truncated else OutcomeKind.OK)


class CotStrategy:
    """One-shot chain of thought, then code (one call)."""

    name = "cot"

    def __init__(self, calls: CallSettings, templates: Mapping[str, PromptTemplate]) -> None:
        self.calls = calls
        self._stages = (_Single("cot", templates["cot"], calls),)

    @property
    def stages(self) -> Sequence[Stage]:
        return self._stages

    def record(self, item: InputItem, outputs: Mapping[str, Any]) -> tuple[dict[str, Any], str]:
        cot = outputs["cot"]
        verdict = _verdict(cot["finish_reason"])
        return {
            "id": item.item_id,
            "instruction": item.instruction,
            "response": cot["response"],
            "strategy": self.name,
            "model": self.calls.model,
            "verdict": verdict,
            "usage": {"cot": cot["usage"]},
        }, verdict


@dataclass(slots=True)
class _TestAndRepair:
    templates: Mapping[str, PromptTemplate]
    calls: CallSettings
    sandbox: Sandbox
    test_timeout_s: float | None = None  # None: the sandbox's default per test
    name: str = "repair"
    # Parsing batched across the items in flight (see `Coalescer`).
    functions_of: Coalescer[str, list[FunctionRecord]] = field(default_factory=function_extractor)

    async def run(
        self, item: InputItem, outputs: Mapping[str, Any], teacher: JournaledTeacher
    ) -> StageResult:
        direct = outputs["direct"]["response"]
        functions = await self.functions_of(direct)
        if not functions:
            out = {"response": direct, "tests": 0, "check": None, "repaired": False}
            return StageResult(out | {"usage": {}}, {"fallback": "no_code"})
        code = answer_code(direct)
        outcome, test_usage = await ask(
            teacher, self.templates["tests"], item, "tests",
            function_name=functions[-1].name, code=code, **self.calls.kwargs(),
        )  # fmt: skip
        asserts = parse_asserts(outcome.text)
        usage: dict[str, Any] = {"tests": test_usage}
        if not asserts:
            out = {"response": direct, "tests": 0, "check": None, "repaired": False}
            return StageResult(out | {"usage": usage}, {"fallback": "no_tests_parsed"})
        result = await run_tests(self.sandbox, code, asserts, timeout_s=self.test_timeout_s)
        check = verdict_summary(result)
        if result.passed:
            out = {"response": direct, "tests": len(asserts), "check": check, "repaired": False}
            return StageResult(out | {"usage": usage}, {"passed": True})
        failures = "\n".join(
            asserts[f["index"]] for f in check["failed"] if f["index"] < len(asserts)
        )
        fixed, repair_usage = await ask(
            teacher, self.templates["repair"], item, "repair",
            instruction=item.instruction, answer=code_block(code),
            failures=code_block(failures or "\n".join(asserts)), **self.calls.kwargs(),
        )  # fmt: skip
        usage["repair"] = repair_usage
        has_code = bool(await self.functions_of(fixed.text))
        out = {
            "response": fixed.text if has_code else direct,
            "tests": len(asserts),
            "check": check,
            "repaired": has_code,
            "usage": usage,
        }
        return StageResult(out, {"fallback": None if has_code else "no_code_kept_direct"})


class AnsRepairStrategy:
    """Direct answer, teacher-written tests, one repair call on failure.

    Args:
        calls: model and sampling.
        templates: prompt templates by kind.
        sandbox: runs the teacher's tests.
        test_timeout_s: per-test limit in the sandbox (None: the sandbox's default).
    """

    name = "ansrepair"

    def __init__(
        self,
        calls: CallSettings,
        templates: Mapping[str, PromptTemplate],
        sandbox: Sandbox,
        *,
        test_timeout_s: float | None = None,
    ) -> None:
        self.calls = calls
        self._stages = (
            _Single("direct", templates["direct"], calls),
            _TestAndRepair(templates, calls, sandbox, test_timeout_s),
        )

    @property
    def stages(self) -> Sequence[Stage]:
        return self._stages

    def record(self, item: InputItem, outputs: Mapping[str, Any]) -> tuple[dict[str, Any], str]:
        direct, repair = outputs["direct"], outputs["repair"]
        verdict = _verdict(direct["finish_reason"])
        return {
            "id": item.item_id,
            "instruction": item.instruction,
            "response": repair["response"],
            "strategy": self.name,
            "model": self.calls.model,
            "verdict": verdict,
            "repaired": repair["repaired"],
            "tests": repair["tests"],
            "check": repair["check"],
            "usage": {"direct": direct["usage"], **repair["usage"]},
        }, verdict


__all__ = ["AnsRepairStrategy", "CallSettings", "CotStrategy"]
