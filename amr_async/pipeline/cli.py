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
import tempfile
import threading
from collections.abc import Callable, Coroutine, Mapping
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from amr_async import config
from amr_async.journal import (
    Budget,
    Journal,
    JournalError,
    JournalLockedError,
    JournalStorageError,
    RunJournal,
)
from amr_async.pipeline._estimate import estimate_run
from amr_async.pipeline._prompts import PromptError, load_templates
from amr_async.pipeline._teacher import JournaledTeacher
from amr_async.pipeline.runner import ExitCode, Runner, RunReport, RunSettings
from amr_async.pipeline.strategies import DirectStrategy, Strategy
from amr_async.pipeline.strategies.amr_evol import AmrEvolConfig, AmrEvolStrategy
from amr_async.pipeline.strategies.baselines import AnsRepairStrategy, CallSettings, CotStrategy
from amr_async.progress import Progress, add_progress_flags, count_lines, progress_mode
from amr_async.teacher.types import Provider

if TYPE_CHECKING:
    from amr_async.moduledb import ModuleDB
    from amr_async.scheduler import Dispatcher

_T = TypeVar("_T")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `run` command (its setting flags come from `amr_async.config.KEYS`)."""
    p = sub.add_parser(
        "run",
        help="distil instructions (input JSONL) into responses (output JSONL), resumably",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="exit codes: "
        + ", ".join(f"{c.value} {c.name.lower()}" for c in ExitCode)
        + ". Input lines: JSON objects with 'instruction' and optional 'id'.",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the journal's run (the latest, or --run-id); starts it if none yet",
    )
    p.add_argument("--run-id", help="run to create or resume (default: new / the latest)")
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="estimate calls, tokens and $ from the input and strategy; send nothing",
    )
    add_progress_flags(p)
    config.add_flags(p)
    p.set_defaults(func=_run_command)


def _settings(args: argparse.Namespace, stored: dict[str, Any] | None) -> dict[str, Any]:
    """The run's journaled settings: flags > journaled (resume) > env > TOML file > defaults."""
    return _load(args, stored).to_dict(resumable_only=True)


def _load(args: argparse.Namespace, stored: Mapping[str, Any] | None) -> config.Config:
    try:
        file = config.config_file(getattr(args, "config", None), os.environ)
        return config.load(file=file, flags=config.read_flags(args), stored=stored).config
    except config.ConfigError as exc:
        raise _UsageError(str(exc)) from None


def _run_command(args: argparse.Namespace) -> int:
    try:
        first = _load(args, None)
        if args.dry_run:
            print(_dry_run(first))
            return ExitCode.OK
    except (_UsageError, JournalError) as exc:
        return _refused(exc)
    warm = _warm_token_counter(first)
    try:
        return _start_and_run(args, first)
    finally:
        if warm is not None:
            warm.join()


def _warm_token_counter(cfg: config.Config) -> threading.Thread | None:
    """Build the run's tokenizer tables on a thread while the run is set up.

    The dispatcher counts each request's prompt tokens on the event loop; the first count
    builds the encoding's tables in the Rust core (tens of ms for cl100k_base, more for
    o200k_base), which would stall the loop just as the first calls go out. A text longer
    than the core's keep-the-GIL size is counted without the GIL, so this overlaps the
    preflight request, the journal's opening and the strategy's set-up.
    """
    if cfg.model is None:
        return None
    from amr_async.core import count_tokens
    from amr_async.scheduler import encoding_for

    try:
        encoding = encoding_for(Provider(cfg.provider), cfg.model)
    except ValueError:
        return None  # an unknown provider is reported by the run's own checks
    thread = threading.Thread(
        target=count_tokens, args=([" " * 8192], encoding), name="warm-tokens", daemon=True
    )
    thread.start()
    return thread


def _start_and_run(args: argparse.Namespace, first: config.Config) -> int:
    try:
        journal_path = _journal_path(first)
        if not args.resume:  # every check before the journal file is created
            cfg, resume = _resolve(args, None)
            _check_teacher(cfg, args)
        journal = Journal.open(journal_path)
    except (_UsageError, JournalError) as exc:
        return _refused(exc)
    try:
        if args.resume:
            cfg, resume = _resolve(args, journal)
            _check_teacher(cfg, args)
        run = journal.start_run(
            config=cfg.to_dict(resumable_only=True),
            output_path=Path(cfg.output or ""),
            run_id=args.run_id,
            resume=resume,
            cache=cfg.cache,
        )
        report = _run_loop(partial(_run, args, cfg, run))
    except (_UsageError, JournalError) as exc:
        return _refused(exc)
    finally:
        journal.close()
    print(f"amr-async run {report.run_id}: {report.message}", file=sys.stderr)
    return report.exit_code


