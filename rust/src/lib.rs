//! PyO3 bindings for `amr_async._core`. Only conversion lives here: each binding
//! borrows or copies its buffers, releases the GIL for the work, and converts back.
//! The logic is in the plain Rust modules declared below, each with its own tests.

pub mod arena;
pub mod asthash;
pub mod binary;
pub mod embed;
pub mod extract;
pub mod fastscan;
pub mod ivf;
pub mod probe;
pub mod similarity;
pub mod stack;
pub mod tokens;
pub mod topk;

use std::borrow::Cow;

/// The parser allocates a node per AST element; mimalloc's thread-local free lists
/// make that markedly cheaper than the system allocator on the hashing hot path.
/// Measured (2026-11-26): the same driver over 21,169 stdlib/EvalPlus functions,
/// four alternating runs of each build, load average ~7 on 2 cores: 18.3/17.4/19.8/
/// 18.2 us CPU per hash with mimalloc against 22.2/20.5/23.8/22.7 us with the system
/// allocator, i.e. 15-20% less CPU per hash. Kept. `ScopedArena` serves the AST hash's
/// parse from a bump arena instead (see `arena`) and passes everything else to mimalloc.
#[global_allocator]
static GLOBAL: arena::ScopedArena<mimalloc::MiMalloc> = arena::ScopedArena::new(mimalloc::MiMalloc);

use half::f16;
use numpy::{
    PyArray1, PyArray2, PyArrayMethods, PyReadonlyArray1, PyReadonlyArray2, PyUntypedArrayMethods,
};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;

/// A contiguous view of a 2-D array: borrowed when C-contiguous, else copied once
/// (a strided scan inside the kernel would cost more than the copy).
fn rows<'a, T: numpy::Element + Copy>(a: &'a PyReadonlyArray2<'_, T>) -> Cow<'a, [T]> {
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

/// Scores (q × k) and row indices (q × k) of a top-k search.
type TopKArrays<'py> = (Bound<'py, PyArray2<f32>>, Bound<'py, PyArray2<i64>>);
/// Compact rows as Python receives them: int8 codes (n × d) and a scale per row.
type CompactArrays<'py> = (Bound<'py, PyArray2<i8>>, Bound<'py, PyArray1<f32>>);

/// Run `search` over `matrix` (float32, float16, or int8 with one float32 scale per row)
/// with the GIL released, after checking its dimension against the queries' `dim`, and
/// return the result as NumPy arrays for `nq` queries.
fn search_matrix<'py, E: std::fmt::Display + Send>(
    py: Python<'py>,
    matrix: &Bound<'py, PyAny>,
    scales: Option<PyReadonlyArray1<'py, f32>>,
    (nq, dim): (usize, usize),
    search: impl Fn(topk::Matrix<'_>) -> Result<topk::TopKResult, E> + Sync,
) -> PyResult<TopKArrays<'py>> {
    let check = |m_dim: usize| {
        if m_dim == dim {
            return Ok(());
        }
        let err = similarity::ShapeError::DimensionMismatch {
            queries: dim,
            matrix: m_dim,
        };
        Err(PyValueError::new_err(err.to_string()))
    };
    let result = if let Ok(m) = matrix.extract::<PyReadonlyArray2<'py, f32>>() {
        check(m.shape()[1])?;
        let data = rows(&m);
        py.detach(|| search(topk::Matrix::F32(&data)))
    } else if let Ok(m) = matrix.extract::<PyReadonlyArray2<'py, f16>>() {
        check(m.shape()[1])?;
        let data = rows(&m);
        py.detach(|| search(topk::Matrix::F16(&data)))
    } else if let Ok(m) = matrix.extract::<PyReadonlyArray2<'py, i8>>() {
        let Some(scales) = scales else {
            return Err(PyValueError::new_err("scales: required for an int8 matrix"));
        };
        check(m.shape()[1])?;
        let (data, scales) = (rows(&m), rows_1d(&scales));
        py.detach(|| {
            search(topk::Matrix::I8 {
                data: &data,
                scales: &scales,
            })
        })
    } else {
        return Err(PyTypeError::new_err(
            "matrix: expected a 2-D NumPy array of float32, float16 or int8",
        ));
    };
    let r = result.map_err(|e| PyValueError::new_err(e.to_string()))?;
    let scores = PyArray1::from_vec(py, r.scores).reshape([nq, r.k])?;
    let indices = PyArray1::from_vec(py, r.indices).reshape([nq, r.k])?;
    Ok((scores, indices))
}

