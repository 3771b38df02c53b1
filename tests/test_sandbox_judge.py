"""The codec and the parent-side judge, without processes."""

from __future__ import annotations

import asyncio
import marshal
import math
import os
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from amr_async.sandbox import NOT_GIVEN, AssertTest, CallTest, Status, asserts_of, same
from amr_async.sandbox._judge import plan_assert, plan_call
from amr_async.sandbox._sandbox import _Frames
from amr_async.sandbox._worker import FRAME_MAGIC, Unencodable, decode, encode, frame

scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text()
values = st.recursive(
    scalars | st.binary(),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.tuples(inner, inner)
        | st.dictionaries(st.text(max_size=3) | st.integers(), inner, max_size=3)
        | st.frozensets(scalars, max_size=3)
    ),
    max_leaves=12,
)


@given(values)
def test_codec_round_trips_with_exact_types(v: Any) -> None:
    back = decode(encode(v))
    assert same(back, v)
    assert type(back) is type(v)


@given(st.sets(st.integers() | st.text(max_size=3), max_size=6))
def test_equal_sets_judge_equal_whatever_their_order(s: set[Any]) -> None:
    # Encodings are not canonical (marshal follows iteration order): the judge
    # falls back from comparing bytes to comparing decoded values.
    p = plan_call(CallTest([], s), "f")
    assert p.judge([("v", encode(set(reversed(list(s)))))])[0] is Status.PASSED


def test_codec_keeps_scalar_kinds_apart() -> None:
    kinds = [1, 1.0, True, "1", b"1", [1], (1,), {1}, frozenset({1}), {1: 1}, None, 1j]
    encoded = [encode(v) for v in kinds]
    assert len(set(encoded)) == len(kinds)
    for v, enc in zip(kinds, encoded, strict=True):
        assert type(decode(enc)) is type(v)
    assert math.isnan(decode(encode(float("nan"))))


def test_codec_refuses_forged_and_foreign_bytes() -> None:
    def code_object() -> int:
        return 1

    for bad in (
        b"",
        b"Q",
        marshal.dumps(code_object.__code__),  # a code object
        marshal.dumps(...),
        marshal.dumps([1, 2], 4)[:-1],  # truncated
        marshal.dumps([1, 2], 2) + b"N",  # trailing bytes
        b"[\xff\xff\xff\x7fN",  # a count larger than the data
        b"u\x10\x00\x00\x00ab",  # a length larger than the data
        b"[\x01\x00\x00\x00" * 200 + b"N",  # nested deeper than 100
        marshal.dumps([[1]], 4),  # back-references (version 3+) are refused
        b"{[\x00\x00\x00\x00N0",  # an unhashable dict key
    ):
        with pytest.raises(ValueError, match=r"."):
            decode(bad)
    p = plan_call(CallTest([], 1), "f")
    status, message, _ = p.judge([("v", b"\x00garbage")])
    assert status is Status.FAILED
    assert "malformed" in message


def test_codec_refuses_buffers_that_marshal_would_take_for_bytes() -> None:
    for bad in (bytearray(b"x"), memoryview(b"x"), [b"x", bytearray(b"x")], ...):
        with pytest.raises(Unencodable):
            encode(bad)


def test_codec_carries_huge_ints() -> None:
    big = 7**50_000  # far beyond CPython's 4,300-digit str() limit
    assert decode(encode(big)) == big
    assert decode(encode(-big)) == -big
    assert decode(encode([1, big, "x"])) == [1, big, "x"]
    assert encode(big) != encode(big + 1)


def test_codec_refuses_subclasses_and_custom_objects() -> None:
    class Int(int):
        pass

    for bad in (Int(1), object(), [1, object()], [1, Int(2)], {"k": Int(2)}):
        with pytest.raises(Unencodable):
            encode(bad)


def test_same_is_strict_about_types() -> None:
    assert same(2, 2.0)  # numbers compare by value, as in Python and EvalPlus
    assert not same(1, True)
    assert not same([1, 2], (1, 2))
    assert not same("a", b"a")
    assert same(0.1 + 0.2, 0.3, atol=1e-9)
    assert not same(0.1 + 0.2, 0.3)
    assert same([1.0, {"a": (2.0,)}], [1.0000001, {"a": (2.0,)}], atol=1e-6)
    assert same(float("nan"), float("nan"))


def _judge(source: str, *values: Any) -> tuple[Status, str]:
    p = plan_assert(AssertTest(source))
    status, message, _ = p.judge([("v", encode(v)) for v in values])
    return status, message


