"""The IVF index: the Rust row-subset and code kernels, agreement with exact search, training
and retraining, 1-bit codes and their re-rank, snapshots, reopen from its saved file and crash
leftovers, empty DBs, dimensions."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from amr_async import _core
from amr_async.moduledb import DimensionMismatch, Module, ModuleStore, StoreConfig, _index
from amr_async.moduledb._db import NEAR_DUPLICATE_NPROBE
from amr_async.moduledb._index import IvfIndex
from amr_async.moduledb._source import FunctionInfo

F32 = npt.NDArray[np.float32]


def unit(n: int, dim: int, seed: int) -> F32:
    rng = np.random.default_rng(seed)
    v = rng.standard_normal((n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def add_synthetic(store: ModuleStore, vecs: F32, offset: int = 0, batch: int = 500) -> None:
    """Store vectors with minimal metadata (no parsing), in batches."""
    for start in range(0, len(vecs), batch):
        chunk = range(offset + start, offset + min(start + batch, len(vecs)))
        mods = [Module(f"def f{i}():\n    return {i}\n") for i in chunk]
        infos = [FunctionInfo(f"f{i}", f"def f{i}():", "", f"{i:032x}", 6) for i in chunk]
        store.add(mods, infos, vecs[start : start + len(mods)])


@pytest.fixture
def small_train(monkeypatch: pytest.MonkeyPatch) -> None:
    """Train IVF from 500 vectors on (the default waits for 10,000)."""
    monkeypatch.setattr(_index, "IVF_MIN_TRAIN", 500)


# -- the Rust kernel ------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["f32", "f16", "int8"])
def test_topk_rows_equals_topk_over_a_gathered_copy(dtype: str) -> None:
    vecs = unit(5000, 40, 0)
    queries = unit(3, 40, 1)
    matrix: npt.NDArray[np.generic] = vecs
    scales = None
    if dtype == "f16":
        matrix = vecs.astype(np.float16)
    elif dtype == "int8":
        scales = (np.abs(vecs).max(axis=1) / 127).astype(np.float32)
        matrix = np.rint(vecs / scales[:, None]).astype(np.int8)
    rng = np.random.default_rng(2)
    subsets = [np.sort(rng.choice(5000, size, replace=False)) for size in (3000, 40, 3)]
    rows = np.concatenate(subsets).astype(np.int64)
    offsets = np.array([0, 3000, 3040, 3043], np.int64)
    scores, ids = _core.topk_rows(queries, matrix, 10, rows, offsets, scales)
    assert scores.shape == ids.shape == (3, 10)
    for j, subset in enumerate(subsets):
        sub_scales = None if scales is None else np.ascontiguousarray(scales[subset])
        want_s, want_i = _core.topk(queries[j : j + 1], matrix[subset], 10, sub_scales)
        n = want_i.shape[1]
        assert ids[j, :n].tolist() == subset[want_i[0]].tolist()
        assert scores[j, :n].tolist() == want_s[0].tolist()
        assert ids[j, n:].tolist() == [-1] * (10 - n)  # a 3-row subset is padded
        assert np.all(np.isneginf(scores[j, n:]))


def test_topk_rows_refuses_bad_input_by_name() -> None:
    m = unit(10, 8, 0)
    q = unit(1, 8, 1)
    with pytest.raises(ValueError, match="row id 10 out of range"):
        _core.topk_rows(q, m, 3, np.array([1, 10], np.int64), np.array([0, 2], np.int64))
    with pytest.raises(ValueError, match="offsets"):
        _core.topk_rows(q, m, 3, np.array([1, 2], np.int64), np.array([0, 1], np.int64))
    with pytest.raises(ValueError, match="offsets: must not be negative"):
        _core.topk_rows(q, m, 3, np.array([1], np.int64), np.array([-1, 1], np.int64))
    with pytest.raises(ValueError, match="dimension mismatch"):
        _core.topk_rows(unit(1, 4, 0), m, 3, np.array([1], np.int64), np.array([0, 1], np.int64))
    with pytest.raises(ValueError, match="scales"):
        _core.topk_rows(
            q, m.astype(np.int8), 3, np.array([1], np.int64), np.array([0, 1], np.int64)
        )
    s, i = _core.topk_rows(q, m, 3, np.zeros(0, np.int64), np.array([0, 0], np.int64))
    assert s.shape == i.shape == (1, 0)


# -- the index in the store -----------------------------------------------------------------


@pytest.mark.usefixtures("small_train")
@pytest.mark.parametrize("dtype", ["f16", "int8"])
def test_probing_every_list_equals_the_exact_scan(tmp_path: Path, dtype: str) -> None:
    vecs = unit(3000, 32, 3)
    queries = unit(30, 32, 4)
    exact = ModuleStore(
        tmp_path / "exact",
        embedder="synthetic",
        dim=32,
        config=StoreConfig(index="exact", vector_dtype=dtype),  # type: ignore[arg-type]
    )
    add_synthetic(exact, vecs)
    config = StoreConfig(index="ivf", vector_dtype=dtype, nprobe=100_000)  # type: ignore[arg-type]
    ivf = ModuleStore(tmp_path / "ivf", embedder="synthetic", dim=32, config=config)
    add_synthetic(ivf, vecs)
    assert isinstance(ivf.index, IvfIndex)
    assert ivf.index.nlist > 1
    assert len(ivf.index) == 3000
    # Same ids in the same order; scores equal up to float rounding (a batch of int8 queries
    # is scored on decoded blocks, summed in another order).
    got, want = ivf.search_vectors(queries, k=10), exact.search_vectors(queries, k=10)
    assert [[i for _, i in row] for row in got] == [[i for _, i in row] for row in want]
    assert np.allclose([s for row in got for s, _ in row], [s for row in want for s, _ in row])
    # k above the size: every row, once (order may differ only within rounding ties).
    got = ivf.search_vectors(queries, k=5000)
    assert all(sorted(i for _, i in row) == list(range(3000)) for row in got)
    # One query at a time takes the same arithmetic as the exact scan: equal to the bit.
    for q in queries[:5]:
        assert ivf.search_vectors(q[None, :], k=10) == exact.search_vectors(q[None, :], k=10)
    assert ivf.stats().index == "ivf"
    exact.close()
    ivf.close()


@pytest.mark.usefixtures("small_train")
def test_fewer_probes_scan_fewer_rows_with_exact_scores(tmp_path: Path) -> None:
    vecs = unit(4000, 32, 5)
    store = ModuleStore(
        tmp_path / "db", embedder="synthetic", dim=32, config=StoreConfig(index="ivf", nprobe=4)
    )
    add_synthetic(store, vecs)
    assert isinstance(store.index, IvfIndex)
    # A stored vector is found first (its own list is the nearest), scored by the file.
    got = store.search_vectors(vecs[:50], k=3)
    assert [row[0][1] for row in got] == list(range(50))
    assert all(abs(row[0][0] - 1.0) < 1e-2 for row in got)
    # With 4 of ~250 lists the scan sees a small part of the DB: results are a subset of
    # the exact ones' neighbourhood, never rows outside the probed lists.
    scores, ids = store.index.search(vecs[:1], 4000, store.view())
    probed = ids[0][ids[0] >= 0]
    assert 0 < len(probed) < 4000 // 5
    assert np.all(np.diff(scores[0][: len(probed)]) <= 0)
    store.close()


@pytest.mark.usefixtures("small_train")
def test_near_duplicate_checks_probe_few_lists_and_still_find_the_original(
    tmp_path: Path,
) -> None:
    vecs = unit(4000, 32, 7)
    store = ModuleStore(
        tmp_path / "db", embedder="synthetic", dim=32, config=StoreConfig(index="ivf")
    )
    add_synthetic(store, vecs)
    assert isinstance(store.index, IvfIndex)
    assert store.index.nlist > NEAR_DUPLICATE_NPROBE
    # Copies at cosine 0.98 of stored vectors: the few nearest lists hold the original.
    rng = np.random.default_rng(8)
    picks = rng.choice(4000, 50, replace=False)
    base = vecs[picks]
    noise = rng.standard_normal(base.shape).astype(np.float32)
    noise -= (noise * base).sum(axis=1, keepdims=True) * base
    noise /= np.linalg.norm(noise, axis=1, keepdims=True)
    copies = 0.98 * base + np.sqrt(1 - 0.98**2) * noise
    got = store.search_vectors(copies, k=1, min_similarity=0.97, nprobe=NEAR_DUPLICATE_NPROBE)
    assert [row[0][1] if row else None for row in got] == [int(p) for p in picks]
    # The per-call nprobe is what limits the scan (the store's own default is far larger).
    view = store.view()
    few = store.index.search(vecs[:1], 4000, view, NEAR_DUPLICATE_NPROBE)[1][0]
    default = store.index.search(vecs[:1], 4000, view)[1][0]
    assert 0 < (few >= 0).sum() < (default >= 0).sum()
    store.close()


@pytest.mark.usefixtures("small_train")
def test_training_waits_for_enough_rows_then_retrains_on_growth(tmp_path: Path) -> None:
    vecs = unit(3200, 16, 6)
    store = ModuleStore(
        tmp_path / "db", embedder="synthetic", dim=16, config=StoreConfig(index="ivf")
    )
    index = store.index
    assert isinstance(index, IvfIndex)
    add_synthetic(store, vecs[:400], batch=400)
    assert index.nlist == 0  # below the training size: exact scans
    assert store.search_vectors(vecs[7:8], k=1)[0][0][1] == 7
    add_synthetic(store, vecs[400:600], offset=400, batch=200)
    assert index.nlist == round(4 * 600**0.5)
    # 4 x 600 reached: a retraining on rows < 2,400 starts, and takes effect at 3,000 rows.
    add_synthetic(store, vecs[600:2700], offset=600, batch=300)
    assert index._pending is not None
    assert index._pending.n == 2400
    assert index.nlist == round(4 * 600**0.5)
    add_synthetic(store, vecs[2700:], offset=2700, batch=300)
    assert index._pending is None
    assert index.nlist == round(4 * 2400**0.5)
    assert index._trained_at == 2400  # the next retraining starts at 9,600
    assert len(index) == 3200
    # Every row sits in the list of its nearest centroid, each row once: the retraining
    # assigns the stored (f16) rows up to the swap, later appends the vectors as given.
    centroids = index._centroids
    assert centroids is not None
    rows = np.concatenate([store.view().block_f32(0, 3000), vecs[3000:]])
    assert np.array_equal(index._labels[:3200], np.argmax(rows @ centroids.T, axis=1))
    lists = index._lists
    assert lists is not None
    all_ids = np.sort(lists.gather(np.arange(index.nlist)))
    assert np.array_equal(all_ids, np.arange(3200))
    # Each row's code survived the retraining's regrouping and the appends' list moves.
    codes, factors = lists.row_order(3200)
    # Rows keep the code they got when indexed: appended rows from the vectors as given,
    # rows first seen by the first training from the stored (f16) rows.
    given, given_f = _index.encode(vecs, index._rotation)
    stored, stored_f = _index.encode(rows, index._rotation)
    assert np.all(codes[600:] == given[600:])
    assert np.all(codes[:600] == stored[:600])
    assert np.allclose(factors[600:], given_f[600:], rtol=1e-5)
    assert np.allclose(factors[:600], stored_f[:600], rtol=1e-5)
    store.close()


@pytest.mark.usefixtures("small_train")
def test_a_snapshot_sees_only_rows_below_its_limit(tmp_path: Path) -> None:
    vecs = unit(3000, 24, 7)
    store = ModuleStore(
        tmp_path / "db",
        embedder="synthetic",
        dim=24,
        config=StoreConfig(index="ivf", nprobe=100_000),
    )
    add_synthetic(store, vecs)
    queries = vecs[2500:2510]  # rows the snapshot must not see
    got = store.search_vectors(queries, k=10, limit=2000)
    # A filter takes the exact scan of the allowed rows: the reference on the same vectors.
    truth = store.search_vectors(queries, k=10, limit=2000, filters={"verdict": "unverified"})
    assert all(i < 2000 for row in got for _, i in row)
    assert [[i for _, i in row] for row in got] == [[i for _, i in row] for row in truth]
    store.close()


@pytest.mark.usefixtures("small_train")
def test_reopen_loads_the_lists_and_drops_rows_beyond_the_metadata(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    vecs = unit(2000, 32, 8)
    config = StoreConfig(index="ivf", nprobe=8)
    store = ModuleStore(tmp_path / "db", embedder="synthetic", dim=32, config=config)
    add_synthetic(store, vecs)
    before = store.search_vectors(vecs[:20], k=5)
    store.close()
    saved = tmp_path / "db" / "index.ivf"
    assert saved.stat().st_size > 2000 * 4  # one int32 list number per row, + centroids

    def no_training(*args: object, **kwargs: object) -> None:
        raise AssertionError("reopen retrained instead of loading the saved lists")

    monkeypatch.setattr(IvfIndex, "_train", no_training)
    again = ModuleStore(tmp_path / "db", embedder="synthetic", dim=32, config=config)
    assert len(again.index) == 2000
    assert again.search_vectors(vecs[:20], k=5) == before
    again.close()
    # As after a crash: the saved index holds rows whose metadata is gone (the store cuts
    # the vector file back to the metadata on open); the extra list entries are dropped.
    with sqlite3.connect(tmp_path / "db" / "modules.sqlite") as db:
        db.execute("DELETE FROM modules WHERE id >= 1500")
    cut = ModuleStore(tmp_path / "db", embedder="synthetic", dim=32, config=config)
    assert len(cut) == 1500
    assert len(cut.index) == 1500
    found = cut.search_vectors(vecs[1400:1600], k=3)
    assert all(i < 1500 for row in found for _, i in row)
    assert [row[0][1] for row in found[:100]] == list(range(1400, 1500))
    # The lost rows can be added again and are indexed.
    monkeypatch.undo()
    add_synthetic(cut, vecs[1500:], offset=1500)
    assert [row[0][1] for row in cut.search_vectors(vecs[1990:2000], k=1)] == list(
        range(1990, 2000)
    )
    cut.close()


@pytest.mark.usefixtures("small_train")
def test_a_damaged_or_foreign_index_file_is_rebuilt(tmp_path: Path) -> None:
    vecs = unit(1000, 32, 9)
    config = StoreConfig(index="ivf", nprobe=100_000)
    store = ModuleStore(tmp_path / "db", embedder="synthetic", dim=32, config=config)
    add_synthetic(store, vecs)
    want = store.search_vectors(vecs[:5], k=5)
    store.close()
    saved = tmp_path / "db" / "index.ivf"
    for damage in (b"not a numpy file", None):
        if damage is None:  # a well-formed file of another dimension
            with saved.open("wb") as f:
                np.savez(
                    f,
                    format=np.int64(1),
                    centroids=unit(5, 8, 0),
                    labels=np.zeros(1000, np.int32),
                    trained_at=np.int64(1000),
                )
        else:
            saved.write_bytes(damage)
        again = ModuleStore(tmp_path / "db", embedder="synthetic", dim=32, config=config)
        assert len(again.index) == 1000
        assert again.search_vectors(vecs[:5], k=5) == want
        again.close()


def test_empty_and_wrong_dimension(tmp_path: Path) -> None:
    store = ModuleStore(
        tmp_path / "db", embedder="synthetic", dim=16, config=StoreConfig(index="ivf")
    )
    assert store.search_vectors(unit(2, 16, 0), k=5) == [[], []]
    with pytest.raises(DimensionMismatch):
        store.search_vectors(unit(1, 8, 0), k=5)
    with pytest.raises(DimensionMismatch):
        add_synthetic(store, unit(3, 8, 0))
    with pytest.raises(ValueError, match="nprobe"):
        ModuleStore(tmp_path / "bad", embedder="synthetic", dim=16, config=StoreConfig(nprobe=0))
    store.close()
    again = ModuleStore(tmp_path / "db", embedder="synthetic", dim=16)
    assert again.index.kind == "ivf"
    assert len(again) == 0
    assert again.search_vectors(unit(1, 16, 0), k=1) == [[]]
    again.close()


@pytest.mark.usefixtures("small_train")
def test_writers_and_readers_go_on_while_the_index_retrains(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    vecs = unit(3000, 16, 10)
    store = ModuleStore(
        tmp_path / "db", embedder="synthetic", dim=16, config=StoreConfig(index="ivf")
    )
    add_synthetic(store, vecs[:600], batch=600)  # trained at 600
    index = store.index
    assert isinstance(index, IvfIndex)
    old_nlist = index.nlist
    original = _index.train_centroids
    release = threading.Event()
    started = threading.Event()

    def blocked_training(*args: object, **kwargs: object) -> F32:
        started.set()
        assert release.wait(timeout=60), "the test never released the training"
        return original(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(_index, "train_centroids", blocked_training)
    add_synthetic(store, vecs[600:2400], offset=600, batch=1800)  # 4 x 600: retraining starts
    assert started.wait(timeout=60)
    # The training cannot finish, yet writers add rows (up to the swap point, 3,000) and
    # readers get answers from the old lists, which hold the new rows too.
    add_synthetic(store, vecs[2400:2999], offset=2400, batch=200)
    assert index.nlist == old_nlist
    found = store.search_vectors(vecs[[0, 1, 2, 2998]], k=1)
    assert [row[0][1] for row in found] == [0, 1, 2, 2998]
    release.set()
    add_synthetic(store, vecs[2999:], offset=2999)  # the swap point: waits, then swaps
    assert index.nlist == round(4 * 2400**0.5) != old_nlist
    assert [row[0][1] for row in store.search_vectors(vecs[:3], k=1)] == [0, 1, 2]
    store.close()


def _grow(
    path: Path, vecs: F32, batches: list[int], *, slow: bool, reopen_at: int | None = None
) -> tuple[list[list[tuple[float, int]]], dict[str, npt.NDArray[np.generic]]]:
    """Add `vecs` in the given batch sizes with a slow or a fast trainer (optionally closing
    and reopening the store at row `reopen_at`); the search results and the saved index."""
    config = StoreConfig(index="ivf", nprobe=3, rerank=20)
    store = ModuleStore(path, embedder="synthetic", dim=16, config=config)
    at = 0
    found: list[list[tuple[float, int]]] = []
    for size in batches:
        add_synthetic(store, vecs[at : at + size], offset=at, batch=size)
        at += size
        found += store.search_vectors(vecs[::37], k=10)  # also while the retraining runs
        index = store.index
        assert isinstance(index, IvfIndex)
        pending = index._pending
        while pending is not None and not slow and pending.thread.is_alive():
            # The fast trainer: as far as the rows allow before the next add.
            with pending.cond:
                if pending.waiting:
                    break
            threading.Event().wait(0.001)
        if at == reopen_at:
            store.close()
            store = ModuleStore(path, embedder="synthetic", dim=16, config=config)
    store.close()
    with np.load(path / "index.ivf") as f:
        saved = {name: f[name] for name in f.files}
    return found, saved


@pytest.mark.usefixtures("small_train")
def test_retraining_gives_the_same_index_whatever_the_trainers_speed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_index, "_TRAIN_BLOCK", 256)  # blocks beyond 2,400 wait for rows
    vecs = unit(3400, 16, 11)
    batches = [600, 1000, 800, 300, 250, 200, 250]  # retraining from 2,400, swap at 3,000
    fast = _grow(tmp_path / "fast", vecs, batches, slow=False)
    original = _index.train_centroids

    def slow_training(*args: object, **kwargs: object) -> F32:
        # Finishes only once the writer has reached the swap point (and waits for it).
        stop = kwargs.get("stop")
        index = _index_of[0]
        background = index._pending is not None  # not the first, synchronous training
        while (
            background
            and len(index) < 3000
            and not (isinstance(stop, threading.Event) and stop.is_set())
        ):
            threading.Event().wait(0.001)
        return original(*args, **kwargs)  # type: ignore[arg-type]

    _index_of: list[IvfIndex] = []
    real_init = IvfIndex.__init__

    def remember(self: IvfIndex, *args: object, **kwargs: object) -> None:
        real_init(self, *args, **kwargs)  # type: ignore[arg-type]
        _index_of[:] = [self]

    monkeypatch.setattr(IvfIndex, "__init__", remember)
    monkeypatch.setattr(_index, "train_centroids", slow_training)
    slow = _grow(tmp_path / "slow", vecs, batches, slow=True)
    monkeypatch.setattr(IvfIndex, "__init__", real_init)
    monkeypatch.setattr(_index, "train_centroids", original)
    # Closed while the retraining runs (its work lost), reopened: it starts again on the
    # same rows, with the same seed.
    reopened = _grow(tmp_path / "reopened", vecs, batches, slow=False, reopen_at=2700)
    for other in (slow, reopened):
        assert other[0] == fast[0]
        assert other[1].keys() == fast[1].keys()
        for name, array in fast[1].items():
            assert np.array_equal(other[1][name], array), name
    assert int(fast[1]["trained_at"]) == 2400


# -- 1-bit codes ----------------------------------------------------------------------------


def test_code_estimate_is_unbiased_and_within_the_rabitq_bound() -> None:
    dim = 384
    vecs = unit(2000, dim, 20)
    queries = unit(20, dim, 21)
    queries[:10] = 0.7 * vecs[:10] + 0.3 * queries[:10]  # some near pairs too
    rotation = _index.random_rotation(dim)
    assert np.allclose(rotation @ rotation.T, np.eye(dim), atol=1e-4)
    codes, factors = _index.encode(vecs, rotation)
    signs = np.unpackbits(codes.view(np.uint8), axis=1, bitorder="little")[:, :dim] * 2.0 - 1.0
    assert np.array_equal(signs > 0, vecs @ rotation.T > 0)
    assert np.allclose(factors[:, 1], factors[:, 0] * (signs > 0).sum(axis=1), rtol=1e-6)
    est = factors[:, :1] * (signs @ (queries @ rotation.T).T)
    err = est - vecs @ queries.T
    # o = <sign(Px)/sqrt(D), Px>; RaBitQ: |error| <= sqrt(1-o²)/o · eps/sqrt(D-1) · |q| with
    # probability ~95 % for eps = 1.9 (unit vectors here).
    o = np.abs(vecs @ rotation.T).sum(axis=1) / np.sqrt(dim)
    bound = np.sqrt(1 - o**2) / o * 1.9 / np.sqrt(dim - 1)
    assert np.mean(np.abs(err) <= bound[:, None]) > 0.9
    assert abs(float(err.mean())) < 0.005
    assert float(np.abs(err).max()) < 0.2


def _arena_args(n: int, dim: int, seed: int) -> tuple[F32, npt.NDArray[np.uint64], F32]:
    vecs = unit(n, dim, seed)
    codes, factors = _index.encode(vecs, _index.random_rotation(dim))
    return vecs, codes, factors


def test_code_topk_keeps_the_best_estimates_and_refuses_bad_input() -> None:
    dim = 96  # not a multiple of 64: the padding bits must not count
    _vecs, codes, factors = _arena_args(3000, dim, 22)
    rotation = _index.random_rotation(dim)
    ids = np.arange(3000, dtype=np.int64)[::-1].copy()
    q = unit(2, dim, 23)
    spans = np.array([[0, 1000], [1000, 2000], [10, 20]], np.int64)
    bounds = np.array([0, 2, 3], np.int64)
    got = _core.code_topk(q @ rotation.T, codes, factors, ids, spans, bounds, 50, 8)
    assert got.shape == (2, 50)
    # With an 8-bit query the ranking follows the float estimate f · <sign(Px), Pq>.
    signs = np.unpackbits(codes.view(np.uint8), axis=1, bitorder="little")[:, :dim] * 2.0 - 1.0
    est = factors[:, 0] * (signs @ (rotation @ q[0]))
    best = ids[np.argsort(-est)[:40]]
    assert len(set(best.tolist()) & set(got[0].tolist())) >= 38
    assert set(got[1][:20].tolist()) == set(ids[10:30].tolist())
    assert got[1][20:].tolist() == [-1] * 30  # padded
    limited = _core.code_topk(q @ rotation.T, codes, factors, ids, spans, bounds, 50, 4, 100)
    assert all(0 <= i < 100 for i in limited[0] if i >= 0)
    with pytest.raises(ValueError, match="bits"):
        _core.code_topk(q @ rotation.T, codes, factors, ids, spans, bounds, 5, 9)
    with pytest.raises(ValueError, match="reaches past"):
        _core.code_topk(q @ rotation.T, codes, factors, ids, spans + 2000, bounds, 5)
    with pytest.raises(ValueError, match="bounds"):
        _core.code_topk(q @ rotation.T, codes, factors, ids, spans, bounds[:2], 5)
    with pytest.raises(ValueError, match="codes must be"):
        _core.code_topk(unit(2, 200, 0), codes, factors, ids, spans, bounds, 5)


def _blocked(
    codes: npt.NDArray[np.uint64], slots: npt.NDArray[np.int64], cap: int
) -> npt.NDArray[np.uint8]:
    """The FastScan layout of `codes` at `slots` in an arena of `cap` slots."""
    blocks = np.zeros((-(-cap // 32), 256 * codes.shape[1]), np.uint8)
    _core.fastscan_pack(blocks, slots, codes)
    return blocks


@pytest.mark.parametrize("dim", [384, 96, 1536])
def test_fastscan_ranks_exactly_as_the_row_major_scan(dim: int) -> None:
    # Lists of odd sizes (not multiples of 32, empty, one row) on 32-aligned starts, spread
    # in an arena with gaps; the same codes row-major at the same slots.
    sizes = [33, 0, 1, 31, 32, 700, 5, 64, 97]
    starts = np.cumsum([0, *[-(-(s + 7) // 32) * 32 for s in sizes[:-1]]])
    cap = int(starts[-1]) + sizes[-1] + 40
    _vecs, codes, factors = _arena_args(cap, dim, 30)
    ids = np.random.default_rng(31).permutation(cap).astype(np.int64)
    blocks = _blocked(codes, np.arange(cap, dtype=np.int64), cap)
    assert np.array_equal(_core.fastscan_unpack(blocks, np.arange(cap, dtype=np.int64)), codes)
    spans = np.stack([starts, sizes], axis=1).astype(np.int64)
    queries = unit(3, dim, 32) @ _index.random_rotation(dim).T
    bounds = np.array([0, 3, 5, len(spans)], np.int64)
    for bits in (1, 4, 8):
        for r, limit in ((10, cap), (300, cap), (7, cap // 2)):
            want = _core.code_topk(queries, codes, factors, ids, spans, bounds, r, bits, limit)
            for portable in (False, True):
                got = _core.code_topk_fast(
                    queries, blocks, factors, ids, spans, bounds, r, bits, limit, portable
                )
                assert np.array_equal(got, want), (bits, r, portable)
            assert ((want == -1) | (want < limit)).all()


def test_ivf_probe_picks_the_nearest_centroids() -> None:
    centroids = unit(700, 384, 40)
    queries = unit(5, 384, 41)
    scores = queries.astype(np.float64) @ centroids.T.astype(np.float64)
    for nprobe in (1, 64, 699, 700, 5000):
        got = _core.ivf_probe(queries, centroids, nprobe)
        assert np.array_equal(got, _core.ivf_probe(queries, centroids, nprobe, True))
        want = np.sort(np.argsort(-scores, axis=1, kind="stable")[:, : min(nprobe, 700)], axis=1)
        assert np.array_equal(got, want)
    with pytest.raises(ValueError, match="centroids must be"):
        _core.ivf_probe(queries, unit(10, 100, 0), 3)


def test_compact_probe_picks_the_f32_lists_where_scores_are_apart() -> None:
    rng = np.random.default_rng(42)
    queries = unit(5, 384, 43)
    # Per query, centroids at clearly separated scores (0.01 apart, the int8 error ~1e-3):
    # the compact probe must choose exactly the f32 probe's lists.
    for query in queries:
        steps = rng.permutation(700).astype(np.float32) * 0.01 - 3.5
        noise = 0.02 * (rng.random((700, 384), dtype=np.float32) - 0.5)
        centroids = np.ascontiguousarray(steps[:, None] * query[None] + noise, np.float32)
        codes, scales = _core.ivf_compact(centroids)
        assert codes.dtype == np.int8
        assert codes.shape == (700, 384)
        assert scales.shape == (700,)
        assert np.abs(codes).max() == 127
        err = np.abs(codes * scales[:, None] - centroids)
        assert (err <= scales[:, None] * 0.5001).all()
        for nprobe in (1, 64, 699, 700, 5000):
            got = _core.ivf_probe_compact(query[None], codes, scales, nprobe)
            assert np.array_equal(
                got, _core.ivf_probe_compact(query[None], codes, scales, nprobe, True)
            )
            assert np.array_equal(got, _core.ivf_probe(query[None], centroids, nprobe)), nprobe
    with pytest.raises(ValueError, match="codes must be"):
        _core.ivf_probe_compact(queries, codes[:, :100], scales, 3)


def test_compact_probe_recall_of_the_f32_lists_on_random_centroids() -> None:
    # No gaps by construction: the lists may differ only at the boundary, a few of 64.
    centroids = unit(2000, 384, 44)
    queries = unit(50, 384, 45)
    codes, scales = _core.ivf_compact(centroids)
    got = _core.ivf_probe_compact(queries, codes, scales, 64)
    want = _core.ivf_probe(queries, centroids, 64)
    overlap = np.mean([len(np.intersect1d(g, w)) for g, w in zip(got, want, strict=True)])
    assert overlap >= 60, overlap


def test_fastscan_pack_writes_only_its_slots_and_refuses_bad_input() -> None:
    _vecs, codes, factors = _arena_args(64, 128, 33)
    slots = np.arange(64, dtype=np.int64)
    blocks = _blocked(codes, slots, 64)
    # Rewriting slot 5 leaves slot 21 (its byte-mate: the other nibble) as it was.
    _core.fastscan_pack(blocks, np.array([5], np.int64), codes[40:41])
    again = _core.fastscan_unpack(blocks, slots)
    assert np.array_equal(again[5], codes[40])
    assert np.array_equal(np.delete(again, 5, axis=0), np.delete(codes, 5, axis=0))
    with pytest.raises(ValueError, match="slots must be in"):
        _core.fastscan_pack(blocks, np.array([64], np.int64), codes[:1])
    with pytest.raises(ValueError, match="blocks must be"):
        _core.fastscan_pack(blocks, slots[:1], np.zeros((1, 3), np.uint64))
    ids = np.arange(64, dtype=np.int64)
    q = unit(1, 128, 34)
    with pytest.raises(ValueError, match="multiple of 32"):
        _core.code_topk_fast(q, blocks, factors, ids, np.array([[3, 4]]), np.array([0, 1]), 5)
    with pytest.raises(ValueError, match="reaches past"):
        _core.code_topk_fast(q, blocks, factors, ids, np.array([[32, 40]]), np.array([0, 1]), 5)
    with pytest.raises(ValueError, match="blocks must be"):
        _core.code_topk_fast(
            unit(1, 200, 0), blocks, factors, ids, np.zeros((0, 2), np.int64), np.array([0, 0]), 5
        )


def test_lists_keep_whole_blocks_through_appends_moves_and_rebuilds() -> None:
    rng = np.random.default_rng(35)
    nlist, dim = 7, 64
    _vecs, codes, factors = _arena_args(3000, dim, 36)
    labels = rng.integers(0, nlist, 200).astype(np.int32)
    lists = _index._Lists(labels, nlist, codes[:200], factors[:200])
    done = 200
    for batch in (1, 5, 37, 300, 900, 1557):  # small lists overflow: moves, then rebuilds
        new = rng.integers(0, 3, batch).astype(np.int32)  # lists 0-2 grow, 3-6 do not
        lists.append(
            np.arange(done, done + batch, dtype=np.int64),
            new,
            codes[done : done + batch],
            factors[done : done + batch],
        )
        labels = np.concatenate([labels, new])
        done += batch
        assert (lists.start % 32 == 0).all()
        assert (lists.room % 32 == 0).all()
        got_codes, got_factors = lists.row_order(done)
        assert np.array_equal(got_codes, codes[:done])
        assert np.array_equal(got_factors, factors[:done])
        for c in range(nlist):
            listed = lists.ids[lists.start[c] : lists.start[c] + lists.size[c]]
            assert np.array_equal(listed, np.flatnonzero(labels == c))
    # The scan over the lists' spans equals the row-major scan of the same slots.
    spans = lists.spans(np.arange(nlist))
    q = unit(1, dim, 37)
    bounds = np.array([0, nlist], np.int64)
    slots = lists.live_slots()
    row_major = np.zeros((len(lists.ids), codes.shape[1]), np.uint64)
    row_major[slots] = _core.fastscan_unpack(lists.blocks, slots)
    want = _core.code_topk(q, row_major, lists.factors, lists.ids, spans, bounds, 50)
    got = _core.code_topk_fast(q, lists.blocks, lists.factors, lists.ids, spans, bounds, 50)
    assert np.array_equal(got, want)
    assert set(want[0].tolist()) <= set(range(done))


@pytest.mark.usefixtures("small_train")
def test_the_code_path_agrees_with_the_exact_path(tmp_path: Path) -> None:
    vecs = unit(3000, 32, 24)
    queries = unit(20, 32, 25)
    config = StoreConfig(index="ivf", nprobe=6, rerank=40)
    store = ModuleStore(tmp_path / "db", embedder="synthetic", dim=32, config=config)
    add_synthetic(store, vecs)
    index = store.index
    assert isinstance(index, IvfIndex)
    view = store.view()
    lists = index._lists
    assert lists is not None
    # Every list's codes with a re-rank of every row: the exact scan, to the bit.
    every = lists.spans(np.tile(np.arange(index.nlist), len(queries)))
    arena = (lists.blocks, lists.factors, lists.ids)
    got = index._search_codes(queries, 10, view, arena, every, index.nlist, 3000)
    want = _index.exact_topk(queries, view, 10)
    assert np.array_equal(got[1], want[1])
    assert np.array_equal(got[0], want[0])
    # The probed lists: a re-rank of 40 of ~60 rows finds what the exact list scan finds.
    coded = index.search(queries, 10, view)
    listed = index.search(queries, 10, view, rerank=0)
    assert (coded[1] >= 0).all()
    overlap = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(coded[1], listed[1], strict=True)])
    assert overlap >= 0.9
    # Returned scores are exact: those of the stored rows.
    rows = view.block_f32(0, 3000)
    assert np.allclose(coded[0], np.einsum("qd,qkd->qk", queries, rows[coded[1]]), atol=1e-5)
    # k above the re-rank: the re-rank grows to k.
    many = index.search(queries[:2], 50, view)
    assert (many[1] >= 0).all()
    assert np.all(np.diff(many[0], axis=1) <= 0)  # exact scores, best first
    for wide, narrow, truth in zip(many[1], coded[1], listed[1], strict=False):
        assert len(set(wide[:10]) & set(truth)) >= len(set(narrow) & set(truth))
    # A snapshot sees only its rows on the code path too.
    snap = index.search(queries, 10, store.view(2000))
    assert ((snap[1] >= 0) & (snap[1] < 2000)).all()
    store.close()


@pytest.mark.usefixtures("small_train")
def test_codes_survive_reopen_and_a_crash_leftover(tmp_path: Path) -> None:
    vecs = unit(2000, 32, 26)
    config = StoreConfig(index="ivf", nprobe=8, rerank=20)
    store = ModuleStore(tmp_path / "db", embedder="synthetic", dim=32, config=config)
    add_synthetic(store, vecs)
    index = store.index
    assert isinstance(index, IvfIndex)
    assert index._lists is not None
    codes, _factors = index._lists.row_order(2000)
    before = store.search_vectors(vecs[:20], k=5)
    store.close()
    again = ModuleStore(tmp_path / "db", embedder="synthetic", dim=32, config=config)
    assert isinstance(again.index, IvfIndex)
    assert again.index._lists is not None
    assert np.array_equal(again.index._lists.row_order(2000)[0], codes)
    assert again.search_vectors(vecs[:20], k=5) == before
    again.close()
    # A crash after the index was saved: rows beyond the metadata lose their codes too.
    with sqlite3.connect(tmp_path / "db" / "modules.sqlite") as db:
        db.execute("DELETE FROM modules WHERE id >= 1500")
    cut = ModuleStore(tmp_path / "db", embedder="synthetic", dim=32, config=config)
    assert isinstance(cut.index, IvfIndex)
    assert cut.index._lists is not None
    assert np.array_equal(cut.index._lists.row_order(1500)[0], codes[:1500])
    assert all(i < 1500 for row in cut.search_vectors(vecs[1400:1600], k=3) for _, i in row)
    add_synthetic(cut, vecs[1500:], offset=1500)
    regained = cut.index._lists.row_order(2000)[0]
    assert np.array_equal(regained[:1500], codes[:1500])
    assert np.array_equal(regained[1500:], _index.encode(vecs[1500:], cut.index._rotation)[0])
    cut.close()
    # An index file of the previous format (no codes): the codes are encoded on open.
    saved = tmp_path / "db" / "index.ivf"
    with np.load(saved) as f:
        old = {"centroids": f["centroids"], "labels": f["labels"], "trained_at": f["trained_at"]}
    with saved.open("wb") as out:
        np.savez(out, format=np.int64(1), **old)
    upgraded = ModuleStore(tmp_path / "db", embedder="synthetic", dim=32, config=config)
    assert isinstance(upgraded.index, IvfIndex)
    assert upgraded.index._lists is not None
    assert np.array_equal(
        upgraded.index._lists.row_order(2000)[0],
        _index.encode(upgraded.view().block_f32(0, 2000), upgraded.index._rotation)[0],
    )
    upgraded.close()


def test_rerank_must_not_be_negative(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="rerank"):
        ModuleStore(tmp_path / "bad", embedder="synthetic", dim=16, config=StoreConfig(rerank=-1))


@pytest.mark.usefixtures("small_train")
@pytest.mark.parametrize("dtype", ["f16", "int8"])
def test_one_query_in_one_call_equals_the_batch_path(tmp_path: Path, dtype: str) -> None:
    # 2,345 rows: lists of odd sizes (not multiples of 32), so blocks end part-filled.
    vecs = unit(2345, 32, 30)
    queries = unit(12, 32, 31)
    config = StoreConfig(index="ivf", vector_dtype=dtype, nprobe=7, rerank=30)  # type: ignore[arg-type]
    store = ModuleStore(tmp_path / "db", embedder="synthetic", dim=32, config=config)
    add_synthetic(store, vecs)
    index = store.index
    assert isinstance(index, IvfIndex)
    assert index._lists is not None
    assert (index._lists.size % 32 != 0).any()
    nlist = index.nlist
    # Code path, exact list scan (rerank 0), every list probed, a re-rank wider than the
    # probed rows, 1 list, k above the size, and a snapshot: one query (the fused call)
    # gives what the same query gets in a batch (the separate kernels), to the bit.
    cases = [(7, 30, 10), (7, 0, 10), (nlist, 30, 10), (3, 5000, 10), (1, 8, 1), (7, 30, 4000)]
    for limit in (2345, 1500, 1):
        view = store.view(limit)
        for nprobe, rerank, k in cases:
            batch = index.search(queries, k, view, nprobe=nprobe, rerank=rerank)
            for i in range(0, len(queries), 3):
                one = index.search(queries[i : i + 1], k, view, nprobe=nprobe, rerank=rerank)
                width = one[1].shape[1]
                assert np.array_equal(one[1][0], batch[1][i][:width]), (limit, nprobe, rerank)
                assert np.array_equal(one[0][0], batch[0][i][:width])
                assert (batch[1][i][width:] == -1).all()
                assert (one[1][0] < limit).all()
    # Every list and a re-rank of every row: the exact scan.
    want = _index.exact_topk(queries[:1], store.view(), 10)
    got = index.search(queries[:1], 10, store.view(), nprobe=nlist, rerank=2345)
    assert np.array_equal(got[1], want[1])
    assert np.array_equal(got[0], want[0])
    store.close()


@pytest.mark.usefixtures("small_train")
def test_ivf_search_refuses_lists_past_the_arena(tmp_path: Path) -> None:
    vecs = unit(1000, 32, 32)
    config = StoreConfig(index="ivf")
    store = ModuleStore(tmp_path / "db", embedder="synthetic", dim=32, config=config)
    add_synthetic(store, vecs)
    index = store.index
    assert isinstance(index, IvfIndex)
    lists = index._lists
    assert lists is not None
    assert index._centroids is not None
    sizes = lists.size.copy()
    sizes[0] = len(lists.ids) + 1
    assert index._compact is not None
    codes, scales = index._compact
    args = (codes, scales, index._rotation, lists.start, sizes, lists.blocks, lists.factors)
    with pytest.raises(ValueError, match="ivf_search: list 0"):
        _core.ivf_search(vecs[:1], *args, lists.ids, store.view().matrix, 10, 4, 20)
    with pytest.raises(ValueError, match="one query"):
        _core.ivf_search(vecs[:2], *args, lists.ids, store.view().matrix, 10, 4, 20)
    with pytest.raises(ValueError, match="rotation"):
        _core.ivf_rotate(vecs[:2], index._rotation[:4])
    store.close()
