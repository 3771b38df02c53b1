"""Graceful shutdown on SIGINT/SIGTERM, for a CLI that owns the event loop.

Library code never installs signal handlers (the host application owns them); a command
line wraps its work in `shutdown_on_signals`: the first signal stops the dispatcher taking
work and gives in-flight calls `grace_s` to finish; a second signal abandons them at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator

from amr_async.scheduler._dispatcher import Dispatcher

logger = logging.getLogger("amr_async.scheduler")


@contextlib.asynccontextmanager
async def shutdown_on_signals(
    dispatcher: Dispatcher, *, grace_s: float = 30.0
) -> AsyncIterator[asyncio.Event]:
    """Run the body with SIGINT/SIGTERM turned into `dispatcher.aclose(grace_s)`.

    Args:
        dispatcher: the dispatcher to shut down.
        grace_s: how long in-flight calls may take to finish after the first signal.

    Yields:
        An event set when a signal arrived (the CLI reports an interrupted run).
    """
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    tasks: set[asyncio.Task[None]] = set()

    def on_signal(signum: int) -> None:
        if not stopping.is_set():
            stopping.set()
            logger.warning(
                "%s: finishing calls in flight (up to %.0f s), taking no new work",
                signal.Signals(signum).name,
                grace_s,
            )
            task = loop.create_task(dispatcher.aclose(grace_s))
        else:
            logger.warning("second signal: abandoning calls in flight")
            task = loop.create_task(dispatcher.aclose(0.0))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    signals = (signal.SIGINT, signal.SIGTERM)
    for signum in signals:
        loop.add_signal_handler(signum, on_signal, signum)
    try:
        yield stopping
        for task in list(tasks):
            await task
    finally:
        for signum in signals:
            loop.remove_signal_handler(signum)
