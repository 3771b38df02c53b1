"""Turning tests into probes, and judging probe values in the parent.

Why: anything computed inside the sandbox can be forged by the code under test
(it can patch the runner, walk the stack, write to the result pipe). So the
sandbox computes only what the code itself must compute, the values of the
calls into it (*probes*), and the parent does the rest:

* ``CallTest``: the probe is ``entry_point(*args)``; the parent compares the
  returned value with the expected one, which never enters the sandbox.
* ``AssertTest`` made only of asserts: each assert is split. Sub-expressions that
  the parent can evaluate safely (literals, arithmetic, comparisons, a whitelist
  of pure builtins such as ``len``/``sorted``/``abs``/``math.isclose`` and
  non-mutating methods of builtin types) stay in the parent; every maximal
  sub-expression that needs the code (``add(2, 3)``, ``obj.attr``, a
  comprehension over calls) becomes a probe. ``assert add(2, 3) == 5`` thus
  runs ``add(2, 3)`` in the sandbox and ``_ == 5`` in the parent.
* Comparisons use strict types: values cross the boundary through
  ``_worker.encode``, which accepts exact builtin types only (an object whose
  ``__eq__`` always returns True is refused, not compared); ``bool`` is never a
  number; ``list`` and ``tuple`` differ; ``int`` and ``float`` compare by value
  as in Python and EvalPlus, with ``atol`` (+ rtol 1e-7) for floats.
* Other test sources (assignments, loops, prints) run whole in the sandbox and
  report ``judged_in="sandbox"``: their verdict is only as trustworthy as the code.

The parent-side evaluator walks the AST itself (no ``eval``) and refuses
operations whose result could be huge (``10 ** 10 ** 9``, ``"x" * 10 ** 12``).
"""

from __future__ import annotations

import ast
import math
import operator
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from amr_async import _python_ast
from amr_async.sandbox import _worker
from amr_async.sandbox._types import NOT_GIVEN, AssertTest, CallTest, Status, Test

# A probe record: ("v", encoded bytes) | ("e", [type, msg]) | ("u", typename) | ("o", None)
Outcome = tuple[str, Any]
Verdict = tuple[Status, str, Any]

_MAX_SIZE = 10_000_000


class JudgeError(Exception):
    """The parent cannot evaluate part of a test (unsupported or unsafe)."""


def same(a: Any, b: Any, atol: float = 0.0) -> bool:
    """Strict equality of two decoded values (see the module docstring)."""
    ta, tb = type(a), type(b)
    if ta is bool or tb is bool:
        return a is b
    if (ta is int or ta is float) and (tb is int or tb is float):
        if a == b:
            return True
        if ta is float and tb is float and a != a and b != b:  # NaN equals NaN here
            return True
        if atol and (ta is float or tb is float):
            return bool(abs(a - b) <= atol + 1e-7 * abs(b))
        return False
    if ta is not tb:
        return False
    if ta is list or ta is tuple:
        return len(a) == len(b) and all(same(x, y, atol) for x, y in zip(a, b, strict=True))
    if ta is dict:
        return a.keys() == b.keys() and all(same(a[k], b[k], atol) for k in a)
    return bool(a == b)


def _is_floats(v: Any) -> bool:
    if type(v) is float:
        return True
    return type(v) in (list, tuple) and bool(v) and all(type(x) is float for x in v)


def _short(v: Any, limit: int = 200) -> str:
    try:
        text = repr(v)
    except ValueError:  # an int beyond CPython's decimal conversion limit
        text = f"<{type(v).__name__} too large to print>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _probe_failure(src: str, outcome: Outcome) -> Verdict | None:
    kind, payload = outcome
    if kind == "e":
        name, msg = payload
        status = Status.MEMORY if name == "MemoryError" else Status.ERROR
        return status, f"{src} raised {name}: {msg}", None
    if kind == "u":
        return (
            Status.FAILED,
            f"{src} returned a {payload}, which has no strict encoding "
            "(only builtin values are compared)",
            None,
        )
    if kind != "v":  # only code that writes to the result pipe itself produces this
        return Status.FAILED, f"{src}: malformed record (kind {kind!r} for a value)", None
    return None


def _decoded(src: str, payload: bytes) -> tuple[Any, Verdict | None]:
    """The value of a "v" record, or the verdict on a record that does not decode."""
    try:
        return _worker.decode(payload), None
    except ValueError as exc:  # only code that writes to the result pipe itself produces this
        return None, (Status.FAILED, f"{src}: malformed value record ({exc})", None)