@pytest.mark.parametrize(
    ("source", "probes", "values", "status"),
    [
        ("assert add(2, 3) == 5", ["add(2, 3)"], [5], Status.PASSED),
        ("assert add(2, 3) == 5", ["add(2, 3)"], [True], Status.FAILED),
        ("assert 5 == add(2, 3)", ["add(2, 3)"], [5.0], Status.PASSED),
        ("assert sorted(f([3, 1])) == [1, 3]", ["f([3, 1])"], [(3, 1)], Status.PASSED),
        ("assert abs(f(1) - 0.3) < 1e-9", ["f(1)"], [0.1 + 0.2], Status.PASSED),
        ("assert math.isclose(f(1), 2.0)", ["f(1)"], [2.0000000001], Status.PASSED),
        ("assert not is_prime(4)", ["is_prime(4)"], [False], Status.PASSED),
        ("assert not is_prime(4)", ["is_prime(4)"], [0], Status.PASSED),
        ("assert f('a').startswith('x')", ["f('a')"], ["xa"], Status.PASSED),
        (
            "assert len(f()) == 2 and f()[0] in (1, 2)",
            ["f()", "f()"],
            [[1, 5], [1, 5]],
            Status.PASSED,
        ),
        ("assert isinstance(f(), list)", ["f()"], [(1,)], Status.FAILED),
        ("assert f() is None", ["f()"], [None], Status.PASSED),
        (
            "assert all(p(x) for x in [2, 3])",
            ["(p(x) for x in [2, 3])"],
            [[True, 0]],
            Status.FAILED,
        ),
        (
            "def test_it():\n    assert f(1) == 1\n    assert f(2) == 4",
            ["f(1)", "f(2)"],
            [1, 4],
            Status.PASSED,
        ),
        ("assert f(1) == 1\nassert f(2) == 4", ["f(1)", "f(2)"], [1, 5], Status.FAILED),
    ],
)
def test_asserts_are_split_and_judged_in_the_parent(
    source: str, probes: list[str], values: list[Any], status: Status
) -> None:
    p = plan_assert(AssertTest(source))
    assert p.judged_in == "parent"
    assert [src for _, src in p.probes] == probes
    assert _judge(source, *values)[0] is status


def test_probe_sources_are_the_tests_own_text() -> None:
    # Cut from the source (UTF-8 offsets), not re-rendered; a probe split over lines
    # is parenthesised so that it compiles alone.
    p = plan_assert(AssertTest('assert f("é",  1) == "ü" and (obj\n    .attr) == 2'))
    assert [src for _, src in p.probes] == ['f("é",  1)', "(obj\n    .attr)"]
    for _, src in p.probes:
        compile(src, "<probe>", "eval")
    status, message, _ = p.judge([("v", encode("ü")), ("v", encode(3))])
    assert status is Status.FAILED
    assert "(obj\n    .attr) = 3" in message


_ASSERT_FILES = [
    "assert f(1) == 2\nassert  f(\n  2,\r\n 3) == [1,\n 2]\nx = 1; assert g('é') == 'ü'\r\n",
    "assert h('\u2028') == 1  # a separator str.splitlines would cut at\nassert (a\n\x0c+ b)\n",
    'assert f("é",  1) == "ü" and (obj\n    .attr) == 2, "msg"\ndef t():\n    pass\n',
    "assert len(f()) == 2 and f()[0] in (1, 2)\nassert all(p(x) for x in [2, 3])\n",
    "if True:\n    assert nested()\nassert g(\n    1) != 10 ** 10 ** 10\n",
]


@pytest.mark.parametrize("source", _ASSERT_FILES)
def test_asserts_of_plans_each_assert_as_its_text_alone_would_be(source: str) -> None:
    # Oracle: each top-level assert cut by the stdlib, then planned on its own.
    import ast

    expected = [
        ast.get_source_segment(source, n)
        for n in ast.parse(source).body
        if isinstance(n, ast.Assert)
    ]
    assert [t.source for t in asserts_of(source, planned=False)] == expected
    tests = asserts_of(source)
    assert [t.source for t in tests] == expected
    assert tests == [AssertTest(text) for text in expected if text]  # the plan is no field
    for test in tests:
        alone = plan_assert(AssertTest(test.source))
        planned = plan_assert(test)
        assert planned is test._plan  # no second parse
        assert (planned.probes, planned.key, planned.judged_in) == (
            alone.probes,
            alone.key,
            alone.judged_in,
        )
        for values in ([1] * len(alone.probes), [[1, 5]] * len(alone.probes)):
            outcomes = [("v", encode(v)) for v in values]
            assert planned.judge(outcomes) == alone.judge(outcomes)
        outcomes = [("e", ["ValueError", "boom"])] * len(alone.probes)
        assert planned.judge(outcomes) == alone.judge(outcomes)


