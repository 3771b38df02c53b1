"""Training workload for the profile-guided (PGO) build of the Rust extension.

Usage: python bench/pgo_train.py [--module PATH] [--files all|even|odd]

Run by `make ext` against the instrumented extension (built with
`-Cprofile-generate`); LLVM then lays out and inlines the release build for the
branches this run takes. It calls every binding that does real work on inputs every
machine that runs `make` has: the standard library's functions (hashed, sized,
normal forms) and sources (token counts, embeddings), and the EvalPlus solutions
wrapped as LLM answers (extraction). The similarity kernels get a small run of each
dtype: code PGO never sees is laid out as cold, so leaving them out would slow them.

`--module` loads a given build of `_core` instead of the installed one; `--files`
trains on half of the stdlib files, so that a held-out half can check the gain is not
specific to the training inputs.
"""

from __future__ import annotations

import argparse
import gzip
import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import numpy as np

from amr_async.function_corpus import evalplus_functions, functions_in_source, stdlib_files

EVALPLUS = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "evalplus"


def load_core(path: str | None) -> ModuleType:
    """`amr_async._core`, or the build at `path` loaded under a name of its own."""
    if path is None:
        from amr_async import _core

        return _core
    # The loader calls PyInit_<last component>, so the name must end in `_core`.
    name = f"core_{abs(hash(path))}._core"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"{path}: not a loadable extension module")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def sources(files: str) -> list[str]:
    """Text of the readable stdlib files chosen by `files` (all, even- or odd-numbered)."""
    out = []
    for path in stdlib_files():
        try:
            out.append(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, OSError):
            continue
    return out if files == "all" else out[files == "odd" :: 2]


def answers() -> list[str]:
    """HumanEval+ solutions wrapped in prose and fences, with a few messy variants."""
    out = []
    with gzip.open(EVALPLUS / "HumanEvalPlus.jsonl.gz", "rt", encoding="utf-8") as fh:
        for line in fh:
            row = json.loads(line)
            code = row["prompt"] + row["canonical_solution"]
            out.append(f"Here is a solution.\n\n```python\n{code}\n```\n\nIt loops once.\n")
            out.append(code.replace("\n", "\r\n"))  # no fence, CRLF
            out.append(f"```py\n{code}\n    def broken(:\n```\n")  # syntax error in a block
    return out


def train(core: ModuleType, files: str) -> dict[str, int]:
    texts = sources(files)
    units = [u for text in texts for u in functions_in_source(text)]
    units.extend(evalplus_functions(EVALPLUS))
    hashed = core.ast_hash(units, threads=1)
    core.ast_hash(units[::4], include_name=True, threads=1)
    core.ast_size(units[::4], threads=1)
    for code in units[::50]:
        core.ast_normal_form(code)
    found = core.extract_functions_batch(answers(), threads=1)
    tokens = 0
    for encoding in ("cl100k_base", "o200k_base", "anthropic_estimate"):
        tokens += sum(core.count_tokens(texts[::3], encoding))
    core.hash_embed(units[::10])
    rng = np.random.default_rng(0)
    queries = rng.standard_normal((8, 384), dtype=np.float32)
    f32 = rng.standard_normal((20_000, 384), dtype=np.float32)
    int8 = rng.integers(-127, 128, size=(20_000, 384), dtype=np.int8)
    scales = rng.uniform(0.001, 0.01, size=20_000).astype(np.float32)
    for _ in range(3):
        core.topk(queries, f32, 10)
        core.topk(queries, f32.astype(np.float16), 10)
        core.topk(queries, int8, 10, scales)
        core.topk(queries[:1], f32, 10)
    rows = rng.integers(0, 20_000, size=4_000, dtype=np.int64)
    offsets = np.array([0, 1_000, 2_000, 3_000, 4_000], dtype=np.int64)
    core.topk_rows(queries[:4], f32, 10, rows, offsets)
    core.topk_rows(queries[:4], int8, 10, rows, offsets, scales)
    core.cosine_matrix(queries, f32[:2_000])
    # The IVF code scan (FastScan layout): 1-bit codes of 20,000 rows in 64 spans per query.
    codes = rng.integers(0, 2**63, size=(20_000, 6), dtype=np.uint64)
    blocks = np.zeros((20_000 // 32, 32 * 8 * 6), np.uint8)
    core.fastscan_pack(blocks, np.arange(20_000, dtype=np.int64), codes)
    factors = rng.uniform(0.01, 1.0, size=(20_000, 2)).astype(np.float32)
    ids = np.arange(20_000, dtype=np.int64)
    spans = np.stack([np.arange(0, 20_000, 320), np.full(63, 300)], axis=1)[:62].astype(np.int64)
    bounds = np.array([0, 31, 62], dtype=np.int64)
    for _ in range(3):
        core.code_topk_fast(queries[:2], blocks, factors, ids, spans, bounds, 256)
    core.code_topk(queries[:2], codes, factors, ids, spans, bounds, 256)
    core.fastscan_unpack(blocks, ids[:1_000])
    # The IVF query: the probe, the rotation, and the fused lone query (62 lists of 300 rows
    # in the blocks above, re-ranked on f16 rows), as `IvfIndex` calls them.
    centroids = rng.standard_normal((62, 384), dtype=np.float32)
    rotation = rng.standard_normal((384, 384), dtype=np.float32)
    starts = np.arange(0, 62 * 320, 320, dtype=np.int64)
    sizes = np.full(62, 300, dtype=np.int64)
    f16 = f32.astype(np.float16)
    compact = core.ivf_compact(centroids)  # the int8 centroids the probe reads
    core.ivf_probe_compact(queries, *compact, 16)
    core.ivf_rotate(queries, rotation)
    for i in range(len(queries)):
        for nprobe, rerank in ((16, 128), (62, 0)):
            core.ivf_search(
                queries[i : i + 1], *compact, rotation, starts, sizes, blocks, factors, ids,
                f16, 10, nprobe, rerank,
            )  # fmt: skip
    return {
        "functions": len(units),
        "hashed": sum(h is not None for h in hashed),
        "extracted": sum(map(len, found)),
        "tokens": tokens,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--module", help="path of a built _core extension to train")
    parser.add_argument("--files", choices=("all", "even", "odd"), default="all")
    args = parser.parse_args()
    print(json.dumps(train(load_core(args.module), args.files)), file=sys.stderr)


if __name__ == "__main__":
    main()