@dataclass(slots=True)
class Plan:
    """How one test runs: its probes for the child, and how to judge their outcomes."""

    probes: list[tuple[str, str | bytes]]  # (kind, source or encoded arguments)
    judge: Callable[[list[Outcome]], Verdict]
    judged_in: str = "parent"
    key: str | bytes = ""  # what, besides the probes, decides the verdict (for the cache key)


# ---------------------------------------------------------------------------
# CallTest
# ---------------------------------------------------------------------------


def plan_call(test: CallTest, entry_point: str) -> Plan:
    """Plan a `CallTest`: one probe, judged against the expected value."""
    payload = _worker.encode(list(test.args))
    label = f"{entry_point}(...)"
    if test.expected is NOT_GIVEN:

        def judge_returned(outcomes: list[Outcome]) -> Verdict:
            failure = _probe_failure(label, outcomes[0])
            if failure:
                return failure
            value, bad = _decoded(label, outcomes[0][1])
            return bad or (Status.RETURNED, "", value)

        return Plan([("c", payload)], judge_returned, key="returned")

    expected = test.expected
    expected_enc = _worker.encode(expected)
    atol = test.atol
    if atol == 0 and _is_floats(expected):
        atol = 1e-6  # EvalPlus: floats are always compared with a tolerance
    poly_xs = test.args[0] if test.oracle == "poly_root" else None

    def judge_call(outcomes: list[Outcome]) -> Verdict:
        outcome = outcomes[0]
        failure = _probe_failure(label, outcome)
        if failure:
            return failure
        if poly_xs is None and outcome[1] == expected_enc:
            return Status.PASSED, "", None  # identical encodings: nothing to decode
        actual, bad = _decoded(label, outcome[1])
        if bad:
            return bad
        if poly_xs is not None:
            if type(actual) not in (int, float):
                return Status.FAILED, f"expected a number, got {_short(actual)}", actual
            try:
                residual = abs(sum(c * math.pow(actual, i) for i, c in enumerate(poly_xs)))
            except (OverflowError, ValueError) as exc:
                return Status.FAILED, f"poly({_short(actual)}) failed: {exc}", actual
            if residual <= test.atol:
                return Status.PASSED, "", actual
            return Status.FAILED, f"|poly(x)| = {residual:g} > {test.atol:g}", actual
        if same(actual, expected, atol):
            return Status.PASSED, "", actual
        return Status.FAILED, f"expected {_short(expected)}, got {_short(actual)}", actual

    return Plan(
        [("c", payload)], judge_call, key=expected_enc + f"|{test.atol!r}|{test.oracle}".encode()
    )


# ---------------------------------------------------------------------------
# AssertTest
# ---------------------------------------------------------------------------

_TYPES: dict[str, type] = {
    t.__name__: t
    for t in (int, float, str, bool, list, tuple, dict, set, frozenset, bytes, complex, type(None))
}
_TYPES["NoneType"] = type(None)


def _guarded_range(*args: int) -> range:
    r = range(*args)
    if len(r) > _MAX_SIZE:
        raise JudgeError("range too large to evaluate in the parent")
    return r


