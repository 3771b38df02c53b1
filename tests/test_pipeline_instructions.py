"""Instruction generation: self-instruct and Evol-Instruct levels, with dedup and the journal.

Against the emulator (a test double) as real processes, and the chaining logic against a
scripted double at the send seam. No quality is measured: the emulator's questions come
from a bank, not from a model.
"""

from __future__ import annotations

import contextlib
import itertools
import sqlite3
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from amr_async.emulator import Bank, RunningEmulator
from amr_async.pipeline import JournaledTeacher
from amr_async.pipeline._generation import Dedup, TeacherSettings, normalised
from amr_async.pipeline._input import InputItem
from amr_async.pipeline._prompts import load_templates
from amr_async.pipeline.instructions import (
    EVOL_HEURISTICS,
    clean_question,
    evolve,
    pick_heuristic,
)
from amr_async.teacher.types import ChatRequest, Outcome, OutcomeKind, Provider, Usage
from tests.test_pipeline_cli import _cli

_SEEDS = [
    "Write a function that reverses the words of a sentence.",
    "Write a function that returns the n-th Fibonacci number.",
    "Write a function that checks whether a string is a palindrome.",
    "Write a function that merges two sorted lists into one sorted list.",
    "Write a function that counts how often each character occurs in a text.",
    "Write a function that rotates a matrix by ninety degrees.",
    "Write a function that converts a Roman numeral to an integer.",
    "Write a function that finds the longest common prefix of several strings.",
]


def _lines(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(x) for x in path.read_bytes().splitlines()]


def _calls(journal: Path) -> int:
    with contextlib.closing(sqlite3.connect(journal)) as conn:
        return int(conn.execute("SELECT count(*) FROM calls").fetchone()[0])


def _teacher_args(tmp: Path, emu: RunningEmulator) -> list[str]:
    return ["--journal", str(tmp / "j.db"), "--base-url", emu.openai_base_url, "--model", "emu"]


async def test_self_instruct_against_the_emulator_dedups_and_resumes_free(
    tmp_path: Path, emulator: RunningEmulator
) -> None:
    seeds = tmp_path / "seeds.jsonl"
    rows = [orjson.dumps({"id": f"s{i}", "instruction": t}) for i, t in enumerate(_SEEDS)]
    seeds.write_bytes(b"\n".join([*rows, b"{bad json", rows[0]]) + b"\n")
    out = tmp_path / "gen.jsonl"
    # The emulator answers with the bank task named first in the prompt, so generated
    # examples (which name one) would make it repeat them: seeds-only examples here.
    args = ["instructions", "self-instruct", "--seeds", str(seeds), "--n", "24",
            "--output", str(out), "--round-size", "8", "--machine-examples", "0",
            *_teacher_args(tmp_path, emulator)]  # fmt: skip
    rc, stdout, err = await _cli(args)
    assert rc == 3, err  # two bad seed lines: partial
    summary = orjson.loads(stdout.splitlines()[-1])
    assert summary["written"] == 24
    assert summary["rejected_lines"] == 2
    rejects = _lines(Path(f"{out}.rejects.jsonl"))
    assert [r["line"] for r in rejects] == [9, 10]
    assert "duplicate of line 1" in rejects[1]["reason"]
    records = _lines(out)
    assert len(records) == 24
    assert len({r["id"] for r in records}) == 24
    texts = [r["instruction"] for r in records]
    # No exact (normalised) duplicate, none a seed, no pair at or above the cosine cap.
    keys = {normalised(t) for t in texts}
    assert len(keys) == 24
    assert not keys & {normalised(s) for s in _SEEDS}
    vectors = Dedup.embed(texts)
    sims = vectors @ vectors.T
    np.fill_diagonal(sims, 0.0)
    assert float(sims.max()) < 0.9
    for r in records:
        assert r["source"] == "self-instruct"
        assert 1 <= len(r["examples"]) <= 8
    # The emulator repeats itself (164 bank questions): the dedup had work to do.
    assert summary["eliminated"]["duplicate"] >= 1
    assert 24 + sum(summary["eliminated"].values()) <= summary["calls"]
    calls = _calls(tmp_path / "j.db")
    assert calls == summary["calls"]
    # Run again with the same journal: every answer comes from it, the output is the same.
    rc, stdout, err = await _cli(args)
    assert rc == 3, err
    assert _calls(tmp_path / "j.db") == calls
    assert _lines(out) == records


