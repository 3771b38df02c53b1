"""Sandbox benchmark: every HumanEval+ input against the 164 canonical solutions.

1. Reference run: each canonical solution on all its base+plus inputs; the
   returned values become the expected outputs (as EvalPlus does) and the
   measured times give per-test limits (factor 4, floor 1 s, as EvalPlus).
2. Evaluation run (timed, median of repetitions): the same solutions judged
   against those outputs with EvalPlus's tolerances (atol, 1e-6 for floats,
   the polynomial-root oracle for HumanEval/32). `all_passed` must be true.
3. Mutants: one mutated copy per task (an operator or constant changed),
   judged with fail-fast; `mutants_caught_fraction` is the share that fails.
4. `empty_job_p50_ms`: the per-job overhead (a job with no tests, cache off),
   and `empty_job_cpu_ms`: the CPU of the sandbox's process tree per empty job
   (the zygote and the job's child, from the zygote's /proc entry; the parent's
   share is not in it), a figure the machine's load disturbs less;
   `empty_job_zygote_faults` and `empty_job_child_faults`: minor page faults per
   empty job in the zygote and in the job's child (mostly copy-on-write copies
   of the zygote's pages; the load does not change them).
5. `typical_job_cpu_ms`: the sandbox tree's CPU per job of the kind the pipeline
   runs (`amr-evol` checks a novel function with the teacher's asserts, fail-fast):
   each task of the emulator's bank (the HumanEval and MBPP+ reference solutions
   with their assert lines; a third of them with --quick), 8 jobs in flight;
   `typical_job_parent_cpu_ms`: this process's CPU per such job (planning the
   asserts, the protocol, judging), and the minor faults per job.
   With `--ab-worker DIR` (DIR holding an older `_worker.py`, e.g. from
   `git show REV:amr_async/sandbox/_worker.py`) the empty and typical measures
   alternate between that worker, started as a script as before 2026-11-27, and
   the current one, `--ab-rounds` times each: `ab` in the JSON holds the medians.
6. The floor: each canonical solution called on its inputs in a bare loop in
   this process (no sandbox, no judging): `bare_seconds` (one core) and
   `bare_cpu_seconds`. `overhead_ratio` is the CPU the sandboxed run spends
   (parent + children) over that bare CPU; `bare_floor_seconds` is the bare CPU
   spread perfectly over the workers, the best any harness could do.

Tasks whose reference time exceeds 1/(2 × parallelism) of the total are split
into shards (`Sandbox.run(job, shards=…)`) so one long task does not leave a
core idle at the end; all jobs start longest first.

Usage: ``.venv/bin/python bench/sandbox.py [--quick] [--data PATH]``; the last
line of stdout is one JSON object.
"""

from __future__ import annotations

import argparse
import ast
import asyncio
import copy
import gzip
import json
import math
import os
import random
import statistics
import time
from pathlib import Path
from typing import Any, Literal

import amr_async.sandbox._sandbox as sandbox_impl
from amr_async.emulator.bank import humaneval_path, load_tasks
from amr_async.sandbox import (
    AssertTest,
    CallTest,
    Job,
    JobResult,
    Limits,
    Sandbox,
    calibrated_time_limits,
)

DEFAULT_DATA = (
    Path(__file__).resolve().parents[1] / "../shared/data/evalplus/HumanEvalPlus.jsonl.gz"
)
MBPP = Path(__file__).resolve().parents[1] / "../shared/data/evalplus/MbppPlus.jsonl.gz"
# Starts an older worker the way it was started before 2026-11-27: as a script
# (compiled from source), replacing the bootstrap process (same PID, same fds).
SCRIPT_BOOTSTRAP = (
    "import os, sys; "
    "os.execv(sys.executable, [sys.executable, '-I', sys.argv[1] + '/_worker.py', *sys.argv[2:]])"
)

