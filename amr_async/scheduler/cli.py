"""`amr-async dispatch`: send a JSONL file of teacher requests through the dispatcher.

Input, one request per line::

    {"id": "q1", "model": "gpt-4o-mini", "messages": [{"role": "user", "content": "..."}],
     "max_tokens": 512, "system": "...", "temperature": 0.0, "priority": 0}

Output, one line per finished request (appended, flushed per line)::

    {"id": "q1", "kind": "ok", "text": "...", "finish_reason": "stop", "status": 200,
     "usage": {...}, "error": null, "request_id": "..."}

Resumable: ids already in the output are skipped, so after SIGINT/SIGTERM (in-flight calls
finish within `--grace-s`, nothing waiting is sent) running the same command again sends
only what is missing. Exit codes: 0 all done, 130 interrupted, 3 the endpoint was stopped by a
non-retryable failure (invalid key, exhausted quota), 2 bad arguments.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import orjson

from amr_async.scheduler._dispatcher import Dispatcher, Endpoint
from amr_async.scheduler._limiter import Limits
from amr_async.scheduler._metrics import MetricsSnapshot
from amr_async.scheduler._pricing import PricingError, PricingTable
from amr_async.scheduler._retry import RetryPolicy
from amr_async.scheduler._signals import shutdown_on_signals
from amr_async.teacher.base import ClientConfig, Timeouts
from amr_async.teacher.factory import make_client
from amr_async.teacher.types import ChatRequest, Message, Outcome, Provider

EXIT_INTERRUPTED = 130
EXIT_STOPPED = 3


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `dispatch` command."""
    p = sub.add_parser(
        "dispatch",
        help="send a JSONL file of teacher requests within the provider's limits (resumable)",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )
    p.add_argument("input", type=Path, help="requests, JSONL")
    p.add_argument("output", type=Path, help="outcomes, JSONL (appended; ids in it are skipped)")
    p.add_argument("--provider", choices=[x.value for x in Provider], default="openai")
    p.add_argument("--base-url", help="server root (default: the provider's public API)")
    p.add_argument("--rpm", type=float, help="requests/min (default: learned from headers)")
    p.add_argument("--tpm", type=float, help="tokens/min, input + output")
    p.add_argument("--itpm", type=float, help="input tokens/min (Anthropic)")
    p.add_argument("--otpm", type=float, help="output tokens/min (Anthropic)")
    p.add_argument("--max-in-flight", type=int, default=256, help="requests at once")
    p.add_argument("--timeout-s", type=float, default=600.0, help="per attempt")
    p.add_argument("--deadline-s", type=float, default=900.0, help="per request, retries included")
    p.add_argument("--max-attempts", type=int, default=6, help="per request")
    p.add_argument("--grace-s", type=float, default=30.0, help="shutdown grace for calls in flight")
    p.add_argument(
        "--pricing", type=Path, action="append", default=[], help="TOML merged over the prices"
    )
    p.add_argument("--batch-prices", action="store_true", help="price at Batch API rates")
    p.add_argument("--progress-s", type=float, default=10.0, help="metrics line period; 0: off")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    try:
        pricing = PricingTable.load(args.pricing)
        limits = Limits(
            rpm=args.rpm,
            tpm=args.tpm,
            itpm=args.itpm,
            otpm=args.otpm,
            max_in_flight=args.max_in_flight,
        )
        retry = RetryPolicy(max_attempts=args.max_attempts, deadline_s=args.deadline_s)
    except (PricingError, ValueError) as exc:
        print(f"amr-async dispatch: {exc}", file=sys.stderr)
        return 2
    if not args.input.is_file():
        print(f"amr-async dispatch: {args.input}: no such file", file=sys.stderr)
        return 2
    main = _dispatch(args, limits, retry, pricing)
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency off Windows
        return asyncio.run(main)
    return uvloop.run(main)


