"""`amr-async db …`: inspect and fill a module database from the command line.

Commands: ``stats``, ``search QUERY``, ``import FILE``, ``export FILE``, ``seed DIR``.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import orjson

from amr_async.moduledb._db import DEFAULT_NOVELTY_THRESHOLD, ModuleDB
from amr_async.moduledb._embedders import make_embedder
from amr_async.moduledb._errors import ModuleDBError, UnparseableCode
from amr_async.moduledb._source import extract_functions
from amr_async.moduledb._store import StoreConfig
from amr_async.moduledb._types import AddResult, Module

DEFAULT_DB = "modules.db"


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``db`` command and its subcommands."""
    db = sub.add_parser(
        "db", help="functional-module database: stats, search, import, export, seed"
    )
    db.add_argument("--db", default=DEFAULT_DB, help=f"DB directory (default: {DEFAULT_DB})")
    db.add_argument(
        "--embedder", default="hash", choices=["hash", "minilm"], help="embedder (default: hash)"
    )
    db.add_argument(
        "--index",
        default="auto",
        choices=["auto", "exact", "hnsw", "usearch", "ivf"],
        help="index of a new DB (default: auto: exact when small, ivf when large)",
    )
    db.add_argument(
        "--vector-dtype", default="f16", choices=["f16", "int8"], help="vectors of a new DB"
    )
    db.add_argument(
        "--novelty-threshold",
        type=float,
        default=DEFAULT_NOVELTY_THRESHOLD,
        help="refuse modules at least this similar to a stored one",
    )
    dbsub = db.add_subparsers(dest="db_command", metavar="SUBCOMMAND", required=True)
    stats = dbsub.add_parser("stats", help="size and configuration (JSON)")
    stats.set_defaults(func=_run, action=_stats)
    search = dbsub.add_parser("search", help="most similar modules to a query text")
    search.add_argument("query")
    search.add_argument("-k", type=int, default=5)
    search.add_argument("--min-similarity", type=float, default=-1.0)
    search.add_argument(
        "--filter", action="append", default=[], metavar="KEY=VALUE", help="e.g. verdict=pass"
    )
    search.add_argument("--json", action="store_true", help="one JSON object per hit")
    search.set_defaults(func=_run, action=_search)
    imp = dbsub.add_parser("import", help="add the modules of a JSONL file")
    imp.add_argument("file", type=Path)
    imp.set_defaults(func=_run, action=_import)
    exp = dbsub.add_parser("export", help="write every module as JSONL")
    exp.add_argument("file", type=Path)
    exp.add_argument(
        "--no-vectors",
        action="store_true",
        help="leave the embeddings out (an import then embeds the code again)",
    )
    exp.set_defaults(func=_run, action=_export)
    seed = dbsub.add_parser(
        "seed",
        help="add the functions of a directory of Python files, or (--self-instruct N) "
        "N teacher-written functions that pass their teacher-written tests",
    )
    seed.add_argument("dir", type=Path, nargs="?")
    seed.add_argument("--batch", type=int, default=2000)
    from amr_async.pipeline.seed import add_seed_arguments  # the pipeline drives the teacher

    add_seed_arguments(seed)
    seed.set_defaults(func=_run, action=_seed)


def _run(args: argparse.Namespace) -> int:
    try:
        return int(asyncio.run(_with_db(args)))
    except (ModuleDBError, ValueError, OSError) as exc:
        print(f"amr-async db: {exc}", file=sys.stderr)
        return 1


async def _with_db(args: argparse.Namespace) -> int:
    embedder = make_embedder(args.embedder)
    config = StoreConfig(vector_dtype=args.vector_dtype, index=args.index)
    db = await ModuleDB.open(
        args.db, embedder, config=config, novelty_threshold=args.novelty_threshold
    )
    try:
        return int(await args.action(db, args))
    finally:
        await db.aclose()


def _dump(obj: Any) -> None:
    sys.stdout.write(orjson.dumps(obj).decode() + "\n")


async def _stats(db: ModuleDB, args: argparse.Namespace) -> int:
    _dump(asdict(await db.stats()))
    return 0


def _parse_filters(items: Sequence[str]) -> dict[str, str]:
    filters: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--filter {item!r}: expected KEY=VALUE")
        filters[key] = value
    return filters


async def _search(db: ModuleDB, args: argparse.Namespace) -> int:
    (hits,) = await db.search(
        [args.query],
        k=args.k,
        min_similarity=args.min_similarity,
        filters=_parse_filters(args.filter),
    )
    for rank, hit in enumerate(hits, start=1):
        m = hit.module
        if args.json:
            _dump({"rank": rank, "score": hit.score, **asdict(m)})
        else:
            print(f"{rank:>3}  {hit.score:.3f}  #{m.id}  {m.signature}")
    if not hits:
        print("no results", file=sys.stderr)
    return 0


def _summary(result: AddResult, **extra: Any) -> dict[str, Any]:
    reasons: dict[str, int] = {}
    for r in result.rejected:
        reasons[r.reason] = reasons.get(r.reason, 0) + 1
    return {**extra, "added": len(result.added), "rejected": reasons}


async def _import(db: ModuleDB, args: argparse.Namespace) -> int:
    result, errors = await db.import_jsonl(args.file)
    for err in errors:
        print(err, file=sys.stderr)
    _dump(_summary(result, bad_lines=len(errors)))
    return 0


async def _export(db: ModuleDB, args: argparse.Namespace) -> int:
    n = await db.export(args.file, vectors=not args.no_vectors)
    _dump({"exported": n, "file": str(args.file), "vectors": not args.no_vectors})
    return 0


def _extract_dir(root: Path) -> tuple[list[tuple[str, str]], list[str]]:
    """(origin, code) of every function in the .py files under `root`, and file errors."""
    found: list[tuple[str, str]] = []
    errors: list[str] = []
    for path in sorted(root.rglob("*.py")):
        try:
            text = path.read_text(encoding="utf-8")
            found.extend((str(path), code) for code in extract_functions(text))
        except (UnparseableCode, UnicodeDecodeError, OSError) as exc:
            errors.append(f"{path}: {exc}")
    return found, errors


async def _seed(db: ModuleDB, args: argparse.Namespace) -> int:
    if args.self_instruct is not None:
        if args.dir is not None:
            raise ValueError("db seed: give a directory or --self-instruct N, not both")
        from amr_async.pipeline.seed import seed_command

        summary = await seed_command(db, args)
        _dump(summary)
        return 0 if summary["added"] >= summary["self_instruct"] else 3
    if args.dir is None:
        raise ValueError("db seed: give a directory or --self-instruct N")
    if not args.dir.is_dir():
        raise ValueError(f"{args.dir}: not a directory")
    found, errors = await asyncio.to_thread(_extract_dir, args.dir)
    for err in errors:
        print(f"skipped {err}", file=sys.stderr)
    added: list[int] = []
    reasons: dict[str, int] = {}
    for start in range(0, len(found), args.batch):
        chunk = found[start : start + args.batch]
        result = await db.add_many(
            [Module(code=code, stage="seed", item_id=origin) for origin, code in chunk]
        )
        added.extend(result.added)
        for r in result.rejected:
            reasons[r.reason] = reasons.get(r.reason, 0) + 1
    _dump(
        {
            "files_skipped": len(errors),
            "functions": len(found),
            "added": len(added),
            "rejected": reasons,
        }
    )
    return 0
