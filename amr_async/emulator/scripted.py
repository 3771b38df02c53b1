"""The scripted teacher: parseable, plausible answers built from real code.

A TEST DOUBLE. Its answers come from a bank of reference solutions, not from a model; no
quality figure may ever be taken from runs against it.

How it reads a prompt
---------------------
The prompt kind is given by a marker line anywhere in the system prompt or the messages::

    ### TASK: <kind>

=================  ==========================================================================
kind               answer
=================  ==========================================================================
``direct``         prose line + a ```python block with a complete solution
``cot``            numbered reasoning steps + a ```python block with a complete solution
``decompose``      a ```python block of 2–3 function stubs: typed signature, docstring with a
                   one-line description, ``Args:`` and ``Returns:``, body ``...``
``evolve``         prose line + a ```python block with a complete, self-contained solution
``repair``         prose line + a ```python block with the corrected solution
``tests``          a ```python block of ``assert`` statements calling the function directly
``instruction``    a new coding question in plain text, naming its function signature
``evol-instruct``  the given question rewritten with an extra constraint
``seed-function``  a ```python block with one complete, documented function
=================  ==========================================================================

No marker means ``direct``; an unknown kind is a 400 error, so a typo in a pipeline prompt
fails loudly. The task is found by the function names in the prompt: first a ``def NAME(``
whose NAME is a bank entry point, then a call in backticks (`` `NAME(`` ), then any bank
entry point written as a word with an underscore in it. When no task matches, a prompt with
a marker gets a task picked by a hash of its text (so pipelines see varied real code), and
a prompt without one gets a generic but valid Python answer. (So a ``tests`` prompt about
a function the bank does not know gets asserts for some other function: they fail, as
tests written for the wrong function should.)

A configurable share of code answers (``bug_rate``) carries an injected bug: the first
comparison of the solution is flipped, or failing that an integer constant is changed.
Whether an answer is buggy depends only on (seed, prompt), so retries agree.
"""

from __future__ import annotations

import ast
import hashlib
import re
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache

from amr_async.emulator.bank import Bank, Task, parse_quietly

KINDS = (
    "direct",
    "cot",
    "decompose",
    "evolve",
    "repair",
    "tests",
    "instruction",
    "evol-instruct",
    "seed-function",
)
_MARKER = re.compile(r"^###\s*TASK:\s*([A-Za-z_-]+)\s*$", re.MULTILINE)
_DEF = re.compile(r"\bdef\s+([A-Za-z_][A-Za-z0-9_]*)\s*\(")
_CALL = re.compile(r"`([A-Za-z_][A-Za-z0-9_]*)\(")
_WORD = re.compile(r"\b[A-Za-z_][A-Za-z0-9]*_[A-Za-z0-9_]+\b")


class UnknownKindError(ValueError):
    """A marker names a kind the scripted teacher does not know."""


@dataclass(slots=True, frozen=True)
class Reading:
    """What the scripted teacher understood of a prompt."""

    kind: str
    task: Task | None
    marked: bool


def read_prompt(text: str, bank: Bank) -> Reading:
    """Find the prompt kind and the bank task it is about.

    Raises:
        UnknownKindError: the marker names an unknown kind.
    """
    match = _MARKER.search(text)
    kind = "direct"
    if match:
        kind = match.group(1).lower().replace("_", "-")
        if kind not in KINDS:
            raise UnknownKindError(
                f"unknown prompt kind {match.group(1)!r} in '### TASK:' marker; "
                f"known: {', '.join(KINDS)}"
            )
    by_entry = bank.by_entry
    task = None
    # finditer, not findall: the scan stops at the first name the bank knows (prompts
    # with retrieved modules run to several kB; this was most of the reading's CPU).
    for pattern in (_DEF, _CALL):
        for found in pattern.finditer(text):
            task = by_entry.get(found.group(1))
            if task is not None:
                return Reading(kind, task, match is not None)
    for found in _WORD.finditer(text):
        task = by_entry.get(found.group())
        if task is not None:
            break
    return Reading(kind, task, match is not None)


def stable_unit(*parts: bytes | str | int) -> float:
    """A uniform draw in [0, 1) that depends only on `parts`."""
    h = hashlib.blake2b(digest_size=8)
    for part in parts:
        if isinstance(part, int):
            part = str(part)
        if isinstance(part, str):
            part = part.encode()
        h.update(part)
        h.update(b"\x1f")
    return int.from_bytes(h.digest(), "big") / 2**64


