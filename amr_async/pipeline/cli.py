"""`amr-async run`: distil an input JSONL into an output JSONL, resumable after any crash.

Resuming (`--resume`) takes every setting not given on the command line from the run's
journaled config, so `amr-async run --journal J --resume --budget-usd 20` continues a run
that stopped at its $10 cap. API keys come only from the environment (OPENAI_API_KEY,
ANTHROPIC_API_KEY) and are never journaled, logged or written.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import Callable, Coroutine
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from amr_async.journal import (
    Budget,
    Journal,
    JournalError,
    JournalLockedError,
    JournalStorageError,
    RunJournal,
)
from amr_async.pipeline._input import DEFAULT_MAX_LINE_BYTES
from amr_async.pipeline._prompts import PromptError, load_templates
from amr_async.pipeline._teacher import JournaledTeacher
from amr_async.pipeline.runner import ExitCode, Runner, RunReport, RunSettings
from amr_async.pipeline.strategies import DirectStrategy, Strategy
from amr_async.pipeline.strategies.amr_evol import AmrEvolConfig, AmrEvolStrategy
from amr_async.pipeline.strategies.baselines import AnsRepairStrategy, CallSettings, CotStrategy
from amr_async.teacher.types import Provider

# Settings journaled with the run and reused on resume; value = default when never given.
_RESUMABLE: dict[str, Any] = {
    "input": None,
    "output": None,
    "rejects": None,
    "strategy": "direct",
    "provider": "openai",
    "base_url": None,
    "model": None,
    "max_tokens": 3000,
    "temperature": 0.0,
    "concurrency": 64,
    "max_line_bytes": DEFAULT_MAX_LINE_BYTES,
    "cache": False,
    "pricing": [],
    # amr-evol and ansrepair
    "prompts": None,
    "db": None,
    "embedder": "hash",
    "k": 1,
    "min_similarity": 0.0,
    "novelty_max_cosine": 0.9,
    "evolve_stubs": True,
    "window": 64,
    "final_check": False,
    "drop_failed": False,
    "keep_raw": False,
    "isolation": "auto",
}

_STRATEGIES = ("direct", "cot", "ansrepair", "amr-evol")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `run` command."""
    p = sub.add_parser(
        "run",
        help="distil instructions (input JSONL) into responses (output JSONL), resumably",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="exit codes: "
        + ", ".join(f"{c.value} {c.name.lower()}" for c in ExitCode)
        + ". Input lines: JSON objects with 'instruction' and optional 'id'.",
    )
    p.add_argument("--input", type=Path, help="input JSONL (one {id, instruction} per line)")
    p.add_argument("--output", type=Path, help="output JSONL (one record per finished item)")
    p.add_argument("--journal", type=Path, required=True, help="the run's SQLite journal")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the journal's run (the latest, or --run-id); starts it if none yet",
    )
    p.add_argument("--run-id", help="run to create or resume (default: new / the latest)")
    p.add_argument("--rejects", type=Path, help="rejected lines (default OUTPUT.rejects.jsonl)")
    p.add_argument("--strategy", choices=_STRATEGIES, help="pipeline strategy (default direct)")
    p.add_argument("--provider", choices=[p.value for p in Provider], help="default openai")
    p.add_argument("--base-url", help="server root (default: the provider's public API)")
    p.add_argument("--model", help="teacher model (required for a new run)")
    p.add_argument("--max-tokens", type=int, help="output tokens per call (default 3000)")
    p.add_argument("--temperature", type=float, help="sampling temperature (default 0)")
    p.add_argument("--concurrency", type=int, help="items in progress at once (default 64)")
    p.add_argument("--max-line-bytes", type=int, help="reject longer input lines (1 MiB)")
    p.add_argument(
        "--cache",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="answer calls from other runs' journaled answers (same request key)",
    )
    p.add_argument("--pricing", type=Path, action="append", help="pricing TOML over the shipped")
    p.add_argument("--budget-usd", type=float, help="stop dispatch once this many $ are spent")
    p.add_argument("--budget-tokens", type=int, help="stop dispatch at this many tokens")
    g = p.add_argument_group("amr-evol (and ansrepair's sandbox)")
    g.add_argument(
        "--prompts", type=Path, help="directory of <kind>.toml templates over the shipped"
    )
    g.add_argument(
        "--db", type=Path, help="module database directory (amr-evol; created if absent)"
    )
    g.add_argument("--embedder", choices=["hash", "minilm"], help="DB embedder (default hash)")
    g.add_argument("--k", type=int, help="modules retrieved per stub (default 1)")
    g.add_argument("--min-similarity", type=float, help="retrieval cosine floor (default 0)")
    g.add_argument(
        "--novelty-max-cosine", type=float, help="a function this similar is not new (0.9)"
    )
    g.add_argument(
        "--evolve-stubs",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="give the evolution prompt the stubs too (default on; off = retrieved only)",
    )
    g.add_argument("--window", type=int, help="input lines per DB window (default 64; 1 = online)")
    g.add_argument(
        "--final-check",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="run the generated tests against the final response and record the verdict",
    )
    g.add_argument(
        "--drop-failed",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="with --final-check: keep failing records out of the output (they go, whole, "
        "to the rejects file)",
    )
    g.add_argument(
        "--keep-raw",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="put each stage's raw teacher answer in the record",
    )
    g.add_argument(
        "--isolation", choices=["auto", "namespaces", "none"], help="sandbox isolation (auto)"
    )
    p.set_defaults(func=_run_command)


