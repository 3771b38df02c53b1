//! IVF probe selection: the `nprobe` centroids with the highest dot product per query.
//!
//! One query against a few thousand centroids is a small matrix-vector product; NumPy hands
//! it to a threaded BLAS whose threads, on a loaded machine, cost more than the product
//! (1M-module IVF, 3,200 × 384 centroids, load 11: 13.2 ms CPU per query with OpenBLAS'
//! threads against 3.1 ms with one). Here it runs on the calling thread, eight lanes at a
//! time (AVX2 when the CPU has it, else the same loop portable), and selects without a sort.

use std::cmp::Ordering;

// The same eight-lane dot product the top-k kernels inline into their AVX2 wrappers.
use crate::topk::dot;

/// Why a probe selection was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeError(pub String);

impl std::fmt::Display for ProbeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ProbeError {}

#[allow(clippy::inline_always)]
#[inline(always)]
fn scores_body(query: &[f32], centroids: &[f32], out: &mut [f32]) {
    for (o, c) in out.iter_mut().zip(centroids.chunks_exact(query.len())) {
        *o = dot(query, c);
    }
}

/// [`scores_body`] with explicit AVX2: the same lane sums (a multiply, then an add: no FMA,
/// so every rounding matches [`dot`]) for four rows per pass. The compiler left the
/// portable loop nearly scalar (~130 ns per 384-d centroid, in L2 or not).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn scores_avx2(query: &[f32], centroids: &[f32], out: &mut [f32]) {
    use std::arch::x86_64::{
        _mm256_add_ps, _mm256_loadu_ps, _mm256_mul_ps, _mm256_setzero_ps, _mm256_storeu_ps,
    };
    let dim = query.len();
    let whole = dim / 8 * 8;
    let quads = out.len() / 4;
    for quad in 0..quads {
        let rows: [&[f32]; 4] =
            std::array::from_fn(|i| &centroids[(4 * quad + i) * dim..(4 * quad + i + 1) * dim]);
        let mut acc = [_mm256_setzero_ps(); 4];
        for at in (0..whole).step_by(8) {
            // SAFETY: at + 8 <= whole <= dim, the length of the query and of every row.
            unsafe {
                let x = _mm256_loadu_ps(query.as_ptr().add(at));
                for (a, row) in acc.iter_mut().zip(rows) {
                    let y = _mm256_loadu_ps(row.as_ptr().add(at));
                    *a = _mm256_add_ps(*a, _mm256_mul_ps(x, y));
                }
            }
        }
        for (i, (a, row)) in acc.into_iter().zip(rows).enumerate() {
            let mut lanes = [0f32; 8];
            // SAFETY: `lanes` holds 8 floats.
            unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), a) };
            let tail: f32 = query[whole..]
                .iter()
                .zip(&row[whole..])
                .map(|(x, y)| x * y)
                .sum();
            out[4 * quad + i] = lanes.iter().sum::<f32>() + tail;
        }
    }
    for (o, c) in out[4 * quads..]
        .iter_mut()
        .zip(centroids[4 * quads * dim..].chunks_exact(dim))
    {
        *o = dot(query, c);
    }
}

/// Dot products of `query` with every row of `centroids` (rows of `query.len()`).
/// `portable` skips the AVX2 build of the same loop (the results are identical).
pub fn scores(query: &[f32], centroids: &[f32], out: &mut [f32], portable: bool) {
    #[cfg(target_arch = "x86_64")]
    if !portable && std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: AVX2 is present.
        unsafe { scores_avx2(query, centroids, out) };
        return;
    }
    let _ = portable;
    scores_body(query, centroids, out);
}

/// The `nprobe` centroids (of `centroids.len() / dim`) nearest each query by dot product,
/// ascending by centroid number: `q × nprobe` (all of them when nprobe exceeds their number).
/// Ties go to the lower number; a NaN score ranks last.
pub fn probe(
    queries: &[f32],
    centroids: &[f32],
    dim: usize,
    nprobe: usize,
    portable: bool,
) -> Result<Vec<i64>, ProbeError> {
    if dim == 0 || !queries.len().is_multiple_of(dim) || !centroids.len().is_multiple_of(dim) {
        return Err(ProbeError(format!(
            "queries ({}) and centroids ({}) must be rows of dimension {dim} > 0",
            queries.len(),
            centroids.len()
        )));
    }
    let lists = centroids.len() / dim;
    let take = nprobe.min(lists);
    let mut out = Vec::with_capacity(queries.len() / dim * take);
    let mut near = vec![0f32; lists];
    for query in queries.chunks_exact(dim) {
        scores(query, centroids, &mut near, portable);
        out.extend(choose(&near, take).into_iter().map(i64::from));
    }
    Ok(out)
}