/// Exact dot-product top-k of each query row against the rows of `matrix`
/// (float32, float16, or int8 with one float32 scale per row).
#[pyfunction(name = "topk")]
#[pyo3(signature = (queries, matrix, k, scales=None))]
fn topk_py<'py>(
    py: Python<'py>,
    queries: PyReadonlyArray2<'py, f32>,
    matrix: &Bound<'py, PyAny>,
    k: usize,
    scales: Option<PyReadonlyArray1<'py, f32>>,
) -> PyResult<TopKArrays<'py>> {
    let shape = (queries.shape()[0], queries.shape()[1]);
    let q = rows(&queries);
    search_matrix(py, matrix, scales, shape, |m| topk::topk(&q, m, shape.1, k))
}

/// Feature-hashing embeddings of `texts` (n × dim float32, rows L2-normalised).
#[pyfunction]
#[pyo3(signature = (texts, dim=384))]
fn hash_embed<'py>(
    py: Python<'py>,
    texts: &Bound<'py, PyAny>,
    dim: usize,
) -> PyResult<Bound<'py, PyArray2<f32>>> {
    let texts = lossy_strings(texts)?;
    if dim == 0 {
        return Err(PyValueError::new_err("dim: must be at least 1"));
    }
    let n = texts.len();
    let out = py.detach(|| embed::embed_batch(&texts, dim));
    PyArray1::from_vec(py, out).reshape([n, dim])
}

/// Token counts of `texts` under `encoding`.
#[pyfunction]
fn count_tokens(py: Python<'_>, texts: &Bound<'_, PyAny>, encoding: &str) -> PyResult<Vec<usize>> {
    let texts = lossy_strings(texts)?;
    let Some(enc) = tokens::Encoding::from_name(encoding) else {
        return Err(PyValueError::new_err(format!(
            "encoding: unknown {encoding:?}, expected one of {:?}",
            tokens::Encoding::NAMES
        )));
    };
    // Short batches (the dispatcher counts one prompt per request) keep the GIL: releasing it
    // lets another Python thread (the journal's writer) take it, and the event loop then waits
    // for that thread's turn. That handoff cost more than counting a few KiB.
    if texts.iter().map(String::len).sum::<usize>() <= KEEP_GIL_TOKEN_BYTES {
        return Ok(tokens::count_batch(&texts, enc));
    }
    Ok(py.detach(|| tokens::count_batch(&texts, enc)))
}

/// Token-counting input size up to which the GIL is kept (~0.2 ms of counting at most).
const KEEP_GIL_TOKEN_BYTES: usize = 4096;

/// Text from Python that may hold lone surrogates (not valid UTF-8): replaced by
/// U+FFFD rather than refused, so one bad item never fails a batch.
fn lossy_strings(items: &Bound<'_, PyAny>) -> PyResult<Vec<String>> {
    if items.is_instance_of::<pyo3::types::PyString>() {
        return Err(PyTypeError::new_err(
            "expected a list of str, got a single str",
        ));
    }
    items
        .try_iter()?
        .map(|item| {
            let item = item?;
            let s = item.cast::<pyo3::types::PyString>()?;
            Ok(s.to_string_lossy().into_owned())
        })
        .collect()
}

/// The str items of a Python iterable, kept alive so that their text can be
/// borrowed while the GIL is released (CPython caches a str's UTF-8 form inside
/// the object; only strings with lone surrogates need a lossy copy).
fn str_items<'py>(items: &Bound<'py, PyAny>) -> PyResult<Vec<Bound<'py, pyo3::types::PyString>>> {
    if items.is_instance_of::<pyo3::types::PyString>() {
        return Err(PyTypeError::new_err(
            "expected a list of str, got a single str",
        ));
    }
    items
        .try_iter()?
        .map(|item| Ok(item?.cast_into::<pyo3::types::PyString>()?))
        .collect()
}

