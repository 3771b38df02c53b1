"""Instruction generation: self-instruct from seeds, and Evol-Instruct's complexity levels.

``self_instruct``  (Wang et al. 2023; the paper: 332 MBPP seeds → 10k) each call shows the
                   teacher 8 example questions (up to 6 seeds and 2 generated so far, drawn
                   by a seeded RNG) and asks for a new one, until `n` new questions are kept.
``evolve``         (Xu et al. 2023, in WizardCoder's code form; the paper: three levels)
                   each question is rewritten `levels` times, each time harder by one
                   heuristic of `EVOL_HEURISTICS` drawn per (item, level); every level is
                   written out, linked to its parent.

A generated question is eliminated (counted by reason, never written) when it is empty, a
refusal, leaks the prompt's scaffolding, is too long, or duplicates a kept question: exactly
after normalisation (case, accents, punctuation, spacing) or nearly (hash-embedding cosine
≥ `max_similarity`); seeds and input questions count as kept. Evol-Instruct's rule for a
failed evolution applies: the chain goes on from the last kept question.

Calls run in rounds through the journaled teacher (see `_generation`): the output depends on
the inputs, the seed and the answers only, and rerunning with the same journal is free.
Temperature 0.7 by default (the paper's).
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from amr_async.pipeline._generation import Dedup, TeacherSettings
from amr_async.pipeline._input import InputItem
from amr_async.pipeline._prompts import PromptTemplate
from amr_async.pipeline._teacher import JournaledTeacher

# WizardCoder's five code-evolution methods (Luo et al. 2023, after Evol-Instruct), with
# their draw weights: the complexity one is to be used "not frequently".
EVOL_HEURISTICS: dict[str, tuple[str, float]] = {
    "constraints": (
        "Add new constraints and requirements to the original problem, adding approximately "
        "10 additional words.",
        1.0,
    ),
    "rarer_requirement": (
        "Replace a commonly used requirement in the programming task with a less common and "
        "more specific one.",
        1.0,
    ),
    "reasoning_steps": (
        "If the original problem can be solved with only a few logical steps, please add more "
        "reasoning steps.",
        1.0,
    ),
    "misdirection": (
        "Provide a piece of erroneous code as a reference to increase misdirection.",
        1.0,
    ),
    "complexity": (
        "Propose higher time or space complexity requirements, but please refrain from doing "
        "so frequently.",
        0.5,
    ),
}

MAX_INSTRUCTION_CHARS = 4000
_LABEL = re.compile(
    r"^\s*(?:#+\s*)?(?:rewritten(?:\s+prompt|\s+question)?|new\s+question|question|"
    r"instruction|new\s+instruction)\s*[:#]\s*",
    re.IGNORECASE,
)
_LEAKS = ("#given prompt#", "#rewritten prompt#", "given prompt:", "### task:")
_REFUSALS = ("sorry", "as an ai", "i cannot", "i can't")


@dataclass(slots=True)
class GenerationReport:
    """What a generation wrote, what it asked, and why questions were eliminated."""

    written: int = 0
    calls: int = 0
    eliminated: dict[str, int] = field(default_factory=dict)

    def eliminate(self, reason: str) -> None:
        kind = reason.split(":", 1)[0]
        self.eliminated[kind] = self.eliminated.get(kind, 0) + 1


def clean_question(text: str) -> tuple[str | None, str | None]:
    """A teacher's answer as a question, or (None, why it is eliminated)."""
    out = _LABEL.sub("", text.strip(), count=1).strip()
    low = out.lower()
    if not out:
        return None, "empty"
    if any(leak in low for leak in _LEAKS):
        return None, "leaked_prompt"
    if low.startswith(_REFUSALS) or ("sorry" in low and len(out) < 80):
        return None, "refusal"
    if len(out) > MAX_INSTRUCTION_CHARS:
        return None, "too_long"
    return out, None


