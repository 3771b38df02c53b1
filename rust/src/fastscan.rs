//! The 1-bit code scan of [`crate::binary`] in a FastScan layout (André et al., "Cache
//! locality is not enough", VLDB 2015; the layout of Faiss's `IndexIVFPQFastScan`).
//!
//! A code of `W` words is cut into `16 W` groups of 4 bits (group `g`: dimensions
//! `4g … 4g+3`, bits `4 (g % 16)` of word `g / 16`). Arena slots are stored in blocks of
//! [`BLOCK`] = 32 rows: block `b` holds slots `32b … 32b+31`, group `g` of the block takes
//! 16 bytes at `16 g`, and byte `i` holds lane `i` in its low nibble, lane `i + 16` in its
//! high nibble (`256 W` bytes per block: the same 48 B per row as the row-major codes at
//! 384-d).
//!
//! The query's integer part `S = Σ_j u_j s_j` (see [`crate::binary`]) becomes a sum of
//! table look-ups: per group a 16-entry table holds `Σ_{i<4} bit_i(p) u_{4g+i}` for every
//! 4-bit pattern `p`. With AVX2 one `vpshufb` looks up 32 lanes of two groups at once and the
//! sums go on in 16-bit lanes; the portable path reads the same tables one nibble at a time.
//! Both give the same integers, then the same float formula as the row-major scan, so the
//! estimates (and the ranking: estimate descending, id ascending) are identical.

use crate::binary::{check_query, run_tasks, Bound, CodesError, Pool, QueryPlanes};
use crate::topk::prefetch;

/// Blocks prefetched ahead of the scan (see `scan_body`).
const AHEAD: usize = 2;

/// Rows per block of the layout.
pub const BLOCK: usize = 32;

/// Rows per parallel task: half the row-major scan's, as a row costs about half as much
/// (1M rows, 80k scanned per query, one thread, load 10: 1.3-1.4 vs 2.4 ms CPU; 5.2 ns per
/// row in cache), so a 1M query's ~80k rows make ~10 tasks, which two threads share evenly.
const TASK_ROWS: usize = 8_192;

/// Bytes of one block of codes with `words` 64-bit words per row.
pub fn block_bytes(words: usize) -> usize {
    words * 8 * BLOCK
}

/// Widest code the 16-bit SIMD sums hold without overflow: per 128-bit half up to
/// `8 W` groups of at most 60 (`4 × 15`), and both halves together below 2^16.
const SIMD_MAX_WORDS: usize = 128;

/// A code arena in the FastScan layout, borrowed from the caller.
#[derive(Debug, Clone, Copy)]
pub struct FastCodes<'a> {
    /// `ceil(slots / 32)` blocks of `block_bytes(words)` bytes.
    pub blocks: &'a [u8],
    /// `slots × 2` factors `f`, `g` (row-major, as in [`crate::binary::Codes`]).
    pub factors: &'a [f32],
    /// The vector id of each slot.
    pub ids: &'a [i64],
    /// Dimension of the (rotated) vectors.
    pub dim: usize,
}

impl FastCodes<'_> {
    fn words(&self) -> usize {
        self.dim.div_ceil(64)
    }
}

/// The 4-bit group `g` of a row-major code.
#[inline]
fn nibble(code: &[u64], g: usize) -> u8 {
    ((code[g / 16] >> (4 * (g % 16))) & 15) as u8
}

/// Write row-major `codes` (`slots.len() × words`) into `blocks` at the given slots.
///
/// # Panics
/// When a slot lies past `blocks` or the lengths do not fit (callers check them).
pub fn pack(blocks: &mut [u8], words: usize, slots: &[usize], codes: &[u64]) {
    let bb = block_bytes(words);
    for (&slot, code) in slots.iter().zip(codes.chunks_exact(words)) {
        let (lane, base) = (slot % BLOCK, (slot / BLOCK) * bb + slot % 16);
        for g in 0..16 * words {
            let byte = &mut blocks[base + 16 * g];
            let v = nibble(code, g);
            *byte = if lane < 16 {
                (*byte & 0xf0) | v
            } else {
                (*byte & 0x0f) | (v << 4)
            };
        }
    }
}

