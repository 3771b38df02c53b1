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

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn scores_avx2(query: &[f32], centroids: &[f32], out: &mut [f32]) {
    scores_body(query, centroids, out);
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
    let mut order: Vec<u32> = Vec::with_capacity(lists);
    for query in queries.chunks_exact(dim) {
        scores(query, centroids, &mut near, portable);
        order.clear();
        order.extend(0..lists as u32);
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
        let mut chosen: Vec<u32> = order[..take].to_vec();
        chosen.sort_unstable();
        out.extend(chosen.into_iter().map(i64::from));
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
    fn ties_go_to_the_lower_number_and_nan_ranks_last() {
        let c = [1.0f32, 1.0, f32::NAN, 1.0, 0.5];
        assert_eq!(probe(&[1.0], &c, 1, 2, false).unwrap(), vec![0, 1]);
        assert_eq!(probe(&[1.0], &c, 1, 4, false).unwrap(), vec![0, 1, 3, 4]);
        assert!(probe(&[1.0, 2.0], &c, 2, 2, false).is_err());
        assert!(probe(&[], &[], 0, 2, false).is_err());
        assert_eq!(probe(&[1.0], &[], 1, 2, false).unwrap(), Vec::<i64>::new());
    }
}
