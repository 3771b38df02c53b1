"""`amr-async run` as a real subprocess against the emulator: crashes, disk full, budget, secrets.

The emulator runs in the test's event loop; each `amr-async run` is a separate process.
Its counters (times each request body was received) prove that no journaled request is
ever sent again.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import sqlite3
import sys
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

import orjson
import pytest

from amr_async.emulator import EmulatorConfig, LatencyModel, RunningEmulator, body_hash
from amr_async.pipeline import ExitCode, InputItem
from amr_async.pipeline.strategies import DirectStrategy
from amr_async.teacher.openai_chat import OpenAIClient
from tests.conftest import StartEmulator

MODEL = "gpt-4o-mini"  # priced in the shipped table
FAKE_KEY = "sk-test-FAKE-3f9a1c7e5b2d4a6c8e0f1a2b3c4d5e6f"

# Runs a command with a file-size limit, SIGXFSZ ignored so writes fail with EFBIG instead.
_LIMITED = (
    "import resource, runpy, signal, sys\n"
    "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
    "limit = int(sys.argv[1])\n"
    "resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))\n"
    "sys.argv = ['amr-async', *sys.argv[2:]]\n"
    "runpy.run_module('amr_async.cli', run_name='__main__')\n"
)


def _write_input(path: Path, n: int) -> list[InputItem]:
    items = []
    with path.open("wb") as f:
        for i in range(n):
            text = f"Write a Python function `task_{i}(xs)` returning the {i}-th smallest item."
            f.write(orjson.dumps({"id": f"t{i}", "instruction": text}) + b"\n")
            items.append(InputItem(f"t{i}", i + 1, text))
    return items


def _hashes(items: Sequence[InputItem], base_url: str) -> dict[str, str]:
    """Item id -> the emulator's hash of the body its direct call sends."""
    stage = DirectStrategy(model=MODEL).stages[0]
    client = OpenAIClient(base_url=base_url, api_key="")
    return {
        it.item_id: body_hash(client._encode(stage.request(it)))  # type: ignore[attr-defined]
        for it in items
    }


def _counts(emu: RunningEmulator) -> Counter[str]:
    return Counter(emu.emulator.counters.body_hashes)


def _journaled_items(journal: Path) -> set[str]:
    if not journal.exists():
        return set()
    conn = sqlite3.connect(f"file:{journal}?mode=ro", uri=True)
    try:
        rows = conn.execute("SELECT item_id FROM calls WHERE item_id IS NOT NULL").fetchall()
    except sqlite3.OperationalError:  # killed before the schema was created
        return set()
    else:
        return {r[0] for r in rows}
    finally:
        conn.close()


def _files(directory: Path) -> list[Path]:
    return [p for p in directory.iterdir() if p.is_file()]


def _records(path: Path) -> list[dict[str, object]]:
    data = path.read_bytes()
    assert data.endswith(b"\n"), "output ends in a partial line"
    return [orjson.loads(line) for line in data.splitlines()]


async def _cli(
    args: Sequence[str],
    *,
    env: dict[str, str] | None = None,
    kill_after_s: float | None = None,
    kill_when: Callable[[], Awaitable[None]] | None = None,
    fsize_limit: int | None = None,
) -> tuple[int, str, str]:
    cmd = [sys.executable, "-m", "amr_async.cli", *args]
    if fsize_limit is not None:
        cmd = [sys.executable, "-c", _LIMITED, str(fsize_limit), *args]
    full_env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
    full_env.update(env or {})
    proc = await asyncio.create_subprocess_exec(
        *cmd,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=full_env,
    )
    if kill_after_s is not None:
        try:
            await asyncio.wait_for(asyncio.shield(proc.wait()), kill_after_s)
        except TimeoutError:
            proc.send_signal(signal.SIGKILL)
    if kill_when is not None:
        waiter = asyncio.ensure_future(proc.wait())
        trigger = asyncio.ensure_future(kill_when())
        await asyncio.wait([waiter, trigger], return_when=asyncio.FIRST_COMPLETED)
        if not waiter.done():
            proc.send_signal(signal.SIGKILL)
        trigger.cancel()
        await asyncio.gather(waiter, trigger, return_exceptions=True)
    out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def _run_args(tmp: Path, emu: RunningEmulator, *extra: str) -> list[str]:
    return [
        "run",
        "--input",
        str(tmp / "in.jsonl"),
        "--output",
        str(tmp / "out.jsonl"),
        "--journal",
        str(tmp / "j.db"),
        "--base-url",
        emu.openai_base_url,
        "--model",
        MODEL,
        *extra,
    ]