Emit = Callable[[dict[str, Any]], Awaitable[None]]


async def _ask(
    teacher: JournaledTeacher,
    template: PromptTemplate,
    settings: TeacherSettings,
    *,
    item_id: str,
    stage: str,
    sample: int,
    **values: str,
) -> str | None:
    """The answer text of one call, or None when the call did not end in an answer."""
    request = template.request(
        model=settings.model,
        max_tokens=settings.max_tokens,
        temperature=settings.temperature,
        **values,
    )
    # Sampled at temperature > 0: a repeated prompt is a deliberate new sample.
    request = dataclasses.replace(request, sample_index=sample)
    outcome = await teacher.call(request, item_id=item_id, stage=stage)
    return outcome.text if outcome.kind.is_success else None


async def _keep(
    dedup: Dedup, report: GenerationReport, answers: Sequence[tuple[str, str | None]]
) -> list[tuple[str, str]]:
    """Of (id, answer) in order, those kept: cleaned, then not duplicating any kept text."""
    cleaned: list[tuple[str, str]] = []
    for item_id, answer in answers:
        if answer is None:
            report.eliminate("call_failed")
            continue
        text, why = clean_question(answer)
        if text is None:
            report.eliminate(why or "empty")
            continue
        cleaned.append((item_id, text))
    verdicts = await asyncio.to_thread(dedup.sieve, cleaned)
    kept: list[tuple[str, str]] = []
    for entry, why in zip(cleaned, verdicts, strict=True):
        if why is None:
            kept.append(entry)
        else:
            report.eliminate(why)
    return kept


async def self_instruct(
    teacher: JournaledTeacher,
    template: PromptTemplate,
    seeds: Sequence[InputItem],
    *,
    n: int,
    settings: TeacherSettings,
    emit: Emit,
    dedup: Dedup | None = None,
    seed: int = 0,
    round_size: int = 32,
    max_calls: int | None = None,
    machine_examples: int = 2,
) -> GenerationReport:
    """Generate `n` new questions from `seeds`; each kept one is passed to `emit` in order.

    Args:
        teacher: the journaled door to the teacher.
        template: the `instruction` prompt.
        seeds: the seed questions (at least one).
        n: new questions wanted.
        settings: model and sampling.
        emit: receives each kept record (`id`, `instruction`, `source`, `examples`).
        dedup: the dedup state (default: cosine 0.9); seeds are added to it.
        seed: the RNG seed of the example draws.
        round_size: calls sent together.
        max_calls: stop after this many calls (default 4 × n + round_size).
        machine_examples: of the 8 examples, how many are questions generated so far
            (Self-Instruct: 2; the rest are seeds).

    Returns:
        Counts; `written` < `n` when `max_calls` ran out first.
    """
    if not seeds:
        raise ValueError("self-instruct needs at least one seed question")
    if n < 1 or round_size < 1:
        raise ValueError("n and round_size must be >= 1")
    if not 0 <= machine_examples <= 7:
        raise ValueError(f"machine_examples must be in 0..7, got {machine_examples}")
    dedup = Dedup() if dedup is None else dedup  # an empty Dedup is falsy (len 0)
    report = GenerationReport()
    await _keep(dedup, GenerationReport(), [(s.item_id, s.instruction) for s in seeds])
    rng = random.Random(seed)
    generated: list[tuple[str, str]] = []
    budget = max_calls if max_calls is not None else 4 * n + round_size
    while report.written < n and report.calls < budget:
        size = min(round_size, budget - report.calls)
        prompts: list[tuple[str, list[str], str]] = []
        for j in range(report.calls, report.calls + size):
            human = rng.sample(seeds, min(8 - machine_examples, len(seeds)))
            picks = [(s.item_id, s.instruction) for s in human]
            picks += rng.sample(generated, min(machine_examples, len(generated)))
            rng.shuffle(picks)
            examples = "\n".join(f"{k}. {text}" for k, (_, text) in enumerate(picks, start=1))
            prompts.append((f"self-instruct-{j:07d}", [i for i, _ in picks], examples))
        answers = await asyncio.gather(
            *(
                _ask(teacher, template, settings, item_id=item_id, stage="instruction",
                     sample=int(item_id.rsplit("-", 1)[1]), examples=examples)
                for item_id, _, examples in prompts
            )
        )  # fmt: skip
        report.calls += size
        used = {item_id: ids for item_id, ids, _ in prompts}
        kept = await _keep(
            dedup, report, [(p[0], a) for p, a in zip(prompts, answers, strict=True)]
        )
        for item_id, text in kept:
            if report.written >= n:
                break
            generated.append((item_id, text))
            await emit(
                {"id": item_id, "instruction": text, "source": "self-instruct",
                 "examples": used[item_id]}
            )  # fmt: skip
            report.written += 1
    return report


