"""`amr-async export`: a run's output JSONL as OpenAI chat fine-tuning, Alpaca or ShareGPT."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import orjson

from amr_async.pipeline.export import ExportFormat, ExportOptions, export_records


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `export` command."""
    p = sub.add_parser(
        "export",
        help="convert a run's output JSONL to OpenAI chat / Alpaca / ShareGPT training data",
        description="Convert a run's output JSONL into a fine-tuning file. Exit code 0, or 3 "
        "when some input lines were not records (each named with file:line on stderr).",
    )
    p.add_argument("input", type=Path, help="the run's output JSONL (amr-async run --output)")
    p.add_argument("output", type=Path, help="the training file to write (replaced)")
    p.add_argument(
        "--format",
        choices=[f.value for f in ExportFormat],
        default=ExportFormat.OPENAI.value,
        help="openai (chat fine-tuning JSONL, default), alpaca, sharegpt",
    )
    p.add_argument("--system", help="a system message for every example (openai, sharegpt)")
    p.add_argument(
        "--include-truncated", action="store_true", help="also export truncated responses"
    )
    p.add_argument(
        "--require-final-check",
        action="store_true",
        help="export only records whose final check (run --final-check) passed",
    )
    p.add_argument("--json-array", action="store_true", help="one JSON array instead of JSONL")
    p.set_defaults(func=_export)


def _export(args: argparse.Namespace) -> int:
    if not args.input.is_file():
        print(f"amr-async export: {args.input} is not a readable file", file=sys.stderr)
        return 2
    options = ExportOptions(
        system=args.system,
        include_truncated=args.include_truncated,
        require_final_check=args.require_final_check,
        json_array=args.json_array,
    )
    try:
        report = export_records(args.input, args.output, ExportFormat(args.format), options)
    except OSError as exc:
        print(f"amr-async export: {exc}", file=sys.stderr)
        return 1
    for error in report.errors:
        print(error, file=sys.stderr)
    summary = {"written": report.written, "skipped": report.skipped, "output": str(args.output)}
    sys.stdout.write(orjson.dumps(summary).decode() + "\n")
    return 3 if report.errors else 0
