"""`ast.parse` that survives CPython 3.11's thread race in the AST constructor.

CPython keeps the AST constructor's recursion depth in per-interpreter state, so two
threads building ASTs at once (one yields the GIL mid-build, e.g. when a garbage
collection runs Python code) leave it unbalanced, and the later `ast.parse` fails with
``SystemError: AST constructor recursion depth mismatch`` although its source is fine
(python/cpython#106905). The engine parses on its event loop (generated tests) and on
worker threads (module descriptions at a merge), so it parses through here: each parse
starts the depth afresh, and one again is enough.
"""

from __future__ import annotations

import ast

_RACE = "AST constructor recursion depth mismatch"
_TRIES = 5


def parse(source: str, filename: str = "<unknown>") -> ast.Module:
    """`ast.parse(source, filename)`, parsed again when another thread's parse raced it.

    Raises:
        SyntaxError, ValueError, RecursionError, MemoryError: as `ast.parse`.
    """
    for _ in range(_TRIES - 1):
        try:
            return ast.parse(source, filename)
        except SystemError as exc:
            if _RACE not in str(exc):
                raise
    return ast.parse(source, filename)
