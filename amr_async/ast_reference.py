"""Pure-Python reference of the AST-normalised hash (stdlib `ast` only).

This module is the specification and the test oracle for the Rust implementation
(`rust/src/asthash.rs`), and the baseline of the speed ratio in `bench/core.py`. Both
must give the same hash for every input CPython's parser accepts.

Normalisation spec (a "unit" is the whole parsed source, usually one function):

1. Parse as a module. Text that does not parse gives no hash (None).
2. Drop the docstring (a first statement that is a plain string expression) of the
   module, of every function and of every class. Comments and formatting are gone
   with the parse.
3. Drop annotations: parameter and return annotations, and the annotation of an
   annotated assignment (its target, value and `simple` flag stay). Type comments
   and source positions are never part of the form.
4. Names. A name is *bound* in the unit when it is a parameter (of any def or
   lambda), a `Store`/`Del` target, a def/class name, an `except ... as` name, a
   match capture, or a type parameter. Bound names are renamed `$0, $1, ...` by
   first appearance in the walk order below, except names declared `global` or
   `nonlocal` anywhere in the unit and names bound by an import, which keep their
   spelling like globals, builtins, attribute names and keyword-argument names.
   With `include_name=True` the names of the unit's top-level defs and classes also
   keep their spelling (and so do references to them, e.g. recursion).
5. Literals by value: strings by their characters (quote style, prefixes, escapes
   and implicit concatenation are gone; a lone surrogate becomes U+FFFD), bytes by
   hex, integers in hex, floats and imaginary parts by Python's `repr`. In
   f-strings adjacent literal parts merge and empty ones vanish (CPython's
   `JoinedStr` does this already).
6. Walk order and output: each node writes its class name (CPython's `ast` names)
   and then its fields in CPython's field order (the table `FIELDS` below), lists
   as `[...]`, absent values as `~`; `type_params` is written only when non-empty
   (so 3.11 and 3.12 parsers agree). Operators write their class name, contexts one
   letter (`L`, `S`, `D`).
7. The hash is BLAKE2b with a 16-byte digest over the UTF-8 of that text (lone
   surrogates pass through), shown as 32 hex characters.

The size measure (`ast_size`) counts the AST nodes written in step 6 (expression,
statement, argument, keyword, alias, comprehension, handler, pattern and operator
nodes), so a bare `return self.x` body is small and callers can set a minimum
before treating two equal hashes as duplicates.
"""

from __future__ import annotations

import ast
import hashlib
import re
import warnings
from collections.abc import Iterable

__all__ = ["FIELDS", "ast_hash", "ast_hash_one", "ast_size_one", "normal_form"]