_FUNCS: dict[str, tuple[Callable[..., Any], frozenset[str]]] = {
    "abs": (abs, frozenset()),
    "len": (len, frozenset()),
    "round": (round, frozenset()),
    "sorted": (sorted, frozenset({"reverse"})),
    "reversed": (lambda x: list(reversed(x)), frozenset()),
    "set": (set, frozenset()),
    "frozenset": (frozenset, frozenset()),
    "list": (list, frozenset()),
    "tuple": (tuple, frozenset()),
    "dict": (dict, frozenset()),
    "sum": (sum, frozenset()),
    "min": (min, frozenset()),
    "max": (max, frozenset()),
    "all": (all, frozenset()),
    "any": (any, frozenset()),
    "int": (int, frozenset()),
    "float": (float, frozenset()),
    "str": (str, frozenset()),
    "bool": (bool, frozenset()),
    "type": (type, frozenset()),
    "isinstance": (isinstance, frozenset()),
    "range": (_guarded_range, frozenset()),
}
_MATH: dict[str, tuple[Callable[..., Any], frozenset[str]]] = {
    "isclose": (math.isclose, frozenset({"rel_tol", "abs_tol"})),
    "sqrt": (math.sqrt, frozenset()),
    "fabs": (math.fabs, frozenset()),
    "floor": (math.floor, frozenset()),
    "ceil": (math.ceil, frozenset()),
    "isnan": (math.isnan, frozenset()),
    "isinf": (math.isinf, frozenset()),
}
_MATH_CONSTS = {"pi": math.pi, "e": math.e, "inf": math.inf, "tau": math.tau}
_STR_METHODS = frozenset(
    {
        "lower", "upper", "strip", "lstrip", "rstrip", "startswith", "endswith", "split",
        "rsplit", "count", "find", "index", "isdigit", "isalpha", "isalnum", "isspace",
        "islower", "isupper", "replace", "join", "splitlines", "title", "capitalize", "swapcase",
    }
)  # fmt: skip
_METHODS: dict[type, frozenset[str]] = {
    str: _STR_METHODS,
    bytes: _STR_METHODS,
    list: frozenset({"count", "index"}),
    tuple: frozenset({"count", "index"}),
    dict: frozenset({"keys", "values", "items", "get"}),
    set: frozenset({"issubset", "issuperset", "isdisjoint", "union", "intersection"}),
    frozenset: frozenset({"issubset", "issuperset", "isdisjoint", "union", "intersection"}),
}
_ALL_METHODS = frozenset().union(*_METHODS.values())


# A line and its end, split as the parser splits (not `str.splitlines`: no \f, \v, ...).
_LINE = re.compile(r"[^\r\n]*(?:\r\n|\r|\n)|[^\r\n]+$")


def _lines_of(source: str) -> list[bytes]:
    """`source`'s lines as UTF-8 (the parser's offsets count bytes)."""
    return [line.encode() for line in _LINE.findall(source)]


def _cut(lines: list[bytes], node: ast.stmt) -> str:
    """`node`'s own text, as `ast.get_source_segment` gives it (without splitting per node)."""
    assert node.end_lineno is not None  # set by the parser
    assert node.end_col_offset is not None
    first, last = node.lineno - 1, node.end_lineno - 1
    start, end = node.col_offset, node.end_col_offset
    if first == last:
        return lines[first][start:end].decode()
    return b"".join([lines[first][start:], *lines[first + 1 : last], lines[last][:end]]).decode()