@pytest.mark.timeout(600)
async def test_kill9_at_random_moments_then_resume_equals_uninterrupted_run(
    tmp_path: Path, start_emulator: StartEmulator
) -> None:
    n = 400
    latency = LatencyModel(base_s=0.01, sigma=0.5)
    reference_emu = await start_emulator(EmulatorConfig(latency=latency))
    emu = await start_emulator(EmulatorConfig(latency=latency))
    ref_dir, dir_ = tmp_path / "ref", tmp_path / "kill"
    ref_dir.mkdir()
    dir_.mkdir()
    items = _write_input(ref_dir / "in.jsonl", n)
    _write_input(dir_ / "in.jsonl", n)
    hashes = _hashes(items, emu.openai_base_url)

    rc, _, err = await _cli(_run_args(ref_dir, reference_emu, "--concurrency", "8"))
    assert rc == ExitCode.OK, err
    reference = _records(ref_dir / "out.jsonl")

    rng = random.Random(20261126)

    def moment() -> Callable[[], Awaitable[None]]:
        """A random moment of the process's working life, measured in progress so that it
        falls inside the run on any machine: after 1-25 requests reached the emulator, plus
        0-50 ms (which may land between a send and its answer, or mid-commit)."""
        requests, delay = rng.randint(1, 25), rng.uniform(0.0, 0.05)

        async def wait() -> None:
            seen = sum(_counts(emu).values())
            # The emulator offers no notification; a short poll is the simplest honest wait.
            while sum(_counts(emu).values()) < seen + requests:  # noqa: ASYNC110
                await asyncio.sleep(0.002)
            await asyncio.sleep(delay)

        return wait

    kills = 0
    progress = []
    for _ in range(10):
        journaled = _journaled_items(dir_ / "j.db")
        progress.append(len(journaled))
        before = _counts(emu)
        # Full flags plus --resume: the first attempt finds no run and starts it.
        rc, _, err = await _cli(
            [*_run_args(dir_, emu, "--concurrency", "8"), "--resume"], kill_when=moment()
        )
        assert rc in (ExitCode.OK, -signal.SIGKILL), err
        kills += rc == -signal.SIGKILL
        sent = _counts(emu) - before
        resent = {i for i in journaled if sent[hashes[i]]}
        assert not resent, f"journaled requests sent again: {sorted(resent)}"
    journaled = _journaled_items(dir_ / "j.db")
    before = _counts(emu)
    rc, _, err = await _cli(["run", "--journal", str(dir_ / "j.db"), "--resume"])
    assert rc == ExitCode.OK, err
    sent = _counts(emu) - before
    assert not {i for i in journaled if sent[hashes[i]]}

    print(f"kills inside a run: {kills} of 10; journaled calls at each resume: {progress}")
    assert kills == 10, "every kill should fall inside a run"
    assert progress[-1] > progress[1] > 0, "the runs made progress between kills"
    records = _records(dir_ / "out.jsonl")
    ids = [r["id"] for r in records]
    assert len(ids) == len(set(ids)) == n  # no duplicate, none missing
    key = lambda r: orjson.dumps(r, option=orjson.OPT_SORT_KEYS)  # noqa: E731
    assert sorted(map(key, records)) == sorted(map(key, reference))
    # Every request reached the server; only those in flight at a kill more than once.
    counts = _counts(emu)
    assert set(hashes.values()) <= set(counts)