/// AST-normalised 128-bit hashes (32 hex chars) of `codes`; None where a code does
/// not parse or nests too deeply. `threads=0` uses every core.
#[pyfunction]
#[pyo3(signature = (codes, include_name=false, threads=0))]
fn ast_hash(
    py: Python<'_>,
    codes: &Bound<'_, PyAny>,
    include_name: bool,
    threads: usize,
) -> PyResult<Vec<Option<String>>> {
    let items = str_items(codes)?;
    let codes: Vec<Cow<'_, str>> = items.iter().map(|s| s.to_string_lossy()).collect();
    let digests = py.detach(|| asthash::digest_batch(&codes, include_name, threads));
    Ok(digests
        .into_iter()
        .map(|d| d.map(|(d, _)| asthash::hex(&d)))
        .collect())
}

/// AST node counts of the normal forms of `codes` (None where no hash exists).
#[pyfunction]
#[pyo3(signature = (codes, threads=0))]
fn ast_size(
    py: Python<'_>,
    codes: &Bound<'_, PyAny>,
    threads: usize,
) -> PyResult<Vec<Option<usize>>> {
    let items = str_items(codes)?;
    let codes: Vec<Cow<'_, str>> = items.iter().map(|s| s.to_string_lossy()).collect();
    let digests = py.detach(|| asthash::digest_batch(&codes, false, threads));
    Ok(digests.into_iter().map(|d| d.map(|(_, n)| n)).collect())
}

/// Whether each code parses, timed by the benchmark as the parser's floor under
/// `ast_hash` (same threads, arena and string handling, no walk and no digest).
#[pyfunction]
#[pyo3(signature = (codes, threads=0))]
fn ast_parse_only(py: Python<'_>, codes: &Bound<'_, PyAny>, threads: usize) -> PyResult<Vec<bool>> {
    let items = str_items(codes)?;
    let codes: Vec<Cow<'_, str>> = items.iter().map(|s| s.to_string_lossy()).collect();
    Ok(py.detach(|| asthash::parse_batch(&codes, threads)))
}

/// The normal form text that `ast_hash` hashes, for debugging and the equivalence tests.
#[pyfunction]
#[pyo3(signature = (code, include_name=false))]
fn ast_normal_form(
    py: Python<'_>,
    code: &Bound<'_, PyAny>,
    include_name: bool,
) -> PyResult<Option<String>> {
    let code = code
        .cast::<pyo3::types::PyString>()?
        .to_string_lossy()
        .into_owned();
    Ok(py.detach(|| {
        stack::on_big_stack(|| {
            if stack::too_complex(&code) {
                return None;
            }
            asthash::normal_form(&code, include_name)
                .ok()
                .map(|f| f.text)
        })
    }))
}

/// One function found in an LLM answer (see rust/src/extract.rs).
#[pyclass(frozen, get_all, module = "amr_async._core")]
struct FunctionRecord {
    name: String,
    qualname: String,
    class_name: Option<String>,
    is_method: bool,
    is_async: bool,
    signature: String,
    docstring: Option<String>,
    body: String,
    source: String,
    decorators: Vec<String>,
    start_line: usize,
    end_line: usize,
    block: usize,
    block_has_error: bool,
    imports: Vec<String>,
    globals: Vec<String>,
    helpers: Vec<String>,
}

#[pymethods]
impl FunctionRecord {
    fn __repr__(&self) -> String {
        format!(
            "FunctionRecord(qualname={:?}, lines={}-{}, block={}, block_has_error={})",
            self.qualname, self.start_line, self.end_line, self.block, self.block_has_error
        )
    }
}

impl From<extract::Function> for FunctionRecord {
    fn from(f: extract::Function) -> Self {
        Self {
            name: f.name,
            qualname: f.qualname,
            class_name: f.class_name,
            is_method: f.is_method,
            is_async: f.is_async,
            signature: f.signature,
            docstring: f.docstring,
            body: f.body,
            source: f.source,
            decorators: f.decorators,
            start_line: f.start_line,
            end_line: f.end_line,
            block: f.block,
            block_has_error: f.block_has_error,
            imports: f.imports,
            globals: f.globals,
            helpers: f.helpers,
        }
    }
}