async def _dispatch(
    args: argparse.Namespace, limits: Limits, retry: RetryPolicy, pricing: PricingTable
) -> int:
    done = _finished_ids(args.output)
    config = ClientConfig(
        max_connections=args.max_in_flight, timeouts=Timeouts(total=args.timeout_s)
    )
    # The client owns its pool (the default lean transport, see ClientConfig.transport).
    client = make_client(args.provider, base_url=args.base_url, config=config)
    try:
        dispatcher = Dispatcher(
            [Endpoint(client, limits={"*": limits})],
            retry=retry,
            pricing=pricing,
            request_timeout_s=args.timeout_s,
            batch_prices=args.batch_prices,
        )
        with args.output.open("ab") as out:
            async with shutdown_on_signals(dispatcher, grace_s=args.grace_s) as stopping:
                progress = asyncio.create_task(_progress(dispatcher, args.progress_s))
                try:
                    await dispatcher.run_all(
                        _requests(args.input, done),
                        lambda key, outcome: _write(out, key, outcome),
                        concurrency=args.max_in_flight,
                    )
                finally:
                    progress.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await progress
        snapshot = dispatcher.metrics()
        print(_summary(snapshot), file=sys.stderr)
        if stopping.is_set():
            print("interrupted: run the same command again to resume", file=sys.stderr)
            return EXIT_INTERRUPTED
        if dispatcher.stopped:
            for endpoint, reason in snapshot.stopped.items():
                print(f"stopped {endpoint}: {reason}", file=sys.stderr)
            return EXIT_STOPPED
        return 0
    finally:
        await client.aclose()


def _finished_ids(path: Path) -> set[str]:
    """Ids already answered; a torn last line (a crash mid-write) is cut off."""
    if not path.exists():
        return set()
    done: set[str] = set()
    good_bytes = 0
    with path.open("rb") as fh:
        for line in fh:
            try:
                done.add(str(orjson.loads(line)["id"]))
            except (orjson.JSONDecodeError, KeyError, TypeError):
                break
            good_bytes += len(line)
    if good_bytes != path.stat().st_size:
        with path.open("r+b") as fh:
            fh.truncate(good_bytes)
    return done


def _requests(path: Path, done: set[str]) -> Iterator[tuple[str, ChatRequest]]:
    """Requests not yet done, read lazily; bad lines are reported by file:line and skipped."""
    with path.open("rb") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = orjson.loads(line)
                key = str(row["id"])
                if key in done:
                    continue
                request = ChatRequest(
                    model=str(row["model"]),
                    messages=tuple(
                        Message(str(m["role"]), str(m["content"])) for m in row["messages"]
                    ),
                    max_tokens=int(row["max_tokens"]),
                    system=row.get("system"),
                    temperature=float(row.get("temperature", 0.0)),
                )
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
                field = f" field {exc}" if isinstance(exc, KeyError) else f" ({exc})"
                print(f"{path}:{lineno}: skipped:{field}", file=sys.stderr)
                continue
            yield key, request


async def _write(out: IO[bytes], key: str, outcome: Outcome) -> None:
    usage = outcome.usage
    row = {
        "id": key,
        "kind": outcome.kind.value,
        "text": outcome.text,
        "finish_reason": outcome.finish_reason,
        "status": outcome.status,
        "usage": {
            "input_tokens": usage.input_tokens,
            "output_tokens": usage.output_tokens,
            "cached_input_tokens": usage.cached_input_tokens,
            "cache_creation_tokens": usage.cache_creation_tokens,
        },
        "error": outcome.error,
        "request_id": outcome.request_id,
    }
    # One write per whole line, flushed: a crash can tear at most the last line.
    out.write(orjson.dumps(row) + b"\n")
    out.flush()


async def _progress(dispatcher: Dispatcher, period_s: float) -> None:
    if period_s <= 0:
        return
    while True:
        await asyncio.sleep(period_s)
        print(_summary(dispatcher.metrics()), file=sys.stderr, flush=True)


def _summary(m: MetricsSnapshot) -> str:
    retries = sum(m.retries_by_kind.values())
    return (
        f"finished {m.finished}/{m.submitted} ok {m.ok} truncated {m.truncated} sent {m.sent} "
        f"retries {retries} 429s {m.rate_limited} in-flight {m.in_flight} "
        f"rpm {m.achieved_rpm:.0f}/{m.limit_rpm:.0f} tpm {m.achieved_tpm:.0f}/{m.limit_tpm:.0f} "
        f"tokens {m.tokens_in}/{m.tokens_out} ${m.cost_usd:.4f}"
    )
