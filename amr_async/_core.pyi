"""Type stubs for the Rust extension `amr_async._core` (see rust/src/lib.rs)."""

import numpy as np
import numpy.typing as npt

__version__: str

def cosine_matrix(
    queries: npt.NDArray[np.float32], matrix: npt.NDArray[np.float32]
) -> npt.NDArray[np.float32]:
    """Cosine similarity of each query row against each matrix row (q × n, float32).

    Zero-norm rows score 0. Releases the GIL. Raises ValueError on a dimension mismatch.
    """

def topk(
    queries: npt.NDArray[np.float32],
    matrix: npt.NDArray[np.float32] | npt.NDArray[np.float16] | npt.NDArray[np.int8],
    k: int,
    scales: npt.NDArray[np.float32] | None = None,
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
    """Exact dot-product top-k of each query row (q × d) against the matrix rows (n × d).

    The matrix is float32, float16, or int8 with `scales` (one float32 per row; the row's
    value is `scales[i] * row`). Returns scores (q × k, float32) and row indices
    (q × k, int64), best first; ties go to the lower index, NaN scores rank last, `k` is
    clipped to n. Normalise vectors first for cosine. Zero-copy for C-contiguous arrays;
    releases the GIL and uses every core. Raises ValueError on shape mismatches and
    TypeError for another dtype.
    """

def hash_embed(texts: list[str], dim: int = 384) -> npt.NDArray[np.float32]:
    """Model-free feature-hashing embeddings (n × dim float32, rows L2-normalised).

    Deterministic across runs and machines; a text with no identifiers or words maps to
    the zero vector. Releases the GIL and runs in parallel.
    """

def count_tokens(texts: list[str], encoding: str) -> list[int]:
    """Token counts per text: "cl100k_base" and "o200k_base" exactly (offline), or
    "anthropic_estimate" (ceil(1.2 × cl100k_base), an over-estimate). Raises ValueError
    for an unknown encoding.
    """

def ast_hash(codes: list[str], include_name: bool = False, threads: int = 0) -> list[str | None]:
    """AST-normalised 128-bit hash (32 hex chars) per code, None where it does not parse.

    Type-1/type-2 clones (formatting, comments, docstrings, annotations, local names)
    collide. `include_name` keeps top-level def/class names. `threads=0` uses every
    core. Spec: amr_async/ast_reference.py.
    """

def ast_size(codes: list[str], threads: int = 0) -> list[int | None]:
    """AST node count of each code's normal form (None where it does not parse)."""

def ast_parse_only(codes: list[str], threads: int = 0) -> list[bool]:
    """Whether each code parses, run as ast_hash runs its parse: the benchmark's floor."""

def ast_normal_form(code: str, include_name: bool = False) -> str | None:
    """The normal-form text that ast_hash hashes (for debugging and tests)."""

class FunctionRecord:
    """One function (or method of a top-level class) found in an LLM answer."""

    @property
    def name(self) -> str: ...
    @property
    def qualname(self) -> str: ...
    @property
    def class_name(self) -> str | None: ...
    @property
    def is_method(self) -> bool: ...
    @property
    def is_async(self) -> bool: ...
    @property
    def signature(self) -> str: ...
    @property
    def docstring(self) -> str | None: ...
    @property
    def body(self) -> str: ...
    @property
    def source(self) -> str: ...
    @property
    def decorators(self) -> list[str]: ...
    @property
    def start_line(self) -> int: ...
    @property
    def end_line(self) -> int: ...
    @property
    def block(self) -> int: ...
    @property
    def block_has_error(self) -> bool: ...
    @property
    def imports(self) -> list[str]: ...
    @property
    def globals(self) -> list[str]: ...
    @property
    def helpers(self) -> list[str]: ...

def extract_functions(text: str) -> list[FunctionRecord]:
    """Functions in one LLM answer (fenced Python blocks, or the whole text if unfenced).

    Tolerant: a block with syntax errors yields the functions whose own text parses,
    flagged `block_has_error`. Line numbers count from 1 over the whole answer.
    """

def extract_functions_batch(texts: list[str], threads: int = 0) -> list[list[FunctionRecord]]:
    """`extract_functions` over many answers, in parallel (`threads=0`: every core)."""

def scan_bytes(data: npt.NDArray[np.uint8]) -> int:
    """Read every byte once on all threads and return a checksum (memory-bound probe)."""

def topk_rows(
    queries: npt.NDArray[np.float32],
    matrix: npt.NDArray[np.float32] | npt.NDArray[np.float16] | npt.NDArray[np.int8],
    k: int,
    rows: npt.NDArray[np.int64],
    offsets: npt.NDArray[np.int64],
    scales: npt.NDArray[np.float32] | None = None,
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
    """Exact dot-product top-k of each query over its own subset of the matrix's rows.

    Query `i` scores the row ids `rows[offsets[i]:offsets[i+1]]` (`offsets` has q + 1
    non-decreasing entries from 0 to len(rows)), gathered from `matrix` in place: no copy,
    so a memory-mapped vector file is read only where listed. Scores, order and ties as
    `topk`. Returns (q × k') scores and row ids with k' = min(k, largest subset); shorter
    subsets are padded with id -1 and score -inf. Releases the GIL; large subsets are split
    over every core. Raises ValueError for an id out of range, bad offsets or shapes, and
    TypeError for another dtype.
    """

def code_topk(
    queries: npt.NDArray[np.float32],
    codes: npt.NDArray[np.uint64],
    factors: npt.NDArray[np.float32],
    ids: npt.NDArray[np.int64],
    spans: npt.NDArray[np.int64],
    bounds: npt.NDArray[np.int64],
    r: int,
    bits: int = 4,
    limit: int = ...,
) -> npt.NDArray[np.int64]:
    """Ids of the best `r` rows per query by a 1-bit code estimate of the inner product.

    `queries` (q × d) are already rotated; `codes` (n × ceil(d/64)) hold one sign bit per
    dimension of each rotated stored vector, `factors` (n × 2) its f = |x|²/|Px|₁ and
    g = f·popcount(code), `ids` its vector id. Query `i` scans the arena rows of the
    (start, length) `spans[bounds[i]:bounds[i+1]]`, quantised to `bits` (1-8) bit planes;
    ids ≥ `limit` are skipped. Returns q × r ids, best estimate first, -1 padding.
    Releases the GIL; large scans are split over every core. Raises ValueError for bad
    shapes, spans or bounds.
    """

def code_topk_fast(
    queries: npt.NDArray[np.float32],
    blocks: npt.NDArray[np.uint8],
    factors: npt.NDArray[np.float32],
    ids: npt.NDArray[np.int64],
    spans: npt.NDArray[np.int64],
    bounds: npt.NDArray[np.int64],
    r: int,
    bits: int = 4,
    limit: int = ...,
    portable: bool = False,
) -> npt.NDArray[np.int64]:
    """`code_topk` over codes in the FastScan layout: the same ids, faster.

    `blocks` (slots/32 × 256·ceil(d/64) bytes, as `fastscan_pack` writes them) holds the
    codes of 32 arena slots per row, interleaved by 4-bit group; `factors` and `ids` are per
    slot. Span starts must be multiples of 32. With AVX2 and `bits` ≤ 4 a query's 4-bit
    group tables are looked up 32 rows at a time (`vpshufb`); `portable` forces the
    nibble-at-a-time path. Both give `code_topk`'s estimates exactly, so the same ids and
    order. Releases the GIL. Raises ValueError for bad shapes, spans or bounds.
    """

def fastscan_pack(
    blocks: npt.NDArray[np.uint8], slots: npt.NDArray[np.int64], codes: npt.NDArray[np.uint64]
) -> None:
    """Write row-major `codes` (n × words) into `blocks` (m × 256·words) at `slots`, in place.

    Only the given slots' nibbles change. Raises ValueError for a slot past `blocks`, a
    shape mismatch or a non-contiguous `blocks`.
    """

def fastscan_unpack(
    blocks: npt.NDArray[np.uint8], slots: npt.NDArray[np.int64]
) -> npt.NDArray[np.uint64]:
    """The row-major codes (n × words) of `slots` in FastScan `blocks`."""

def ivf_probe(
    queries: npt.NDArray[np.float32],
    centroids: npt.NDArray[np.float32],
    nprobe: int,
    portable: bool = False,
) -> npt.NDArray[np.int64]:
    """The `nprobe` centroids (rows of `centroids`) with the highest dot product per query.

    Returns q × min(nprobe, n) centroid numbers, ascending; ties go to the lower number, NaN
    ranks last. Runs on the calling thread (GIL released; AVX2 when present, `portable`
    forces the plain loop: same results). Raises ValueError for mismatched dimensions.
    """

def ivf_compact(
    centroids: npt.NDArray[np.float32],
) -> tuple[npt.NDArray[np.int8], npt.NDArray[np.float32]]:
    """The centroids (n × d) in int8 for choosing lists: codes (n × d, within ±127, rounded
    to nearest) and per row the scale `max |x| / 127` (0 for a zero row), `x ≈ scale × code`."""

def ivf_probe_compact(
    queries: npt.NDArray[np.float32],
    codes: npt.NDArray[np.int8],
    scales: npt.NDArray[np.float32],
    nprobe: int,
    portable: bool = False,
) -> npt.NDArray[np.int64]:
    """`ivf_probe` on compact centroids (`ivf_compact`): each query quantized the same way,
    centroid c scored `scales[c] × Σ q_i codes[c, i]` (exact integer sums, so `portable`
    gives the same results). Raises ValueError for mismatched shapes.
    """

def ivf_rotate(
    queries: npt.NDArray[np.float32], rotation: npt.NDArray[np.float32]
) -> npt.NDArray[np.float32]:
    """`queries @ rotation.T` (q × d; `rotation` d × d) computed as `ivf_search` rotates its
    query, so a batch's code ranking matches the fused call's. Raises ValueError for shapes."""

def ivf_search(
    query: npt.NDArray[np.float32],
    centroid_codes: npt.NDArray[np.int8],
    centroid_scales: npt.NDArray[np.float32],
    rotation: npt.NDArray[np.float32],
    starts: npt.NDArray[np.int64],
    sizes: npt.NDArray[np.int64],
    blocks: npt.NDArray[np.uint8],
    factors: npt.NDArray[np.float32],
    ids: npt.NDArray[np.int64],
    matrix: npt.NDArray[np.float32] | npt.NDArray[np.float16] | npt.NDArray[np.int8],
    k: int,
    nprobe: int,
    rerank: int,
    bits: int = 4,
    limit: int = ...,
    scales: npt.NDArray[np.float32] | None = None,
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
    """One IVF query (1 × d) in one call, the GIL released once: the `nprobe` lists nearest
    it by the compact centroids (`ivf_compact`, chosen as `ivf_probe_compact`, the products
    split over the threads), their rows (list c:
    slots `starts[c] … starts[c] + sizes[c] - 1` of `blocks`, `factors`, `ids`) ranked by
    1-bit code estimate (`code_topk_fast`, query rotated as `ivf_rotate`), and the best
    max(rerank, k) with id < `limit` re-scored exactly on `matrix` in ascending id order
    (`topk_rows`). With rerank 0, all lists probed, or no more rows than that, every probed
    row is scored exactly. Returns (1 × k') scores and ids, k' = min(k, rows scored), as
    `topk_rows`. Raises ValueError for shapes that do not fit or a list past the arena.
    """
