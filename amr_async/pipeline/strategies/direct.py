"""The paper's "direct" baseline: one teacher call per instruction, its answer is the response."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from amr_async.pipeline._input import InputItem
from amr_async.pipeline._prompts import PromptTemplate, load_templates
from amr_async.pipeline._teacher import JournaledTeacher
from amr_async.pipeline.strategies.base import ItemFailed, Stage, StageResult
from amr_async.teacher.types import ChatRequest, OutcomeKind


@dataclass(slots=True, frozen=True)
class DirectStage:
    """R_d = teacher(I): temperature 0, the paper's system role (template `direct`)."""

    model: str
    template: PromptTemplate
    max_tokens: int = 3000
    temperature: float = 0.0
    name: str = "direct"

    def request(self, item: InputItem) -> ChatRequest:
        return self.template.request(
            model=self.model,
            max_tokens=self.max_tokens,
            temperature=self.temperature,
            instruction=item.instruction,
        )

    async def run(
        self, item: InputItem, outputs: Mapping[str, Any], teacher: JournaledTeacher
    ) -> StageResult:
        outcome = await teacher.call(self.request(item), item_id=item.item_id, stage=self.name)
        if not outcome.kind.is_success:
            raise ItemFailed(f"{self.name}: teacher call ended {outcome.kind}: {outcome.error}")
        return StageResult(
            output={"response": outcome.text, "finish_reason": outcome.finish_reason},
            provenance={"kind": str(outcome.kind), "request_id": outcome.request_id},
        )


class DirectStrategy:
    """One stage; the record is (instruction, response)."""

    name = "direct"

    def __init__(
        self,
        *,
        model: str,
        max_tokens: int = 3000,
        temperature: float = 0.0,
        template: PromptTemplate | None = None,
    ) -> None:
        self.model = model
        self._stage = DirectStage(
            model=model,
            template=template or load_templates()["direct"],
            max_tokens=max_tokens,
            temperature=temperature,
        )

    @property
    def stages(self) -> Sequence[Stage]:
        return (self._stage,)

    def record(self, item: InputItem, outputs: Mapping[str, Any]) -> tuple[dict[str, Any], str]:
        direct = outputs["direct"]
        truncated = direct["finish_reason"] in ("length", "max_tokens")
        verdict = str(OutcomeKind.TRUNCATED if truncated else OutcomeKind.OK)
        record = {
            "id": item.item_id,
            "instruction": item.instruction,
            "response": direct["response"],
            "strategy": self.name,
            "model": self.model,
            "verdict": verdict,
        }
        return record, verdict


__all__ = ["DirectStage", "DirectStrategy", "ItemFailed"]
