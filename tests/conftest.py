"""Shared fixtures.

`emulator` runs the teacher emulator (a test double) in-process on an ephemeral loopback
port; `start_emulator` starts more with a given config. The task bank loads once per run.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from typing import Any

import pytest

from amr_async.emulator import Bank, EmulatorConfig, RunningEmulator, serve

StartEmulator = Callable[..., Awaitable[RunningEmulator]]


@pytest.fixture(scope="session")
def emulator_bank() -> Bank:
    return Bank.load()


@pytest.fixture
async def start_emulator(emulator_bank: Bank) -> AsyncIterator[StartEmulator]:
    """`await start_emulator(config)` → a `RunningEmulator`, stopped after the test."""
    async with AsyncExitStack() as stack:

        async def start(config: EmulatorConfig | None = None, **kw: Any) -> RunningEmulator:
            if config is None:
                config = EmulatorConfig(**kw)
            return await stack.enter_async_context(serve(config, bank=emulator_bank))

        yield start


@pytest.fixture
async def emulator(start_emulator: StartEmulator) -> RunningEmulator:
    """An emulator with no limits, no latency and no faults."""
    running: RunningEmulator = await start_emulator()
    return running
