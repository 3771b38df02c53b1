"""amr-async: distil coding instructions into training responses with AMR-Evol.

Layers follow the data flow in DESIGN.md, each a subpackage:

    teacher/    wire clients for the providers' protocols
    emulator/   a local teacher server (a test double) speaking those protocols
    scheduler/  rate limiting, retries and dispatch of every teacher call
    journal/    the SQLite store that makes resume exact
    moduledb/   the functional-module database: store, embedders, vector index
    sandbox/    execution of untrusted code against tests
    pipeline/   prompts, stages, strategies, runner, exports

`amr_async._core` is the Rust extension; Python modules re-export what they use of it.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("amr-async")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