/// Read the row-major codes (`slots.len() × words`) of the given slots back.
///
/// # Panics
/// When a slot lies past `blocks` (callers check them).
pub fn unpack(blocks: &[u8], words: usize, slots: &[usize]) -> Vec<u64> {
    let bb = block_bytes(words);
    let mut out = vec![0u64; slots.len() * words];
    for (&slot, code) in slots.iter().zip(out.chunks_exact_mut(words)) {
        let (lane, base) = (slot % BLOCK, (slot / BLOCK) * bb + slot % 16);
        for g in 0..16 * words {
            let byte = blocks[base + 16 * g];
            let v = if lane < 16 { byte & 15 } else { byte >> 4 };
            code[g / 16] |= u64::from(v) << (4 * (g % 16));
        }
    }
    out
}

/// A query's look-up tables: 16 entries per 4-bit group, and the estimate's constants.
#[derive(Debug, Clone)]
pub struct QueryLuts {
    /// `groups × 16` partial sums (at most `4 × (2^bits - 1)`).
    wide: Vec<u16>,
    /// The same as bytes when they fit (`bits <= 4`): the SIMD path's tables.
    narrow: Option<Vec<u8>>,
    scale: f32,
    bias: f32,
    lo2: f32,
}

impl QueryLuts {
    /// Tables of `query` (already rotated) quantised to `bits` bits per coordinate, for
    /// codes of `words` words.
    pub fn new(query: &[f32], bits: usize, words: usize) -> Self {
        let planes = QueryPlanes::new(query, bits);
        let u = |j: usize| -> u16 {
            (0..planes.bits)
                .map(|p| (((planes.planes[p * words + j / 64] >> (j % 64)) & 1) as u16) << p)
                .sum()
        };
        let groups = 16 * words;
        let mut wide = vec![0u16; groups * 16];
        for g in 0..groups {
            let us: [u16; 4] = std::array::from_fn(|i| u(4 * g + i));
            for p in 0..16usize {
                wide[g * 16 + p] = (0..4).filter(|i| (p >> i) & 1 == 1).map(|i| us[i]).sum();
            }
        }
        let narrow = (bits <= 4).then(|| wide.iter().map(|&v| v as u8).collect());
        Self {
            wide,
            narrow,
            scale: 2.0 * planes.delta,
            bias: planes.bias,
            lo2: 2.0 * planes.lo,
        }
    }
}

/// `S` of the 32 lanes of one block, one nibble at a time.
pub fn block_sums_portable(block: &[u8], luts: &QueryLuts, out: &mut [u32; BLOCK]) {
    let groups = block.len() / 16;
    for (lane, s) in out.iter_mut().enumerate() {
        let mut acc = 0u32;
        for g in 0..groups {
            let byte = block[16 * g + lane % 16];
            let v = if lane < 16 { byte & 15 } else { byte >> 4 };
            acc += u32::from(luts.wide[16 * g + usize::from(v)]);
        }
        *s = acc;
    }
}