# Mutation operators: each maps an AST node to a changed copy, or None.
_CMP_SWAP: dict[type, type] = {
    ast.Lt: ast.LtE,
    ast.LtE: ast.Lt,
    ast.Gt: ast.GtE,
    ast.GtE: ast.Gt,
    ast.Eq: ast.NotEq,
    ast.NotEq: ast.Eq,
    ast.In: ast.NotIn,
    ast.NotIn: ast.In,
    ast.Is: ast.IsNot,
    ast.IsNot: ast.Is,
}
_BIN_SWAP: dict[type, type] = {
    ast.Add: ast.Sub,
    ast.Sub: ast.Add,
    ast.Mult: ast.Add,
    ast.FloorDiv: ast.Mult,
    ast.Div: ast.Mult,
    ast.Mod: ast.FloorDiv,
    ast.Pow: ast.Mult,
}


def _sites(tree: ast.Module, first_line: int) -> list[tuple[int, str]]:
    """Mutable spots inside the canonical solution (lines ≥ first_line)."""
    sites: list[tuple[int, str]] = []
    for n, node in enumerate(ast.walk(tree)):
        if getattr(node, "lineno", 0) < first_line:
            continue
        if isinstance(node, ast.Compare) and type(node.ops[0]) in _CMP_SWAP:
            sites.append((n, "cmp"))
        elif isinstance(node, ast.BinOp) and type(node.op) in _BIN_SWAP:
            sites.append((n, "bin"))
        elif isinstance(node, ast.BoolOp):
            sites.append((n, "bool"))
        elif (
            isinstance(node, ast.Constant)
            and type(node.value) is int
            and not isinstance(node.value, bool)
        ):
            sites.append((n, "int"))
    return sites


# Operators that seldom leave behaviour unchanged come first (a boundary shift
# like `<` → `<=` or a constant + 1 is often equivalent on every input).
_PRIORITY = {"flip": 0, "bool": 1, "bin": 2, "cmp": 3, "int": 4}


def mutate(code: str, first_line: int, seed: str) -> str | None:
    """One deterministic mutant of `code` changing the solution part, or None."""
    tree = ast.parse(code)
    nodes = list(ast.walk(tree))
    sites = [
        (n, "flip" if kind == "cmp" and _is_flip(nodes[n]) else kind)
        for n, kind in _sites(tree, first_line)
    ]
    random.Random(seed).shuffle(sites)
    sites.sort(key=lambda site: _PRIORITY[site[1]])
    for index, kind in sites:
        tree = ast.parse(code)
        node = list(ast.walk(tree))[index]
        if isinstance(node, ast.Compare) and kind in ("cmp", "flip"):
            node.ops[0] = _CMP_SWAP[type(node.ops[0])]()
        elif isinstance(node, ast.BinOp) and kind == "bin":
            node.op = _BIN_SWAP[type(node.op)]()
        elif isinstance(node, ast.BoolOp) and kind == "bool":
            node.op = ast.Or() if isinstance(node.op, ast.And) else ast.And()
        elif isinstance(node, ast.Constant) and kind == "int" and type(node.value) is int:
            node.value = node.value + 1
        mutant = ast.unparse(tree)
        if mutant != ast.unparse(ast.parse(code)):
            return mutant
    return None


def _is_flip(node: ast.AST) -> bool:
    """A comparison whose mutation negates it (==, !=, in, not in, is, is not)."""
    return isinstance(node, ast.Compare) and isinstance(
        node.ops[0], ast.Eq | ast.NotEq | ast.In | ast.NotIn | ast.Is | ast.IsNot
    )


def zygote_tree(pid: int) -> tuple[float, int, int]:
    """CPU seconds of a process and of its reaped descendants, and their minor faults.

    From /proc/PID/stat: (utime + stime + cutime + cstime in seconds, minflt,
    cminflt). The faults of a forked job are mostly copy-on-write copies of the
    zygote's pages, in the zygote (after each fork) and in the child.
    """
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    # minflt, cminflt: fields 10 and 11 of proc(5); utime..cstime: 14-17, in clock ticks
    cpu = sum(int(x) for x in fields[11:15]) / os.sysconf("SC_CLK_TCK")
    return cpu, int(fields[7]), int(fields[8])


def load(path: Path, quick: bool) -> list[dict[str, Any]]:
    with gzip.open(path, "rt") as fh:
        rows = [json.loads(line) for line in fh]
    if quick:
        rows = rows[::6]  # 28 tasks spread over the set
    return rows


