"""Python source handling for modules: parse, describe, normalise and hash, extract.

The AST hash identifies functions that differ only in local names, docstrings and formatting:
argument and local variable names are renamed to positional placeholders, docstrings dropped,
and the function's own name left out unless asked for. It runs in CPython's `ast`
(about 2,000 functions/s per core, DESIGN.md); callers run it off the event loop.
"""

from __future__ import annotations

import ast
import dataclasses
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

from amr_async import _core
from amr_async.moduledb._errors import UnparseableCode

_FUNCS = (ast.FunctionDef, ast.AsyncFunctionDef)


@dataclass(frozen=True, slots=True)
class FunctionInfo:
    """What the DB records about a parsed function.

    Attributes:
        name: The function's name.
        signature: The `def` line as written, e.g. ``def add(a: int, b: int) -> int:``.
        docstring: The docstring, or "" when there is none.
        ast_hash: Normalised AST hash (hex), see the module docstring.
        node_count: Number of AST nodes, a size measure.
    """

    name: str
    signature: str
    docstring: str
    ast_hash: str
    node_count: int


def parse_function(code: str) -> tuple[ast.Module, ast.FunctionDef | ast.AsyncFunctionDef]:
    """Parse `code` and return its module and first top-level function.

    Raises:
        UnparseableCode: With the line and CPython's message, or when no function is defined.
    """
    try:
        tree = ast.parse(code)
    except SyntaxError as exc:
        raise UnparseableCode(f"line {exc.lineno}: {exc.msg}") from exc
    except ValueError as exc:  # e.g. null bytes
        raise UnparseableCode(str(exc)) from exc
    for node in tree.body:
        if isinstance(node, _FUNCS):
            return tree, node
    raise UnparseableCode("no top-level function definition")


def signature_of(node: ast.FunctionDef | ast.AsyncFunctionDef) -> str:
    """Render a function's `def` line (decorators and body left out)."""
    prefix = "async def" if isinstance(node, ast.AsyncFunctionDef) else "def"
    returns = f" -> {ast.unparse(node.returns)}" if node.returns is not None else ""
    return f"{prefix} {node.name}({ast.unparse(node.args)}){returns}:"


class _Normaliser(ast.NodeTransformer):
    """Rename arguments and locals to placeholders in first-seen order; drop docstrings."""

    def __init__(self) -> None:
        self.names: dict[str, str] = {}

    def _rename(self, name: str) -> str:
        return self.names.setdefault(name, f"_v{len(self.names)}")

    def visit_arg(self, node: ast.arg) -> ast.AST:
        node.arg = self._rename(node.arg)
        node.annotation = None
        return node

    def visit_Name(self, node: ast.Name) -> ast.AST:
        if isinstance(node.ctx, ast.Store) or node.id in self.names:
            node.id = self._rename(node.id)
        return node

    def _strip_docstring(self, node: ast.AST) -> None:
        body = getattr(node, "body", None)
        if (
            isinstance(body, list)
            and body
            and isinstance(body[0], ast.Expr)
            and isinstance(body[0].value, ast.Constant)
            and isinstance(body[0].value.value, str)
        ):
            del body[0]
            if not body:
                body.append(ast.Pass())

    def generic_visit(self, node: ast.AST) -> ast.AST:
        if isinstance(node, (*_FUNCS, ast.ClassDef)):
            self._strip_docstring(node)
        return super().generic_visit(node)


def _hash_in_place(node: ast.FunctionDef | ast.AsyncFunctionDef, include_name: bool) -> str:
    """Normalise `node` in place (see the module docstring) and hash it."""
    if not include_name:
        node.name = "_f"
    node.returns = None
    node.decorator_list = []
    normalised = _Normaliser().visit(node)
    dumped = ast.dump(normalised, annotate_fields=False, include_attributes=False)
    return hashlib.blake2b(dumped.encode(), digest_size=16).hexdigest()


def ast_hash(code: str, *, include_name: bool = False) -> str:
    """Normalised AST hash (hex) of the first top-level function of `code`.

    Raises:
        UnparseableCode: See `parse_function`.
    """
    _, node = parse_function(code)
    return _hash_in_place(node, include_name)


def describe(code: str) -> FunctionInfo:
    """Parse `code` and describe its first top-level function.

    Raises:
        UnparseableCode: See `parse_function`.
    """
    _, node = parse_function(code)
    name = node.name
    signature = signature_of(node)
    docstring = ast.get_docstring(node) or ""
    node_count = sum(1 for _ in ast.walk(node))
    # The tree is ours (parsed just now): normalise it in place rather than copying.
    return FunctionInfo(
        name=name,
        signature=signature,
        docstring=docstring,
        ast_hash=_hash_in_place(node, include_name=False),
        node_count=node_count,
    )


def describe_many(codes: Sequence[str]) -> list[FunctionInfo | UnparseableCode]:
    """`describe` for a batch; a code that does not parse yields its `UnparseableCode`.

    The AST hashes come from the Rust core's `ast_hash` (parallel, GIL released) when the
    extension has it, so every DB uses one hash algorithm with the rest of the project.
    """
    out: list[FunctionInfo | UnparseableCode] = []
    for code in codes:
        try:
            out.append(describe(code))
        except UnparseableCode as exc:
            out.append(exc)
    rust_hash = getattr(_core, "ast_hash", None)
    if rust_hash is None:
        return out
    hashes = rust_hash([c for c in codes], include_name=False)
    for i, (info, h) in enumerate(zip(out, hashes, strict=True)):
        if isinstance(info, FunctionInfo):
            if h is None:
                out[i] = UnparseableCode("the Rust parser refuses it (or it nests too deeply)")
            else:
                out[i] = dataclasses.replace(info, ast_hash=h)
    return out


def stub_of(code: str) -> str:
    """A function's signature and docstring only: the query side of stub → implementation."""
    _, node = parse_function(code)
    doc = ast.get_docstring(node)
    if not doc:
        return signature_of(node)
    return f'{signature_of(node)}\n    """{doc}"""'


def extract_functions(text: str) -> list[str]:
    """Source of every function defined at any depth in a Python file, dedented.

    Methods and nested functions count; a file that does not parse yields nothing
    (the caller reports it).

    Raises:
        UnparseableCode: When `text` does not parse.
    """
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError) as exc:
        line = getattr(exc, "lineno", None)
        raise UnparseableCode(f"line {line}: {exc}") from exc
    lines = text.splitlines(keepends=True)
    out: list[str] = []
    for node in ast.walk(tree):
        if not isinstance(node, _FUNCS) or node.end_lineno is None:
            continue
        start = node.lineno - 1
        segment = lines[start : node.end_lineno]
        if not segment:
            continue
        indent = len(segment[0]) - len(segment[0].lstrip())
        # Lines of a multi-line string may be less indented: those are kept as they are.
        body = "".join(s[indent:] if indent == 0 or s[:indent].isspace() else s for s in segment)
        out.append(body)
    return out