/// `S` of the 32 lanes of one block: per pair of groups one load and two `vpshufb` (low
/// and high nibbles: lanes 0-15 and 16-31). Four pairs' bytes are summed in 8 bits (each
/// at most 60, so at most 240), then into 16-bit lanes with Faiss's trick: the even bytes'
/// sum is `Σ u16 - 256 Σ odd` in wrapping arithmetic.
///
/// # Safety
/// The CPU must have AVX2; `luts` must hold `block.len()` bytes, a multiple of 128 (a
/// code's 16 groups per word make 8 pairs per word), with entries of at most 60.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
pub unsafe fn block_sums_avx2(block: &[u8], luts: &[u8], out: &mut [u32; BLOCK]) {
    use std::arch::x86_64::{
        __m256i, _mm256_add_epi16, _mm256_add_epi8, _mm256_and_si256, _mm256_castsi256_si128,
        _mm256_extracti128_si256, _mm256_loadu_si256, _mm256_set1_epi8, _mm256_setzero_si256,
        _mm256_shuffle_epi8, _mm256_slli_epi16, _mm256_srli_epi16, _mm256_sub_epi16, _mm_add_epi16,
        _mm_storeu_si128, _mm_unpackhi_epi16, _mm_unpacklo_epi16,
    };
    debug_assert!(luts.len() == block.len() && block.len().is_multiple_of(128));
    let mask = _mm256_set1_epi8(0x0f);
    let (mut lo_a, mut lo_b) = (_mm256_setzero_si256(), _mm256_setzero_si256());
    let (mut hi_a, mut hi_b) = (_mm256_setzero_si256(), _mm256_setzero_si256());
    for quad in 0..block.len() / 128 {
        let (mut lo8, mut hi8) = (_mm256_setzero_si256(), _mm256_setzero_si256());
        for m in 4 * quad..4 * quad + 4 {
            // SAFETY: m * 32 + 32 <= len for both slices (the caller's contract).
            let (c, t) = unsafe {
                (
                    _mm256_loadu_si256(block.as_ptr().add(m * 32).cast()),
                    _mm256_loadu_si256(luts.as_ptr().add(m * 32).cast()),
                )
            };
            let rlo = _mm256_shuffle_epi8(t, _mm256_and_si256(c, mask));
            let rhi = _mm256_shuffle_epi8(t, _mm256_and_si256(_mm256_srli_epi16(c, 4), mask));
            lo8 = _mm256_add_epi8(lo8, rlo);
            hi8 = _mm256_add_epi8(hi8, rhi);
        }
        lo_a = _mm256_add_epi16(lo_a, lo8);
        lo_b = _mm256_add_epi16(lo_b, _mm256_srli_epi16(lo8, 8));
        hi_a = _mm256_add_epi16(hi_a, hi8);
        hi_b = _mm256_add_epi16(hi_b, _mm256_srli_epi16(hi8, 8));
    }
    // 16-bit lane k of half h: even byte 2k = a - (b << 8), odd byte 2k + 1 = b; the two
    // halves hold even and odd groups of the same lanes: add them.
    let halves =
        |v: __m256i| _mm_add_epi16(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    let mut sums = [0u16; BLOCK];
    for (part, (a, b)) in [(lo_a, lo_b), (hi_a, hi_b)].into_iter().enumerate() {
        let even = halves(_mm256_sub_epi16(a, _mm256_slli_epi16(b, 8)));
        let odd = halves(b);
        // SAFETY: 16 u16 of `sums` from 16 * part.
        unsafe {
            let at = sums.as_mut_ptr().add(16 * part);
            _mm_storeu_si128(at.cast(), _mm_unpacklo_epi16(even, odd));
            _mm_storeu_si128(at.add(8).cast(), _mm_unpackhi_epi16(even, odd));
        }
    }
    for (o, s) in out.iter_mut().zip(sums) {
        *o = u32::from(s);
    }
}

/// Push the valid lanes of one block (slots `first …`) into the pool.
#[allow(clippy::inline_always)]
#[inline(always)]
fn finish_block(
    codes: FastCodes<'_>,
    luts: &QueryLuts,
    sums: &[u32; BLOCK],
    first: usize,
    valid: usize,
    pool: &mut Pool,
    limit: i64,
) {
    let factors = &codes.factors[2 * first..2 * (first + valid)];
    let mut est = [0f32; BLOCK];
    // The row-major scan's formula, operation for operation: identical estimates.
    for ((e, &s), fg) in est.iter_mut().zip(sums).zip(factors.chunks_exact(2)) {
        *e = fg[0] * (luts.scale * s as f32 + luts.bias) + luts.lo2 * fg[1];
    }
    // Lanes that may enter the pool, as a bit mask (a vector compare): most blocks have
    // none once the pool has filled.
    let threshold = pool.threshold;
    let mut admit = 0u32;
    for (i, &e) in est.iter().enumerate() {
        admit |= u32::from(e >= threshold) << i;
    }
    if valid < BLOCK {
        admit &= (1u32 << valid) - 1;
    }
    while admit != 0 {
        let i = admit.trailing_zeros() as usize;
        admit &= admit - 1;
        let id = codes.ids[first + i];
        if (0..limit).contains(&id) {
            pool.push(est[i], id); // ids >= limit: added after the caller's snapshot
        }
    }
}

/// Scan the spans (starts multiples of 32) block by block. The pool's threshold follows
/// the query's shared `floor` both ways: raised to it before each block, published when
/// the pool's own rises past it (a task started late then admits only rows that beat
/// what the others have found: at 1M, ~14 tasks of 8k rows had each admitted ~1,200 rows,
/// each an `ids` cache miss and a share of the pool's pruning).
#[allow(clippy::inline_always)]
#[inline(always)]
fn scan_body(
    codes: FastCodes<'_>,
    luts: &QueryLuts,
    spans: &[(usize, usize)],
    r: usize,
    limit: i64,
    simd: bool,
    floor: &Bound,
) -> Pool {
    let bb = block_bytes(codes.words());
    let mut pool = Pool::new(r);
    let mut sums = [0u32; BLOCK];
    // Blocks (codes and factors) asked for ahead of the scan, within a list and into the
    // next one's start.
    let fetch = |first: usize| {
        if let Some(b) = codes.blocks.get((first / BLOCK) * bb..) {
            prefetch(b.as_ptr(), bb);
        }
        if let Some(f) = codes.factors.get(2 * first..) {
            prefetch(f.as_ptr().cast(), 8 * BLOCK);
        }
    };
    for (i, &(start, len)) in spans.iter().enumerate() {
        if let Some(&(next, next_len)) = spans.get(i + 1) {
            for first in (next..next + next_len).step_by(BLOCK).take(AHEAD) {
                fetch(first);
            }
        }
        for first in (start..start + len).step_by(BLOCK) {
            if first + AHEAD * BLOCK < start + len {
                fetch(first + AHEAD * BLOCK);
            }
            let block = &codes.blocks[(first / BLOCK) * bb..(first / BLOCK + 1) * bb];
            #[cfg(target_arch = "x86_64")]
            if simd {
                let narrow = luts.narrow.as_deref().expect("SIMD needs byte tables");
                // SAFETY: `simd` is only set when AVX2 is present; tables match the block.
                unsafe { block_sums_avx2(block, narrow, &mut sums) };
            } else {
                block_sums_portable(block, luts, &mut sums);
            }
            #[cfg(not(target_arch = "x86_64"))]
            {
                let _ = simd;
                block_sums_portable(block, luts, &mut sums);
            }
            let valid = (start + len - first).min(BLOCK);
            pool.adopt(floor);
            let before = pool.threshold;
            finish_block(codes, luts, &sums, first, valid, &mut pool, limit);
            if pool.threshold > before {
                floor.raise(pool.threshold);
            }
        }
    }
    pool
}

/// The scan compiled for AVX2 (the estimate's float loop vectorises too).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn scan_avx2(
    codes: FastCodes<'_>,
    luts: &QueryLuts,
    spans: &[(usize, usize)],
    r: usize,
    limit: i64,
    floor: &Bound,
) -> Pool {
    scan_body(codes, luts, spans, r, limit, true, floor)
}