def bare(rows: list[dict[str, Any]]) -> tuple[float, float, dict[str, float]]:
    """Wall and CPU seconds of the bare calls (arguments copied outside the timing)."""
    wall = cpu = 0.0
    per_task: dict[str, float] = {}
    for row in rows:
        ns: dict[str, Any] = {}
        exec(compile(row["prompt"] + row["canonical_solution"], row["task_id"], "exec"), ns)
        fn = ns[row["entry_point"]]
        # Fresh copies, as the sandbox gives every call (some solutions mutate inputs).
        inputs = [copy.deepcopy(inp) for inp in row["base_input"] + row["plus_input"]]
        t0, c0 = time.perf_counter(), time.process_time()
        for args in inputs:
            fn(*args)
        c1 = time.process_time() - c0
        wall += time.perf_counter() - t0
        cpu += c1
        per_task[row["task_id"]] = c1
    return wall, cpu, per_task


def shard_counts(refs: list[JobResult], parallelism: int) -> list[int]:
    """Shards per task: enough that no shard exceeds 1/(2 × parallelism) of the total."""
    costs = [sum(t.seconds or 0.0 for t in r.tests) for r in refs]
    share = sum(costs) / (2 * parallelism) or 1.0
    return [max(1, min(2 * parallelism, math.ceil(c / share))) for c in costs]


async def reference(sandbox: Sandbox, rows: list[dict[str, Any]]) -> list[JobResult]:
    jobs = []
    for row in rows:
        inputs = row["base_input"] + row["plus_input"]
        jobs.append(
            Job(
                row["prompt"] + row["canonical_solution"],
                [CallTest(inp) for inp in inputs],
                entry_point=row["entry_point"],
                limits=Limits(test_timeout_s=60.0),
            )
        )
    return list(await asyncio.gather(*(sandbox.run(j) for j in jobs)))


def eval_jobs(
    rows: list[dict[str, Any]], refs: list[JobResult], codes: list[str], fail_fast: bool
) -> list[Job]:
    jobs = []
    for row, ref, code in zip(rows, refs, codes, strict=True):
        inputs = row["base_input"] + row["plus_input"]
        oracle: Literal["equal", "poly_root"] = (
            "poly_root" if row["entry_point"] == "find_zero" else "equal"
        )
        tests = [
            CallTest(inp, t.value, atol=float(row["atol"]), oracle=oracle)
            for inp, t in zip(inputs, ref.tests, strict=True)
        ]
        jobs.append(
            Job(
                code,
                tests,
                entry_point=row["entry_point"],
                time_limits=calibrated_time_limits(ref),
                # Wall-clock cap of 10 × the limit: this machine is shared (load ≫ cores);
                # CPU-bound code is still stopped by the CPU-time check.
                limits=Limits(wall_factor=10.0),
                fail_fast=fail_fast,
            )
        )
    return jobs


async def timed(
    sandbox: Sandbox, jobs: list[Job], shards: list[int]
) -> tuple[float, float, list[JobResult]]:
    """Wall seconds, parent CPU seconds, results."""
    t0, c0 = time.perf_counter(), time.process_time()
    results = await asyncio.gather(
        *(sandbox.run(j, shards=n) for j, n in zip(jobs, shards, strict=True))
    )
    return time.perf_counter() - t0, time.process_time() - c0, list(results)


def typical_jobs(quick: bool) -> list[Job]:
    """One job per bank task: its reference solution and its asserts, fail-fast."""
    tasks = load_tasks(humaneval_path()) + load_tasks(MBPP)
    jobs = [
        Job(t.solution, [AssertTest(a) for a in t.asserts], fail_fast=True)
        for t in tasks
        if t.asserts
    ]
    return jobs[::3] if quick else jobs


async def tree_cpu(
    sandbox: Sandbox, jobs: list[Job], in_flight: int
) -> tuple[float, float, float, float, int]:
    """Per job: tree CPU ms, parent CPU ms, zygote and child minor faults; jobs passed."""
    zygote = sandbox.zygote_pid
    assert zygote is not None
    gate = asyncio.Semaphore(in_flight)

    async def one(job: Job) -> JobResult:
        async with gate:
            return await sandbox.run(job)

    # The zygote reaps each job's child before it reports, so the window holds
    # the CPU of exactly the jobs run in it.
    before, c0 = zygote_tree(zygote), time.process_time()
    results = await asyncio.gather(*(one(j) for j in jobs))
    after, c1 = zygote_tree(zygote), time.process_time()
    cpu, zygote_faults, child_faults = (
        (b - a) / len(jobs) for a, b in zip(before, after, strict=True)
    )
    parent = (c1 - c0) / len(jobs)
    return cpu * 1000, parent * 1000, zygote_faults, child_faults, sum(r.passed for r in results)


