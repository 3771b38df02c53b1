//! Candidate search over 1-bit vector codes (RaBitQ-style, simplified).
//!
//! Each stored vector `x` (already multiplied by a random orthogonal rotation `P`) is
//! kept as the signs of its coordinates, one bit per dimension (`1` = positive, padding
//! bits `0`), plus two `f32` factors: `f = |x|^2 / |Px|_1` and `g = f * popcount(code)`.
//! With `s` the ±1 signs, `f * <s, Pq>` estimates `<x, q>` without bias for a random
//! rotation (RaBitQ, SIGMOD 2024). The rotated query is quantised to `bits` bits per
//! coordinate, `Pq_j ≈ lo + delta * u_j`, and stored as bit planes, so
//!
//! `<s, Pq> ≈ 2 (lo * popcount(code) + delta * S) - (dim * lo + delta * Σ u_j)`,
//! `S = Σ_p 2^p popcount(code & plane_p)`:
//!
//! `bits` AND + POPCNT per code word and a few flops per row. The estimate only ranks
//! candidates; the caller re-scores the best `r` exactly from the stored vectors.
//!
//! Rows are addressed through spans (`start`, `len`) of a code arena whose rows are grouped
//! by inverted list; `ids` maps an arena row to the vector's id. Work is split over rayon
//! threads by groups of spans; each group keeps its best `r`, merged at the end. The order
//! is total (estimate descending, then id ascending), so results never depend on threads.
//! A query's groups share a [`Bound`]: the best `r`-th estimate any of them has seen, a
//! floor below which no row can enter the final `r`, so a group started late does not
//! refill its buffer from scratch; it only drops rows, so it changes no result.

use rayon::prelude::*;
use std::cmp::Ordering;
use std::sync::atomic::{AtomicU32, Ordering as AtomicOrdering};

/// Rows per parallel task: large enough that a task's overhead (~µs) is small against
/// its scan (~5 ns per row), small enough to balance two threads on one query.
const TASK_ROWS: usize = 16_384;

/// A code arena, borrowed from the caller.
#[derive(Debug, Clone, Copy)]
pub struct Codes<'a> {
    /// `rows × words_per_row` code words; bit `j % 64` of word `j / 64` is dimension `j`.
    pub words: &'a [u64],
    /// `rows × 2` factors: `f` and `g` (see the module documentation).
    pub factors: &'a [f32],
    /// The vector id of each arena row.
    pub ids: &'a [i64],
    /// Dimension of the (rotated) vectors.
    pub dim: usize,
}

impl Codes<'_> {
    /// Code words per row: `ceil(dim / 64)`.
    pub fn words_per_row(&self) -> usize {
        self.dim.div_ceil(64)
    }

    fn rows(&self) -> usize {
        self.ids.len()
    }
}

/// Why a code search was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CodesError {
    /// Zero dimension, or `bits` outside `1..=8`.
    Parameter(String),
    /// Arrays whose lengths do not fit each other.
    Shape(String),
    /// A span reaching past the arena, or bounds that are not `q + 1` non-decreasing
    /// values from 0 to the number of spans.
    Span(String),
}