class _Splitter:
    """Replace every sub-expression that needs the code by a probe placeholder.

    A probe's source is the test's own text of that sub-expression (`ast.unparse`
    had cost ~40% of planning an assert), cut from lines split once; a sub-expression
    split over lines is parenthesised, so it compiles alone in "eval" mode.
    """

    def __init__(self, source: str, lines: list[bytes] | None = None) -> None:
        self.probes: list[str] = []
        self._source = source
        self._lines = lines  # `source` split by `_lines_of`, when the caller has them

    def probe(self, node: ast.expr) -> ast.expr:
        self.probes.append(self._segment(node))
        return ast.Name(id=f"__probe{len(self.probes) - 1}", ctx=ast.Load())

    def _segment(self, node: ast.expr) -> str:
        if node.end_lineno is None or node.end_col_offset is None:
            return ast.unparse(node)  # not from the parser (cannot happen here)
        if self._lines is None:
            self._lines = _lines_of(self._source)
        lines = self._lines
        first, last = node.lineno - 1, node.end_lineno - 1
        if first == last:  # offsets count UTF-8 bytes
            return lines[first][node.col_offset : node.end_col_offset].decode()
        parts = [lines[first][node.col_offset :], *lines[first + 1 : last]]
        parts.append(lines[last][: node.end_col_offset])
        return "(" + b"".join(parts).decode() + ")"

    def split(self, node: ast.expr) -> ast.expr:
        s = self.split
        if isinstance(node, ast.Constant):
            return node
        if isinstance(node, ast.List | ast.Tuple | ast.Set):
            if any(isinstance(e, ast.Starred) for e in node.elts):
                return self.probe(node)
            node.elts = [s(e) for e in node.elts]
            return node
        if isinstance(node, ast.Dict):
            if any(k is None for k in node.keys):
                return self.probe(node)
            node.keys = [s(k) for k in node.keys if k is not None]
            node.values = [s(v) for v in node.values]
            return node
        if isinstance(node, ast.UnaryOp):
            node.operand = s(node.operand)
            return node
        if isinstance(node, ast.BinOp):
            node.left, node.right = s(node.left), s(node.right)
            return node
        if isinstance(node, ast.BoolOp):
            node.values = [s(v) for v in node.values]
            return node
        if isinstance(node, ast.Compare):
            node.left = s(node.left)
            node.comparators = [s(c) for c in node.comparators]
            return node
        if isinstance(node, ast.IfExp):
            node.test, node.body, node.orelse = s(node.test), s(node.body), s(node.orelse)
            return node
        if isinstance(node, ast.Subscript):
            node.value, node.slice = s(node.value), s(node.slice)
            return node
        if isinstance(node, ast.Slice):
            node.lower = s(node.lower) if node.lower else None
            node.upper = s(node.upper) if node.upper else None
            node.step = s(node.step) if node.step else None
            return node
        if isinstance(node, ast.Name) and node.id in _TYPES:
            return node
        if isinstance(node, ast.Attribute) and _is_math(node.value) and node.attr in _MATH_CONSTS:
            return node
        if isinstance(node, ast.Call) and self._safe_call(node):
            if isinstance(node.func, ast.Attribute) and not _is_math(node.func.value):
                node.func.value = s(node.func.value)
            node.args = [s(a) for a in node.args]
            for kw in node.keywords:
                kw.value = s(kw.value)
            return node
        return self.probe(node)

    @staticmethod
    def _safe_call(node: ast.Call) -> bool:
        if any(isinstance(a, ast.Starred) for a in node.args):
            return False
        kws = {kw.arg for kw in node.keywords}
        if None in kws:
            return False
        func = node.func
        if isinstance(func, ast.Name) and func.id in _FUNCS:
            if func.id == "isinstance" and not (len(node.args) == 2 and _type_spec(node.args[1])):
                return False  # a class of the code's own: the whole call runs in the sandbox
            return kws <= _FUNCS[func.id][1]
        if isinstance(func, ast.Attribute):
            if _is_math(func.value):
                return func.attr in _MATH and kws <= _MATH[func.attr][1]
            return func.attr in _ALL_METHODS and not kws
        return False


def _type_spec(node: ast.expr) -> bool:
    if isinstance(node, ast.Tuple):
        return all(_type_spec(e) for e in node.elts)
    return isinstance(node, ast.Name) and node.id in _TYPES


def _is_math(node: ast.expr) -> bool:
    return isinstance(node, ast.Name) and node.id == "math"


def _truthy(v: Any) -> bool:
    return bool(v)  # values are builtin, so bool() runs no foreign code


def _binop(op: ast.operator, a: Any, b: Any) -> Any:
    if (
        isinstance(op, ast.Pow)
        and type(a) is int
        and type(b) is int
        and (b > 10_000 or abs(a).bit_length() * max(b, 0) > 1_000_000)
    ):
        raise JudgeError("power too large to evaluate in the parent")
    if isinstance(op, ast.Mult):
        for seq, n in ((a, b), (b, a)):
            if (
                type(seq) in (str, bytes, list, tuple)
                and type(n) is int
                and len(seq) * n > _MAX_SIZE
            ):
                raise JudgeError("repetition too large to evaluate in the parent")
    if isinstance(op, ast.LShift) and type(b) is int and b > 1_000_000:
        raise JudgeError("shift too large to evaluate in the parent")
    fn = _BINOPS.get(type(op))
    if fn is None:
        raise JudgeError(f"operator {type(op).__name__} is not supported")
    return fn(a, b)


_BINOPS: dict[type, Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
    ast.BitAnd: operator.and_,
    ast.BitOr: operator.or_,
    ast.BitXor: operator.xor,
    ast.LShift: operator.lshift,
    ast.RShift: operator.rshift,
}


def _contains(container: Any, item: Any) -> bool:
    if type(container) in (list, tuple):
        return any(same(item, x) for x in container)
    return item in container


