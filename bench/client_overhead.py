"""Client overhead: our OpenAI client vs a bare aiohttp loop vs the official SDK.

One emulator (a test double) runs in its own process at zero latency with no limits. In
this process, at the same concurrency and request count, three loops post the same chat
request:

    bare     aiohttp session + orjson: post bytes, read, parse (aiohttp's floor)
    client   amr_async.teacher.OpenAIClient.send on its default transport, the lean
             HTTP/1.1 pool on httptools (request encoding, classification, headers)
    aiohttp  the same client handed an aiohttp session (`transport="aiohttp"`)
    sdk      openai.AsyncOpenAI with its aiohttp transport, max_retries=0

Each mode runs `--reps` times in rotating order; figures are medians. The server is shared,
so ratios compare the clients under identical conditions. Last line of stdout: one JSON
object (`bare_rps`, `client_rps`, `sdk_rps`, `client_vs_bare`, `client_vs_sdk`, `cores`,
`emulator_cpu_us_per_req` (the server process, serving our client),
`aiohttp_client_cpu_us_per_req`, `lean_saves_cpu_us_per_req`, ...).

    .venv/bin/python bench/client_overhead.py [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import partial
from typing import Literal

import aiohttp
import httpx2
import openai
import orjson

from amr_async.teacher import ChatRequest, ClientConfig, Message, OpenAIClient

MODEL = "emu-bench"
PROMPT = "Say hello in Python."


def _process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a live process (Linux /proc)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextlib.asynccontextmanager
async def emulator_process() -> AsyncIterator[tuple[str, Callable[[], float]]]:
    """Start `amr-async emulator --port 0`; yield its OpenAI base_url and its CPU clock."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "amr_async.cli",
        "emulator",
        "--port",
        "0",
        stdout=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 60)).decode()
        if "openai_base_url=" not in line:
            raise RuntimeError(f"emulator did not start: {line!r}")
        yield line.split("openai_base_url=")[1].split()[0], partial(_process_cpu_s, proc.pid)
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            await proc.wait()


async def drive(
    n: int, concurrency: int, one: Callable[[], Awaitable[bool]]
) -> tuple[float, float, int]:
    """Run `n` calls of `one` on `concurrency` workers.

    Returns:
        (requests/s, this process's CPU µs per request, failures). CPU time per request is
        the less load-sensitive figure on a shared machine.
    """
    remaining = n
    failures = 0

    async def worker() -> None:
        nonlocal remaining, failures
        while remaining > 0:
            remaining -= 1
            if not await one():
                failures += 1

    start = time.perf_counter()
    cpu_start = time.process_time()
    async with asyncio.TaskGroup() as tg:
        for _ in range(concurrency):
            tg.create_task(worker())
    cpu_us = (time.process_time() - cpu_start) / n * 1e6
    return n / (time.perf_counter() - start), cpu_us, failures


async def bare_mode(base: str, n: int, concurrency: int) -> tuple[float, float, int]:
    body = orjson.dumps(
        {
            "model": MODEL,
            "messages": [{"role": "user", "content": PROMPT}],
            "temperature": 0.0,
            "max_tokens": 256,
        }
    )
    headers = {"Content-Type": "application/json", "Authorization": "Bearer sk-bench"}
    url = base + "/chat/completions"
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one() -> bool:
            async with session.post(url, data=body, headers=headers) as resp:
                data = orjson.loads(await resp.read())
                return resp.status == 200 and bool(data["choices"][0]["message"]["content"])

        return await drive(n, concurrency, one)


async def client_mode(
    base: str, n: int, concurrency: int, transport: Literal["lean", "aiohttp"] = "lean"
) -> tuple[float, float, int]:
    request = ChatRequest(model=MODEL, messages=(Message("user", PROMPT),), max_tokens=256)
    config = ClientConfig(max_connections=concurrency, transport=transport)
    client = OpenAIClient(base_url=base, api_key="sk-bench", config=config)
    try:

        async def one() -> bool:
            return (await client.send(request)).kind.is_success

        return await drive(n, concurrency, one)
    finally:
        await client.aclose()


async def sdk_mode(base: str, n: int, concurrency: int) -> tuple[float, float, int]:
    # The SDK's aiohttp transport, its pool sized like the others'.
    http_client = openai.DefaultAioHttpClient(
        limits=httpx2.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    )
    client = openai.AsyncOpenAI(
        base_url=base, api_key="sk-bench", max_retries=0, http_client=http_client
    )
    try:

        async def one() -> bool:
            completion = await client.chat.completions.create(
                model=MODEL,
                messages=[{"role": "user", "content": PROMPT}],
                temperature=0.0,
                max_tokens=256,
            )
            return bool(completion.choices[0].message.content)

        return await drive(n, concurrency, one)
    finally:
        await client.close()