/// Functions (and methods) in one LLM answer, in order of appearance.
#[pyfunction]
fn extract_functions(py: Python<'_>, text: &Bound<'_, PyAny>) -> PyResult<Vec<FunctionRecord>> {
    let text = text
        .cast::<pyo3::types::PyString>()?
        .to_string_lossy()
        .into_owned();
    let found = py.detach(|| stack::on_big_stack(|| extract::extract_functions(&text)));
    Ok(found.into_iter().map(FunctionRecord::from).collect())
}

/// Functions of many answers, one list per answer, answers processed in parallel.
#[pyfunction]
#[pyo3(signature = (texts, threads=0))]
fn extract_functions_batch(
    py: Python<'_>,
    texts: &Bound<'_, PyAny>,
    threads: usize,
) -> PyResult<Vec<Vec<FunctionRecord>>> {
    let texts = lossy_strings(texts)?;
    let found = py.detach(|| stack::map_batch(&texts, threads, |t| extract::extract_functions(t)));
    Ok(found
        .into_iter()
        .map(|fs| fs.into_iter().map(FunctionRecord::from).collect())
        .collect())
}

/// Read every byte of `data` once on all threads; returns a checksum. Its duration
/// is the memory-read bound the benchmarks compare scans against.
#[pyfunction]
fn scan_bytes(py: Python<'_>, data: PyReadonlyArray1<'_, u8>) -> PyResult<u64> {
    let bytes = data
        .as_slice()
        .map_err(|_| PyValueError::new_err("data: must be a C-contiguous uint8 array"))?;
    Ok(py.detach(|| similarity::scan_bytes(bytes)))
}

/// Exact dot-product top-k of each query over its own subset of `matrix`'s rows:
/// query `i` scans `rows[offsets[i]:offsets[i+1]]`, gathered in place (no copy).
#[pyfunction]
#[pyo3(signature = (queries, matrix, k, rows, offsets, scales=None))]
fn topk_rows<'py>(
    py: Python<'py>,
    queries: PyReadonlyArray2<'py, f32>,
    matrix: &Bound<'py, PyAny>,
    k: usize,
    rows: PyReadonlyArray1<'py, i64>,
    offsets: PyReadonlyArray1<'py, i64>,
    scales: Option<PyReadonlyArray1<'py, f32>>,
) -> PyResult<TopKArrays<'py>> {
    let shape = (queries.shape()[0], queries.shape()[1]);
    // `rows` (the argument) shadows the helper of that name: call it by path.
    let q = crate::rows(&queries);
    let ids = rows_1d(&rows);
    let bounds = offsets
        .as_array()
        .iter()
        .map(|&o| usize::try_from(o))
        .collect::<Result<Vec<usize>, _>>()
        .map_err(|_| PyValueError::new_err("offsets: must not be negative"))?;
    search_matrix(py, matrix, scales, shape, |m| {
        topk::topk_rows(&q, m, shape.1, k, &ids, &bounds)
    })
}

/// A contiguous view of a 1-D array: borrowed when contiguous, else copied once.
fn rows_1d<'a, T: numpy::Element + Copy>(a: &'a PyReadonlyArray1<'_, T>) -> Cow<'a, [T]> {
    match a.as_slice() {
        Ok(s) => Cow::Borrowed(s),
        Err(_) => Cow::Owned(a.as_array().iter().copied().collect()),
    }
}

