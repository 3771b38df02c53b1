"""`amr-async sandbox run`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from amr_async.cli import main
from amr_async.sandbox.cli import split_tests


def test_run_reports_each_test(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = tmp_path / "add.py"
    code.write_text("def add(a, b):\n    return a + b\n")
    tests = tmp_path / "tests.py"
    tests.write_text("assert add(1, 2) == 3\n\ndef test_more():\n    assert add(2, 2) == 5\n")
    rc = main(
        ["sandbox", "run", str(code), "--tests", str(tests), "--test", "assert add(0, 0) == 0"]
    )
    out = capsys.readouterr().out
    assert rc == 1
    assert "add(2, 2) = 4" in out
    assert out.count("passed") == 2
    assert main(["sandbox", "run", str(code), "--test", "assert add(1, 1) == 2", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["passed"] is True
    assert report["tests"][0]["status"] == "passed"


def test_bad_tests_file_names_the_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = tmp_path / "x.py"
    code.write_text("x = 1\n")
    tests = tmp_path / "t.py"
    tests.write_text("assert x == 1\nassert (\n")
    assert main(["sandbox", "run", str(code), "--tests", str(tests)]) == 2
    assert f"{tests}:2" in capsys.readouterr().err


def test_split_tests() -> None:
    tests = split_tests("assert f(1)\ndef test_g():\n    assert g()\n", "t.py")
    assert [t.source for t in tests] == ["assert f(1)", "def test_g():\n    assert g()"]
