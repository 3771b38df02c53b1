//! One IVF query in one call: choose the lists, rank their rows by 1-bit code estimate,
//! re-rank the best exactly on the stored vectors.
//!
//! The same steps as `IvfIndex.search` in Python (`ivf_probe`, the spans, the rotation,
//! `code_topk_fast`, the sort, `topk_rows`), run with the GIL released once and no NumPy
//! in between. At 1M (2,263 lists, nprobe 256) the Python glue between the kernels cost
//! ~0.2-0.3 ms per query, and the probe read its 3.5 MB of centroids cold after each scan
//! (~0.43 ms against ~0.25 ms warm): here the lists are chosen on int8 copies of the
//! centroids (a quarter of the bytes; see [`crate::probe::compact`]), their products split
//! over the threads. Results are identical to the separate kernels' (tested).

use rayon::prelude::*;

use crate::fastscan::{fast_topk, FastCodes};
use crate::probe::{choose, compact_scores, quantize, scores, CompactRows};
use crate::topk::{topk_rows, Matrix, TopKResult};

/// Centroid rows per parallel piece of the probe's dot products: below it, one thread.
const PROBE_PIECE_ROWS: usize = 256;

/// An IVF index's state as one query reads it, borrowed from the caller.
#[derive(Debug, Clone, Copy)]
pub struct IvfLists<'a> {
    /// `nlist × dim` centroids, int8 with a scale per row (see [`crate::probe::compact`]):
    /// the lists are chosen on them.
    pub centroids: CompactRows<'a>,
    /// `dim × dim` rotation of the codes (row `i` gives rotated coordinate `i`).
    pub rotation: &'a [f32],
    /// First slot of each list (a multiple of 32) and its number of rows.
    pub starts: &'a [i64],
    pub sizes: &'a [i64],
    /// The codes, factors and ids of the slots.
    pub codes: FastCodes<'a>,
}

/// How one query searches.
#[derive(Debug, Clone, Copy)]
pub struct IvfParams {
    pub k: usize,
    pub nprobe: usize,
    /// Rows re-ranked exactly (0: scan the probed lists exactly).
    pub rerank: usize,
    /// Bits per coordinate of the rotated query.
    pub bits: usize,
    /// Ids at or above it are left out (rows added after the caller's snapshot).
    pub limit: i64,
}

/// [`compact_scores`] of a quantized `query` with every row of `rows`, split over the
/// threads in pieces of whole quads of rows (each row's result does not depend on the split).
pub fn compact_parallel(query: &[i8], rows: CompactRows<'_>, out: &mut [f32]) {
    let dim = query.len();
    let threads = rayon::current_num_threads().max(1);
    let piece = out.len().div_ceil(threads).next_multiple_of(4);
    if dim == 0 || piece < PROBE_PIECE_ROWS || threads == 1 {
        compact_scores(query, rows, out, false);
        return;
    }
    out.par_chunks_mut(piece)
        .zip(rows.codes.par_chunks(piece * dim))
        .zip(rows.scales.par_chunks(piece))
        .for_each(|((o, codes), scales)| {
            compact_scores(query, CompactRows { codes, scales }, o, false);
        });
}

/// Rotate `query` (`rotation` is `dim × dim`): the codes' coordinates, as
/// `query @ rotation.T`.
pub fn rotate(query: &[f32], rotation: &[f32]) -> Vec<f32> {
    let mut out = vec![0f32; query.len()];
    scores(query, rotation, &mut out, false);
    out
}

/// Check the shapes of `lists` against the query's dimension.
fn check(lists: IvfLists<'_>, query: &[f32]) -> Result<(), String> {
    let dim = query.len();
    let nlist = lists.starts.len();
    let c = lists.centroids;
    if dim == 0 || lists.codes.dim != dim || c.codes.len() != nlist * dim || c.scales.len() != nlist
    {
        return Err(format!(
            "{dim}-d query: centroids must be {nlist} × {dim} codes and {nlist} scales for \
             {nlist} lists, got {} codes and {} scales",
            c.codes.len(),
            c.scales.len()
        ));
    }
    if lists.sizes.len() != nlist || lists.rotation.len() != dim * dim {
        return Err(format!(
            "{nlist} list starts need as many sizes and a {dim} × {dim} rotation; got {} \
             sizes and {} rotation floats",
            lists.sizes.len(),
            lists.rotation.len()
        ));
    }
    let slots = lists.codes.ids.len();
    for (c, (&s, &n)) in lists.starts.iter().zip(lists.sizes).enumerate() {
        let end = s.checked_add(n);
        if s < 0 || n < 0 || end.is_none_or(|e| e as u64 > slots as u64) {
            return Err(format!(
                "list {c}: slots {s} + {n} outside the arena's {slots}"
            ));
        }
    }
    Ok(())
}