impl std::fmt::Display for CodesError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Parameter(m) | Self::Shape(m) | Self::Span(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for CodesError {}

/// A rotated query quantised to `bits` bit planes.
#[derive(Debug, Clone)]
pub struct QueryPlanes {
    /// `bits × words_per_row` words, plane `p` holding bit `p` of every `u_j`.
    pub(crate) planes: Vec<u64>,
    pub(crate) bits: usize,
    pub(crate) lo: f32,
    pub(crate) delta: f32,
    /// `-(dim * lo + delta * Σ u_j)`.
    pub(crate) bias: f32,
}

impl QueryPlanes {
    /// Quantise `query` (already rotated) to `bits` bits per coordinate.
    ///
    /// One bit keeps the sign with the mean magnitude (`±a`); more bits spread
    /// `2^bits` levels evenly from the smallest to the largest coordinate.
    pub fn new(query: &[f32], bits: usize) -> Self {
        let dim = query.len();
        let words = dim.div_ceil(64);
        let (lo, delta) = if bits == 1 {
            let a = query.iter().map(|v| v.abs()).sum::<f32>() / dim.max(1) as f32;
            (-a, 2.0 * a)
        } else {
            let lo = query.iter().copied().fold(f32::INFINITY, f32::min);
            let hi = query.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let levels = ((1u32 << bits) - 1) as f32;
            let delta = (hi - lo) / levels;
            // A constant query (or an empty one) has nothing to spread.
            if delta.is_finite() && delta > 0.0 {
                (lo, delta)
            } else {
                (if lo.is_finite() { lo } else { 0.0 }, 1.0)
            }
        };
        let top = (1u32 << bits) - 1;
        let mut planes = vec![0u64; bits * words];
        let mut sum_u = 0u64;
        for (j, &v) in query.iter().enumerate() {
            let u = if bits == 1 {
                u32::from(v > 0.0)
            } else {
                (((v - lo) / delta).round().max(0.0) as u32).min(top)
            };
            sum_u += u64::from(u);
            for (p, plane) in planes.chunks_exact_mut(words).enumerate() {
                plane[j / 64] |= u64::from((u >> p) & 1) << (j % 64);
            }
        }
        let offset = -(dim as f32 * lo + delta * sum_u as f32);
        Self {
            planes,
            bits,
            lo,
            delta,
            bias: offset,
        }
    }

    /// The estimate of `<x, q>` for one code row and its factors `f`, `g`.
    // Forced inlining puts this body inside the POPCNT wrapper, which then uses the
    // instruction instead of the portable bit-trick sequence.
    #[allow(clippy::inline_always)]
    #[inline(always)]
    fn estimate(&self, code: &[u64], f: f32, g: f32) -> f32 {
        let words = code.len();
        let mut s = 0u32;
        for p in 0..self.bits {
            let plane = &self.planes[p * words..(p + 1) * words];
            let mut c = 0u32;
            for (a, b) in code.iter().zip(plane) {
                c += (a & b).count_ones();
            }
            s += c << p;
        }
        f * (2.0 * self.delta * s as f32 + self.bias) + 2.0 * self.lo * g
    }
}

/// One candidate: an estimate and the vector's id.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Cand {
    pub(crate) est: f32,
    pub(crate) id: i64,
}

/// Total order, best first: higher estimate, then lower id.
pub(crate) fn better(a: &Cand, b: &Cand) -> Ordering {
    b.est.total_cmp(&a.est).then(a.id.cmp(&b.id))
}

/// The best `r` candidates seen so far: a buffer pruned to `r` whenever it reaches `2r`
/// (amortised O(1) per push), with the `r`-th estimate as a cheap admission threshold.
pub(crate) struct Pool {
    r: usize,
    items: Vec<Cand>,
    /// The `r`-th best estimate once known: a row strictly below it cannot enter.
    pub(crate) threshold: f32,
}

impl Pool {
    pub(crate) fn new(r: usize) -> Self {
        Self {
            r,
            items: Vec::with_capacity(2 * r + 1),
            threshold: f32::NEG_INFINITY,
        }
    }

    #[inline]
    pub(crate) fn push(&mut self, est: f32, id: i64) {
        // Strictly below the r-th best: cannot enter (equal estimates may, by id).
        if est < self.threshold {
            return;
        }
        self.items.push(Cand { est, id });
        if self.items.len() >= 2 * self.r {
            self.prune();
        }
    }

    fn prune(&mut self) {
        if self.items.len() > self.r {
            self.items.select_nth_unstable_by(self.r - 1, better);
            self.items.truncate(self.r);
            // An adopted floor may exceed the r-th best of the rows kept from before it.
            self.threshold = self.threshold.max(self.items[self.r - 1].est);
        }
    }

    /// Raise the admission threshold to the shared floor (rows below it cannot enter the
    /// query's final `r`, whichever group holds them).
    #[inline]
    pub(crate) fn adopt(&mut self, bound: &Bound) {
        self.threshold = self.threshold.max(bound.get());
    }

    fn merge(mut self, other: Self) -> Self {
        for c in other.items {
            self.push(c.est, c.id);
        }
        self
    }

    fn into_sorted(mut self) -> Vec<Cand> {
        self.prune();
        self.items.sort_unstable_by(better);
        self.items
    }
}