# Most specific first: a JournalLockedError is a JournalError too.
_EXIT_CODES: tuple[tuple[type[Exception], ExitCode], ...] = (
    (JournalLockedError, ExitCode.LOCKED),
    (JournalStorageError, ExitCode.STORAGE),
    (JournalError, ExitCode.ERROR),
)


def _refused(exc: Exception) -> ExitCode:
    """One line on stderr for a run that cannot start or go on, and its exit code."""
    print(f"amr-async run: {exc}", file=sys.stderr)
    if isinstance(exc, _UsageError):
        return ExitCode.USAGE
    return next(code for kind, code in _EXIT_CODES if isinstance(exc, kind))


class _UsageError(Exception):
    pass


def _run_loop(main: Callable[[], Coroutine[Any, Any, _T]]) -> _T:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency off Windows
        return asyncio.run(main())
    return uvloop.run(main())


def _dry_run(cfg: config.Config) -> str:
    """The `--dry-run` report (nothing is sent, no journal or output is touched)."""
    for name in ("input", "model"):
        if getattr(cfg, name) is None:
            raise _UsageError(f"--{name} is required for --dry-run ({name} in TOML)")
    assert cfg.input is not None
    _check_input(Path(cfg.input))
    try:
        return estimate_run(cfg).render()
    except (ValueError, OSError) as exc:  # PromptError, PricingError are ValueErrors
        raise _UsageError(str(exc)) from None


def _check_teacher(cfg: config.Config, args: argparse.Namespace) -> None:
    """Key, server and model, checked with one request before anything is started."""
    from amr_async.pipeline._preflight import preflight  # it imports aiohttp

    problem = _run_loop(partial(preflight, cfg, base_url=args.base_url))
    if problem is not None:
        raise _UsageError(problem)


def _journal_path(cfg: config.Config) -> Path:
    if cfg.journal is None:
        raise _UsageError("journal is not set: pass --journal PATH (or journal = 'run.db' in TOML)")
    path = Path(cfg.journal)
    _check_directory(path.parent, "journal", "--journal")
    return path


def _check_directory(directory: Path, what: str, flag: str) -> None:
    """One clear line when `directory` cannot take the file (missing, not a dir, read-only)."""
    if not directory.exists():
        raise _UsageError(f"{what} directory {directory} does not exist: create it or fix {flag}")
    if not directory.is_dir():
        raise _UsageError(f"{what} directory {directory} is not a directory: fix {flag}")
    try:
        with tempfile.TemporaryFile(dir=directory):
            pass
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise _UsageError(
            f"{what} directory {directory} is not writable ({reason}): "
            f"choose another {flag} or fix its permissions"
        ) from None


def _check_input(path: Path) -> None:
    if not path.exists():
        raise _UsageError(f"input {path} does not exist: fix --input")
    try:
        with path.open("rb") as f:
            f.read(1)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise _UsageError(
            f"input {path} cannot be read ({reason}): fix --input or its permissions"
        ) from None


def _resolve(args: argparse.Namespace, journal: Journal | None) -> tuple[config.Config, bool]:
    """The run's settings (with a resumed run's journaled ones) and whether it resumes."""
    stored: dict[str, Any] | None = None
    resume = args.resume
    if resume and journal is not None:
        runs = journal.runs()
        match = [r for r in runs if r.run_id == args.run_id] if args.run_id else runs[-1:]
        if match:
            stored = match[0].config
        elif args.run_id:
            raise _UsageError(f"no run {args.run_id!r} to resume in {journal.path}")
        else:
            resume = False  # nothing journaled yet (e.g. killed while starting): start it
    cfg = _load(args, stored)
    for name in ("input", "output", "model"):
        if getattr(cfg, name) is None:
            raise _UsageError(f"--{name} is required for a new run ({name} in TOML)")
    assert cfg.input is not None
    assert cfg.output is not None
    _check_input(Path(cfg.input))
    output = Path(cfg.output)
    _check_directory(output.parent, "output", "--output")
    if not resume and output.exists() and output.stat().st_size > 0:
        raise _UsageError(f"output {output} exists and is not empty; use --resume or remove it")
    cfg = cfg.replace(rejects=cfg.rejects or f"{output}.rejects.jsonl")
    if cfg.strategy == "amr-evol" and cfg.db is None:
        raise _UsageError("--db is required for --strategy amr-evol: pass --db DIR")
    try:
        AmrEvolConfig(model=cfg.model or "", k=cfg.k, window_size=cfg.window)
        load_templates(Path(cfg.prompts) if cfg.prompts else None)
    except (ValueError, PromptError) as exc:
        raise _UsageError(str(exc)) from None
    return cfg, resume


