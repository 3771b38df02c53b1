"""Stub → implementation retrieval quality of the module DB, per embedder.

Corpus: every function of this machine's Python standard library (tests folders excluded) plus
the HumanEval+ and MBPP+ canonical solutions (``../shared/data/evalplus``), admitted through
`ModuleDB.add_many` (exact-AST dedup on; the near-duplicate threshold off so that no query
loses its target). Queries: a function's signature and docstring only (for MBPP+, whose
solutions have no docstring, the task text serves as docstring); the target is the same function
stored whole. Figures: ``recall_at_1``, ``recall_at_5`` and ``mrr`` (over the top 10).

The ``hash`` embedder runs on the whole corpus. ``minilm`` (a NumPy forward pass, a few
functions/s per core) runs on a random subset — the queries' targets plus distractors — whose
size is in the output; ``hash`` is measured on that same subset too, for a like-for-like ratio.

    .venv/bin/python bench/retrieval_quality.py            # full
    .venv/bin/python bench/retrieval_quality.py --quick    # under a minute
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import os
import random
import sysconfig
import tempfile
import time
from pathlib import Path
from typing import Any

# One BLAS thread unless told otherwise: on a shared 2-core machine OpenBLAS's spinning worker
# threads made the MiniLM forward pass 4.6× slower (measured: 20 functions in 83 s vs 18 s).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from amr_async.moduledb import (
    Embedder,
    EmbedderUnavailable,
    HashEmbedder,
    MiniLMEmbedder,
    Module,
    ModuleDB,
    UnparseableCode,
    describe,
    extract_functions,
    stub_of,
)
from amr_async.moduledb._source import parse_function, signature_of

EVALPLUS = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "evalplus"


def stdlib_functions(limit_files: int | None) -> list[tuple[str, str]]:
    """(origin, code) of standard-library functions that parse on their own."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(
        p
        for p in root.rglob("*.py")
        if not {"test", "tests", "site-packages", "dist-packages", "idle_test"} & set(p.parts)
    )
    if limit_files:
        files = random.Random(0).sample(files, min(limit_files, len(files)))
    out: list[tuple[str, str]] = []
    for path in files:
        try:
            funcs = extract_functions(path.read_text(encoding="utf-8"))
        except (UnparseableCode, UnicodeDecodeError):
            continue
        out.extend((f"{path.relative_to(root)}", code) for code in funcs)
    return out


def evalplus_functions() -> list[tuple[str, str, str | None]]:
    """(task, code, query-or-None) for the canonical solutions; MBPP gets its task as query."""
    out: list[tuple[str, str, str | None]] = []
    for name in ("HumanEvalPlus.jsonl.gz", "MbppPlus.jsonl.gz"):
        path = EVALPLUS / name
        if not path.exists():
            continue
        with gzip.open(path, "rt", encoding="utf-8") as f:
            for line in f:
                task = json.loads(line)
                entry = task["entry_point"]
                if task["task_id"].startswith("HumanEval"):
                    source = task["prompt"] + task["canonical_solution"]
                    query = None
                else:
                    source = task["canonical_solution"]
                    text = task["prompt"].strip().strip('"').strip().splitlines()[0]
                    query = text
                try:
                    found = [c for c in extract_functions(source) if describe(c).name == entry]
                except UnparseableCode:
                    continue
                if not found:
                    continue
                code = found[0]
                if query is not None:
                    _, node = parse_function(code)
                    query = f'{signature_of(node)}\n    """{query}"""'
                out.append((task["task_id"], code, query))
    return out