class ScriptedTeacher:
    """Answers every prompt kind from the bank (see the module docstring).

    Args:
        bank: the tasks.
        seed: decides, with the prompt, which answers carry a bug and which task an
            unmatched prompt gets.
        bug_rate: share of code answers with an injected bug.
    """

    def __init__(self, bank: Bank, *, seed: int = 0, bug_rate: float = 0.0) -> None:
        self.bank = bank
        self.seed = seed
        self.bug_rate = bug_rate

    def answer(self, text: str, question: str) -> str:
        """The answer text.

        Args:
            text: everything the prompt says (system and messages), to find the marker and
                the task in.
            question: the last user message, to hash for picks and bugs.

        Raises:
            UnknownKindError: the marker names an unknown kind.
        """
        reading = read_prompt(text, self.bank)
        task = reading.task
        if task is None and reading.marked:
            tasks = self.bank.tasks
            task = tasks[int(stable_unit(self.seed, "pick", question) * len(tasks))]
        buggy = self.bug_rate > 0 and stable_unit(self.seed, "bug", question) < self.bug_rate
        kind = reading.kind
        if task is None:
            return _generic(kind)
        if kind in ("direct", "evolve", "repair", "seed-function"):
            code = _with_bug(task.solution) if buggy else task.solution
            lead = {
                "direct": "Here is a Python solution.",
                "evolve": "Here is a refined, self-contained solution.",
                "repair": "Here is the corrected solution.",
                "seed-function": "Here is a reusable function.",
            }[kind]
            return f"{lead}\n\n```python\n{code}```\n"
        if kind == "cot":
            code = _with_bug(task.solution) if buggy else task.solution
            return (
                f"Let's think step by step.\n1. Read the inputs of `{task.entry_point}`.\n"
                "2. Handle the edge cases.\n3. Compute and return the result.\n\n"
                f"```python\n{code}```\n"
            )
        if kind == "decompose":
            stubs = _stubs(task.solution, task.entry_point, task.instruction)
            return f"The task splits into these functions:\n\n```python\n{stubs}```\n"
        if kind == "tests":
            asserts = task.asserts or (f"assert callable({task.entry_point})",)
            return "```python\n" + "\n".join(asserts) + "\n```\n"
        if kind == "instruction":
            return f"Write a Python function `{_signature(task)}`. {task.instruction}\n"
        # evol-instruct
        return (
            f"Write a Python function `{_signature(task)}`. {task.instruction} "
            "The solution must run in linear time where possible and must validate its "
            "inputs, raising ValueError on invalid ones.\n"
        )


def _generic(kind: str) -> str:
    if kind == "tests":
        return "```python\nassert solve(3) == 3\nassert solve() is None\n```\n"
    if kind in ("instruction", "evol-instruct"):
        return "Write a Python function `solve(*args)` that returns its first argument.\n"
    if kind == "decompose":
        return (
            "```python\ndef solve(*args: object) -> object:\n"
            '    """Return the first argument, or None.\n\n    Args:\n'
            "        *args: the inputs.\n\n    Returns:\n"
            '        The first input, or None when there is none.\n    """\n    ...\n```\n'
        )
    return (
        "No specific task was recognised; here is a generic answer.\n\n```python\n"
        "def solve(*args: object) -> object:\n"
        '    """Return the first argument, or None."""\n'
        "    return args[0] if args else None\n```\n"
    )


def _signature(task: Task) -> str:
    tree = parse_quietly(task.solution)
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef) and node.name == task.entry_point:
            return f"{node.name}({ast.unparse(node.args)})"
    return f"{task.entry_point}(...)"


# The comparison flips of an injected bug.
_FLIP: dict[type[ast.cmpop], type[ast.cmpop]] = {
    ast.Lt: ast.LtE,
    ast.LtE: ast.Lt,
    ast.Gt: ast.GtE,
    ast.GtE: ast.Gt,
    ast.Eq: ast.NotEq,
    ast.NotEq: ast.Eq,
}


