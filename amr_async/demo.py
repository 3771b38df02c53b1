"""`make demo`: distil the 164 HumanEval prompts with AMR-Evol against the local emulator.

The emulator is a TEST DOUBLE (answers come from a bank of reference solutions, not a model),
so this shows the machinery — stages, retrieval, sandbox verification, DB growth, journal —
and says nothing about answer quality. The emulator runs in this process (its own thread and
event loop); `amr-async run` runs exactly as a user would type it, with the teacher pointed at
the emulator by one flag (`--base-url`) and one variable (`OPENAI_API_KEY`).
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import os
import queue
import shutil
import sqlite3
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import orjson

from amr_async.emulator import EmulatorConfig, serve
from amr_async.emulator.bank import humaneval_path

_BANNER = """\
amr-async demo: AMR-Evol over the 164 HumanEval prompts.
The teacher is the local emulator, a TEST DOUBLE: its answers come from reference solutions,
so nothing below is a quality figure. One flag and one variable point the run at it:
--base-url (the emulator's URL) and OPENAI_API_KEY (any value). For a real teacher, drop
--base-url (or give your vLLM / llama.cpp server's) and export the real key:
    export OPENAI_API_KEY=...   # or ANTHROPIC_API_KEY with --provider anthropic
    amr-async run --strategy amr-evol --model gpt-4o-mini --input in.jsonl \\
        --output out.jsonl --journal run.db --db modules.db
    amr-async run --dry-run ...   # calls, tokens and $ first, nothing sent
Live progress and a summary table follow on stderr.
"""


@contextlib.contextmanager
def _emulator() -> Iterator[str]:
    """The emulator in this process, on its own thread and event loop; yields its OpenAI URL."""
    started: queue.Queue[str | BaseException] = queue.Queue()
    stop: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = []

    async def serve_until_stopped() -> None:
        stop.append((asyncio.get_running_loop(), asyncio.Event()))
        async with serve(EmulatorConfig(seed=1, bug_rate=0.1)) as emulator:
            started.put(emulator.openai_base_url)
            await stop[0][1].wait()

    def main() -> None:
        try:
            asyncio.run(serve_until_stopped())
        except BaseException as exc:  # reported to the waiting caller, not lost in the thread
            started.put(exc)

    thread = threading.Thread(target=main, name="amr-async-demo-emulator", daemon=True)
    thread.start()
    url = started.get(timeout=60)
    if isinstance(url, BaseException):
        raise RuntimeError(f"the emulator did not start: {url}") from url
    try:
        yield url
    finally:
        loop, done = stop[0]
        loop.call_soon_threadsafe(done.set)
        thread.join(10)


def _write_input(path: Path) -> int:
    with gzip.open(humaneval_path(), "rb") as fh:
        tasks = [orjson.loads(line) for line in fh if line.strip()]
    path.write_bytes(
        b"".join(
            orjson.dumps({"id": t["task_id"], "instruction": t["prompt"]}) + b"\n" for t in tasks
        )
    )
    return len(tasks)


def run_demo(out_dir: Path = Path("out")) -> int:
    """Run the demo; returns the `amr-async run` exit code."""
    print(_BANNER, flush=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    inp, out = out_dir / "demo-input.jsonl", out_dir / "demo.jsonl"
    journal, db = out_dir / "demo-journal.db", out_dir / "demo-modules.db"
    # A fresh run each time: the journal would otherwise answer everything from the last one.
    for stale in (out, journal, db, out_dir / "demo.jsonl.rejects.jsonl"):
        if stale.is_dir():
            shutil.rmtree(stale)
        stale.unlink(missing_ok=True)
    for suffix in ("-wal", "-shm", ".lock"):
        Path(f"{journal}{suffix}").unlink(missing_ok=True)
    n = _write_input(inp)
    with _emulator() as base_url:
        argv = ["run", "--strategy", "amr-evol", "--input", str(inp), "--output", str(out)]
        argv += ["--journal", str(journal), "--db", str(db), "--model", "emulator"]
        argv += ["--base-url", base_url]
        key = os.environ.get("OPENAI_API_KEY")
        os.environ["OPENAI_API_KEY"] = "demo-key-for-the-emulator"
        start = time.perf_counter()
        try:
            from amr_async import cli  # here: cli imports this module

            code = cli.main(argv)  # the same `amr-async run` a user types, in this process
        finally:
            if key is None:
                del os.environ["OPENAI_API_KEY"]
            else:
                os.environ["OPENAI_API_KEY"] = key
        seconds = time.perf_counter() - start
    if not out.exists():
        print(f"amr-async run exited {code} and wrote no output", file=sys.stderr)
        return code or 1
    records = [orjson.loads(line) for line in out.read_bytes().splitlines() if line.strip()]
    with contextlib.closing(sqlite3.connect(journal)) as conn:
        calls, tokens_in, tokens_out = conn.execute(
            "SELECT count(*), coalesce(sum(input_tokens), 0), coalesce(sum(output_tokens), 0)"
            " FROM calls"
        ).fetchone()
    with contextlib.closing(sqlite3.connect(db / "modules.sqlite")) as conn:
        modules = conn.execute("SELECT count(*) FROM modules").fetchone()[0]
    retrieved = sum(len(r.get("modules_retrieved") or []) for r in records)
    verified = sum(len(r.get("modules_verified") or []) for r in records)
    print(
        f"\n{len(records)}/{n} instructions distilled in {seconds:.1f} s -> {out}\n"
        f"teacher calls {calls:,} ({calls / max(len(records), 1):.2f} per item), "
        f"tokens in {tokens_in:,} / out {tokens_out:,} (emulator estimates)\n"
        f"module DB 0 -> {modules} modules: {verified} verified by items, "
        f"{verified - modules} duplicates across a window dropped at merge; "
        f"{retrieved} retrievals; in {db}",
        flush=True,
    )
    return code
