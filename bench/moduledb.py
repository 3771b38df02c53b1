"""Module DB benchmark: insert rate, query latency, recall@10, memory and reopen time per index.

Vectors are SYNTHETIC (384-d, L2-normalised; rank-32 Gaussian plus noise by default, i.i.d.
Gaussian with ``--iid``): index-only figures, no embedder in the loop. Each size × index builds
a fresh DB through `ModuleStore.add` (metadata rows in SQLite, vector file, index), in batches
of 10,000 with pre-computed metadata (no parsing).
``insert_per_s`` is the sustained rate of the last tenth of the fill (adds into a DB already
90 % full), ``build_per_s`` the whole fill. Then a fresh child process reopens it
(``reopen_s``), runs single queries at k=10 (``query_p50_ms``/``query_p99_ms``, the store's
full path: index candidates, re-scoring from the vector file, no metadata fetch) once per
ef_search of the sweep (HNSW indexes; the default ef first, its figures are the top-level ones)
or per nprobe (IVF: lists scanned per query, likewise the default first)
and reports its resident memory growth per module (``rss_bytes_per_module``: RSS after reopen +
queries minus RSS before opening; mapped files count only the pages touched, so
``resident_max_bytes_per_module`` gives index + vector file per module too). Recall is against
an exact float32 scan of the original vectors.

    .venv/bin/python bench/moduledb.py            # 10k, 100k, 1M x exact, hnsw, usearch, ivf, auto
    .venv/bin/python bench/moduledb.py --quick    # 10k only, under a minute

Last stdout line: one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# One BLAS thread unless told otherwise: on a shared 2-core machine OpenBLAS's spinning worker
# threads made the MiniLM forward pass 4.6× slower (measured: 20 functions in 83 s vs 18 s).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np

from amr_async.moduledb import Module, ModuleStore, StoreConfig
from amr_async.moduledb._index import (
    HNSW_EF_CONSTRUCTION,
    HNSW_EF_SEARCH,
    HNSW_M,
    IVF_LISTS_PER_SQRT,
    IVF_MIN_TRAIN,
    IVF_NPROBE,
    IVF_QUERY_BITS,
    IVF_RERANK,
    IVF_RETRAIN_GROWTH,
    HnswIndex,
    IvfIndex,
    USearchIndex,
)
from amr_async.moduledb._source import FunctionInfo
from amr_async.moduledb._store import AUTO_ANN, AUTO_EXACT_MAX

DIM = 384
BATCH = 10_000


INTRINSIC = 32


def synthetic(n: int, seed: int, *, iid: bool = False) -> np.ndarray:  # type: ignore[type-arg]
    """n L2-normalised DIM-d vectors.

    Default: low-rank Gaussian (a fixed random DIM × INTRINSIC map of Gaussian codes) plus 10 %
    isotropic noise, so the data has neighbour structure like real embeddings. With `iid`,
    i.i.d. Gaussian: no structure at all, the worst case for any graph index.
    """
    basis = np.random.default_rng(0).standard_normal((INTRINSIC, DIM)).astype(np.float32)
    rng = np.random.default_rng(seed)
    out = np.empty((n, DIM), np.float32)
    for s in range(0, n, 100_000):
        m = min(100_000, n - s)
        if iid:
            block = rng.standard_normal((m, DIM), dtype=np.float32)
        else:
            codes = rng.standard_normal((m, INTRINSIC), dtype=np.float32)
            block = codes @ basis
            block /= np.linalg.norm(block, axis=1, keepdims=True)
            block += 0.1 / np.sqrt(DIM) * rng.standard_normal((m, DIM), dtype=np.float32)
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        out[s : s + len(block)] = block
    return out


def exact_truth(vectors: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:  # type: ignore[type-arg]
    best_s = np.full((len(queries), 0), -np.inf, np.float32)
    best_i = np.zeros((len(queries), 0), np.int64)
    for s in range(0, len(vectors), 200_000):
        scores = queries @ vectors[s : s + 200_000].T
        part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        cs = np.concatenate([best_s, np.take_along_axis(scores, part, axis=1)], axis=1)
        ci = np.concatenate([best_i, part + s], axis=1)
        keep = np.argsort(-cs, axis=1)[:, :k]
        best_s, best_i = np.take_along_axis(cs, keep, axis=1), np.take_along_axis(ci, keep, axis=1)
    return best_i


def build(
    path: Path,
    vectors: np.ndarray,  # type: ignore[type-arg]
    index: str,
    threads: int,
    vector_dtype: str = "f16",
) -> dict[str, float]:
    """Fill a fresh DB through `ModuleStore.add` in batches; time every batch.

    `insert_per_s` is the sustained rate of the last tenth of the batches: adds into a DB
    already 90 % full (SQLite rows + vector file + index), the figure the goal at 1M means.
    `build_per_s` is the whole fill from empty, index save included.
    """
    store = ModuleStore(
        path,
        embedder="synthetic",
        dim=DIM,
        config=StoreConfig(index=index, threads=threads, vector_dtype=vector_dtype),  # type: ignore[arg-type]
    )
    n = len(vectors)
    batch = min(BATCH, max(1, n // 10))
    tail_from = n - max(batch, n // 10)
    elapsed = tail_wall = tail_cpu = 0.0
    stall = 0.0  # the longest single add (an index training inside the writer's call)
    for s in range(0, n, batch):
        m = min(batch, n - s)
        mods = [
            Module(code=f"def f{i}():\n    return {i}\n", stage="bench") for i in range(s, s + m)
        ]
        infos = [FunctionInfo(f"f{i}", f"def f{i}():", "", f"{i:032x}", 6) for i in range(s, s + m)]
        t0, c0 = time.perf_counter(), time.process_time()
        store.add(mods, infos, vectors[s : s + m])
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        elapsed += wall
        stall = max(stall, wall)
        if n >= 100_000 and (s // batch) % 10 == 9:  # long fills: a progress line per tenth
            progress = {
                "progress": index,
                "filled": s + m,
                "batch_per_s": round(m / wall, 1),
                "batch_cpu_us": round(cpu / m * 1e6, 1),
                "loadavg_1m": round(os.getloadavg()[0], 2),
            }
            print(json.dumps(progress), file=sys.stderr, flush=True)
        if s >= tail_from:
            tail_wall += wall
            tail_cpu += cpu
    t0 = time.perf_counter()
    store.close()  # saves the index: part of the cost of building
    save = time.perf_counter() - t0
    tail_n = n - tail_from
    return {
        "insert_per_s": tail_n / tail_wall,
        "insert_cpu_us": tail_cpu / tail_n * 1e6,
        "build_per_s": n / (elapsed + save),
        "save_s": save,
        "max_add_stall_s": stall,
    }


def rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def child(
    path: str,
    index: str,
    queries_file: str,
    k: int,
    threads: int,
    efs: list[int],
    nprobes: list[int],
    reranks: list[int],
    query_bits: list[int],
) -> None:
    """Runs in a fresh process: reopen, query one at a time, report latency and memory.

    For an HNSW index the queries run once per ef_search in `efs`, for IVF once per nprobe
    in `nprobes` × rerank in `reranks` × `query_bits` (the defaults first).
    """
    queries = np.load(queries_file)
    before = rss_bytes()
    t0 = time.perf_counter()
    store = ModuleStore(
        path,
        embedder="synthetic",
        dim=DIM,
        config=StoreConfig(index=index, threads=threads),  # type: ignore[arg-type]
    )
    reopen = time.perf_counter() - t0
    graph = store.index if isinstance(store.index, HnswIndex | USearchIndex) else None
    ivf = store.index if isinstance(store.index, IvfIndex) and store.index.nlist else None
    t0 = time.perf_counter()
    store.search_vectors(queries[:1], k=k)  # first touch of the mapped files
    first = time.perf_counter() - t0
    sweep: list[dict[str, Any]] = []
    knobs = [(e, 0, 0) for e in efs] if graph else [(0, 0, 0)]
    if ivf:
        knobs = [(n, r, b) for n in nprobes for r in reranks for b in query_bits]
    for knob, rerank, bits in knobs:
        if graph:
            graph.ef = knob
        if ivf:
            ivf.nprobe = knob
            ivf.rerank = rerank
            ivf.query_bits = bits
        lat: list[float] = []
        found: list[list[int]] = []
        c0 = time.process_time()
        for q in queries:
            t0 = time.perf_counter()
            (row,) = store.search_vectors(q[None, :], k=k)
            lat.append((time.perf_counter() - t0) * 1000)
            found.append([i for _, i in row])
        cpu = (time.process_time() - c0) / len(queries) * 1000
        lat.sort()
        sweep.append(
            {
                "ef_search": knob if graph else None,
                "nprobe": knob if ivf else None,
                "rerank": rerank if ivf else None,
                "query_bits": bits if ivf else None,
                "query_p50_ms": statistics.median(lat),
                "query_p99_ms": lat[min(len(lat) - 1, int(0.99 * len(lat)))],
                "query_cpu_ms": cpu,
                "found": found,
            }
        )
    viewed = rss_bytes() - before
    if isinstance(graph, USearchIndex):
        # A memory-mapped usearch index is resident only where queries touched it; a DB that
        # takes inserts loads it whole (as `USearchIndex.add` does), so count it whole.
        graph.load_into_memory()
    rss = rss_bytes() - before
    n = len(store)
    kind = store.index.kind
    store.close()
    print(
        json.dumps(
            {
                "reopen_s": reopen,
                "first_query_s": first,
                "rss_bytes_per_module": rss / n,
                "rss_viewed_bytes_per_module": viewed / n,
                "index_kind": kind,
                "nlist": ivf.nlist if ivf else None,
                "sweep": sweep,
            }
        )
    )


def _recall(found: list[list[int]], truth: np.ndarray) -> float:  # type: ignore[type-arg]
    return float(
        np.mean([len(set(f) & set(t.tolist())) / len(t) for f, t in zip(found, truth, strict=True)])
    )


def measure(
    tmp: Path,
    size: int,
    index: str,
    vectors: np.ndarray,  # type: ignore[type-arg]
    queries_file: Path,
    truth: np.ndarray,  # type: ignore[type-arg]
    threads: int,
    exact_queries: int,
    efs: list[int],
    nprobes: list[int],
    reranks: list[int],
    query_bits: list[int],
    vector_dtype: str,
    keep: Path | None = None,
) -> dict[str, Any]:
    path = (keep or tmp) / f"{index}-{size}-{vector_dtype}"
    marker = path / "bench-build.json"  # the fill's figures, next to a kept DB
    if keep is not None and marker.exists():
        built = json.loads(marker.read_text())
    else:
        if path.exists():  # a kept DB whose fill did not finish
            shutil.rmtree(path)
        built = build(path, vectors[:size], index, threads, vector_dtype)
        if keep is not None:
            marker.write_text(json.dumps(built))
    qfile = queries_file
    if index == "exact" and size > 100_000 and len(truth) > exact_queries:
        # A full scan per query: fewer queries keep the run short; recall is 1 by design.
        qfile = queries_file.with_name(f"queries-{exact_queries}.npy")
        np.save(qfile, np.load(queries_file)[:exact_queries])
        truth = truth[:exact_queries]
    out = subprocess.run(
        [
            sys.executable,
            __file__,
            "--child",
            str(path),
            index,
            str(qfile),
            str(threads),
            ",".join(map(str, efs)),
            ",".join(map(str, nprobes)),
            ",".join(map(str, reranks)),
            ",".join(map(str, query_bits)),
        ],
        check=False,
        capture_output=True,
        text=True,
    )
    if out.returncode != 0:
        raise RuntimeError(f"child for {index} at {size} failed:\n{out.stderr}")
    res = json.loads(out.stdout.strip().splitlines()[-1])
    sweep = [
        {
            "ef_search": r["ef_search"],
            "nprobe": r["nprobe"],
            "rerank": r["rerank"],
            "query_bits": r["query_bits"],
            "query_p50_ms": round(r["query_p50_ms"], 3),
            "query_p99_ms": round(r["query_p99_ms"], 3),
            "query_cpu_ms": round(r["query_cpu_ms"], 3),
            "recall_at_10": round(_recall(r["found"], truth), 4),
        }
        for r in res["sweep"]
    ]
    main = sweep[0]  # the default ef_search (or the exact scan)
    files = {p.name: p.stat().st_size for p in path.iterdir()}
    index_file = sum(v for name, v in files.items() if name.startswith("index."))
    vector_file = sum(v for name, v in files.items() if name.startswith("vectors."))
    if keep is None:
        shutil.rmtree(path)
    return {
        "index": index,
        "size": size,
        "insert_per_s": round(built["insert_per_s"], 1),
        "insert_cpu_us": round(built["insert_cpu_us"], 1),
        "build_per_s": round(built["build_per_s"], 1),
        "max_add_stall_s": round(built["max_add_stall_s"], 3),
        "query_p50_ms": main["query_p50_ms"],
        "query_p99_ms": main["query_p99_ms"],
        "query_cpu_ms": main["query_cpu_ms"],
        "recall_at_10": main["recall_at_10"],
        "ef_search": main["ef_search"],
        "nprobe": main["nprobe"],
        "rerank": main["rerank"],
        "query_bits": main["query_bits"],
        "nlist": res["nlist"],
        "rss_bytes_per_module": round(res["rss_bytes_per_module"], 1),
        "rss_viewed_bytes_per_module": round(res["rss_viewed_bytes_per_module"], 1),
        # Index + vector file per module: the resident size once every page has been touched.
        "resident_max_bytes_per_module": round((index_file + vector_file) / size, 1),
        "disk_bytes_per_module": round(sum(files.values()) / size, 1),
        "reopen_s": round(res["reopen_s"], 4),
        "first_query_s": round(res["first_query_s"], 4),
        "save_s": round(built["save_s"], 3),
        "index_kind": res["index_kind"],
        "queries": len(truth),
        "ef_sweep": sweep,
        "loadavg_1m": round(os.getloadavg()[0], 2),
    }


def fastest_meeting(results: list[dict[str, Any]], recall: float) -> dict[str, Any]:
    """Per size: the index and ef_search (or nprobe, rerank) with the lowest p50 reaching
    `recall`."""
    best: dict[str, Any] = {}
    for r in results:
        if r["index"] == "auto" or r.get("capped"):
            continue
        for point in r["ef_sweep"]:
            if point["recall_at_10"] < recall:
                continue
            cur = best.get(str(r["size"]))
            if cur is None or point["query_p50_ms"] < cur["query_p50_ms"]:
                best[str(r["size"])] = {"index": r["index"], **point}
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="10k only, 100 queries")
    parser.add_argument("--sizes", default=None, help="comma-separated sizes")
    parser.add_argument("--indexes", default="exact,hnsw,usearch,ivf,auto")
    parser.add_argument("--queries", type=int, default=None, help="default 200; quick 100")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--exact-queries", type=int, default=30, help="queries for exact scans above 100k"
    )
    parser.add_argument("--iid", action="store_true", help="i.i.d. Gaussian vectors (no structure)")
    parser.add_argument(
        "--hnsw-cap",
        type=int,
        default=None,
        help="build hnswlib at most this large: a larger size's hnsw row is measured at the cap "
        "(`measured_size`, `capped`); its inserts are the slowest of the three",
    )
    parser.add_argument(
        "--vector-dtype", choices=("f16", "int8"), default="f16", help="the store's vector file"
    )
    parser.add_argument(
        "--ef",
        default=None,
        help=f"ef_search values for the HNSW indexes, the default first "
        f"(default {HNSW_EF_SEARCH},64,128,512; quick {HNSW_EF_SEARCH},64)",
    )
    parser.add_argument(
        "--nprobe",
        default=None,
        help=f"nprobe values for IVF, the default first "
        f"(default {IVF_NPROBE},64,128,512; quick {IVF_NPROBE},64)",
    )
    parser.add_argument(
        "--rerank",
        default=None,
        help=f"IVF candidates re-ranked exactly after the 1-bit code scan, the default first; 0 "
        f"scans the probed lists exactly (default {IVF_RERANK})",
    )
    parser.add_argument(
        "--query-bits",
        default=None,
        help=f"bits per coordinate of the IVF code-scan query, the default first (default "
        f"{IVF_QUERY_BITS})",
    )
    parser.add_argument(
        "--keep",
        type=Path,
        default=None,
        metavar="DIR",
        help="build the DBs in DIR and keep them; a later run with the same DIR reuses a DB "
        "already built there (same index, size and vector dtype; its fill figures are the "
        "stored ones) and measures only reopen and queries",
    )
    parser.add_argument(
        "--child",
        nargs=8,
        metavar=("PATH", "INDEX", "QUERIES", "THREADS", "EF", "NPROBE", "RERANK", "BITS"),
    )
    args = parser.parse_args()
    if args.child:
        path, index, qfile, threads, efs, nps, rrs, qbs = args.child
        child(
            path,
            index,
            qfile,
            10,
            int(threads),
            [int(e) for e in efs.split(",")],
            [int(e) for e in nps.split(",")],
            [int(e) for e in rrs.split(",")],
            [int(e) for e in qbs.split(",")],
        )
        return
    efs = (
        [int(e) for e in args.ef.split(",")]
        if args.ef
        else [HNSW_EF_SEARCH, *[e for e in (64, 128, 512) if e != HNSW_EF_SEARCH]]
    )
    if args.quick and not args.ef:
        efs = efs[:2]
    nprobes = (
        [int(e) for e in args.nprobe.split(",")]
        if args.nprobe
        else [IVF_NPROBE, *[e for e in (64, 128, 512) if e != IVF_NPROBE]]
    )
    if args.quick and not args.nprobe:
        nprobes = nprobes[:2]
    reranks = [int(e) for e in args.rerank.split(",")] if args.rerank else [IVF_RERANK]
    query_bits = (
        [int(e) for e in args.query_bits.split(",")] if args.query_bits else [IVF_QUERY_BITS]
    )
    sizes = (
        [int(s) for s in args.sizes.split(",")]
        if args.sizes
        else ([10_000] if args.quick else [10_000, 100_000, 1_000_000])
    )
    args.queries = args.queries or (100 if args.quick else 200)
    indexes = args.indexes.split(",")
    vectors = synthetic(max(sizes), seed=1, iid=args.iid)
    queries = synthetic(args.queries, seed=2, iid=args.iid)
    results: list[dict[str, Any]] = []
    if args.keep is not None:
        args.keep.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bench-moduledb-") as tmpdir:
        tmp = Path(tmpdir)
        qfile = tmp / "queries.npy"
        np.save(qfile, queries)
        for size in sizes:
            truth = exact_truth(vectors[:size], queries, 10)
            done: dict[str, dict[str, Any]] = {}
            for index in indexes:
                resolved = index
                if index == "auto":
                    resolved = "exact" if size < AUTO_EXACT_MAX else AUTO_ANN
                if resolved in done:  # `auto` is one of the measured indexes at this size
                    res = {**done[resolved], "index": "auto", "auto_resolves_to": resolved}
                elif index == "hnsw" and args.hnsw_cap and size > args.hnsw_cap:
                    cap = args.hnsw_cap
                    res = measure(
                        tmp,
                        cap,
                        index,
                        vectors,
                        qfile,
                        exact_truth(vectors[:cap], queries, 10),
                        args.threads,
                        args.exact_queries,
                        efs,
                        nprobes,
                        reranks,
                        query_bits,
                        args.vector_dtype,
                        args.keep,
                    )
                    res = {**res, "size": size, "measured_size": cap, "capped": True}
                    done[index] = res
                else:
                    res = measure(
                        tmp,
                        size,
                        index,
                        vectors,
                        qfile,
                        truth,
                        args.threads,
                        args.exact_queries,
                        efs,
                        nprobes,
                        reranks,
                        query_bits,
                        args.vector_dtype,
                        args.keep,
                    )
                    done[index] = res
                results.append(res)
                print(json.dumps(res), file=sys.stderr, flush=True)
    # The default configuration at 1M is `auto`, which resolves to AUTO_ANN there.
    at_1m = [r for r in results if r["size"] == 1_000_000]
    best = next((r for r in at_1m if r["index"] == "auto"), None) or next(
        (r for r in at_1m if r["index"] == AUTO_ANN), None
    )
    summary = {
        "benchmark": "moduledb",
        "vectors": (
            f"synthetic, {DIM}-d, L2-normalised, "
            + ("i.i.d. Gaussian" if args.iid else f"rank-{INTRINSIC} Gaussian + 10% noise")
            + " (index-only figures: no embedder, no parsing)"
        ),
        "cores": os.cpu_count(),
        "loadavg_1m": os.getloadavg()[0],
        "threads": args.threads,
        "k": 10,
        "queries": args.queries,
        "vector_dtype": args.vector_dtype,
        "hnsw": {"m": HNSW_M, "ef_construction": HNSW_EF_CONSTRUCTION, "ef_search": HNSW_EF_SEARCH},
        "ivf": {
            "lists_per_sqrt_n": IVF_LISTS_PER_SQRT,
            "nprobe": IVF_NPROBE,
            "rerank": IVF_RERANK,
            "query_bits": IVF_QUERY_BITS,
            "min_train": IVF_MIN_TRAIN,
            "retrain_growth": IVF_RETRAIN_GROWTH,
        },
        "insert_per_s_means": "sustained ModuleStore.add (SQLite + vector file + index) over the "
        "last tenth of the fill, into a DB already 90% full; no parsing, no embedding",
        "max_add_stall_s_means": "the longest single ModuleStore.add of 10k rows in the fill "
        "(wall; an index (re)training inside the writer's call shows here)",
        "auto": {"exact_below": AUTO_EXACT_MAX, "ann": AUTO_ANN},
        "results": results,
        "fastest_at_recall_0_95": fastest_meeting(results, 0.95),
        "best_1m": best,
        "best_1m_means": "the default configuration at 1M (index=auto, f16 vector file, default "
        "ef_search/nprobe) on this run's synthetic vectors: index-only figures, not retrieval "
        "quality (bench/retrieval_quality.py measures that)",
    }
    if best is None:
        summary["best_1m_note"] = "1M not measured in this run (run without --quick)"
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
