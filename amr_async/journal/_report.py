"""Reading a journal without writing it: run records, cost totals per run and per stage.

Opens the file read-only and takes no lock, so it works while a run is writing (WAL
readers never block the writer, and see its last commit).
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from amr_async.journal._cost import CostTotals
from amr_async.journal._errors import JournalError
from amr_async.journal._store import RunInfo, _run_info


@dataclass(slots=True, frozen=True)
class RunSummary:
    """One run with what it spent and how far its items got."""

    info: RunInfo
    totals: CostTotals
    by_stage: dict[str, CostTotals]
    items: dict[str, int]  # state -> count

    def as_dict(self) -> dict[str, Any]:
        i = self.info
        return {
            "run_id": i.run_id,
            "status": i.status,
            "message": i.message,
            "created_at": i.created_at,
            "started_at": i.started_at,
            "stopped_at": i.stopped_at,
            "attempts": i.attempts,
            "output": i.output_path,
            "config": i.config,
            "items": self.items,
            "totals": self.totals.as_dict(),
            "by_stage": {stage: t.as_dict() for stage, t in self.by_stage.items()},
        }


def read_runs(path: Path | str) -> list[RunSummary]:
    """Every run in the journal at `path`, oldest first, with its totals.

    Raises:
        JournalError: the file does not exist or is not a journal.
    """
    path = Path(path)
    if not path.exists():
        raise JournalError(f"no journal at {path}")
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        runs = [
            _run_info(row)
            for row in conn.execute(
                "SELECT run_id, config, status, created_at, started_at, stopped_at, attempts, "
                "message, output_path, output_offset FROM runs ORDER BY created_at"
            )
        ]
        out = []
        for info in runs:
            by_stage = {
                r[0]: CostTotals(r[1], r[2], r[3], r[4])
                for r in conn.execute(
                    "SELECT coalesce(stage, ''), count(*), sum(input_tokens), "
                    "sum(output_tokens), sum(cost_usd) FROM calls WHERE run_id = ? "
                    "GROUP BY 1 ORDER BY 1",
                    (info.run_id,),
                )
            }
            totals = CostTotals()
            for t in by_stage.values():
                totals.calls += t.calls
                totals.input_tokens += t.input_tokens
                totals.output_tokens += t.output_tokens
                totals.cost_usd += t.cost_usd
            items = {
                state: int(n)
                for state, n in conn.execute(
                    "SELECT state, count(*) FROM items WHERE run_id = ? GROUP BY state",
                    (info.run_id,),
                )
            }
            out.append(RunSummary(info, totals, by_stage, items))
        return out
    except sqlite3.DatabaseError as exc:
        raise JournalError(f"cannot read journal {path}: {exc}") from None
    finally:
        conn.close()
