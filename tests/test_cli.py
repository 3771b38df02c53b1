"""The console entry point."""

import subprocess
import sys
from pathlib import Path

import orjson
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


def test_demo_distils_humaneval_with_amr_evol(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "amr_async.cli", "demo", "--out-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "TEST DOUBLE" in proc.stdout
    assert "164/164 instructions distilled" in proc.stdout
    records = [orjson.loads(line) for line in (tmp_path / "demo.jsonl").read_bytes().splitlines()]
    assert len(records) == 164
    assert {r["strategy"] for r in records} == {"amr-evol"}
    assert all(r["response"] for r in records)
    verified = sum(len(r["modules_verified"]) for r in records)
    assert verified > 0
    assert f"{verified} verified by items" in proc.stdout
    assert "demo-key-for-the-emulator" not in (tmp_path / "demo.jsonl").read_text()