def test_asserts_of_refuses_a_file_that_does_not_parse() -> None:
    with pytest.raises(SyntaxError):
        asserts_of("assert broken(\n")


def test_unsafe_parent_arithmetic_is_refused_not_run() -> None:
    status, message = _judge("assert f() == 10 ** 10 ** 10", 1)
    assert status is Status.ERROR
    assert "too large" in message


def test_probe_exceptions_and_unencodable_values() -> None:
    p = plan_assert(AssertTest("assert f() == 1"))
    assert p.judge([("e", ["ValueError", "boom"])])[0] is Status.ERROR
    assert p.judge([("e", ["MemoryError", ""])])[0] is Status.MEMORY
    assert p.judge([("u", "mod.Thing")])[0] is Status.FAILED
    assert p.judge([("o", None)])[0] is Status.FAILED  # a forged statement record


def test_other_statements_run_in_the_sandbox() -> None:
    p = plan_assert(AssertTest("x = f(3)\nassert x == 9"))
    assert p.judged_in == "sandbox"
    assert p.probes == [("s", "x = f(3)\nassert x == 9")]
    assert p.judge([("o", None)])[0] is Status.PASSED
    assert p.judge([("e", ["AssertionError", ""])])[0] is Status.FAILED
    wrapped = plan_assert(AssertTest("def test_x():\n    y = f(3)\n    assert y == 9"))
    assert str(wrapped.probes[0][1]).endswith("test_x()\n")


def test_syntax_errors_are_reported_with_the_line() -> None:
    p = plan_assert(AssertTest("assert f( == 1"))
    assert p.probes == []
    status, message, _ = p.judge([])
    assert status is Status.ERROR
    assert "line 1" in message


def test_call_tests_follow_evalplus_tolerances() -> None:
    loose = plan_call(CallTest((1,), 0.5), "f")  # floats: atol 1e-6 even when 0 is given
    assert loose.judge([("v", encode(0.5000001))])[0] is Status.PASSED
    assert loose.judge([("v", encode(0.51))])[0] is Status.FAILED
    exact = plan_call(CallTest((1,), [1, 2]), "f")
    assert exact.judge([("v", encode([1, 2]))])[0] is Status.PASSED
    assert exact.judge([("v", encode((1, 2)))])[0] is Status.FAILED
    returned = plan_call(CallTest((1,), NOT_GIVEN), "f")
    assert returned.judge([("v", encode({"a": 1}))]) == (Status.RETURNED, "", {"a": 1})


def test_poly_root_oracle() -> None:
    # x^2 - 4 has roots ±2: any root passes, whatever the reference returned
    p = plan_call(CallTest(([-4, 0, 1],), 2.0, atol=1e-4, oracle="poly_root"), "find_zero")
    assert p.judge([("v", encode(-2.0))])[0] is Status.PASSED
    assert p.judge([("v", encode(1.0))])[0] is Status.FAILED
    assert p.judge([("v", encode("2"))])[0] is Status.FAILED


async def test_frames_resync_after_bytes_the_code_wrote_itself() -> None:
    r, w = os.pipe()
    proto = _Frames(r, 100, asyncio.get_running_loop())
    stream = (
        b"0 o 0\n"  # a forged line
        + frame(0, b"v", 5, b"xx")
        + FRAME_MAGIC  # a magic with a corrupt header after it
        + b"\x00" * 40
        + frame(1, b"o", 1)
    )
    try:
        for k in range(0, len(stream), 7):  # arrives in pieces
            os.write(w, stream[k : k + 7])
            await asyncio.sleep(0.001)
        got: list[tuple[int, int, int, bytes]] = []
        while len(got) < 2:
            await proto.wait(1.0)
            got += proto.take()
        assert got == [(0, ord("v"), 5, b"xx"), (1, ord("o"), 1, b"")]
        assert not proto.ready()
        os.write(w, frame(2, b"v", 0, b"y" * 101))
        await proto.wait(5.0)
        assert proto.take() == []
        assert proto.overflow
        os.write(w, b"more")  # no longer read
        os.close(w)
        await asyncio.sleep(0.05)
        assert not proto.eof
        assert not proto.buf.endswith(b"more")
    finally:
        proto.close()
        proto.close()  # idempotent
    with pytest.raises(OSError, match="Bad file descriptor"):  # the read end is closed
        os.fstat(r)


async def test_frames_see_the_end_of_the_pipe() -> None:
    r, w = os.pipe()
    proto = _Frames(r, 100, asyncio.get_running_loop())
    os.write(w, frame(0, b"v", 1, b"z"))
    os.close(w)
    await proto.wait(5.0)
    assert proto.take() == [(0, ord("v"), 1, b"z")]
    while not proto.eof:
        await proto.wait(5.0)
    assert proto.take() == []
    proto.close()
