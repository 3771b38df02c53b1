"""The emulator over raw HTTP: bad requests, counters, determinism, the CLI process."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from amr_async.emulator import EmulatorConfig, FaultRates, LatencyModel, RunningEmulator, body_hash

StartEmulator = Callable[..., Awaitable[RunningEmulator]]
ANTHROPIC_HEADERS = {"anthropic-version": "2023-06-01", "x-api-key": "k"}


async def _post(url: str, data: bytes, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as s, s.post(url, data=data, headers=headers or {}) as r:
        return r.status, await r.json(content_type=None)


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b"{not json", "could not parse the JSON body"),
        (b"[1, 2]", "expected a JSON object"),
        (b'{"messages": [{"role": "user", "content": "x"}]}', "you must provide a model"),
        (b'{"model": "m"}', "Missing required parameter: 'messages'"),
        (b'{"model": "m", "messages": []}', "empty array"),
        (b'{"model": "m", "messages": [{"role": "wizard", "content": "x"}]}', "Invalid value"),
        (b'{"model": "m", "messages": [{"role": "user", "content": 5}]}', "content"),
    ],
)
async def test_openai_bad_requests_are_400(
    body: bytes, fragment: str, emulator: RunningEmulator
) -> None:
    status, data = await _post(emulator.openai_base_url + "/chat/completions", body)
    assert status == 400
    err = data["error"]
    assert fragment in err["message"]
    assert err["type"] == "invalid_request_error"
    assert set(err) == {"message", "type", "param", "code"}


@pytest.mark.parametrize(
    ("body", "headers", "fragment"),
    [
        (b"{oops", ANTHROPIC_HEADERS, "not valid JSON"),
        (b'{"max_tokens": 5, "messages": []}', ANTHROPIC_HEADERS, "model: Field required"),
        (b'{"model": "m", "messages": []}', ANTHROPIC_HEADERS, "max_tokens: Field required"),
        (b'{"model": "m", "max_tokens": 5}', ANTHROPIC_HEADERS, "messages: Field required"),
        (
            b'{"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}',
            {"x-api-key": "k"},
            "anthropic-version",
        ),
    ],
)
async def test_anthropic_bad_requests_are_400(
    body: bytes, headers: dict[str, str], fragment: str, emulator: RunningEmulator
) -> None:
    status, data = await _post(emulator.anthropic_base_url + "/v1/messages", body, headers)
    assert status == 400
    assert data["type"] == "error"
    assert data["error"]["type"] == "invalid_request_error"
    assert fragment in data["error"]["message"]


async def test_unknown_route_is_a_json_404(emulator: RunningEmulator) -> None:
    status, data = await _post(emulator.base_url + "/v1/completions", b"{}")
    assert status == 404
    assert "Invalid URL" in data["error"]["message"]


async def test_counters_record_what_was_received(emulator: RunningEmulator) -> None:
    body = b'{"model": "m", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 9}'
    url = emulator.openai_base_url + "/chat/completions"
    for _ in range(2):
        assert (await _post(url, body))[0] == 200
    await _post(url, b"{bad")
    async with aiohttp.ClientSession() as s:
        async with s.get(emulator.base_url + "/_emulator/counters") as r:
            snap = await r.json()
        async with s.post(emulator.base_url + "/_emulator/reset") as r:
            assert r.status == 200
    assert snap["requests"]["/v1/chat/completions"] == {"200": 2, "400": 1}
    assert snap["body_hashes"][body_hash(body)] == 2
    assert snap["tokens"]["input"] > 0
    assert snap["tokens"]["output"] > 0
    assert emulator.emulator.counters.snapshot()["requests"] == {}


async def _fault_sequence(start: StartEmulator, seed: int) -> list[int]:
    running = await start(EmulatorConfig(faults=FaultRates.spread(0.5), seed=seed))
    url = running.openai_base_url + "/chat/completions"
    statuses = []
    async with aiohttp.ClientSession() as s:
        for i in range(30):
            body = {"model": "m", "messages": [{"role": "user", "content": f"q{i % 10}"}]}
            try:
                async with s.post(url, json=body) as r:
                    raw = await r.read()
                    statuses.append(r.status * 10 + (1 if raw.endswith(b"}") else 0))
            except aiohttp.ClientError:
                statuses.append(-1)
    return statuses


async def test_faults_are_deterministic_under_a_seed(start_emulator: StartEmulator) -> None:
    a = await _fault_sequence(start_emulator, seed=11)
    b = await _fault_sequence(start_emulator, seed=11)
    c = await _fault_sequence(start_emulator, seed=12)
    assert a == b
    assert a != c
    assert len(set(a)) > 2  # several different faults happened


def test_lognormal_latency_model() -> None:
    model = LatencyModel.parse("lognormal:0.8,0.5", per_output_token_s=0.01)
    assert model.draw(0.5, 0) == pytest.approx(0.8)  # the median
    assert model.draw(0.9, 0) > 0.8 > model.draw(0.1, 0)
    assert model.draw(0.5, 100) == pytest.approx(1.8)
    assert LatencyModel.parse("0.25").draw(0.3, 10) == 0.25
    with pytest.raises(ValueError, match="latency 'fast'"):
        LatencyModel.parse("fast")


def test_config_refuses_impossible_values() -> None:
    with pytest.raises(ValueError, match="sum to"):
        FaultRates(server_error=0.6, overloaded=0.6)
    with pytest.raises(ValueError, match="bug_rate"):
        EmulatorConfig(bug_rate=2)
    assert "sk-secret" not in repr(EmulatorConfig(api_key="sk-secret"))


async def test_cli_runs_the_emulator_in_its_own_process() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "amr_async.cli",
        "emulator",
        "--port",
        "0",
        "--rpm",
        "1",
        "--fault",
        "server_error=0.0",
        "--latency",
        "lognormal:0.001,0.2",
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 60)).decode()
        assert "test double" in line
        base = line.split("openai_base_url=")[1].split()[0]
        assert base.startswith("http://127.0.0.1:")
        body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]})
        statuses = [(await _post(base + "/chat/completions", body.encode()))[0] for _ in range(2)]
        assert statuses == [200, 429]
    finally:
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 30) == 0


def test_cli_rejects_bad_options() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "amr_async.cli", "emulator", "--fault", "gremlins=0.1"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2
    assert "gremlins" in proc.stderr


def test_cli_reports_a_missing_bank_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.jsonl"
    proc = subprocess.run(
        [sys.executable, "-m", "amr_async.cli", "emulator", "--port", "0", "--bank", str(missing)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 1
    assert "nope.jsonl" in proc.stderr
    assert "Traceback" not in proc.stderr
