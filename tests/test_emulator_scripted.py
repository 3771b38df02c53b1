"""The scripted teacher: every prompt kind gives a parseable, plausible answer."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from amr_async.emulator import KINDS, Bank, BankError, ScriptedTeacher
from amr_async.emulator.bank import load_tasks
from amr_async.emulator.scripted import UnknownKindError, _function_defs, _with_bug, read_prompt

CODE = re.compile(r"```python\n(.*?)```", re.DOTALL)
EVALPLUS = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "evalplus"


def _code(text: str) -> str:
    blocks = CODE.findall(text)
    assert len(blocks) == 1, text
    return str(blocks[0])


def _prompt(kind: str, body: str) -> str:
    return f"### TASK: {kind}\n{body}"


def test_bank_has_humaneval(emulator_bank: Bank) -> None:
    assert len(emulator_bank.tasks) == 164
    task = emulator_bank.by_entry["has_close_elements"]
    assert task.task_id == "HumanEval/0"
    assert task.asserts
    assert all(a.startswith("assert has_close_elements(") for a in task.asserts)
    ast.parse(task.solution)


@pytest.mark.parametrize("kind", ["direct", "cot", "evolve", "repair", "seed-function"])
def test_code_kinds_give_the_reference_solution(kind: str, emulator_bank: Bank) -> None:
    teacher = ScriptedTeacher(emulator_bank)
    text = teacher.answer(_prompt(kind, "def below_zero(operations):"), "q")
    code = _code(text)
    namespace: dict[str, object] = {}
    exec(compile(code, "<answer>", "exec"), namespace)  # reference code from HumanEval
    for line in emulator_bank.by_entry["below_zero"].asserts:
        exec(line, namespace)


def test_decompose_gives_typed_stubs_with_docstrings(emulator_bank: Bank) -> None:
    teacher = ScriptedTeacher(emulator_bank)
    text = teacher.answer(_prompt("decompose", "def separate_paren_groups(paren_string)"), "q")
    tree = ast.parse(_code(text))
    funcs = [n for n in tree.body if isinstance(n, ast.FunctionDef)]
    assert 2 <= len(funcs) <= 3
    for f in funcs:
        doc = ast.get_docstring(f)
        assert doc
        assert "Returns:" in doc
        assert f.returns is not None
        assert isinstance(f.body[-1], ast.Expr)  # `...`, no implementation
        assert all(a.annotation is not None for a in f.args.args)
    assert "separate_paren_groups" in {f.name for f in funcs}


def test_tests_kind_gives_asserts(emulator_bank: Bank) -> None:
    teacher = ScriptedTeacher(emulator_bank)
    text = teacher.answer(_prompt("tests", "def truncate_number(number: float) -> float:"), "q")
    tree = ast.parse(_code(text))
    assert tree.body
    assert all(isinstance(s, ast.Assert) for s in tree.body)


def test_instruction_kinds_name_a_signature(emulator_bank: Bank) -> None:
    teacher = ScriptedTeacher(emulator_bank)
    for kind in ("instruction", "evol-instruct"):
        text = teacher.answer(_prompt(kind, "Write a new coding question."), f"seed-{kind}")
        assert "```" not in text
        name = re.search(r"`([a-z_0-9]+)\(", text)
        assert name
        assert name.group(1) in emulator_bank.by_entry
        # The question it produced is recognised as that task when sent back.
        assert read_prompt(_prompt("direct", text), emulator_bank).task is not None


def test_unknown_plain_question_gets_generic_valid_python(emulator_bank: Bank) -> None:
    teacher = ScriptedTeacher(emulator_bank)
    text = teacher.answer("What is the capital of France?", "What is the capital of France?")
    ns: dict[str, object] = {}
    exec(compile(_code(text), "<answer>", "exec"), ns)
    assert callable(ns["solve"])


def test_marked_unmatched_prompt_gets_a_stable_bank_task(emulator_bank: Bank) -> None:
    teacher = ScriptedTeacher(emulator_bank)
    a = teacher.answer(_prompt("direct", "Sort a list of words by length."), "Sort words")
    b = teacher.answer(_prompt("direct", "Sort a list of words by length."), "Sort words")
    assert a == b
    ast.parse(_code(a))


def test_unknown_kind_is_refused(emulator_bank: Bank) -> None:
    with pytest.raises(UnknownKindError, match="known: direct"):
        read_prompt("### TASK: summarise\nhello", emulator_bank)


def test_every_kind_answers(emulator_bank: Bank) -> None:
    teacher = ScriptedTeacher(emulator_bank)
    for kind in KINDS:
        assert teacher.answer(_prompt(kind, "def add(x: int, y: int):"), "q").strip()


def test_bug_rate_injects_parseable_bugs(emulator_bank: Bank) -> None:
    clean = ScriptedTeacher(emulator_bank, seed=1)
    buggy = ScriptedTeacher(emulator_bank, seed=1, bug_rate=1.0)
    differing = 0
    for task in emulator_bank.tasks[:40]:
        prompt = _prompt("direct", f"def {task.entry_point}(")
        good, bad = (
            _code(clean.answer(prompt, task.task_id)),
            _code(buggy.answer(prompt, task.task_id)),
        )
        ast.parse(bad)
        differing += good != bad
    assert differing == 40


def test_bug_rate_share_is_about_right(emulator_bank: Bank) -> None:
    teacher = ScriptedTeacher(emulator_bank, seed=3, bug_rate=0.25)
    clean = ScriptedTeacher(emulator_bank, seed=3)
    prompt = _prompt("direct", "def below_zero(")
    bugs = sum(teacher.answer(prompt, f"q{i}") != clean.answer(prompt, f"q{i}") for i in range(400))
    assert 60 <= bugs <= 140  # 100 expected; a deterministic function of the seed


@pytest.mark.skipif(not EVALPLUS.exists(), reason="EvalPlus data not present")
def test_evalplus_banks_load() -> None:
    bank = Bank.load((EVALPLUS / "HumanEvalPlus.jsonl.gz", EVALPLUS / "MbppPlus.jsonl.gz"))
    assert len(bank.tasks) == 164 + 164 + 378
    mbpp = bank.by_entry["is_not_prime"]
    assert mbpp.asserts
    assert mbpp.instruction.startswith("Write a python function")
    ast.parse(mbpp.solution)


def test_bad_bank_file_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "bank.jsonl"
    path.write_text(
        '{"task_id": "a", "prompt": "", "entry_point": "f", "canonical_solution": ""}\nnot json\n'
    )
    with pytest.raises(BankError, match=r"bank.jsonl:2"):
        load_tasks(path)
    path.write_text('{"task_id": "a"}\n')
    with pytest.raises(BankError, match=r"bank.jsonl:1: field 'prompt'"):
        load_tasks(path)


def test_function_defs_follow_ast_walk_order() -> None:
    # `decompose` stubs the first three defs in `ast.walk` order; the statement-only walk
    # must give the same defs in the same order wherever they nest.
    source = (
        "def a():\n    def inner():\n        pass\n    return inner\n"
        "class K:\n    def method(self):\n        pass\n"
        "if x:\n    def b():\n        pass\nelse:\n    def c():\n        pass\n"
        "try:\n    def d():\n        pass\nexcept E:\n    def e():\n        pass\n"
        "finally:\n    def f():\n        pass\n"
        "for i in y:\n    def g():\n        pass\n"
        "match z:\n    case 1:\n        def h():\n            pass\n"
        "async def skipped():\n    def nested_in_async():\n        pass\n"
        "with m:\n    def w():\n        pass\n"
        "lam = lambda: [q for q in r]\n"
    )
    tree = ast.parse(source)
    expected = [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)]
    got = _function_defs(tree)
    assert [n.name for n in got] == [n.name for n in expected]
    assert len(got) == 12  # every def, nested ones included


def test_reading_takes_the_first_bank_name_of_each_kind(emulator_bank: Bank) -> None:
    # A def of a bank function wins over an earlier call in backticks, which wins over a
    # bare word; the first match of a kind wins within it.
    text = (
        "see `truncate_number(x)` and below_zero here\n"
        "def unknown_helper(x):\n    pass\n"
        "def has_close_elements(numbers, threshold):\n    pass\n"
        "def below_zero(ops):\n    pass\n"
    )
    assert read_prompt(text, emulator_bank).task == emulator_bank.by_entry["has_close_elements"]
    text = "words below_zero then `unknown_fn(1)` then `truncate_number(2)`"
    assert read_prompt(text, emulator_bank).task == emulator_bank.by_entry["truncate_number"]
    text = "no call: unknown_word then below_zero then has_close_elements"
    assert read_prompt(text, emulator_bank).task == emulator_bank.by_entry["below_zero"]
    assert read_prompt("nothing_known here", emulator_bank).task is None


@pytest.mark.parametrize(
    ("source", "buggy"),
    [
        # The first flippable comparison in visitor order, never one inside another.
        (
            "def f(a, b):\n    return a in [b < 1] or a > b\n",
            "def f(a, b):\n    return a in [b < 1] or a >= b\n",
        ),
        (
            "def f(x):\n    if x is None:\n        return x == 1\n",
            "def f(x):\n    if x is None:\n        return x != 1\n",
        ),
        # No comparison to flip: the first int constant (not a bool) goes up by one.
        (
            "def f(x):\n    return x + 2 if True else 3\n",
            "def f(x):\n    return x + 3 if True else 3\n",
        ),
        (
            "def f(x):\n    return x\n",
            "def f(x):\n    return x\n\n# (emulator) injected bug: result discarded\n",
        ),
    ],
)
def test_injected_bug_is_the_first_flip_or_bump(source: str, buggy: str) -> None:
    assert _with_bug.__wrapped__(source) == buggy
