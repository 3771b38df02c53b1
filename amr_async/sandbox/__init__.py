"""Execution of untrusted code against tests, judged so the code cannot forge a pass.

    Sandbox.run(Job) ─► zygote ─fork─► child (PID 1 of its own PID ns, own mount ns, uid 65534)
         ▲                │ supervises every job:    │ probe values (fd 3)
         │                │ kill, deadline, output cap
         └──── per-test deadlines, judging in the parent ◄──────────────┘

See `_judge` for why verdicts are computed in the parent and `_worker` for the
process tree.
"""

from amr_async.sandbox._judge import asserts_of as asserts_of
from amr_async.sandbox._judge import same as same
from amr_async.sandbox._sandbox import Sandbox as Sandbox
from amr_async.sandbox._sandbox import SandboxError as SandboxError
from amr_async.sandbox._types import NOT_GIVEN as NOT_GIVEN
from amr_async.sandbox._types import AssertTest as AssertTest
from amr_async.sandbox._types import CallTest as CallTest
from amr_async.sandbox._types import Job as Job
from amr_async.sandbox._types import JobResult as JobResult
from amr_async.sandbox._types import Limits as Limits
from amr_async.sandbox._types import Status as Status
from amr_async.sandbox._types import Test as Test
from amr_async.sandbox._types import TestResult as TestResult
from amr_async.sandbox._types import calibrated_time_limits as calibrated_time_limits

__all__ = [
    "NOT_GIVEN",
    "AssertTest",
    "CallTest",
    "Job",
    "JobResult",
    "Limits",
    "Sandbox",
    "SandboxError",
    "Status",
    "Test",
    "TestResult",
    "asserts_of",
    "calibrated_time_limits",
    "same",
]
