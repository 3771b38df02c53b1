"""kill -9 during `add_many` leaves metadata and vectors consistent after reopen.

A child process fills a DB, then freezes at a chosen point of a second `add_many`
(after the vector rows are written but before the metadata commits, with a torn partial row
at the end of the file; or after the commit but before the index is updated) and is killed
with SIGKILL there. The parent reopens the DB and checks what survived.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from amr_async.moduledb import HashEmbedder, ModuleStore, StoreConfig
from amr_async.moduledb._index import IvfIndex
from tests.moduledb_helpers import function_source

CHILD = textwrap.dedent(
    """
    import asyncio, sys, time
    from pathlib import Path
    from amr_async.moduledb import HashEmbedder, ModuleDB, StoreConfig
    from amr_async.moduledb import _index, _vectors
    from tests.moduledb_helpers import modules

    path, point, index = sys.argv[1], sys.argv[2], sys.argv[3]
    _index.IVF_MIN_TRAIN = 50  # IVF trained from the first batch on (default: 10,000)

    def freeze(label):
        print(label, flush=True)
        time.sleep(120)  # the parent kills us here

    if point == "after-vectors":
        original = _vectors.VectorFile.append
        calls = [0]
        def append(self, vectors, *, at_row, durable):
            original(self, vectors, at_row=at_row, durable=durable)
            calls[0] += 1
            if calls[0] == 2:
                with open(self.path, "ab") as f:
                    f.write(b"\\x01" * 7)  # a torn row, as if killed mid-write
                freeze("frozen")
        _vectors.VectorFile.append = append
    else:
        cls = _index.IvfIndex if index == "ivf" else _index.HnswIndex
        original_add = cls.add
        calls = [0]
        def add(self, vectors, start_id):
            calls[0] += 1
            if calls[0] == 2:
                freeze("frozen")
            original_add(self, vectors, start_id)
        cls.add = add

    async def main():
        db = await ModuleDB.open(path, HashEmbedder(384), config=StoreConfig(index=index))
        first = await db.add_many(modules(0, 120))
        assert len(first.added) == 120, first
        await asyncio.to_thread(db.store.checkpoint)  # an index file behind the next batch
        print("committed", flush=True)
        await db.add_many(modules(120, 80))
        print("not reached", flush=True)

    asyncio.run(main())
    """
)


@pytest.mark.parametrize(
    ("point", "index", "survivors"),
    [
        ("after-vectors", "exact", 120),
        ("after-vectors", "hnsw", 120),
        ("after-commit", "hnsw", 200),
        ("after-vectors", "ivf", 120),
        ("after-commit", "ivf", 200),
    ],
)
def test_kill9_during_add_many_leaves_db_consistent(
    tmp_path: Path, point: str, index: str, survivors: int
) -> None:
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": str(root)}
    db_path = tmp_path / "db"
    with subprocess.Popen(
        [sys.executable, str(script), str(db_path), point, index],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=root,
    ) as child:
        assert child.stdout is not None
        assert child.stderr is not None
        lines = []
        for line in child.stdout:
            lines.append(line.strip())
            if line.strip() == "frozen":
                break
        if lines != ["committed", "frozen"]:
            child.kill()
            pytest.fail(f"child did not reach the freeze point: {lines} {child.stderr.read()}")
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL

    store = ModuleStore(db_path, embedder="hash", dim=384, config=StoreConfig(index=index))  # type: ignore[arg-type]
    try:
        assert len(store) == survivors
        assert store.vectors.file_rows() == survivors  # torn tail and orphan rows cut off
        assert len(store.index) == survivors  # index caught up from the vector file
        if index == "ivf":  # its saved lists were loaded (trained), not rebuilt from scratch
            assert isinstance(store.index, IvfIndex)
            assert store.index.nlist == round(4 * 120**0.5)
        ids = [m.id for m in store.iter_modules()]
        assert ids == list(range(survivors))
        # Every surviving module's stored vector is its own (metadata and vectors agree).
        embedder = HashEmbedder(384)
        for i in (0, 57, survivors - 1):
            code = store.fetch([i])[i].code
            assert code == function_source(i)
            (best,) = store.search_vectors(embedder.embed_sync([code]), k=1)
            assert best[0][1] == i
            assert best[0][0] > 0.99
        # The DB keeps working: the lost batch can be added again.
        from amr_async.moduledb._source import describe
        from tests.moduledb_helpers import modules

        missing = modules(survivors, 200 - survivors)
        infos = [describe(m.code) for m in missing]
        store.add(missing, infos, embedder.embed_sync([m.code for m in missing]))
        assert len(store) == 200
        hit = store.search_vectors(embedder.embed_sync([function_source(150)]), k=1)
        assert hit[0][0][1] == 150
    finally:
        store.close()
