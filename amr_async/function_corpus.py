"""Real Python functions for equivalence tests and benchmarks of the Rust core.

Two sources, both on the machine: the running interpreter's standard library and the
EvalPlus canonical solutions (HumanEval+ and MBPP+, `jsonl.gz`). Every `def` (nested
ones and methods included) becomes one unit: its lines from the first decorator to
its last line, with the `def` line's indentation removed from every line that has it,
so methods parse on their own.
"""

from __future__ import annotations

import ast
import gzip
import json
import os
import sysconfig
import warnings
from collections.abc import Iterator
from pathlib import Path

__all__ = ["evalplus_functions", "functions_in_source", "stdlib_files", "stdlib_functions"]


def functions_in_source(source: str) -> list[str]:
    """Every function of `source` as standalone text (none if it does not parse)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # invalid escapes in old test files
            tree = ast.parse(source)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return []
    lines = source.splitlines(keepends=True)
    units: list[str] = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        first = min([d.lineno for d in node.decorator_list] + [node.lineno])
        head = lines[first - 1]
        indent = head[: len(head) - len(head.lstrip(" \t"))]
        col = node.decorator_list[0].col_offset - 1 if node.decorator_list else node.col_offset
        if len(indent) != col:  # e.g. `if x: def f(): ...` on one line
            continue
        chunk = lines[first - 1 : node.end_lineno]
        units.append("".join(ln[len(indent) :] if ln.startswith(indent) else ln for ln in chunk))
    return units


def stdlib_files() -> list[Path]:
    """The standard library's `.py` files (site-packages excluded), sorted."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in {"site-packages", "dist-packages"})
        files.extend(Path(dirpath) / f for f in sorted(filenames) if f.endswith(".py"))
    return files


def stdlib_functions() -> Iterator[str]:
    """Every function of the standard library, file by file in sorted order."""
    for path in stdlib_files():
        try:
            source = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        yield from functions_in_source(source)


def evalplus_functions(data_dir: Path) -> Iterator[str]:
    """Every function of the HumanEval+/MBPP+ canonical solutions in `data_dir`."""
    for name in ("HumanEvalPlus.jsonl.gz", "MbppPlus.jsonl.gz"):
        with gzip.open(data_dir / name, "rt", encoding="utf-8") as fh:
            for line in fh:
                row = json.loads(line)
                solution = row["canonical_solution"]
                if name.startswith("HumanEval"):
                    solution = row["prompt"] + solution
                yield from functions_in_source(solution)
