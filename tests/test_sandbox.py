"""The Sandbox API: verdicts, pool, cache, limits, calibration."""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from amr_async.sandbox import (
    NOT_GIVEN,
    AssertTest,
    CallTest,
    Job,
    JobResult,
    Limits,
    Sandbox,
    SandboxError,
    Status,
    TestResult,
    _worker,
    calibrated_time_limits,
)
from amr_async.sandbox._sandbox import _starved_by

CODE = "def add(a, b):\n    return a + b\n"
LIMITS = Limits(test_timeout_s=20.0, memory_bytes=512 << 20)


@pytest.fixture
async def sandbox() -> AsyncIterator[Sandbox]:
    async with Sandbox(parallelism=2) as sb:
        yield sb


async def test_assert_and_call_tests(sandbox: Sandbox) -> None:
    job = Job(
        CODE,
        [
            AssertTest("assert add(2, 3) == 5"),
            AssertTest("assert add(2, 2) == 5"),
            CallTest((1, 2), 3),
            CallTest(([1], [2]), NOT_GIVEN),
            AssertTest("assert add('a', 1) == 'a1'"),
        ],
        entry_point="add",
        limits=LIMITS,
    )
    result = await sandbox.run(job)
    assert [t.status for t in result.tests] == [
        Status.PASSED,
        Status.FAILED,
        Status.PASSED,
        Status.RETURNED,
        Status.ERROR,
    ]
    assert "add(2, 2) = 4" in result.tests[1].message
    assert result.tests[3].value == [1, 2]
    assert "TypeError" in result.tests[4].message
    assert not result.passed
    assert result.isolation == sandbox.isolation
    assert result.processes_started == 1


async def test_probes_spanning_lines_run_as_written(sandbox: Sandbox) -> None:
    tests = [
        AssertTest("assert add(\n    'é',\n    'ü') == 'éü'"),
        AssertTest("assert (add(1, 2)\n        .bit_length()) == 2"),
    ]
    result = await sandbox.run(Job(CODE, tests, limits=LIMITS))
    assert [t.status for t in result.tests] == [Status.PASSED, Status.PASSED]


async def test_module_errors_fail_every_test(sandbox: Sandbox) -> None:
    result = await sandbox.run(Job("def f(:\n", [AssertTest("assert f() == 1")], limits=LIMITS))
    assert result.module_error is not None
    assert result.module_error.startswith("SyntaxError")
    assert result.tests[0].status is Status.ERROR


async def test_job_without_tests_still_runs_the_module(sandbox: Sandbox) -> None:
    assert (await sandbox.run(Job("x = 1\n", [], limits=LIMITS))).passed
    broken = await sandbox.run(Job("raise ValueError('no')\n", [], limits=LIMITS))
    assert not broken.passed
    assert broken.module_error == "ValueError: no"


async def test_main_block_stdin_env_and_private_dirs(sandbox: Sandbox) -> None:
    code = (
        "import os, pathlib, tempfile\n"
        "if __name__ == '__main__':\n"
        "    raise SystemExit('a main block must not run')\n"
        "def read_stdin():\n"
        "    try:\n"
        "        return input()\n"
        "    except EOFError:\n"
        "        return 'closed'\n"
        "def env_names():\n"
        "    return sorted(os.environ)\n"
        "def sigint_kills():\n"
        "    import signal\n"
        "    return signal.getsignal(signal.SIGINT) is signal.SIG_DFL\n"
        "def scratch():\n"
        "    pathlib.Path('here.txt').write_text('a')\n"
        "    with tempfile.NamedTemporaryFile() as fh:\n"
        "        fh.write(b'b')\n"
        "    return pathlib.Path('here.txt').read_text()\n"
    )
    job = Job(
        code,
        [
            AssertTest("assert read_stdin() == 'closed'"),
            AssertTest("assert env_names() == ['HOME', 'LANG', 'PATH', 'TMPDIR']"),
            AssertTest("assert scratch() == 'a'"),
            AssertTest("assert sigint_kills()"),
        ],
        limits=LIMITS,
    )
    result = await sandbox.run(job)
    assert [t.status for t in result.tests] == [Status.PASSED] * 4, result.tests


