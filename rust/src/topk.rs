//! Exact dot-product top-k of a batch of `f32` queries against a row-major matrix
//! stored as `f32`, `f16`, or `i8` with one `f32` scale per row.
//!
//! Plain Rust, no Python. The scan is memory-bound for one query and compute-bound
//! for a batch, so the matrix is cut into blocks of rows: each block is decoded to
//! `f32` once (for `f16`/`i8`) while it sits in cache, then every query of the batch
//! is scored against it, four queries at a time so each row load feeds four dot
//! products. Blocks run in parallel with rayon; each keeps a bounded heap per query
//! and the heaps are merged at the end.
//!
//! Ordering is total and deterministic: a higher score wins, equal scores go to the
//! lower row index, and NaN scores rank below every number (and among themselves by
//! index), so results never depend on thread timing.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use half::f16;
use half::slice::HalfFloatSliceExt;
use rayon::prelude::*;

use crate::similarity::ShapeError;

/// Rows per block: 256 rows of 384 `f32` are 384 KiB decoded, small enough to
/// stay in L2 while a batch of queries is scored against them.
const BLOCK_ROWS: usize = 256;

/// The matrix a query batch is scored against, borrowed from the caller.
#[derive(Debug, Clone, Copy)]
pub enum Matrix<'a> {
    F32(&'a [f32]),
    F16(&'a [f16]),
    /// Quantised rows: the true value of row `i` is `scales[i] * row_i`.
    I8 {
        data: &'a [i8],
        scales: &'a [f32],
    },
}

impl Matrix<'_> {
    fn len(&self) -> usize {
        match self {
            Self::F32(d) => d.len(),
            Self::F16(d) => d.len(),
            Self::I8 { data, .. } => data.len(),
        }
    }

    /// Decode rows `start..end` into `out` as `f32`, scales applied afterwards.
    fn decode(&self, dim: usize, start: usize, end: usize, out: &mut Vec<f32>) {
        out.clear();
        let span = start * dim..end * dim;
        match self {
            Self::F32(d) => out.extend_from_slice(&d[span]),
            Self::F16(d) => {
                out.resize(span.len(), 0.0);
                decode_f16(&d[span], out);
            }
            Self::I8 { data, .. } => out.extend(data[span].iter().map(|&v| f32::from(v))),
        }
    }
}

/// `f16` -> `f32` for a whole span. `half`'s slice conversion checks for F16C and calls an
/// intrinsic per chunk of four, which made decoding `f16` rows cost more CPU than reading
/// `f32` rows twice their size (0.23 vs 0.16 µs per 384-d row); one F16C loop over the span
/// runs at memory speed.
fn decode_f16(src: &[f16], out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("f16c") && std::arch::is_x86_feature_detected!("avx") {
        // SAFETY: the CPU has F16C and AVX (checked just above).
        unsafe { decode_f16_f16c(src, out) };
        return;
    }
    src.convert_to_f32_slice(out);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "f16c,avx")]
// The `loadu` intrinsics take pointers of the vector type but accept any alignment.
#[allow(clippy::cast_ptr_alignment)]
unsafe fn decode_f16_f16c(src: &[f16], out: &mut [f32]) {
    use std::arch::x86_64::{__m128i, _mm256_cvtph_ps, _mm256_storeu_ps, _mm_loadu_si128};
    assert_eq!(src.len(), out.len());
    let chunks = src.len() / 8;
    for c in 0..chunks {
        // SAFETY: `c * 8 + 8 <= len` for both slices; unaligned loads and stores.
        unsafe {
            let v = _mm_loadu_si128(src.as_ptr().add(c * 8).cast::<__m128i>());
            _mm256_storeu_ps(out.as_mut_ptr().add(c * 8), _mm256_cvtph_ps(v));
        }
    }
    src[chunks * 8..].convert_to_f32_slice(&mut out[chunks * 8..]);
}

/// One candidate: a score and its row index.
#[derive(Debug, Clone, Copy)]
struct Hit {
    score: f32,
    index: usize,
}

impl Hit {
    /// `Greater` means `self` ranks better than `other`.
    fn rank(&self, other: &Self) -> Ordering {
        match (self.score.is_nan(), other.score.is_nan()) {
            (false, false) => self
                .score
                .partial_cmp(&other.score)
                .unwrap_or(Ordering::Equal)
                .then_with(|| other.index.cmp(&self.index)),
            (true, false) => Ordering::Less,
            (false, true) => Ordering::Greater,
            (true, true) => other.index.cmp(&self.index),
        }
    }
}

impl PartialEq for Hit {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Hit {}
impl PartialOrd for Hit {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Hit {
    /// Reversed rank, so `BinaryHeap`'s top is the worst kept hit.
    fn cmp(&self, other: &Self) -> Ordering {
        other.rank(self)
    }
}

/// The best `k` hits seen so far for one query.
#[derive(Debug, Clone)]
struct TopK {
    k: usize,
    heap: BinaryHeap<Hit>,
}

impl TopK {
    fn new(k: usize) -> Self {
        Self {
            k,
            heap: BinaryHeap::with_capacity(k + 1),
        }
    }

    #[inline]
    fn push(&mut self, hit: Hit) {
        if self.heap.len() < self.k {
            self.heap.push(hit);
        } else if let Some(worst) = self.heap.peek() {
            if hit.rank(worst) == Ordering::Greater {
                self.heap.pop();
                self.heap.push(hit);
            }
        }
    }

    /// Cheap pre-filter for the hot loop: can `score` possibly enter?
    #[inline]
    fn admits(&self, score: f32) -> bool {
        self.heap.len() < self.k
            || self
                .heap
                .peek()
                .is_none_or(|w| score.partial_cmp(&w.score) != Some(Ordering::Less))
    }