async def worker_ab(
    old_dir: Path, rounds: int, empty: list[Job], typical: list[Job]
) -> dict[str, Any]:
    """Empty and typical jobs' tree CPU, an older worker and the current one alternated."""
    current = (sandbox_impl._WORKER, sandbox_impl._BOOTSTRAP)
    old = (old_dir / "_worker.py", SCRIPT_BOOTSTRAP)  # old_dir is absolute (main)
    runs: dict[str, list[tuple[float, ...]]] = {}
    try:
        for r in range(rounds):
            order = [("old", old), ("new", current)]
            for name, (worker, bootstrap) in order if r % 2 == 0 else order[::-1]:
                sandbox_impl._WORKER, sandbox_impl._BOOTSTRAP = worker, bootstrap
                async with Sandbox(parallelism=4, cache_size=0) as sandbox:
                    await sandbox.run(Job("x = None", []))
                    e = await tree_cpu(sandbox, empty, 1)
                    t = await tree_cpu(sandbox, typical, 8)
                runs.setdefault(name, []).append((e[0], t[0], t[1], e[3], t[3]))
    finally:
        sandbox_impl._WORKER, sandbox_impl._BOOTSTRAP = current
    keys = ("empty_cpu_ms", "typical_cpu_ms", "typical_parent_cpu_ms", "empty_child_faults",
            "typical_child_faults")  # fmt: skip
    return {
        name: {k: round(statistics.median(x[i] for x in v), 2) for i, k in enumerate(keys)}
        for name, v in runs.items()
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a sixth of the tasks, 1 repetition")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--parallelism", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--reps", type=int, default=None)
    parser.add_argument("--ab-worker", type=Path, help="directory of an older _worker.py")
    parser.add_argument("--ab-rounds", type=int, default=4)
    args = parser.parse_args()
    reps = args.reps or (1 if args.quick else 3)
    rows = load(args.data, args.quick)
    bare_wall, bare_cpu, bare_per_task = bare(rows)

    async with Sandbox(parallelism=args.parallelism, cache_size=0) as sandbox:
        t0 = time.perf_counter()
        refs = await reference(sandbox, rows)
        ref_seconds = time.perf_counter() - t0
        bad = [r["task_id"] for r, res in zip(rows, refs, strict=True) if not res.passed]
        if bad:
            raise SystemExit(f"reference run failed for {bad}")

        # Longest jobs first (by reference time), so no long job starts last and runs alone.
        order = sorted(
            range(len(rows)), key=lambda i: -sum(t.seconds or 0.0 for t in refs[i].tests)
        )
        rows = [rows[i] for i in order]
        refs = [refs[i] for i in order]
        shards = shard_counts(refs, args.parallelism)
        canon = eval_jobs(rows, refs, [r["prompt"] + r["canonical_solution"] for r in rows], False)
        runs = [await timed(sandbox, canon, shards) for _ in range(reps)]
        seconds = statistics.median(s for s, _, _ in runs)
        results = runs[0][2]
        tests = sum(len(r.tests) for r in results)
        # Time spent inside the solutions themselves (child-measured wall time,
        # summed over processes), and CPU of the parent and of the children.
        inside = statistics.median(
            sum(t.seconds or 0.0 for r in rs for t in r.tests) for _, _, rs in runs
        )
        parent_cpu = statistics.median(c for _, c, _ in runs)
        child_cpu = statistics.median(sum(r.cpu_seconds for r in rs) for _, _, rs in runs)
        failing = [
            (row["task_id"], res.counts())
            for row, res in zip(rows, results, strict=True)
            if not res.passed
        ]

        mutant_rows, mutant_refs, mutant_codes, mutant_shards = [], [], [], []
        for row, ref, n in zip(rows, refs, shards, strict=True):
            code = row["prompt"] + row["canonical_solution"]
            first_line = row["prompt"].count("\n") + 1
            mutant = mutate(code, first_line, row["task_id"])
            if mutant is not None:
                mutant_rows.append(row)
                mutant_refs.append(ref)
                mutant_codes.append(mutant)
                mutant_shards.append(n)
        mutant_seconds, _, mutant_results = await timed(
            sandbox, eval_jobs(mutant_rows, mutant_refs, mutant_codes, True), mutant_shards
        )
        caught = sum(not r.passed for r in mutant_results)

        empty = []
        zygote = sandbox.zygote_pid
        assert zygote is not None
        # The zygote reaps each job's child before it reports, so the window holds
        # the CPU of exactly the jobs run in it.
        await sandbox.run(Job("x = None", []))
        before = zygote_tree(zygote)
        for i in range(100 if args.quick else 300):  # CPU comes in clock ticks (10 ms)
            t = time.perf_counter()
            await sandbox.run(Job(f"x = {i}", []))
            empty.append(time.perf_counter() - t)
        after = zygote_tree(zygote)
        empty_cpu, zygote_faults, child_faults = (
            (b - a) / len(empty) for a, b in zip(before, after, strict=True)
        )
        typical = typical_jobs(args.quick)
        typical_cpu, typical_parent, typical_zf, typical_cf, _ = await tree_cpu(sandbox, typical, 8)
        isolation = sandbox.isolation
    ab = None
    if args.ab_worker is not None:
        empty_jobs = [Job(f"x = {i}", []) for i in range(100 if args.quick else 300)]
        ab = await worker_ab(args.ab_worker.resolve(), args.ab_rounds, empty_jobs, typical)

    if failing:
        print("failing:", failing)
    heaviest = sorted(bare_per_task.items(), key=lambda kv: -kv[1])[:7]
    print("heaviest tasks (bare CPU s):", ", ".join(f"{k} {v:.2f}" for k, v in heaviest))
    out = {
        "all_passed": not failing,
        "tests": tests,
        "seconds": round(seconds, 3),
        "tests_per_s": round(tests / seconds, 1),
        "mutants_caught_fraction": round(caught / max(len(mutant_codes), 1), 4),
        "empty_job_p50_ms": round(statistics.median(empty) * 1000, 2),
        "empty_job_cpu_ms": round(empty_cpu * 1000, 2),
        "empty_job_zygote_faults": round(zygote_faults, 1),
        "empty_job_child_faults": round(child_faults, 1),
        "typical_job_cpu_ms": round(typical_cpu, 2),
        "typical_job_parent_cpu_ms": round(typical_parent, 2),
        "typical_job_zygote_faults": round(typical_zf, 1),
        "typical_job_child_faults": round(typical_cf, 1),
        "typical_jobs": len(typical),
        "typical_asserts_per_job": round(sum(len(j.tests) for j in typical) / len(typical), 2),
        "bare_seconds": round(bare_wall, 3),
        "bare_cpu_seconds": round(bare_cpu, 3),
        "bare_floor_seconds": round(bare_cpu / args.parallelism, 3),
        "parent_cpu_seconds": round(parent_cpu, 3),
        "child_cpu_seconds": round(child_cpu, 3),
        # CPU of the whole sandboxed run over the CPU of the bare calls (load-independent).
        "overhead_ratio": round((parent_cpu + child_cpu) / bare_cpu, 3),
        # How busy the workers were: CPU used over (wall × parallelism).
        "cpu_utilisation": round((parent_cpu + child_cpu) / (seconds * args.parallelism), 3),
        "inside_solutions_seconds": round(inside, 3),
        "sharded_tasks": sum(n > 1 for n in shards),
        "tasks": len(rows),
        "mutants": len(mutant_codes),
        "mutants_caught": caught,
        "mutant_seconds": round(mutant_seconds, 3),
        "reference_seconds": round(ref_seconds, 3),
        "repetitions": reps,
        "parallelism": args.parallelism,
        "isolation": isolation,
        "cores": os.cpu_count(),
        "quick": args.quick,
        "loadavg": round(os.getloadavg()[0], 2),
    }
    if ab is not None:
        out["ab"] = ab
    print(json.dumps(out))


if __name__ == "__main__":
    asyncio.run(main())