async def test_output_is_captured(sandbox: Sandbox) -> None:
    code = (
        "import sys\n"
        "def f():\n"
        "    print('hello')\n"
        "    print('warn', file=sys.stderr)\n"
        "    return 1\n"
    )
    result = await sandbox.run(Job(code, [AssertTest("assert f() == 1")], limits=LIMITS))
    assert result.passed
    assert "hello" in result.output
    assert "warn" in result.output


async def test_fail_fast_skips_the_rest(sandbox: Sandbox) -> None:
    tests = [AssertTest("assert add(1, 1) == 3")] + [AssertTest("assert add(1, 1) == 2")] * 3
    result = await sandbox.run(Job(CODE, tests, limits=LIMITS, fail_fast=True))
    assert result.tests[0].status is Status.FAILED
    assert {t.status for t in result.tests[1:]} <= {Status.SKIPPED, Status.PASSED}
    assert result.counts()["failed"] == 1


async def test_timeout_then_the_next_tests_still_run(sandbox: Sandbox) -> None:
    code = CODE + "def hang():\n    while True:\n        pass\n"
    tests = [
        AssertTest("assert add(1, 1) == 2"),
        AssertTest("assert hang() == 1"),
        AssertTest("assert add(2, 2) == 4"),
    ]
    limits = [20.0, 0.5, 20.0]
    result = await sandbox.run(Job(code, tests, limits=LIMITS, time_limits=limits))
    assert [t.status for t in result.tests] == [Status.PASSED, Status.TIMEOUT, Status.PASSED]
    # A child with few probes writes every record at once, so the hang is blamed on
    # the first process without a rerun; then the rest runs anew.
    assert result.processes_started == 2
    assert "0.5 s" in result.tests[1].message


async def test_module_timeout(sandbox: Sandbox) -> None:
    limits = Limits(test_timeout_s=5.0, code_timeout_s=0.5)
    result = await sandbox.run(
        Job("while True:\n    pass\n", [AssertTest("assert 1")], limits=limits)
    )
    assert result.module_error is not None
    assert "module execution exceeded" in result.module_error


async def test_huge_result_is_an_output_limit(sandbox: Sandbox) -> None:
    limits = Limits(test_timeout_s=20.0, result_bytes=1000)
    code = "def f():\n    return 'x' * 100000\n"
    result = await sandbox.run(Job(code, [AssertTest("assert f() == ''")], limits=limits))
    assert result.tests[0].status is Status.OUTPUT_LIMIT


async def test_cache_hits_and_keys(sandbox: Sandbox) -> None:
    job = Job(CODE, [AssertTest("assert add(1, 2) == 3")], limits=LIMITS)
    first = await sandbox.run(job)
    second = await sandbox.run(job)
    assert not first.cached
    assert second.cached
    assert second.tests == first.tests
    other_tests = Job(CODE, [AssertTest("assert add(1, 2) == 4")], limits=LIMITS)
    other_code = Job(CODE + "\n", job.tests, limits=LIMITS)
    keys = {sandbox.cache_key(j) for j in (job, other_tests, other_code)}
    assert len(keys) == 3
    assert sandbox.cache_key(job)[0] == sandbox.cache_key(other_tests)[0]  # same code hash


async def test_timeouts_are_not_cached(sandbox: Sandbox) -> None:
    job = Job(
        "def f():\n    while True:\n        pass\n", [AssertTest("assert f()")], time_limits=[0.3]
    )
    assert not (await sandbox.run(job)).cached
    assert not (await sandbox.run(job)).cached


async def test_parallel_jobs_keep_their_results_apart(sandbox: Sandbox) -> None:
    jobs = [
        Job(f"def f():\n    return {i}\n", [AssertTest(f"assert f() == {i}")], limits=LIMITS)
        for i in range(8)
    ]
    results = await asyncio.gather(*(sandbox.run(j) for j in jobs))
    assert all(r.passed for r in results)
    assert [r.tests[0].value for r in results] == list(range(8))


