"""Jobs, limits and results of the sandbox."""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal


class _NotGiven(enum.Enum):
    NOT_GIVEN = "NOT_GIVEN"


NOT_GIVEN = _NotGiven.NOT_GIVEN
"""Marks a `CallTest` without an expected value: the run reports what the code returns."""


@dataclass(frozen=True, slots=True)
class Limits:
    """Resource limits of one job (all enforced outside the code's reach).

    Attributes:
        test_timeout_s: wall-clock limit per test when the job has no calibrated
            `Job.time_limits`.
        code_timeout_s: wall-clock limit for executing the module (imports, top-level code).
        memory_bytes: RLIMIT_AS of the child.
        file_bytes: RLIMIT_FSIZE (largest file the code may write).
        tmp_bytes: size of each private tmpfs (/tmp, /var/tmp, /dev/shm).
        open_files: RLIMIT_NOFILE.
        processes: RLIMIT_NPROC for the sandbox uid (binds because the code runs as non-root).
        output_bytes: stdout+stderr beyond this kills the job (status OUTPUT_LIMIT).
        output_keep_bytes: how much of stdout+stderr is kept in the result.
        result_bytes: largest encoded return value accepted per test.
        wall_factor: a test whose wall-clock limit expires while its process has
            used less CPU than the limit (a busy machine) gets more time, up to
            this multiple of the limit in wall-clock time (the cap for code that
            sleeps or blocks).
    """

    test_timeout_s: float = 5.0
    code_timeout_s: float = 10.0
    memory_bytes: int = 2 << 30
    file_bytes: int = 16 << 20
    tmp_bytes: int = 64 << 20
    open_files: int = 64
    processes: int = 64
    output_bytes: int = 1 << 20
    output_keep_bytes: int = 8 << 10
    result_bytes: int = 16 << 20
    wall_factor: float = 5.0

    def __post_init__(self) -> None:
        if self.wall_factor < 1:
            raise ValueError("Limits.wall_factor must be ≥ 1")
        for name in ("test_timeout_s", "code_timeout_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"Limits.{name} must be > 0")


@dataclass(frozen=True, slots=True)
class AssertTest:
    """A teacher-style test: Python source of one or more `assert` statements.

    Example: ``AssertTest("assert add(2, 3) == 5")``. Sources that hold only
    asserts (optionally inside one ``def test_*():``) are judged in the parent:
    the calls into the code run in the sandbox and their values are compared
    outside it. Other sources (assignments, loops) run whole inside the sandbox
    and are reported with ``judged_in="sandbox"``.

    `amr_async.sandbox.asserts_of` makes these from a whole tests file at once,
    each with its plan (`_plan`, private: not part of equality or the repr).
    """

    source: str
    _plan: Any = field(default=None, repr=False, compare=False)


@dataclass(frozen=True, slots=True)
class CallTest:
    """An EvalPlus-style test: call `Job.entry_point` with `args`, compare with `expected`.

    Attributes:
        args: positional arguments (builtin values only; each call gets fresh copies).
        expected: the expected return value, or `NOT_GIVEN` to only record it.
        atol: absolute tolerance for floats (EvalPlus semantics, plus rtol 1e-7).
        oracle: "equal", or "poly_root" (HumanEval/32: |poly(args[0], value)| ≤ atol).
    """

    args: Sequence[Any]
    expected: Any = NOT_GIVEN
    atol: float = 0.0
    oracle: Literal["equal", "poly_root"] = "equal"


Test = AssertTest | CallTest


@dataclass(frozen=True, slots=True)
class Job:
    """Code plus tests plus limits.

    Attributes:
        code: the Python module under test (executed with ``__name__ == "__sandbox__"``).
        tests: the tests, judged independently.
        entry_point: function called by `CallTest`s.
        limits: resource limits.
        time_limits: per-test wall-clock limits (see `calibrated_time_limits`);
            defaults to `Limits.test_timeout_s` each.
        fail_fast: stop at the first test that does not pass (the rest are SKIPPED).
    """

    code: str
    tests: Sequence[Test]
    entry_point: str | None = None
    limits: Limits = field(default_factory=Limits)
    time_limits: Sequence[float] | None = None
    fail_fast: bool = False

    def __post_init__(self) -> None:
        if self.time_limits is not None and len(self.time_limits) != len(self.tests):
            raise ValueError(
                f"Job.time_limits has {len(self.time_limits)} entries for {len(self.tests)} tests"
            )
        if self.entry_point is None and any(isinstance(t, CallTest) for t in self.tests):
            raise ValueError("Job.entry_point is required for CallTest tests")


class Status(enum.StrEnum):
    """Outcome of one test."""

    PASSED = "passed"
    RETURNED = "returned"  # CallTest without expected: the value is recorded, not judged
    FAILED = "failed"  # wrong value or failed assertion
    ERROR = "error"  # the code raised, or returned a value with no strict encoding
    TIMEOUT = "timeout"
    MEMORY = "memory"  # MemoryError (RLIMIT_AS)
    OUTPUT_LIMIT = "output_limit"
    CRASHED = "crashed"  # the process died or exited before reporting this test
    SKIPPED = "skipped"  # not run because of fail_fast

    @property
    def ok(self) -> bool:
        """True for PASSED and RETURNED."""
        return self in (Status.PASSED, Status.RETURNED)


@dataclass(frozen=True, slots=True)
class TestResult:
    """The report of one test.

    Attributes:
        index: position in `Job.tests`.
        status: the outcome.
        message: why it did not pass (exception type and message, expected vs got).
        judged_in: "parent" when the verdict was computed outside the sandbox from
            returned values; "sandbox" when the test ran whole inside it (forgeable).
        seconds: time the code spent on this test as the child measured it
            (for calibration only; limits are enforced by the parent's clock).
        value: the decoded return value for RETURNED and FAILED tests and for
            asserts with one probe; None when a CallTest passed on identical
            encodings (the fast path decodes nothing).
    """

    __test__ = False  # not a pytest class

    index: int
    status: Status
    message: str = ""
    judged_in: Literal["parent", "sandbox"] = "parent"
    seconds: float | None = None
    value: Any = None


@dataclass(frozen=True, slots=True)
class JobResult:
    """The report of one job.

    Attributes:
        passed: every test passed (or returned, for tests without expected value).
        tests: one report per test, in order.
        module_error: exception raised by the module itself, if any.
        isolation: "namespaces" (PID+net+mount namespaces, uid 65534) or "none".
        output: head of the code's stdout+stderr.
        output_bytes: total stdout+stderr size.
        processes_started: how many child processes the job needed (restarts
            after timeouts and crashes).
        cpu_seconds: CPU time (user + system) of the job's processes that ran the
            code, summed over restarts (not counting their own children).
        cached: served from the result cache.
    """

    passed: bool
    tests: tuple[TestResult, ...]
    module_error: str | None
    isolation: str
    output: str = ""
    output_bytes: int = 0
    processes_started: int = 0
    cpu_seconds: float = 0.0
    cached: bool = False

    def counts(self) -> dict[str, int]:
        """Number of tests per status."""
        out: dict[str, int] = {}
        for t in self.tests:
            out[t.status.value] = out.get(t.status.value, 0) + 1
        return out


def calibrated_time_limits(
    reference: JobResult, *, factor: float = 4.0, floor: float = 1.0
) -> list[float]:
    """Per-test limits from a reference run: ``max(floor, factor × reference seconds)``.

    The same rule as EvalPlus (factor 4, floor 1 s by default), so a slow or busy
    machine does not turn correct code into timeouts.

    Raises:
        ValueError: the reference run did not pass (its times would be meaningless).
    """
    if not reference.passed:
        raise ValueError("calibration needs a reference run in which every test passed")
    return [max(floor, factor * (t.seconds or 0.0)) for t in reference.tests]
