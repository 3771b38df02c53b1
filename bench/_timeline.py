"""A timeline of one `amr-async run` for `bench/e2e.py --timeline FILE` (diagnosis only).

Installed in the run's process before `main()`: it wraps the amr-evol stages, the sandbox's
`run` and the strategy's window calls with counters, and a sampler thread writes one JSON
line per 100 ms: items in flight per stage, items queued or waiting at the window gate,
sandbox jobs in flight, the event loop's busy fraction (main thread CPU / wall), the
process's and the zygote's CPU, and the window events since the last sample.
"""

from __future__ import annotations

import functools
import json
import os
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

_TICK_S = 0.1


def _zygote_cpu(pid: int | None) -> float:
    """The zygote's CPU plus that of the jobs it reaped (Linux /proc)."""
    if pid is None:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return sum(int(x) for x in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def install(path: str) -> None:
    """Wrap the pipeline's pieces with counters and start the sampler (a daemon thread)."""
    from amr_async.pipeline.runner import Runner
    from amr_async.pipeline.strategies.amr_evol import AmrEvolStrategy
    from amr_async.sandbox import Sandbox

    t0 = time.perf_counter()
    state: dict[str, Any] = {"runner": None, "sandbox": None, "events": []}
    stages: Counter[str] = Counter()
    done: Counter[str] = Counter()
    jobs = [0, 0]  # in flight, finished

    def wrap_stage(stage: Any) -> None:
        inner = stage.run

        async def run(*args: Any, **kwargs: Any) -> Any:
            stages[stage.name] += 1
            try:
                return await inner(*args, **kwargs)
            finally:
                stages[stage.name] -= 1
                done[stage.name] += 1

        stage.run = run

    runner_init = Runner.__init__

    @functools.wraps(runner_init)
    def init(self: Runner, *args: Any, **kwargs: Any) -> None:
        runner_init(self, *args, **kwargs)
        state["runner"] = self
        for stage in self.strategy.stages:
            wrap_stage(stage)

    Runner.__init__ = init  # type: ignore[method-assign]

    sandbox_run = Sandbox.run

    async def job(self: Sandbox, *args: Any, **kwargs: Any) -> Any:
        state["sandbox"] = self
        jobs[0] += 1
        try:
            return await sandbox_run(self, *args, **kwargs)
        finally:
            jobs[0] -= 1
            jobs[1] += 1

    Sandbox.run = job  # type: ignore[method-assign]

    def event(name: str, method: Any) -> Any:
        async def wrapped(self: Any, *args: Any, **kwargs: Any) -> Any:
            state["events"].append((f"{name}>", round(time.perf_counter() - t0, 3)))
            try:
                return await method(self, *args, **kwargs)
            finally:
                state["events"].append((f"{name}<", round(time.perf_counter() - t0, 3)))

        return wrapped

    AmrEvolStrategy.begin_window = event("begin", AmrEvolStrategy.begin_window)  # type: ignore[method-assign]
    AmrEvolStrategy.end_window = event("merge", AmrEvolStrategy.end_window)  # type: ignore[method-assign]

    main_clock = time.pthread_getcpuclockid(threading.main_thread().ident or 0)
    out = Path(path).open("w")  # noqa: SIM115 - closed by the daemon thread's exit

    def sample() -> None:
        last_wall, last_loop = time.perf_counter(), time.clock_gettime(main_clock)
        last_cpu = time.process_time()
        while True:
            time.sleep(_TICK_S)
            wall, loop = time.perf_counter(), time.clock_gettime(main_clock)
            cpu = time.process_time()
            runner = state["runner"]
            sandbox = state["sandbox"]
            events, state["events"] = state["events"], []
            row = {
                "t": round(wall - t0, 3),
                "loop_busy": round((loop - last_loop) / (wall - last_wall), 3),
                "proc_cpu": round((cpu - last_cpu) / (wall - last_wall), 3),
                "in_flight": len(runner._in_flight) if runner is not None else 0,
                "stages": {k: v for k, v in stages.items() if v},
                "done": dict(done),
                "jobs": jobs[0],
                "jobs_done": jobs[1],
                "zygote_cpu": round(_zygote_cpu(sandbox.zygote_pid if sandbox else None), 3),
                "events": events,
            }
            out.write(json.dumps(row) + "\n")
            out.flush()
            last_wall, last_loop, last_cpu = wall, loop, cpu

    threading.Thread(target=sample, name="timeline", daemon=True).start()


def _task_cpu() -> dict[int, tuple[str, float]]:
    """Each live thread of this process: tid -> (kernel name, user + system CPU seconds)."""
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[int, tuple[str, float]] = {}
    for task in Path("/proc/self/task").iterdir():
        try:
            head, rest = (task / "stat").read_text().rsplit(")", 1)
        except OSError:
            continue  # exited meanwhile
        fields = rest.split()
        out[int(task.name)] = (head.split("(", 1)[1], (int(fields[11]) + int(fields[12])) / tick)
    return out


def install_thread_cpu(path: str) -> None:
    """Account the process's CPU per thread, written as JSON to `path` at exit.

    A daemon thread samples /proc/self/task every 20 ms (threads that exit keep their
    last sample: at most 20 ms of theirs is lost) and names each thread: Python's name
    where Python started it (the loop's executor threads are `asyncio_N`), else the
    kernel's (Rust threads name themselves, e.g. `amr-parse-N`). Names are grouped with
    their trailing number dropped. Diagnosis only (`bench/e2e.py --profile`).
    """
    import atexit
    import re

    seen: dict[int, tuple[str, float]] = {}
    names: dict[int, str] = {}
    lock = threading.Lock()

    def take() -> None:
        for thread in threading.enumerate():
            if thread.native_id is not None:
                names[thread.native_id] = thread.name
        for tid, (comm, cpu) in _task_cpu().items():
            seen[tid] = (names.get(tid, comm), cpu)

    def sample() -> None:
        while True:
            time.sleep(0.02)
            with lock:
                take()

    def dump() -> None:
        with lock:
            take()
        groups: Counter[str] = Counter()
        for name, cpu in seen.values():
            groups[re.sub(r"[-_ ]?\d+$", "", name)] += cpu
        groups["(sampler)"] = groups.pop("thread-cpu", 0.0)
        Path(path).write_text(json.dumps(dict(groups.most_common())))

    names[threading.main_thread().native_id or 0] = "main (event loop)"
    threading.Thread(target=sample, name="thread-cpu", daemon=True).start()
    atexit.register(dump)
