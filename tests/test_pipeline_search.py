"""`SnapshotSearcher`: batched snapshot searches give `Snapshot.search`'s hits, bit for bit."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import pytest

from amr_async.moduledb import Embedder, HashEmbedder, ModuleDB, SearchHit, Snapshot, StoreConfig
from amr_async.pipeline.strategies._search import SnapshotSearcher
from tests.moduledb_helpers import function_source, modules


def _plain(rows: list[list[SearchHit]]) -> list[list[tuple[int, float]]]:
    return [[(h.module.id, h.score) for h in row] for row in rows]


def _queries(seed: int) -> list[str]:
    rng = random.Random(seed)
    # Stored functions (exact hits), unseen ones, and stub-like texts: 1-4 per item.
    pool = [function_source(rng.randrange(0, 200)) for _ in range(4)]
    pool.append(function_source(1000 + seed).split("\n")[0] + "\n    ...\n")
    return rng.sample(pool, rng.randint(1, 4))


async def _check_same(db: ModuleDB, snapshot: Snapshot, *, batched: bool) -> None:
    searcher = SnapshotSearcher(db)
    # Retrieval-like (k 2, a floor) and novelty-like (k 1) requests, all in flight at once.
    asks = [(_queries(i), 1 if i % 2 else 2, -1.0 if i % 3 else 0.2) for i in range(40)]
    got = await asyncio.gather(
        *(searcher.search(snapshot, q, k=k, min_similarity=m) for q, k, m in asks)
    )
    want = [await snapshot.search(q, k=k, min_similarity=m) for q, k, m in asks]
    assert [_plain(g) for g in got] == [_plain(w) for w in want]
    assert any(row for g in got for row in g)  # not all empty
    if batched:
        # The first request ran alone, the other 39 waited for it and went together.
        assert 1 < searcher.batches < len(asks)


@pytest.mark.parametrize("dtype", ["f16", "int8"])
async def test_batched_hits_equal_snapshot_search(tmp_path: Path, dtype: str) -> None:
    config = StoreConfig(vector_dtype=dtype)  # type: ignore[arg-type]
    async with await ModuleDB.open(tmp_path / "db", HashEmbedder(), config=config) as db:
        await db.add_many(modules(0, 150))
        snapshot = db.snapshot()
        await db.add_many(modules(150, 50))  # after the snapshot: must stay unseen
        assert len(snapshot) < len(db)
        await _check_same(db, snapshot, batched=True)


async def test_empty_snapshot_and_no_queries(tmp_path: Path) -> None:
    async with await ModuleDB.open(tmp_path / "db", HashEmbedder()) as db:
        searcher = SnapshotSearcher(db)
        empty = db.snapshot()
        await db.add_many(modules(0, 5))
        assert await searcher.search(empty, ["def f(): ..."], k=1) == [[]]
        assert await searcher.search(db.snapshot(), [], k=1) == []
        assert searcher.batches == 0


class _AsyncOnly(HashEmbedder):
    """An embedder without `embed_sync` (as `openai`): searches are not batched."""

    embed_sync = Embedder.embed_sync  # the base's: raises

    async def embed(self, texts: object) -> object:  # type: ignore[override]
        return HashEmbedder().embed_sync(list(texts))  # type: ignore[call-overload]


async def test_async_only_embedder_is_not_batched(tmp_path: Path) -> None:
    async with await ModuleDB.open(tmp_path / "db", _AsyncOnly()) as db:
        await db.add_many(modules(0, 30))
        await _check_same(db, db.snapshot(), batched=False)
        assert SnapshotSearcher(db).batches == 0
