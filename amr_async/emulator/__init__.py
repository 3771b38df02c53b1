"""A local teacher server speaking OpenAI Chat Completions and Anthropic Messages.

THIS IS A TEST DOUBLE. It lets the engine be tested, benchmarked and demonstrated with no
network: real HTTP, the providers' success and error bodies and headers (the official
`openai` and `anthropic` SDKs work against it unchanged), real sliding-window rate limits,
a latency model and seeded fault injection. Its answers come from a scripted teacher over a
bank of reference solutions (HumanEval, optionally HumanEval+/MBPP+), never from a model:
no quality figure may ever be taken from a run against it.

    serve(config)          async context manager: run in-process, yields base URLs
    Emulator               the request handler (routes, limits, faults) and its counters
    EmulatorConfig         Limits, LatencyModel, FaultRates, seed, bug rate, bank paths
    amr-async emulator     the same from the command line, for a separate process

Prompt kinds are recognised by a `### TASK: <kind>` marker line; see
`amr_async.emulator.scripted` for the kinds and what each answer looks like.

Token counts (usage and TPM limits) are an estimate: ceil(characters / 4) per text plus 4
per message. They are consistent within the emulator but do not match any real tokenizer.

Limits of the double: no streaming (`stream: true` gets a 400), one process (its throughput
is one core's), and the counters keep one entry per distinct request body.
"""

from typing import TYPE_CHECKING, Any

from amr_async.emulator.bank import Bank as Bank
from amr_async.emulator.bank import BankError as BankError
from amr_async.emulator.bank import Task as Task
from amr_async.emulator.config import EmulatorConfig as EmulatorConfig
from amr_async.emulator.config import FaultRates as FaultRates
from amr_async.emulator.config import LatencyModel as LatencyModel
from amr_async.emulator.config import Limits as Limits

if TYPE_CHECKING:
    from amr_async.emulator.protocol import estimate_tokens as estimate_tokens
    from amr_async.emulator.scripted import KINDS as KINDS
    from amr_async.emulator.scripted import ScriptedTeacher as ScriptedTeacher
    from amr_async.emulator.server import Emulator as Emulator
    from amr_async.emulator.server import RunningEmulator as RunningEmulator
    from amr_async.emulator.server import body_hash as body_hash
    from amr_async.emulator.server import serve as serve

# The server and the scripted teacher are imported on first use: every `amr-async` command
# imports this package (to register `amr-async emulator`), and only that command serves.
_LAZY = {
    "estimate_tokens": "amr_async.emulator.protocol",
    "KINDS": "amr_async.emulator.scripted",
    "ScriptedTeacher": "amr_async.emulator.scripted",
    "Emulator": "amr_async.emulator.server",
    "RunningEmulator": "amr_async.emulator.server",
    "body_hash": "amr_async.emulator.server",
    "serve": "amr_async.emulator.server",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'amr_async.emulator' has no attribute {name!r}")


__all__ = [
    "KINDS",
    "Bank",
    "BankError",
    "Emulator",
    "EmulatorConfig",
    "FaultRates",
    "LatencyModel",
    "Limits",
    "RunningEmulator",
    "ScriptedTeacher",
    "Task",
    "body_hash",
    "estimate_tokens",
    "serve",
]
