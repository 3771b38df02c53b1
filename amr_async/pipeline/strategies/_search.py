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
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial

import numpy as np

from amr_async.moduledb import Embedder, HashEmbedder, ModuleDB, ModuleStore, SearchHit, Snapshot
from amr_async.pipeline.strategies._common import Coalescer

_Hits = list[list[SearchHit]]


@dataclass(frozen=True, slots=True)
class _Request:
    """One item's search: its query texts, the ranking, and its snapshot's module count."""

    texts: tuple[str, ...]
    k: int
    min_similarity: float
    limit: int


class SnapshotSearcher:
    """`Snapshot.search` for the items of one strategy, batched across the items in flight.

    Shared by the tasks of one event loop.

    Args:
        db: the module database whose snapshots are searched.
    """

    __slots__ = ("_batched",)

    def __init__(self, db: ModuleDB) -> None:
        sync = type(db.embedder).embed_sync is not Embedder.embed_sync
        self._batched = Coalescer(partial(_search, db)) if sync else None

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
        return await self._batched(_Request(tuple(queries), k, min_similarity, len(snapshot)))


def _search(db: ModuleDB, requests: list[_Request]) -> list[_Hits]:
    """Every request's hits (on a worker thread); see the module docstring."""
    store = db.store
    if isinstance(db.embedder, HashEmbedder):
        texts = [text for r in requests for text in r.texts]
        everything = db.embedder.embed_sync(texts)
        bounds = np.cumsum([len(r.texts) for r in requests])[:-1]
        vectors = np.split(everything, bounds)
    else:
        vectors = [db.embedder.embed_sync(list(r.texts)) for r in requests]
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
