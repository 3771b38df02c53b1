"""Instruction dedup at scale: `Dedup.sieve` (IVF index) against the scan it replaced.

Synthetic texts (20 words drawn from a 50,000-word vocabulary; no dataset holds millions of
instructions here) fill a `Dedup` to N texts through `sieve` in rounds of 32 (the generation
commands' default round). At N it measures, for 32-text rounds of new texts:

- `sieve_us_per_text`: wall time per text of `sieve` (embed, search, keep), one thread;
- `scan_us_per_text`: the check it replaced (until 2026-11-27), one top-1 scan of every kept
  float32 row per text (`_core.topk`), embeddings excluded;
- `ivf_recall`: of near duplicates (a kept text with 1-2 of its 20 words changed, cosine
  0.90-0.97), the fraction `sieve` drops, against the exact scan of the same float16 rows
  (1.0 below `IVF_MIN_TRAIN`, where `sieve` scans too);
- `fill_texts_per_s` (the whole fill), `bytes_per_text` (resident memory growth / N).

    .venv/bin/python bench/dedup.py [--quick] [--sizes 1000000]

Last line: one JSON object; keys suffixed by size (e.g. `sieve_us_per_text_1000000`) and,
unsuffixed, the largest size's.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import time

import numpy as np
import orjson

from amr_async import _core
from amr_async.pipeline._generation import Dedup

_VOCAB = np.array([f"w{i}" for i in range(50_000)])
_ROUND = 32


def _texts(rng: np.random.Generator, n: int) -> list[str]:
    return [" ".join(row) for row in _VOCAB[rng.integers(len(_VOCAB), size=(n, 20))]]


def _mutated(rng: np.random.Generator, texts: list[str]) -> list[str]:
    out = []
    for text in texts:
        words = text.split()
        for _ in range(int(rng.integers(1, 3))):
            words[int(rng.integers(len(words)))] = str(_VOCAB[int(rng.integers(len(_VOCAB)))])
        out.append(" ".join(words))
    return out


def _recall(
    dedup: Dedup, rng: np.random.Generator, texts: list[str], prefix: str
) -> tuple[int, float]:
    """Of near duplicates of kept texts (cosine >= 0.9 to a kept row by the exact scan), the
    number and the fraction that `sieve` drops."""
    picks = rng.choice(len(texts), size=min(2000, len(texts)), replace=False)
    probes = _mutated(rng, [texts[int(i)] for i in picks])
    vectors = np.ascontiguousarray(Dedup.embed(probes))
    view = dedup._view(len(dedup))
    exact_scores, _ = _core.topk(vectors, view.matrix[: view.count], 1)
    truly_near = exact_scores[:, 0] >= 0.9
    verdicts: list[str | None] = []
    for i in range(0, len(probes), _ROUND):
        batch = probes[i : i + _ROUND]
        verdicts += dedup.sieve([(f"{prefix}{j}", t) for j, t in enumerate(batch, i)])
    dropped = np.array([v is not None and v.startswith("near_duplicate") for v in verdicts])
    return int(truly_near.sum()), float(dropped[truly_near].mean()) if truly_near.any() else 1.0


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _one_size(
    n: int, rounds: int, seed: int, options: dict[str, int], nprobes: list[int]
) -> dict[str, float]:
    rng = np.random.default_rng(seed)
    dedup = Dedup(0.9, **options)
    texts = _texts(rng, n)
    rss = _rss_bytes()
    start = time.perf_counter()
    for i in range(0, n, 256):  # bigger rounds to fill; the timed rounds below are 32
        dedup.sieve([(f"t{j}", t) for j, t in enumerate(texts[i : i + 256], i)])
    fill_s = time.perf_counter() - start
    kept = len(dedup)
    grown = _rss_bytes() - rss

    # The new check, on rounds of new texts (each round is kept, as in a run), and its
    # recall: near duplicates of kept texts, how many `sieve` drops against the exact scan.
    settings: dict[str, float] = {}
    for nprobe in nprobes or [dedup._index.nprobe]:
        dedup._index.nprobe = nprobe
        sieve_us = []
        for r in range(rounds):
            batch = [(f"n{nprobe}-{r}-{j}", t) for j, t in enumerate(_texts(rng, _ROUND))]
            t0 = time.perf_counter()
            dedup.sieve(batch)
            sieve_us.append(1e6 * (time.perf_counter() - t0) / _ROUND)
        near, recall = _recall(dedup, rng, texts, f"p{nprobe}-")
        settings[f"sieve_us_per_text_np{nprobe}"] = round(statistics.median(sieve_us), 1)
        settings[f"ivf_recall_np{nprobe}"] = round(recall, 4)
        settings[f"near_probes_np{nprobe}"] = near
    first = nprobes[0] if nprobes else dedup._index.nprobe
    dedup._index.nprobe = first

    # The old check: a top-1 scan of every kept float32 row per text.
    rows = dedup._rows[: len(dedup)].astype(np.float32)
    queries = Dedup.embed(_texts(rng, _ROUND))
    scan_us = []
    for _ in range(max(1, rounds // 4)):
        t0 = time.perf_counter()
        for q in queries:
            _core.topk(q[None, :], rows, 1)
        scan_us.append(1e6 * (time.perf_counter() - t0) / _ROUND)
    del rows

    dedup.close()
    return {
        "texts": n,
        "kept": kept,
        "nlist": dedup._index.nlist,
        "nprobe": first,
        "rerank": dedup._index.rerank,
        "fill_texts_per_s": round(n / fill_s),
        "bytes_per_text": round(grown / n),
        "sieve_us_per_text": settings[f"sieve_us_per_text_np{first}"],
        "scan_us_per_text": round(statistics.median(scan_us), 1),
        "speedup": round(statistics.median(scan_us) / settings[f"sieve_us_per_text_np{first}"], 2),
        "near_probes": settings[f"near_probes_np{first}"],
        "ivf_recall": settings[f"ivf_recall_np{first}"],
        **settings,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="50,000 texts (under a minute)")
    parser.add_argument("--sizes", default=None, help="comma-separated (default 100000,1000000)")
    parser.add_argument("--rounds", type=int, default=40, help="timed 32-text rounds per size")
    parser.add_argument(
        "--nprobe",
        help="lists probed per text, comma-separated, each measured on the same fill "
        "(default: Dedup's; the first is the headline)",
    )
    parser.add_argument("--rerank", type=int, help="candidates scored exactly (default: Dedup's)")
    args = parser.parse_args()
    default = "50000" if args.quick else "100000,1000000"
    sizes = [int(s) for s in (args.sizes or default).split(",")]
    out: dict[str, object] = {
        "benchmark": "dedup",
        "quick": args.quick,
        "cores": os.cpu_count(),
        "loadavg": round(os.getloadavg()[0], 2),
    }
    for n in sizes:
        options = {} if args.rerank is None else {"rerank": args.rerank}
        nprobes = [int(p) for p in args.nprobe.split(",")] if args.nprobe else []
        row = _one_size(n, args.rounds, seed=n, options=options, nprobes=nprobes)
        print(orjson.dumps(row).decode(), flush=True)
        out.update({f"{k}_{n}": v for k, v in row.items() if k != "texts"})
        out.update(row)
    out["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    print(orjson.dumps(out).decode())


if __name__ == "__main__":
    main()