async def test_disk_full_fails_cleanly_and_resume_completes(
    tmp_path: Path, start_emulator: StartEmulator
) -> None:
    emu = await start_emulator()
    n = 400
    items = _write_input(tmp_path / "in.jsonl", n)
    hashes = _hashes(items, emu.openai_base_url)
    args = _run_args(tmp_path, emu, "--concurrency", "16", "--quiet")
    rc, _, err = await _cli(args, fsize_limit=200_000)
    assert rc == ExitCode.STORAGE, err
    assert "no space left" in err
    assert len(err.strip().splitlines()) == 1  # one clear line, no traceback
    conn = sqlite3.connect(tmp_path / "j.db")
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    conn.close()
    journaled = _journaled_items(tmp_path / "j.db")
    assert 0 < len(journaled) < n

    before = _counts(emu)
    rc, _, err = await _cli(["run", "--journal", str(tmp_path / "j.db"), "--resume"])
    assert rc == ExitCode.OK, err
    sent = _counts(emu) - before
    assert not {i for i in journaled if sent[hashes[i]]}
    ids = [r["id"] for r in _records(tmp_path / "out.jsonl")]
    assert sorted(ids) == sorted(it.item_id for it in items)


async def test_budget_stops_dispatch_and_higher_cap_resumes(
    tmp_path: Path, start_emulator: StartEmulator
) -> None:
    emu = await start_emulator()
    n = 60
    _write_input(tmp_path / "in.jsonl", n)
    args = _run_args(tmp_path, emu, "--concurrency", "4", "--budget-tokens", "2000", "--quiet")
    rc, _, err = await _cli(args)
    assert rc == ExitCode.BUDGET, err
    assert len(err.strip().splitlines()) == 1
    assert "budget reached" in err
    assert "resume with a higher cap" in err
    done = len(_records(tmp_path / "out.jsonl"))
    assert 0 < done < n
    rc, out, _ = await _cli(["runs", "--journal", str(tmp_path / "j.db"), "--json"])
    assert rc == 0
    (run,) = [orjson.loads(line) for line in out.splitlines()]
    assert run["status"] == "budget"
    assert run["items"]["done"] == done
    assert run["by_stage"]["direct"]["tokens"] == run["totals"]["tokens"] >= 2000
    assert run["totals"]["cost_usd"] > 0  # gpt-4o-mini is in the pricing table
    rc, _, err = await _cli(
        ["run", "--journal", str(tmp_path / "j.db"), "--resume", "--budget-tokens", "10000000"]
    )
    assert rc == ExitCode.OK, err
    assert len(_records(tmp_path / "out.jsonl")) == n
    rc, out, _ = await _cli(["runs", "--journal", str(tmp_path / "j.db"), "--json"])
    (run,) = [orjson.loads(line) for line in out.splitlines()]
    assert (run["status"], run["attempts"], run["items"]) == ("finished", 2, {"done": n})
    assert run["totals"]["calls"] == n
    # Calls in flight at the stop were journaled: nothing was bought twice.
    assert set(_counts(emu).values()) == {1}


async def test_fake_key_never_reaches_journal_logs_or_outputs(
    tmp_path: Path, start_emulator: StartEmulator
) -> None:
    emu = await start_emulator(EmulatorConfig(api_key=FAKE_KEY))  # 401 for any other key
    _write_input(tmp_path / "in.jsonl", 20)
    with (tmp_path / "in.jsonl").open("ab") as f:
        f.write(b"{broken\n")
    rc, out, err = await _cli(_run_args(tmp_path, emu), env={"OPENAI_API_KEY": FAKE_KEY})
    assert rc == ExitCode.PARTIAL, err  # the broken line is rejected, the rest done
    assert len(_records(tmp_path / "out.jsonl")) == 20
    (tmp_path / "stdout.log").write_text(out)
    (tmp_path / "stderr.log").write_text(err)
    # A wrong key: the 401 must not echo it either.
    rc, out2, err2 = await _cli(
        [
            *("run", "--journal", str(tmp_path / "j2.db"), "--input", str(tmp_path / "in.jsonl")),
            *("--output", str(tmp_path / "out2.jsonl"), "--base-url", emu.openai_base_url),
            *("--model", MODEL),
        ],
        env={"OPENAI_API_KEY": FAKE_KEY[::-1]},
    )
    assert rc == ExitCode.TEACHER, err2  # stops at once instead of failing every item
    assert "teacher refused the call (auth)" in err2
    (tmp_path / "wrong.log").write_text(out2 + err2)
    files = _files(tmp_path)
    assert any(p.name == "j.db" for p in files)
    for path in files:
        data = path.read_bytes()
        assert FAKE_KEY.encode() not in data, path
        assert FAKE_KEY[::-1].encode() not in data, path


