"""The PGO training and A/B helpers in bench/ (run by `make ext` and by hand)."""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path
from types import ModuleType

from amr_async import _core

BENCH = Path(__file__).resolve().parents[1] / "bench"


def pgo_train() -> ModuleType:
    spec = importlib.util.spec_from_file_location("pgo_train", BENCH / "pgo_train.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["pgo_train"] = module
    spec.loader.exec_module(module)
    return module


def test_load_core_loads_a_second_copy_of_a_build(tmp_path: Path) -> None:
    # The A/B compares two builds in one process: each must be its own module.
    copy = tmp_path / "_core.abi3.so"
    shutil.copy(_core.__file__ or "", copy)
    other = pgo_train().load_core(str(copy))
    assert other is not _core
    assert other.__file__ == str(copy)
    codes = ["def f(a, b):\n    return a + b  # x\n", "def g(:\n"]
    assert other.ast_hash(codes) == _core.ast_hash(codes)
    assert other.ast_hash(codes)[1] is None


def test_file_halves_split_the_stdlib() -> None:
    train = pgo_train()
    even, odd, every = train.sources("even"), train.sources("odd"), train.sources("all")
    assert len(odd) > 100
    assert even == every[0::2]
    assert odd == every[1::2]
