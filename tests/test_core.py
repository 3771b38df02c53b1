"""The Rust core through its Python names (amr_async.core), with oracles in Python."""

from __future__ import annotations

import itertools
import os
import signal
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from amr_async import _core, ast_reference, core
from amr_async.function_corpus import evalplus_functions, stdlib_functions

EVALPLUS = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "evalplus"


# --- AST hash: Rust against the Python reference -----------------------------------


def assert_same_as_reference(units: list[str]) -> None:
    got = core.ast_hash(units)
    want = ast_reference.ast_hash(units)
    bad = [u for u, g, w in zip(units, got, want, strict=True) if g != w]
    if bad:
        first = bad[0]
        ref = ast_reference.normal_form(first)
        pytest.fail(
            f"{len(bad)} of {len(units)} differ; first:\n{first}\n"
            f"rust: {core.ast_normal_form(first)}\nref:  {ref and ref[0]}"
        )
    sizes = core.ast_size(units)
    assert sizes == [ast_reference.ast_size_one(u) for u in units]


def test_matches_reference_on_all_evalplus_solutions() -> None:
    units = list(evalplus_functions(EVALPLUS))
    assert len(units) > 500
    assert_same_as_reference(units)
    assert all(h is not None for h in core.ast_hash(units))


def test_matches_reference_on_a_stdlib_sample() -> None:
    # Every 15th function: a deterministic few thousand; bench/core.py sweeps all.
    units = list(itertools.islice(stdlib_functions(), 0, None, 15))
    assert len(units) > 2000
    assert_same_as_reference(units)


SPELLINGS = [
    '''def total(xs):
    """Add them up."""
    acc = 0
    for x in xs:
        acc += x  # running sum
    return acc
''',
    "def add_all(values: list[int]) -> int:\n"
    "\tresult = 0\n\tfor v in values: result += v\n\treturn result",
    "def  g (q) :\n    s=0\n    for item in q :\n        s  +=  item\n    return (s)\n",
]


def test_renamed_and_reformatted_copies_collide() -> None:
    hashes = core.ast_hash(SPELLINGS)
    assert len(set(hashes)) == 1
    assert hashes == ast_reference.ast_hash(SPELLINGS)
    assert len(set(core.ast_hash(SPELLINGS, include_name=True))) == 3
    quotes = ["def f():\n    return 'a' \"b\"", 'def f():\n    return """ab"""']
    assert len(set(core.ast_hash(quotes))) == 1
    numbers = ["def f():\n    return 0x_10 + 1_0.0", "def f():\n    return 16 + 10.0"]
    assert len(set(core.ast_hash(numbers))) == 1


@pytest.mark.parametrize(
    "changed",
    [
        "def total(xs):\n    acc = 0\n    for x in xs:\n        acc -= x\n    return acc",
        "def total(xs):\n    acc = 1\n    for x in xs:\n        acc += x\n    return acc",
        "def total(xs):\n    acc = 0\n    for x in sorted(xs):\n        acc += x\n    return acc",
        "def total(xs):\n    acc = 0\n    for x in xs:\n        acc += x\n    return x",
    ],
)
def test_semantic_changes_do_not_collide(changed: str) -> None:
    assert core.ast_hash([changed]) != core.ast_hash(SPELLINGS[:1])
    assert core.ast_hash([changed]) == ast_reference.ast_hash([changed])


def test_globals_builtins_and_attributes_keep_their_names() -> None:
    a = "def f(x):\n    return len(x.items) + LIMIT"
    for b in [
        "def f(x):\n    return max(x.items) + LIMIT",
        "def f(x):\n    return len(x.values) + LIMIT",
        "def f(x):\n    return len(x.items) + BOUND",
    ]:
        assert core.ast_hash([a]) != core.ast_hash([b])
    recursive = ["def fact(n):\n    return 1 if n < 2 else n * fact(n - 1)"]
    renamed = ["def factorial(k):\n    return 1 if k < 2 else k * factorial(k - 1)"]
    assert core.ast_hash(recursive) == core.ast_hash(renamed)


# A name used before the statement that decides its fate: `global`, `nonlocal` and
# imports keep a name's spelling wherever it appears in the unit, before or after;
# a plain assignment after a use makes it local throughout. (code, spelling kept or
# None, name that must not appear)
LATE_DECLARATIONS = [
    ("def f():\n    y = x\n    global x\n    x = y\n    return x", "'1:x", None),
    ("def f():\n    a = os.sep\n    import os\n    return a", "'2:os", None),
    ("def f():\n    a = j\n    from m import k as j\n    return a", "'1:j", None),
    (
        "def outer():\n    n = 0\n    def inner():\n        m = n\n        nonlocal n\n"
        "        n = m + 1\n    return inner",
        "'1:n",
        None,
    ),
    ("def f(p):\n    print(later)\n    later = p\n    return later", "'5:print", "later"),
]