def _settings(args: argparse.Namespace, stored: dict[str, Any] | None) -> dict[str, Any]:
    """Command line over the journaled config over the defaults."""
    out: dict[str, Any] = {}
    for name, default in _RESUMABLE.items():
        given = getattr(args, name)
        if given is not None:
            out[name] = [str(v) for v in given] if name == "pricing" else given
        elif stored is not None and name in stored:
            out[name] = stored[name]
        else:
            out[name] = default
    for name in ("input", "output", "rejects", "prompts", "db"):
        if out[name] is not None:
            out[name] = str(Path(out[name]).resolve())
    if out["base_url"]:
        out["base_url"] = _without_password(out["base_url"])
    return out


def _without_password(url: str) -> str:
    """`url` with any `user:password@` removed: the config is journaled, secrets are not."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit(parts._replace(netloc=host))


def _run_command(args: argparse.Namespace) -> int:
    try:
        journal = Journal.open(args.journal)
    except JournalLockedError as exc:
        print(f"amr-async run: {exc}", file=sys.stderr)
        return ExitCode.LOCKED
    except JournalStorageError as exc:
        print(f"amr-async run: {exc}", file=sys.stderr)
        return ExitCode.STORAGE
    except JournalError as exc:
        print(f"amr-async run: {exc}", file=sys.stderr)
        return ExitCode.ERROR
    try:
        cfg, run = _prepare(args, journal)
        report = _run_loop(partial(_run, args, cfg, run))
    except _UsageError as exc:
        print(f"amr-async run: {exc}", file=sys.stderr)
        return ExitCode.USAGE
    except JournalStorageError as exc:
        print(f"amr-async run: {exc}", file=sys.stderr)
        return ExitCode.STORAGE
    except JournalError as exc:
        print(f"amr-async run: {exc}", file=sys.stderr)
        return ExitCode.ERROR
    finally:
        journal.close()
    print(f"amr-async run {report.run_id}: {report.message}", file=sys.stderr)
    return report.exit_code


class _UsageError(Exception):
    pass


def _run_loop(main: Callable[[], Coroutine[Any, Any, RunReport]]) -> RunReport:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency off Windows
        return asyncio.run(main())
    return uvloop.run(main())


def _prepare(args: argparse.Namespace, journal: Journal) -> tuple[dict[str, Any], RunJournal]:
    """Resolve the settings, check the output, create or resume the run (blocking I/O)."""
    stored: dict[str, Any] | None = None
    resume = args.resume
    if resume:
        runs = journal.runs()
        match = [r for r in runs if r.run_id == args.run_id] if args.run_id else runs[-1:]
        if match:
            stored = match[0].config
        elif args.run_id:
            raise _UsageError(f"no run {args.run_id!r} to resume in {args.journal}")
        else:
            resume = False  # nothing journaled yet (e.g. killed while starting): start it
    cfg = _settings(args, stored)
    for name in ("input", "output", "model"):
        if cfg[name] is None:
            raise _UsageError(f"--{name} is required for a new run")
    if not Path(cfg["input"]).is_file():
        raise _UsageError(f"input {cfg['input']} is not a readable file")
    output = Path(cfg["output"])
    if not resume and output.exists() and output.stat().st_size > 0:
        raise _UsageError(f"output {output} exists and is not empty; use --resume or remove it")
    cfg["rejects"] = cfg["rejects"] or f"{output}.rejects.jsonl"
    if cfg["strategy"] == "amr-evol" and cfg["db"] is None:
        raise _UsageError("--db is required for --strategy amr-evol")
    try:
        AmrEvolConfig(model=cfg["model"], k=cfg["k"], window_size=cfg["window"])
        load_templates(Path(cfg["prompts"]) if cfg["prompts"] else None)
    except (ValueError, PromptError) as exc:
        raise _UsageError(str(exc)) from None
    # The config is journaled: it holds no key (keys come only from the environment).
    run = journal.start_run(
        config=cfg, output_path=output, run_id=args.run_id, resume=resume, cache=cfg["cache"]
    )
    return cfg, run


async def _run(args: argparse.Namespace, cfg: dict[str, Any], run: RunJournal) -> RunReport:
    from amr_async.scheduler import Dispatcher, Endpoint, PricingTable
    from amr_async.teacher.factory import make_client

    provider = Provider(cfg["provider"])
    pricing = PricingTable.load(cfg["pricing"])
    # The URL as given (it may carry credentials); the journaled config has them removed.
    client = make_client(provider, base_url=args.base_url or cfg["base_url"])
    dispatcher = Dispatcher([Endpoint(client)], pricing=pricing)
    teacher = JournaledTeacher(
        dispatcher.submit,
        provider=provider,
        run=run,
        budget=Budget(max_usd=args.budget_usd, max_tokens=args.budget_tokens),
        price=partial(pricing.cost, cached_in_input=provider is Provider.OPENAI),
    )
    try:
        async with contextlib.AsyncExitStack() as stack:
            strategy = await _strategy(cfg, run.run_id, stack)
            return await _drive(strategy, teacher, cfg, run)
    finally:
        with contextlib.suppress(Exception):
            await dispatcher.aclose(grace_s=0.0)
        await client.aclose()


async def _strategy(cfg: dict[str, Any], run_id: str, stack: contextlib.AsyncExitStack) -> Strategy:
    """The configured strategy; its DB and sandbox close with `stack`."""
    from amr_async.moduledb import ModuleDB, make_embedder
    from amr_async.sandbox import Sandbox

    templates = load_templates(Path(cfg["prompts"]) if cfg["prompts"] else None)
    calls = CallSettings(cfg["model"], cfg["max_tokens"], cfg["temperature"])
    name = cfg["strategy"]
    if name == "direct":
        return DirectStrategy(
            model=calls.model,
            max_tokens=calls.max_tokens,
            temperature=calls.temperature,
            template=templates["direct"],
        )
    if name == "cot":
        return CotStrategy(calls, templates)
    # A verification job spends most of its time starting processes, not computing (~4 ms
    # of CPU in ~12 ms on a quiet machine), so more jobs than cores keep the cores busy.
    parallelism = 4 * (os.cpu_count() or 1)
    sandbox = await stack.enter_async_context(
        Sandbox(isolation=cfg["isolation"], parallelism=parallelism)
    )
    if name == "ansrepair":
        return AnsRepairStrategy(calls, templates, sandbox)
    db = await ModuleDB.open(Path(cfg["db"]), make_embedder(cfg["embedder"]))
    stack.push_async_callback(db.aclose)
    config = AmrEvolConfig(
        model=calls.model,
        max_tokens=calls.max_tokens,
        temperature=calls.temperature,
        k=cfg["k"],
        min_similarity=cfg["min_similarity"],
        novelty_max_cosine=cfg["novelty_max_cosine"],
        evolve_with_stubs=cfg["evolve_stubs"],
        window_size=cfg["window"],
        final_check=cfg["final_check"],
        drop_failed=cfg["drop_failed"],
        keep_raw=cfg["keep_raw"],
    )
    return AmrEvolStrategy(config, templates=templates, db=db, sandbox=sandbox, run_id=run_id)


async def _drive(
    strategy: Strategy, teacher: JournaledTeacher, cfg: dict[str, Any], run: RunJournal
) -> RunReport:
    runner = Runner(
        strategy=strategy,
        teacher=teacher,
        input_path=Path(cfg["input"]),
        rejects_path=Path(cfg["rejects"]),
        run=run,
        settings=RunSettings(concurrency=cfg["concurrency"], max_line_bytes=cfg["max_line_bytes"]),
    )
    loop = asyncio.get_running_loop()
    main_task = asyncio.current_task()

    def on_signal() -> None:
        if runner.stopping:
            # Second signal: stop waiting for calls in flight; the journal is whole anyway.
            if main_task is not None:
                main_task.cancel()
        else:
            runner.request_stop("interrupted", "signal received")

    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, on_signal)
    try:
        return await runner.run()
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