/// The numbers of the `take` highest of `near` (all when `take` exceeds their number),
/// ascending. Ties go to the lower number; a NaN ranks last.
pub fn choose(near: &[f32], take: usize) -> Vec<u32> {
    let lists = near.len();
    let take = take.min(lists);
    let mut order: Vec<u32> = (0..lists as u32).collect();
    let better = |a: &u32, b: &u32| -> Ordering {
        let (x, y) = (near[*a as usize], near[*b as usize]);
        match (x.is_nan(), y.is_nan()) {
            (false, false) => y.total_cmp(&x).then(a.cmp(b)),
            (nan_a, nan_b) => nan_a.cmp(&nan_b).then(a.cmp(b)),
        }
    };
    if take > 0 && take < lists {
        order.select_nth_unstable_by(take - 1, better);
    }
    order.truncate(take);
    order.sort_unstable();
    order
}

/// Centroids in int8 with one scale per row, for choosing the lists: a quarter of the f32
/// rows' bytes (0.87 vs 3.5 MB at 1M: 2,263 × 384), read after every scan has evicted them.
#[derive(Debug, Clone, Copy)]
pub struct CompactRows<'a> {
    /// `rows × dim` codes in `-127 ..= 127`.
    pub codes: &'a [i8],
    /// Per row: the f32 value of code 1 (`max |x| / 127`; 0 for a zero row).
    pub scales: &'a [f32],
}

/// `row` as int8 codes (rounded to nearest, `|code| <= 127`) and the scale giving them back
/// (`x ≈ scale × code`, so `|x - scale × code| <= scale / 2`).
pub fn quantize(row: &[f32], codes: &mut [i8]) -> f32 {
    let top = row.iter().fold(0f32, |m, x| m.max(x.abs()));
    if !(top > 0.0 && top.is_finite()) {
        codes.fill(0);
        return 0.0;
    }
    let scale = top / 127.0;
    for (c, &x) in codes.iter_mut().zip(row) {
        // NaN casts to 0; the clamp keeps a rounding past 127 in range.
        *c = (x / scale).round().clamp(-127.0, 127.0) as i8;
    }
    scale
}

/// Every row of `rows` (rows of `dim`) quantized: (`rows × dim` codes, one scale per row).
pub fn compact(rows: &[f32], dim: usize) -> (Vec<i8>, Vec<f32>) {
    let mut codes = vec![0i8; rows.len()];
    let scales = if dim == 0 {
        Vec::new()
    } else {
        rows.chunks_exact(dim)
            .zip(codes.chunks_exact_mut(dim))
            .map(|(r, c)| quantize(r, c))
            .collect()
    };
    (codes, scales)
}

/// Integer dot product of two int8 rows (exact: `|sum| <= dim × 127²`).
fn dot_i8(a: &[i8], b: &[i8]) -> i32 {
    a.iter()
        .zip(b)
        .map(|(&x, &y)| i32::from(x) * i32::from(y))
        .sum()
}

#[allow(clippy::inline_always)]
#[inline(always)]
fn compact_body(query: &[i8], rows: CompactRows<'_>, out: &mut [f32]) {
    for ((o, c), &s) in out
        .iter_mut()
        .zip(rows.codes.chunks_exact(query.len()))
        .zip(rows.scales)
    {
        *o = s * dot_i8(query, c) as f32;
    }
}