@pytest.mark.parametrize(
    ("code", "kept", "renamed"), LATE_DECLARATIONS, ids=range(len(LATE_DECLARATIONS))
)
def test_late_declarations_match_reference(code: str, kept: str, renamed: str | None) -> None:
    for include_name in (False, True):
        ref = ast_reference.normal_form(code, include_name)
        assert ref is not None
        assert core.ast_normal_form(code, include_name) == ref[0]
    form = core.ast_normal_form(code)
    assert form is not None
    assert kept in form
    if renamed is not None:
        assert renamed not in form


def test_unparseable_gives_none_and_size_orders_trivial_first() -> None:
    assert core.ast_hash(["def f(:", ""]) == [None, ast_reference.ast_hash_one("")]
    trivial, bigger = core.ast_size(["def x(self):\n    return self.x", SPELLINGS[0]])
    assert trivial is not None
    assert bigger is not None
    assert trivial < bigger
    with pytest.raises(TypeError):
        core.ast_hash("def f(): pass")  # type: ignore[arg-type]


def test_parse_only_and_threads_agree_with_the_hash() -> None:
    """The benchmark's parse floor refuses what the hash refuses; each worker thread's
    arena gives the same hashes as one thread's."""
    units = [
        *itertools.islice(stdlib_functions(), 400),
        "def f(:",
        "x = " + "(" * 3000 + ")" * 3000,
    ]
    one = core.ast_hash(units, threads=1)
    assert core.ast_hash(units, threads=2) == one
    assert core.ast_size(units, threads=2) == core.ast_size(units, threads=1)
    for threads in (1, 2):
        assert _core.ast_parse_only(units, threads=threads) == [h is not None for h in one]


def test_batches_hash_each_code_as_alone() -> None:
    """Codes are hashed in groups (forms staged, BLAKE2b four at a time): group
    boundaries, refused codes and a form too big for the stage change no hash."""
    big = "def f(y):\n" + "".join(f"    x{i} = y + {i}\n" for i in range(3000)) + "    return x1\n"
    form = core.ast_normal_form(big)
    assert form is not None
    assert len(form) > 128 << 10  # bigger than a thread's staging buffer
    units = list(itertools.islice(stdlib_functions(), 150))
    for at in (0, 63, 64, 130):
        units.insert(at, "def f(:")
    units.insert(65, big)
    alone = [core.ast_hash([u], threads=1)[0] for u in units]
    assert alone[65] == ast_reference.ast_hash_one(big)
    assert alone.count(None) == 4
    for threads in (1, 2):
        assert core.ast_hash(units, threads=threads) == alone
        assert core.ast_size(units, threads=threads) == [
            core.ast_size([u], threads=1)[0] for u in units
        ]