/// Whether the SIMD path can run for these codes and bits on this CPU.
pub fn simd_available(dim: usize, bits: usize) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        bits <= 4
            && dim.div_ceil(64) <= SIMD_MAX_WORDS
            && std::arch::is_x86_feature_detected!("avx2")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (dim, bits);
        false
    }
}

fn check(
    codes: FastCodes<'_>,
    queries: &[f32],
    bits: usize,
    spans: &[(usize, usize)],
    bounds: &[usize],
) -> Result<(), CodesError> {
    let rows = codes.ids.len();
    let dim = codes.dim.max(1);
    let need = rows.div_ceil(BLOCK) * block_bytes(dim.div_ceil(64));
    if codes.blocks.len() < need || codes.factors.len() != 2 * rows {
        return Err(CodesError::Shape(format!(
            "codes: {rows} ids need {need} block bytes and {} factors, got {} and {}",
            2 * rows,
            codes.blocks.len(),
            codes.factors.len()
        )));
    }
    if let Some(&(s, _)) = spans.iter().find(|&&(s, _)| !s.is_multiple_of(BLOCK)) {
        return Err(CodesError::Span(format!(
            "span start {s} is not a multiple of {BLOCK} (the block size)"
        )));
    }
    check_query(codes.dim, queries, bits, spans, bounds, rows)
}