# Fields written per node, in CPython's order; fields not listed are dropped.
FIELDS: dict[str, tuple[str, ...]] = {
    "Module": ("body",),
    "FunctionDef": ("name", "args", "body", "decorator_list", "type_params"),
    "AsyncFunctionDef": ("name", "args", "body", "decorator_list", "type_params"),
    "ClassDef": ("name", "bases", "keywords", "body", "decorator_list", "type_params"),
    "Return": ("value",),
    "Delete": ("targets",),
    "Assign": ("targets", "value"),
    "TypeAlias": ("name", "type_params", "value"),
    "AugAssign": ("target", "op", "value"),
    "AnnAssign": ("target", "value", "simple"),
    "For": ("target", "iter", "body", "orelse"),
    "AsyncFor": ("target", "iter", "body", "orelse"),
    "While": ("test", "body", "orelse"),
    "If": ("test", "body", "orelse"),
    "With": ("items", "body"),
    "AsyncWith": ("items", "body"),
    "Match": ("subject", "cases"),
    "Raise": ("exc", "cause"),
    "Try": ("body", "handlers", "orelse", "finalbody"),
    "TryStar": ("body", "handlers", "orelse", "finalbody"),
    "Assert": ("test", "msg"),
    "Import": ("names",),
    "ImportFrom": ("module", "names", "level"),
    "Global": ("names",),
    "Nonlocal": ("names",),
    "Expr": ("value",),
    "Pass": (),
    "Break": (),
    "Continue": (),
    "BoolOp": ("op", "values"),
    "NamedExpr": ("target", "value"),
    "BinOp": ("left", "op", "right"),
    "UnaryOp": ("op", "operand"),
    "Lambda": ("args", "body"),
    "IfExp": ("test", "body", "orelse"),
    "Dict": ("keys", "values"),
    "Set": ("elts",),
    "ListComp": ("elt", "generators"),
    "SetComp": ("elt", "generators"),
    "DictComp": ("key", "value", "generators"),
    "GeneratorExp": ("elt", "generators"),
    "Await": ("value",),
    "Yield": ("value",),
    "YieldFrom": ("value",),
    "Compare": ("left", "ops", "comparators"),
    "Call": ("func", "args", "keywords"),
    "FormattedValue": ("value", "conversion", "format_spec"),
    "JoinedStr": ("values",),
    "Constant": ("value",),
    "Attribute": ("value", "attr", "ctx"),
    "Subscript": ("value", "slice", "ctx"),
    "Starred": ("value", "ctx"),
    "Name": ("id", "ctx"),
    "List": ("elts", "ctx"),
    "Tuple": ("elts", "ctx"),
    "Slice": ("lower", "upper", "step"),
    "comprehension": ("target", "iter", "ifs", "is_async"),
    "ExceptHandler": ("type", "name", "body"),
    "arguments": (
        "posonlyargs",
        "args",
        "vararg",
        "kwonlyargs",
        "kw_defaults",
        "kwarg",
        "defaults",
    ),
    "arg": ("arg",),
    "keyword": ("arg", "value"),
    "alias": ("name", "asname"),
    "withitem": ("context_expr", "optional_vars"),
    "match_case": ("pattern", "guard", "body"),
    "MatchValue": ("value",),
    "MatchSingleton": ("value",),
    "MatchSequence": ("patterns",),
    "MatchMapping": ("keys", "patterns", "rest"),
    "MatchClass": ("cls", "patterns", "kwd_attrs", "kwd_patterns"),
    "MatchStar": ("name",),
    "MatchAs": ("pattern", "name"),
    "MatchOr": ("patterns",),
    "TypeVar": ("name", "bound"),
    "ParamSpec": ("name",),
    "TypeVarTuple": ("name",),
}

