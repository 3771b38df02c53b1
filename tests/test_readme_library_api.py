"""The README's library example runs as written (against the emulator, not a provider)."""

from pathlib import Path

import pytest

from amr_async.emulator import RunningEmulator
from amr_async.scheduler import Dispatcher, Endpoint, Limits
from amr_async.teacher import (
    ChatRequest,
    ClientConfig,
    Message,
    OutcomeKind,
    make_client,
    open_session,
)


async def test_readme_library_example(
    emulator: RunningEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-readme")
    async with open_session(ClientConfig(max_connections=200)) as session:
        teacher = make_client("openai", base_url=emulator.openai_base_url, session=session)
        dispatcher = Dispatcher([Endpoint(teacher, limits={"gpt-4o-mini": Limits(rpm=5000)})])
        try:
            outcome = await dispatcher.submit(
                ChatRequest(
                    model="gpt-4o-mini",
                    system="You are a professional coder.",
                    messages=(Message("user", "Write fizzbuzz."),),
                    max_tokens=3000,
                ),
                priority=0,
            )
        finally:
            await dispatcher.aclose()
    assert outcome.kind is OutcomeKind.OK
    assert "```python" in outcome.text
    assert outcome.usage.output_tokens > 0


async def test_readme_engine_example(
    emulator: RunningEmulator,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The README's `Engine` example, with the emulator's URL and paths in a temp dir."""
    from amr_async import Config, Engine

    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-readme")
    monkeypatch.chdir(tmp_path)
    instruction = "Write a Python function `below_zero(operations)`: is the balance ever < 0?"

    config = Config(
        model="gpt-4o-mini",
        strategy="amr-evol",
        db="modules",
        journal="run.db",
        base_url=emulator.openai_base_url,
    )
    async with Engine(config) as engine:  # key from $OPENAI_API_KEY
        async for result in engine.distill(
            ["Write fizzbuzz.", {"id": "7", "instruction": instruction}]
        ):
            print(result.item_id, result.verdict, result.response or result.error)
        one = await engine.distill_one("Write a Python function `reverse(s)` reversing a string.")
        hits = await engine.modules.search(["def reverse(s: str) -> str:"], k=5)

    printed = capsys.readouterr().out.splitlines()
    assert sum(line.startswith(("7 ok ", "sha256:")) for line in printed) == 2
    assert one.ok
    assert one.response
    assert len(hits) == 1