async def test_evolve_against_the_emulator(
    tmp_path: Path, emulator: RunningEmulator, emulator_bank: Bank
) -> None:
    tasks = emulator_bank.tasks[10:16]
    source = tmp_path / "in.jsonl"
    source.write_bytes(
        b"".join(
            orjson.dumps({"id": f"q{i}", "instruction": f"Write `{t.entry_point}(...)`. "
                          f"{t.instruction}"}) + b"\n"
            for i, t in enumerate(tasks)
        )
    )  # fmt: skip
    out = tmp_path / "evol.jsonl"
    rc, stdout, err = await _cli(
        ["instructions", "evolve", "--input", str(source), "--levels", "3",
         "--output", str(out), "--round-size", "4", *_teacher_args(tmp_path, emulator)]
    )  # fmt: skip
    assert rc == 0, err
    summary = orjson.loads(stdout.splitlines()[-1])
    records = _lines(out)
    assert summary["calls"] == 18 == _calls(tmp_path / "j.db")
    # The emulator rewrites a question the same way at every level: level 1 is new, the
    # repeats at levels 2 and 3 are eliminated and the chain stays at level 1.
    assert [r["id"] for r in records] == [f"q{i}/evol1" for i in range(6)]
    assert summary["eliminated"] == {"duplicate": 12}
    for r, t in zip(records, tasks, strict=True):
        assert r["level"] == 1
        assert r["parent"] == r["origin"] == r["id"].split("/")[0]
        assert r["heuristic"] in EVOL_HEURISTICS
        assert t.entry_point in r["instruction"]
        assert "linear time" in r["instruction"]


class _Rewriter:
    """A double at the send seam: appends a sentence naming the heuristic it was asked."""

    def __init__(self) -> None:
        self.calls = 0

    async def send(self, request: ChatRequest) -> Outcome:
        self.calls += 1
        prompt = request.messages[-1].content
        question = prompt.rsplit("Question:\n", 1)[1]
        name = next(k for k, (text, _) in EVOL_HEURISTICS.items() if text in prompt)
        if "zebra" in question and "[constraints]" not in question:
            answer = "I'm sorry, I cannot do that."
        else:
            answer = f"Rewritten: {question} Also satisfy requirement [{name}] number {self.calls}."
        return Outcome(OutcomeKind.OK, text=answer, usage=Usage(10, 10), finish_reason="stop")


async def test_evolve_chains_levels_and_goes_on_from_the_parent_after_an_elimination() -> None:
    double = _Rewriter()
    teacher = JournaledTeacher(double.send, provider=Provider.OPENAI, run=None)
    items = [
        InputItem("a", 1, "Write a function that sorts a list of integers."),
        InputItem("z", 2, "Write a function that counts zebra stripes in an image."),
    ]
    got: list[dict[str, Any]] = []

    async def emit(record: dict[str, Any]) -> None:
        got.append(record)

    report = await evolve(
        teacher, load_templates()["evol-instruct"], items, levels=3,
        settings=TeacherSettings("m", 100, 0.7), emit=emit, dedup=Dedup(0.99), seed=5,
    )  # fmt: skip
    assert report.calls == 6
    a = [r for r in got if r["origin"] == "a"]
    assert [r["id"] for r in a] == ["a/evol1", "a/evol2", "a/evol3"]
    assert [r["parent"] for r in a] == ["a", "a/evol1", "a/evol2"]
    for prev, r in itertools.pairwise([{"instruction": items[0].instruction}, *a]):
        assert r["instruction"].startswith(prev["instruction"])  # built on its parent
        assert r["heuristic"] == pick_heuristic(5, "a", r["level"])
        assert not r["instruction"].startswith("Rewritten")
    z = [r for r in got if r["origin"] == "z"]
    # Refusals are eliminated; the next level starts again from the last kept question.
    assert all(r["parent"] in ("z", *(x["id"] for x in z)) for r in z)
    assert report.eliminated.get("refusal", 0) == 3 - len(z)
    assert report.written == len(got)


def test_dedup_exact_and_near() -> None:
    dedup = Dedup(0.9)
    texts = ["Write a function that adds two numbers.", "Write a function to parse a date."]
    for i, (t, v) in enumerate(zip(texts, Dedup.embed(texts), strict=True)):
        assert dedup.check(t, v) is None
        dedup.add(f"k{i}", t, v)
    probe = ["WRITE a function, that adds two numbers!", "Write a function that adds two numbers"]
    probe += ["Write a function that multiplies two matrices of floats."]
    v = Dedup.embed(probe)
    assert dedup.check(probe[0], v[0]) == "duplicate:k0"
    assert dedup.check(probe[1], v[1]) == "duplicate:k0"
    assert dedup.check(probe[2], v[2]) is None
    near = "Write a function that adds two numbers. Write a function that adds two numbers quickly."
    why = dedup.check(near, Dedup.embed([near])[0])
    assert why is not None
    assert why.startswith("near_duplicate:k0:")
    with pytest.raises(ValueError, match="max_similarity"):
        Dedup(0.0)


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ("Rewritten Prompt: Write f.", ("Write f.", None)),
        ("Question: Write g(x).", ("Write g(x).", None)),
        ("", (None, "empty")),
        ("Sorry, I can't help.", (None, "refusal")),
        ("#Given Prompt#: Write f. #Rewritten Prompt#: Write f.", (None, "leaked_prompt")),
        ("x" * 5000, (None, "too_long")),
    ],
)
def test_clean_question(answer: str, expected: tuple[str | None, str | None]) -> None:
    assert clean_question(answer) == expected
