"""amr-async: distil coding instructions into training responses with AMR-Evol.

Layers follow the data flow in DESIGN.md, each a subpackage:

    teacher/    wire clients for the providers' protocols
    emulator/   a local teacher server (a test double) speaking those protocols
    scheduler/  rate limiting, retries and dispatch of every teacher call
    journal/    the SQLite store that makes resume exact
    moduledb/   the functional-module database: store, embedders, vector index
    sandbox/    execution of untrusted code against tests
    pipeline/   prompts, stages, strategies, runner, exports
    api         Engine: the library API (`async with Engine(Config(...)) as engine`)
    config      Config: settings from a TOML file, the environment and flags

`amr_async._core` is the Rust extension; Python modules re-export what they use of it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from amr_async.api import Engine as Engine
    from amr_async.api import ItemResult as ItemResult
    from amr_async.config import Config as Config
    from amr_async.config import ConfigError as ConfigError

    __version__: str

__all__ = ["Config", "ConfigError", "Engine", "ItemResult", "__version__"]

# Imported on first use: `import amr_async` stays cheap (no extension, no aiohttp, and no
# importlib.metadata, ~0.1 s, for `__version__`).
_LAZY = {
    "Engine": "amr_async.api",
    "ItemResult": "amr_async.api",
    "Config": "amr_async.config",
    "ConfigError": "amr_async.config",
}


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("amr-async")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "0.0.0+unknown"


def __getattr__(name: str) -> Any:
    if name == "__version__":
        found = globals()["__version__"] = _version()  # looked up once
        return found
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'amr_async' has no attribute {name!r}")