async def _run(args: argparse.Namespace, cfg: config.Config, run: RunJournal) -> RunReport:
    from amr_async.scheduler import Dispatcher, Endpoint, PricingTable
    from amr_async.teacher.factory import make_client

    provider = Provider(cfg.provider)
    pricing = PricingTable.load(cfg.pricing)
    # The URL as given (it may carry credentials); the journaled config has them removed.
    client = make_client(
        provider, base_url=args.base_url or cfg.base_url, config=cfg.client_config()
    )
    dispatcher = Dispatcher([Endpoint(client)], pricing=pricing)
    teacher = JournaledTeacher(
        dispatcher.submit,
        provider=provider,
        run=run,
        budget=Budget(max_usd=cfg.budget_usd, max_tokens=cfg.budget_tokens),
        price=partial(pricing.cost, cached_in_input=provider is Provider.OPENAI),
    )
    try:
        async with contextlib.AsyncExitStack() as stack:
            strategy = await _strategy(cfg.to_dict(), run.run_id, stack, defer_sandbox=True)
            return await _drive(strategy, teacher, cfg, run, dispatcher, args)
    finally:
        with contextlib.suppress(Exception):
            await dispatcher.aclose(grace_s=0.0)
        await client.aclose()


async def _strategy(
    cfg: dict[str, Any],
    run_id: str | None,
    stack: contextlib.AsyncExitStack,
    db: ModuleDB | None = None,
    *,
    defer_sandbox: bool = False,
) -> Strategy:
    """The configured strategy; its sandbox (and DB, unless given open) close with `stack`.

    With `defer_sandbox`, amr-evol's sandbox starts at the first window (see
    `AmrEvolStrategy.begin_window`) instead of before the strategy is returned.
    """
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
    parallelism = cfg["sandbox_parallelism"] or 4 * (os.cpu_count() or 1)
    sandbox = Sandbox(isolation=cfg["isolation"], parallelism=parallelism)
    if name == "amr-evol" and defer_sandbox:
        # amr-evol starts the zygote (~0.15 s: an interpreter and its imports) at its first
        # window's snapshot, while the first `direct` calls run, not before them; a start
        # that fails still stops the run before any item passes its window gate.
        stack.push_async_callback(sandbox.aclose)
    else:
        await stack.enter_async_context(sandbox)
    if name == "ansrepair":
        return AnsRepairStrategy(calls, templates, sandbox, test_timeout_s=cfg["test_timeout"])
    if db is None:
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
        test_timeout_s=cfg["test_timeout"],
    )
    return AmrEvolStrategy(config, templates=templates, db=db, sandbox=sandbox, run_id=run_id)


async def _drive(
    strategy: Strategy,
    teacher: JournaledTeacher,
    cfg: config.Config,
    run: RunJournal,
    dispatcher: Dispatcher,
    args: argparse.Namespace,
) -> RunReport:
    assert cfg.input is not None
    assert cfg.rejects is not None
    runner = Runner(
        strategy=strategy,
        teacher=teacher,
        input_path=Path(cfg.input),
        rejects_path=Path(cfg.rejects),
        run=run,
        settings=RunSettings(concurrency=cfg.concurrency, max_line_bytes=cfg.max_line_bytes),
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
    total = await asyncio.to_thread(count_lines, Path(cfg.input))
    progress = Progress.for_run(runner, dispatcher, total=total, mode=progress_mode(args))
    try:
        async with progress:
            return await runner.run()
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