async def evaluate(
    embedder: Embedder,
    corpus: list[tuple[str, str]],
    queries: dict[int, str],
    tmp: Path,
) -> dict[str, Any]:
    """Load `corpus`, ask each query (corpus index → stub), score the target's rank."""
    path = tmp / embedder.name.replace(":", "_")
    t0 = time.perf_counter()
    async with await ModuleDB.open(path, embedder, novelty_threshold=2.0) as db:
        ids: dict[int, int] = {}
        for start in range(0, len(corpus), 2000):
            chunk = corpus[start : start + 2000]
            result = await db.add_many([Module(code=c, item_id=o, stage="seed") for o, c in chunk])
            rejected = {r.index for r in result.rejected}
            admitted = [start + j for j in range(len(chunk)) if j not in rejected]
            ids.update(zip(admitted, result.added, strict=True))
        load_s = time.perf_counter() - t0
        asked = [(i, q) for i, q in queries.items() if i in ids]
        t0 = time.perf_counter()
        results = await db.search([q for _, q in asked], k=10)
        search_s = time.perf_counter() - t0
        stored = len(db)
    r1 = r5 = rr = 0.0
    for (i, _), hits in zip(asked, results, strict=True):
        rank = next((r for r, h in enumerate(hits, 1) if h.module.id == ids[i]), None)
        if rank is not None:
            r1 += rank == 1
            r5 += rank <= 5
            rr += 1.0 / rank
    n = max(len(asked), 1)
    return {
        "recall_at_1": round(r1 / n, 4),
        "recall_at_5": round(r5 / n, 4),
        "mrr": round(rr / n, 4),
        "queries": len(asked),
        "corpus": stored,
        "load_s": round(load_s, 2),
        "search_ms_per_query": round(1000 * search_s / n, 3),
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description="stub → implementation retrieval quality")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument(
        "--queries", type=int, default=None, help="queries (default 2000; quick 100)"
    )
    parser.add_argument(
        "--minilm-corpus", type=int, default=None, help="minilm subset (default 1000; quick 60)"
    )
    args = parser.parse_args()
    n_queries = args.queries or (100 if args.quick else 2000)
    minilm_size = args.minilm_corpus or (60 if args.quick else 1000)
    rng = random.Random(0)

    stdlib = stdlib_functions(limit_files=25 if args.quick else None)
    evalplus = evalplus_functions()
    corpus: list[tuple[str, str]] = stdlib + [(t, c) for t, c, _ in evalplus]
    # Candidate queries: functions with a real docstring, and every evalplus task.
    candidates: dict[int, str] = {}
    for i, (_, code) in enumerate(stdlib):
        try:
            info = describe(code)
        except UnparseableCode:
            continue
        if len(info.docstring) >= 20:
            candidates[i] = stub_of(code)
    for j, (_, code, query) in enumerate(evalplus):
        candidates[len(stdlib) + j] = query if query is not None else stub_of(code)
    chosen = dict(rng.sample(sorted(candidates.items()), min(n_queries, len(candidates))))

    out: dict[str, Any] = {
        "benchmark": "retrieval_quality",
        "cores": os.cpu_count(),
        "corpus_functions": len(corpus),
        "stdlib_functions": len(stdlib),
        "evalplus_functions": len(evalplus),
        "embedders": {},
    }
    with tempfile.TemporaryDirectory(prefix="bench-retrieval-") as tmpdir:
        tmp = Path(tmpdir)
        out["embedders"]["hash"] = await evaluate(HashEmbedder(384), corpus, chosen, tmp / "full")
        # Subset for minilm: the targets of a share of the queries plus random distractors.
        sub_queries = dict(rng.sample(sorted(chosen.items()), min(len(chosen), minilm_size // 5)))
        others = [i for i in range(len(corpus)) if i not in sub_queries]
        distract = rng.sample(others, min(len(others), minilm_size - len(sub_queries)))
        subset_idx = sorted(set(sub_queries) | set(distract))
        subset = [corpus[i] for i in subset_idx]
        remap = {old: new for new, old in enumerate(subset_idx)}
        sub_q = {remap[i]: q for i, q in sub_queries.items()}
        out["subset"] = {"corpus": len(subset), "queries": len(sub_q)}
        out["embedders"]["hash_subset"] = await evaluate(
            HashEmbedder(384), subset, sub_q, tmp / "sub"
        )
        try:
            minilm = MiniLMEmbedder()
        except EmbedderUnavailable as exc:
            out["embedders"]["minilm_subset"] = {"error": str(exc)}
        else:
            out["embedders"]["minilm_subset"] = await evaluate(minilm, subset, sub_q, tmp / "sub")
    print(json.dumps(out))


if __name__ == "__main__":
    asyncio.run(main())
