"""Benchmark: the journal's durable write rate, and what journaling costs the engine.

Usage: python bench/journal.py [--quick]

- `writes_per_s`: journaled teacher answers per second. Many tasks each await
  `RunJournal.record_call` (the call is committed before the await returns; WAL with
  `synchronous=NORMAL` by default, `--synchronous FULL` adds an fsync per commit), so this
  is the rate at which answers can be made durable with group commit.
- `journal_overhead`: throughput of the direct-strategy runner with the journal divided by
  its throughput without one (plain output file), against a zero-latency emulator in its
  own process, same input, runs alternated. Values near 1 mean the journal costs little.
  The runner keeps `--concurrency` items in flight: 64 by default, the engine's own default
  (`RunSettings`, config key `concurrency`). With a zero-latency teacher an item's cycle is
  only tens of milliseconds, so the wait for its answer's group commit (the window plus two
  event-loop turns) is a large share of it at 64; the full run also reports the ratio at
  256 and 1024 items in flight (`journal_overhead_by_concurrency`), where that wait is
  hidden and CPU is what remains.
- `journal_overhead_with_latency`: the same ratio with the emulator answering after a
  lognormal delay (`latency`, median 0.5 s; 384 items): what a run against a real teacher
  pays.

Where the time goes (with the journal, medians): `commit_wait_ms` (from `record_call` to
its commit being known on the loop, timed for one call in 8 so that the timing costs the
journaled runs little loop CPU), `loop_cpu_us_per_item` (the event-loop thread, with and
without the journal), `writer_cpu_us_per_item` (the writer thread),
`loop_switches_per_item` (context switches of the event-loop thread: the journal's thread
hand-offs, e.g. the GIL after each SQLite step) and `emulator_cpu_us_per_item` (the
emulator process, not in any other figure, but it shares the cores).

Also reported, because a shared machine's load swings wall-clock rates: the process CPU
time per journaled call and per item (all threads), from which `writes_per_cpu_s` and
`journal_overhead_cpu` follow. Medians of repetitions; ratios come from the same run.
Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from amr_async.journal import Journal, request_key
from amr_async.pipeline import JournaledTeacher, Runner, RunSettings
from amr_async.pipeline.strategies import DirectStrategy
from amr_async.scheduler import Dispatcher, Endpoint
from amr_async.teacher.openai_chat import OpenAIClient
from amr_async.teacher.types import ChatRequest, Message, Outcome, OutcomeKind, Provider, Usage

MODEL = "gpt-4o-mini"
# Teacher latency of the second comparison: lognormal, median 0.5 s (an answer of a few
# hundred tokens takes seconds from hosted APIs and about that from a local server), over
# fewer items so that a run stays a few seconds long.
LATENCY = "lognormal:0.5,0.5"
LATENCY_ITEMS = 384


async def _writes(
    path: Path, calls: int, tasks: int, synchronous: str
) -> tuple[float, float, float]:
    """Journaled calls per second, mean rows per commit, process CPU µs per call."""
    keys = [
        request_key(
            Provider.OPENAI,
            ChatRequest(model=MODEL, messages=(Message("user", f"q{i}"),), max_tokens=100),
        )
        for i in range(calls)
    ]
    answer = Outcome(OutcomeKind.OK, text="x" * 600, finish_reason="stop", usage=Usage(120, 150))
    with Journal.open(path, synchronous=synchronous) as journal:
        run = journal.start_run(config={"bench": "writes"})
        batches0, rows0 = journal.writer.batches, journal.writer.rows_committed
        it = iter(range(calls))

        async def worker() -> None:
            for i in it:
                await run.record_call(
                    keys[i],
                    answer,
                    provider="openai",
                    model=MODEL,
                    cost_usd=0.0001,
                    item_id=str(i),
                    stage="direct",
                )

        start, cpu = time.perf_counter(), time.process_time()
        async with asyncio.TaskGroup() as tg:
            for _ in range(tasks):
                tg.create_task(worker())
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
        rows = journal.writer.rows_committed - rows0
        batches = journal.writer.batches - batches0
    return calls / elapsed, rows / max(batches, 1), cpu / calls * 1e6


@dataclass(slots=True)
class _EngineRun:
    items_per_s: float
    cpu_ms_per_item: float  # the whole process
    loop_cpu_us_per_item: float  # the event-loop thread
    writer_cpu_us_per_item: float = 0.0  # the journal's writer thread
    commit_wait_ms: float = 0.0  # median, record_call -> committed (seen on the loop)
    loop_switches_per_item: float = 0.0  # context switches of the event-loop thread
    emulator_cpu_us_per_item: float = 0.0  # the emulator process


def _switches() -> int:
    """Context switches of the calling thread so far (0 where /proc is missing)."""
    try:
        with open("/proc/thread-self/status") as f:
            return sum(int(line.split()[1]) for line in f if "ctxt_switches" in line)
    except OSError:
        return 0


def _process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of process `pid` so far (0 where /proc is missing)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _thread_cpu_s(thread: threading.Thread) -> float:
    assert thread.ident is not None
    return time.clock_gettime(time.pthread_getcpuclockid(thread.ident))


async def _engine(
    base_url: str,
    src: Path,
    work: Path,
    *,
    journaled: bool,
    conc: int,
    synchronous: str,
    emulator_pid: int | None = None,
) -> _EngineRun:
    """One run of the direct strategy over `src`: rates and where the CPU went."""
    client = OpenAIClient(base_url=base_url, api_key="")
    dispatcher = Dispatcher([Endpoint(client)])
    strategy = DirectStrategy(model=MODEL)
    settings = RunSettings(concurrency=conc)
    journal = Journal.open(work / "j.db", synchronous=synchronous) if journaled else None
    waits: list[float] = []
    try:
        run = journal.start_run(config={}, output_path=work / "out.jsonl") if journal else None
        if run is not None:
            # Time an answer's commit as its caller sees it (the callback runs on the loop),
            # for one call in 8: timing every call cost the journaled runs ~3 us per item.
            loop, record_call = asyncio.get_running_loop(), run.record_call
            calls = itertools.count()

            def timed(*args: Any, **kwargs: Any) -> asyncio.Future[None]:
                if next(calls) % 8:
                    return record_call(*args, **kwargs)
                start = loop.time()
                future = record_call(*args, **kwargs)
                future.add_done_callback(lambda _: waits.append(loop.time() - start))
                return future

            run.record_call = timed  # type: ignore[method-assign]
        teacher = JournaledTeacher(dispatcher.submit, provider=Provider.OPENAI, run=run)
        runner = Runner(
            strategy=strategy,
            teacher=teacher,
            input_path=src,
            rejects_path=work / "rejects.jsonl",
            run=run,
            plain_output=None if journaled else work / "plain.jsonl",
            settings=settings,
        )
        writer_cpu = _thread_cpu_s(journal.writer.thread) if journal else 0.0
        emulator_cpu = _process_cpu_s(emulator_pid) if emulator_pid else 0.0
        start, cpu, loop_cpu = time.perf_counter(), time.process_time(), time.thread_time()
        switches = _switches()
        report = await runner.run()
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
        loop_cpu = time.thread_time() - loop_cpu
        switches = _switches() - switches
        if emulator_pid:
            emulator_cpu = _process_cpu_s(emulator_pid) - emulator_cpu
        if journal is not None:
            writer_cpu = _thread_cpu_s(journal.writer.thread) - writer_cpu
        if report.done == 0 or report.failed:
            raise RuntimeError(f"benchmark run did not complete: {report.message}")
        n = report.done
        return _EngineRun(
            items_per_s=n / elapsed,
            cpu_ms_per_item=cpu / n * 1e3,
            loop_cpu_us_per_item=loop_cpu / n * 1e6,
            writer_cpu_us_per_item=writer_cpu / n * 1e6,
            commit_wait_ms=statistics.median(waits) * 1e3 if waits else 0.0,
            loop_switches_per_item=switches / n,
            emulator_cpu_us_per_item=emulator_cpu / n * 1e6,
        )
    finally:
        if journal is not None:
            journal.close()
        await dispatcher.aclose()
        await client.aclose()


def _compare(
    base_url: str,
    emulator_pid: int,
    src: Path,
    tmp: Path,
    reps: int,
    conc: int,
    synchronous: str,
    loop_factory: Callable[[], asyncio.AbstractEventLoop] | None,
    tag: str = "e",
) -> tuple[list[_EngineRun], list[_EngineRun]]:
    """`reps` runs with and without the journal at `conc` items in flight, alternated."""
    with_j: list[_EngineRun] = []
    without_j: list[_EngineRun] = []
    for rep in range(reps):
        order = (True, False) if rep % 2 == 0 else (False, True)
        for journaled in order:
            work = tmp / f"{tag}{conc}-{rep}{int(journaled)}"
            work.mkdir()
            with asyncio.Runner(loop_factory=loop_factory) as runner:
                result = runner.run(
                    _engine(
                        base_url, src, work, journaled=journaled, conc=conc,
                        synchronous=synchronous, emulator_pid=emulator_pid,
                    )
                )  # fmt: skip
            (with_j if journaled else without_j).append(result)
    return with_j, without_j


def _median_ratio(with_j: list[_EngineRun], without_j: list[_EngineRun]) -> float:
    return statistics.median(
        w.items_per_s / wo.items_per_s for w, wo in zip(with_j, without_j, strict=True)
    )


def _start_emulator(latency: str = "0") -> tuple[subprocess.Popen[str], str]:
    command = [sys.executable, "-m", "amr_async.cli", "emulator", "--port", "0"]
    proc = subprocess.Popen(
        [*command, "--latency", latency, "--seed", "1"],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    match = re.search(r"openai_base_url=(\S+)", line)
    if match is None:
        proc.kill()
        raise RuntimeError(f"emulator did not start: {line!r}")
    return proc, match.group(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--concurrency", type=int, default=64, help="runner items in flight")
    parser.add_argument(
        "--synchronous",
        choices=["NORMAL", "FULL"],
        default="NORMAL",
        help="journal durability: NORMAL survives a crash or kill -9, FULL also power loss",
    )
    args = parser.parse_args()
    calls, items, reps = (10_000, 1_000, 3) if args.quick else (50_000, 4_000, 5)
    tasks, conc = 512, args.concurrency
    loop_factory = None
    try:
        import uvloop

        loop_factory = uvloop.new_event_loop
    except ImportError:  # pragma: no cover
        pass

    write_rates, rows_per_commit, cpu_per_write = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(reps):
            with asyncio.Runner(loop_factory=loop_factory) as runner:
                rate, per, cpu_us = runner.run(
                    _writes(Path(tmp) / f"w{rep}.db", calls, tasks, args.synchronous)
                )
            write_rates.append(rate)
            rows_per_commit.append(per)
            cpu_per_write.append(cpu_us)

        src = Path(tmp) / "in.jsonl"
        with src.open("wb") as f:
            for i in range(items):
                text = f"Write a Python function `f_{i}(xs)` that returns the sum of xs."
                f.write(orjson.dumps({"id": f"t{i}", "instruction": text}) + b"\n")
        emulator, base_url = _start_emulator()
        try:
            runs = _compare(
                base_url, emulator.pid, src, Path(tmp), reps, conc, args.synchronous, loop_factory
            )
            by_conc: dict[str, float] = {}
            if not args.quick:
                for other in (c for c in (256, 1024) if c != conc):
                    with_o, without_o = _compare(
                        base_url, emulator.pid, src, Path(tmp), reps, other, args.synchronous,
                        loop_factory,
                    )  # fmt: skip
                    by_conc[str(other)] = round(_median_ratio(with_o, without_o), 3)
        finally:
            emulator.terminate()
            emulator.wait()
        # The same comparison with a teacher that takes time to answer, as every real one
        # does: the event loop is no longer the bottleneck, so the journal's CPU should not
        # show in the rate (context for `journal_overhead`, which is the zero-latency figure).
        src_l = Path(tmp) / "in-latency.jsonl"
        src_l.write_bytes(b"".join(src.read_bytes().splitlines(keepends=True)[:LATENCY_ITEMS]))
        emulator, base_url = _start_emulator(LATENCY)
        try:
            with_l, without_l = _compare(
                base_url, emulator.pid, src_l, Path(tmp), reps, conc, args.synchronous,
                loop_factory, tag="lat",
            )  # fmt: skip
        finally:
            emulator.terminate()
            emulator.wait()
    with_j, without_j = runs
    by_conc = {str(conc): round(_median_ratio(with_j, without_j), 3), **by_conc}

    cpu_ratios = [
        wo.cpu_ms_per_item / w.cpu_ms_per_item for w, wo in zip(with_j, without_j, strict=True)
    ]

    def med(runs: list[_EngineRun], field: str) -> float:
        return float(statistics.median(getattr(r, field) for r in runs))

    print(
        orjson.dumps(
            {
                "benchmark": "journal",
                "quick": args.quick,
                "cores": os.cpu_count(),
                "load_avg_1m": round(os.getloadavg()[0], 2),
                "synchronous": args.synchronous,
                "calls": calls,
                "writer_tasks": tasks,
                "writes_per_s": round(statistics.median(write_rates)),
                "rows_per_commit": round(statistics.median(rows_per_commit), 1),
                # CPU time (all threads of this process) per journaled call, and the rate
                # that would give on one uncontended core: less sensitive to a busy machine.
                "cpu_us_per_write": round(statistics.median(cpu_per_write), 1),
                "writes_per_cpu_s": round(1e6 / statistics.median(cpu_per_write)),
                "items": items,
                "concurrency": conc,
                "items_per_s_with_journal": round(med(with_j, "items_per_s"), 1),
                "items_per_s_without_journal": round(med(without_j, "items_per_s"), 1),
                "journal_overhead": round(_median_ratio(with_j, without_j), 3),
                "journal_overhead_by_concurrency": by_conc,
                "cpu_ms_per_item_with_journal": round(med(with_j, "cpu_ms_per_item"), 3),
                "cpu_ms_per_item_without_journal": round(med(without_j, "cpu_ms_per_item"), 3),
                # Throughput ratio if CPU were the only limit (CPU per item without / with).
                "journal_overhead_cpu": round(statistics.median(cpu_ratios), 3),
                "loop_cpu_us_per_item_with_journal": round(med(with_j, "loop_cpu_us_per_item")),
                "loop_cpu_us_per_item_without_journal": round(
                    med(without_j, "loop_cpu_us_per_item")
                ),
                "writer_cpu_us_per_item": round(med(with_j, "writer_cpu_us_per_item")),
                "commit_wait_ms": round(med(with_j, "commit_wait_ms"), 2),
                "loop_switches_per_item_with_journal": round(
                    med(with_j, "loop_switches_per_item"), 2
                ),
                "loop_switches_per_item_without_journal": round(
                    med(without_j, "loop_switches_per_item"), 2
                ),
                "emulator_cpu_us_per_item": round(
                    med(with_j + without_j, "emulator_cpu_us_per_item")
                ),
                "latency": LATENCY,
                "latency_items": LATENCY_ITEMS,
                "journal_overhead_with_latency": round(_median_ratio(with_l, without_l), 3),
                "items_per_s_with_latency": round(med(with_l, "items_per_s"), 1),
            }
        ).decode()
    )


if __name__ == "__main__":
    main()
