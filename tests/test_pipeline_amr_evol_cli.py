"""`amr-async run --strategy amr-evol` as a real process: kill -9 at random moments, resume.

The emulator (a test double) runs in the test's event loop with injected bugs, so some
modules fail their tests. A run killed with SIGKILL at several seeded random moments (and
resumed after each, at other concurrencies) must write the same records and leave the same
module DB as a run that was never interrupted, paying for no call twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
import sqlite3
from pathlib import Path

import orjson
import pytest

from amr_async.emulator import Bank, EmulatorConfig, RunningEmulator
from amr_async.pipeline import ExitCode
from tests.conftest import StartEmulator
from tests.test_pipeline_cli import _cli


def _write_input(path: Path, bank: Bank, n: int) -> None:
    path.write_bytes(
        b"".join(
            orjson.dumps(
                {
                    "id": f"t{i:02d}",
                    "instruction": f"Write a Python function `{t.entry_point}(...)`. "
                    f"{t.instruction}",
                }
            )
            + b"\n"
            for i, t in enumerate(bank.tasks[60 : 60 + n])
        )
    )


def _args(tmp: Path, emu: RunningEmulator, *extra: str) -> list[str]:
    return [
        "run", "--strategy", "amr-evol", "--input", str(tmp / "in.jsonl"),
        "--output", str(tmp / "out.jsonl"), "--journal", str(tmp / "j.db"),
        "--db", str(tmp / "db"), "--base-url", emu.openai_base_url, "--model", "emu",
        "--window", "4", "--isolation", "none", *extra,
    ]  # fmt: skip


def _calls(journal: Path) -> int:
    if not journal.exists():
        return 0
    with contextlib.closing(sqlite3.connect(f"file:{journal}?mode=ro", uri=True)) as conn:
        try:
            return int(conn.execute("SELECT count(*) FROM calls").fetchone()[0])
        except sqlite3.OperationalError:  # killed before the schema was created
            return 0


def _db(tmp: Path) -> list[tuple[str, str]]:
    with contextlib.closing(sqlite3.connect(tmp / "db" / "modules.sqlite")) as conn:
        return [(r[0], r[1]) for r in conn.execute("SELECT code, item_id FROM modules ORDER BY id")]


def _records(tmp: Path) -> dict[str, dict[str, object]]:
    rows = [orjson.loads(x) for x in (tmp / "out.jsonl").read_bytes().splitlines()]
    return {str(r["id"]): r for r in rows}


@pytest.mark.timeout(300)
async def test_kill9_at_random_moments_then_resume_equals_uninterrupted(
    tmp_path: Path, start_emulator: StartEmulator, emulator_bank: Bank
) -> None:
    emu = await start_emulator(EmulatorConfig(bug_rate=0.2, seed=3))
    ref, crash = tmp_path / "ref", tmp_path / "crash"
    for d in (ref, crash):
        d.mkdir()
        _write_input(d / "in.jsonl", emulator_bank, 16)
    rc, _, err = await _cli(_args(ref, emu, "--concurrency", "8"))
    assert rc == ExitCode.OK, err
    total = _calls(ref / "j.db")
    # Three kills at seeded random moments: after a random share of the calls is journaled,
    # plus a random delay of up to 50 ms (so a kill can land between any two writes).
    rng = random.Random(9)
    moments = sorted(rng.uniform(0.1, 0.9) for _ in range(3))
    resume: list[str] = []
    kills = 0
    for share in moments:
        threshold = max(1, int(total * share))
        delay = rng.uniform(0.0, 0.05)

        async def at_moment(threshold: int = threshold, delay: float = delay) -> None:
            # The journal offers no notification; a short poll is the simplest honest wait.
            while _calls(crash / "j.db") < threshold:  # noqa: ASYNC110
                await asyncio.sleep(0.01)
            await asyncio.sleep(delay)

        concurrency = str(rng.choice([3, 8, 50]))
        rc, _, err = await _cli(
            [*_args(crash, emu, "--concurrency", concurrency), *resume], kill_when=at_moment
        )
        if rc == ExitCode.OK:
            break  # it finished before the moment came: nothing left to kill
        assert rc == -signal.SIGKILL, err
        kills += 1
        resume = ["--resume"]
    assert kills >= 2
    assert 0 < _calls(crash / "j.db") <= total
    rc, _, err = await _cli([*_args(crash, emu, "--concurrency", "5"), "--resume"])
    assert rc == ExitCode.OK, err
    assert _calls(crash / "j.db") == total  # nothing was paid twice
    assert _records(crash) == _records(ref)
    assert len(_records(ref)) == 16
    assert _db(crash) == _db(ref)
    assert len(_db(ref)) > 4  # modules from several windows


async def test_usage_errors_name_the_problem(tmp_path: Path, emulator: RunningEmulator) -> None:
    (tmp_path / "in.jsonl").write_text('{"id": "a", "instruction": "x"}\n')
    args = _args(tmp_path, emulator)
    no_db = [a for i, a in enumerate(args) if a != "--db" and args[i - 1] != "--db"]
    rc, _, err = await _cli(no_db)
    assert rc == ExitCode.USAGE
    assert "--db is required for --strategy amr-evol" in err
    prompts = tmp_path / "prompts"
    prompts.mkdir()
    (prompts / "tests.toml").write_text('system = ""\nuser = "$function_name $nope"\n')
    rc, _, err = await _cli([*args, "--prompts", str(prompts)])
    assert rc == ExitCode.USAGE
    assert "tests.toml" in err
    assert "$nope" in err
