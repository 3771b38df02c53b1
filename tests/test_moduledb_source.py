"""Parsing, description, AST normalisation and extraction of functions."""

from __future__ import annotations

import pytest

from amr_async.moduledb import UnparseableCode, describe, extract_functions, stub_of


def test_describe_reads_name_signature_docstring() -> None:
    info = describe('def add(a: int, b: int = 2) -> int:\n    """Add."""\n    return a + b\n')
    assert info.name == "add"
    assert info.signature == "def add(a: int, b: int=2) -> int:"
    assert info.docstring == "Add."
    assert info.node_count > 5


def test_hash_ignores_local_names_docstrings_and_function_name() -> None:
    a = describe('def f(x, y):\n    """Doc."""\n    total = x + y\n    return total\n')
    b = describe("def g(p, q):\n    s = p + q\n    return s\n")
    c = describe("def g(p, q):\n    s = p - q\n    return s\n")
    assert a.ast_hash == b.ast_hash
    assert a.ast_hash != c.ast_hash


def test_hash_keeps_globals_and_attributes() -> None:
    a = describe("def f(x):\n    return len(x)\n")
    b = describe("def f(x):\n    return sum(x)\n")
    assert a.ast_hash != b.ast_hash


@pytest.mark.parametrize(
    ("code", "reason"),
    [
        ("def f(:\n    pass\n", "line 1"),
        ("x = 1\n", "no top-level function"),
        ("def f():\n  return 1\n    return 2\n", "line 3"),
    ],
)
def test_unparseable_code_names_the_reason(code: str, reason: str) -> None:
    with pytest.raises(UnparseableCode, match=reason):
        describe(code)


def test_stub_is_signature_and_docstring_only() -> None:
    stub = stub_of('def f(x):\n    """Double it."""\n    return 2 * x\n')
    assert stub == 'def f(x):\n    """Double it."""'
    assert stub_of("def g():\n    return 1\n") == "def g():"


def test_extract_functions_finds_methods_and_nested_dedented() -> None:
    text = (
        "import os\n\n"
        "def top(a):\n    def inner(b):\n        return b\n    return inner(a)\n\n"
        "class C:\n    @property\n    def meth(self):\n        return 1\n"
    )
    found = extract_functions(text)
    names = sorted(describe(code).name for code in found)
    assert names == ["inner", "meth", "top"]
    with pytest.raises(UnparseableCode):
        extract_functions("def broken(:\n")
