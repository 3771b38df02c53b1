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
    self_instruct,
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


async def test_self_instruct_uses_the_dedup_it_is_given() -> None:
    # A fresh Dedup is empty, so falsy: `dedup or Dedup()` once swapped the caller's for a
    # default one, and `--max-similarity` did nothing in self-instruct.
    names = iter(["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel"])

    async def send(request: ChatRequest) -> Outcome:
        # Cosine 0.93-0.95 to each other: near duplicates at 0.9, not at 0.999.
        text = (
            "Write a Python function that sorts a list of integers in place and returns the "
            f"number of swaps it made, then logs {next(names)}."
        )
        return Outcome(OutcomeKind.OK, text=text, usage=Usage(10, 10), finish_reason="stop")

    teacher = JournaledTeacher(send, provider=Provider.OPENAI, run=None)
    seeds = [InputItem(f"s{i}", i, text) for i, text in enumerate(_SEEDS)]
    got: list[dict[str, Any]] = []

    async def emit(record: dict[str, Any]) -> None:
        got.append(record)

    dedup = Dedup(0.999)
    report = await self_instruct(
        teacher, load_templates()["instruction"], seeds, n=3,
        settings=TeacherSettings("m", 100, 0.7), emit=emit, dedup=dedup, round_size=4,
    )  # fmt: skip
    assert report.written == 3
    assert report.eliminated == {}
    assert len(dedup) == len(_SEEDS) + 4  # the round's fourth question is kept, not emitted


def test_dedup_exact_and_near() -> None:
    dedup = Dedup(0.9)
    texts = ["Write a function that adds two numbers.", "Write a function to parse a date."]
    assert dedup.sieve([(f"k{i}", t) for i, t in enumerate(texts)]) == [None, None]
    probe = ["WRITE a function, that adds two numbers!", "Write a function that adds two numbers"]
    probe += ["Write a function that multiplies two matrices of floats."]
    near = "Write a function that adds two numbers. Write a function that adds two numbers quickly."
    got = dedup.sieve([(f"p{i}", t) for i, t in enumerate([*probe, near])])
    assert got[:3] == ["duplicate:k0", "duplicate:k0", None]
    assert got[3] is not None
    assert got[3].startswith("near_duplicate:k0:")
    # Within one batch: a text kept earlier in it counts, an eliminated one does not.
    got = dedup.sieve([("a", "Count the vowels in a word."), ("b", "count the VOWELS in a word")])
    assert got == [None, "duplicate:a"]
    assert len(dedup) == 4
    with pytest.raises(ValueError, match="max_similarity"):
        Dedup(0.0)


def _texts_with_near_duplicates(n: int, seed: int) -> list[tuple[str, str]]:
    """`n` random 20-word texts, a third of them copies of an earlier one with 1-3 words
    changed (cosine ~0.85-0.97 in the hash embedding: both sides of 0.9)."""
    rng = np.random.default_rng(seed)
    vocab = [f"w{i}" for i in range(4000)]
    texts: list[str] = []
    for i in range(n):
        if i > 10 and rng.random() < 0.33:
            words = texts[int(rng.integers(i))].split()
            for _ in range(int(rng.integers(1, 4))):
                words[int(rng.integers(len(words)))] = vocab[int(rng.integers(len(vocab)))]
        else:
            words = [vocab[int(x)] for x in rng.integers(len(vocab), size=20)]
        texts.append(" ".join(words))
    return [(f"t{i}", t) for i, t in enumerate(texts)]


def _sequential_scan(entries: list[tuple[str, str]], threshold: float) -> list[float]:
    """Per text, the best cosine (float32) with the texts kept before it (-1: none), and
    whether it was kept: the dedup's meaning, checked one text at a time."""
    vectors = Dedup.embed([t for _, t in entries])
    kept: list[int] = []
    best: list[float] = []
    for i in range(len(entries)):
        score = float((vectors[kept] @ vectors[i]).max()) if kept else -1.0
        best.append(score)
        if score < threshold:
            kept.append(i)
    return best


def test_dedup_sieve_is_the_sequential_scan_whatever_the_batching() -> None:
    entries = _texts_with_near_duplicates(400, seed=3)
    oracle = _sequential_scan(entries, 0.9)
    runs = []
    for size in (1, 7, 64, 400):
        dedup = Dedup(0.9)
        runs.append([v for i in range(0, 400, size) for v in dedup.sieve(entries[i : i + size])])
    assert all(run == runs[0] for run in runs)
    near = [v for v in runs[0] if v is not None]
    assert 60 <= len(near) <= 120  # both sides of the threshold are exercised
    borderline = 0
    for verdict, score in zip(runs[0], oracle, strict=True):
        if abs(score - 0.9) < 2e-3:  # float16 rows: a cosine this close may round either way
            borderline += 1
            continue
        assert (verdict is not None) == (score >= 0.9)
        if verdict is not None:
            assert abs(float(verdict.rsplit(":", 1)[1]) - score) < 2e-3
    assert borderline <= 4


def test_dedup_through_the_trained_index_finds_what_the_scan_finds() -> None:
    entries = _texts_with_near_duplicates(3000, seed=4)
    scan = Dedup(0.9)  # below IVF_MIN_TRAIN: the exact scan
    probed = Dedup(0.9, min_train=500, nprobe=8)  # trains at 500 rows (~90 lists), probes 8
    expected = [v for i in range(0, 3000, 32) for v in scan.sieve(entries[i : i + 32])]
    got = [v for i in range(0, 3000, 32) for v in probed.sieve(entries[i : i + 32])]
    assert probed._index.nlist > 60  # trained, so the 8 lists probed are a small fraction
    found = sum(1 for a, b in zip(expected, got, strict=True) if a is not None and a == b)
    near = sum(1 for v in expected if v is not None)
    assert near > 600
    assert found >= 0.98 * near
    # A miss keeps a text the scan drops, which may then catch a later one the scan keeps.
    extra = sum(1 for a, b in zip(expected, got, strict=True) if a is None and b is not None)
    assert extra <= 0.01 * near
    probed.close()


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
