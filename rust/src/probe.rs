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
}