def test_parsing_works_in_a_forked_child_after_the_parent_parsed() -> None:
    # The parser threads are kept per process; a forked child has none of the parent's
    # threads, so it must make its own pool rather than wait on the parent's forever.
    codes = ["def f(a):\n    return a\n", "def g(b):\n    return b + 1\n"]
    expected = _core.ast_hash(codes)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through the pipe
        try:
            signal.alarm(20)
            got = [*_core.ast_hash(codes), _core.extract_functions(codes[0])[0].name]
            os.write(write, repr(got).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        out = pipe.read()
    os.waitpid(pid, 0)
    assert out == repr([*expected, "f"])


def test_lone_surrogates_hash_as_their_lossy_utf8() -> None:
    """Text that is not valid UTF-8 is copied lossily (each byte of the surrogate's
    encoding becomes U+FFFD) instead of borrowed; valid text beside it is unaffected."""
    lone = "def f():\n    return '\ud800'"
    lossy = lone.encode("utf-8", "surrogatepass").decode("utf-8", "replace")
    assert lossy.count("\ufffd") == 3
    got = core.ast_hash([lone, lossy, "def g(): return 1"])
    assert got[0] is not None
    assert got[0] == got[1]
    assert got[2] == core.ast_hash(["def g(): return 1"])[0]
    assert _core.ast_parse_only([lone]) == [True]


def test_python312_syntax_is_hashed() -> None:
    new = [
        "def first[T](xs: list[T]) -> T:\n    return xs[0]",
        "def f(a):\n    return f'{a['k']}'",
        "type Pair = tuple[int, int]",
    ]
    assert all(h is not None for h in core.ast_hash(new))


# --- Extraction on messy answers ------------------------------------------------------


def test_extraction_from_a_messy_answer() -> None:
    answer = (
        "Sure! Here is the solution.\r\n\r\n"
        "```python\r\nimport math\r\nfrom typing import List\r\n\r\nSCALE = 2\r\n\r\n"
        "@cache\r\ndef área(rs: List[float]) -> float:\r\n"
        '\t"""Total area.\r\n\r\n\tOf all circles.\r\n\t"""\r\n'
        "\treturn SCALE * sum(math.pi * r ** 2 for r in rs)\r\n```\r\n\r\n"
        "Tests:\r\n\r\n```\r\nclass TestArea:\r\n    async def test_one(self):\r\n"
        "        assert área([1]) > 3\r\n```\r\n\r\n"
        "```python\r\ndef broken(:\r\n    pass\r\n\r\ndef fine():\r\n    return 1\r\n\r\n"
        "```py\r\ndef unterminated(x):\r\n    return x"
    )
    fs = core.extract_functions(answer)
    assert [f.qualname for f in fs] == ["área", "TestArea.test_one", "fine", "unterminated"]
    area, test, fine, last = fs
    assert area.signature == "def área(rs: List[float]) -> float:"
    assert area.docstring == "Total area.\n\nOf all circles."
    assert area.decorators == ["cache"]
    assert area.imports == ["import math", "from typing import List"]
    assert area.globals == ["SCALE = 2"]
    assert (area.start_line, area.end_line, area.block) == (9, 15, 0)
    assert area.source.startswith("@cache\ndef área(")
    assert not area.block_has_error
    assert test.is_method
    assert test.is_async
    assert test.class_name == "TestArea"
    assert fine.block_has_error
    assert fine.block == 2
    # An opening fence with a language inside a block starts a new block (LLMs often
    # forget to close one); the last block is never closed.
    assert last.block == 3
    assert not last.block_has_error
    assert last.start_line == 34
    for f in fs:
        assert core.ast_hash([f.source]) != [None]


def test_unfenced_answer_and_prose_only() -> None:
    fs = core.extract_functions("def f(x):\n    return x + 1\n\nclass A:\n    def m(self): pass\n")
    assert [f.qualname for f in fs] == ["f", "A.m"]
    assert core.extract_functions("Just prose, no code.") == []
    assert [len(b) for b in core.extract_functions_batch(["def a(): pass", "", "x"])] == [1, 0, 0]


# --- Robustness: bad input never crashes or hangs -------------------------------------

NESTINGS = [
    "x = " + "[" * 5000 + "]" * 5000,
    "x = " + "(" * 5000 + "1" + ")" * 5000,
    "x = " + "-" * 5000 + "1",
    "x = " + "not " * 5000 + "y",
    "x = " + "1 + " * 5000 + "1",
    "x = " + "a if b else " * 5000 + "c",
    "x = " + "lambda: " * 5000 + "1",
    "x = " + "2 ** " * 5000 + "2",
    "x = " + "f'{" * 5000 + "1" + "}'" * 5000,
    "".join(" " * i + "if x:\n" for i in range(5000)) + " " * 5000 + "pass\n",
    "def f():\n    return " + "g(" * 5000 + ")" * 5000,
]


@pytest.mark.parametrize("code", NESTINGS, ids=range(len(NESTINGS)))
def test_deep_nesting_is_refused_or_hashed_never_crashes(code: str) -> None:
    for result in (core.ast_hash([code]), core.ast_size([code])):
        assert len(result) == 1
    core.extract_functions(f"```python\n{code}\n```")


def test_ten_megabyte_inputs() -> None:
    flat = "def f(x):\n    return x\n" * 450_000  # ~10 MB of real functions
    assert len(flat) > 10_000_000
    assert len(core.extract_functions(flat)) == 450_000
    deep = "x = " + "[" * 5_000_000 + "]" * 5_000_000
    assert core.ast_hash([deep]) == [None]
    assert core.extract_functions(deep) == []
    core.count_tokens([flat[:2_000_000]], "cl100k_base")
    assert core.hash_embed([flat]).shape == (1, 384)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(alphabet=st.characters(exclude_categories=()), max_size=400))
def test_arbitrary_text_including_lone_surrogates(text: str) -> None:
    codes = [text, "def f():\n" + text, "```python\n" + text]
    assert len(core.ast_hash(codes)) == 3
    assert len(core.ast_size(codes)) == 3
    core.extract_functions(text)
    core.extract_functions_batch(codes)
    assert core.count_tokens(codes, "o200k_base")[0] >= 0
    assert np.isfinite(core.hash_embed(codes)).all()


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=300))
def test_non_utf8_bytes_decoded_with_surrogateescape(raw: bytes) -> None:
    text = raw.decode("utf-8", "surrogateescape")
    core.extract_functions(text)
    core.ast_hash([text])
    core.count_tokens([text], "cl100k_base")


# --- Top-k against NumPy --------------------------------------------------------------


def numpy_topk(q: np.ndarray, m: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    scores = (q.astype(np.float64) @ m.astype(np.float64).T).astype(np.float32)
    # Stable sort on -score keeps lower indices first among ties.
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, order, axis=1), order


