"""The binding path: Rust's cosine kernel against NumPy."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from amr_async._core import cosine_matrix


def numpy_cosine(q: np.ndarray, m: np.ndarray) -> np.ndarray:
    qn = np.linalg.norm(q, axis=1, keepdims=True)
    mn = np.linalg.norm(m, axis=1, keepdims=True)
    denom = qn @ mn.T
    with np.errstate(invalid="ignore", divide="ignore"):
        out = (q @ m.T) / denom
    return np.where(denom > 0, out, 0.0).astype(np.float32)


def test_matches_numpy_on_random_data() -> None:
    rng = np.random.default_rng(0)
    q = rng.standard_normal((7, 384), dtype=np.float32)
    m = rng.standard_normal((500, 384), dtype=np.float32)
    got = cosine_matrix(q, m)
    assert got.shape == (7, 500)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, numpy_cosine(q, m), atol=1e-5)


def test_non_contiguous_views_are_accepted() -> None:
    rng = np.random.default_rng(1)
    m = rng.standard_normal((40, 64), dtype=np.float32)
    view = m[::2, :]
    assert not view.flags["C_CONTIGUOUS"]
    np.testing.assert_allclose(cosine_matrix(view, view.T.T), numpy_cosine(view, view), atol=1e-5)


def test_zero_vectors_score_zero() -> None:
    q = np.zeros((1, 4), dtype=np.float32)
    m = np.eye(4, dtype=np.float32)
    assert np.all(cosine_matrix(q, m) == 0.0)


def test_dimension_mismatch_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="dimension mismatch"):
        cosine_matrix(np.ones((1, 3), np.float32), np.ones((2, 4), np.float32))


def test_wrong_dtype_is_refused() -> None:
    with pytest.raises(TypeError):
        cosine_matrix(np.ones((1, 3), np.float64), np.ones((2, 3), np.float64))  # type: ignore[arg-type]


finite = st.floats(-100, 100, allow_nan=False, width=32)


@settings(max_examples=50, deadline=None)
@given(
    st.integers(1, 16).flatmap(
        lambda d: st.tuples(
            arrays(np.float32, st.tuples(st.integers(1, 4), st.just(d)), elements=finite),
            arrays(np.float32, st.tuples(st.integers(0, 9), st.just(d)), elements=finite),
        )
    )
)
def test_agrees_with_numpy_for_any_shape(qm: tuple[np.ndarray, np.ndarray]) -> None:
    q, m = qm
    np.testing.assert_allclose(cosine_matrix(q, m), numpy_cosine(q, m), atol=1e-4)
