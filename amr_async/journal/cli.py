"""`amr-async runs`: what a journal holds: runs, their status, items and cost per stage."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import orjson

from amr_async.journal._errors import JournalError
from amr_async.journal._report import read_runs


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `runs` command."""
    p = sub.add_parser(
        "runs",
        help="list the runs in a journal with their status, items, tokens and $ per stage",
        description="List a journal's runs (read-only; works while a run is writing).",
    )
    p.add_argument("--journal", type=Path, required=True, help="the SQLite journal")
    p.add_argument("--json", action="store_true", help="one JSON object per run")
    p.set_defaults(func=_runs)


def _runs(args: argparse.Namespace) -> int:
    try:
        summaries = read_runs(args.journal)
    except JournalError as exc:
        print(f"amr-async runs: {exc}", file=sys.stderr)
        return 1
    for s in summaries:
        if args.json:
            print(orjson.dumps(s.as_dict()).decode())
            continue
        t = s.totals
        items = ", ".join(f"{n} {state}" for state, n in sorted(s.items.items())) or "no items"
        print(
            f"{s.info.run_id}  {s.info.status:<11} attempts={s.info.attempts}  {items}  "
            f"{t.calls} calls  {t.tokens} tokens  ${t.cost_usd:.4f}"
        )
        for stage, st in s.by_stage.items():
            print(
                f"    stage {stage or '-':<12} {st.calls} calls  {st.tokens} tokens  "
                f"${st.cost_usd:.4f}"
            )
    return 0
