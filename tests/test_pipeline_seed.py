"""`amr-async db seed --self-instruct N` against the emulator (a test double), as a process.

The emulator injects bugs into a share of its functions, so some candidates fail their
tests: only functions that pass their teacher-written tests may enter the DB.
"""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

import orjson

from amr_async.emulator import EmulatorConfig
from amr_async.sandbox import AssertTest, Job, Sandbox
from tests.conftest import StartEmulator
from tests.test_pipeline_cli import _cli


def _modules(db: Path) -> list[tuple[str, str, str, str, str]]:
    with contextlib.closing(sqlite3.connect(db / "modules.sqlite")) as conn:
        rows = conn.execute(
            "SELECT code, tests, verdict, stage, item_id FROM modules ORDER BY id"
        ).fetchall()
    return [tuple(r) for r in rows]


def _calls(journal: Path) -> int:
    with contextlib.closing(sqlite3.connect(journal)) as conn:
        return int(conn.execute("SELECT count(*) FROM calls").fetchone()[0])


async def test_db_seed_self_instruct_keeps_only_functions_that_pass(
    tmp_path: Path, start_emulator: StartEmulator
) -> None:
    emu = await start_emulator(EmulatorConfig(bug_rate=0.3, seed=2))

    def args(db: str) -> list[str]:
        return ["db", "--db", str(tmp_path / db), "seed", "--self-instruct", "10",
                "--journal", str(tmp_path / "j.db"), "--base-url", emu.openai_base_url,
                "--model", "emu", "--isolation", "none", "--round-size", "8"]  # fmt: skip

    rc, out, err = await _cli(args("db"))
    assert rc == 0, err
    summary = orjson.loads(out.splitlines()[-1])
    assert summary["added"] == 10
    # Bugs were injected: some candidates failed their tests and were left out.
    assert summary["skipped"].get("tests_failed", 0) >= 1
    modules = _modules(tmp_path / "db")
    assert len(modules) == 10
    async with Sandbox(parallelism=2, isolation="none") as sandbox:
        for code, tests, verdict, stage, item_id in modules:
            assert verdict == "pass"
            assert stage == "seed"
            assert item_id.startswith("seed-")
            asserts = tests.splitlines()
            assert asserts
            # The stored tests pass against the stored code (checked again here).
            result = await sandbox.run(Job(code=code, tests=[AssertTest(a) for a in asserts]))
            assert result.passed, (code, tests)
    # The same command on a fresh DB with the same journal: no call is paid again and
    # the same modules are admitted.
    calls = _calls(tmp_path / "j.db")
    rc, out, err = await _cli(args("db2"))
    assert rc == 0, err
    assert _calls(tmp_path / "j.db") == calls
    assert _modules(tmp_path / "db2") == modules


async def test_db_seed_usage_errors(tmp_path: Path) -> None:
    rc, _, err = await _cli(["db", "--db", str(tmp_path / "db"), "seed", "--self-instruct", "3"])
    assert rc == 1
    assert "--journal is required with --self-instruct" in err
    rc, _, err = await _cli(["db", "--db", str(tmp_path / "db"), "seed"])
    assert rc == 1
    assert "give a directory or --self-instruct N" in err