/// A query's floor shared by its parallel groups: the highest `r`-th best estimate any
/// group's pool has reached (an `f32` in an atomic; relaxed order suffices, as any value a
/// group reads is a valid floor).
pub(crate) struct Bound(AtomicU32);

impl Bound {
    fn new() -> Self {
        Self(AtomicU32::new(f32::NEG_INFINITY.to_bits()))
    }

    #[inline]
    pub(crate) fn get(&self) -> f32 {
        f32::from_bits(self.0.load(AtomicOrdering::Relaxed))
    }

    /// Raise the floor to `v` (no effect when `v` is lower or NaN).
    #[inline]
    pub(crate) fn raise(&self, v: f32) {
        let mut cur = self.0.load(AtomicOrdering::Relaxed);
        while v > f32::from_bits(cur) {
            match self.0.compare_exchange_weak(
                cur,
                v.to_bits(),
                AtomicOrdering::Relaxed,
                AtomicOrdering::Relaxed,
            ) {
                Ok(_) => return,
                Err(now) => cur = now,
            }
        }
    }
}

/// `Σ_p 2^p popcount(code & plane_p)` for a fixed number of code words `W` (so the
/// loops unroll and the planes stay in registers).
#[allow(clippy::inline_always)]
#[inline(always)]
fn plane_sum<const W: usize>(code: &[u64; W], planes: &[[u64; W]]) -> u32 {
    let mut s = 0u32;
    for (p, plane) in planes.iter().enumerate() {
        let mut c = 0u32;
        for w in 0..W {
            c += (code[w] & plane[w]).count_ones();
        }
        s += c << p;
    }
    s
}

/// Scan the spans with `W` words per code. Only a row whose estimate can enter the pool
/// has its id read (the scan streams codes and factors: ~56 B per row at 384-d).
#[allow(clippy::inline_always)]
#[inline(always)]
fn scan_fixed<const W: usize>(
    codes: Codes<'_>,
    query: &QueryPlanes,
    spans: &[(usize, usize)],
    r: usize,
    limit: i64,
) -> Pool {
    let planes: Vec<[u64; W]> = query
        .planes
        .chunks_exact(W)
        .map(|p| p.try_into().expect("a plane has W words"))
        .collect();
    let (scale, bias, lo2) = (2.0 * query.delta, query.bias, 2.0 * query.lo);
    let mut pool = Pool::new(r);
    for &(start, len) in spans {
        let words = &codes.words[start * W..(start + len) * W];
        let factors = &codes.factors[2 * start..2 * (start + len)];
        for (i, (code, fg)) in words
            .chunks_exact(W)
            .zip(factors.chunks_exact(2))
            .enumerate()
        {
            let code: &[u64; W] = code.try_into().expect("a code has W words");
            let s = plane_sum(code, &planes);
            let est = fg[0] * (scale * s as f32 + bias) + lo2 * fg[1];
            if est >= pool.threshold {
                let id = codes.ids[start + i];
                if (0..limit).contains(&id) {
                    pool.push(est, id); // ids >= limit: added after the caller's snapshot
                }
            }
        }
    }
    pool
}

#[allow(clippy::inline_always)]
#[inline(always)]
fn scan_spans_body(
    codes: Codes<'_>,
    query: &QueryPlanes,
    spans: &[(usize, usize)],
    r: usize,
    limit: i64,
) -> Pool {
    match codes.words_per_row() {
        6 => scan_fixed::<6>(codes, query, spans, r, limit), // 384-d (MiniLM, hash)
        12 => scan_fixed::<12>(codes, query, spans, r, limit), // 768-d
        24 => scan_fixed::<24>(codes, query, spans, r, limit), // 1,536-d (OpenAI small)
        _ => scan_dynamic(codes, query, spans, r, limit),
    }
}

/// Any number of words per code (dimensions without a fixed-size scan).
#[allow(clippy::inline_always)]
#[inline(always)]
fn scan_dynamic(
    codes: Codes<'_>,
    query: &QueryPlanes,
    spans: &[(usize, usize)],
    r: usize,
    limit: i64,
) -> Pool {
    let words = codes.words_per_row();
    let mut pool = Pool::new(r);
    for &(start, len) in spans {
        for row in start..start + len {
            let code = &codes.words[row * words..(row + 1) * words];
            let est = query.estimate(code, codes.factors[2 * row], codes.factors[2 * row + 1]);
            let id = codes.ids[row];
            if (0..limit).contains(&id) {
                pool.push(est, id); // ids >= limit: added after the caller's snapshot
            }
        }
    }
    pool
}