MODES: dict[str, Callable[[str, int, int], Awaitable[tuple[float, float, int]]]] = {
    "bare": bare_mode,
    "client": client_mode,
    "aiohttp": partial(client_mode, transport="aiohttp"),
    "sdk": sdk_mode,
}


async def main(args: argparse.Namespace) -> dict[str, object]:
    rates: dict[str, list[float]] = {m: [] for m in MODES}
    cpu: dict[str, list[float]] = {m: [] for m in MODES}
    emulator_cpu: dict[str, list[float]] = {m: [] for m in MODES}
    failures: dict[str, int] = dict.fromkeys(MODES, 0)
    names = list(MODES)
    async with emulator_process() as (base, emulator_cpu_s):
        # Warm-up: connections, the server's answer cache, imports.
        for name in names:
            await MODES[name](base, min(200, args.requests), args.concurrency)
        for rep in range(args.reps):
            order = names[rep % len(names) :] + names[: rep % len(names)]
            for name in order:
                server_before = emulator_cpu_s()
                rps, cpu_us, failed = await MODES[name](base, args.requests, args.concurrency)
                server_us = (emulator_cpu_s() - server_before) / args.requests * 1e6
                emulator_cpu[name].append(server_us)
                rates[name].append(rps)
                cpu[name].append(cpu_us)
                failures[name] += failed
                print(
                    f"rep {rep} {name:6s} {rps:9.0f} req/s {cpu_us:8.0f} cpu-us/req "
                    f"(emulator {server_us:5.0f}) failures {failed}",
                    file=sys.stderr,
                )
    bare, client, sdk = (statistics.median(rates[m]) for m in ("bare", "client", "sdk"))
    return {
        "bare_rps": round(bare, 1),
        "client_rps": round(client, 1),
        "sdk_rps": round(sdk, 1),
        "client_vs_bare": round(client / bare, 3),
        "client_vs_sdk": round(client / sdk, 2),
        # CPU cost per request in this process: how much cheaper our client is per call,
        # independent of the (single-process) server's throughput.
        "client_vs_sdk_cpu": round(
            statistics.median(cpu["sdk"]) / statistics.median(cpu["client"]), 2
        ),
        "bare_cpu_us_per_req": round(statistics.median(cpu["bare"]), 1),
        "client_cpu_us_per_req": round(statistics.median(cpu["client"]), 1),
        "sdk_cpu_us_per_req": round(statistics.median(cpu["sdk"]), 1),
        "aiohttp_client_rps": round(statistics.median(rates["aiohttp"]), 1),
        "aiohttp_client_cpu_us_per_req": round(statistics.median(cpu["aiohttp"]), 1),
        # What the lean transport saves per call against the same client on aiohttp.
        "lean_saves_cpu_us_per_req": round(
            statistics.median(cpu["aiohttp"]) - statistics.median(cpu["client"]), 1
        ),
        # The emulator's CPU per request (its process, clock ticks of 10 ms: read it over
        # many requests), serving our client on its default transport.
        "emulator_cpu_us_per_req": round(statistics.median(emulator_cpu["client"]), 1),
        "emulator_cpu_us_per_req_by_mode": {
            m: round(statistics.median(v), 1) for m, v in emulator_cpu.items()
        },
        "loadavg": round(os.getloadavg()[0], 2),
        "concurrency": args.concurrency,
        "requests": args.requests,
        "reps": args.reps,
        "failures": failures,
        "sdk_transport": "aiohttp",
        "openai_sdk": openai.__version__,
        "aiohttp": aiohttp.__version__,
        "cores": os.cpu_count(),
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--quick", action="store_true", help="fewer requests and repetitions")
    p.add_argument("--concurrency", type=int, default=200)
    p.add_argument("--requests", type=int, help="requests per run of each mode")
    p.add_argument("--reps", type=int, help="repetitions per mode (median reported)")
    args = p.parse_args(argv)
    args.requests = args.requests or (500 if args.quick else 5000)
    args.reps = args.reps or (3 if args.quick else 5)
    return args


if __name__ == "__main__":
    arguments = parse_args()
    try:
        import uvloop

        result = uvloop.run(main(arguments))
    except ImportError:
        result = asyncio.run(main(arguments))
    print(json.dumps(result))