/// Ids of the best `r` rows per query by the 1-bit code estimate (see `binary`).
#[pyfunction]
#[pyo3(signature = (queries, codes, factors, ids, spans, bounds, r, bits=4, limit=i64::MAX))]
#[allow(clippy::too_many_arguments)]
fn code_topk<'py>(
    py: Python<'py>,
    queries: PyReadonlyArray2<'py, f32>,
    codes: PyReadonlyArray2<'py, u64>,
    factors: PyReadonlyArray2<'py, f32>,
    ids: PyReadonlyArray1<'py, i64>,
    spans: PyReadonlyArray2<'py, i64>,
    bounds: PyReadonlyArray1<'py, i64>,
    r: usize,
    bits: usize,
    limit: i64,
) -> PyResult<Bound<'py, PyArray2<i64>>> {
    let (nq, dim) = (queries.shape()[0], queries.shape()[1]);
    if codes.shape()[1] != dim.div_ceil(64) || factors.shape()[1] != 2 || spans.shape()[1] != 2 {
        return Err(PyValueError::new_err(format!(
            "code_topk: codes must be (n, {}) for {dim}-d queries, factors (n, 2), spans (m, 2); \
             got {:?}, {:?}, {:?}",
            dim.div_ceil(64),
            codes.shape(),
            factors.shape(),
            spans.shape()
        )));
    }
    let (spans, bounds) = code_spans("code_topk", &spans, &bounds)?;
    let (q, words, factors, ids) = (
        crate::rows(&queries),
        crate::rows(&codes),
        crate::rows(&factors),
        rows_1d(&ids),
    );
    let codes = binary::Codes {
        words: &words,
        factors: &factors,
        ids: &ids,
        dim,
    };
    let out = py
        .detach(|| binary::code_topk(codes, &q, bits, &spans, &bounds, r, limit))
        .map_err(|e| PyValueError::new_err(format!("code_topk: {e}")))?;
    PyArray1::from_vec(py, out).reshape([nq, r])
}

/// [`code_topk`] over codes in the FastScan layout (see `fastscan`): `blocks` is
/// `(slots / 32, 256 × words)` bytes, span starts are multiples of 32.
#[pyfunction]
#[pyo3(signature = (queries, blocks, factors, ids, spans, bounds, r, bits=4, limit=i64::MAX, portable=false))]
#[allow(clippy::too_many_arguments)]
fn code_topk_fast<'py>(
    py: Python<'py>,
    queries: PyReadonlyArray2<'py, f32>,
    blocks: PyReadonlyArray2<'py, u8>,
    factors: PyReadonlyArray2<'py, f32>,
    ids: PyReadonlyArray1<'py, i64>,
    spans: PyReadonlyArray2<'py, i64>,
    bounds: PyReadonlyArray1<'py, i64>,
    r: usize,
    bits: usize,
    limit: i64,
    portable: bool,
) -> PyResult<Bound<'py, PyArray2<i64>>> {
    let (nq, dim) = (queries.shape()[0], queries.shape()[1]);
    let bb = fastscan::block_bytes(dim.div_ceil(64));
    if blocks.shape()[1] != bb || factors.shape()[1] != 2 || spans.shape()[1] != 2 {
        return Err(PyValueError::new_err(format!(
            "code_topk_fast: blocks must be (m, {bb}) for {dim}-d queries, factors (n, 2), \
             spans (s, 2); got {:?}, {:?}, {:?}",
            blocks.shape(),
            factors.shape(),
            spans.shape()
        )));
    }
    let (spans, bounds) = code_spans("code_topk_fast", &spans, &bounds)?;
    let (q, bytes, factors, ids) = (
        crate::rows(&queries),
        crate::rows(&blocks),
        crate::rows(&factors),
        rows_1d(&ids),
    );
    let codes = fastscan::FastCodes {
        blocks: &bytes,
        factors: &factors,
        ids: &ids,
        dim,
    };
    let out = py
        .detach(|| fastscan::fast_topk(codes, &q, bits, &spans, &bounds, r, limit, portable))
        .map_err(|e| PyValueError::new_err(format!("code_topk_fast: {e}")))?;
    PyArray1::from_vec(py, out).reshape([nq, r])
}

/// A code scan's (start, len) spans and each query's bounds into them.
type SpansAndBounds = (Vec<(usize, usize)>, Vec<usize>);

/// The spans and per-query span bounds of a code scan, as `usize`.
fn code_spans(
    name: &str,
    spans: &PyReadonlyArray2<'_, i64>,
    bounds: &PyReadonlyArray1<'_, i64>,
) -> PyResult<SpansAndBounds> {
    let to_usize = |what: &str, v: &[i64]| {
        v.iter()
            .map(|&x| usize::try_from(x))
            .collect::<Result<Vec<usize>, _>>()
            .map_err(|_| PyValueError::new_err(format!("{name}: {what} must not be negative")))
    };
    let flat = to_usize("spans", &crate::rows(spans))?;
    let spans = flat.chunks_exact(2).map(|p| (p[0], p[1])).collect();
    Ok((spans, to_usize("bounds", &rows_1d(bounds))?))
}

