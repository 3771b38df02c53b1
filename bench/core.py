"""Benchmark of the Rust core: AST hashing, extraction, top-k, token counting.

Usage: python bench/core.py [--quick] [--rows N] [--only PART ...]

Figures (medians of repetitions, ratios within this run):
  ast_hash_per_s_1core   Rust hashes/s on one thread over >= 20,000 real functions
                         (the standard library's, plus the EvalPlus solutions)
  ast_hash_speedup       Rust / Python reference (amr_async.ast_reference), same
                         functions, one thread each; both timed in every
                         repetition, median of the per-repetition ratios
  ast_hash_cpu_per_s_1core, ast_hash_cpu_speedup  the same two figures from
                         process CPU time instead of wall time (steadier on a
                         loaded machine; both sides run on one thread)
  ast_hash_mismatches    functions whose Rust and reference hashes differ (the sweep
                         covers every function collected)
  ast_parse_floor_per_s_1core  ruff's parse alone over the same functions, run as
                         ast_hash runs it (same thread, arena, strings; no walk, no
                         digest): the most ast_hash could reach with a free walk
  ast_parse_floor_fraction  CPU of the parse alone / CPU of the whole hash, median
                         of the per-repetition ratios
  *_reps, *_best         every repetition's figure, and the best one: the spread
                         shows what the machine did to each (a slow repetition is
                         slow for the hash and the parse timed right after it)
  ast_hash_cpu_us_per_fn, ast_parse_cpu_us_per_fn, ast_hash_beyond_parse_cpu_us_per_fn
                         CPU per function of the hash, of the parse alone, and of
                         the rest (walk, form, BLAKE2b, result objects)
  ast_hash_caller_cpu_ms_per_call, ast_{hash,parse}_minflt_per_call  per call over
                         all functions: the calling thread's CPU (strings in,
                         result objects out, under the GIL) and minor page faults
  extract_per_s          answers/s (prose + two fenced blocks), one thread
  topk_{f32,int8}_vs_bound  one exact top-10 query over n x 384 divided by the
                         memory bound (bytes scanned / read bandwidth measured here)
  batch64_{f32,int8}_queries_per_s  64 queries per call
  tokens_mb_per_s        cl100k_base counting, all cores
  pgo                    whether the extension is `make ext`'s profile-guided build
                         (its `.venv/.ext-pgo` stamp is newer than the module)
Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import resource
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import numpy as np
import orjson

from amr_async import _core, ast_reference, core
from amr_async.function_corpus import evalplus_functions, functions_in_source, stdlib_files

EVALPLUS = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "evalplus"


def pgo_build() -> bool:
    """Whether `_core` is the PGO build: `make ext` stamps `.venv/.ext-pgo` after it."""
    stamp = Path(sys.prefix) / ".ext-pgo"
    module = Path(_core.__file__ or "")
    return stamp.exists() and module.exists() and stamp.stat().st_mtime >= module.stat().st_mtime


def median_s(fn: Callable[[], object], reps: int) -> float:
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def collect_functions(min_count: int | None) -> tuple[list[str], int]:
    """Stdlib functions (all, or until `min_count`) then every EvalPlus one."""
    units: list[str] = []
    files = 0
    for path in stdlib_files():
        try:
            units.extend(functions_in_source(path.read_text(encoding="utf-8")))
        except (UnicodeDecodeError, OSError):
            continue
        files += 1
        if min_count is not None and len(units) >= min_count:
            break
    units.extend(evalplus_functions(EVALPLUS))
    return units, files


def answers() -> list[str]:
    """LLM-style answers built from the HumanEval+ prompts and canonical solutions."""
    out = []
    with gzip.open(EVALPLUS / "HumanEvalPlus.jsonl.gz", "rt", encoding="utf-8") as fh:
        for line in fh:
            row = json.loads(line)
            code = row["prompt"] + row["canonical_solution"]
            entry = row["entry_point"]
            out.append(
                f"Here is a solution to the task.\n\n```python\n{code}\n```\n\n"
                f"It works as follows: it loops once. Tests:\n\n```python\n"
                f"def test_{entry}():\n    assert {entry} is not None\n```\n"
            )
    return out


def timed(fn: Callable[[], object]) -> tuple[float, float]:
    """Wall and process CPU seconds of one call (process CPU counts the Rust threads)."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