    #[cfg(target_arch = "x86_64")]
    /// Whether a row whose score is at most `upper` can no longer enter: the heap is
    /// full and its worst score is above `upper` (a NaN on either side rules nothing out).
    #[inline]
    fn rules_out(&self, upper: f64) -> bool {
        self.heap.len() == self.k && self.heap.peek().is_some_and(|w| upper < f64::from(w.score))
    }

    fn merge(mut self, other: Self) -> Self {
        for hit in other.heap {
            self.push(hit);
        }
        self
    }

    fn into_sorted(self) -> Vec<Hit> {
        // Ascending by `Ord` is best first, since `Ord` is the reversed rank.
        self.heap.into_sorted_vec()
    }
}

/// Dot product with eight independent accumulators so LLVM vectorises it.
// Forced inlining puts these bodies inside the AVX2 wrapper, which then
// vectorises them with the wide instructions.
#[allow(clippy::inline_always)]
#[inline(always)]
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// Dot product of `f32` query values with `i8` row values.
// Forced inlining puts this body inside the AVX2 wrapper, which then vectorises it.
#[allow(clippy::inline_always)]
#[inline(always)]
fn dot_i8(a: &[f32], b: &[i8]) -> f32 {
    let mut acc = [0.0f32; 16];
    let (ca, cb) = (a.chunks_exact(16), b.chunks_exact(16));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * f32::from(*y))
        .sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..16 {
            acc[i] += x[i] * f32::from(y[i]);
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// Four dot products against one row, sharing its loads.
// Forced inlining puts these bodies inside the AVX2 wrapper, which then
// vectorises them with the wide instructions.
#[allow(clippy::inline_always)]
#[inline(always)]
fn dot4(q: [&[f32]; 4], row: &[f32]) -> [f32; 4] {
    let mut acc = [[0.0f32; 8]; 4];
    let n8 = row.len() / 8 * 8;
    let mut i = 0;
    while i < n8 {
        let r = &row[i..i + 8];
        for (accj, qj) in acc.iter_mut().zip(q) {
            let qs = &qj[i..i + 8];
            for l in 0..8 {
                accj[l] += qs[l] * r[l];
            }
        }
        i += 8;
    }
    let mut out = [0.0f32; 4];
    for j in 0..4 {
        let tail: f32 = q[j][n8..].iter().zip(&row[n8..]).map(|(x, y)| x * y).sum();
        out[j] = acc[j].iter().sum::<f32>() + tail;
    }
    out
}

/// Score one decoded block against every query and offer the hits to the heaps.
// Forced inlining puts these bodies inside the AVX2 wrapper, which then
// vectorises them with the wide instructions.
#[allow(clippy::inline_always)]
#[inline(always)]
fn score_block(
    queries: &[f32],
    dim: usize,
    block: &[f32],
    first_row: usize,
    scales: Option<&[f32]>,
    heaps: &mut [TopK],
) {
    let nq = heaps.len();
    let scale_of = |r: usize| scales.map_or(1.0, |s| s[first_row + r]);
    let mut qi = 0;
    while qi + 4 <= nq {
        let q: [&[f32]; 4] = std::array::from_fn(|j| &queries[(qi + j) * dim..(qi + j + 1) * dim]);
        for (r, row) in block.chunks_exact(dim).enumerate() {
            let s = dot4(q, row);
            let scale = scale_of(r);
            for j in 0..4 {
                let score = s[j] * scale;
                let heap = &mut heaps[qi + j];
                if heap.admits(score) {
                    heap.push(Hit {
                        score,
                        index: first_row + r,
                    });
                }
            }
        }
        qi += 4;
    }
    for (j, heap) in heaps.iter_mut().enumerate().skip(qi) {
        let q = &queries[j * dim..(j + 1) * dim];
        for (r, row) in block.chunks_exact(dim).enumerate() {
            let score = dot(q, row) * scale_of(r);
            if heap.admits(score) {
                heap.push(Hit {
                    score,
                    index: first_row + r,
                });
            }
        }
    }
}

/// Scan rows `start..end` (a whole number of blocks or the tail) for every query.
// Forced inlining puts these bodies inside the AVX2 wrapper, which then
// vectorises them with the wide instructions.
#[allow(clippy::inline_always)]
#[inline(always)]
fn scan_body(
    queries: &[f32],
    matrix: Matrix<'_>,
    dim: usize,
    k: usize,
    start: usize,
    end: usize,
) -> Vec<TopK> {
    let nq = queries.len() / dim;
    let mut heaps = vec![TopK::new(k); nq];
    let mut buf = Vec::with_capacity(BLOCK_ROWS * dim);
    let scales = match matrix {
        Matrix::I8 { scales, .. } => Some(scales),
        _ => None,
    };
    // One to three queries over int8 rows: convert in registers inside the dot
    // product rather than through a decoded block, halving the work per byte read.
    if let (Matrix::I8 { data, scales }, true) = (matrix, nq < 4) {
        for r in start..end {
            let row = &data[r * dim..(r + 1) * dim];
            for (j, heap) in heaps.iter_mut().enumerate() {
                let score = dot_i8(&queries[j * dim..(j + 1) * dim], row) * scales[r];
                if heap.admits(score) {
                    heap.push(Hit { score, index: r });
                }
            }
        }
        return heaps;
    }
    let mut row = start;
    while row < end {
        let stop = (row + BLOCK_ROWS).min(end);
        let block: &[f32] = if let Matrix::F32(d) = matrix {
            &d[row * dim..stop * dim]
        } else {
            matrix.decode(dim, row, stop, &mut buf);
            &buf
        };
        score_block(queries, dim, block, row, scales, &mut heaps);
        row = stop;
    }
    heaps
}

/// A query rounded to `i16` for the integer pre-filter of int8 scans, and how far
/// the filter's score can be from the exact one.
///
/// Exact `f32` scoring of an int8 row costs a widening and a conversion per byte;
/// an `i16 x i16` multiply-add (`vpmaddwd`) handles sixteen bytes per instruction.
/// The filter scores every row with the rounded query, and only rows whose upper
/// bound can still beat the k-th best exact score get the exact score, so results
/// are identical to scoring every row exactly.
#[cfg(target_arch = "x86_64")]
#[derive(Debug, Clone)]
struct QuantQuery {
    q: Vec<i16>,
    /// `query[j] ≈ step * q[j]`.
    step: f64,
    /// Bound on |exact `f32` dot − `step` × integer dot| for any int8 row.
    slack: f64,
}

#[cfg(target_arch = "x86_64")]
impl QuantQuery {
    /// `None` when the query is not finite or too long for `i32` sums at a useful
    /// precision; those scans score every row exactly.
    fn new(query: &[f32]) -> Option<Self> {
        let dim = query.len();
        if dim == 0 || query.iter().any(|v| !v.is_finite()) {
            return None;
        }
        let max = query.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        // Every partial sum of |q[j]| * 128 must fit in an i32.
        let qmax = (i32::MAX as usize / (128 * dim)).min(i16::MAX as usize);
        if max == 0.0 || qmax < 64 {
            return None;
        }
        let step = f64::from(max) / qmax as f64;
        let (mut err, mut abs) = (0.0f64, 0.0f64);
        let q = query
            .iter()
            .map(|&v| {
                let v = f64::from(v);
                let r = (v / step).round().clamp(-(qmax as f64), qmax as f64);
                err += (v - r * step).abs();
                abs += v.abs();
                r as i16
            })
            .collect();
        // Rounding the query moves the dot by at most 128·Σ|e_j| (|row value| <= 128);
        // the exact f32 kernel and the scale product round by at most about
        // (dim + 2)·2^-24·128·Σ|q_j|, taken twice over for margin.
        let rounding = 2.0 * (dim as f64 + 8.0) * f64::from(f32::EPSILON) * 128.0 * abs;
        let slack = 128.0 * err * (1.0 + 1e-9) + rounding;
        Some(Self { q, step, slack })
    }

    /// Upper bound of the exact score of a row with integer dot `dot` and `scale`
    /// (NaN or infinite when the scale is, which rules nothing out).
    #[inline]
    fn upper(&self, dot: i32, scale: f32) -> f64 {
        let scale = f64::from(scale);
        let approx = self.step * f64::from(dot) * scale;
        approx + scale.abs() * self.slack + approx.abs() * 1e-12
    }
}

/// `Σ q[j] * row[j]` in integers, sixteen lanes per instruction.
///
/// # Safety
/// The CPU must support AVX2; `q` and `row` must have equal lengths and every
/// partial sum must fit an `i32` (what [`QuantQuery::new`] ensures).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
// The `loadu` intrinsics take pointers of the vector type but accept any alignment.
#[allow(clippy::cast_ptr_alignment)]
unsafe fn dot_i8_i16(q: &[i16], row: &[i8]) -> i32 {
    use std::arch::x86_64::{
        __m128i, __m256i, _mm256_add_epi32, _mm256_castsi256_si128, _mm256_cvtepi8_epi16,
        _mm256_extracti128_si256, _mm256_loadu_si256, _mm256_madd_epi16, _mm256_setzero_si256,
        _mm_add_epi32, _mm_cvtsi128_si32, _mm_loadu_si128, _mm_shuffle_epi32,
    };
    debug_assert_eq!(q.len(), row.len());
    let n = row.len().min(q.len());
    let (qp, rp) = (q.as_ptr(), row.as_ptr());
    let mut acc0 = _mm256_setzero_si256();
    let mut acc1 = _mm256_setzero_si256();
    let mut i = 0;
    // SAFETY: every load reads 16 bytes of `row` or 32 bytes of `q` starting at
    // index i with i + 16 <= n (resp. i + 32 <= n), inside both slices.
    unsafe {
        while i + 32 <= n {
            let r0 = _mm256_cvtepi8_epi16(_mm_loadu_si128(rp.add(i).cast::<__m128i>()));
            let r1 = _mm256_cvtepi8_epi16(_mm_loadu_si128(rp.add(i + 16).cast::<__m128i>()));
            let q0 = _mm256_loadu_si256(qp.add(i).cast::<__m256i>());
            let q1 = _mm256_loadu_si256(qp.add(i + 16).cast::<__m256i>());
            acc0 = _mm256_add_epi32(acc0, _mm256_madd_epi16(r0, q0));
            acc1 = _mm256_add_epi32(acc1, _mm256_madd_epi16(r1, q1));
            i += 32;
        }
        if i + 16 <= n {
            let r0 = _mm256_cvtepi8_epi16(_mm_loadu_si128(rp.add(i).cast::<__m128i>()));
            let q0 = _mm256_loadu_si256(qp.add(i).cast::<__m256i>());
            acc0 = _mm256_add_epi32(acc0, _mm256_madd_epi16(r0, q0));
            i += 16;
        }
    }
    let acc = _mm256_add_epi32(acc0, acc1);
    let s = _mm_add_epi32(
        _mm256_castsi256_si128(acc),
        _mm256_extracti128_si256::<1>(acc),
    );
    let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b01_00_11_10>(s));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b10_11_00_01>(s));
    let mut total = _mm_cvtsi128_si32(s);
    for j in i..n {
        total = total.wrapping_add(i32::from(q[j]) * i32::from(row[j]));
    }
    total
}

/// One to three queries over int8 rows with the integer pre-filter: the exact
/// score (the same arithmetic as [`scan_body`]) is computed only for rows the
/// filter cannot rule out, so the result is identical.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
fn scan_i8_filtered(
    queries: &[f32],
    quant: &[QuantQuery],
    data: &[i8],
    scales: &[f32],
    dim: usize,
    k: usize,
    start: usize,
    end: usize,
) -> Vec<TopK> {
    let mut heaps = vec![TopK::new(k); quant.len()];
    for r in start..end {
        let row = &data[r * dim..(r + 1) * dim];
        let scale = scales[r];
        for (j, (heap, qq)) in heaps.iter_mut().zip(quant).enumerate() {
            // SAFETY: AVX2 is enabled here; lengths are `dim` and sums fit (QuantQuery).
            let approx = unsafe { dot_i8_i16(&qq.q, row) };
            if heap.rules_out(qq.upper(approx, scale)) {
                continue;
            }
            let score = dot_i8(&queries[j * dim..(j + 1) * dim], row) * scale;
            if heap.admits(score) {
                heap.push(Hit { score, index: r });
            }
        }
    }
    heaps
}

/// The same scan compiled for AVX2+FMA, chosen at run time, so the wheel keeps a
/// portable x86-64 baseline and still uses the wide units where they exist.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn scan_avx2(
    queries: &[f32],
    matrix: Matrix<'_>,
    dim: usize,
    k: usize,
    start: usize,
    end: usize,
) -> Vec<TopK> {
    scan_body(queries, matrix, dim, k, start, end)
}

