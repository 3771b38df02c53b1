"""Emulator benchmark: CPU per chat call of the emulator's request handling (a TEST DOUBLE).

The emulator shares the machine's cores with the pipeline in `bench/e2e.py`, so its CPU per
call counts against the end-to-end figure. This measures `Emulator.handle` (route, parse,
bank lookup, scripted answer, limits, reply body) on one OpenAI chat request per task and
prompt kind as the `amr-evol` strategy sends them (direct, decompose, evolve, tests), built
from the HumanEval and MBPP+ tasks (bodies of 0.3, 2.3, 2.6 and 0.5 kB on average; the
pipeline's own are 0.7, 2.2, 2.9 and 1.2 kB). HTTP parsing and the socket are left out:
they are the same per call whatever the answer. The emulator runs as `bench/e2e.py` runs
it (bug rate 0.1, seed 1, the MBPP+ bank). Each repetition starts a fresh emulator, so no
answer comes from its cache.

`handler_cpu_ms_per_call`: median over repetitions of CPU ms per call (this process, one
thread). `responses_sha256`: the reply bodies (ids and clock fixed): equal across versions
of the code that must not change answers.

Usage: ``.venv/bin/python bench/emulator.py [--quick]``; the last line of stdout is one
JSON object.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import time
from pathlib import Path

import orjson

from amr_async.emulator import scripted
from amr_async.emulator._http import Request
from amr_async.emulator.bank import Bank, Task
from amr_async.emulator.config import EmulatorConfig
from amr_async.emulator.openai_protocol import OPENAI_ROUTE
from amr_async.emulator.server import Emulator

MBPP = (
    Path(__file__).resolve().parents[1]
    / ".."
    / "shared"
    / "data"
    / "evalplus"
    / "MbppPlus.jsonl.gz"
)
HEADERS = {"content-type": "application/json", "authorization": "Bearer bench"}
# A one-shot example of the size the pipeline's templates carry (their text is not needed).
EXAMPLE = "Example:\n" + "\n".join(
    f"def helper_{i}(x: int) -> int:\n    return x + {i}" for i in range(40)
)


def _body(kind: str, user: str) -> bytes:
    messages = [
        {"role": "system", "content": f"You are a careful Python expert.\n### TASK: {kind}"},
        {"role": "user", "content": user},
    ]
    return orjson.dumps(
        {"model": "emu", "messages": messages, "max_tokens": 2048, "temperature": 0.0}
    )


def requests(tasks: list[Task]) -> list[Request]:
    """Four chat requests per task, one per prompt kind `amr-evol` sends."""
    out: list[Request] = []
    for i, task in enumerate(tasks):
        other = tasks[(i + 1) % len(tasks)]  # a "retrieved" module of another task
        bodies = [
            _body("direct", task.instruction),
            _body("decompose", f"{EXAMPLE}\n\nQuestion:\n{task.instruction}"),
            _body(
                "evolve",
                f"{EXAMPLE}\n\nQuestion:\n{task.instruction}\n\nRetrieved:\n{other.solution}",
            ),
            _body("tests", f"Write asserts for:\n```python\n{task.solution}```"),
        ]
        out += [Request("POST", OPENAI_ROUTE, dict(HEADERS), body) for body in bodies]
    return out


def one_pass(config: EmulatorConfig, bank: Bank, reqs: list[Request]) -> tuple[float, str]:
    """CPU ms per call over `reqs` with a fresh emulator, and the hash of its replies."""
    scripted._stubs.cache_clear()
    scripted._with_bug.cache_clear()
    emulator = Emulator(config, bank=bank, clock=lambda: 0.0, wall_clock=lambda: 0.0)
    digest = hashlib.sha256()
    c0 = time.process_time()
    for request in reqs:
        response = emulator.handle(request)
        digest.update(getattr(response, "body", b"later"))
    return (time.process_time() - c0) / len(reqs) * 1000, digest.hexdigest()[:16]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a third of the tasks, 3 repetitions")
    parser.add_argument("--reps", type=int, default=None)
    args = parser.parse_args()
    load = os.getloadavg()[0]
    config = EmulatorConfig(seed=1, bug_rate=0.1, bank_paths=(MBPP.resolve(),))
    bank = Bank.load(config.bank_paths)
    tasks = bank.tasks[::3] if args.quick else bank.tasks
    reqs = requests(list(tasks))
    reps = args.reps or (3 if args.quick else 7)
    runs = [one_pass(config, bank, reqs) for _ in range(reps)]
    if len({h for _, h in runs}) != 1:
        raise SystemExit("replies differ between repetitions: the emulator is not deterministic")
    ms = [t for t, _ in runs]
    print(f"{len(reqs)} calls x {reps}: CPU ms per call {[round(t, 4) for t in ms]}")
    result = {
        "handler_cpu_ms_per_call": round(statistics.median(ms), 4),
        "calls": len(reqs),
        "repetitions": reps,
        "responses_sha256": runs[0][1],
        "loadavg": round(load, 2),
        "quick": args.quick,
        "cores": os.cpu_count() or 1,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