/// [`crate::binary::code_topk`] over codes in the FastScan layout: the ids of the best `r`
/// rows per query by estimated inner product, best first, -1 padded.
///
/// Span starts must be multiples of 32. `portable` forces the nibble-at-a-time path (the
/// SIMD one runs when the CPU has AVX2 and `bits <= 4`); both give the same ids.
#[allow(clippy::too_many_arguments)]
pub fn fast_topk(
    codes: FastCodes<'_>,
    queries: &[f32],
    bits: usize,
    spans: &[(usize, usize)],
    bounds: &[usize],
    r: usize,
    limit: i64,
    portable: bool,
) -> Result<Vec<i64>, CodesError> {
    fast_topk_tasks(
        codes, queries, bits, spans, bounds, r, limit, portable, TASK_ROWS,
    )
}

/// [`fast_topk`] with `task_rows` rows per parallel task (tests vary it: the ids must not
/// depend on it).
#[allow(clippy::too_many_arguments)]
fn fast_topk_tasks(
    codes: FastCodes<'_>,
    queries: &[f32],
    bits: usize,
    spans: &[(usize, usize)],
    bounds: &[usize],
    r: usize,
    limit: i64,
    portable: bool,
    task_rows: usize,
) -> Result<Vec<i64>, CodesError> {
    check(codes, queries, bits, spans, bounds)?;
    let words = codes.words();
    let luts: Vec<QueryLuts> = queries
        .chunks_exact(codes.dim)
        .map(|v| QueryLuts::new(v, bits, words))
        .collect();
    let simd = !portable && simd_available(codes.dim, bits);
    Ok(run_tasks(
        luts.len(),
        spans,
        bounds,
        r,
        task_rows,
        |qi, s, floor| {
            #[cfg(target_arch = "x86_64")]
            if simd {
                // SAFETY: `simd_available` saw AVX2.
                return unsafe { scan_avx2(codes, &luts[qi], s, r, limit, floor) };
            }
            let _ = simd;
            scan_body(codes, &luts[qi], s, r, limit, false, floor)
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::binary::{code_topk, Codes};
    use rand::{Rng, SeedableRng};

    fn random_codes(n: usize, words: usize, seed: u64) -> Vec<u64> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        (0..n * words).map(|_| rng.random::<u64>()).collect()
    }

    #[test]
    fn pack_then_unpack_gives_the_codes_back() {
        let words = 6;
        let slots: Vec<usize> = vec![0, 1, 15, 16, 17, 31, 32, 70, 95];
        let codes = random_codes(slots.len(), words, 1);
        let mut blocks = vec![0u8; 3 * block_bytes(words)];
        pack(&mut blocks, words, &slots, &codes);
        assert_eq!(unpack(&blocks, words, &slots), codes);
        // Rewriting one slot leaves its byte-mates alone.
        let other = random_codes(1, words, 2);
        pack(&mut blocks, words, &[16], &other);
        assert_eq!(unpack(&blocks, words, &[16]), other);
        assert_eq!(unpack(&blocks, words, &[0]), codes[..words].to_vec());
    }

    /// Sign codes and factors of random vectors, the row-major and the blocked layout.
    fn fixture(n: usize, dim: usize, seed: u64) -> (Vec<u64>, Vec<u8>, Vec<f32>) {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let words = dim.div_ceil(64);
        let mut codes = vec![0u64; n * words];
        let mut factors = Vec::new();
        for row in 0..n {
            let v: Vec<f32> = (0..dim).map(|_| rng.random::<f32>() - 0.5).collect();
            for (j, &x) in v.iter().enumerate() {
                codes[row * words + j / 64] |= u64::from(x > 0.0) << (j % 64);
            }
            let f = v.iter().map(|x| x * x).sum::<f32>() / v.iter().map(|x| x.abs()).sum::<f32>();
            let pc: u32 = codes[row * words..(row + 1) * words]
                .iter()
                .map(|x| x.count_ones())
                .sum();
            factors.extend([f, f * pc as f32]);
        }
        let mut blocks = vec![0u8; n.div_ceil(BLOCK) * block_bytes(words)];
        let slots: Vec<usize> = (0..n).collect();
        pack(&mut blocks, words, &slots, &codes);
        (codes, blocks, factors)
    }

    #[test]
    fn simd_and_portable_sums_agree() {
        if !simd_available(384, 4) {
            return; // nothing to compare on this CPU
        }
        for dim in [64usize, 100, 384, 1536] {
            let words = dim.div_ceil(64);
            let (_, blocks, _) = fixture(64, dim, dim as u64);
            let mut rng = rand::rngs::StdRng::seed_from_u64(9);
            for bits in [1usize, 2, 4] {
                let q: Vec<f32> = (0..dim).map(|_| rng.random::<f32>() - 0.5).collect();
                let luts = QueryLuts::new(&q, bits, words);
                for block in blocks.chunks_exact(block_bytes(words)) {
                    let (mut a, mut b) = ([0u32; BLOCK], [0u32; BLOCK]);
                    block_sums_portable(block, &luts, &mut a);
                    // SAFETY: AVX2 checked above.
                    unsafe { block_sums_avx2(block, luts.narrow.as_deref().unwrap(), &mut b) };
                    assert_eq!(a, b, "dim {dim} bits {bits}");
                }
            }
        }
    }

    /// Both paths rank exactly as the row-major scan, for odd list sizes, empty and
    /// single-row spans, ids past the limit, and bits beyond the SIMD tables.
    #[test]
    fn ranks_like_the_row_major_scan() {
        let dim = 384;
        let n = 32 * 40;
        let (codes, blocks, factors) = fixture(n, dim, 5);
        let ids: Vec<i64> = (0..n as i64).map(|i| (i * 7919) % n as i64).collect();
        let spans = [
            (0usize, 33usize),
            (64, 0),
            (96, 1),
            (128, 31),
            (160, 700),
            (1248, 32),
        ];
        let mut rng = rand::rngs::StdRng::seed_from_u64(6);
        let queries: Vec<f32> = (0..3 * dim).map(|_| rng.random::<f32>() - 0.5).collect();
        let bounds = [0usize, 2, 4, spans.len()];
        let row_major = Codes {
            words: &codes,
            factors: &factors,
            ids: &ids,
            dim,
        };
        let fast = FastCodes {
            blocks: &blocks,
            factors: &factors,
            ids: &ids,
            dim,
        };
        for bits in [1usize, 4, 6] {
            for (r, limit) in [(10usize, i64::MAX), (300, i64::MAX), (5, 900)] {
                let want = code_topk(row_major, &queries, bits, &spans, &bounds, r, limit).unwrap();
                for portable in [true, false] {
                    let got = fast_topk(fast, &queries, bits, &spans, &bounds, r, limit, portable)
                        .unwrap();
                    assert_eq!(got, want, "bits {bits} r {r} portable {portable}");
                }
            }
        }
    }

    /// The shared floor only drops rows that cannot make the final `r`: the ids do not
    /// depend on how the spans are cut into tasks (one task, or many run in parallel),
    /// also with tied estimates (every row's code and factors repeated in another list).
    #[test]
    fn task_split_and_shared_floor_change_no_result() {
        let dim = 384usize;
        let words = dim.div_ceil(64);
        let half = 32 * 30;
        let (codes, _, factors) = fixture(half, dim, 11);
        // Rows half.. repeat rows 0.. (same code, same factors: equal estimates).
        let codes = [codes.clone(), codes].concat();
        let factors = [factors.clone(), factors].concat();
        let n = 2 * half;
        let slots: Vec<usize> = (0..n).collect();
        let mut blocks = vec![0u8; n / BLOCK * block_bytes(words)];
        pack(&mut blocks, words, &slots, &codes);
        let ids: Vec<i64> = (0..n as i64).map(|i| (i * 7919) % n as i64).collect();
        let fast = FastCodes {
            blocks: &blocks,
            factors: &factors,
            ids: &ids,
            dim,
        };
        // Lists of odd sizes (not multiples of 32), empty and single-row ones, both copies.
        let mut spans = Vec::new();
        for (i, start) in (0..n).step_by(BLOCK * 3).enumerate() {
            let len = [77usize, 0, 1, 96, 33, 65][i % 6];
            spans.push((start, len.min(n - start)));
        }
        let row_major = Codes {
            words: &codes,
            factors: &factors,
            ids: &ids,
            dim,
        };
        let mut rng = rand::rngs::StdRng::seed_from_u64(12);
        let queries: Vec<f32> = (0..2 * dim).map(|_| rng.random::<f32>() - 0.5).collect();
        let bounds = [0usize, spans.len() / 2, spans.len()];
        for (r, limit) in [
            (1usize, i64::MAX),
            (10, i64::MAX),
            (64, 1000),
            (5000, i64::MAX),
        ] {
            // The row-major scan (no shared floor) is the reference.
            let want = code_topk(row_major, &queries, 4, &spans, &bounds, r, limit).unwrap();
            for portable in [true, false] {
                let one =
                    fast_topk_tasks(fast, &queries, 4, &spans, &bounds, r, limit, portable, n)
                        .unwrap();
                assert_eq!(one, want, "r {r} limit {limit} one task");
                for task_rows in [1usize, 40, 200] {
                    let split = fast_topk_tasks(
                        fast, &queries, 4, &spans, &bounds, r, limit, portable, task_rows,
                    )
                    .unwrap();
                    assert_eq!(split, one, "r {r} limit {limit} tasks of {task_rows}");
                }
            }
        }
    }

    #[test]
    fn refuses_unaligned_spans_and_short_blocks() {
        let (_, blocks, factors) = fixture(40, 64, 7);
        let ids: Vec<i64> = (0..40).collect();
        let fast = FastCodes {
            blocks: &blocks,
            factors: &factors,
            ids: &ids,
            dim: 64,
        };
        let q = [0.5f32; 64];
        assert!(matches!(
            fast_topk(fast, &q, 4, &[(3, 2)], &[0, 1], 1, 9, false),
            Err(CodesError::Span(_))
        ));
        assert!(matches!(
            fast_topk(fast, &q, 4, &[(32, 9)], &[0, 1], 1, 9, false),
            Err(CodesError::Span(_))
        ));
        let short = FastCodes {
            blocks: &blocks[..10],
            ..fast
        };
        assert!(matches!(
            fast_topk(short, &q, 4, &[], &[0, 0], 1, 9, false),
            Err(CodesError::Shape(_))
        ));
    }
}
