"""Python source handling for modules: parse, describe, normalise and hash, extract.

The AST hash (the Rust core's `ast_hash`) identifies functions that differ only in formatting,
comments, docstrings, annotations and local names; the function's own name is left out.
Callers run all of this off the event loop.
"""

from __future__ import annotations

import ast
import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

from amr_async import _core, _python_ast
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
        tree = _python_ast.parse(code)
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


def _describe_parsed(code: str) -> FunctionInfo:
    """Describe the first function of `code`, hash left empty (filled by `describe_many`)."""
    _, node = parse_function(code)
    return FunctionInfo(
        name=node.name,
        signature=signature_of(node),
        docstring=ast.get_docstring(node) or "",
        ast_hash="",
        node_count=sum(1 for _ in ast.walk(node)),
    )


def describe(code: str) -> FunctionInfo:
    """Parse `code` and describe its first top-level function.

    Raises:
        UnparseableCode: See `parse_function`.
    """
    info = describe_many([code])[0]
    if isinstance(info, UnparseableCode):
        raise info
    return info


def describe_many(codes: Sequence[str]) -> list[FunctionInfo | UnparseableCode]:
    """`describe` for a batch; a code that does not parse yields its `UnparseableCode`.

    Names, signatures and docstrings come from CPython's `ast`; the hashes from the Rust
    core's `ast_hash` (parallel, GIL released), the one hash algorithm of the whole project.
    """
    out: list[FunctionInfo | UnparseableCode] = []
    for code in codes:
        try:
            out.append(_describe_parsed(code))
        except UnparseableCode as exc:
            out.append(exc)
    hashes = _core.ast_hash(list(codes), include_name=False)
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
        tree = _python_ast.parse(text)
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