@pytest.mark.parametrize("dtype", ["float32", "float16", "int8"])
@pytest.mark.parametrize(
    ("nq", "n", "d", "k"), [(1, 1, 1, 1), (7, 3000, 384, 10), (5, 999, 33, 50)]
)
def test_topk_agrees_with_numpy(dtype: str, nq: int, n: int, d: int, k: int) -> None:
    rng = np.random.default_rng(n + d)
    q = rng.standard_normal((nq, d)).astype(np.float32)
    scales = None
    if dtype == "int8":
        m = rng.integers(-127, 128, size=(n, d), dtype=np.int8)
        scales = rng.uniform(0.001, 0.01, size=n).astype(np.float32)
        decoded = m.astype(np.float32) * scales[:, None]
    else:
        m = rng.standard_normal((n, d)).astype(dtype)
        decoded = m.astype(np.float32)
    scores, idx = core.topk(q, m, k, scales)
    want_scores, want_idx = numpy_topk(q, decoded, k)
    assert scores.shape == idx.shape == (nq, min(k, n))
    assert scores.dtype == np.float32
    assert idx.dtype == np.int64
    np.testing.assert_allclose(scores, want_scores, rtol=1e-4, atol=1e-4)
    # Indices agree except where two scores are within float rounding of each other.
    exact = np.take_along_axis((q @ decoded.T), idx, axis=1)
    np.testing.assert_allclose(exact, want_scores, rtol=1e-4, atol=1e-4)
    assert (idx == want_idx).mean() > 0.99


def test_topk_ties_clipping_and_empty() -> None:
    m = np.ones((5000, 4), dtype=np.float32)
    _, idx = core.topk(np.ones((2, 4), dtype=np.float32), m, 3)
    assert idx.tolist() == [[0, 1, 2], [0, 1, 2]]
    s, idx = core.topk(np.ones((1, 4), dtype=np.float32), m[:2], 10)
    assert idx.shape == (1, 2)
    s, idx = core.topk(np.ones((3, 4), dtype=np.float32), np.zeros((0, 4), np.float32), 5)
    assert s.shape == idx.shape == (3, 0)
    strided = np.ones((10, 8), dtype=np.float32)[:, ::2]  # not C-contiguous: copied
    assert core.topk(np.ones((1, 4), np.float32), strided, 1)[1].tolist() == [[0]]


def test_topk_refuses_bad_input() -> None:
    q = np.ones((1, 4), dtype=np.float32)
    with pytest.raises(ValueError, match="dimension"):
        core.topk(q, np.ones((3, 5), np.float32), 1)
    with pytest.raises(ValueError, match="scales"):
        core.topk(q, np.ones((3, 4), np.int8), 1)
    with pytest.raises(ValueError, match="scales"):
        core.topk(q, np.ones((3, 4), np.int8), 1, np.ones(2, np.float32))
    with pytest.raises(TypeError, match="matrix"):
        core.topk(q, np.ones((3, 4), np.float64), 1)


# --- Embedder and token counts -----------------------------------------------------------


def test_hash_embed_is_normalised_deterministic_and_topical() -> None:
    texts = [
        "def sort_items(items):\n    '''Sort the items.'''\n    return sorted(items)",
        "def sortValues(values): return sorted(values)",
        "def read_json(path):\n    with open(path) as fh:\n        return json.load(fh)",
        "123 + 456",
    ]
    v = core.hash_embed(texts)
    assert v.shape == (4, 384)
    assert v.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(v[:3], axis=1), 1.0, rtol=1e-5)
    assert not v[3].any()
    np.testing.assert_array_equal(v, core.hash_embed(texts))
    assert v[0] @ v[1] > v[0] @ v[2] + 0.1
    assert core.hash_embed([], dim=16).shape == (0, 16)
    lone = ["\ud800 surrogate_name"]  # not encodable as UTF-8: replaced, not refused
    assert core.hash_embed(lone).shape == (1, 384)
    assert core.count_tokens(lone, "cl100k_base")[0] > 0
    assert core.ast_hash(lone) == [None]
    with pytest.raises(ValueError, match="dim"):
        core.hash_embed(["x"], dim=0)


def test_count_tokens_offline() -> None:
    text = "tiktoken is great!"
    assert core.count_tokens([text, ""], "cl100k_base") == [6, 0]
    assert core.count_tokens([text], "o200k_base") == [6]
    assert core.count_tokens([text], "anthropic_estimate") == [8]  # ceil(1.2 × 6)
    with pytest.raises(ValueError, match="encoding"):
        core.count_tokens([text], "gpt2")
    assert set(core.ENCODINGS) == {"cl100k_base", "o200k_base", "anthropic_estimate"}
