"""Vector indexes over the vector file: exact scan, hnswlib, usearch, IVF.

Every index answers "the k ids with the highest dot product among ids < limit" for
L2-normalised vectors; the store re-scores candidates from the vector file, so scores agree
across indexes. ids are row numbers of the vector file (= module ids).

- `ExactIndex` keeps nothing of its own: the Rust `topk` kernel scans the memory-mapped vector
  file in place. Reopen is free, results are
  exact, insert is a file append; latency grows linearly with size.
- `HnswIndex` (hnswlib, M=16, ef_construction=40, ef=256 by default): fast queries, slow inserts,
  whole index in RAM (~1.7 KB per 384-d vector), fixed capacity grown by copying, and not safe
  for a query concurrent with an insert (the store holds a lock around it).
- `USearchIndex` (usearch HNSW with f16 or i8 vectors inside): smaller, and saved files can be
  memory-mapped on reopen (``view``), at some recall cost for i8.
- `IvfIndex` (inverted file): k-means centroids split the vectors into lists; a query ranks
  the rows of the `nprobe` lists nearest to it by 1-bit codes of the rotated vectors (Rust
  `code_topk_fast`, codes in a FastScan layout) and re-scores the best `rerank` exactly
  from the memory-mapped vector file.
  Insert = matrix products against the centroids and the rotation, and an append; it keeps
  the centroids, one list number per row (4 B) and per row a code, two factors and an id
  grouped by list (64 B at 384-d).

Indexes are derived data: after a crash the store catches an index up from the vector file,
or rebuilds it when its file is ahead of the metadata.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import numpy.typing as npt

from amr_async import _core
from amr_async.moduledb._vectors import F32, VectorView

IndexKind = Literal["exact", "hnsw", "usearch", "ivf"]
I64 = npt.NDArray[np.int64]
U64 = npt.NDArray[np.uint64]
U8 = npt.NDArray[np.uint8]
I8 = npt.NDArray[np.int8]

# Graph parameters of both HNSW indexes (bench/moduledb.py measured them on 384-d synthetic
# rank-32 vectors, see the README): M=16 links per node; ef_construction=40 costs ~0.6x the CPU
# per insert of 100 for ~1.5 points of recall, and insert rate is a goal at 1M. ef_search=256:
# usearch recall@10 at 100k was 0.82 / 0.93 / 0.98 / 0.999 at ef 64 / 128 / 256 / 512, for
# 1.9 / 3.0 / 4.0 / 7.0 ms CPU per query under load; 256 is the first above 0.95. A search-time
# setting: `StoreConfig.ef_search` changes it per open.
# Profiled 2026-11-26 at 100k (usearch 2.26, SIMD "haswell" kernels in use, threads=1, CPU
# time under load 5-10): usearch's own search/add on the same vectors costs 3.1 ms per query
# (ef 256) and 570 µs per insert, so the index itself, not the store, is the cost; this VM
# streams memory at 4-8 GB/s and graph walks are cache misses. Alternatives measured there:
# ef_construction 128: 1,480 µs per insert for recall 0.952 at ef 128 (0.933 with 40);
# M=8 (ef_construction 64): recall 0.905 at ef 256; f16 instead of i8 inside the graph (30k):
# same query cost, +50 % insert CPU, top-10 recall 0.994 vs 0.938 before re-scoring (the
# store's re-scoring of 3k candidates on the f16 file recovers most of it); 6x instead of 3x
# over-fetch: no recall change (the graph's ef bounds it); two add threads: the same CPU per
# insert as one.
HNSW_M = 16
HNSW_EF_CONSTRUCTION = 40
HNSW_EF_SEARCH = 256


def exact_topk(
    queries: F32, view: VectorView, k: int, *, rows: I64 | None = None
) -> tuple[F32, I64]:
    """Exact top-k by dot product over the view (or only its `rows`).

    Returns:
        (scores, ids), each ``(q, min(k, n))``, best first; ids are row numbers.
    """
    n = view.count if rows is None else len(rows)
    kk = min(k, n)
    q = len(queries)
    if kk == 0:
        return np.zeros((q, 0), np.float32), np.zeros((q, 0), np.int64)
    # Rust kernel: scans the f16/int8 rows in place (zero-copy on the mmap), GIL released.
    matrix = view.matrix if rows is None else view.matrix[rows]
    scales = view.scales if rows is None or view.scales is None else view.scales[rows]
    if scales is not None:
        scales = np.ascontiguousarray(scales, dtype=np.float32)
    scores, ids = _core.topk(np.ascontiguousarray(queries, dtype=np.float32), matrix, kk, scales)
    if rows is not None:
        ids = rows[ids]
    return scores, ids


class VectorIndex(Protocol):
    """What the store needs from an index. Implementations serialise their own mutation."""

    kind: IndexKind

    def __len__(self) -> int:
        """Number of vectors indexed (always ids ``0 … len-1``)."""
        ...

    def add(self, vectors: F32, start_id: int) -> None:
        """Index `vectors` as ids ``start_id, start_id+1, …`` (start_id == len(self))."""
        ...

    def candidates(self, queries: F32, k: int, view: VectorView) -> I64:
        """Up to `k` candidate ids per query among ids < view.count; -1 pads."""
        ...

    def save(self, path: Path) -> None:
        """Write the index next to the DB (no-op for exact)."""
        ...


class ExactIndex:
    """Brute-force scan of the vector file; nothing to build, save or load."""

    kind: IndexKind = "exact"

    def __init__(self, count: int = 0) -> None:
        self._count = count

    def __len__(self) -> int:
        return self._count

    def add(self, vectors: F32, start_id: int) -> None:
        self._count = start_id + len(vectors)

    def candidates(self, queries: F32, k: int, view: VectorView) -> I64:
        return exact_topk(queries, view, k)[1]

    def save(self, path: Path) -> None:
        return None


def _threads(queries: F32, index: HnswIndex | USearchIndex) -> int:
    # One query cannot use a second thread; handing it to a pool costs ~20 % more CPU.
    return 1 if len(queries) == 1 else index.threads


def _pad(ids: I64, k: int) -> I64:
    if ids.shape[1] >= k:
        return ids
    pad = np.full((ids.shape[0], k - ids.shape[1]), -1, np.int64)
    return np.concatenate([ids, pad], axis=1)


class HnswIndex:
    """hnswlib HNSW over inner product (vectors are L2-normalised)."""

    kind: IndexKind = "hnsw"

    def __init__(
        self,
        dim: int,
        *,
        m: int = HNSW_M,
        ef_construction: int = HNSW_EF_CONSTRUCTION,
        ef: int = HNSW_EF_SEARCH,
        threads: int = 2,
    ) -> None:
        import hnswlib

        self._hnswlib = hnswlib
        self.dim = dim
        self.m = m
        self.ef_construction = ef_construction
        self.ef = ef
        self.threads = threads
        self._lock = threading.Lock()
        self._index: Any = hnswlib.Index(space="ip", dim=dim)
        self._index.init_index(max_elements=1024, ef_construction=ef_construction, M=m)
        self._index.set_ef(ef)

    @classmethod
    def load(cls, path: Path, dim: int, **kwargs: Any) -> HnswIndex:
        """Load a saved index (the whole file is read into RAM: hnswlib has no mmap)."""
        self = cls(dim, **kwargs)
        index: Any = self._hnswlib.Index(space="ip", dim=dim)
        index.load_index(str(path))
        index.set_ef(self.ef)
        self._index = index
        return self

    def __len__(self) -> int:
        return int(self._index.get_current_count())

    def add(self, vectors: F32, start_id: int) -> None:
        if not len(vectors):
            return
        with self._lock:
            need = start_id + len(vectors)
            cap = int(self._index.get_max_elements())
            if need > cap:
                self._index.resize_index(max(need, cap * 2))
            ids = np.arange(start_id, need, dtype=np.int64)
            self._index.add_items(vectors, ids, num_threads=self.threads)

    def candidates(self, queries: F32, k: int, view: VectorView) -> I64:
        with self._lock:
            size = len(self)
            kk = min(k + max(0, size - view.count), size)
            if kk == 0:
                return np.full((len(queries), k), -1, np.int64)
            self._index.set_ef(max(self.ef, kk))
            labels, _ = self._index.knn_query(queries, k=kk, num_threads=_threads(queries, self))
        ids = np.asarray(labels, dtype=np.int64)
        ids[ids >= view.count] = -1
        return _pad(ids, k)

    def save(self, path: Path) -> None:
        with self._lock:
            self._index.save_index(str(path))


class USearchIndex:
    """usearch HNSW with compact vectors inside (``f16`` or ``i8``), cosine metric."""

    kind: IndexKind = "usearch"

    def __init__(
        self,
        dim: int,
        *,
        dtype: str = "i8",
        m: int = HNSW_M,
        ef_construction: int = HNSW_EF_CONSTRUCTION,
        ef: int = HNSW_EF_SEARCH,
        threads: int = 2,
    ) -> None:
        from usearch.index import Index

        self.dim = dim
        self.threads = threads
        self.ef = ef
        self._lock = threading.Lock()
        self._viewed_from: Path | None = None
        self._ef_set = ef
        self._index: Any = Index(
            ndim=dim,
            metric="cos",
            dtype=dtype,
            connectivity=m,
            expansion_add=ef_construction,
            expansion_search=ef,
        )

    @classmethod
    def load(cls, path: Path, dim: int, *, view: bool = True, **kwargs: Any) -> USearchIndex:
        """Open a saved index; with `view` the file is memory-mapped (read-only, O(1) open).

        A viewed index cannot take inserts; the store then loads it fully on first insert.
        """
        self = cls(dim, **kwargs)
        if view:
            self._index.view(str(path))
            self._viewed_from = path
        else:
            self._index.load(str(path))
        self._ef_set = 0  # the loaded index's own setting is unknown: set it on first search
        return self

    def __len__(self) -> int:
        return len(self._index)

    def load_into_memory(self) -> None:
        """Replace a memory-mapped view by a copy in RAM (needed before inserts)."""
        with self._lock:
            self._load_locked()

    def _load_locked(self) -> None:
        if self._viewed_from is not None:
            self._index.load(str(self._viewed_from))
            self._viewed_from = None
            self._ef_set = 0

    def add(self, vectors: F32, start_id: int) -> None:
        if not len(vectors):
            return
        with self._lock:
            # A memory-mapped view is read-only: load it into RAM before the first insert.
            self._load_locked()
            ids = np.arange(start_id, start_id + len(vectors), dtype=np.uint64)
            self._index.add(ids, vectors, threads=self.threads)

    def candidates(self, queries: F32, k: int, view: VectorView) -> I64:
        with self._lock:
            size = len(self._index)
            kk = min(k + max(0, size - view.count), size)
            if kk == 0:
                return np.full((len(queries), k), -1, np.int64)
            ef = max(self.ef, kk)
            if ef != self._ef_set:  # a property write is a C++ call: only when it changes
                self._index.expansion_search = ef
                self._ef_set = ef
            found = self._index.search(queries, kk, threads=_threads(queries, self))
        keys = np.asarray(found.keys, dtype=np.int64).reshape(len(queries), -1)
        counts = np.asarray(getattr(found, "counts", [keys.shape[1]])).reshape(-1)
        if int(counts.min()) < keys.shape[1]:  # fewer hits than asked: blank the tail
            keys[np.arange(keys.shape[1]) >= counts[:, None]] = -1
        keys[keys >= view.count] = -1
        return _pad(keys, k)

    def save(self, path: Path) -> None:
        with self._lock:
            if self._viewed_from is not None:
                return  # unchanged since it was mapped from disk
            self._index.save(str(path))


# IVF parameters (bench/moduledb.py, 384-d synthetic rank-32 vectors; see `IvfIndex`).
# Lists: IVF_LISTS_PER_SQRT × sqrt(n) at training time (the usual 1-16 × sqrt(n) range).
IVF_LISTS_PER_SQRT = 4.0
# Lists scanned per query: the recall/latency knob (`StoreConfig.nprobe`, set per open).
# With the 1-bit code scan (rerank 256, 4-bit query) at 1M (2,263 lists, f16 file, synthetic
# rank-32 vectors, 2 shared cores at load 7-8, 2026-11-27): nprobe 192 / 224 / 256 / 320 gave
# recall@10 0.940 / 0.954 / 0.964 / 0.981 for 3.4-4.0 / 4.3 / 4.2-4.6 / 4.4 ms CPU per query
# (CPU figures ±15 % under that load); the exact scan of the same lists (rerank 0) had needed
# 20.7 / 25.3 ms CPU at nprobe 256 / 320. 256 keeps a margin above 0.95.
# Smaller DBs have fewer lists, so the same nprobe covers more of them (recall 0.99 at 100k).
IVF_NPROBE = 256
# Below this many vectors the index is not trained: a query scans every row exactly.
IVF_MIN_TRAIN = 10_000
# Retrain (new centroids, every row reassigned) once the index has grown this many times
# past the size it was trained at: lists stay near IVF_LISTS_PER_SQRT × sqrt(n) rows apart.
IVF_RETRAIN_GROWTH = 4
# A retraining on rows 0 … n-1 (n = IVF_RETRAIN_GROWTH × the last training size, a row count
# that does not depend on batch sizes or timing) runs in a background thread while writers
# keep appending with the old centroids; the new centroids take effect in the add that brings
# the index to n + n // IVF_SWAP_AFTER_DIV rows (waiting for the training if it is not done),
# so search results never depend on how fast the training ran.
IVF_SWAP_AFTER_DIV = 4
# k-means: a sample of this many rows per list, this many Lloyd iterations.
IVF_TRAIN_PER_LIST = 32
IVF_TRAIN_ITERS = 5
# IVF compact codes (see `IvfIndex`): 1 bit per dimension of the randomly rotated vector, the
# candidates' exact re-rank from the vector file. Measured before building it (throwaway
# numpy prototype, 100k synthetic rank-32 vectors, 1,265 lists, 200 queries): recall@10 at
# 14 % of the lists was 0.944 for the exact list scan, and 0.940 / 0.944 / 0.944 re-ranking
# the best 100 / 200 / 500 by the code estimate with a 4-bit query (a 1-bit query: 0.838 /
# 0.909 / 0.941); codes of the vectors themselves ranked as well as codes of their residuals
# to the list centroid (0.942 vs 0.941 at 100), so codes do not depend on the centroids and
# survive retraining unchanged.
# Candidates re-ranked exactly per query (`StoreConfig.rerank`; 0: scan the lists exactly).
# At 1M, nprobe 256: rerank 256 / 512 gave recall 0.964 / 0.964 (128 at nprobe 320: 0.977
# vs 0.981); the exact list scan 0.964-0.965, so 256 loses nothing measurable. Fewer
# (2,263 lists, nprobe 256): 192 / 128 / 64 gave 0.962 / 0.959 / 0.932 (nprobe 224: 0.953 /
# 0.9495 / 0.9245); 128 would cut p50 by ~0.3-0.6 ms under load at 0.005 of recall.
# With one fused call per query (third session, kept 1M DB, nprobe 256, three interleaved
# rounds, load 3.9-4.5): rerank 128 p50 1.81 / 2.14 / 1.41 ms against 2.68 / 2.72 / 2.40 for
# 256 (a smaller pool also admits fewer rows during the scan), recall 0.959 vs 0.9635: the
# default since, the lever closest to the 1 ms goal at recall >= 0.95.
IVF_RERANK = 128
# Bits per coordinate of the rotated query in the code estimate (1-8). At 1M, nprobe 256,
# rerank 256: 4 bits 0.964 recall at 4.6 ms CPU, 1 bit (sign codes, Hamming-like) 0.945 at
# 3.3 ms; 1 bit with rerank 512: 0.960 at 3.8 ms. Kernel alone (1M-row arena, 140k rows in
# 450 spans, load 10): 29-32 ns per row with 4 bits, 18-20 ns with 1 bit, 20 / 8-10 ns when
# the rows are in cache (the 4-bit scan is compute-bound: 24 AND + POPCNT per 384-d row).
# The FastScan layout (`_Lists`, `_core.code_topk_fast`: 32 rows per table look-up) gives the
# same estimates for 5.2 ns per row in cache; at 1M (3,200 lists, nprobe 256: 80k rows in
# 256 spans, one thread, load 10) 1.3-1.4 ms CPU per query against 2.4 ms row-major: the
# scattered lists' memory reads bound it now (a software prefetch of each next list's first
# 2 KB gave nothing measurable: 1.41 vs 1.40 ms median of four).
# Breakdown of one 1M query (2,263 lists, nprobe 256: 114k rows; load 3-4, 2026-11-27,
# first pass over 200 queries, median µs): probe 434, scan 946, re-rank 446 (27 minor page
# faults: the f16 rows' first touch in this process, 64 KB fault-around each), Python glue
# ~200; 1.0 of 2.6 ms CPU on the calling thread, the rest the scan's second rayon thread.
# Since then: the probe's dot products run four centroids per AVX2 pass (140 vs 225-260
# µs CPU), the scan's tasks share the r-th-best floor (a late task no longer refills its
# pool: -40-50 % CPU when the rows are cached, -10 % when not) and prefetch two blocks
# ahead (-4 %), and the re-rank's 256 rows are split over both threads. Same results; A/B on
# one kept DB, load 1.3-1.7, two runs each: p50 3.97 / 3.30 -> 2.54 / 2.13 ms at nprobe 256,
# rerank 256 (CPU 4.6 / 3.8 -> 3.8 / 3.3 ms). Pre-faulting the vector file (MAP_POPULATE,
# MADV_POPULATE_READ) would remove the faults but make the whole file resident (+768 B per
# module at 384-d f16): the RSS goal rules it out.
# 2026-11-27, third session (kept 1M DB, 200 queries, load 2-5): the phase sum missed the probe's
# cold centroids (3.5 MB, evicted by each scan: 0.43 ms after a search vs 0.25 ms warm) and the
# glue between the kernels (spans 40, rotation 20-70, sort/offsets 70 µs); a lone query now runs
# in one Rust call (`_core.ivf_search`) on a pool thread, the centroids' products split over both
# threads: p50 1.97-2.74 -> 1.23-1.64 ms (cold pass), same results. The re-rank's ~18 minor faults
# per query on first touch cost ~7.7 µs each (64 KB fault-around; load 3), ~0.14 ms, and only
# until the rows are mapped; a pread of each of the 256 rows instead would cost 256 syscalls (~3
# µs each measured from Python), so the mapping stays.
# Later in that session: the probe chooses the lists on int8 copies of the centroids
# (`ivf_compact`: a scale per row, derived on train/load, not saved; 0.87 vs 3.5 MB at 1M) and an
# int8 copy of the query (`vpmaddubsw`, exact integer sums). Probe alone, kept 1M DB (2,263
# lists), nprobe 256, one thread, load 2.4-2.8, median of 200: f32 131-135 µs warm / 596-604 µs
# cold, int8 63-64 / 147-158 µs; 1.8 of 256 lists differ per random query, at the boundary. Whole
# fused queries, old and new plain builds in one process alternated query by query (600 each, load
# 2.0-2.2): CPU 1.13-1.40 -> 0.89-1.06 ms, wall p50 0.62-0.80 -> 0.59-0.66 ms; the top-10 ids
# identical in 600/600, and recall at nprobe 192/224/256/320 unchanged (0.9375 / 0.9495 / 0.959 /
# 0.9765).
IVF_QUERY_BITS = 4
# Seed of the random rotation of a new index (saved with it).
_ROTATION_SEED = 0x5EED
_ENCODE_BLOCK = 8192
# Rows read from the vector file per block when assigning them to new centroids. Small, as
# the retraining's last block waits for the swap point's rows (the writer waits for it):
# 50,000 made the swap of a paced fill at 200k take 2.0 s.
_TRAIN_BLOCK = 8192


# Rows assigned per matrix product (bounds the temporary score matrix).
_ASSIGN_BLOCK = 8192
# Rows per block of the FastScan code layout (`_core.code_topk_fast`).
_BLOCK = 32
_IVF_FORMAT = 2  # 2: + rotation, codes grouped by list (1 is read: codes encoded on open)


def _assign(vectors: F32, centroids: F32) -> npt.NDArray[np.int32]:
    """The list (nearest centroid by dot product) of each vector."""
    out = np.empty(len(vectors), np.int32)
    for s in range(0, len(vectors), _ASSIGN_BLOCK):
        out[s : s + _ASSIGN_BLOCK] = np.argmax(vectors[s : s + _ASSIGN_BLOCK] @ centroids.T, axis=1)
    return out


def random_rotation(dim: int, seed: int = _ROTATION_SEED) -> F32:
    """A random orthogonal `dim × dim` matrix (QR of a Gaussian one, signs fixed)."""
    g = np.random.default_rng(seed).standard_normal((dim, dim))
    q, r = np.linalg.qr(g)
    return np.ascontiguousarray(q * np.sign(np.diag(r)), np.float32)


def encode(vectors: F32, rotation: F32) -> tuple[U64, F32]:
    """1-bit codes of `vectors` and their factors (see `_core.code_topk`).

    Bit j of a code is the sign of coordinate j of the rotated vector `P x`; the factors are
    ``f = |x|² / |P x|₁`` (so ``f · <sign(P x), P q>`` estimates ``<x, q>`` without bias)
    and ``g = f · popcount(code)``.
    """
    n, dim = vectors.shape
    words = -(-dim // 64)
    codes = np.zeros((n, words), np.uint64)
    factors = np.zeros((n, 2), np.float32)
    for s in range(0, n, _ENCODE_BLOCK):
        rot = vectors[s : s + _ENCODE_BLOCK] @ rotation.T
        bits = rot > 0
        packed = np.packbits(bits, axis=1, bitorder="little")
        padded = np.zeros((len(rot), words * 8), np.uint8)
        padded[:, : packed.shape[1]] = packed
        codes[s : s + len(rot)] = padded.view("<u8")
        l1 = np.abs(rot).sum(axis=1)
        norm2 = np.einsum("ij,ij->i", rot, rot)
        f = np.divide(norm2, l1, out=np.zeros_like(l1), where=l1 > 0)
        factors[s : s + len(rot), 0] = f
        factors[s : s + len(rot), 1] = f * bits.sum(axis=1)
    return codes, factors


class _Stopped(Exception):
    """A background training was told to stop (the index is closing)."""


def _check(stop: threading.Event | None) -> None:
    if stop is not None and stop.is_set():
        raise _Stopped


def train_centroids(
    sample: F32, nlist: int, *, iters: int, seed: int, stop: threading.Event | None = None
) -> F32:
    """Spherical k-means (Lloyd) on L2-normalised rows: `nlist` unit centroids.

    Deterministic for a given sample and seed. An emptied list is re-seeded with a random
    sample row, so every centroid stays a point of the data's sphere. A set `stop` ends it
    between iterations (raises `_Stopped`).
    """
    rng = np.random.default_rng(seed)
    nlist = max(1, min(nlist, len(sample)))
    centroids = np.ascontiguousarray(sample[rng.choice(len(sample), nlist, replace=False)])
    for _ in range(iters):
        _check(stop)
        labels = _assign(sample, centroids)
        sums = np.zeros_like(centroids)
        np.add.at(sums, labels, sample)
        empty = np.bincount(labels, minlength=nlist) == 0
        if empty.any():
            sums[empty] = sample[rng.choice(len(sample), int(empty.sum()))]
        norms = np.linalg.norm(sums, axis=1, keepdims=True)
        centroids = np.ascontiguousarray(sums / np.where(norms > 0, norms, 1.0), np.float32)
    return centroids


def _aligned(n: int) -> int:
    """`n` rounded up to a multiple of the FastScan block (32 rows)."""
    return -(-n // _BLOCK) * _BLOCK


class _Lists:
    """Rows grouped by list in one arena: list c's ids, codes and factors sit in slots
    ``start[c] … start[c] + size[c] - 1`` (ids ascending), with `room[c]` slots reserved.

    Codes are kept in the FastScan layout (`_core.code_topk_fast`): `blocks` row b holds
    the codes of slots ``32 b … 32 b + 31`` interleaved by 4-bit group, so every list
    starts on a block (starts and rooms are multiples of 32). `ids` and `factors` are
    per slot.

    A list that outgrows its room moves to the arena's end with twice the room; the arena
    grows by half when full and is rebuilt tight once moved-out slots outweigh the live
    ones. Writers only fill slots no reader's span covers (in a shared block, only those
    slots' nibbles), or build new arrays, so a reader holding the arrays and spans of a
    moment reads consistent rows without a lock.
    """

    __slots__ = ("blocks", "end", "factors", "ids", "room", "size", "start")

    def __init__(self, labels: npt.NDArray[np.int32], nlist: int, codes: U64, factors: F32) -> None:
        """Group rows ``0 … len(labels)-1`` (row i in list labels[i], codes in row order)."""
        order = np.argsort(labels, kind="stable").astype(np.int64)
        counts = np.bincount(labels, minlength=nlist).astype(np.int64)
        self._build(order, counts, codes[order], factors[order])

    @classmethod
    def grouped(cls, ids: I64, counts: I64, codes: U64, factors: F32) -> _Lists:
        """Lists from rows already grouped by list (as `saved` gives them): no sort."""
        self = cls.__new__(cls)
        self._build(ids, counts, codes, factors)
        return self

    def saved(self) -> tuple[I64, I64, U64, F32]:
        """(ids, sizes, codes, factors) grouped by list, without gaps (for `grouped`)."""
        slots = self.live_slots()
        codes = _core.fastscan_unpack(self.blocks, slots)
        return self.ids[slots], self.size.copy(), codes, self.factors[slots]

    def _build(self, ids: I64, counts: I64, codes: U64, factors: F32) -> None:
        # Rows arrive grouped by list; each list gets a quarter more room than it holds,
        # rounded up to whole blocks.
        room = -(-(counts + counts // 4 + 4) // _BLOCK) * _BLOCK
        start = np.zeros(len(counts), np.int64)
        np.cumsum(room[:-1], out=start[1:])
        end = int(room.sum())
        slots = np.repeat(start - np.cumsum(counts) + counts, counts) + np.arange(len(ids))
        cap = _aligned(end + end // 4)
        # np.empty / np.zeros: slots never written are never touched, so they cost no
        # resident memory.
        self.ids = np.empty(cap, np.int64)
        self.blocks = np.zeros((cap // _BLOCK, _BLOCK * 8 * codes.shape[1]), np.uint8)
        self.factors = np.empty((cap, 2), np.float32)
        self.ids[slots], self.factors[slots] = ids, factors
        _core.fastscan_pack(self.blocks, slots, np.ascontiguousarray(codes))
        self.start, self.size, self.room, self.end = start, counts.copy(), room, end

    def live_slots(self) -> I64:
        """Every occupied slot, list by list."""
        total = int(self.size.sum())
        return np.repeat(self.start - np.cumsum(self.size) + self.size, self.size) + np.arange(
            total
        )

    def row_order(self, count: int) -> tuple[U64, F32]:
        """Codes and factors of rows ``0 … count-1`` in row order (rows listed beyond it
        are left out)."""
        slots = self.live_slots()
        codes = np.empty((count, self.blocks.shape[1] // (8 * _BLOCK)), np.uint64)
        factors = np.empty((count, 2), np.float32)
        ids = self.ids[slots]
        if len(ids) and int(ids.max()) >= count:
            slots, ids = slots[ids < count], ids[ids < count]
        codes[ids], factors[ids] = _core.fastscan_unpack(self.blocks, slots), self.factors[slots]
        return codes, factors

    def _reserve(self, extra: int) -> None:
        if self.end + extra <= len(self.ids):
            return
        cap = _aligned(max(self.end + extra, len(self.ids) + len(self.ids) // 2))
        for name in ("ids", "factors"):
            old = getattr(self, name)
            new = np.empty((cap, *old.shape[1:]), old.dtype)
            new[: self.end] = old[: self.end]
            setattr(self, name, new)
        blocks = np.zeros((cap // _BLOCK, self.blocks.shape[1]), np.uint8)
        blocks[: self.end // _BLOCK] = self.blocks[: self.end // _BLOCK]
        self.blocks = blocks

    def append(self, ids: I64, labels: npt.NDArray[np.int32], codes: U64, factors: F32) -> None:
        order = np.argsort(labels, kind="stable")
        grouped, ids, codes, factors = labels[order], ids[order], codes[order], factors[order]
        cuts = np.flatnonzero(np.diff(grouped)) + 1
        for lo, hi in zip(
            np.concatenate([[0], cuts]).tolist(),
            np.concatenate([cuts, [len(ids)]]).tolist(),
            strict=True,
        ):
            c = int(grouped[lo])
            size, extra = int(self.size[c]), hi - lo
            if size + extra > self.room[c]:  # move the list to the end with twice the room
                room = _aligned(2 * (size + extra) + 4)
                self._reserve(room)
                old, new = int(self.start[c]), self.end
                for a in (self.ids, self.factors):
                    a[new : new + size] = a[old : old + size]
                used = -(-size // _BLOCK)  # starts are block-aligned: move whole blocks
                self.blocks[new // _BLOCK : new // _BLOCK + used] = self.blocks[
                    old // _BLOCK : old // _BLOCK + used
                ]
                self.start[c], self.room[c] = new, room
                self.end += room
            at = int(self.start[c]) + size
            self.ids[at : at + extra] = ids[lo:hi]
            self.factors[at : at + extra] = factors[lo:hi]
            _core.fastscan_pack(
                self.blocks, np.arange(at, at + extra, dtype=np.int64), codes[lo:hi]
            )
            self.size[c] = size + extra
        if self.end > 2 * int(self.room.sum()):  # moved-out slots dominate: rebuild tight
            slots = self.live_slots()
            self._build(
                self.ids[slots],
                self.size,
                _core.fastscan_unpack(self.blocks, slots),
                self.factors[slots],
            )

    def spans(self, probe: npt.NDArray[np.int64]) -> I64:
        """(start, size) of the given lists, as an ``(len(probe), 2)`` array."""
        return np.stack([self.start[probe], self.size[probe]], axis=1)

    def gather(self, probe: npt.NDArray[np.int64]) -> I64:
        """The ids of the given lists, concatenated (a copy)."""
        parts = [
            self.ids[s : s + n]
            for s, n in zip(self.start[probe].tolist(), self.size[probe].tolist(), strict=True)
        ]
        return np.concatenate(parts) if parts else np.zeros(0, np.int64)


class _Retraining:
    """A retraining of an `IvfIndex` on rows ``0 … n-1`` (see `IVF_SWAP_AFTER_DIV`).

    `run` (in a background thread, or in the writer when it needs the result at once) trains
    the centroids, then assigns rows ``0 … swap_at-1`` in fixed blocks, waiting for the
    writer to publish rows beyond n; the writer applies the result when it reaches `swap_at`.
    """

    def __init__(self, index: IvfIndex, n: int, swap_at: int, view: VectorView, count: int) -> None:
        self.index = index
        self.n = n
        self.swap_at = swap_at
        self.cond = threading.Condition()
        self.view = view  # the newest view the writer published (under `cond`)
        self.count = count  # rows indexed so far (under `cond`)
        self.stop = threading.Event()
        self.waiting = False  # the trainer waits for rows not yet indexed (under `cond`)
        self.result: tuple[F32, npt.NDArray[np.int32]] | None = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self.run, name="ivf-retrain", daemon=True)

    def publish(self, view: VectorView) -> None:
        """The writer indexed rows up to view.count: the trainer may read them."""
        with self.cond:
            self.view, self.count = view, view.count
            self.cond.notify_all()

    def cancel(self) -> None:
        """Stop the trainer at its next check and wait for it."""
        self.stop.set()
        with self.cond:
            self.cond.notify_all()
        if self.thread.is_alive():
            self.thread.join()

    def run(self) -> None:
        try:
            with self.cond:
                view = self.view
            centroids = self.index._centroids_for(view, self.n, self.stop)
            labels = np.empty(self.swap_at, np.int32)
            # Fixed blocks of absolute row numbers: the same matrix products whatever the
            # timing, so the same labels to the bit.
            for start in range(0, self.swap_at, _TRAIN_BLOCK):
                stop = min(start + _TRAIN_BLOCK, self.swap_at)
                with self.cond:
                    while self.count < stop and not self.stop.is_set():
                        self.waiting = True
                        self.cond.wait()
                    self.waiting = False
                    view = self.view
                _check(self.stop)
                labels[start:stop] = _assign(view.block_f32(start, stop), centroids)
            self.result = (centroids, labels)
        except _Stopped:
            pass
        except BaseException as exc:  # the writer retries in its own thread (`_apply`)
            self.error = exc


class IvfIndex:
    """Inverted-file index: k-means lists, probed lists ranked by 1-bit codes, re-ranked exactly.

    State is the centroids, each row's list number and the lists; the vectors stay in the
    store's vector file, read through `view_of(count)`. Below `min_train` vectors nothing
    is trained and a query scans everything; the first add reaching it trains on all rows.
    Growth by `IVF_RETRAIN_GROWTH` since then retrains in a background thread while writers
    append with the old centroids, and a fixed row count later the writer reassigns every
    row to the new centroids and swaps the lists in (`_after_append`; queries keep the old
    lists until the swap).

    Each row also has a 1-bit code of its randomly rotated vector (`encode`), stored with the
    lists, in blocks of 32 slots interleaved by 4-bit group (FastScan). A query scores the
    codes of the probed lists (`_core.code_topk_fast`: a 4-bit query's per-group tables
    looked up 32 rows at a time, `vpshufb`), keeps the best `rerank` and scores those exactly
    from the vector file.
    With ``rerank=0``, when the probed lists hold at most `rerank` rows, or with
    ``nprobe >= nlist`` the probed rows are scanned exactly instead, so probing every list
    equals the exact scan. Returned scores are always exact dot products. A lone query
    runs all of it in one Rust call (`_core.ivf_search`), a batch in one call per step;
    both give the same results.

    Thread-safe: appends and the lists' gathering hold a lock briefly, training runs outside
    it (then swaps the state in), and the scan runs outside it with the GIL released.
    """

    kind: IndexKind = "ivf"

    def __init__(
        self,
        dim: int,
        view_of: Callable[[int], VectorView],
        *,
        nprobe: int = IVF_NPROBE,
        min_train: int | None = None,
        lists_per_sqrt: float | None = None,
        rerank: int = IVF_RERANK,
        query_bits: int = IVF_QUERY_BITS,
        rotation: F32 | None = None,
    ) -> None:
        if nprobe < 1:
            raise ValueError(f"nprobe must be ≥ 1, got {nprobe}")
        if rerank < 0:
            raise ValueError(f"rerank must be ≥ 0, got {rerank}")
        if not 1 <= query_bits <= 8:
            raise ValueError(f"query_bits must be 1 to 8, got {query_bits}")
        self.dim = dim
        self.nprobe = nprobe
        self.rerank = rerank
        self.query_bits = query_bits
        # A QR of a dim × dim matrix (~20-300 ms at 384-d): only for a new index.
        self._rotation = random_rotation(dim) if rotation is None else rotation
        # Module constants read at call time, so tests can shrink them.
        self.min_train = max(1, IVF_MIN_TRAIN if min_train is None else min_train)
        self.lists_per_sqrt = IVF_LISTS_PER_SQRT if lists_per_sqrt is None else lists_per_sqrt
        self._view_of = view_of
        self._lock = threading.Lock()  # the state below: held briefly by queries and appends
        self._write_lock = threading.Lock()  # one mutation (append or training) at a time
        self._count = 0
        self._trained_at = 0
        self._centroids: F32 | None = None
        # The centroids the probe reads (`_core.ivf_compact`: int8 codes, a scale per row),
        # derived whenever the centroids change, never saved.
        self._compact: tuple[I8, F32] | None = None
        self._labels = np.zeros(1024, np.int32)  # list number per row (capacity doubles)
        self._lists: _Lists | None = None
        self._pending: _Retraining | None = None  # a retraining in the background

    @property
    def nlist(self) -> int:
        """Number of lists (0 while untrained)."""
        return 0 if self._centroids is None else len(self._centroids)

    def __len__(self) -> int:
        return self._count

    @classmethod
    def load(
        cls, path: Path, dim: int, count: int, view_of: Callable[[int], VectorView], **kwargs: Any
    ) -> IvfIndex:
        """Open a saved index for a DB of `count` rows; rows saved beyond it are dropped.

        A file that does not fit (another dimension or format, unreadable) is ignored: the
        index is derived data and the caller catches it up from the vector file.
        """
        try:
            with np.load(path, allow_pickle=False) as f:
                fmt = int(f["format"])
                centroids = np.ascontiguousarray(f["centroids"], np.float32)
                labels = np.asarray(f["labels"], np.int32)
                trained_at = int(f["trained_at"])
                saved: tuple[F32, I64, I64, U64, F32] | None = None
                if fmt == _IVF_FORMAT:
                    saved = (
                        np.ascontiguousarray(f["rotation"], np.float32),
                        np.asarray(f["list_ids"], np.int64),
                        np.asarray(f["list_sizes"], np.int64),
                        np.asarray(f["codes"], np.uint64),
                        np.asarray(f["factors"], np.float32),
                    )
        except (OSError, KeyError, ValueError):
            return cls(dim, view_of, **kwargs)
        if fmt not in (1, _IVF_FORMAT) or (len(centroids) and centroids.shape[1] != dim):
            return cls(dim, view_of, **kwargs)
        labels = labels[:count]
        if len(centroids) and len(labels) and int(labels.max()) >= len(centroids):
            return cls(dim, view_of, **kwargs)
        lists: _Lists | None = None
        if saved is not None:
            rotation, ids, sizes, codes, factors = saved
            n = len(ids)
            fits = (
                rotation.shape == (dim, dim)
                and codes.shape == (n, -(-dim // 64))
                and factors.shape == (n, 2)
                and len(sizes) == len(centroids)
                and int(sizes.sum()) == n
                and (n >= len(labels) or not len(centroids))
            )
            if not fits:
                return cls(dim, view_of, **kwargs)
            self = cls(dim, view_of, rotation=rotation, **kwargs)
            if n > len(labels):  # saved after rows whose metadata a crash lost: drop them
                keep = ids < len(labels)
                owner = np.repeat(np.arange(len(sizes)), sizes)
                sizes = np.bincount(owner[keep], minlength=len(sizes)).astype(np.int64)
                ids, codes, factors = ids[keep], codes[keep], factors[keep]
            if len(centroids):
                lists = _Lists.grouped(ids, sizes, codes, factors)
        else:
            self = cls(dim, view_of, **kwargs)
            if len(centroids):  # format 1 (no codes yet): encode the rows once
                codes, factors = encode(
                    self._view_of(len(labels)).block_f32(0, len(labels)), self._rotation
                )
                lists = _Lists(labels, len(centroids), codes, factors)
        if len(centroids):
            self._centroids = centroids
            self._compact = _core.ivf_compact(centroids)
            self._trained_at = trained_at
            self._lists = lists
        self._labels = np.concatenate([labels, np.zeros(max(1024, len(labels)), np.int32)])
        self._count = len(labels)
        return self

    def catch_up(self, count: int, block: int = 50_000) -> None:
        """Index rows ``len(self) … count-1`` from the vector file.

        An untrained index reaching `min_train` trains on every row at once; a trained one
        appends and retrains as `add` does (a retraining may go on in the background).
        """
        with self._write_lock:
            if count <= self._count:
                self._after_append()  # a reopened index may be due a retraining
                return
            if self._must_train(count):
                self._swap(self._train(count), count)  # trains on, and assigns, rows < count
                return
            view = self._view_of(count)
            for start in range(self._count, count, block):
                stop = min(start + block, count)
                with self._lock:
                    self._append_locked(view.block_f32(start, stop), start)
                self._after_append()

    def add(self, vectors: F32, start_id: int) -> None:
        if not len(vectors):
            return
        with self._write_lock:
            end = start_id + len(vectors)
            if self._must_train(end):
                # The store wrote these rows to the file already. Training runs without the
                # state lock: queries keep the exact scan (they cannot see these rows yet).
                self._swap(self._train(end), end)
            else:
                with self._lock:
                    self._append_locked(vectors, start_id)
                self._after_append()

    def close(self) -> None:
        """Stop a background retraining (its work is lost: a reopen starts it again)."""
        with self._write_lock:
            if self._pending is not None:
                self._pending.cancel()
                self._pending = None

    def _must_train(self, end: int) -> bool:
        """Whether an untrained index trains now (retraining goes through `_after_append`)."""
        return self._centroids is None and end >= self.min_train

    def _after_append(self) -> None:
        """Start, feed or apply a retraining (under the write lock, after an append).

        Rows ``0 … n-1`` with n = IVF_RETRAIN_GROWTH × the last training size start one; it
        takes effect once the index holds n + n // IVF_SWAP_AFTER_DIV rows. Both are row
        counts, so the lists at any size are the same whatever the batches' timing.
        """
        while self._centroids is not None:
            pending = self._pending
            if pending is None:
                n = IVF_RETRAIN_GROWTH * self._trained_at
                if self._count < n:
                    return
                swap_at = n + n // IVF_SWAP_AFTER_DIV
                pending = _Retraining(self, n, swap_at, self._view_of(self._count), self._count)
                self._pending = pending
                if self._count < swap_at:
                    pending.thread.start()
                    return
            if self._count < pending.swap_at:
                pending.publish(self._view_of(self._count))
                return
            self._apply(pending)

    def _apply(self, pending: _Retraining) -> None:
        """Wait for the retraining if need be, assign the rows since, and swap the lists."""
        view = self._view_of(self._count)
        pending.publish(view)
        if pending.thread.ident is not None:  # started: the writer waits only if not done
            pending.thread.join()
        else:
            pending.run()  # one add jumped past the swap point: no thread needed
        if pending.result is None:  # the thread failed (e.g. out of memory): try once here
            pending.error = None
            pending.run()
            if pending.result is None:
                self._pending = None
                raise RuntimeError("IVF retraining failed") from pending.error
        centroids, head = pending.result
        count = self._count
        labels = np.zeros(max(1024, 2 * count), np.int32)
        labels[: len(head)] = head
        if count > len(head):  # the rest of the batch that reached the swap point
            labels[len(head) : count] = _assign(view.block_f32(len(head), count), centroids)
        assert self._lists is not None  # a trained index has lists
        # Codes do not depend on the lists: every row keeps its own.
        codes, factors = self._lists.row_order(count)
        lists = _Lists(labels[:count], len(centroids), codes, factors)
        self._pending = None
        self._swap((centroids, labels, lists, count), pending.n)

    def _centroids_for(self, view: VectorView, n: int, stop: threading.Event | None) -> F32:
        """k-means centroids from a sample of rows ``0 … n-1`` (seeded by n)."""
        nlist = max(1, round(self.lists_per_sqrt * math.sqrt(n)))
        rng = np.random.default_rng(n)
        size = min(n, IVF_TRAIN_PER_LIST * nlist)
        sample_ids = np.sort(rng.choice(n, size, replace=False))
        return train_centroids(
            view.rows_f32(sample_ids), nlist, iters=IVF_TRAIN_ITERS, seed=n, stop=stop
        )

    def _append_locked(self, vectors: F32, start_id: int) -> None:
        end = start_id + len(vectors)
        if end > len(self._labels):
            grown = np.zeros(max(end, 2 * len(self._labels)), np.int32)
            grown[: self._count] = self._labels[: self._count]
            self._labels = grown
        if self._centroids is not None and self._lists is not None:
            vectors = np.ascontiguousarray(vectors, np.float32)
            labels = _assign(vectors, self._centroids)
            self._labels[start_id:end] = labels
            codes, factors = encode(vectors, self._rotation)
            self._lists.append(np.arange(start_id, end, dtype=np.int64), labels, codes, factors)
        self._count = end

    def _train(self, count: int) -> tuple[F32, npt.NDArray[np.int32], _Lists, int]:
        """New centroids from a sample of rows ``0 … count-1``, and every row assigned."""
        view = self._view_of(count)
        centroids = self._centroids_for(view, count, None)
        labels = np.zeros(max(1024, 2 * count), np.int32)
        # Codes do not depend on the lists: the indexed rows keep theirs, new rows get one.
        with self._lock:
            lists = self._lists
            have = 0 if lists is None else min(self._count, count)
        codes = np.empty((count, -(-self.dim // 64)), np.uint64)
        factors = np.empty((count, 2), np.float32)
        if lists is not None:
            codes[:have], factors[:have] = lists.row_order(have)
        for start in range(0, count, _TRAIN_BLOCK):
            stop = min(start + _TRAIN_BLOCK, count)
            block = view.block_f32(start, stop)
            labels[start:stop] = _assign(block, centroids)
            if stop > have:
                new = slice(max(start, have), stop)
                codes[new], factors[new] = encode(block[new.start - start :], self._rotation)
        lists = _Lists(labels[:count], len(centroids), codes, factors)
        return centroids, labels, lists, count

    def _swap(self, state: tuple[F32, npt.NDArray[np.int32], _Lists, int], trained_at: int) -> None:
        compact = _core.ivf_compact(state[0])
        # The new state whole, under the lock: a query sees the old lists or the new ones.
        with self._lock:
            self._centroids, self._labels, self._lists, self._count = state
            self._compact = compact
            self._trained_at = trained_at

    def search(
        self,
        queries: F32,
        k: int,
        view: VectorView,
        nprobe: int | None = None,
        rerank: int | None = None,
    ) -> tuple[F32, I64]:
        """Top-k (scores, ids) per query among ids < view.count; -1 (score -inf) pads.

        Scores are exact dot products with the stored vectors of the rows re-ranked (or
        scanned); `nprobe` and `rerank` override the index's own for this call.
        """
        q = len(queries)
        rerank = self.rerank if rerank is None else max(0, rerank)
        probes = self.nprobe if nprobe is None else max(1, nprobe)
        if q == 1:
            return self._search_one(queries, k, view, probes, rerank)
        with self._lock:
            centroids, lists, count = self._centroids, self._lists, self._count
            compact = self._compact
            if centroids is None or lists is None or compact is None:
                probed = None
            else:
                probes = min(probes, len(centroids))
                if probes < len(centroids):
                    # Rust, on this thread: NumPy's product would wake BLAS threads for
                    # one row, which cost more than the product on a loaded machine.
                    probe = _core.ivf_probe_compact(
                        np.ascontiguousarray(queries, np.float32), *compact, probes
                    )
                else:
                    probe = np.broadcast_to(np.arange(len(centroids)), (q, len(centroids)))
                spans = lists.spans(probe.reshape(-1))
                # Codes pay when the lists hold more rows than the re-rank reads anyway; the
                # re-rank keeps at least k.
                rows_per_query = int(spans[:, 1].sum()) // max(1, q)
                pool = max(rerank, k)
                use_codes = rerank > 0 and pool < rows_per_query and probes < len(centroids)
                if use_codes:
                    arena = (lists.blocks, lists.factors, lists.ids)
                    probed = None
                else:
                    probed = [lists.gather(p) for p in probe]
        if centroids is None or lists is None:
            return exact_topk(queries, view, k)
        if probed is None:
            return self._search_codes(queries, k, view, arena, spans, probes, pool)
        if count > view.count:  # a snapshot: ids added after it are not to be seen
            probed = [ids[ids < view.count] for ids in probed]
        # Ascending ids read the mapped file in one direction: measured at 100k (int8, 2
        # shared cores, load 8), 64 lists: kernel 1.01 ms unsorted vs 0.55 ms sorted + 0.14
        # ms to sort; 256 lists: 6.2 vs 4.3 + 0.6 ms. Results do not depend on the order.
        probed = [np.sort(ids) for ids in probed]
        rows = np.concatenate(probed) if probed else np.zeros(0, np.int64)
        offsets = np.zeros(q + 1, np.int64)
        np.cumsum([len(p) for p in probed], out=offsets[1:])
        scales = view.scales
        scores, ids = _core.topk_rows(
            np.ascontiguousarray(queries, dtype=np.float32), view.matrix, k, rows, offsets, scales
        )
        return scores, ids

    def _search_one(
        self, queries: F32, k: int, view: VectorView, nprobe: int, rerank: int
    ) -> tuple[F32, I64]:
        """One query in one Rust call (`_core.ivf_search`: probe, code scan, re-rank with
        the GIL released once); the same results as the batch path of `search`."""
        with self._lock:
            compact, lists = self._compact, self._lists
            if compact is None or lists is None:
                probed = None
            else:
                # Copies: a writer updates starts and sizes in place; the arrays it grows
                # it replaces, so a reference to them is a consistent read.
                probed = (lists.start.copy(), lists.size.copy(), lists.blocks, lists.factors)
                ids = lists.ids
        if probed is None or compact is None:
            return exact_topk(queries, view, k)
        starts, sizes, blocks, factors = probed
        return _core.ivf_search(
            np.ascontiguousarray(queries, np.float32),
            *compact,
            self._rotation,
            starts,
            sizes,
            blocks,
            factors,
            ids,
            view.matrix,
            k,
            nprobe,
            rerank,
            self.query_bits,
            view.count,
            view.scales,
        )

    def _search_codes(
        self,
        queries: F32,
        k: int,
        view: VectorView,
        arena: tuple[U8, F32, I64],
        spans: I64,
        nprobe: int,
        rerank: int,
    ) -> tuple[F32, I64]:
        """Rank the spans' rows by code estimate, then re-rank the best `rerank` exactly."""
        q = len(queries)
        blocks, factors, ids = arena
        # Rotated in Rust, as `_search_one` does: the same floats, so the same ranking.
        rotated = _core.ivf_rotate(np.ascontiguousarray(queries, np.float32), self._rotation)
        bounds = np.arange(q + 1, dtype=np.int64) * nprobe
        cand = _core.code_topk_fast(
            rotated, blocks, factors, ids, spans, bounds, rerank, self.query_bits, view.count
        )
        # Ascending ids read the mapped vector file in one direction (see `search`).
        cand = np.sort(cand, axis=1)
        valid = cand >= 0
        offsets = np.zeros(q + 1, np.int64)
        np.cumsum(valid.sum(axis=1), out=offsets[1:])
        return _core.topk_rows(
            np.ascontiguousarray(queries, dtype=np.float32),
            view.matrix,
            k,
            np.ascontiguousarray(cand[valid]),
            offsets,
            view.scales,
        )

    def candidates(self, queries: F32, k: int, view: VectorView) -> I64:
        return _pad(self.search(queries, k, view)[1], k)

    def save(self, path: Path) -> None:
        """Write centroids, rotation, list numbers, and ids and codes grouped by list (so a
        reopen needs no sort; 4 + 64 B per row at 384-d), atomically (tmp file + rename)."""
        with self._lock:
            centroids = (
                np.zeros((0, self.dim), np.float32) if self._centroids is None else self._centroids
            )
            if self._lists is None:
                ids, sizes = np.zeros(0, np.int64), np.zeros(len(centroids), np.int64)
                codes = np.zeros((0, -(-self.dim // 64)), np.uint64)
                factors = np.zeros((0, 2), np.float32)
            else:
                ids, sizes, codes, factors = self._lists.saved()
            tmp = path.with_name(path.name + ".tmp")
            with tmp.open("wb") as f:
                np.savez(
                    f,
                    format=np.int64(_IVF_FORMAT),
                    centroids=centroids,
                    labels=self._labels[: self._count],
                    trained_at=np.int64(self._trained_at),
                    rotation=self._rotation,
                    list_ids=ids,
                    list_sizes=sizes,
                    codes=codes,
                    factors=factors,
                )
            os.replace(tmp, path)