fn scan(
    queries: &[f32],
    matrix: Matrix<'_>,
    dim: usize,
    k: usize,
    start: usize,
    end: usize,
) -> Vec<TopK> {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        if let Matrix::I8 { data, scales } = matrix {
            if queries.len() < 4 * dim {
                let quant: Option<Vec<QuantQuery>> =
                    queries.chunks_exact(dim).map(QuantQuery::new).collect();
                if let Some(quant) = quant {
                    // SAFETY: the features the function was compiled for are present.
                    return unsafe {
                        scan_i8_filtered(queries, &quant, data, scales, dim, k, start, end)
                    };
                }
            }
        }
        // SAFETY: the features the function was compiled for are present.
        return unsafe { scan_avx2(queries, matrix, dim, k, start, end) };
    }
    scan_body(queries, matrix, dim, k, start, end)
}

/// Result of a top-k search: `q × k` scores and row indices, best first per query.
#[derive(Debug, Clone, PartialEq)]
pub struct TopKResult {
    pub k: usize,
    pub scores: Vec<f32>,
    pub indices: Vec<i64>,
}

/// Exact top-`k` rows of `matrix` by dot product with each query.
///
/// `queries` is `q × dim` and `matrix` is `n × dim`, row-major. `k` is clipped to
/// `n`, so with no rows every query gets an empty result. For `i8` matrices the
/// score of row `i` is `scales[i] * dot(query, row_i)`.
pub fn topk(
    queries: &[f32],
    matrix: Matrix<'_>,
    dim: usize,
    k: usize,
) -> Result<TopKResult, ShapeError> {
    if dim == 0 || !queries.len().is_multiple_of(dim) {
        return Err(ShapeError::RaggedBuffer {
            len: queries.len(),
            dim,
        });
    }
    if !matrix.len().is_multiple_of(dim) {
        return Err(ShapeError::RaggedBuffer {
            len: matrix.len(),
            dim,
        });
    }
    let n = matrix.len() / dim;
    if let Matrix::I8 { scales, .. } = matrix {
        if scales.len() != n {
            return Err(ShapeError::ScaleLength {
                scales: scales.len(),
                rows: n,
            });
        }
    }
    let nq = queries.len() / dim;
    let k = k.min(n);
    if k == 0 || nq == 0 {
        return Ok(TopKResult {
            k,
            scores: Vec::new(),
            indices: Vec::new(),
        });
    }
    // Enough chunks to balance the threads, each many blocks long.
    let threads = rayon::current_num_threads().max(1);
    let chunk = n.div_ceil(threads * 4).max(BLOCK_ROWS * 4);
    let heaps = (0..n.div_ceil(chunk))
        .into_par_iter()
        .map(|c| scan(queries, matrix, dim, k, c * chunk, ((c + 1) * chunk).min(n)))
        .reduce_with(|a, b| a.into_iter().zip(b).map(|(x, y)| x.merge(y)).collect())
        .unwrap_or_default();
    let mut scores = Vec::with_capacity(nq * k);
    let mut indices = Vec::with_capacity(nq * k);
    for heap in heaps {
        for hit in heap.into_sorted() {
            scores.push(hit.score);
            indices.push(hit.index as i64);
        }
    }
    Ok(TopKResult { k, scores, indices })
}