def _compare(op: ast.cmpop, a: Any, b: Any) -> bool:
    if isinstance(op, ast.Eq):
        return same(a, b)
    if isinstance(op, ast.NotEq):
        return not same(a, b)
    if isinstance(op, ast.Lt):
        return bool(a < b)
    if isinstance(op, ast.LtE):
        return bool(a <= b)
    if isinstance(op, ast.Gt):
        return bool(a > b)
    if isinstance(op, ast.GtE):
        return bool(a >= b)
    if isinstance(op, ast.In):
        return _contains(b, a)
    if isinstance(op, ast.NotIn):
        return not _contains(b, a)
    singletons = (None, True, False)
    if not (any(a is x for x in singletons) or any(b is x for x in singletons)):
        raise JudgeError("`is` is only judged against None, True or False")
    return (a is b) if isinstance(op, ast.Is) else (a is not b)


def _eval(node: ast.AST, env: dict[str, Any]) -> Any:
    ev = _eval
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Name):
        return env[node.id] if node.id in env else _TYPES[node.id]
    if isinstance(node, ast.List):
        return [ev(e, env) for e in node.elts]
    if isinstance(node, ast.Tuple):
        return tuple(ev(e, env) for e in node.elts)
    if isinstance(node, ast.Set):
        return {ev(e, env) for e in node.elts}
    if isinstance(node, ast.Dict):
        return {ev(k, env): ev(v, env) for k, v in zip(node.keys, node.values, strict=True) if k}
    if isinstance(node, ast.UnaryOp):
        operand = ev(node.operand, env)
        if isinstance(node.op, ast.Not):
            return not _truthy(operand)
        if isinstance(node.op, ast.USub):
            return -operand
        if isinstance(node.op, ast.UAdd):
            return +operand
        return ~operand
    if isinstance(node, ast.BinOp):
        return _binop(node.op, ev(node.left, env), ev(node.right, env))
    if isinstance(node, ast.BoolOp):
        is_and = isinstance(node.op, ast.And)
        v: Any = None
        for sub in node.values:
            v = ev(sub, env)
            if _truthy(v) != is_and:
                return v
        return v
    if isinstance(node, ast.Compare):
        left = ev(node.left, env)
        for op, comp in zip(node.ops, node.comparators, strict=True):
            right = ev(comp, env)
            if not _compare(op, left, right):
                return False
            left = right
        return True
    if isinstance(node, ast.IfExp):
        return ev(node.body, env) if _truthy(ev(node.test, env)) else ev(node.orelse, env)
    if isinstance(node, ast.Subscript):
        return ev(node.value, env)[ev(node.slice, env)]
    if isinstance(node, ast.Slice):
        return slice(*(ev(p, env) if p else None for p in (node.lower, node.upper, node.step)))
    if isinstance(node, ast.Attribute):
        return _MATH_CONSTS[node.attr]
    if isinstance(node, ast.Call):
        args = [ev(a, env) for a in node.args]
        kwargs = {kw.arg: ev(kw.value, env) for kw in node.keywords if kw.arg}
        func = node.func
        if isinstance(func, ast.Name):
            return _FUNCS[func.id][0](*args, **kwargs)
        assert isinstance(func, ast.Attribute)
        if _is_math(func.value):
            return _MATH[func.attr][0](*args, **kwargs)
        obj = ev(func.value, env)
        if func.attr not in _METHODS.get(type(obj), frozenset()):
            raise JudgeError(f"{type(obj).__name__}.{func.attr} is not judged in the parent")
        return getattr(obj, func.attr)(*args)
    raise JudgeError(f"{type(node).__name__} is not supported")


def _assert_body(tree: ast.Module) -> list[ast.stmt]:
    body = tree.body
    if (
        len(body) == 1
        and isinstance(body[0], ast.FunctionDef)
        and not body[0].args.args
        and not body[0].decorator_list
    ):
        return body[0].body
    return body


def plan_assert(test: AssertTest) -> Plan:
    """Plan an `AssertTest` (see the module docstring); one made by `asserts_of` has its own."""
    if isinstance(test._plan, Plan):
        return test._plan
    try:
        tree = _python_ast.parse(test.source)
    except SyntaxError as exc:
        message = f"test does not parse: {exc.msg} (line {exc.lineno})"
        return Plan([], lambda _: (Status.ERROR, message, None), key=test.source)
    body = _assert_body(tree)
    if not body or not all(isinstance(s, ast.Assert) for s in body):
        return _plan_in_sandbox(test, tree)
    return _plan_asserts(test.source, body, _Splitter(test.source))