/// The top-`k` (exact scores, ids) of one query over the `nprobe` lists nearest it.
///
/// As `IvfIndex.search`: when `rerank > 0`, fewer lists than all are probed and they hold
/// more rows than `max(rerank, k)`, the rows are ranked by code estimate and the best
/// `max(rerank, k)` re-scored exactly; otherwise every probed row is scored exactly. The
/// re-scored rows are read in ascending id order. `k` is clipped to the rows scored.
///
/// # Errors
/// Shapes that do not fit each other, or a list reaching past the arena.
pub fn search_one(
    lists: IvfLists<'_>,
    query: &[f32],
    matrix: Matrix<'_>,
    p: IvfParams,
) -> Result<TopKResult, String> {
    check(lists, query)?;
    // The whole query on a pool thread: called from outside the pool, each parallel step
    // (probe, scan, re-rank) would hand its work to the pool and sleep until it is done,
    // three wake-ups of the caller per query. Inside, the thread running the query works
    // on each step itself and the other joins when it wakes.
    rayon::scope(|_| search_in_pool(lists, query, matrix, p))
}

fn search_in_pool(
    lists: IvfLists<'_>,
    query: &[f32],
    matrix: Matrix<'_>,
    p: IvfParams,
) -> Result<TopKResult, String> {
    let nlist = lists.starts.len();
    let probes = p.nprobe.max(1).min(nlist);
    let chosen: Vec<usize> = if probes < nlist {
        let mut near = vec![0f32; nlist];
        let mut code = vec![0i8; query.len()];
        quantize(query, &mut code);
        compact_parallel(&code, lists.centroids, &mut near);
        choose(&near, probes)
            .into_iter()
            .map(|c| c as usize)
            .collect()
    } else {
        (0..nlist).collect()
    };
    // Checked above: starts and sizes are non-negative and within the arena.
    let span = |c: usize| (lists.starts[c] as usize, lists.sizes[c] as usize);
    let spans: Vec<(usize, usize)> = chosen.iter().map(|&c| span(c)).collect();
    let rows: usize = spans.iter().map(|s| s.1).sum();
    let pool = p.rerank.max(p.k);
    let use_codes = p.rerank > 0 && pool < rows && probes < nlist;
    let mut ids: Vec<i64> = if use_codes {
        let rotated = rotate(query, lists.rotation);
        let bounds = [0, spans.len()];
        fast_topk(
            lists.codes,
            &rotated,
            p.bits,
            &spans,
            &bounds,
            pool,
            p.limit,
            false,
        )
        .map_err(|e| e.to_string())?
        .into_iter()
        .filter(|&id| id >= 0)
        .collect()
    } else {
        spans
            .iter()
            .flat_map(|&(s, n)| lists.codes.ids[s..s + n].iter().copied())
            .filter(|&id| id < p.limit)
            .collect()
    };
    // Ascending ids read the mapped vector file in one direction.
    ids.sort_unstable();
    topk_rows(query, matrix, query.len(), p.k, &ids, &[0, ids.len()]).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fastscan::{block_bytes, pack, BLOCK};
    use crate::probe::{compact, probe_compact};
    use rand::{Rng, SeedableRng};

    fn random(n: usize, seed: u64) -> Vec<f32> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        (0..n).map(|_| rng.random::<f32>() - 0.5).collect()
    }

    #[test]
    fn parallel_scores_equal_the_single_thread_ones() {
        for (rows, dim) in [(0usize, 8usize), (3, 8), (1001, 20), (2263, 384)] {
            let (codes, scales) = compact(&random(rows * dim, 2), dim);
            let centroids = CompactRows {
                codes: &codes,
                scales: &scales,
            };
            let mut query = vec![0i8; dim];
            quantize(&random(dim, 1), &mut query);
            let (mut one, mut split) = (vec![0f32; rows], vec![0f32; rows]);
            compact_scores(&query, centroids, &mut one, false);
            compact_parallel(&query, centroids, &mut split);
            assert_eq!(one, split, "{rows} × {dim}");
        }
    }

    /// An arena of `nlist` lists of odd sizes (some empty, some of 1 row), block-aligned,
    /// each list's room a little larger than its rows; ids shuffled.
    struct Arena {
        starts: Vec<i64>,
        sizes: Vec<i64>,
        vectors: Vec<f32>,
        rotation: Vec<f32>,
        blocks: Vec<u8>,
        factors: Vec<f32>,
        ids: Vec<i64>,
    }

    fn arena(dim: usize, nlist: usize) -> Arena {
        let words = dim.div_ceil(64);
        let sizes: Vec<i64> = (0..nlist).map(|c| [37, 0, 1, 64, 95, 5][c % 6]).collect();
        let mut starts = Vec::new();
        let mut end = 0i64;
        for &n in &sizes {
            starts.push(end);
            end += (n as usize + 40).div_ceil(BLOCK) as i64 * BLOCK as i64;
        }
        let slots = end as usize;
        let rows: usize = sizes.iter().sum::<i64>() as usize;
        let vectors = random(rows * dim, 3);
        let rotation = random(dim * dim, 4);
        let mut codes = vec![0u64; slots * words];
        let mut factors = vec![0f32; 2 * slots];
        let mut ids = vec![-1i64; slots];
        let mut row = 0usize;
        for (&s, &n) in starts.iter().zip(&sizes) {
            for slot in s as usize..(s + n) as usize {
                ids[slot] = ((row * 7919) % rows) as i64;
                let v = &vectors[ids[slot] as usize * dim..][..dim];
                let r = rotate(v, &rotation);
                for (j, &x) in r.iter().enumerate() {
                    codes[slot * words + j / 64] |= u64::from(x > 0.0) << (j % 64);
                }
                let l1: f32 = r.iter().map(|x| x.abs()).sum();
                let f = v.iter().map(|x| x * x).sum::<f32>() / l1;
                let pc: u32 = codes[slot * words..][..words]
                    .iter()
                    .map(|x| x.count_ones())
                    .sum();
                factors[2 * slot..2 * slot + 2].copy_from_slice(&[f, f * pc as f32]);
                row += 1;
            }
        }
        let mut blocks = vec![0u8; slots / BLOCK * block_bytes(words)];
        pack(&mut blocks, words, &(0..slots).collect::<Vec<_>>(), &codes);
        Arena {
            starts,
            sizes,
            vectors,
            rotation,
            blocks,
            factors,
            ids,
        }
    }

    /// The fused search against the kernels run one after the other, on lists of odd
    /// sizes, empty and 1-row lists, a snapshot limit, k above the rows.
    #[test]
    fn fused_search_equals_the_separate_kernels() {
        let (dim, nlist) = (64usize, 40usize);
        let Arena {
            starts,
            sizes,
            vectors,
            rotation,
            blocks,
            factors,
            ids,
        } = arena(dim, nlist);
        let (codes, scales) = compact(&random(nlist * dim, 5), dim);
        let lists = IvfLists {
            centroids: CompactRows {
                codes: &codes,
                scales: &scales,
            },
            rotation: &rotation,
            starts: &starts,
            sizes: &sizes,
            codes: FastCodes {
                blocks: &blocks,
                factors: &factors,
                ids: &ids,
                dim,
            },
        };
        let matrix = Matrix::F32(&vectors);
        for (seed, nprobe, rerank, k, limit) in [
            (6u64, 5usize, 20usize, 10usize, i64::MAX),
            (7, 5, 0, 10, i64::MAX),
            (8, nlist, 20, 10, i64::MAX),
            (9, 12, 20, 3, 300),
            (10, 1, 4, 1, i64::MAX),
            (11, 3, 10_000, 10, i64::MAX),
            (12, 8, 20, 500, i64::MAX),
        ] {
            let query = random(dim, seed);
            let p = IvfParams {
                k,
                nprobe,
                rerank,
                bits: 4,
                limit,
            };
            let got = search_one(lists, &query, matrix, p).unwrap();
            // The kernels one by one, as `IvfIndex.search` calls them.
            let chosen = probe_compact(&query, lists.centroids, dim, nprobe, false).unwrap();
            let spans: Vec<(usize, usize)> = chosen
                .iter()
                .map(|&c| (starts[c as usize] as usize, sizes[c as usize] as usize))
                .collect();
            let scanned: usize = spans.iter().map(|s| s.1).sum();
            let pool = rerank.max(k);
            let mut want_ids: Vec<i64> = if rerank > 0 && pool < scanned && nprobe < nlist {
                let rotated = rotate(&query, &rotation);
                fast_topk(
                    lists.codes,
                    &rotated,
                    4,
                    &spans,
                    &[0, spans.len()],
                    pool,
                    limit,
                    true,
                )
                .unwrap()
                .into_iter()
                .filter(|&i| i >= 0)
                .collect()
            } else {
                spans
                    .iter()
                    .flat_map(|&(s, n)| ids[s..s + n].iter().copied())
                    .filter(|&i| i < limit)
                    .collect()
            };
            want_ids.sort_unstable();
            let want = topk_rows(&query, matrix, dim, k, &want_ids, &[0, want_ids.len()]).unwrap();
            assert_eq!(got, want, "nprobe {nprobe} rerank {rerank} k {k}");
            assert!(got.indices.iter().all(|&i| i < limit));
        }
        // Every list with a re-rank of every row: the exact scan.
        let query = random(dim, 13);
        let p = IvfParams {
            k: 10,
            nprobe: nlist,
            rerank: vectors.len() / dim,
            bits: 4,
            limit: i64::MAX,
        };
        let got = search_one(lists, &query, matrix, p).unwrap();
        let all = crate::topk::topk(&query, matrix, dim, 10).unwrap();
        assert_eq!(got.indices, all.indices);
        // A list reaching past the arena is refused.
        let mut bad = sizes.clone();
        bad[0] = ids.len() as i64 + 1;
        let broken = IvfLists {
            sizes: &bad,
            ..lists
        };
        assert!(search_one(broken, &query, matrix, p)
            .unwrap_err()
            .contains("list 0"));
    }
}