/// Slots as `usize`, each below `cap`.
fn checked_slots(name: &str, slots: &[i64], cap: usize) -> PyResult<Vec<usize>> {
    slots
        .iter()
        .map(|&s| usize::try_from(s).ok().filter(|&s| s < cap))
        .collect::<Option<Vec<usize>>>()
        .ok_or_else(|| PyValueError::new_err(format!("{name}: slots must be in 0..{cap}")))
}

/// Write row-major codes (n × words) into FastScan `blocks` (m × 256·words) at `slots`,
/// in place. Writes only the given slots' nibbles, so readers scanning other slots of
/// the same blocks (a snapshot's spans) are unaffected, as with numpy's own assignment.
#[pyfunction]
fn fastscan_pack(
    py: Python<'_>,
    blocks: &Bound<'_, PyArray2<u8>>,
    slots: PyReadonlyArray1<'_, i64>,
    codes: PyReadonlyArray2<'_, u64>,
) -> PyResult<()> {
    let words = codes.shape()[1];
    let bb = fastscan::block_bytes(words);
    if blocks.shape()[1] != bb || slots.len() != codes.shape()[0] {
        return Err(PyValueError::new_err(format!(
            "fastscan_pack: blocks must be (m, {bb}) for codes {:?}, one slot per \
             code; got {:?} and {} slots",
            codes.shape(),
            blocks.shape(),
            slots.len()
        )));
    }
    let slots = checked_slots(
        "fastscan_pack",
        &rows_1d(&slots),
        blocks.shape()[0] * fastscan::BLOCK,
    )?;
    let codes = crate::rows(&codes);
    // SAFETY: C-contiguity is checked by as_slice_mut; no Rust borrow of this array is
    // taken for writing elsewhere (the one writer holds the index's write lock), and the
    // bytes written belong only to the given slots, which no reader's spans cover.
    let out = unsafe { blocks.as_slice_mut() }
        .map_err(|_| PyValueError::new_err("fastscan_pack: blocks must be C-contiguous"))?;
    py.detach(|| fastscan::pack(out, words, &slots, &codes));
    Ok(())
}

/// The row-major codes (n × words) of the given slots of FastScan `blocks`.
#[pyfunction]
fn fastscan_unpack<'py>(
    py: Python<'py>,
    blocks: PyReadonlyArray2<'py, u8>,
    slots: PyReadonlyArray1<'py, i64>,
) -> PyResult<Bound<'py, PyArray2<u64>>> {
    let bb = blocks.shape()[1];
    if bb == 0 || !bb.is_multiple_of(fastscan::block_bytes(1)) {
        return Err(PyValueError::new_err(format!(
            "fastscan_unpack: blocks must be (m, 256·words), got {:?}",
            blocks.shape()
        )));
    }
    let words = bb / fastscan::block_bytes(1);
    let slots = checked_slots(
        "fastscan_unpack",
        &rows_1d(&slots),
        blocks.shape()[0] * fastscan::BLOCK,
    )?;
    let bytes = crate::rows(&blocks);
    let n = slots.len();
    let out = py.detach(|| fastscan::unpack(&bytes, words, &slots));
    PyArray1::from_vec(py, out).reshape([n, words])
}

/// The `nprobe` centroids nearest each query by dot product, ascending (see `probe`).
#[pyfunction]
#[pyo3(signature = (queries, centroids, nprobe, portable=false))]
fn ivf_probe<'py>(
    py: Python<'py>,
    queries: PyReadonlyArray2<'py, f32>,
    centroids: PyReadonlyArray2<'py, f32>,
    nprobe: usize,
    portable: bool,
) -> PyResult<Bound<'py, PyArray2<i64>>> {
    let (nq, dim) = (queries.shape()[0], queries.shape()[1]);
    if centroids.shape()[1] != dim {
        return Err(PyValueError::new_err(format!(
            "ivf_probe: centroids must be (n, {dim}) for {dim}-d queries, got {:?}",
            centroids.shape()
        )));
    }
    let p = nprobe.min(centroids.shape()[0]);
    let (q, c) = (crate::rows(&queries), crate::rows(&centroids));
    let out = py
        .detach(|| probe::probe(&q, &c, dim, nprobe, portable))
        .map_err(|e| PyValueError::new_err(format!("ivf_probe: {e}")))?;
    PyArray1::from_vec(py, out).reshape([nq, p])
}

