"""The measuring helpers of bench/core.py."""

from __future__ import annotations

import importlib.util
import mmap
import sys
from pathlib import Path
from types import ModuleType

BENCH = Path(__file__).resolve().parents[1] / "bench"


def bench_core() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_core", BENCH / "core.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_core"] = module
    spec.loader.exec_module(module)
    return module


def test_measured_counts_the_page_faults_of_the_call() -> None:
    pages = 256

    def touch_fresh_pages() -> None:
        with mmap.mmap(-1, pages * mmap.PAGESIZE) as m:
            for i in range(pages):
                m[i * mmap.PAGESIZE] = 1

    call = bench_core().measured(touch_fresh_pages)
    assert call.minflt >= pages // 2  # a fresh page faults on its first touch
    assert call.wall >= 0
    assert call.cpu >= 0
    assert call.caller_cpu >= 0
    idle = bench_core().measured(lambda: None)
    assert idle.minflt < pages // 2
