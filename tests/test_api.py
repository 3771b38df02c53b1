"""The library API: `Engine` inside the host's loop, against the emulator (a test double)."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

import amr_async
from amr_async import Config, ConfigError, Engine
from amr_async.emulator import Bank, EmulatorConfig, LatencyModel, RunningEmulator
from amr_async.journal import Journal
from tests.conftest import StartEmulator

MODEL = "gpt-4o-mini"


@pytest.fixture(autouse=True)
def _key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-engine")


def _instructions(bank: Bank, n: int, start: int = 60) -> list[str]:
    return [
        f"Write a Python function `{t.entry_point}(...)`. {t.instruction}"
        for t in bank.tasks[start : start + n]
    ]


def _run_status(journal: Path) -> list[str]:
    with sqlite3.connect(journal) as conn:
        return [r[0] for r in conn.execute("SELECT status FROM runs ORDER BY created_at")]


def _other_tasks(before: set[asyncio.Task[Any]]) -> set[asyncio.Task[Any]]:
    """Tasks started since `before` and still running, but for the emulator's connections."""
    return {
        t
        for t in asyncio.all_tasks()
        if t not in before
        and not t.done()
        and t is not asyncio.current_task()
        and "RequestHandler" not in t.get_coro().__qualname__  # type: ignore[union-attr]
    }


def test_public_names_and_types() -> None:
    assert set(amr_async.__all__) >= {"Config", "ConfigError", "Engine", "ItemResult"}
    assert (Path(amr_async.__file__).parent / "py.typed").is_file()
    with pytest.raises(ConfigError, match="model is not set"):
        Engine(Config())
    with pytest.raises(ConfigError, match="db is not set"):
        Engine(Config(model=MODEL, strategy="amr-evol"))
    # Constructing needs no running loop: the engine binds to the host's loop when entered.
    assert "unopened" in repr(Engine(Config(model=MODEL)))


async def test_distill_streams_every_item_and_reports_bad_ones(
    emulator: RunningEmulator, emulator_bank: Bank, tmp_path: Path
) -> None:
    texts = _instructions(emulator_bank, 6)
    items: list[Any] = [*texts[:5], {"id": "x", "instruction": texts[5]}]
    items += [{"instruction": ""}, {"id": "x", "instruction": "again"}, 42]
    config = Config(model=MODEL, base_url=emulator.openai_base_url, journal=str(tmp_path / "j"))
    async with Engine(config) as engine:
        results = [r async for r in engine.distill(items)]
        assert engine.metrics().ok == 6
    ok = [r for r in results if r.ok]
    bad = sorted((r.line_no, r.error) for r in results if not r.ok)
    assert len(ok) == 6
    assert all(r.response and "def " in r.response for r in ok)
    assert {r.item_id for r in ok} >= {"x"}
    assert bad == [
        (7, "field 'instruction': empty"),
        (8, "field 'id': duplicate of line 6"),
        (9, "expected a string or a mapping, got int"),
    ]
    assert engine.last_report is not None
    assert engine.last_report.done == 6
    # The journal is closed (another process could open it) and the runs are recorded.
    Journal.open(tmp_path / "j").close()
    assert _run_status(tmp_path / "j") == ["finished", "partial"]


async def test_second_distill_of_the_same_items_pays_nothing(
    emulator: RunningEmulator, emulator_bank: Bank, tmp_path: Path
) -> None:
    texts = _instructions(emulator_bank, 4)
    config = Config(model=MODEL, base_url=emulator.openai_base_url, journal=str(tmp_path / "j"))
    async with Engine(config) as engine:
        first = {r.item_id: r.response async for r in engine.distill(texts)}
        sent = engine.metrics().sent
        again = {r.item_id: r.response async for r in engine.distill(texts)}
        assert engine.metrics().sent == sent  # every answer came from the journal
    assert first == again
    assert len(first) == 4


async def test_consumer_that_stops_iterating_stops_the_work(
    start_emulator: StartEmulator, emulator_bank: Bank, tmp_path: Path
) -> None:
    emu = await start_emulator(EmulatorConfig(latency=LatencyModel(base_s=0.05)))
    before = set(asyncio.all_tasks())
    config = Config(
        model=MODEL, base_url=emu.openai_base_url, journal=str(tmp_path / "j"), concurrency=4
    )
    async with Engine(config) as engine:
        # `aclosing` closes the generator at the `break` (a bare `break` leaves that to the
        # garbage collector's finaliser, a few loop turns later, or to the engine's close).
        async with contextlib.aclosing(engine.distill(_instructions(emulator_bank, 40))) as it:
            got = 0
            async for _ in it:
                got += 1
                if got == 2:
                    break
        assert not _other_tasks(before), "work still running after the consumer left"
        assert engine.metrics().sent < 40
        # The engine stays usable; a bare `break` is cleaned up by the engine's close.
        one = await engine.distill_one(_instructions(emulator_bank, 1)[0])
        assert one.ok
        async for _ in engine.distill(_instructions(emulator_bank, 40, start=100)):
            break
    assert not _other_tasks(before)
    assert _run_status(tmp_path / "j")[:2] == ["finished", "interrupted"]
    Journal.open(tmp_path / "j").close()


