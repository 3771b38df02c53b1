"""Snapshot searches of many items in one thread hop, one embedding call and one scan.

Why: amr-evol searches the window's snapshot twice per item (retrieval by its stubs, the
novelty check of its functions), and each `Snapshot.search` hops to a worker thread twice
(embed, then scan), while the hash embedder and the exact scan each hand their small job to
the core's thread pool. The searches of the items in flight are batched instead (see
`Coalescer`): the first one starts at once, the ones asked for meanwhile go together next.

Results are those of `Snapshot.search`, bit for bit, whatever the batch: queries are only
embedded together when the embedder embeds each text on its own (the hash embedder), and
only scanned together when the scan scores each query on its own (the exact index over
f16 vectors; an IVF index picks its method per batch, and int8 rows take another kernel
for fewer than four queries), else each item's queries keep their own calls (still in one
thread hop). Embedders that embed only asynchronously (`openai`) are not batched.

A speculative search (`search_ahead`, see `Speculative`) also scores each query against
the modules that merges still to come may add, in the same hop, so the caller can prove
that they cannot change its hits.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np

from amr_async.moduledb import Embedder, HashEmbedder, ModuleDB, ModuleStore, SearchHit, Snapshot
from amr_async.pipeline.strategies._common import Coalescer

_Hits = list[list[SearchHit]]
F32 = np.ndarray[Any, np.dtype[np.float32]]

# Stored vectors are f16: a stored module's cosine to a query differs from the f32 one by
# at most ~2^-11 (unit vectors); a speculative proof keeps this much more distance.
SCORE_MARGIN = 2e-3


@dataclass(frozen=True, slots=True)
class _Request:
    """One item's search: its query texts, the ranking, its snapshot's module count, and
    (speculative searches) the vectors of the modules that may be added before it counts."""

    texts: tuple[str, ...]
    k: int
    min_similarity: float
    limit: int
    ahead: F32 | None = None


@dataclass(frozen=True, slots=True)
class _Found:
    """A request's hits, and per query the best cosine to the `ahead` modules (-inf: none)."""

    hits: _Hits
    best_ahead: list[float] | None = None


class SnapshotSearcher:
    """`Snapshot.search` for the items of one strategy, batched across the items in flight.

    Shared by the tasks of one event loop.

    Args:
        db: the module database whose snapshots are searched.
    """

    __slots__ = ("_batched", "_db")

    def __init__(self, db: ModuleDB) -> None:
        sync = type(db.embedder).embed_sync is not Embedder.embed_sync
        self._db = db
        self._batched = Coalescer(partial(_search, db)) if sync else None

    @property
    def can_search_ahead(self) -> bool:
        """Whether `search_ahead` works: queries embedded here and scanned exactly, alone."""
        return self._batched is not None and _scans_each_query_alone(self._db.store)

    def embed_ahead(self, codes: Sequence[str]) -> F32:
        """The vectors `add_many` would store for `codes`, for `search_ahead` (on a thread)."""
        return self._db.embedder.embed_sync(list(codes))

    @property
    def batches(self) -> int:
        """Batches run so far (0 when not batched; tests)."""
        return 0 if self._batched is None else self._batched.batches

    async def search(
        self, snapshot: Snapshot, queries: Sequence[str], *, k: int, min_similarity: float = -1.0
    ) -> _Hits:
        """The `k` best modules of `snapshot` per query, as `Snapshot.search` gives them."""
        if self._batched is None:
            return await snapshot.search(queries, k=k, min_similarity=min_similarity)
        if not queries:
            return []
        if len(snapshot) == 0:
            return [[] for _ in queries]
        request = _Request(tuple(queries), k, min_similarity, len(snapshot))
        return (await self._batched(request)).hits

    async def search_ahead(
        self,
        snapshot: Snapshot,
        queries: Sequence[str],
        ahead: F32,
        *,
        k: int,
        min_similarity: float = -1.0,
    ) -> tuple[_Hits, list[float]]:
        """`search`, and per query the best cosine to the modules whose vectors are `ahead`.

        Only when `can_search_ahead`.
        """
        assert self._batched is not None
        if not queries:
            return [], []
        request = _Request(tuple(queries), k, min_similarity, len(snapshot), ahead)
        found = await self._batched(request)
        assert found.best_ahead is not None
        return found.hits, found.best_ahead


