"""`amr-async emulator`: run the emulator (a test double) in its own process."""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import signal
import sys
from dataclasses import replace
from pathlib import Path

from amr_async.emulator.bank import BankError
from amr_async.emulator.config import EmulatorConfig, FaultRates, LatencyModel, Limits

_FAULT_KINDS = [name for name, _ in FaultRates().items()]


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _fault(text: str) -> tuple[str, float]:
    kind, sep, rate = text.partition("=")
    if not sep or kind not in _FAULT_KINDS:
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected KIND=RATE with KIND one of {', '.join(_FAULT_KINDS)}"
        )
    try:
        return kind, float(rate)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: RATE is not a number") from None


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `emulator` command."""
    p = sub.add_parser(
        "emulator",
        help="run the local teacher emulator (a test double; OpenAI + Anthropic protocols)",
        description="Run the local teacher emulator, a TEST DOUBLE: answers come from a bank "
        "of reference solutions, never from a model. OpenAI base_url: http://HOST:PORT/v1; "
        "Anthropic base_url: http://HOST:PORT. Counters: GET /_emulator/counters.",
    )
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (default loopback)")
    p.add_argument("--port", type=int, default=8000, help="port; 0 picks a free one")
    p.add_argument("--rpm", type=_positive_int, help="requests per minute (default unlimited)")
    p.add_argument("--tpm", type=_positive_int, help="tokens per minute (default unlimited)")
    p.add_argument("--itpm", type=_positive_int, help="Anthropic input tokens per minute")
    p.add_argument("--otpm", type=_positive_int, help="Anthropic output tokens per minute")
    p.add_argument("--max-concurrency", type=_positive_int, help="requests in progress at once")
    p.add_argument(
        "--latency",
        default="0",
        help="base latency: SECONDS, or lognormal:MEDIAN,SIGMA (default 0)",
    )
    p.add_argument("--per-token-latency", type=float, default=0.0, help="seconds per output token")
    p.add_argument(
        "--fault-rate",
        type=float,
        default=0.0,
        help="total rate spread over the recoverable faults (not hang, not insufficient_quota)",
    )
    p.add_argument(
        "--fault",
        type=_fault,
        action="append",
        default=[],
        metavar="KIND=RATE",
        help=f"one fault's rate (repeatable); KIND: {', '.join(_FAULT_KINDS)}",
    )
    p.add_argument("--hang-s", type=float, default=300.0, help="how long a hang fault lasts")
    p.add_argument("--seed", type=int, default=0, help="seed for faults, latency and bugs")
    p.add_argument("--bug-rate", type=float, default=0.0, help="share of answers with a bug")
    p.add_argument(
        "--bank",
        type=Path,
        action="append",
        default=[],
        help="extra task file (HumanEval+/MBPP+ JSONL[.gz]); repeatable",
    )
    p.add_argument(
        "--api-key-env",
        metavar="VAR",
        help="require the key held in this environment variable (default: accept any key)",
    )
    p.set_defaults(func=_run)


def config_from_args(args: argparse.Namespace) -> EmulatorConfig:
    """Build the config; raises ValueError naming the bad option."""
    faults = FaultRates.spread(args.fault_rate) if args.fault_rate else FaultRates()
    if args.fault:
        faults = replace(faults, **dict(args.fault))
    api_key = None
    if args.api_key_env:
        api_key = os.environ.get(args.api_key_env)
        if not api_key:
            raise ValueError(f"--api-key-env: ${args.api_key_env} is not set")
    return EmulatorConfig(
        limits=Limits(
            rpm=args.rpm,
            tpm=args.tpm,
            itpm=args.itpm,
            otpm=args.otpm,
            max_concurrency=args.max_concurrency,
        ),
        latency=LatencyModel.parse(args.latency, args.per_token_latency),
        faults=faults,
        seed=args.seed,
        bug_rate=args.bug_rate,
        bank_paths=tuple(args.bank),
        api_key=api_key,
        hang_s=args.hang_s,
    )


async def _serve_until_signal(config: EmulatorConfig, host: str, port: int) -> None:
    from amr_async.emulator.server import serve  # only this command serves

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with serve(config, host=host, port=port) as running:
        print(
            f"amr-async emulator (test double) listening on {running.base_url} "
            f"openai_base_url={running.openai_base_url} "
            f"anthropic_base_url={running.anthropic_base_url}",
            flush=True,
        )
        await stop.wait()


def _raise_open_files_limit() -> None:
    """Let this process hold as many sockets as the hard limit allows.

    The emulator runs as its own process in benchmarks with thousands of connections.
    (Written here rather than imported from teacher/: the emulator shares no code with
    the clients.)
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 65536)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def _run(args: argparse.Namespace) -> int:
    try:
        config = config_from_args(args)
    except ValueError as exc:
        print(f"amr-async emulator: {exc}", file=sys.stderr)
        return 2
    _raise_open_files_limit()
    try:
        try:
            import uvloop
        except ImportError:  # pragma: no cover - uvloop is a dependency off Windows
            asyncio.run(_serve_until_signal(config, args.host, args.port))
        else:
            uvloop.run(_serve_until_signal(config, args.host, args.port))
    except (BankError, OSError) as exc:  # unreadable bank file, port in use, ...
        print(f"amr-async emulator: {exc}", file=sys.stderr)
        return 1
    return 0