async def test_cancellation_leaves_no_process(sandbox: Sandbox) -> None:
    job = Job(
        "def f():\n    while True:\n        pass\n", [AssertTest("assert f()")], limits=LIMITS
    )
    task = asyncio.create_task(sandbox.run(job))
    await asyncio.sleep(0.5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # the sandbox still works afterwards
    assert (await sandbox.run(Job(CODE, [AssertTest("assert add(1, 1) == 2")]))).passed


async def test_closed_sandbox_refuses_work() -> None:
    sb = Sandbox()
    await sb.aclose()
    with pytest.raises(SandboxError):
        await sb.run(Job(CODE, []))


def test_calibrated_time_limits() -> None:
    ref = JobResult(
        passed=True,
        tests=(
            TestResult(0, Status.PASSED, seconds=0.01),
            TestResult(1, Status.PASSED, seconds=2.0),
        ),
        module_error=None,
        isolation="namespaces",
    )
    assert calibrated_time_limits(ref) == [1.0, 8.0]
    assert calibrated_time_limits(ref, factor=2.0, floor=0.1) == [0.1, 4.0]
    with pytest.raises(ValueError, match="reference run"):
        calibrated_time_limits(JobResult(False, (), None, "none"))


def test_job_validation() -> None:
    with pytest.raises(ValueError, match="entry_point"):
        Job(CODE, [CallTest((1,), 1)])
    with pytest.raises(ValueError, match="time_limits"):
        Job(CODE, [AssertTest("assert 1")], time_limits=[1.0, 2.0])
    with pytest.raises(ValueError, match="test_timeout_s"):
        Limits(test_timeout_s=0)


@pytest.mark.skipif(os.geteuid() != 0, reason="namespace isolation needs root")
async def test_isolation_is_recorded() -> None:
    async with Sandbox(isolation="namespaces") as sb:
        result = await sb.run(Job(CODE, [AssertTest("assert add(1, 1) == 2")]))
    assert result.isolation == "namespaces"


async def test_isolation_none_still_judges() -> None:
    async with Sandbox(isolation="none") as sb:
        result = await sb.run(Job(CODE, [AssertTest("assert add(1, 1) == 2")], limits=LIMITS))
    assert result.isolation == "none"
    assert result.passed


async def test_isolation_none_gives_each_job_its_own_work_dir_and_removes_it() -> None:
    # The zygote sets the environment once; each child sets HOME and TMPDIR to its dir.
    code = (
        "import os\n"
        "def where():\n"
        "    here = os.getcwd()\n"
        "    assert os.environ['HOME'] == os.environ['TMPDIR'] == here\n"
        "    assert sorted(os.environ) == ['HOME', 'LANG', 'PATH', 'TMPDIR']\n"
        "    os.makedirs('a/b')\n"
        "    open('a/b/f.txt', 'w').write('x')\n"
        "    return here\n"
    )
    async with Sandbox(isolation="none", cache_size=0) as sb:
        first, second, empty = (
            await sb.run(Job(code, [CallTest((), NOT_GIVEN)], entry_point="where", limits=LIMITS)),
            await sb.run(Job(code, [CallTest((), NOT_GIVEN)], entry_point="where", limits=LIMITS)),
            await sb.run(Job("import os\nhere = os.getcwd()\n", [AssertTest("assert here")])),
        )
    assert [r.passed for r in (first, second, empty)] == [True] * 3, (first, second, empty)
    dirs = [Path(r.tests[0].value) for r in (first, second)]
    assert dirs[0] != dirs[1]
    assert not any(d.exists() for d in dirs)  # removed, with what the job wrote in them


def test_busy_machine_extends_deadlines_but_not_forever() -> None:
    me = os.getpid()
    cpu = time.process_time()
    now = time.monotonic()
    # no CPU used since the test "began" 2 s ago (a starved process): more time
    assert _starved_by(me, cpu + 100.0, now - 2.0, now, 2.0, 3.0) > 0
    assert _starved_by(me, cpu + 100.0, now - 6.0, now, 2.0, 3.0) == 0  # wall cap reached
    assert _starved_by(None, 0.0, now - 2.0, now, 2.0, 3.0) == 0
    # a process that used its whole limit in CPU is slow, not starved
    while time.process_time() < cpu + 0.3:
        pass
    assert _starved_by(me, cpu, now - 2.0, now, 0.2, 3.0) == 0


async def test_shards_split_the_tests_and_merge_them_in_order() -> None:
    tests: list[CallTest] = [CallTest((i, 1), i + 1) for i in range(7)]
    tests[3] = CallTest((3, 1), 5)  # wrong expectation: fails in its shard only
    tests[5] = CallTest((5, "x"), NOT_GIVEN)  # raises TypeError
    job = Job(CODE, tests, entry_point="add", limits=LIMITS)
    async with Sandbox(parallelism=2, cache_size=0) as sandbox:
        whole = await sandbox.run(job)
        split = await sandbox.run(job, shards=3)
        # More shards than tests: one process per test.
        few = await sandbox.run(Job(CODE, tests[:2], entry_point="add", limits=LIMITS), shards=8)
        with pytest.raises(ValueError, match="shards"):
            await sandbox.run(job, shards=0)
    assert [t.index for t in split.tests] == list(range(7))
    assert [(t.status, t.message) for t in split.tests] == [
        (t.status, t.message) for t in whole.tests
    ]
    assert split.tests[3].status is Status.FAILED
    assert split.tests[3].value == 4
    assert split.tests[5].status is Status.ERROR
    assert not split.passed
    assert (whole.processes_started, split.processes_started) == (1, 3)
    assert few.passed
    assert few.processes_started == 2


async def test_result_reports_the_cpu_time_of_the_code(sandbox: Sandbox) -> None:
    spin = (
        "import time\ndef spin():\n    while time.process_time() < 0.3:\n        pass\n"
        "    return 1\n"
    )
    result = await sandbox.run(Job(spin, [CallTest((), 1)], entry_point="spin", limits=LIMITS))
    assert result.passed
    assert result.cpu_seconds >= 0.3


async def test_a_held_back_record_is_not_blamed_for_the_next_hang(sandbox: Sandbox) -> None:
    # The module sleeps past the child's unbuffered start, so test 1's record is
    # held back in the child when test 2 hangs; only test 2 may time out.
    code = "import time\ntime.sleep(0.1)\n" + CODE + "def hang():\n    while True:\n        pass\n"
    tests = [
        AssertTest("assert add(1, 1) == 2"),
        AssertTest("assert add(2, 2) == 4"),
        AssertTest("assert hang() == 1"),
    ]
    result = await sandbox.run(Job(code, tests, limits=LIMITS, time_limits=[20.0, 20.0, 0.5]))
    assert [t.status for t in result.tests] == [Status.PASSED, Status.PASSED, Status.TIMEOUT]
    # So few records are written at once: the first process is blamed, no rerun.
    assert result.processes_started == 1


async def test_a_held_back_record_of_many_is_not_blamed_for_the_next_hang(
    sandbox: Sandbox,
) -> None:
    # Many probes: the child batches its records, so after a hang the tests from the
    # first unreported one rerun in a process that writes each record at once.
    code = "import time\ntime.sleep(0.1)\n" + CODE + "def hang():\n    while True:\n        pass\n"
    quick = [AssertTest(f"assert add({i}, 1) == {i + 1}") for i in range(40)]
    tests = [*quick, AssertTest("assert hang() == 1")]
    limits = [20.0] * len(quick) + [0.5]
    result = await sandbox.run(Job(code, tests, limits=LIMITS, time_limits=limits))
    assert [t.status for t in result.tests] == [Status.PASSED] * len(quick) + [Status.TIMEOUT]
    assert result.processes_started == 2


@pytest.mark.parametrize(
    ("killed", "output", "cpu"),
    [(None, "", 0.0), ("deadline", 'quote " backslash \\ \n\t\x00 ü 😀 \ufffd', 1e-05)],
)
def test_report_json_matches_json_dumps(killed: str | None, output: str, cpu: float) -> None:
    # The zygote formats its report by hand; the parent reads it with json.loads.
    raw = _worker.report_json(-9, killed, output, 123, cpu)
    expected = {"exit": -9, "killed": killed, "output": output, "output_bytes": 123, "cpu": cpu}
    assert json.loads(raw) == expected
    assert raw == json.dumps(expected).encode()