/// The centroids for choosing lists: int8 codes (n × d) and one scale per row (see
/// `probe::compact`).
#[pyfunction]
fn ivf_compact<'py>(
    py: Python<'py>,
    centroids: PyReadonlyArray2<'py, f32>,
) -> PyResult<CompactArrays<'py>> {
    let (n, dim) = (centroids.shape()[0], centroids.shape()[1]);
    let c = crate::rows(&centroids);
    let (codes, scales) = py.detach(|| probe::compact(&c, dim));
    Ok((
        PyArray1::from_vec(py, codes).reshape([n, dim])?,
        PyArray1::from_vec(py, scales),
    ))
}

/// `ivf_probe` on the compact centroids of `ivf_compact` (see `probe::probe_compact`).
#[pyfunction]
#[pyo3(signature = (queries, codes, scales, nprobe, portable=false))]
fn ivf_probe_compact<'py>(
    py: Python<'py>,
    queries: PyReadonlyArray2<'py, f32>,
    codes: PyReadonlyArray2<'py, i8>,
    scales: PyReadonlyArray1<'py, f32>,
    nprobe: usize,
    portable: bool,
) -> PyResult<Bound<'py, PyArray2<i64>>> {
    let (nq, dim) = (queries.shape()[0], queries.shape()[1]);
    if codes.shape() != [scales.shape()[0], dim] {
        return Err(PyValueError::new_err(format!(
            "ivf_probe_compact: codes must be ({}, {dim}) for {dim}-d queries and {} \
             scales, got {:?}",
            scales.shape()[0],
            scales.shape()[0],
            codes.shape()
        )));
    }
    let p = nprobe.min(codes.shape()[0]);
    let (q, c, s) = (crate::rows(&queries), crate::rows(&codes), rows_1d(&scales));
    let rows = probe::CompactRows {
        codes: &c,
        scales: &s,
    };
    let out = py
        .detach(|| probe::probe_compact(&q, rows, dim, nprobe, portable))
        .map_err(|e| PyValueError::new_err(format!("ivf_probe_compact: {e}")))?;
    PyArray1::from_vec(py, out).reshape([nq, p])
}

/// `queries @ rotation.T` (q × d, `rotation` d × d) as the fused IVF search rotates its
/// query (see `ivf`), so the batch path's codes ranking matches the fused one's.
#[pyfunction]
fn ivf_rotate<'py>(
    py: Python<'py>,
    queries: PyReadonlyArray2<'py, f32>,
    rotation: PyReadonlyArray2<'py, f32>,
) -> PyResult<Bound<'py, PyArray2<f32>>> {
    let (nq, dim) = (queries.shape()[0], queries.shape()[1]);
    if rotation.shape() != [dim, dim] {
        return Err(PyValueError::new_err(format!(
            "ivf_rotate: rotation must be ({dim}, {dim}) for {dim}-d queries, got {:?}",
            rotation.shape()
        )));
    }
    let (q, r) = (crate::rows(&queries), crate::rows(&rotation));
    let out: Vec<f32> = py.detach(|| {
        q.chunks_exact(dim.max(1))
            .flat_map(|v| ivf::rotate(v, &r))
            .collect()
    });
    PyArray1::from_vec(py, out).reshape([nq, dim])
}