class Call(NamedTuple):
    """One timed call and what it cost besides time."""

    wall: float
    cpu: float  # process CPU: the calling thread plus the Rust worker
    caller_cpu: float  # the calling thread alone: input strings, result objects (GIL)
    minflt: int  # minor page faults of the process during the call


def measured(fn: Callable[[], object]) -> Call:
    """`timed` plus the calling thread's CPU and the page faults of one call."""
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    caller = time.thread_time()
    wall, cpu = timed(fn)
    return Call(
        wall,
        cpu,
        time.thread_time() - caller,
        resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults,
    )


def bench_ast(quick: bool, out: dict[str, object]) -> None:
    units, files = collect_functions(20_500 if quick else None)
    out["ast_functions"] = len(units)
    out["ast_stdlib_files"] = files
    out["ast_mean_chars"] = round(sum(map(len, units)) / len(units))
    rust = _core.ast_hash(units, threads=1)
    ref_units = units[:: max(1, len(units) // 3000)] if quick else units
    ref = ast_reference.ast_hash(ref_units)
    rust_sub = _core.ast_hash(ref_units, threads=1)
    out["ast_hash_compared"] = len(ref_units)
    out["ast_hash_mismatches"] = sum(a != b for a, b in zip(rust_sub, ref, strict=True))
    out["ast_hash_unparsed"] = sum(h is None for h in rust)
    # Rust over every function and both sides over the same sample, interleaved in
    # each repetition so that a change in machine load hits both alike; the speedup
    # is the median of the per-repetition ratios. The parse floor is timed right
    # after each hash, so their per-repetition ratio is steady where the rates
    # themselves swing with the machine (the spread keys show how much).
    sub = units[: min(len(units), 2000 if quick else 4000)]
    hashes, floors, ratios, cpu_ratios, py_rates = [], [], [], [], []
    for _ in range(3 if quick else 7):
        hashes.append(measured(lambda: _core.ast_hash(units, threads=1)))
        floors.append(measured(lambda: _core.ast_parse_only(units, threads=1)))
        rust_wall, rust_cpu = timed(lambda: _core.ast_hash(sub, threads=1))
        py_wall, py_cpu = timed(lambda: ast_reference.ast_hash(sub))
        ratios.append(py_wall / rust_wall)
        cpu_ratios.append(py_cpu / rust_cpu)
        py_rates.append(len(sub) / py_wall)
    n = len(units)
    rates = [n / c.wall for c in hashes]
    cpu_rates = [n / c.cpu for c in hashes]
    out["ast_hash_per_s_1core"] = round(n / statistics.median(c.wall for c in hashes))
    out["ast_hash_per_s_1core_reps"] = [round(r) for r in rates]
    out["ast_hash_per_s_1core_best"] = round(max(rates))
    out["ast_hash_cpu_per_s_1core"] = round(n / statistics.median(c.cpu for c in hashes))
    out["ast_hash_cpu_per_s_1core_reps"] = [round(r) for r in cpu_rates]
    out["ast_parse_floor_per_s_1core"] = round(n / statistics.median(c.wall for c in floors))
    out["ast_parse_floor_cpu_per_s_1core"] = round(n / statistics.median(c.cpu for c in floors))
    out["ast_parse_floor_fraction"] = round(
        statistics.median(f.cpu / h.cpu for h, f in zip(hashes, floors, strict=True)), 3
    )
    out["ast_parse_floor_fraction_reps"] = [
        round(f.cpu / h.cpu, 3) for h, f in zip(hashes, floors, strict=True)
    ]
    # Per function, CPU: the whole hash, the parse alone, and the rest (walk, form,
    # BLAKE2b, result objects) as the per-repetition difference.
    out["ast_hash_cpu_us_per_fn"] = round(statistics.median(c.cpu for c in hashes) / n * 1e6, 2)
    out["ast_parse_cpu_us_per_fn"] = round(statistics.median(c.cpu for c in floors) / n * 1e6, 2)
    out["ast_hash_beyond_parse_cpu_us_per_fn"] = round(
        statistics.median(h.cpu - f.cpu for h, f in zip(hashes, floors, strict=True)) / n * 1e6, 2
    )
    # What one call costs besides the hashing thread's work: the calling thread's
    # CPU (taking the strings, making the result objects under the GIL) and faults.
    out["ast_hash_caller_cpu_ms_per_call"] = round(
        statistics.median(c.caller_cpu for c in hashes) * 1e3, 1
    )
    out["ast_hash_minflt_per_call"] = round(statistics.median(c.minflt for c in hashes))
    out["ast_parse_minflt_per_call"] = round(statistics.median(c.minflt for c in floors))
    out["ast_hash_python_per_s"] = round(statistics.median(py_rates))
    out["ast_hash_speedup"] = round(statistics.median(ratios), 1)
    out["ast_hash_cpu_speedup"] = round(statistics.median(cpu_ratios), 1)
    out["ast_hash_speedup_reps"] = [round(r, 1) for r in ratios]
    t_all = median_s(lambda: _core.ast_hash(units), 3)
    out["ast_hash_per_s_all_cores"] = round(len(units) / t_all)
    hashes = [h for h in rust if h is not None]
    out["ast_hash_distinct_fraction"] = round(len(set(hashes)) / len(hashes), 4)


def bench_extract(out: dict[str, object]) -> None:
    texts = answers()
    found = _core.extract_functions_batch(texts, threads=1)
    out["extract_functions_found"] = sum(map(len, found))
    t = median_s(lambda: _core.extract_functions_batch(texts, threads=1), 5)
    out["extract_per_s"] = round(len(texts) / t)


def bench_topk(quick: bool, rows: int | None, out: dict[str, object]) -> None:
    n, d, k = rows or (200_000 if quick else 1_000_000), 384, 10
    rng = np.random.default_rng(0)
    out["topk_rows"] = n
    queries = rng.standard_normal((64, d), dtype=np.float32)
    reps = 5 if quick else 9
    for name in ("int8", "f32"):
        if name == "f32":
            m = rng.standard_normal((n, d), dtype=np.float32)
            scales = None
        else:
            m = rng.integers(-127, 128, size=(n, d), dtype=np.int8)
            scales = rng.uniform(0.001, 0.01, size=n).astype(np.float32)
        flat = m.reshape(-1).view(np.uint8)
        _core.scan_bytes(flat)  # fault the pages in before timing anything
        t_scan = median_s(lambda: _core.scan_bytes(flat), reps)  # noqa: B023
        q1 = queries[:1]
        t_one = median_s(lambda: core.topk(q1, m, k, scales), reps)  # noqa: B023
        t_batch = median_s(lambda: core.topk(queries, m, k, scales), 3)  # noqa: B023
        out[f"read_gb_per_s_{name}"] = round(flat.nbytes / t_scan / 1e9, 2)
        out[f"topk_{name}_ms"] = round(t_one * 1e3, 2)
        out[f"topk_{name}_vs_bound"] = round(t_one / t_scan, 2)
        out[f"batch64_{name}_queries_per_s"] = round(64 / t_batch, 1)


def bench_tokens(quick: bool, out: dict[str, object]) -> None:
    texts = []
    size = 0
    for path in stdlib_files():
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        texts.append(text)
        size += len(text.encode())
        if size > (4_000_000 if quick else 20_000_000):
            break
    t = median_s(lambda: core.count_tokens(texts, "cl100k_base"), 3)
    out["tokens_mb_per_s"] = round(size / t / 1e6, 2)
    t = median_s(lambda: core.count_tokens(texts, "o200k_base"), 3)
    out["tokens_o200k_mb_per_s"] = round(size / t / 1e6, 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smaller inputs, under a minute")
    parser.add_argument("--rows", type=int, help="top-k matrix rows (default 200k quick, 1M full)")
    parser.add_argument(
        "--only",
        choices=("ast", "extract", "topk", "tokens"),
        action="append",
        help="run only these parts (repeatable)",
    )
    args = parser.parse_args()
    out: dict[str, object] = {"cores": os.cpu_count(), "quick": args.quick, "pgo": pgo_build()}
    # Absolute rates on a shared machine depend on its load; ratios much less.
    out["load_avg_start"] = [round(x, 2) for x in os.getloadavg()]
    steps: dict[str, Callable[[], None]] = {
        "ast": lambda: bench_ast(args.quick, out),
        "extract": lambda: bench_extract(out),
        "topk": lambda: bench_topk(args.quick, args.rows, out),
        "tokens": lambda: bench_tokens(args.quick, out),
    }
    for name, step in steps.items():
        if args.only and name not in args.only:
            continue
        step()
        print(orjson.dumps(out).decode(), file=sys.stderr)
    out["load_avg_end"] = [round(x, 2) for x in os.getloadavg()]
    print(orjson.dumps(out).decode())


if __name__ == "__main__":
    main()
