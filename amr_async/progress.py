"""Live progress of a run: a rich panel on a terminal, one log line every few seconds otherwise.

What it shows: items done / failed / rejected of the total, per-stage counts, calls in flight,
achieved requests and tokens per minute against the limits the dispatcher currently aims
for, retries by outcome class, $ spent and projected, and the ETA. At the end a summary table
(always, unless `--quiet`). Everything goes to stderr, so stdout stays clean for pipes.

The display polls a `Sample` (a cheap read of the runner's and dispatcher's counters) from a
task on the run's own loop: no thread, no work on the hot path.
"""

from __future__ import annotations

import argparse
import asyncio
import enum
import math
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, TextIO

from amr_async.scheduler import MetricsSnapshot

# rich (~70 ms of imports) is imported where a panel or table is drawn, not at start-up.
if TYPE_CHECKING:
    from rich.console import Console
    from rich.live import Live
    from rich.table import Table

    from amr_async.pipeline.runner import Runner
    from amr_async.scheduler import Dispatcher


class Mode(enum.Enum):
    """How progress is shown."""

    LIVE = "live"  # rich panel, refreshed in place (a terminal)
    LOG = "log"  # one plain line every `interval_s` (no terminal: CI, files, pipes)
    OFF = "off"  # `--quiet`: nothing but the caller's own final line


def add_progress_flags(parser: argparse.ArgumentParser) -> None:
    """`--quiet` and `--progress-interval` for a command that shows progress."""
    parser.add_argument(
        "--quiet", action="store_true", help="no live progress and no summary table"
    )
    parser.add_argument(
        "--progress-interval",
        type=float,
        default=5.0,
        metavar="S",
        help="seconds between progress lines when stderr is not a terminal (default 5)",
    )


def progress_mode(args: argparse.Namespace, stream: TextIO | None = None) -> tuple[Mode, float]:
    """The mode the flags and the terminal call for, and the log interval."""
    stream = sys.stderr if stream is None else stream
    interval = max(0.1, float(getattr(args, "progress_interval", 5.0)))
    if getattr(args, "quiet", False):
        return Mode.OFF, interval
    return (Mode.LIVE if stream.isatty() else Mode.LOG), interval


def count_lines(path: Path) -> int:
    """Non-blank-ish line count of `path` (newlines, plus a last line without one)."""
    count, last = 0, b"\n"
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            count += chunk.count(b"\n")
            last = chunk[-1:]
    return count + (last != b"\n")


@dataclass(slots=True, frozen=True)
class Sample:
    """One look at a run.

    Attributes:
        elapsed_s: since the display started.
        total: input lines (None when unknown, e.g. a stream).
        done: items finished in this attempt.
        already_done: items found finished in the journal (resume).
        failed: items that ended without a record.
        rejected: input lines rejected.
        in_progress: items queued or running.
        stages: stages completed in this attempt, by name, in pipeline order.
        spent_usd: $ of the run so far (earlier attempts included).
        metrics: the dispatcher's counters.
        journal_hits: teacher calls answered from the journal in this attempt.
    """

    elapsed_s: float
    total: int | None
    done: int
    already_done: int
    failed: int
    rejected: int
    in_progress: int
    stages: Mapping[str, int] = field(default_factory=dict)
    spent_usd: float = 0.0
    metrics: MetricsSnapshot | None = None
    journal_hits: int = 0

    @property
    def processed(self) -> int:
        return self.done + self.failed

    @property
    def remaining(self) -> int | None:
        if self.total is None:
            return None
        return max(0, self.total - self.already_done - self.rejected - self.processed)

    @property
    def eta_s(self) -> float | None:
        """Seconds left at the pace so far; None until something finished."""
        if self.remaining is None or self.processed == 0 or self.elapsed_s <= 0:
            return None
        return self.remaining * self.elapsed_s / self.processed

    @property
    def projected_usd(self) -> float | None:
        """$ at the end, at this attempt's $ per processed item so far."""
        if self.remaining is None or self.processed == 0 or self.metrics is None:
            return None
        return self.spent_usd + self.metrics.cost_usd / self.processed * self.remaining


