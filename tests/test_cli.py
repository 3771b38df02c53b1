"""The console entry point."""

import subprocess
import sys

import pytest

from amr_async import __version__
from amr_async.cli import main


def test_version_flag(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert __version__ in capsys.readouterr().out


def test_no_command_prints_help_and_fails(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "usage: amr-async" in capsys.readouterr().out


def test_demo_runs_as_a_console_script() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "amr_async.cli", "demo", "--top", "3"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "164 HumanEval solutions" in proc.stdout
    assert proc.stdout.count("HumanEval/") >= 6