# Fields holding a bindable name (plain `str`), renamed when the name is local.
_BINDING_FIELDS: dict[str, str] = {
    "FunctionDef": "name",
    "AsyncFunctionDef": "name",
    "ClassDef": "name",
    "arg": "arg",
    "ExceptHandler": "name",
    "MatchStar": "name",
    "MatchAs": "name",
    "MatchMapping": "rest",
    "TypeVar": "name",
    "ParamSpec": "name",
    "TypeVarTuple": "name",
}
_DOCSTRING_OWNERS = (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
_CTX = {ast.Load: "L", ast.Store: "S", ast.Del: "D"}
_OPERATORS = (ast.operator, ast.boolop, ast.unaryop, ast.cmpop)
# A lone surrogate escape ("\ud800") has no UTF-8 form; ruff's parser stores U+FFFD.
_SURROGATE = re.compile("[\ud800-\udfff]")


def _is_docstring(stmt: ast.stmt) -> bool:
    return (
        isinstance(stmt, ast.Expr)
        and isinstance(stmt.value, ast.Constant)
        and isinstance(stmt.value.value, str)
    )


def _bindings(tree: ast.Module, include_name: bool) -> set[str]:
    """Names renamed canonically: bound in the unit, not global/nonlocal/imported."""
    bound: set[str] = set()
    kept: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and not isinstance(node.ctx, ast.Load):
            bound.add(node.id)
        elif isinstance(node, ast.Global | ast.Nonlocal):
            kept.update(node.names)
        elif isinstance(node, ast.alias):
            kept.add(node.asname or node.name.split(".")[0])
        else:
            field = _BINDING_FIELDS.get(type(node).__name__)
            if field is not None:
                value = getattr(node, field)
                if value is not None:
                    bound.add(value)
    if include_name:
        for stmt in tree.body:
            if isinstance(stmt, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                kept.add(stmt.name)
    return bound - kept


class _Writer:
    """Writes the normal form of one unit (spec step 6) and counts its nodes."""

    def __init__(self, local: set[str]) -> None:
        self.local = local
        self.ids: dict[str, int] = {}
        self.out: list[str] = []
        self.nodes = 0

    def name(self, name: str) -> None:
        if name in self.local:
            index = self.ids.setdefault(name, len(self.ids))
            self.out.append(f"${index}")
        else:
            self.out.append(f"'{len(name)}:{name}")

    def constant(self, value: object) -> None:
        out = self.out
        if value is None:
            out.append("N")
        elif value is True:
            out.append("T")
        elif value is False:
            out.append("F")
        elif value is Ellipsis:
            out.append("E")
        elif isinstance(value, str):
            if not value.isascii():
                value = _SURROGATE.sub("\ufffd", value)
            out.append(f"s{len(value)}:{value}")
        elif isinstance(value, bytes):
            out.append(f"b{value.hex()}")
        elif isinstance(value, int):
            out.append(f"i{value:x}")
        elif isinstance(value, float):
            out.append(f"f{value!r}")
        elif isinstance(value, complex):
            out.append(f"j{value.imag!r}")
        else:  # pragma: no cover - the parser makes no other constants
            raise TypeError(f"unexpected constant {value!r}")

    def value(self, value: object) -> None:
        if isinstance(value, ast.AST):
            self.node(value)
        elif isinstance(value, list):
            self.out.append("[")
            for item in value:
                self.value(item)
                self.out.append(",")
            self.out.append("]")
        elif value is None:
            self.out.append("~")
        elif isinstance(value, bool):  # MatchSingleton's True/False
            self.out.append("T" if value else "F")
        elif isinstance(value, str):
            self.out.append(f"'{len(value)}:{value}")
        elif isinstance(value, int):
            self.out.append(f"#{value}")
        else:  # pragma: no cover - no other field types exist
            raise TypeError(f"unexpected field {value!r}")

    def node(self, node: ast.AST) -> None:
        if isinstance(node, ast.expr_context):
            self.out.append(_CTX[type(node)])
            return
        self.nodes += 1
        kind = type(node).__name__
        if isinstance(node, _OPERATORS):
            self.out.append(kind)
            return
        out = self.out
        out.append(kind)
        out.append("(")
        if isinstance(node, ast.Name):
            self.name(node.id)
            out.append(",")
            self.node(node.ctx)
            out.append(",)")
            return
        if isinstance(node, ast.Constant):
            self.constant(node.value)
            out.append(",)")
            return
        binding = _BINDING_FIELDS.get(kind)
        for field in FIELDS[kind]:
            value = getattr(node, field, None)
            if field == "type_params" and not value:
                continue
            if (
                field == "body"
                and isinstance(node, _DOCSTRING_OWNERS)
                and value
                and _is_docstring(value[0])
            ):
                value = value[1:]
            if field == binding and isinstance(value, str):
                self.name(value)
            else:
                self.value(value)
            out.append(",")
        out.append(")")


def normal_form(code: str, include_name: bool = False) -> tuple[str, int] | None:
    """The normalised text of `code` and its node count; None if it does not parse."""
    try:
        with warnings.catch_warnings():
            # Invalid escapes warn (DeprecationWarning, SyntaxWarning from 3.12); they parse.
            warnings.simplefilter("ignore")
            tree = ast.parse(code)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None
    writer = _Writer(_bindings(tree, include_name))
    try:
        writer.node(tree)
    except RecursionError:
        return None
    return "".join(writer.out), writer.nodes - 1  # the Module node is not counted


def ast_hash_one(code: str, include_name: bool = False) -> str | None:
    """The 32-hex-character normalised hash of `code`, or None if it does not parse."""
    form = normal_form(code, include_name)
    if form is None:
        return None
    data = form[0].encode("utf-8", "surrogatepass")
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def ast_size_one(code: str) -> int | None:
    """The number of AST nodes in the normal form of `code`, or None."""
    form = normal_form(code)
    return None if form is None else form[1]


def ast_hash(codes: Iterable[str], include_name: bool = False) -> list[str | None]:
    """`ast_hash_one` over a batch, the same signature as the Rust binding."""
    return [ast_hash_one(code, include_name) for code in codes]