def _preorder(tree: ast.AST, opaque: type[ast.AST] | None = None) -> Iterator[ast.AST]:
    """The nodes in `ast.NodeVisitor` order (depth first, fields in order).

    The children of `opaque` nodes are left out. A plain loop rather than a visitor: a
    visitor's method calls per node made up most of an injected bug's CPU.
    """
    stack: list[ast.AST] = [tree]
    while stack:
        node = stack.pop()
        yield node
        if opaque is None or not isinstance(node, opaque):
            stack.extend(reversed(list(ast.iter_child_nodes(node))))


@lru_cache(maxsize=1024)
def _with_bug(solution: str) -> str:
    """The solution with its first comparison flipped, or failing that its first int bumped.

    "First" in visitor order, not looking inside a comparison for another one.
    """
    tree = parse_quietly(solution)
    for node in _preorder(tree, opaque=ast.Compare):
        if isinstance(node, ast.Compare):
            flip = _FLIP.get(type(node.ops[0]))
            if flip is not None:
                node.ops[0] = flip()
                break
    else:
        for node in _preorder(tree):
            if isinstance(node, ast.Constant) and type(node.value) is int:
                node.value += 1
                break
        else:
            return solution + "\n# (emulator) injected bug: result discarded\n"
    # Nodes changed in place keep their locations, and unparse reads none anyway.
    return ast.unparse(tree) + "\n"


def _doc_summary(node: ast.FunctionDef, fallback: str) -> str:
    doc = ast.get_docstring(node) or ""
    first = doc.split(">>>")[0].split("\n\n")[0]
    text = " ".join(first.split()) or fallback
    return text if len(text) <= 160 else text[:157].rsplit(" ", 1)[0] + "..."


def _stub(node: ast.FunctionDef, summary: str) -> str:
    returns = f" -> {ast.unparse(node.returns)}" if node.returns else ""
    params = [a.arg for a in node.args.posonlyargs + node.args.args + node.args.kwonlyargs]
    lines = [f"def {node.name}({ast.unparse(node.args)}){returns}:", f'    """{summary}', ""]
    if params:
        lines.append("    Args:")
        lines.extend(f"        {p}: input `{p}`." for p in params)
        lines.append("")
    lines += ["    Returns:", f"        The result of {node.name}.", '    """', "    ..."]
    return "\n".join(lines) + "\n"


# Fields of statements, handlers and match cases that hold statements (or handlers, cases).
_BLOCK_NODES = (ast.stmt, ast.excepthandler, ast.match_case)


def _function_defs(tree: ast.Module) -> list[ast.FunctionDef]:
    """The `def`s of `tree` in `ast.walk` order, visiting statements only.

    A `def` is a statement, so only statement lists can hold one: skipping the
    expressions (most of a tree's nodes) leaves the breadth-first order of the
    statements, and so of the `def`s, as `ast.walk` gives it, at a fraction of its
    cost (it was most of a `decompose` answer's CPU).
    """
    found: list[ast.FunctionDef] = []
    todo: deque[ast.AST] = deque([tree])
    while todo:
        node = todo.popleft()
        if isinstance(node, ast.FunctionDef):
            found.append(node)
        for name in node._fields:
            value = getattr(node, name, None)
            if type(value) is list and value and isinstance(value[0], _BLOCK_NODES):
                todo.extend(value)
    return found


@lru_cache(maxsize=1024)
def _stubs(solution: str, entry: str, instruction: str) -> str:
    tree = parse_quietly(solution)
    funcs = _function_defs(tree)
    stubs: list[str] = []
    for node in funcs[:3]:
        fallback = instruction if node.name == entry else f"Helper used by {entry}."
        stubs.append(_stub(node, _doc_summary(node, fallback)))
    if len(stubs) < 2:
        main = next((n for n in funcs if n.name == entry), funcs[0] if funcs else None)
        first = main.args.args[0] if main is not None and main.args.args else None
        if first is not None:
            ann = f": {ast.unparse(first.annotation)}" if first.annotation else ""
            stubs.insert(
                0,
                f"def validate_{entry}_input({first.arg}{ann}) -> bool:\n"
                f'    """Check that the input of {entry} is well formed.\n\n'
                f"    Args:\n        {first.arg}: the value to check.\n\n"
                "    Returns:\n        True when the input can be processed.\n"
                '    """\n    ...\n',
            )
    return "\n\n".join(stubs)