/// [`compact_body`] with AVX2: 32 codes per `vpmaddubsw` (the query's magnitudes times the
/// row's codes carrying the query's signs; pairs of products stay within i16 as
/// `|code| <= 127`), then `vpmaddwd` into i32 lanes. Integer sums: identical to the
/// portable loop.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn compact_avx2(query: &[i8], rows: CompactRows<'_>, out: &mut [f32]) {
    use std::arch::x86_64::{
        __m256i, _mm256_add_epi32, _mm256_extracti128_si256, _mm256_loadu_si256, _mm256_madd_epi16,
        _mm256_maddubs_epi16, _mm256_set1_epi16, _mm256_setzero_si256, _mm256_sign_epi8,
        _mm_add_epi32, _mm_cvtsi128_si32, _mm_hadd_epi32,
    };
    let dim = query.len();
    let whole = dim / 32 * 32;
    let ones = _mm256_set1_epi16(1);
    // The query's magnitudes and itself (for the signs), loaded once per query.
    let chunks: Vec<(__m256i, __m256i)> = (0..whole)
        .step_by(32)
        .map(|at| {
            // SAFETY: at + 32 <= whole <= dim.
            let x = unsafe { _mm256_loadu_si256(query.as_ptr().add(at).cast()) };
            (_mm256_sign_epi8(x, x), x)
        })
        .collect();
    for ((o, row), &s) in out
        .iter_mut()
        .zip(rows.codes.chunks_exact(dim))
        .zip(rows.scales)
    {
        let mut acc = _mm256_setzero_si256();
        for (i, &(mag, sign)) in chunks.iter().enumerate() {
            // SAFETY: 32 i + 32 <= whole <= dim, the row's length.
            let y = unsafe { _mm256_loadu_si256(row.as_ptr().add(32 * i).cast()) };
            let pairs = _mm256_maddubs_epi16(mag, _mm256_sign_epi8(y, sign));
            acc = _mm256_add_epi32(acc, _mm256_madd_epi16(pairs, ones));
        }
        let half = _mm_add_epi32(
            _mm256_extracti128_si256::<0>(acc),
            _mm256_extracti128_si256::<1>(acc),
        );
        let quad = _mm_hadd_epi32(half, half);
        let sum =
            _mm_cvtsi128_si32(_mm_hadd_epi32(quad, quad)) + dot_i8(&query[whole..], &row[whole..]);
        *o = s * sum as f32;
    }
}

/// Approximate dot products of a query (quantized as [`quantize`], its own scale left out:
/// it scales every score alike) with every row of `rows`: `scale_r × Σ q_i c_ri`, exact
/// integer sums, so both paths give the same floats.
pub fn compact_scores(query: &[i8], rows: CompactRows<'_>, out: &mut [f32], portable: bool) {
    #[cfg(target_arch = "x86_64")]
    if !portable && !query.is_empty() && std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: AVX2 is present.
        unsafe { compact_avx2(query, rows, out) };
        return;
    }
    let _ = portable;
    if !query.is_empty() {
        compact_body(query, rows, out);
    }
}

