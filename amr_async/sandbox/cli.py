"""`amr-async sandbox run`: judge a Python file against assert-style tests."""

from __future__ import annotations

import argparse
import ast
import asyncio
import json
import sys
from pathlib import Path

from amr_async.sandbox._sandbox import Sandbox
from amr_async.sandbox._types import AssertTest, Job, Limits


def split_tests(source: str, origin: str) -> list[AssertTest]:
    """One test per top-level statement of a tests file (asserts or ``def test_*``).

    Raises:
        ValueError: the file does not parse (the message names file and line).
    """
    try:
        tree = ast.parse(source)
    except SyntaxError as exc:
        raise ValueError(f"{origin}:{exc.lineno}: {exc.msg}") from None
    tests = []
    for stmt in tree.body:
        segment = ast.get_source_segment(source, stmt)
        if segment is not None:
            tests.append(AssertTest(segment))
    return tests


async def _run(args: argparse.Namespace, code: str, tests: list[AssertTest]) -> int:
    limits = Limits(test_timeout_s=args.timeout)
    async with Sandbox(parallelism=1, cache_size=0) as sandbox:
        result = await sandbox.run(Job(code, tests, limits=limits))
    if args.json:
        print(
            json.dumps(
                {
                    "passed": result.passed,
                    "isolation": result.isolation,
                    "module_error": result.module_error,
                    "tests": [
                        {
                            "test": tests[t.index].source,
                            "status": t.status.value,
                            "message": t.message,
                            "judged_in": t.judged_in,
                        }
                        for t in result.tests
                    ],
                }
            )
        )
    else:
        for t in result.tests:
            line = tests[t.index].source.splitlines()[0]
            print(f"{t.status.value:>12}  {line}" + (f"  — {t.message}" if t.message else ""))
        if result.module_error:
            print(f"module error: {result.module_error}")
        print(f"{'PASSED' if result.passed else 'FAILED'} (isolation: {result.isolation})")
    return 0 if result.passed else 1


def _command(args: argparse.Namespace) -> int:
    try:
        code = Path(args.code).read_text()
        tests = [AssertTest(t) for t in args.test]
        if args.tests:
            tests += split_tests(Path(args.tests).read_text(), args.tests)
        return asyncio.run(_run(args, code, tests))
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `sandbox` command group."""
    sandbox = sub.add_parser("sandbox", help="run untrusted code against tests")
    actions = sandbox.add_subparsers(dest="sandbox_command", metavar="ACTION", required=True)
    run = actions.add_parser("run", help="judge CODE against assert-style tests")
    run.add_argument("code", help="Python file under test")
    run.add_argument(
        "--test", action="append", default=[], help="one test, e.g. 'assert f(1) == 2'"
    )
    run.add_argument("--tests", help="Python file: each top-level statement is one test")
    run.add_argument("--timeout", type=float, default=5.0, help="seconds per test (default 5)")
    run.add_argument("--json", action="store_true", help="print one JSON object")
    run.set_defaults(func=_command)