async def test_cache_answers_a_new_run_without_sending_anything(
    tmp_path: Path, start_emulator: StartEmulator
) -> None:
    emu = await start_emulator()
    n = 30
    _write_input(tmp_path / "in.jsonl", n)
    journal = str(tmp_path / "j.db")
    rc, _, err = await _cli(_run_args(tmp_path, emu, "--run-id", "first", "--concurrency", "4"))
    assert rc == ExitCode.OK, err
    first = _records(tmp_path / "out.jsonl")
    assert sum(_counts(emu).values()) == n

    def new_run(run_id: str, output: str, *extra: str) -> list[str]:
        return [
            *("run", "--journal", journal, "--run-id", run_id),
            *("--input", str(tmp_path / "in.jsonl"), "--output", str(tmp_path / output)),
            *("--base-url", emu.openai_base_url),
            *("--model", MODEL, "--concurrency", "4", *extra),
        ]  # fmt: skip

    # A new run (new id, new output) over the same input with the cross-run cache.
    before = emu.emulator.counters.snapshot()["requests"]
    rc, _, err = await _cli(new_run("second", "out2.jsonl", "--cache"))
    assert rc == ExitCode.OK, err
    assert emu.emulator.counters.snapshot()["requests"] == before  # not one request sent
    second = _records(tmp_path / "out2.jsonl")
    key = lambda r: orjson.dumps(r, option=orjson.OPT_SORT_KEYS)  # noqa: E731
    assert sorted(map(key, second)) == sorted(map(key, first))
    rc, out, _ = await _cli(["runs", "--journal", journal, "--json"])
    assert rc == 0
    runs = {r["run_id"]: r for r in map(orjson.loads, out.splitlines())}
    assert runs["second"]["status"] == "finished"
    assert runs["second"]["totals"]["calls"] == n  # each answered from the cache...
    assert runs["second"]["totals"]["cost_usd"] == 0  # ...at no cost
    assert runs["first"]["totals"]["cost_usd"] > 0

    # Without --cache a third run buys every answer again.
    rc, _, err = await _cli(new_run("third", "out3.jsonl"))
    assert rc == ExitCode.OK, err
    assert sum(_counts(emu).values()) == 2 * n


async def test_second_run_on_same_journal_is_refused(
    tmp_path: Path, start_emulator: StartEmulator
) -> None:
    from amr_async.journal import Journal

    emu = await start_emulator()
    _write_input(tmp_path / "in.jsonl", 3)
    with Journal.open(tmp_path / "j.db"):
        rc, _, err = await _cli(_run_args(tmp_path, emu))
    assert rc == ExitCode.LOCKED
    assert f"pid {os.getpid()}" in err
    assert "already open for writing" in err


async def test_sigterm_stops_cleanly_and_resume_finishes(
    tmp_path: Path, start_emulator: StartEmulator
) -> None:
    emu = await start_emulator(EmulatorConfig(latency=LatencyModel(base_s=0.05)))
    n = 200
    _write_input(tmp_path / "in.jsonl", n)
    proc = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "amr_async.cli", *_run_args(tmp_path, emu, "--concurrency", "4")),
        stderr=asyncio.subprocess.PIPE,
    )
    while sum(_counts(emu).values()) < 10:  # noqa: ASYNC110  (no notification to wait on)
        await asyncio.sleep(0.005)
    proc.send_signal(signal.SIGTERM)
    _, err = await proc.communicate()
    assert proc.returncode == ExitCode.INTERRUPTED, err
    assert "interrupted" in err.decode()
    done = len(_records(tmp_path / "out.jsonl"))
    assert 0 < done < n
    # In-flight calls finished and were journaled: the resume sends each request once.
    rc, _, err2 = await _cli(["run", "--journal", str(tmp_path / "j.db"), "--resume"])
    assert rc == ExitCode.OK, err2
    assert len(_records(tmp_path / "out.jsonl")) == n
    assert set(_counts(emu).values()) == {1}


async def test_missing_input_is_a_usage_error(tmp_path: Path) -> None:
    rc, _, err = await _cli(
        [
            *("run", "--input", str(tmp_path / "nope.jsonl")),
            *("--output", str(tmp_path / "o.jsonl"), "--journal", str(tmp_path / "j.db")),
            *("--model", MODEL),
        ]
    )
    assert rc == ExitCode.USAGE
    assert "nope.jsonl does not exist: fix --input" in err
