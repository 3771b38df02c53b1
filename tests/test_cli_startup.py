"""Start-up: what `amr-async run` imports before its first teacher call.

Heavy packages the default run does not use before its first call (aiohttp, rich,
importlib.metadata) stay out of the import path; the paths that use them import them.
"""

from __future__ import annotations

import subprocess
import sys

# The run path (what bench/e2e.py imports before its clock starts), then a lean client
# built and a request sent to a closed port: a full round trip through the lean transport;
# then the run's preflight check against the same port.
_PROBE = """
import asyncio, socket, sys
import amr_async.cli, amr_async.moduledb, amr_async.sandbox, amr_async.scheduler
import amr_async.teacher.factory
from amr_async.config import Config
from amr_async.pipeline._preflight import preflight
from amr_async.teacher import ChatRequest, Message, make_client

async def main():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    client = make_client("openai", base_url=f"http://127.0.0.1:{port}/v1", api_key="k")
    try:
        req = ChatRequest(model="m", messages=(Message("user", "hi"),), max_tokens=5)
        outcome = await client.send(req)
    finally:
        await client.aclose()
    problem = await preflight(Config(base_url=f"http://127.0.0.1:{port}/v1"), env={})
    assert problem is not None and "cannot reach the teacher" in problem, problem
    return outcome

outcome = asyncio.run(main())
print(outcome.kind.value)
heavy = ("aiohttp", "rich", "importlib.metadata", "openai", "anthropic", "httpx")
print(" ".join(sorted(m for m in heavy if m in sys.modules)) or "-")
"""


def test_run_path_and_lean_client_import_no_heavy_package() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", _PROBE], capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    kind, loaded = proc.stdout.split()
    assert kind == "connection"  # the lean transport did run: the port was closed
    assert loaded == "-"


def test_help_lists_every_command_without_heavy_imports() -> None:
    code = (
        "import sys\n"
        "from amr_async.cli import main\n"
        "try:\n"
        "    main(['--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "print('LOADED', 'aiohttp' in sys.modules, 'rich' in sys.modules)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    for command in ("run", "emulator", "db", "instructions", "export", "sandbox", "runs"):
        assert command in proc.stdout
    assert "LOADED False False" in proc.stdout


def test_aiohttp_transport_still_imports_aiohttp_on_demand() -> None:
    code = (
        "import asyncio, sys\n"
        "from amr_async.teacher import ClientConfig, ChatRequest, Message, make_client\n"
        "async def main():\n"
        "    c = make_client('openai', base_url='http://127.0.0.1:9/v1', api_key='k',\n"
        "                    config=ClientConfig(transport='aiohttp'))\n"
        "    req = ChatRequest(model='m', messages=(Message('user', 'hi'),), max_tokens=5)\n"
        "    try:\n"
        "        return await c.send(req)\n"
        "    finally:\n"
        "        await c.aclose()\n"
        "print(asyncio.run(main()).kind.value, 'aiohttp' in sys.modules)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["connection", "True"]
