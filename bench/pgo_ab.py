"""Interleaved A/B of two builds of the Rust extension (e.g. plain against PGO).

Usage: python bench/pgo_ab.py A.so B.so [--reps N] [--files all|even|odd]

Both builds are loaded into this one process and timed alternately, A then B, in
every repetition, so a change in machine load hits both alike. Each figure is CPU
seconds of this process per call (one thread), median over repetitions; the ratio
A/B > 1 means B is faster. `--files odd` measures on the stdlib files that
`bench/pgo_train.py --files even` did not train on. Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pgo_train import answers, load_core, sources

from amr_async.function_corpus import evalplus_functions, functions_in_source

EVALPLUS = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "evalplus"


def cpu(fn: Callable[[], object]) -> float:
    start = time.process_time()
    fn()
    return time.process_time() - start


def workloads(core: ModuleType, files: str) -> dict[str, tuple[Callable[[], object], int]]:
    """name -> (call, items per call) for one build."""
    texts = sources(files)
    units = [u for text in texts for u in functions_in_source(text)]
    units.extend(evalplus_functions(EVALPLUS))
    found = answers()
    token_texts = texts[::3]
    rng = np.random.default_rng(0)
    q = rng.standard_normal((1, 384), dtype=np.float32)
    m8 = rng.integers(-127, 128, size=(100_000, 384), dtype=np.int8)
    scales = rng.uniform(0.001, 0.01, size=100_000).astype(np.float32)
    return {
        "ast_hash": (lambda: core.ast_hash(units, threads=1), len(units)),
        "ast_parse_only": (lambda: core.ast_parse_only(units, threads=1), len(units)),
        "extract": (lambda: core.extract_functions_batch(found, threads=1), len(found)),
        "count_tokens_cl100k": (
            lambda: [core.count_tokens([t], "cl100k_base") for t in token_texts],
            len(token_texts),
        ),
        "topk_int8_100k": (lambda: core.topk(q, m8, 10, scales), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("a")
    parser.add_argument("b")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--files", choices=("all", "even", "odd"), default="all")
    args = parser.parse_args()
    a, b = load_core(args.a), load_core(args.b)
    wa, wb = workloads(a, args.files), workloads(b, args.files)
    assert a.ast_hash(["def f(x):\n    return x + 1\n"]) == b.ast_hash(
        ["def f(x):\n    return x + 1\n"]
    )
    out: dict[str, object] = {"cores": os.cpu_count(), "files": args.files}
    out["load_avg_start"] = [round(x, 2) for x in os.getloadavg()]
    for name in wa:
        fa, n = wa[name]
        fb, _ = wb[name]
        fa(), fb()  # warm caches and lazily built tables of both
        ta, tb = [], []
        for _ in range(args.reps):
            ta.append(cpu(fa))
            tb.append(cpu(fb))
        out[f"{name}_n"] = n
        out[f"{name}_a_per_s_cpu"] = round(n / statistics.median(ta))
        out[f"{name}_b_per_s_cpu"] = round(n / statistics.median(tb))
        ratios = [x / y for x, y in zip(ta, tb, strict=True)]
        out[f"{name}_a_over_b"] = round(statistics.median(ratios), 3)
        print(json.dumps(out), file=sys.stderr)
    out["load_avg_end"] = [round(x, 2) for x in os.getloadavg()]
    print(json.dumps(out))


if __name__ == "__main__":
    main()
