"""Vector indexes over the vector file: exact scan, hnswlib, usearch.

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

Indexes are derived data: after a crash the store catches an index up from the vector file,
or rebuilds it when its file is ahead of the metadata.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import numpy.typing as npt

from amr_async import _core
from amr_async.moduledb._vectors import F32, VectorView

IndexKind = Literal["exact", "hnsw", "usearch"]
I64 = npt.NDArray[np.int64]

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