def pick_heuristic(seed: int, item_id: str, level: int) -> str:
    """The evolution method for (item, level): seeded, weighted, independent of batching."""
    rng = random.Random(f"{seed}:{item_id}:{level}")
    names = list(EVOL_HEURISTICS)
    return rng.choices(names, weights=[EVOL_HEURISTICS[k][1] for k in names])[0]


async def evolve(
    teacher: JournaledTeacher,
    template: PromptTemplate,
    items: Sequence[InputItem],
    *,
    levels: int,
    settings: TeacherSettings,
    emit: Emit,
    dedup: Dedup,
    seed: int = 0,
) -> GenerationReport:
    """Evolve one batch of questions through `levels` levels (all of a level's calls together).

    Each kept evolution is passed to `emit` as
    ``{id: "<item>/evol<level>", instruction, level, parent, origin, heuristic}``, in
    (level, input) order. The items' own questions are added to `dedup` first.

    Args:
        teacher: the journaled door to the teacher.
        template: the `evol-instruct` prompt.
        items: the questions to evolve (a batch; call again for the next one).
        levels: rewrites per question (the paper: 3).
        settings: model and sampling.
        emit: receives each kept record.
        dedup: the dedup state shared across batches.
        seed: seed of the heuristic draws.
    """
    if levels < 1:
        raise ValueError(f"levels must be >= 1, got {levels}")
    report = GenerationReport()
    await _keep(dedup, GenerationReport(), [(i.item_id, i.instruction) for i in items])
    # Chain heads: (origin id, id of the last kept question, its text).
    heads = [(i.item_id, i.item_id, i.instruction) for i in items]
    for level in range(1, levels + 1):
        prompts = [
            (origin, parent, text, pick_heuristic(seed, origin, level))
            for origin, parent, text in heads
        ]
        answers = await asyncio.gather(
            *(
                # sample=level: a retry from the same parent is a new sample.
                _ask(teacher, template, settings, item_id=origin, stage=f"evol{level}",
                     sample=level, instruction=text, heuristic=EVOL_HEURISTICS[name][0])
                for origin, _, text, name in prompts
            )
        )  # fmt: skip
        report.calls += len(prompts)
        by_id = {f"{p[0]}/evol{level}": p for p in prompts}
        kept = dict(await _keep(dedup, report, list(zip(by_id, answers, strict=True))))
        next_heads = []
        for new_id, (origin, parent, text, name) in by_id.items():
            if new_id not in kept:
                next_heads.append((origin, parent, text))  # failed: go on from the parent
                continue
            await emit(
                {"id": new_id, "instruction": kept[new_id], "level": level, "parent": parent,
                 "origin": origin, "heuristic": name}
            )  # fmt: skip
            report.written += 1
            next_heads.append((origin, new_id, kept[new_id]))
        heads = next_heads
    return report


__all__ = [
    "EVOL_HEURISTICS",
    "GenerationReport",
    "clean_question",
    "evolve",
    "pick_heuristic",
    "self_instruct",
]
