"""`amr-async instructions self-instruct|evolve`: generate coding questions with the teacher.

Both read and write the `run` input format (JSONL, one ``{"id", "instruction"}`` per line,
extra fields kept as provenance), so their output feeds `amr-async run` directly. Bad input
lines go to `OUTPUT.rejects.jsonl` (file, line, reason) and the rest goes on. Every call is
journaled: after a crash, run the same command again with the same `--journal`; the calls
already made are answered from it, and the output is written afresh.

Exit codes: 0 done, 1 error, 2 usage, 3 partial (rejected lines, or fewer questions than
asked), 7 the teacher refuses every call (auth, quota).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Any, BinaryIO

import orjson

from amr_async.journal import Journal, JournalError
from amr_async.pipeline._generation import (
    Dedup,
    TeacherSettings,
    add_teacher_arguments,
    journaled_teacher,
    open_run,
)
from amr_async.pipeline._input import InputItem, InputReader, Reject
from amr_async.pipeline._prompts import PromptError, load_templates
from amr_async.pipeline._teacher import TeacherUnavailable
from amr_async.pipeline.instructions import GenerationReport, evolve, self_instruct
from amr_async.pipeline.runner import ExitCode


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `instructions` command and its subcommands."""
    p = sub.add_parser(
        "instructions",
        help="generate coding instructions: self-instruct from seeds, Evol-Instruct levels",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    inner = p.add_subparsers(dest="instructions_command", metavar="SUBCOMMAND", required=True)
    si = inner.add_parser("self-instruct", help="N new questions from a seed JSONL")
    si.add_argument("--seeds", type=Path, required=True, help="seed questions (input JSONL)")
    si.add_argument("--n", type=int, required=True, help="new questions wanted")
    si.add_argument("--max-calls", type=int, help="give up after this many calls (4n + round)")
    si.add_argument(
        "--machine-examples",
        type=int,
        default=2,
        help="of the 8 examples per prompt, how many are generated ones (default 2)",
    )
    ev = inner.add_parser("evolve", help="rewrite each question LEVELS times, harder each time")
    ev.add_argument("--input", type=Path, required=True, help="questions (input JSONL)")
    ev.add_argument("--levels", type=int, default=3, help="complexity levels (default 3)")
    for q in (si, ev):
        q.add_argument("--output", type=Path, required=True, help="output JSONL (replaced)")
        q.add_argument(
            "--max-similarity",
            type=float,
            default=0.9,
            help="near-duplicate cosine (hash embedding) at which a question is dropped (0.9)",
        )
        add_teacher_arguments(q, temperature=0.7)
    si.set_defaults(func=_main, action=_self_instruct)
    ev.set_defaults(func=_main, action=_evolve)


def _main(args: argparse.Namespace) -> int:
    name = f"amr-async instructions {args.instructions_command}"
    if args.round_size < 1:
        print(f"{name}: --round-size must be >= 1", file=sys.stderr)
        return ExitCode.USAGE
    try:
        templates = load_templates(args.prompts)
        dedup = Dedup(args.max_similarity)
    except (PromptError, ValueError) as exc:
        print(f"{name}: {exc}", file=sys.stderr)
        return ExitCode.USAGE
    source = args.seeds if args.instructions_command == "self-instruct" else args.input
    if not source.is_file():
        print(f"{name}: {source} is not a readable file", file=sys.stderr)
        return ExitCode.USAGE
    try:
        journal = Journal.open(args.journal)
    except JournalError as exc:
        print(f"{name}: {exc}", file=sys.stderr)
        return ExitCode.ERROR
    try:
        config = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
        config = {k: v for k, v in config.items() if k not in ("func", "action")}
        run = open_run(journal, args.run_id or f"instructions-{args.instructions_command}", config)
        report, rejected, short = asyncio.run(args.action(args, run, templates, dedup))
    except TeacherUnavailable as exc:
        print(
            f"{name}: {exc}; run again once fixed (answers so far are journaled)", file=sys.stderr
        )
        return ExitCode.TEACHER
    except (JournalError, OSError, ValueError) as exc:
        print(f"{name}: {exc}", file=sys.stderr)
        return ExitCode.ERROR
    finally:
        dedup.close()
        journal.close()
    summary = {
        "written": report.written,
        "calls": report.calls,
        "eliminated": report.eliminated,
        "rejected_lines": rejected,
        "output": str(args.output),
    }
    sys.stdout.write(orjson.dumps(summary).decode() + "\n")
    return ExitCode.PARTIAL if rejected or short else ExitCode.OK


def _valid(
    batch: list[InputItem | Reject], seen: dict[str, int]
) -> tuple[list[InputItem], list[Reject]]:
    """The items of a batch, and its rejects plus lines whose id was seen before."""
    items: list[InputItem] = []
    rejects: list[Reject] = []
    for entry in batch:
        if isinstance(entry, Reject):
            rejects.append(entry)
        elif entry.item_id in seen:
            first = seen[entry.item_id]
            rejects.append(Reject(entry.line_no, f"field 'id': duplicate of line {first}"))
        else:
            seen[entry.item_id] = entry.line_no
            items.append(entry)
    return items, rejects


def _next_batch(reader: InputReader, size: int, seen: dict[str, int]) -> list[InputItem] | None:
    """Up to `size` lines' valid items (rejects written); None at the end of the input."""
    batch = reader.read_batch(size)
    if not batch:
        return None
    items, rejects = _valid(batch, seen)
    reader.write_rejects(rejects)
    return items


def _read_items(path: Path, rejects_path: Path) -> tuple[list[InputItem], int]:
    """Every valid line of `path` (the seeds: a small file), and the count rejected."""
    reader = InputReader(path, rejects_path)
    items: list[InputItem] = []
    seen: dict[str, int] = {}
    try:
        while (batch := _next_batch(reader, 1024, seen)) is not None:
            items.extend(batch)
    finally:
        reader.close()
    return items, reader.rejected


class _Writer:
    """Appends records to the output JSONL (on a worker thread, flushed per round)."""

    def __init__(self, path: Path) -> None:
        self._file: BinaryIO = path.open("wb")

    async def __call__(self, record: dict[str, Any]) -> None:
        self._file.write(orjson.dumps(record) + b"\n")

    def close(self) -> None:
        self._file.close()


async def _self_instruct(
    args: argparse.Namespace, run: Any, templates: Any, dedup: Dedup
) -> tuple[GenerationReport, int, bool]:
    if args.n < 1:
        raise ValueError("--n must be >= 1")
    seeds, rejected = await asyncio.to_thread(
        _read_items, args.seeds, Path(f"{args.output}.rejects.jsonl")
    )
    if not seeds:
        raise ValueError(f"{args.seeds}: no valid seed question")
    writer = _Writer(args.output)
    try:
        async with journaled_teacher(args, run) as teacher:
            report = await self_instruct(
                teacher, templates["instruction"], seeds, n=args.n,
                settings=TeacherSettings(args.model, args.max_tokens, args.temperature),
                emit=writer, dedup=dedup, seed=args.seed, round_size=args.round_size,
                max_calls=args.max_calls, machine_examples=args.machine_examples,
            )  # fmt: skip
    finally:
        writer.close()
    await run.stop("finished" if report.written >= args.n else "partial")
    return report, rejected, report.written < args.n


async def _evolve(
    args: argparse.Namespace, run: Any, templates: Any, dedup: Dedup
) -> tuple[GenerationReport, int, bool]:
    if args.levels < 1:
        raise ValueError("--levels must be >= 1")
    # Streamed: one round of input lines at a time goes through every level.
    reader = await asyncio.to_thread(InputReader, args.input, Path(f"{args.output}.rejects.jsonl"))
    seen: dict[str, int] = {}
    total = GenerationReport()
    writer = _Writer(args.output)
    settings = TeacherSettings(args.model, args.max_tokens, args.temperature)
    try:
        async with journaled_teacher(args, run) as teacher:
            while (
                items := await asyncio.to_thread(_next_batch, reader, args.round_size, seen)
            ) is not None:
                report = await evolve(
                    teacher, templates["evol-instruct"], items, levels=args.levels,
                    settings=settings, emit=writer, dedup=dedup, seed=args.seed,
                )  # fmt: skip
                total.written += report.written
                total.calls += report.calls
                for reason, count in report.eliminated.items():
                    total.eliminated[reason] = total.eliminated.get(reason, 0) + count
    finally:
        writer.close()
        await asyncio.to_thread(reader.close)
    await run.stop("finished")
    return total, reader.rejected, False