def unchanged_by(row: list[SearchHit], best_ahead: float, k: int, min_similarity: float) -> bool:
    """Whether modules added later, none scoring above `best_ahead`, leave `row` as it is.

    `row` is one query's top `k` with cosine >= `min_similarity`. A later module enters it
    only by scoring at least the k-th hit (ties go to the older module) or, with fewer hits,
    at least `min_similarity`; `SCORE_MARGIN` covers the f16 rounding of stored vectors.
    """
    floor = row[-1].score if len(row) >= k else min_similarity
    return best_ahead < floor - SCORE_MARGIN


def _search(db: ModuleDB, requests: list[_Request]) -> list[_Found]:
    """Every request's hits (on a worker thread); see the module docstring."""
    vectors = _embed(db, requests)
    # A speculative proof needs exact scores: should a merge have changed the index
    # meanwhile (an exact index outgrown), the modules ahead score +inf (nothing proven).
    exact = _scans_each_query_alone(db.store)
    # Only a speculative search may see an empty snapshot (its hits are then empty).
    scanned = [i for i, r in enumerate(requests) if r.limit > 0]
    hits: list[_Hits] = [[[] for _ in r.texts] for r in requests]
    if scanned:
        found = _scan(db.store, [requests[i] for i in scanned], [vectors[i] for i in scanned])
        for i, row in zip(scanned, found, strict=True):
            hits[i] = row
    exact = exact and _scans_each_query_alone(db.store)
    return [
        _Found(
            h,
            None
            if r.ahead is None
            else _best_ahead(v, r.ahead)
            if exact
            else [float("inf")] * len(r.texts),
        )
        for r, v, h in zip(requests, vectors, hits, strict=True)
    ]


def _embed(db: ModuleDB, requests: list[_Request]) -> list[F32]:
    """Each request's query vectors: one embedding call when the embedder embeds each
    text on its own (the hash embedder), else one per request."""
    if isinstance(db.embedder, HashEmbedder):
        texts = [text for r in requests for text in r.texts]
        everything = db.embedder.embed_sync(texts)
        bounds = np.cumsum([len(r.texts) for r in requests])[:-1]
        return np.split(everything, bounds)
    return [db.embedder.embed_sync(list(r.texts)) for r in requests]


def _best_ahead(queries: F32, ahead: F32) -> list[float]:
    """Per query, its best cosine to the `ahead` vectors (-inf when there are none)."""
    if len(ahead) == 0:
        return [float("-inf")] * len(queries)
    # einsum, not `@`: a BLAS call this small would wake OpenBLAS's threads for nothing.
    scores = np.einsum("qd,md->qm", queries, ahead)
    return [float(x) for x in scores.max(axis=1)]


def _scan(store: ModuleStore, requests: list[_Request], vectors: list[F32]) -> list[_Hits]:
    """The hits of requests over non-empty snapshots."""
    if not _scans_each_query_alone(store):
        return [
            store.search(v, k=r.k, min_similarity=r.min_similarity, limit=r.limit)
            for r, v in zip(requests, vectors, strict=True)
        ]
    # One scan per ranking (in a window all requests share the snapshot; k differs between
    # retrieval and the novelty check).
    groups: dict[tuple[int, float, int], list[int]] = {}
    for i, r in enumerate(requests):
        groups.setdefault((r.k, r.min_similarity, r.limit), []).append(i)
    out: list[_Hits] = [[] for _ in requests]
    for (k, min_similarity, limit), members in groups.items():
        stacked = np.concatenate([vectors[i] for i in members])
        found = store.search(stacked, k=k, min_similarity=min_similarity, limit=limit)
        start = 0
        for i in members:
            end = start + len(requests[i].texts)
            out[i] = found[start:end]
            start = end
    return out


def _scans_each_query_alone(store: ModuleStore) -> bool:
    """Whether a query's hits do not depend on the other queries scanned with it."""
    return store.index.kind == "exact" and store.vector_dtype == "f16"