/// Why a row-subset search was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RowsError {
    /// The queries or the matrix are malformed (as for [`topk`]).
    Shape(ShapeError),
    /// A row id is negative or not below the matrix's row count.
    RowOutOfRange { row: i64, rows: usize },
    /// `offsets` is not `q + 1` non-decreasing bounds from 0 to `rows.len()`.
    BadOffsets { queries: usize, offsets: usize },
}

impl std::fmt::Display for RowsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Shape(e) => e.fmt(f),
            Self::RowOutOfRange { row, rows } => {
                write!(f, "row id {row} out of range for a matrix of {rows} rows")
            }
            Self::BadOffsets { queries, offsets } => write!(
                f,
                "offsets: expected {} non-decreasing bounds from 0 to len(rows) for {queries} \
                 queries, got {offsets} values",
                queries + 1
            ),
        }
    }
}

impl std::error::Error for RowsError {}

impl From<ShapeError> for RowsError {
    fn from(e: ShapeError) -> Self {
        Self::Shape(e)
    }
}

/// Rows fetched ahead of the one being scored: a gathered row is a cache (and often
/// TLB) miss, so its lines are requested while earlier rows are scored.
const PREFETCH_ROWS: usize = 8;

/// Ask for every cache line of `bytes` bytes at `ptr` (a hint: no fault, no effect on results).
#[cfg(target_arch = "x86_64")]
#[inline]
pub(crate) fn prefetch(ptr: *const u8, bytes: usize) {
    use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
    let mut off = 0;
    while off < bytes {
        // SAFETY: prefetching is a hint that never faults, whatever the address.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(ptr.wrapping_add(off).cast::<i8>()) };
        off += 64;
    }
}

