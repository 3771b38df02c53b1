"""`amr-async run --dry-run`: calls, tokens and $ a run would take, before anything is sent.

The input is read the way a run reads it (same validation; rejects are counted, not written).
Prompt tokens are counted exactly (the Rust o200k counter) for the instruction and each
template's fixed text. What no one can know before the teacher answers is the length of its
answers, which later prompts include; the estimate assumes `ASSUMED_ANSWER_TOKENS` per answer
(typical) and also gives the ceiling where every answer uses `max_tokens`, which bounds the $.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from amr_async import core
from amr_async.config import Config
from amr_async.pipeline._input import InputItem, InputReader
from amr_async.pipeline._prompts import load_templates
from amr_async.scheduler import PricingTable
from amr_async.teacher.types import Usage

# A guess, stated in the output: a short code answer with a sentence of explanation.
ASSUMED_ANSWER_TOKENS = 400
_ENCODING = "o200k_base"
_BATCH = 4096

# Per strategy, its teacher calls per item: (prompt kind, placeholders that hold earlier
# answers). Calls that happen only sometimes (ansrepair's repair after failing tests,
# amr-evol's tests for each new function) are counted once per item.
_CALLS: dict[str, tuple[tuple[str, tuple[str, ...]], ...]] = {
    "direct": (("direct", ()),),
    "cot": (("cot", ()),),
    "ansrepair": (("direct", ()), ("tests", ("code",)), ("repair", ("answer", "failures"))),
    "amr-evol": (
        ("direct", ()),
        ("decompose", ("direct_answer",)),
        ("evolve", ("stubs", "modules")),
        ("tests", ("code",)),
    ),
}


@dataclass(slots=True)
class Estimate:
    """What a run would take; `render()` gives the lines `--dry-run` prints."""

    strategy: str
    model: str
    items: int = 0
    rejected: int = 0
    instruction_tokens: int = 0
    calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    input_tokens_ceiling: int = 0
    output_tokens_ceiling: int = 0
    usd: float | None = None
    usd_ceiling: float | None = None
    calls_by_kind: dict[str, int] = field(default_factory=dict)

    def render(self) -> str:
        def dollars(v: float | None) -> str:
            return (
                "unknown (no price for this model: add one with --pricing FILE)"
                if v is None
                else f"${v:,.2f}"
            )

        kinds = ", ".join(f"{k} {n:,}" for k, n in self.calls_by_kind.items())
        return "\n".join(
            [
                f"dry run: {self.strategy} with {self.model}; nothing was sent",
                f"items        {self.items:,} ({self.rejected:,} input lines would be rejected)",
                f"calls        {self.calls:,} ({kinds})",
                f"tokens       {self.input_tokens:,} in / {self.output_tokens:,} out "
                f"(answers assumed ~{ASSUMED_ANSWER_TOKENS} tokens)",
                f"cost         {dollars(self.usd)}",
                f"ceiling      {self.input_tokens_ceiling:,} in / "
                f"{self.output_tokens_ceiling:,} out, {dollars(self.usd_ceiling)} "
                "(every answer at max_tokens)",
                "journal hits (--resume, --cache) are not subtracted: a resumed run costs less",
            ]
        )


def estimate_run(cfg: Config) -> Estimate:
    """Estimate a run of `cfg` over its input (blocking: reads the whole input once).

    Raises:
        ValueError: no input or model is set, or the input cannot be read.
    """
    if cfg.input is None or cfg.model is None:
        raise ValueError("--dry-run needs input and model set")
    templates = load_templates(Path(cfg.prompts) if cfg.prompts else None)
    plan = _CALLS[cfg.strategy]
    fixed = core.count_tokens(
        [templates[kind].system + templates[kind].user.template for kind, _ in plan], _ENCODING
    )
    out = Estimate(cfg.strategy, cfg.model)
    out.calls_by_kind = {kind: 0 for kind, _ in plan}
    with tempfile.TemporaryDirectory() as tmp:  # rejects are counted, not kept
        reader = InputReader(
            Path(cfg.input), Path(tmp) / "rejects", max_line_bytes=cfg.max_line_bytes
        )
        try:
            _read(reader, out)
        finally:
            reader.close()
    pricing = PricingTable.load(cfg.pricing)
    for (kind, answers), base in zip(plan, fixed, strict=True):
        uses_instruction = "$instruction" in templates[kind].user.template
        per_call = base * out.items + (out.instruction_tokens if uses_instruction else 0)
        out.calls_by_kind[kind] = out.items
        out.input_tokens += per_call + len(answers) * ASSUMED_ANSWER_TOKENS * out.items
        out.input_tokens_ceiling += per_call + len(answers) * cfg.max_tokens * out.items
    out.calls = out.items * len(plan)
    answer = min(ASSUMED_ANSWER_TOKENS, cfg.max_tokens)
    out.output_tokens = out.calls * answer
    out.output_tokens_ceiling = out.calls * cfg.max_tokens
    out.usd = pricing.cost(cfg.model, Usage(out.input_tokens, out.output_tokens))
    out.usd_ceiling = pricing.cost(
        cfg.model, Usage(out.input_tokens_ceiling, out.output_tokens_ceiling)
    )
    return out


def _read(reader: InputReader, out: Estimate) -> None:
    while batch := reader.read_batch(_BATCH):
        items = [b for b in batch if isinstance(b, InputItem)]
        out.rejected += len(batch) - len(items)
        out.items += len(items)
        if items:
            texts = [i.instruction for i in items]
            out.instruction_tokens += sum(core.count_tokens(texts, _ENCODING))
