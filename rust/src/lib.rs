//! PyO3 bindings for `amr_async._core`. Only conversion lives here: each binding
//! borrows or copies its buffers, releases the GIL for the work, and converts back.
//! The logic is in the plain Rust modules declared below, each with its own tests.

pub mod similarity;

use std::borrow::Cow;

use numpy::{PyArray1, PyArray2, PyArrayMethods, PyReadonlyArray2, PyUntypedArrayMethods};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

/// A contiguous view of a 2-D array: borrowed when C-contiguous, else copied once
/// (a strided scan inside the kernel would cost more than the copy).
fn rows<'a>(a: &'a PyReadonlyArray2<'_, f32>) -> Cow<'a, [f32]> {
    match a.as_slice() {
        Ok(s) => Cow::Borrowed(s),
        Err(_) => Cow::Owned(a.as_array().iter().copied().collect()),
    }
}

/// Cosine similarity of each row of `queries` (q × d) against each row of `matrix`
/// (n × d), as a q × n float32 array. Releases the GIL while computing.
#[pyfunction]
fn cosine_matrix<'py>(
    py: Python<'py>,
    queries: PyReadonlyArray2<'py, f32>,
    matrix: PyReadonlyArray2<'py, f32>,
) -> PyResult<Bound<'py, PyArray2<f32>>> {
    let (q_rows, q_dim) = (queries.shape()[0], queries.shape()[1]);
    let (m_rows, m_dim) = (matrix.shape()[0], matrix.shape()[1]);
    if q_dim != m_dim {
        let err = similarity::ShapeError::DimensionMismatch {
            queries: q_dim,
            matrix: m_dim,
        };
        return Err(PyValueError::new_err(err.to_string()));
    }
    let (q, m) = (rows(&queries), rows(&matrix));
    let out = py
        .detach(|| similarity::cosine_matrix(&q, &m, q_dim))
        .map_err(|e| PyValueError::new_err(e.to_string()))?;
    PyArray1::from_vec(py, out).reshape([q_rows, m_rows])
}

#[pymodule(gil_used = false)]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_function(wrap_pyfunction!(cosine_matrix, m)?)?;
    Ok(())
}