#[cfg(not(target_arch = "x86_64"))]
#[inline]
pub(crate) fn prefetch(_ptr: *const u8, _bytes: usize) {}

/// Start address and byte length of row `r` (for prefetching).
fn row_span(matrix: Matrix<'_>, dim: usize, r: usize) -> (*const u8, usize) {
    match matrix {
        Matrix::F32(d) => (d[r * dim..].as_ptr().cast::<u8>(), dim * 4),
        Matrix::F16(d) => (d[r * dim..].as_ptr().cast::<u8>(), dim * 2),
        Matrix::I8 { data, .. } => (data[r * dim..].as_ptr().cast::<u8>(), dim),
    }
}

/// One query against the listed rows (ids already checked), any element type.
// Forced inlining puts this body inside the AVX2 wrapper, which then vectorises it.
#[allow(clippy::inline_always)]
#[inline(always)]
fn scan_rows_body(query: &[f32], matrix: Matrix<'_>, dim: usize, k: usize, ids: &[i64]) -> TopK {
    let mut heap = TopK::new(k);
    let mut buf = vec![0.0f32; dim];
    for (i, &id) in ids.iter().enumerate() {
        if let Some(&ahead) = ids.get(i + PREFETCH_ROWS) {
            let (p, n) = row_span(matrix, dim, ahead as usize);
            prefetch(p, n);
        }
        let r = id as usize;
        let score = match matrix {
            Matrix::F32(d) => dot(query, &d[r * dim..(r + 1) * dim]),
            Matrix::F16(d) => {
                decode_f16(&d[r * dim..(r + 1) * dim], &mut buf);
                dot(query, &buf)
            }
            Matrix::I8 { data, scales } => dot_i8(query, &data[r * dim..(r + 1) * dim]) * scales[r],
        };
        if heap.admits(score) {
            heap.push(Hit { score, index: r });
        }
    }
    heap
}

/// One query against the listed int8 rows with the integer pre-filter of
/// [`scan_i8_filtered`]: the same result as [`scan_rows_body`], bit for bit.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn scan_rows_i8_filtered(
    query: &[f32],
    quant: &QuantQuery,
    data: &[i8],
    scales: &[f32],
    dim: usize,
    k: usize,
    ids: &[i64],
) -> TopK {
    let mut heap = TopK::new(k);
    for (i, &id) in ids.iter().enumerate() {
        if let Some(&ahead) = ids.get(i + PREFETCH_ROWS) {
            prefetch(data[ahead as usize * dim..].as_ptr().cast::<u8>(), dim);
        }
        let r = id as usize;
        let row = &data[r * dim..(r + 1) * dim];
        let scale = scales[r];
        // SAFETY: AVX2 is enabled here; lengths are `dim` and sums fit (QuantQuery).
        let approx = unsafe { dot_i8_i16(&quant.q, row) };
        if heap.rules_out(quant.upper(approx, scale)) {
            continue;
        }
        let score = dot_i8(query, row) * scale;
        if heap.admits(score) {
            heap.push(Hit { score, index: r });
        }
    }
    heap
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn scan_rows_avx2(query: &[f32], matrix: Matrix<'_>, dim: usize, k: usize, ids: &[i64]) -> TopK {
    scan_rows_body(query, matrix, dim, k, ids)
}

fn scan_rows(query: &[f32], matrix: Matrix<'_>, dim: usize, k: usize, ids: &[i64]) -> TopK {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        if let Matrix::I8 { data, scales } = matrix {
            if let Some(quant) = QuantQuery::new(query) {
                // SAFETY: the features the function was compiled for are present.
                return unsafe { scan_rows_i8_filtered(query, &quant, data, scales, dim, k, ids) };
            }
        }
        // SAFETY: the features the function was compiled for are present.
        return unsafe { scan_rows_avx2(query, matrix, dim, k, ids) };
    }
    scan_rows_body(query, matrix, dim, k, ids)
}

/// Rows per parallel piece of a row-subset search; smaller searches stay on the
/// calling thread (handing a short scan to the pool costs more than it saves).
const ROWS_PER_TASK: usize = 16_384;

/// Smallest piece of a lone query's rows handed to another thread.
const MIN_PIECE_ROWS: usize = 96;