async def test_cancelled_consumer_stops_the_work_and_the_engine_closes_clean(
    start_emulator: StartEmulator, emulator_bank: Bank, tmp_path: Path
) -> None:
    emu = await start_emulator(EmulatorConfig(latency=LatencyModel(base_s=0.05)))
    before = set(asyncio.all_tasks())
    first = asyncio.Event()

    async def consume(engine: Engine) -> None:
        async for _ in engine.distill(_instructions(emulator_bank, 40)):
            first.set()

    config = Config(model=MODEL, base_url=emu.openai_base_url, concurrency=4)
    async with Engine(config) as engine:
        task = asyncio.create_task(consume(engine))
        await first.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert not _other_tasks(before)
        # A distill still running when the engine closes is stopped by the close.
        agen = engine.distill(_instructions(emulator_bank, 40, start=100))
        assert (await anext(agen)).ok
    assert not _other_tasks(before)
    await agen.aclose()
    with pytest.raises(RuntimeError, match="closed"):
        await engine.distill_one("Write fizzbuzz.")


async def test_amr_evol_engine_grows_and_searches_the_module_db(
    emulator: RunningEmulator, emulator_bank: Bank, tmp_path: Path
) -> None:
    config = Config(
        model=MODEL,
        base_url=emulator.openai_base_url,
        strategy="amr-evol",
        db=str(tmp_path / "db"),
        journal=str(tmp_path / "j"),
        isolation="none",
        window=4,
    )
    async with Engine(config) as engine:
        results = [r async for r in engine.distill(_instructions(emulator_bank, 8))]
        assert all(r.ok for r in results)
        assert len(results) == 8
        grown = len(engine.modules)
        assert grown > 0
        one = await engine.distill_one(_instructions(emulator_bank, 1, start=120)[0])
        assert one.ok
        assert one.record is not None
        assert one.record["strategy"] == "amr-evol"
        assert len(engine.modules) >= grown
        stub = one.record["stubs"][0] if one.record["stubs"] else "def f(x):"
        hits = await engine.modules.search([stub], k=3)
        assert len(hits[0]) == 3


# ----------------------------------------------------------- embedded in a web service


ENGINE = web.AppKey("engine", Engine)


async def _service(config: Config) -> web.Application:
    app = web.Application()

    async def engine_ctx(app: web.Application) -> AsyncIterator[None]:
        async with Engine(config) as engine:
            app[ENGINE] = engine
            yield

    async def distill(request: web.Request) -> web.Response:
        body = await request.json()
        result = await request.app[ENGINE].distill_one(body["instruction"])
        return web.json_response(
            {"id": result.item_id, "ok": result.ok, "response": result.response}
        )

    app.cleanup_ctx.append(engine_ctx)
    app.router.add_post("/distill", distill)
    return app


@pytest.mark.parametrize("strategy", ["direct", "amr-evol"])
async def test_engine_embedded_in_an_aiohttp_service(
    emulator: RunningEmulator, emulator_bank: Bank, tmp_path: Path, strategy: str
) -> None:
    config = Config(
        model=MODEL,
        base_url=emulator.openai_base_url,
        strategy=strategy,
        db=str(tmp_path / "db"),
        journal=str(tmp_path / "j"),
        isolation="none",
    )
    runner = web.AppRunner(await _service(config))
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        texts = _instructions(emulator_bank, 4)
        async with aiohttp.ClientSession() as session:

            async def ask(text: str) -> dict[str, Any]:
                url = f"http://127.0.0.1:{port}/distill"
                async with session.post(url, json={"instruction": text}) as resp:
                    assert resp.status == 200
                    answer: dict[str, Any] = await resp.json()
                    return answer

            answers = await asyncio.gather(*(ask(t) for t in texts))
    finally:
        await runner.cleanup()
    assert all(a["ok"] and "def " in a["response"] for a in answers)
    assert len({a["id"] for a in answers}) == 4
    Journal.open(tmp_path / "j").close()  # the service's shutdown closed the journal