/// As [`probe`], the lists chosen by the compact centroids' scores.
pub fn probe_compact(
    queries: &[f32],
    rows: CompactRows<'_>,
    dim: usize,
    nprobe: usize,
    portable: bool,
) -> Result<Vec<i64>, ProbeError> {
    if dim == 0 || !queries.len().is_multiple_of(dim) || rows.codes.len() != rows.scales.len() * dim
    {
        return Err(ProbeError(format!(
            "queries ({}) must be rows of dimension {dim} > 0, and the compact centroids \
             ({} codes) {} rows of it",
            queries.len(),
            rows.codes.len(),
            rows.scales.len()
        )));
    }
    let lists = rows.scales.len();
    let take = nprobe.min(lists);
    let mut out = Vec::with_capacity(queries.len() / dim * take);
    let mut near = vec![0f32; lists];
    let mut code = vec![0i8; dim];
    for query in queries.chunks_exact(dim) {
        quantize(query, &mut code);
        compact_scores(&code, rows, &mut near, portable);
        out.extend(choose(&near, take).into_iter().map(i64::from));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    #[test]
    fn picks_the_best_by_a_full_sort_in_both_paths() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        for dim in [384usize, 37] {
            let n = 500;
            let c: Vec<f32> = (0..n * dim).map(|_| rng.random::<f32>() - 0.5).collect();
            let q: Vec<f32> = (0..3 * dim).map(|_| rng.random::<f32>() - 0.5).collect();
            for nprobe in [1usize, 17, 499, 500, 900] {
                let fast = probe(&q, &c, dim, nprobe, false).unwrap();
                assert_eq!(fast, probe(&q, &c, dim, nprobe, true).unwrap());
                let p = nprobe.min(n);
                for (qi, got) in fast.chunks_exact(p).enumerate() {
                    let qv = &q[qi * dim..(qi + 1) * dim];
                    let exact: Vec<f64> = c
                        .chunks_exact(dim)
                        .map(|r| r.iter().zip(qv).map(|(a, b)| f64::from(a * b)).sum())
                        .collect();
                    let mut want: Vec<usize> = (0..n).collect();
                    want.sort_by(|&a, &b| exact[b].total_cmp(&exact[a]).then(a.cmp(&b)));
                    let mut want: Vec<i64> = want[..p].iter().map(|&i| i as i64).collect();
                    want.sort_unstable();
                    assert_eq!(got, &want[..], "dim {dim} nprobe {nprobe}");
                }
            }
        }
    }

    #[test]
    fn four_row_scores_equal_dot_bit_for_bit() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(2);
        // Row counts around multiples of four, dimensions with and without a tail.
        for (n, dim) in [
            (0usize, 8usize),
            (1, 384),
            (3, 37),
            (4, 384),
            (9, 37),
            (130, 384),
        ] {
            let c: Vec<f32> = (0..n * dim).map(|_| rng.random::<f32>() - 0.5).collect();
            let q: Vec<f32> = (0..dim).map(|_| rng.random::<f32>() - 0.5).collect();
            let want: Vec<u32> = c.chunks_exact(dim).map(|r| dot(&q, r).to_bits()).collect();
            for portable in [false, true] {
                let mut got = vec![0f32; n];
                scores(&q, &c, &mut got, portable);
                let got: Vec<u32> = got.iter().map(|x| x.to_bits()).collect();
                assert_eq!(got, want, "n {n} dim {dim} portable {portable}");
            }
        }
    }

    #[test]
    fn ties_go_to_the_lower_number_and_nan_ranks_last() {
        let c = [1.0f32, 1.0, f32::NAN, 1.0, 0.5];
        assert_eq!(probe(&[1.0], &c, 1, 2, false).unwrap(), vec![0, 1]);
        assert_eq!(probe(&[1.0], &c, 1, 4, false).unwrap(), vec![0, 1, 3, 4]);
        assert!(probe(&[1.0, 2.0], &c, 2, 2, false).is_err());
        assert!(probe(&[], &[], 0, 2, false).is_err());
        assert_eq!(probe(&[1.0], &[], 1, 2, false).unwrap(), Vec::<i64>::new());
    }

    /// Exact f64 dot products of `q` with the rows of `c`.
    fn exact(q: &[f32], c: &[f32]) -> Vec<f64> {
        c.chunks_exact(q.len())
            .map(|r| {
                r.iter()
                    .zip(q)
                    .map(|(a, b)| f64::from(*a) * f64::from(*b))
                    .sum()
            })
            .collect()
    }

    #[test]
    fn quantize_rounds_within_half_a_step() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let row: Vec<f32> = (0..384).map(|_| rng.random::<f32>() - 0.5).collect();
        let mut codes = vec![0i8; 384];
        let s = quantize(&row, &mut codes);
        let top = row.iter().fold(0f32, |m, x| m.max(x.abs()));
        assert!((s - top / 127.0).abs() <= f32::EPSILON * top);
        assert!(codes.iter().any(|&c| c.abs() == 127));
        for (&x, &c) in row.iter().zip(&codes) {
            assert!((x - s * f32::from(c)).abs() <= s * 0.5001, "{x} {c} {s}");
        }
        // A zero (or non-finite) row: zero codes, scale 0, so it scores 0.
        assert_eq!(quantize(&[0.0; 4], &mut codes[..4]).to_bits(), 0);
        assert_eq!(
            quantize(&[1.0, f32::INFINITY], &mut codes[..2]).to_bits(),
            0
        );
        assert_eq!(&codes[..2], &[0, 0]);
        let (c, sc) = compact(&[0.5, -1.0, 0.0, 0.0], 2);
        assert_eq!((c, sc), (vec![64, -127, 0, 0], vec![1.0 / 127.0, 0.0]));
    }

    #[test]
    fn compact_scores_are_exact_integer_sums_in_both_paths() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(4);
        // Dimensions with and without a tail past the 32-code steps; extreme codes.
        for (n, dim) in [(0usize, 32usize), (1, 384), (5, 37), (9, 31), (130, 384)] {
            let c: Vec<f32> = (0..n * dim).map(|_| rng.random::<f32>() - 0.5).collect();
            let (codes, scales) = compact(&c, dim);
            let rows = CompactRows {
                codes: &codes,
                scales: &scales,
            };
            for q in [
                (0..dim)
                    .map(|_| rng.random::<f32>() - 0.5)
                    .collect::<Vec<f32>>(),
                (0..dim)
                    .map(|i| if i % 3 == 0 { -1.0 } else { 1.0 })
                    .collect(),
            ] {
                let mut qc = vec![0i8; dim];
                quantize(&q, &mut qc);
                let want: Vec<f32> = codes
                    .chunks_exact(dim)
                    .zip(&scales)
                    .map(|(r, &s)| {
                        s * r
                            .iter()
                            .zip(&qc)
                            .map(|(&a, &b)| i32::from(a) * i32::from(b))
                            .sum::<i32>() as f32
                    })
                    .collect();
                for portable in [false, true] {
                    let mut got = vec![0f32; n];
                    compact_scores(&qc, rows, &mut got, portable);
                    assert_eq!(got, want, "n {n} dim {dim} portable {portable}");
                }
            }
        }
    }

    /// Scores with clear gaps between them: the compact probe picks exactly the f32 probe's
    /// lists. On random data it may differ only where the exact scores lie within the
    /// quantization's error bound of the boundary.
    #[test]
    fn compact_probe_picks_the_exact_lists_but_for_near_ties() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        let dim = 384;
        let n = 600;
        let q: Vec<f32> = (0..dim).map(|_| rng.random::<f32>() - 0.5).collect();
        let qn = q.iter().map(|x| x * x).sum::<f32>().sqrt();
        // Clear gaps: centroid i = t_i q/|q| + a noise orthogonal-ish and small, with
        // t_i spread 0.01 apart, far above the int8 error (~1e-3 of the norms here).
        let mut gapped = Vec::with_capacity(n * dim);
        for i in 0..n {
            let t = ((i * 7919) % n) as f32 * 0.01 - 3.0;
            gapped.extend(
                q.iter()
                    .map(|x| t * x / qn + 0.02 * (rng.random::<f32>() - 0.5)),
            );
        }
        let random: Vec<f32> = (0..n * dim).map(|_| rng.random::<f32>() - 0.5).collect();
        for (name, c) in [("gapped", &gapped), ("random", &random)] {
            let (codes, scales) = compact(c, dim);
            let rows = CompactRows {
                codes: &codes,
                scales: &scales,
            };
            let ex = exact(&q, c);
            let qs = q.iter().fold(0f32, |m, x| m.max(x.abs())) / 127.0;
            // |q.c - qs sc (q~.c~)| <= sc/2 |q|_1 + qs/2 |c~|_1 (+ f32 rounding).
            let q1: f32 = q.iter().map(|x| x.abs()).sum();
            let bound: Vec<f64> = c
                .chunks_exact(dim)
                .zip(&scales)
                .map(|(r, &sc)| {
                    let c1: f32 = r.iter().map(|x| x.abs()).sum::<f32>() + sc * dim as f32;
                    f64::from(sc / 2.0 * q1 + qs / 2.0 * c1) * 1.01 + 1e-6
                })
                .collect();
            for nprobe in [1usize, 17, 256, 599, 600, 900] {
                let got = probe_compact(&q, rows, dim, nprobe, false).unwrap();
                assert_eq!(got, probe_compact(&q, rows, dim, nprobe, true).unwrap());
                let want = probe(&q, c, dim, nprobe, false).unwrap();
                if name == "gapped" {
                    assert_eq!(got, want, "{name} nprobe {nprobe}");
                    continue;
                }
                // A list chosen by one and not the other must be within both bounds of a
                // list the other chose instead.
                let only_got: Vec<usize> = got
                    .iter()
                    .filter(|x| !want.contains(x))
                    .map(|&x| x as usize)
                    .collect();
                let only_want: Vec<usize> = want
                    .iter()
                    .filter(|x| !got.contains(x))
                    .map(|&x| x as usize)
                    .collect();
                assert_eq!(only_got.len(), only_want.len());
                for &a in &only_got {
                    for &b in &only_want {
                        assert!(
                            ex[b] - ex[a] <= bound[a] + bound[b],
                            "{name} nprobe {nprobe}: {a} ({}) over {b} ({})",
                            ex[a],
                            ex[b]
                        );
                    }
                }
            }
        }
        assert!(probe_compact(
            &q,
            CompactRows {
                codes: &[0; 3],
                scales: &[1.0]
            },
            dim,
            1,
            false
        )
        .is_err());
    }
}