def asserts_of(source: str, *, planned: bool = True) -> list[AssertTest]:
    """The top-level `assert` statements of `source`, one `AssertTest` each.

    Each test's source is its statement's own text (what `ast.get_source_segment`
    gives). With `planned`, each test also carries the plan `plan_assert` would make
    from that text (the same probes, key and verdicts), made from this one parse of
    `source`: `Sandbox.run` then parses nothing again, where it would parse every
    assert alone.

    Raises:
        SyntaxError: `source` does not parse.
    """
    tree = _python_ast.parse(source)
    lines: list[bytes] | None = None
    out: list[AssertTest] = []
    for node in tree.body:
        if not isinstance(node, ast.Assert):
            continue
        if lines is None:  # split once: `ast.get_source_segment` splits per node
            lines = _lines_of(source)
        text = _cut(lines, node)
        if not planned:
            out.append(AssertTest(text))
            continue
        # The statement's probes are cut from `source`'s lines at the node's own
        # offsets: the same text as from `text` parsed alone.
        out.append(AssertTest(text, _plan=_plan_asserts(text, [node], _Splitter(text, lines))))
    return out


def _plan_asserts(source: str, body: list[ast.stmt], splitter: _Splitter) -> Plan:
    """The plan of a test made of the asserts `body` (parsed from `source`)."""
    checks: list[tuple[int, ast.expr, int, int]] = []
    for index, stmt in enumerate(body):
        assert isinstance(stmt, ast.Assert)
        first = len(splitter.probes)
        expr = splitter.split(stmt.test)
        checks.append((index, expr, first, len(splitter.probes)))
    probe_srcs = list(splitter.probes)

    def source_of(index: int) -> str:
        # Only messages show an assert's text: unparsed when a verdict needs it (from a
        # fresh parse, as `split` rewrote the tree), not for every test planned.
        stmt = _assert_body(_python_ast.parse(source))[index]
        assert isinstance(stmt, ast.Assert)
        return ast.unparse(stmt.test)

    def judge_asserts(outcomes: list[Outcome]) -> Verdict:
        env: dict[str, Any] = {}
        for i, (src, outcome) in enumerate(zip(probe_srcs, outcomes, strict=True)):
            failure = _probe_failure(src, outcome)
            if failure:
                return failure
            env[f"__probe{i}"], bad = _decoded(src, outcome[1])
            if bad:
                return bad
        last: Any = None
        for index, expr, first, end in checks:
            try:
                ok = _truthy(_eval(expr, env))
            except JudgeError as exc:
                return Status.ERROR, f"assert {source_of(index)}: {exc}", None
            except Exception as exc:  # the test's own logic raised (TypeError, IndexError, …)
                name = type(exc).__name__
                return Status.FAILED, f"assert {source_of(index)} raised {name}: {exc}", None
            values = [env[f"__probe{i}"] for i in range(first, end)]
            last = values[0] if len(values) == 1 else None
            if not ok:
                shown = ", ".join(
                    f"{probe_srcs[i]} = {_short(env[f'__probe{i}'])}" for i in range(first, end)
                )
                return (
                    Status.FAILED,
                    f"assert {source_of(index)} failed" + (f" ({shown})" if shown else ""),
                    last,
                )
        return Status.PASSED, "", last

    return Plan([("x", p) for p in probe_srcs], judge_asserts, key=source)


def _plan_in_sandbox(test: AssertTest, tree: ast.Module) -> Plan:
    source = test.source
    body = tree.body
    if (
        len(body) == 1
        and isinstance(body[0], ast.FunctionDef)
        and body[0].name.startswith("test")
        and not body[0].args.args
    ):
        source = f"{source}\n{body[0].name}()\n"

    def judge_stmt(outcomes: list[Outcome]) -> Verdict:
        kind, payload = outcomes[0]
        if kind == "o":
            return Status.PASSED, "", None
        if kind == "e":
            name, msg = payload
            if name == "AssertionError":
                return Status.FAILED, f"AssertionError: {msg}" if msg else "assertion failed", None
            status = Status.MEMORY if name == "MemoryError" else Status.ERROR
            return status, f"{name}: {msg}", None
        return Status.ERROR, f"unexpected record {kind!r}", None

    return Plan([("s", source)], judge_stmt, judged_in="sandbox", key=source)


def plan(test: Test, entry_point: str | None) -> Plan:
    """Plan any test."""
    if isinstance(test, CallTest):
        assert entry_point is not None  # Job.__post_init__ guarantees it
        return plan_call(test, entry_point)
    return plan_assert(test)