def _duration(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "?"
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def _rate(achieved: float, limit: float) -> str:
    shown = f"{achieved:,.0f}"
    if limit > 0 and math.isfinite(limit):
        return f"{shown}/{limit:,.0f}"
    return f"{shown} (no limit known)"


def _money(value: float | None) -> str:
    return "?" if value is None else f"${value:,.4f}"


def _retries(m: MetricsSnapshot | None) -> str:
    if m is None or not m.retries_by_kind:
        return "none"
    return ", ".join(f"{k} {n}" for k, n in sorted(m.retries_by_kind.items()))


def render_line(s: Sample) -> str:
    """The plain progress line (no terminal)."""
    total = "?" if s.total is None else f"{s.total:,}"
    stages = " ".join(f"{k} {v}" for k, v in s.stages.items()) or "-"
    m = s.metrics
    parts = [
        f"progress {_duration(s.elapsed_s)}: {s.done + s.already_done:,}/{total} done "
        f"({s.already_done:,} earlier), {s.failed:,} failed, {s.rejected:,} rejected",
        f"stages {stages}",
        f"in flight {m.in_flight if m else 0} (items {s.in_progress})",
    ]
    if m is not None:
        parts.append(
            f"rpm {_rate(m.achieved_rpm, m.limit_rpm)}, tpm {_rate(m.achieved_tpm, m.limit_tpm)}"
        )
    parts += [
        f"retries {_retries(m)}",
        f"spent {_money(s.spent_usd)}, projected {_money(s.projected_usd)}",
        f"ETA {_duration(s.eta_s)}",
    ]
    return " | ".join(parts)


def render_panel(s: Sample) -> Table:
    """The live panel (terminal)."""
    from rich.table import Table

    table = Table(title="amr-async run", show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column()
    total = "?" if s.total is None else f"{s.total:,}"
    table.add_row(
        "items",
        f"{s.done + s.already_done:,}/{total} done ({s.already_done:,} earlier), "
        f"{s.failed:,} failed, {s.rejected:,} rejected, {s.in_progress:,} in progress",
    )
    table.add_row("stages", "  ".join(f"{k} {v:,}" for k, v in s.stages.items()) or "-")
    m = s.metrics
    if m is not None:
        table.add_row("in flight", f"{m.in_flight:,} calls ({m.waiting:,} waiting for capacity)")
        table.add_row("requests/min", _rate(m.achieved_rpm, m.limit_rpm))
        table.add_row("tokens/min", _rate(m.achieved_tpm, m.limit_tpm))
        table.add_row("tokens", f"{m.tokens_in:,} in / {m.tokens_out:,} out")
    table.add_row("retries", _retries(m))
    table.add_row("$", f"{_money(s.spent_usd)} spent, {_money(s.projected_usd)} projected")
    table.add_row("time", f"{_duration(s.elapsed_s)} elapsed, ETA {_duration(s.eta_s)}")
    return table


def summary_table(s: Sample) -> Table:
    """The table printed when the run ends."""
    from rich.table import Table

    table = Table(title="amr-async run: summary")
    table.add_column("measure")
    table.add_column("value", justify="right")
    m = s.metrics
    rows: list[tuple[str, str]] = [
        ("items done (this attempt)", f"{s.done:,}"),
        ("items done earlier (journal)", f"{s.already_done:,}"),
        ("items failed", f"{s.failed:,}"),
        ("input lines rejected", f"{s.rejected:,}"),
    ]
    rows += [(f"stage {k}", f"{v:,}") for k, v in s.stages.items()]
    if m is not None:
        rows += [
            ("teacher calls sent (retries included)", f"{m.sent:,}"),
            ("answered from the journal", f"{s.journal_hits:,}"),
            ("retries", _retries(m)),
            ("tokens in / out", f"{m.tokens_in:,} / {m.tokens_out:,}"),
        ]
    rows += [
        ("$ spent (run total)", _money(s.spent_usd)),
        ("wall time", _duration(s.elapsed_s)),
    ]
    if s.elapsed_s > 0 and s.processed:
        rows.append(("items per second", f"{s.processed / s.elapsed_s:,.2f}"))
    for name, value in rows:
        table.add_row(name, value)
    return table


class Progress:
    """Shows a run's progress while it is open (`async with`), then its summary.

    Not shared between runs; lives on the run's loop.

    Args:
        sample: reads the counters (cheap, called every refresh).
        mode: live, log or off.
        interval_s: seconds between log lines (`Mode.LOG`).
        stream: where to write (stderr when None).
        clock: monotonic seconds (a fake one in tests).
    """

    _LIVE_REFRESH_S = 0.5

    def __init__(
        self,
        sample: Callable[[float], Sample],
        *,
        mode: Mode,
        interval_s: float = 5.0,
        stream: TextIO | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._sample = sample
        self.mode = mode
        self.interval_s = interval_s
        self._stream = sys.stderr if stream is None else stream
        self._clock = clock
        self._start = 0.0
        self._task: asyncio.Task[None] | None = None
        self._live: Live | None = None
        self._console_made: Console | None = None

    @property
    def _console(self) -> Console:
        if self._console_made is None:
            from rich.console import Console

            self._console_made = Console(file=self._stream, highlight=False)
        return self._console_made

    @classmethod
    def for_run(
        cls,
        runner: Runner,
        dispatcher: Dispatcher,
        *,
        total: int | None,
        mode: tuple[Mode, float],
        stream: TextIO | None = None,
    ) -> Progress:
        """A display of `runner` and `dispatcher`."""
        order = [stage.name for stage in runner.strategy.stages]

        def sample(elapsed: float) -> Sample:
            r = runner.report
            counts = runner.stage_counts
            return Sample(
                elapsed_s=elapsed,
                total=total,
                done=r.done,
                already_done=r.already_done,
                failed=r.failed,
                rejected=runner.rejected_so_far,
                in_progress=runner.in_progress,
                stages={name: counts.get(name, 0) for name in order},
                spent_usd=runner.teacher.totals.cost_usd,
                metrics=dispatcher.metrics(),
                journal_hits=runner.teacher.journal_hits,
            )

        return cls(sample, mode=mode[0], interval_s=mode[1], stream=stream)

    def now(self) -> Sample:
        """A sample taken now."""
        return self._sample(self._clock() - self._start)

    async def __aenter__(self) -> Progress:
        self._start = self._clock()
        if self.mode is Mode.LIVE:
            from rich.live import Live

            self._live = Live(render_panel(self.now()), console=self._console, auto_refresh=False)
            self._live.start()
        if self.mode is not Mode.OFF:
            self._task = asyncio.create_task(self._show())
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._live is not None:
            self._live.update(render_panel(self.now()), refresh=True)
            self._live.stop()
        if self.mode is not Mode.OFF:
            self._console.print(summary_table(self.now()))

    async def _show(self) -> None:
        if self.mode is Mode.LIVE:
            assert self._live is not None
            while True:
                await asyncio.sleep(self._LIVE_REFRESH_S)
                self._live.update(render_panel(self.now()), refresh=True)
        while True:
            await asyncio.sleep(self.interval_s)
            print(render_line(self.now()), file=self._stream, flush=True)