/// The same scan compiled with POPCNT (chosen at run time: the wheel's baseline lacks it).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "popcnt")]
fn scan_spans_popcnt(
    codes: Codes<'_>,
    query: &QueryPlanes,
    spans: &[(usize, usize)],
    r: usize,
    limit: i64,
) -> Pool {
    scan_spans_body(codes, query, spans, r, limit)
}

fn scan_spans(
    codes: Codes<'_>,
    query: &QueryPlanes,
    spans: &[(usize, usize)],
    r: usize,
    limit: i64,
) -> Pool {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("popcnt") {
        // SAFETY: the feature the function was compiled for is present.
        return unsafe { scan_spans_popcnt(codes, query, spans, r, limit) };
    }
    scan_spans_body(codes, query, spans, r, limit)
}

fn check(
    codes: Codes<'_>,
    queries: &[f32],
    bits: usize,
    spans: &[(usize, usize)],
    bounds: &[usize],
) -> Result<(), CodesError> {
    let rows = codes.rows();
    if codes.words.len() != rows * codes.words_per_row() || codes.factors.len() != 2 * rows {
        return Err(CodesError::Shape(format!(
            "codes: {rows} ids need {} code words and {} factors, got {} and {}",
            rows * codes.words_per_row(),
            2 * rows,
            codes.words.len(),
            codes.factors.len()
        )));
    }
    check_query(codes.dim, queries, bits, spans, bounds, rows)
}

/// Checks shared by the code scans: dimension, bits, queries, bounds and spans.
pub(crate) fn check_query(
    dim: usize,
    queries: &[f32],
    bits: usize,
    spans: &[(usize, usize)],
    bounds: &[usize],
    rows: usize,
) -> Result<(), CodesError> {
    if dim == 0 {
        return Err(CodesError::Parameter("dimension must be positive".into()));
    }
    if !(1..=8).contains(&bits) {
        return Err(CodesError::Parameter(format!(
            "bits must be 1 to 8, got {bits}"
        )));
    }
    if !queries.len().is_multiple_of(dim) {
        return Err(CodesError::Shape(format!(
            "queries: {} values are not rows of dimension {dim}",
            queries.len()
        )));
    }
    let q = queries.len() / dim;
    let ok = bounds.len() == q + 1
        && bounds.first() == Some(&0)
        && bounds.last() == Some(&spans.len())
        && bounds.windows(2).all(|w| w[0] <= w[1]);
    if !ok {
        return Err(CodesError::Span(format!(
            "bounds: expected {} non-decreasing values from 0 to {} (the spans), got {}",
            q + 1,
            spans.len(),
            bounds.len()
        )));
    }
    if let Some(&(s, l)) = spans
        .iter()
        .find(|&&(s, l)| s.checked_add(l).is_none_or(|e| e > rows))
    {
        return Err(CodesError::Span(format!(
            "span ({s}, {l}) reaches past the arena's {rows} rows"
        )));
    }
    Ok(())
}

/// The ids of the best `r` rows per query by estimated inner product, best first.
///
/// `queries` is `q × dim` (already rotated); query `i` scans the arena rows of
/// `spans[bounds[i]..bounds[i + 1]]`; rows whose id is `>= limit` are skipped. Returns
/// `q × r` ids, padded with -1 when a query has fewer rows.
pub fn code_topk(
    codes: Codes<'_>,
    queries: &[f32],
    bits: usize,
    spans: &[(usize, usize)],
    bounds: &[usize],
    r: usize,
    limit: i64,
) -> Result<Vec<i64>, CodesError> {
    check(codes, queries, bits, spans, bounds)?;
    let planes: Vec<QueryPlanes> = queries
        .chunks_exact(codes.dim)
        .map(|v| QueryPlanes::new(v, bits))
        .collect();
    Ok(run_tasks(
        planes.len(),
        spans,
        bounds,
        r,
        TASK_ROWS,
        |qi, s, _| scan_spans(codes, &planes[qi], s, r, limit),
    ))
}

