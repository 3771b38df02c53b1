"""Benchmark: Rust cosine_matrix against NumPy on the same data, in one run.

Usage: python bench/similarity.py [--quick]
Last line: one JSON object (rust_ms, numpy_ms, rust_vs_numpy = numpy time / rust time).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np
import orjson

from amr_async._core import cosine_matrix


def numpy_cosine(q: np.ndarray, m: np.ndarray) -> np.ndarray:
    qn = q / np.linalg.norm(q, axis=1, keepdims=True)
    mn = m / np.linalg.norm(m, axis=1, keepdims=True)
    return qn @ mn.T


def median_ms(fn: object, reps: int) -> float:
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()  # type: ignore[operator]
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    n, q, d = (20_000, 16, 384) if args.quick else (200_000, 64, 384)
    rng = np.random.default_rng(0)
    matrix = rng.standard_normal((n, d), dtype=np.float32)
    queries = rng.standard_normal((q, d), dtype=np.float32)
    reps = 5
    rust_ms = median_ms(lambda: cosine_matrix(queries, matrix), reps)
    numpy_ms = median_ms(lambda: numpy_cosine(queries, matrix), reps)
    print(
        orjson.dumps(
            {
                "benchmark": "similarity",
                "quick": args.quick,
                "cores": os.cpu_count(),
                "rows": n,
                "queries": q,
                "dim": d,
                "rust_ms": round(rust_ms, 2),
                "numpy_ms": round(numpy_ms, 2),
                "rust_vs_numpy": round(numpy_ms / rust_ms, 3),
            }
        ).decode()
    )


if __name__ == "__main__":
    main()