/// Exact top-`k` of each query over its own subset of the matrix's rows.
///
/// Query `i` scores the rows `rows[offsets[i]..offsets[i + 1]]` (ids into `matrix`,
/// any order; an id listed twice may be returned twice), gathering them in place:
/// nothing is copied. Scores, ordering and ties are those of [`topk`]. The result's
/// `k` is `min(k, largest subset)`; a query with fewer rows is padded with index
/// `-1` and score `-inf`.
pub fn topk_rows(
    queries: &[f32],
    matrix: Matrix<'_>,
    dim: usize,
    k: usize,
    rows: &[i64],
    offsets: &[usize],
) -> Result<TopKResult, RowsError> {
    if dim == 0 || !queries.len().is_multiple_of(dim) {
        return Err(ShapeError::RaggedBuffer {
            len: queries.len(),
            dim,
        }
        .into());
    }
    if !matrix.len().is_multiple_of(dim) {
        return Err(ShapeError::RaggedBuffer {
            len: matrix.len(),
            dim,
        }
        .into());
    }
    let n = matrix.len() / dim;
    if let Matrix::I8 { scales, .. } = matrix {
        if scales.len() != n {
            return Err(ShapeError::ScaleLength {
                scales: scales.len(),
                rows: n,
            }
            .into());
        }
    }
    let nq = queries.len() / dim;
    let bad_offsets = offsets.len() != nq + 1
        || offsets.first() != Some(&0)
        || offsets.last() != Some(&rows.len())
        || offsets.windows(2).any(|w| w[0] > w[1]);
    if bad_offsets {
        return Err(RowsError::BadOffsets {
            queries: nq,
            offsets: offsets.len(),
        });
    }
    if let Some(&row) = rows.iter().find(|&&r| r < 0 || r as usize >= n) {
        return Err(RowsError::RowOutOfRange { row, rows: n });
    }
    let widest = offsets.windows(2).map(|w| w[1] - w[0]).max().unwrap_or(0);
    let k = k.min(widest);
    if k == 0 || nq == 0 {
        return Ok(TopKResult {
            k,
            scores: Vec::new(),
            indices: Vec::new(),
        });
    }
    // Pieces of at most ROWS_PER_TASK rows, each tagged with its query.
    let mut pieces: Vec<(usize, usize, usize)> = Vec::new();
    for q in 0..nq {
        let mut start = offsets[q];
        // A lone query's gathered rows (an IVF re-rank: a few hundred cache-missing rows)
        // are split over the threads too.
        let size = if nq == 1 {
            (offsets[1] - offsets[0])
                .div_ceil(rayon::current_num_threads().max(1))
                .clamp(MIN_PIECE_ROWS, ROWS_PER_TASK)
        } else {
            ROWS_PER_TASK
        };
        while start < offsets[q + 1] {
            let stop = (start + size).min(offsets[q + 1]);
            pieces.push((q, start, stop));
            start = stop;
        }
    }
    let run = |&(q, start, stop): &(usize, usize, usize)| {
        let query = &queries[q * dim..(q + 1) * dim];
        (q, scan_rows(query, matrix, dim, k, &rows[start..stop]))
    };
    let found: Vec<(usize, TopK)> = if pieces.len() > 1 {
        pieces.par_iter().map(run).collect()
    } else {
        pieces.iter().map(run).collect()
    };
    let mut heaps = vec![TopK::new(k); nq];
    for (q, heap) in found {
        let merged = std::mem::replace(&mut heaps[q], TopK::new(k)).merge(heap);
        heaps[q] = merged;
    }
    let mut scores = Vec::with_capacity(nq * k);
    let mut indices = Vec::with_capacity(nq * k);
    for heap in heaps {
        let hits = heap.into_sorted();
        let pad = k - hits.len();
        for hit in hits {
            scores.push(hit.score);
            indices.push(hit.index as i64);
        }
        scores.extend(std::iter::repeat_n(f32::NEG_INFINITY, pad));
        indices.extend(std::iter::repeat_n(-1, pad));
    }
    Ok(TopKResult { k, scores, indices })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{rngs::StdRng, Rng, SeedableRng};

    /// Reference: score everything in f64, sort by (score desc, index asc).
    fn naive(
        queries: &[f32],
        rows: &[f32],
        scales: Option<&[f32]>,
        dim: usize,
        k: usize,
    ) -> Vec<Vec<usize>> {
        let n = rows.len() / dim;
        queries
            .chunks_exact(dim)
            .map(|q| {
                let mut s: Vec<(f64, usize)> = rows
                    .chunks_exact(dim)
                    .enumerate()
                    .map(|(i, r)| {
                        let d: f64 = q
                            .iter()
                            .zip(r)
                            .map(|(a, b)| f64::from(*a) * f64::from(*b))
                            .sum();
                        (d * f64::from(scales.map_or(1.0, |s| s[i])), i)
                    })
                    .collect();
                s.sort_by(|a, b| b.0.partial_cmp(&a.0).unwrap().then(a.1.cmp(&b.1)));
                s.into_iter().take(k.min(n)).map(|(_, i)| i).collect()
            })
            .collect()
    }

    fn indices_by_query(r: &TopKResult) -> Vec<Vec<usize>> {
        if r.k == 0 {
            return vec![];
        }
        r.indices
            .chunks(r.k)
            .map(|c| c.iter().map(|&i| i as usize).collect())
            .collect()
    }

    #[test]
    fn f32_matches_naive_for_odd_shapes() {
        let mut rng = StdRng::seed_from_u64(1);
        for (nq, n, dim, k) in [
            (1, 1, 1, 1),
            (3, 50, 7, 5),
            (9, 3000, 384, 10),
            (5, 1025, 33, 100),
        ] {
            let q: Vec<f32> = (0..nq * dim).map(|_| rng.random_range(-1.0..1.0)).collect();
            let m: Vec<f32> = (0..n * dim).map(|_| rng.random_range(-1.0..1.0)).collect();
            let got = topk(&q, Matrix::F32(&m), dim, k).unwrap();
            assert_eq!(
                indices_by_query(&got),
                naive(&q, &m, None, dim, k),
                "{nq} {n} {dim} {k}"
            );
        }
    }

    #[test]
    fn i8_and_f16_match_naive_on_decoded_values() {
        let mut rng = StdRng::seed_from_u64(2);
        let (nq, n, dim, k) = (6, 2000, 64, 10);
        let q: Vec<f32> = (0..nq * dim).map(|_| rng.random_range(-1.0..1.0)).collect();
        let data: Vec<i8> = (0..n * dim).map(|_| rng.random_range(-127..=127)).collect();
        let scales: Vec<f32> = (0..n).map(|_| rng.random_range(0.001..0.01)).collect();
        let decoded: Vec<f32> = data.iter().map(|&v| f32::from(v)).collect();
        let got = topk(
            &q,
            Matrix::I8 {
                data: &data,
                scales: &scales,
            },
            dim,
            k,
        )
        .unwrap();
        assert_eq!(
            indices_by_query(&got),
            naive(&q, &decoded, Some(&scales), dim, k)
        );
        // Fewer than four queries take the in-register int8 path.
        let few = &q[..2 * dim];
        let m = Matrix::I8 {
            data: &data,
            scales: &scales,
        };
        let got = topk(few, m, dim, k).unwrap();
        assert_eq!(
            indices_by_query(&got),
            naive(few, &decoded, Some(&scales), dim, k)
        );

        let halves: Vec<f16> = decoded.iter().map(|&v| f16::from_f32(v / 127.0)).collect();
        let back: Vec<f32> = halves.iter().map(|v| v.to_f32()).collect();
        let got = topk(&q, Matrix::F16(&halves), dim, k).unwrap();
        assert_eq!(indices_by_query(&got), naive(&q, &back, None, dim, k));
    }

    /// The integer pre-filter must give the plain exact scan's result bit for bit.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn int8_filter_gives_the_exact_scan_result() {
        if !(std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma"))
        {
            return;
        }
        let mut rng = StdRng::seed_from_u64(3);
        let check = |q: &[f32], data: &[i8], scales: &[f32], dim: usize, k: usize| {
            let n = data.len() / dim;
            let quant: Vec<QuantQuery> = q
                .chunks_exact(dim)
                .map(|x| QuantQuery::new(x).expect("finite query"))
                .collect();
            // SAFETY: the CPU features were checked above.
            let got = unsafe { scan_i8_filtered(q, &quant, data, scales, dim, k, 0, n) };
            let want = scan_body(q, Matrix::I8 { data, scales }, dim, k, 0, n);
            for (g, w) in got.into_iter().zip(want) {
                let key = |h: &Hit| (h.score.to_bits(), h.index);
                let g: Vec<_> = g.into_sorted().iter().map(key).collect();
                let w: Vec<_> = w.into_sorted().iter().map(key).collect();
                assert_eq!(g, w, "dim {dim} k {k}");
            }
        };
        for (nq, n, dim, k) in [(1, 5000, 384, 10), (3, 2000, 17, 7), (2, 300, 3000, 5)] {
            let q: Vec<f32> = (0..nq * dim).map(|_| rng.random_range(-1.0..1.0)).collect();
            let data: Vec<i8> = (0..n * dim).map(|_| rng.random()).collect();
            let mut scales: Vec<f32> = (0..n).map(|_| rng.random_range(0.001..0.01)).collect();
            check(&q, &data, &scales, dim, k);
            // Negative, zero, NaN and infinite scales are scored exactly.
            scales[1] = -0.5;
            scales[2] = 0.0;
            scales[3] = f32::NAN;
            scales[4] = f32::INFINITY;
            check(&q, &data, &scales, dim, k);
        }
        // All rows equal: every score ties, the lowest indices win.
        let dim = 64;
        let row: Vec<i8> = (0..dim).map(|_| rng.random()).collect();
        let data: Vec<i8> = row.iter().copied().cycle().take(500 * dim).collect();
        let q: Vec<f32> = (0..dim).map(|_| rng.random_range(-1.0..1.0)).collect();
        check(&q, &data, &vec![0.01; 500], dim, 10);
        // One large query value among tiny ones: the rounding error is what is left.
        let mut q: Vec<f32> = (0..dim).map(|_| rng.random_range(-1e-4..1e-4)).collect();
        q[0] = 1e3;
        let data: Vec<i8> = (0..2000 * dim).map(|_| rng.random()).collect();
        check(&q, &data, &vec![1.0; 2000], dim, 10);
        // Queries too long for i32 sums, or not finite, take the plain path.
        assert!(QuantQuery::new(&vec![1.0; 300_000]).is_none());
        assert!(QuantQuery::new(&[1.0, f32::NAN]).is_none());
        assert!(QuantQuery::new(&[0.0, 0.0]).is_none());
    }

    #[test]
    #[allow(clippy::float_cmp)] // 4.0 is exact: a sum of ones
    fn ties_go_to_the_lower_index_across_threads() {
        let dim = 4;
        let n = 10_000;
        let m = vec![1.0f32; n * dim];
        let got = topk(&[1.0, 1.0, 1.0, 1.0], Matrix::F32(&m), dim, 5).unwrap();
        assert_eq!(got.indices, vec![0, 1, 2, 3, 4]);
        assert!(got.scores.iter().all(|&s| s == 4.0));
    }

    #[test]
    fn k_is_clipped_and_empty_matrix_gives_empty_rows() {
        let got = topk(&[1.0, 0.0], Matrix::F32(&[0.5, 0.0, 2.0, 0.0]), 2, 10).unwrap();
        assert_eq!((got.k, got.indices), (2, vec![1, 0]));
        let got = topk(&[1.0, 0.0], Matrix::F32(&[]), 2, 10).unwrap();
        assert_eq!(got.k, 0);
        assert!(got.scores.is_empty());
    }

    #[test]
    fn nan_scores_rank_last() {
        let m = [f32::NAN, 1.0, -5.0];
        let got = topk(&[1.0], Matrix::F32(&m), 1, 3).unwrap();
        assert_eq!(got.indices, vec![1, 2, 0]);
    }

    #[test]
    fn bad_shapes_are_refused() {
        assert!(topk(&[1.0, 2.0, 3.0], Matrix::F32(&[1.0, 2.0]), 2, 1).is_err());
        assert!(topk(&[1.0], Matrix::F32(&[1.0]), 0, 1).is_err());
        let err = topk(
            &[1.0],
            Matrix::I8 {
                data: &[1, 2],
                scales: &[1.0],
            },
            1,
            1,
        )
        .unwrap_err();
        assert_eq!(err, ShapeError::ScaleLength { scales: 1, rows: 2 });
    }

    /// Reference for a row subset: score the listed rows in f64, best first, ties to
    /// the lower row id.
    fn naive_rows(
        q: &[f32],
        rows: &[f32],
        scales: Option<&[f32]>,
        dim: usize,
        ids: &[i64],
        k: usize,
    ) -> Vec<i64> {
        let mut s: Vec<(f64, i64)> = ids
            .iter()
            .map(|&i| {
                let r = &rows[i as usize * dim..(i as usize + 1) * dim];
                let d: f64 = q
                    .iter()
                    .zip(r)
                    .map(|(a, b)| f64::from(*a) * f64::from(*b))
                    .sum();
                (d * f64::from(scales.map_or(1.0, |s| s[i as usize])), i)
            })
            .collect();
        s.sort_by(|a, b| b.0.partial_cmp(&a.0).unwrap().then(a.1.cmp(&b.1)));
        s.into_iter().take(k).map(|(_, i)| i).collect()
    }

    #[test]
    fn row_subsets_match_naive_for_every_dtype() {
        let mut rng = StdRng::seed_from_u64(4);
        let (n, dim, k) = (40_000, 48, 10);
        let data: Vec<i8> = (0..n * dim).map(|_| rng.random_range(-127..=127)).collect();
        let scales: Vec<f32> = (0..n).map(|_| rng.random_range(0.001..0.01)).collect();
        let decoded: Vec<f32> = data.iter().map(|&v| f32::from(v)).collect();
        let halves: Vec<f16> = decoded.iter().map(|&v| f16::from_f32(v / 127.0)).collect();
        let back: Vec<f32> = halves.iter().map(|v| v.to_f32()).collect();
        // Three queries: a large subset (split over the pool), a small one, one of 3 rows.
        let nq = 3;
        let q: Vec<f32> = (0..nq * dim).map(|_| rng.random_range(-1.0..1.0)).collect();
        let sets: Vec<Vec<i64>> = vec![
            (0..n as i64).filter(|i| i % 2 == 0).collect(),
            (0..500)
                .map(|_| rng.random_range(0..n as i64))
                .collect::<std::collections::BTreeSet<_>>()
                .into_iter()
                .rev()
                .collect(),
            vec![7, 3, 39_999],
        ];
        let rows: Vec<i64> = sets.concat();
        let mut offsets = vec![0];
        for s in &sets {
            offsets.push(offsets.last().unwrap() + s.len());
        }
        let check = |m: Matrix<'_>, plain: &[f32], sc: Option<&[f32]>| {
            let got = topk_rows(&q, m, dim, k, &rows, &offsets).unwrap();
            assert_eq!(got.k, k);
            for (j, set) in sets.iter().enumerate() {
                let mut want = naive_rows(&q[j * dim..(j + 1) * dim], plain, sc, dim, set, k);
                want.resize(k, -1);
                assert_eq!(got.indices[j * k..(j + 1) * k], want[..], "query {j}");
            }
            // A short subset is padded with -1 and -inf.
            assert!(got.scores[2 * k + 3..]
                .iter()
                .all(|s| *s == f32::NEG_INFINITY));
        };
        check(
            Matrix::I8 {
                data: &data,
                scales: &scales,
            },
            &decoded,
            Some(&scales),
        );
        check(Matrix::F16(&halves), &back, None);
        check(Matrix::F32(&back), &back, None);
        // The same rows through the full scan of a gathered copy agree on scores.
        let one = topk_rows(
            &q[..dim],
            Matrix::F32(&back),
            dim,
            k,
            &sets[0],
            &[0, sets[0].len()],
        )
        .unwrap();
        let copy: Vec<f32> = sets[0]
            .iter()
            .flat_map(|&i| back[i as usize * dim..(i as usize + 1) * dim].to_vec())
            .collect();
        let full = topk(&q[..dim], Matrix::F32(&copy), dim, k).unwrap();
        assert_eq!(one.scores, full.scores);
    }

    /// A lone query's rows are split over the threads (`MIN_PIECE_ROWS` up): the result is
    /// the one-piece scan's, ties included (rows repeated, so scores repeat).
    #[test]
    fn lone_query_split_matches_naive_with_ties() {
        let mut rng = StdRng::seed_from_u64(8);
        let (n, dim) = (600, 37);
        let base: Vec<f32> = (0..n / 2 * dim)
            .map(|_| rng.random_range(-1.0..1.0))
            .collect();
        let data = [base.clone(), base].concat(); // row i + n/2 repeats row i
        let halves: Vec<f16> = data.iter().map(|&v| f16::from_f32(v)).collect();
        let back: Vec<f32> = halves.iter().map(|v| v.to_f32()).collect();
        let q: Vec<f32> = (0..dim).map(|_| rng.random_range(-1.0..1.0)).collect();
        for len in [1usize, 95, 96, 97, 193, 256, 600] {
            let rows: Vec<i64> = (0..len as i64).map(|i| (i * 7) % n as i64).collect();
            for k in [1usize, 10, 256] {
                let got =
                    topk_rows(&q, Matrix::F16(&halves), dim, k, &rows, &[0, rows.len()]).unwrap();
                let mut want = naive_rows(&q, &back, None, dim, &rows, k.min(len));
                want.resize(k.min(len), -1);
                assert_eq!(got.indices, want, "rows {len} k {k}");
            }
        }
    }

    #[test]
    fn row_subsets_refuse_bad_ids_and_offsets() {
        let m = Matrix::F32(&[1.0, 0.0, 0.0, 1.0]);
        let err = topk_rows(&[1.0, 0.0], m, 2, 1, &[0, 2], &[0, 2]).unwrap_err();
        assert_eq!(err, RowsError::RowOutOfRange { row: 2, rows: 2 });
        let err = topk_rows(&[1.0, 0.0], m, 2, 1, &[-1], &[0, 1]).unwrap_err();
        assert_eq!(err, RowsError::RowOutOfRange { row: -1, rows: 2 });
        for offsets in [&[0][..], &[0, 1][..], &[1, 2][..], &[0, 2, 2][..]] {
            assert!(matches!(
                topk_rows(&[1.0, 0.0], m, 2, 1, &[0, 1], offsets),
                Err(RowsError::BadOffsets { .. })
            ));
        }
        // No rows at all: k clips to 0, no error.
        let got = topk_rows(&[1.0, 0.0, 0.0, 1.0], m, 2, 5, &[], &[0, 0, 0]).unwrap();
        assert_eq!((got.k, got.indices.len()), (0, 0));
        let got = topk_rows(&[0.0, 1.0], m, 2, 5, &[0, 1], &[0, 2]).unwrap();
        assert_eq!((got.k, got.indices), (2, vec![1, 0]));
    }
}