/// Split `q` queries' spans (`spans[bounds[i]..bounds[i + 1]]` for query `i`) into tasks of
/// about `task_rows` rows, run `scan(query, spans, floor)` on each (over rayon threads when
/// the call holds two tasks' rows or more; `floor` is the query's shared [`Bound`], which
/// a scan may use to skip rows), merge each query's pools and return `q × r` ids, -1 padded.
pub(crate) fn run_tasks<F>(
    q: usize,
    spans: &[(usize, usize)],
    bounds: &[usize],
    r: usize,
    task_rows: usize,
    scan: F,
) -> Vec<i64>
where
    F: Fn(usize, &[(usize, usize)], &Bound) -> Pool + Sync,
{
    let mut out = vec![-1i64; q * r];
    if r == 0 || q == 0 {
        return out;
    }
    // Tasks: (query, a run of its spans holding about task_rows rows).
    let mut tasks: Vec<(usize, &[(usize, usize)])> = Vec::new();
    let mut total = 0usize;
    for (qi, w) in bounds.windows(2).enumerate() {
        let mine = &spans[w[0]..w[1]];
        let (mut from, mut rows) = (0usize, 0usize);
        for (i, &(_, len)) in mine.iter().enumerate() {
            rows += len;
            if rows >= task_rows {
                tasks.push((qi, &mine[from..=i]));
                total += rows;
                (from, rows) = (i + 1, 0);
            }
        }
        if from < mine.len() {
            tasks.push((qi, &mine[from..]));
            total += rows;
        }
    }
    let floors: Vec<Bound> = (0..q).map(|_| Bound::new()).collect();
    let run = |&(qi, s): &(usize, &[(usize, usize)])| (qi, scan(qi, s, &floors[qi]));
    let pools: Vec<(usize, Pool)> = if total >= 2 * task_rows && tasks.len() > 1 {
        tasks.par_iter().map(run).collect()
    } else {
        tasks.iter().map(run).collect()
    };
    let mut merged: Vec<Option<Pool>> = (0..q).map(|_| None).collect();
    for (qi, pool) in pools {
        merged[qi] = Some(match merged[qi].take() {
            Some(p) => p.merge(pool),
            None => pool,
        });
    }
    for (qi, pool) in merged.into_iter().enumerate() {
        if let Some(pool) = pool {
            for (slot, c) in out[qi * r..(qi + 1) * r].iter_mut().zip(pool.into_sorted()) {
                *slot = c.id;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// Sign codes and factors of `rows` vectors (no rotation: the tests' vectors are random).
    fn encode(vectors: &[f32], dim: usize) -> (Vec<u64>, Vec<f32>) {
        let words = dim.div_ceil(64);
        let mut codes = Vec::new();
        let mut factors = Vec::new();
        for v in vectors.chunks_exact(dim) {
            let mut w = vec![0u64; words];
            for (j, &x) in v.iter().enumerate() {
                w[j / 64] |= u64::from(x > 0.0) << (j % 64);
            }
            let l1: f32 = v.iter().map(|x| x.abs()).sum();
            let n2: f32 = v.iter().map(|x| x * x).sum();
            let f = if l1 > 0.0 { n2 / l1 } else { 0.0 };
            let pc: u32 = w.iter().map(|x| x.count_ones()).sum();
            factors.extend([f, f * pc as f32]);
            codes.extend(w);
        }
        (codes, factors)
    }

    fn random(n: usize, dim: usize, seed: u64) -> Vec<f32> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        (0..n * dim).map(|_| rng.random::<f32>() - 0.5).collect()
    }

    /// With 8 bits the estimate is `f * <s, q>` up to the query's rounding.
    #[test]
    fn estimate_matches_the_float_formula() {
        let dim = 100; // not a multiple of 64: padding bits must not count
        let v = random(50, dim, 1);
        let q = random(1, dim, 2);
        let (codes, factors) = encode(&v, dim);
        for bits in [1usize, 4, 8] {
            let planes = QueryPlanes::new(&q, bits);
            for (i, row) in v.chunks_exact(dim).enumerate() {
                let words = &codes[i * 2..i * 2 + 2];
                let est = planes.estimate(words, factors[2 * i], factors[2 * i + 1]);
                // The same estimate with the dequantised query, in floats.
                let deq: Vec<f32> = q
                    .iter()
                    .map(|&x| {
                        if bits == 1 {
                            if x > 0.0 {
                                planes.lo + planes.delta
                            } else {
                                planes.lo
                            }
                        } else {
                            let top = ((1u32 << bits) - 1) as f32;
                            planes.lo
                                + planes.delta
                                    * ((x - planes.lo) / planes.delta).round().clamp(0.0, top)
                        }
                    })
                    .collect();
                let want: f32 = factors[2 * i]
                    * row
                        .iter()
                        .zip(&deq)
                        .map(|(x, y)| if *x > 0.0 { *y } else { -*y })
                        .sum::<f32>();
                assert!(
                    (est - want).abs() < 1e-3,
                    "bits {bits} row {i}: {est} vs {want}"
                );
            }
        }
    }

    #[test]
    fn ranks_like_a_sort_of_the_estimates_whatever_the_split() {
        let dim = 64;
        let n = 40_000;
        let v = random(n, dim, 3);
        let q = random(2, dim, 4);
        let (words, factors) = encode(&v, dim);
        let ids: Vec<i64> = (0..n as i64).rev().collect();
        let codes = Codes {
            words: &words,
            factors: &factors,
            ids: &ids,
            dim,
        };
        // Query 0 scans everything in many spans (parallel path); query 1 one small span.
        let mut spans: Vec<(usize, usize)> = (0..n).step_by(1000).map(|s| (s, 1000)).collect();
        spans.push((5, 20));
        let bounds = [0, spans.len() - 1, spans.len()];
        let r = 7;
        let got = code_topk(codes, &q, 4, &spans, &bounds, r, i64::MAX).unwrap();
        for (qi, rows) in [(0usize, 0..n), (1, 5..25)] {
            let planes = QueryPlanes::new(&q[qi * dim..(qi + 1) * dim], 4);
            let mut all: Vec<Cand> = rows
                .map(|row| Cand {
                    est: planes.estimate(&words[row..=row], factors[2 * row], factors[2 * row + 1]),
                    id: ids[row],
                })
                .collect();
            all.sort_by(better);
            let want: Vec<i64> = all.iter().take(r).map(|c| c.id).collect();
            assert_eq!(&got[qi * r..(qi + 1) * r], &want[..]);
        }
    }

    #[test]
    fn skips_ids_past_the_limit_and_pads() {
        let dim = 8;
        let v = random(5, dim, 5);
        let (words, factors) = encode(&v, dim);
        let ids = [0i64, 1, 2, 3, 4];
        let codes = Codes {
            words: &words,
            factors: &factors,
            ids: &ids,
            dim,
        };
        let got = code_topk(codes, &random(1, dim, 6), 4, &[(0, 5)], &[0, 1], 4, 2).unwrap();
        let mut kept: Vec<i64> = got[..2].to_vec();
        kept.sort_unstable();
        assert_eq!(kept, vec![0, 1]);
        assert_eq!(&got[2..], &[-1, -1]);
    }

    #[test]
    fn refuses_bad_input() {
        let words = [0u64; 2];
        let factors = [0f32; 4];
        let ids = [0i64, 1];
        let codes = Codes {
            words: &words,
            factors: &factors,
            ids: &ids,
            dim: 8,
        };
        let q = [0f32; 8];
        assert!(matches!(
            code_topk(codes, &q, 0, &[], &[0, 0], 1, 9),
            Err(CodesError::Parameter(_))
        ));
        assert!(matches!(
            code_topk(codes, &q, 4, &[(1, 2)], &[0, 1], 1, 9),
            Err(CodesError::Span(_))
        ));
        assert!(matches!(
            code_topk(codes, &q, 4, &[], &[0], 1, 9),
            Err(CodesError::Span(_))
        ));
        assert!(matches!(
            code_topk(codes, &q[..5], 4, &[], &[0, 0], 1, 9),
            Err(CodesError::Shape(_))
        ));
        let short = Codes {
            words: &words[..1],
            ..codes
        };
        assert!(matches!(
            code_topk(short, &q, 4, &[], &[0, 0], 1, 9),
            Err(CodesError::Shape(_))
        ));
    }
}
