"""Benchmark: the dispatcher against the emulator running in its own process.

Scenarios (figures are ratios or counts measured in this run):

- engine_vs_bare: zero-latency emulator, limits not binding; engine (dispatcher + our
  OpenAI client) requests/s over a bare aiohttp+orjson loop at the same concurrency;
  alternating repetitions, median of the ratios.
- adherence_ratio, rate_429_fraction: emulator enforcing RPM 6,000 and TPM 1,000,000 with
  lognormal latency (median 0.5 s, sigma 0.5), limits configured in the engine: answered
  requests/min measured at the server over the steady window / the binding limit (RPM:
  each request charges ~110 tokens, so 6,000/min is 660k tokens/min); 429s / all requests.
- learned_adherence_ratio: the same with no limits configured (learned from headers),
  measured after the first 30 s.
- inflight_ratio, peak_rss_mb: 10,000 requests in flight against 5 s latency, in a fresh
  process: answered/s over the steady window / (10,000 / 5 s), and that process's peak RSS.
  bare_inflight_req_per_s: a bare aiohttp + orjson loop under the same load (its own fresh
  process and emulator), the ceiling the machine allows; both runs also report CPU per
  request of their own process and of the emulator's.
- fault_verdict_fraction: the emulator's fault mix (every recoverable fault, hangs past the
  client timeout, and in a second run insufficient_quota): share of submitted requests that
  end with a verdict (success or classified failure), with attempts within the budgets.

Usage: python bench/scheduler.py [--quick]
Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import aiohttp
import orjson

from amr_async.scheduler import Dispatcher, Endpoint, Limits, RetryPolicy
from amr_async.teacher.base import ClientConfig, Timeouts, open_session
from amr_async.teacher.openai_chat import OpenAIClient
from amr_async.teacher.types import ChatRequest, Message, Outcome

MODEL = "gpt-4o-mini"
UNBOUND = Limits(rpm=1e9, tpm=1e12)


def _raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


@contextmanager
def emulator(*args: str) -> Iterator[tuple[str, int]]:
    """Run `amr-async emulator` in its own process; yield its root URL and pid."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "amr_async.cli", "emulator", "--port", "0", *args],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        match = re.search(r"listening on (http://\S+)", line)
        if not match:
            raise RuntimeError(f"emulator did not start: {line!r}")
        yield match.group(1), proc.pid
    finally:
        proc.terminate()
        proc.wait(10)


async def counters(session: aiohttp.ClientSession, root: str) -> dict[str, Any]:
    async with session.get(f"{root}/_emulator/counters") as resp:
        data: dict[str, Any] = orjson.loads(await resp.read())
        return data


def answered(c: dict[str, Any]) -> int:
    return int(c["requests"].get("/v1/chat/completions", {}).get("200", 0))


def total(c: dict[str, Any]) -> int:
    return sum(c["requests"].get("/v1/chat/completions", {}).values())


def request(i: int, max_tokens: int = 100) -> ChatRequest:
    return ChatRequest(
        model=MODEL,
        messages=(Message("user", f"Write a Python function, variant {i}."),),
        max_tokens=max_tokens,
    )


def rows(start: int = 0) -> Iterator[tuple[int, ChatRequest]]:
    i = start
    while True:
        yield i, request(i)
        i += 1


# -- engine vs bare -------------------------------------------------------------------


async def bare_rps(url: str, n: int, concurrency: int) -> float:
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        next_i = 0

        async def worker() -> None:
            nonlocal next_i
            while next_i < n:
                i = next_i
                next_i += 1
                body = orjson.dumps(
                    {
                        "model": MODEL,
                        "messages": [{"role": "user", "content": f"Write variant {i}."}],
                        "max_tokens": 100,
                    }
                )
                headers = {"Content-Type": "application/json", "Authorization": "Bearer sk-x"}
                async with session.post(url, data=body, headers=headers) as resp:
                    data = orjson.loads(await resp.read())
                    assert resp.status == 200, data
                    _ = data["choices"][0]["message"]["content"]

        start = time.perf_counter()
        async with asyncio.TaskGroup() as group:
            for _ in range(concurrency):
                group.create_task(worker())
        return n / (time.perf_counter() - start)


async def engine_rps(base_url: str, n: int, concurrency: int) -> float:
    session = open_session(ClientConfig(max_connections=concurrency))
    try:
        client = OpenAIClient(base_url=base_url, api_key="sk-x", session=session)
        limits = Limits(rpm=1e9, tpm=1e12, max_in_flight=concurrency)
        d = Dispatcher([Endpoint(client, limits={"*": limits})])
        ok = 0

        async def done(key: int, outcome: Outcome) -> None:
            nonlocal ok
            ok += outcome.kind.is_success

        items = (
            (i, ChatRequest(MODEL, (Message("user", f"Write variant {i}."),), 100))
            for i in range(n)
        )
        start = time.perf_counter()
        await d.run_all(items, done, concurrency=concurrency)
        elapsed = time.perf_counter() - start
        assert ok == n, d.metrics()
        return n / elapsed
    finally:
        await session.close()


async def engine_vs_bare(quick: bool) -> dict[str, Any]:
    n, reps, concurrency = (3000, 3, 100) if quick else (10000, 5, 100)
    with emulator() as (root, _):
        url = f"{root}/v1/chat/completions"
        await bare_rps(url, 500, concurrency)  # warm-up: connections, caches
        await engine_rps(f"{root}/v1", 500, concurrency)
        bares, engines, ratios = [], [], []
        for _ in range(reps):
            b = await bare_rps(url, n, concurrency)
            e = await engine_rps(f"{root}/v1", n, concurrency)
            bares.append(b)
            engines.append(e)
            ratios.append(e / b)
    return {
        "bare_rps": round(statistics.median(bares)),
        "engine_rps": round(statistics.median(engines)),
        "engine_vs_bare": round(statistics.median(ratios), 3),
    }


# -- adherence ------------------------------------------------------------------------


async def adherence(configured: bool, duration_s: float, warmup_s: float) -> dict[str, Any]:
    rpm, tpm = 6000, 1_000_000
    args = ["--rpm", str(rpm), "--tpm", str(tpm), "--latency", "lognormal:0.5,0.5"]
    with emulator(*args) as (root, _):
        session = open_session(ClientConfig(max_connections=512))
        try:
            client = OpenAIClient(base_url=f"{root}/v1", api_key="sk-x", session=session)
            limits = Limits(rpm=rpm, tpm=tpm) if configured else Limits()
            d = Dispatcher([Endpoint(client, limits={"*": limits})])

            async def done(key: int, outcome: Outcome) -> None:
                return None

            run = asyncio.create_task(d.run_all(rows(), done, concurrency=512))
            await asyncio.sleep(warmup_s)
            c0, t0 = await counters(session, root), time.monotonic()
            await asyncio.sleep(duration_s - warmup_s)
            c1, t1 = await counters(session, root), time.monotonic()
            await d.aclose(grace_s=10)
            await run
            m = d.metrics()
        finally:
            await session.close()
    achieved_rpm = (answered(c1) - answered(c0)) * 60 / (t1 - t0)
    state = next(iter(m.limiters.values()))
    return {
        "achieved_rpm": round(achieved_rpm),
        "ratio": round(achieved_rpm / rpm, 4),
        "rate_429_fraction": round(c1["rate_limited"] / max(1, total(c1)), 5),
        "requests": total(c1),
        "rate_limited": c1["rate_limited"],
        "limit_source": state.dimensions["requests"].source,
        "learned_rpm": state.dimensions["requests"].limit_per_min,
    }


# -- 10,000 in flight -------------------------------------------------------------------

N_FLIGHT = 10_000
# Both loops spread their first 10,000 connects over 4 s (2,500/s) instead of one SYN storm
# against the emulator's accept backlog; 2,500/s is above the 2,000/s that 10,000 in flight
# at 5 s need, so it does not bind in steady state.
RAMP_PER_S = 2500.0


def process_cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of process `pid` so far (Linux /proc), None elsewhere."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def engine_flight(base_url: str, on_done: Any, stop: asyncio.Event) -> None:
    # One per-request timer, the client's total timeout, as in the bare loop: no read
    # timeout (a timer per read) and no dispatcher timeout on top of the same 60 s.
    session = open_session(
        ClientConfig(max_connections=N_FLIGHT, timeouts=Timeouts(connect=60, total=60))
    )
    try:
        client = OpenAIClient(base_url=base_url, api_key="sk-x", session=session)
        limits = Limits(rpm=RAMP_PER_S * 60, tpm=1e12, max_in_flight=N_FLIGHT)
        d = Dispatcher([Endpoint(client, limits={"*": limits})])

        async def done(key: int, outcome: Outcome) -> None:
            what = None
            if not outcome.kind.is_success:
                what = f"{outcome.kind.value}: {(outcome.error or '')[:60]}"
            on_done(what)

        run = asyncio.create_task(d.run_all(rows(), done, concurrency=N_FLIGHT))
        await stop.wait()
        await d.aclose(grace_s=0)
        await run
    finally:
        await session.close()


async def bare_flight(base_url: str, on_done: Any, stop: asyncio.Event) -> None:
    """The same load from a bare aiohttp + orjson loop: what the machine allows."""
    connector = aiohttp.TCPConnector(limit=N_FLIGHT, limit_per_host=0)
    timeout = aiohttp.ClientTimeout(total=60, sock_connect=60)
    url = f"{base_url}/chat/completions"
    headers = {"Content-Type": "application/json", "Authorization": "Bearer sk-x"}
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def worker(w: int) -> None:
            await asyncio.sleep(w / RAMP_PER_S)
            i = w
            while not stop.is_set():
                body = orjson.dumps(
                    {
                        "model": MODEL,
                        "messages": [
                            {"role": "user", "content": f"Write a Python function, variant {i}."}
                        ],
                        "max_tokens": 100,
                    }
                )
                try:
                    async with session.post(url, data=body, headers=headers) as resp:
                        data = orjson.loads(await resp.read())
                        _ = data["choices"][0]["message"]["content"]
                        on_done(None if resp.status == 200 else f"HTTP {resp.status}")
                except (aiohttp.ClientError, TimeoutError, KeyError) as exc:
                    on_done(type(exc).__name__)
                i += N_FLIGHT

        async with asyncio.TaskGroup() as group:
            for w in range(N_FLIGHT):
                group.create_task(worker(w))


async def inflight_child(
    mode: str, base_url: str, emulator_pid: int, duration_s: float, warmup_s: float
) -> dict[str, Any]:
    """Runs in its own process so that its peak RSS is the engine's alone."""
    _raise_nofile()
    finished = answered = 0  # every outcome; successful answers only
    failed: dict[str, int] = {}
    first_wave = asyncio.Event()
    stop = asyncio.Event()

    def on_done(failure: str | None) -> None:
        nonlocal finished, answered
        finished += 1
        if finished >= N_FLIGHT:
            first_wave.set()
        if failure is None:
            answered += 1
        else:
            failed[failure] = failed.get(failure, 0) + 1

    flight = engine_flight if mode == "engine" else bare_flight
    run = asyncio.create_task(flight(base_url, on_done, stop))
    # Steady state begins once the first wave of 10,000 has come back (connects done).
    ramp_start = time.monotonic()
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(warmup_s):
            await first_wave.wait()
    ramp_s = time.monotonic() - ramp_start
    f0, t0, cpu0 = answered, time.monotonic(), time.process_time()
    emu0 = process_cpu_s(emulator_pid)
    await asyncio.sleep(duration_s)
    f1, t1, cpu1 = answered, time.monotonic(), time.process_time()
    emu1 = process_cpu_s(emulator_pid)
    stop.set()
    await run
    n = max(1, f1 - f0)
    return {
        "mode": mode,
        "achieved_rps": round((f1 - f0) / (t1 - t0), 1),
        "failed": failed,
        "ramp_s": round(ramp_s, 1),
        # CPU per answered request in the window, of this process and of the emulator's:
        # what 2,000/s costs on an idle core, whatever else the machine was doing.
        "cpu_us_per_request": round((cpu1 - cpu0) / n * 1e6),
        "emulator_cpu_us_per_request": None
        if emu0 is None or emu1 is None
        else round((emu1 - emu0) / n * 1e6),
        "load_avg_1m": round(os.getloadavg()[0], 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def inflight_run(mode: str, duration: float, warmup: float) -> dict[str, Any]:
    with emulator("--latency", "5") as (root, pid):
        out = subprocess.run(
            [
                sys.executable,
                __file__,
                "--inflight-child",
                mode,
                "--base-url",
                f"{root}/v1",
                "--emulator-pid",
                str(pid),
                "--duration",
                str(duration),
                "--warmup",
                str(warmup),
            ],
            capture_output=True,
            text=True,
            check=True,
        )
    result: dict[str, Any] = orjson.loads(out.stdout.strip().splitlines()[-1])
    return result


def inflight(quick: bool) -> dict[str, Any]:
    duration, warmup = (15.0, 60.0) if quick else (60.0, 120.0)  # window; longest ramp
    _raise_nofile()
    engine = inflight_run("engine", duration, warmup)
    bare = inflight_run("bare", duration, warmup)
    target = N_FLIGHT / 5.0
    return {
        "inflight_ratio": round(engine["achieved_rps"] / target, 4),
        "bare_inflight_req_per_s": bare["achieved_rps"],
        "bare_inflight_ratio": round(bare["achieved_rps"] / target, 4),
        "engine_vs_bare_inflight": round(
            engine["achieved_rps"] / max(1.0, bare["achieved_rps"]), 3
        ),
        "peak_rss_mb": engine["peak_rss_mb"],
        "engine": engine,
        "bare": bare,
    }


# -- fault mix ------------------------------------------------------------------------


async def fault_run(extra: list[str], n: int, policy: RetryPolicy) -> dict[str, Any]:
    args = ["--fault-rate", "0.2", "--fault", "hang=0.01", "--hang-s", "10", "--seed", "7"]
    with emulator(*args, *extra) as (root, _):
        session = open_session(ClientConfig(max_connections=200))
        try:
            client = OpenAIClient(base_url=f"{root}/v1", api_key="sk-x", session=session)
            d = Dispatcher(
                [Endpoint(client, limits={"*": Limits(rpm=1e9, tpm=1e12, max_in_flight=200)})],
                retry=policy,
                request_timeout_s=2.0,
            )
            verdicts: dict[str, int] = {}

            async def done(key: int, outcome: Outcome) -> None:
                verdicts[outcome.kind.value] = verdicts.get(outcome.kind.value, 0) + 1

            items = ((i, request(i, 300)) for i in range(n))
            async with asyncio.timeout(600):
                await d.run_all(items, done, concurrency=200)
            m = d.metrics()
        finally:
            await session.close()
    # Calls that were sent at least once, and the most attempts any of them took.
    first_attempts = sum(m.final_by_attempts.values())
    most_attempts = max(m.final_by_attempts, default=0)
    retries = m.sent - first_attempts
    within = most_attempts <= policy.max_attempts and retries <= (
        policy.budget_min + policy.budget_ratio * first_attempts
    )
    return {
        "submitted": n,
        "verdicts": sum(verdicts.values()),
        "by_kind": verdicts,
        "sent": m.sent,
        "retries": retries,
        "max_attempts_seen": most_attempts,
        "within_budget": within,
    }


async def faults(quick: bool) -> dict[str, Any]:
    n = 2000 if quick else 10_000
    policy = RetryPolicy(max_attempts=6, base_s=0.05, max_backoff_s=2.0, deadline_s=120)
    mix = await fault_run([], n, policy)
    quota = await fault_run(["--fault", "insufficient_quota=0.01"], n // 4, policy)
    submitted = mix["submitted"] + quota["submitted"]
    return {
        "fault_verdict_fraction": round((mix["verdicts"] + quota["verdicts"]) / submitted, 6),
        "attempts_within_budget": mix["within_budget"] and quota["within_budget"],
        "fault_mix": mix,
        "quota_run": quota,
    }


async def main_async(quick: bool) -> dict[str, Any]:
    started = time.monotonic()
    evb = await engine_vs_bare(quick)
    print(f"engine_vs_bare {evb}", file=sys.stderr, flush=True)
    duration = 75.0 if quick else 180.0
    fault = await faults(quick)
    print(f"faults {fault}", file=sys.stderr, flush=True)
    # Configured and learned runs are light (≈100 req/s each): run them together, each
    # against its own emulator process. (The fault run is not: it would lag the loop.)
    configured, learned = await asyncio.gather(
        adherence(True, duration, warmup_s=10.0),
        adherence(False, duration, warmup_s=30.0),
    )
    print(f"configured {configured}\nlearned {learned}", file=sys.stderr)
    flight = await asyncio.to_thread(inflight, quick)
    print(f"inflight {flight}", file=sys.stderr)
    return {
        "benchmark": "scheduler",
        "quick": quick,
        "cores": os.cpu_count(),
        "engine_vs_bare": evb["engine_vs_bare"],
        "adherence_ratio": configured["ratio"],
        "rate_429_fraction": configured["rate_429_fraction"],
        "learned_adherence_ratio": learned["ratio"],
        "inflight_ratio": flight["inflight_ratio"],
        "bare_inflight_req_per_s": flight["bare_inflight_req_per_s"],
        "peak_rss_mb": flight["peak_rss_mb"],
        "fault_verdict_fraction": fault["fault_verdict_fraction"],
        "attempts_within_budget": fault["attempts_within_budget"],
        "bare_rps": evb["bare_rps"],
        "engine_rps": evb["engine_rps"],
        "configured": configured,
        "learned": learned,
        "inflight": flight,
        "faults": fault,
        "elapsed_s": round(time.monotonic() - started, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a few minutes")
    parser.add_argument("--inflight-child", choices=("engine", "bare"), help=argparse.SUPPRESS)
    parser.add_argument("--base-url", help=argparse.SUPPRESS)
    parser.add_argument("--emulator-pid", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--duration", type=float, default=30.0, help=argparse.SUPPRESS)
    parser.add_argument("--warmup", type=float, default=12.0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    try:
        import uvloop

        run = uvloop.run
    except ImportError:  # pragma: no cover
        run = asyncio.run  # type: ignore[assignment]
    if args.inflight_child:
        result = run(
            inflight_child(
                args.inflight_child, args.base_url, args.emulator_pid, args.duration, args.warmup
            )
        )
    else:
        result = run(main_async(args.quick))
    print(orjson.dumps(result).decode())


if __name__ == "__main__":
    main()
