//! Dense similarity kernels over row-major `f32` matrices.
//!
//! Plain Rust, no Python: `lib.rs` binds these for NumPy arrays. Work is split across
//! query rows with rayon, since each query scans the whole matrix independently.

use rayon::prelude::*;

/// Errors a caller can fix: the shapes they passed do not fit together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShapeError {
    /// Query and matrix rows have different widths.
    DimensionMismatch { queries: usize, matrix: usize },
    /// A buffer's length is not `rows * dim`.
    RaggedBuffer { len: usize, dim: usize },
    /// An `i8` matrix needs exactly one scale per row.
    ScaleLength { scales: usize, rows: usize },
}

impl std::fmt::Display for ShapeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::DimensionMismatch { queries, matrix } => write!(
                f,
                "dimension mismatch: queries have {queries} columns, matrix has {matrix}"
            ),
            Self::RaggedBuffer { len, dim } => {
                write!(
                    f,
                    "buffer of length {len} is not a whole number of rows of width {dim}"
                )
            }
            Self::ScaleLength { scales, rows } => {
                write!(f, "int8 matrix has {rows} rows but {scales} scales")
            }
        }
    }
}

impl std::error::Error for ShapeError {}

/// Dot product, written so LLVM auto-vectorises it: eight independent accumulators
/// break the add dependency chain that a single running sum would impose.
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    debug_assert_eq!(a.len(), b.len());
    let mut acc = [0.0f32; 8];
    let chunks_a = a.chunks_exact(8);
    let chunks_b = b.chunks_exact(8);
    let tail: f32 = chunks_a
        .remainder()
        .iter()
        .zip(chunks_b.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (ca, cb) in chunks_a.zip(chunks_b) {
        for i in 0..8 {
            acc[i] += ca[i] * cb[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// Euclidean norm of each `dim`-wide row.
fn row_norms(rows: &[f32], dim: usize) -> Vec<f32> {
    rows.chunks_exact(dim).map(|r| dot(r, r).sqrt()).collect()
}

fn check(queries: &[f32], matrix: &[f32], dim: usize) -> Result<(), ShapeError> {
    for len in [queries.len(), matrix.len()] {
        if dim == 0 || len % dim != 0 {
            return Err(ShapeError::RaggedBuffer { len, dim });
        }
    }
    Ok(())
}

/// Cosine similarity of every query row against every matrix row.
///
/// `queries` is `q × dim`, `matrix` is `n × dim`, both row-major. Returns `q × n`
/// row-major. A zero-norm row has similarity 0 with everything (not NaN), so callers
/// can rank without special cases.
pub fn cosine_matrix(queries: &[f32], matrix: &[f32], dim: usize) -> Result<Vec<f32>, ShapeError> {
    check(queries, matrix, dim)?;
    let n = matrix.len() / dim;
    let matrix_norms = row_norms(matrix, dim);
    let mut out = vec![0.0f32; (queries.len() / dim) * n];
    if n == 0 {
        return Ok(out);
    }
    out.par_chunks_mut(n)
        .zip(queries.par_chunks_exact(dim))
        .for_each(|(out_row, q)| {
            let qn = dot(q, q).sqrt();
            for ((slot, row), rn) in out_row
                .iter_mut()
                .zip(matrix.chunks_exact(dim))
                .zip(&matrix_norms)
            {
                let denom = qn * rn;
                *slot = if denom > 0.0 {
                    dot(q, row) / denom
                } else {
                    0.0
                };
            }
        });
    Ok(out)
}

/// Read every byte once, on all threads, and return a checksum (wrapping sum of
/// 64-bit words plus tail bytes). The time it takes is the memory-read bound that
/// the top-k benchmark compares its scans against.
pub fn scan_bytes(data: &[u8]) -> u64 {
    data.par_chunks(1 << 20)
        .map(|chunk| {
            // SAFETY: every bit pattern is a valid u64; `align_to` splits off the
            // unaligned head and tail.
            let (head, words, tail) = unsafe { chunk.align_to::<u64>() };
            let mut acc = [0u64; 8];
            let lanes = words.chunks_exact(8);
            let rest: u64 = lanes.remainder().iter().fold(0, |a, w| a.wrapping_add(*w));
            for l in lanes {
                for i in 0..8 {
                    acc[i] = acc[i].wrapping_add(l[i]);
                }
            }
            let bytes = head
                .iter()
                .chain(tail)
                .fold(0u64, |a, b| a.wrapping_add(u64::from(*b)));
            acc.iter()
                .fold(rest.wrapping_add(bytes), |a, w| a.wrapping_add(*w))
        })
        .reduce(|| 0, u64::wrapping_add)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{rngs::StdRng, Rng, SeedableRng};

    fn naive_cosine(a: &[f32], b: &[f32]) -> f32 {
        let (mut ab, mut aa, mut bb) = (0.0f64, 0.0f64, 0.0f64);
        for (x, y) in a.iter().zip(b) {
            ab += f64::from(*x) * f64::from(*y);
            aa += f64::from(*x) * f64::from(*x);
            bb += f64::from(*y) * f64::from(*y);
        }
        if aa == 0.0 || bb == 0.0 {
            0.0
        } else {
            (ab / (aa.sqrt() * bb.sqrt())) as f32
        }
    }

    #[test]
    fn matches_naive_loop_on_random_data() {
        let mut rng = StdRng::seed_from_u64(7);
        for dim in [1, 3, 8, 17, 384] {
            let q: Vec<f32> = (0..5 * dim).map(|_| rng.random_range(-1.0..1.0)).collect();
            let m: Vec<f32> = (0..33 * dim).map(|_| rng.random_range(-1.0..1.0)).collect();
            let got = cosine_matrix(&q, &m, dim).unwrap();
            assert_eq!(got.len(), 5 * 33);
            for i in 0..5 {
                for j in 0..33 {
                    let want = naive_cosine(&q[i * dim..(i + 1) * dim], &m[j * dim..(j + 1) * dim]);
                    assert!((got[i * 33 + j] - want).abs() < 1e-5, "dim {dim} ({i},{j})");
                }
            }
        }
    }

    #[test]
    fn scan_bytes_sums_words_and_tail() {
        // Aligned words spanning several 1 MiB chunks: the sum is exact.
        let words = vec![0x0101_0101_0101_0101u64; 400_000];
        // SAFETY: viewing initialised u64s as bytes is always valid.
        let bytes = unsafe { words.align_to::<u8>().1 };
        let want = 0x0101_0101_0101_0101u64.wrapping_mul(400_000);
        assert_eq!(scan_bytes(bytes), want);
        assert_eq!(scan_bytes(&[1, 2, 3]), 6);
        assert_eq!(scan_bytes(&[]), 0);
    }

    #[test]
    fn zero_rows_score_zero_not_nan() {
        let got = cosine_matrix(&[0.0, 0.0], &[1.0, 0.0, 0.0, 0.0], 2).unwrap();
        assert_eq!(got, vec![0.0, 0.0]);
    }

    #[test]
    fn identical_direction_scores_one() {
        let got = cosine_matrix(&[1.0, 2.0], &[2.0, 4.0, -1.0, -2.0], 2).unwrap();
        assert!((got[0] - 1.0).abs() < 1e-6);
        assert!((got[1] + 1.0).abs() < 1e-6);
    }

    #[test]
    fn empty_matrix_gives_empty_rows() {
        assert_eq!(
            cosine_matrix(&[1.0, 2.0], &[], 2).unwrap(),
            Vec::<f32>::new()
        );
    }

    #[test]
    fn ragged_buffers_are_refused() {
        assert_eq!(
            cosine_matrix(&[1.0, 2.0, 3.0], &[1.0, 2.0], 2),
            Err(ShapeError::RaggedBuffer { len: 3, dim: 2 })
        );
        assert!(cosine_matrix(&[1.0], &[1.0], 0).is_err());
    }
}
