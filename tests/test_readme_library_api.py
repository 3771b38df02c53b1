"""The README's library example runs as written (against the emulator, not a provider)."""

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