/// One IVF query (1 × d) in one call (see `ivf::search_one`): the `nprobe` nearest
/// lists by the compact centroids (`ivf_compact`: codes, scales), their rows ranked by code estimate, the best `max(rerank, k)` re-scored exactly
/// on `matrix` (float32, float16, or int8 with `scales`). Returns (1 × k', 1 × k') scores
/// and ids, k' = min(k, rows scored), as `topk_rows` does.
#[pyfunction]
#[pyo3(signature = (query, centroid_codes, centroid_scales, rotation, starts, sizes, blocks, factors, ids, matrix, k, nprobe, rerank, bits=4, limit=i64::MAX, scales=None))]
#[allow(clippy::too_many_arguments)]
fn ivf_search<'py>(
    py: Python<'py>,
    query: PyReadonlyArray2<'py, f32>,
    centroid_codes: PyReadonlyArray2<'py, i8>,
    centroid_scales: PyReadonlyArray1<'py, f32>,
    rotation: PyReadonlyArray2<'py, f32>,
    starts: PyReadonlyArray1<'py, i64>,
    sizes: PyReadonlyArray1<'py, i64>,
    blocks: PyReadonlyArray2<'py, u8>,
    factors: PyReadonlyArray2<'py, f32>,
    ids: PyReadonlyArray1<'py, i64>,
    matrix: &Bound<'py, PyAny>,
    k: usize,
    nprobe: usize,
    rerank: usize,
    bits: usize,
    limit: i64,
    scales: Option<PyReadonlyArray1<'py, f32>>,
) -> PyResult<TopKArrays<'py>> {
    let dim = query.shape()[1];
    let bb = fastscan::block_bytes(dim.div_ceil(64));
    if query.shape()[0] != 1 || blocks.shape()[1] != bb || factors.shape()[1] != 2 {
        return Err(PyValueError::new_err(format!(
            "ivf_search: one query (1, d), blocks (m, {bb}) and factors (n, 2); got {:?}, \
             {:?}, {:?}",
            query.shape(),
            blocks.shape(),
            factors.shape()
        )));
    }
    let (q, c, r) = (
        crate::rows(&query),
        crate::rows(&centroid_codes),
        crate::rows(&rotation),
    );
    let cs = rows_1d(&centroid_scales);
    let (starts, sizes, ids) = (rows_1d(&starts), rows_1d(&sizes), rows_1d(&ids));
    let (bytes, factors) = (crate::rows(&blocks), crate::rows(&factors));
    let lists = ivf::IvfLists {
        centroids: probe::CompactRows {
            codes: &c,
            scales: &cs,
        },
        rotation: &r,
        starts: &starts,
        sizes: &sizes,
        codes: fastscan::FastCodes {
            blocks: &bytes,
            factors: &factors,
            ids: &ids,
            dim,
        },
    };
    let params = ivf::IvfParams {
        k,
        nprobe,
        rerank,
        bits,
        limit,
    };
    search_matrix(py, matrix, scales, (1, dim), |m| {
        ivf::search_one(lists, &q, m, params).map_err(|e| format!("ivf_search: {e}"))
    })
}

#[pymodule(gil_used = false)]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_function(wrap_pyfunction!(cosine_matrix, m)?)?;
    m.add_function(wrap_pyfunction!(topk_py, m)?)?;
    m.add_function(wrap_pyfunction!(hash_embed, m)?)?;
    m.add_function(wrap_pyfunction!(count_tokens, m)?)?;
    m.add_function(wrap_pyfunction!(ast_hash, m)?)?;
    m.add_function(wrap_pyfunction!(ast_size, m)?)?;
    m.add_function(wrap_pyfunction!(ast_normal_form, m)?)?;
    m.add_function(wrap_pyfunction!(ast_parse_only, m)?)?;
    m.add_function(wrap_pyfunction!(extract_functions, m)?)?;
    m.add_function(wrap_pyfunction!(extract_functions_batch, m)?)?;
    m.add_class::<FunctionRecord>()?;
    m.add_function(wrap_pyfunction!(scan_bytes, m)?)?;
    m.add_function(wrap_pyfunction!(topk_rows, m)?)?;
    m.add_function(wrap_pyfunction!(code_topk, m)?)?;
    m.add_function(wrap_pyfunction!(code_topk_fast, m)?)?;
    m.add_function(wrap_pyfunction!(fastscan_pack, m)?)?;
    m.add_function(wrap_pyfunction!(fastscan_unpack, m)?)?;
    m.add_function(wrap_pyfunction!(ivf_probe, m)?)?;
    m.add_function(wrap_pyfunction!(ivf_compact, m)?)?;
    m.add_function(wrap_pyfunction!(ivf_probe_compact, m)?)?;
    m.add_function(wrap_pyfunction!(ivf_rotate, m)?)?;
    m.add_function(wrap_pyfunction!(ivf_search, m)?)?;
    Ok(())
}
