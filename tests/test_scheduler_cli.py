"""`amr-async dispatch` input handling (the signal/resume path is in test_scheduler_emulator)."""

from __future__ import annotations

from pathlib import Path

import pytest

import amr_async.scheduler as scheduler
from amr_async.cli import main
from amr_async.scheduler.cli import _finished_ids, _requests


def test_bad_lines_are_named_by_file_and_line_and_skipped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "in.jsonl"
    path.write_text(
        '{"id": "a", "model": "m", "messages": [{"role": "user", "content": "x"}], '
        '"max_tokens": 5}\n'
        "not json\n"
        '{"id": "b", "model": "m", "messages": [], "max_tokens": 5}\n'
        '{"id": "c", "messages": [], "max_tokens": 5}\n'
        '{"id": "d", "model": "m", "messages": [{"role": "user", "content": "y"}], '
        '"max_tokens": 7}\n'
    )
    got = list(_requests(path, done={"b"}))
    assert [key for key, _ in got] == ["a", "d"]
    assert got[1][1].max_tokens == 7
    err = capsys.readouterr().err
    assert f"{path}:2: skipped" in err
    assert f"{path}:4: skipped: field 'model'" in err


def test_resume_reads_finished_ids_and_cuts_a_torn_line(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    out.write_bytes(b'{"id": "a", "kind": "ok"}\n{"id": "b", "kind": "ok"}\n{"id": "c", "ki')
    assert _finished_ids(out) == {"a", "b"}
    assert out.read_bytes().endswith(b'"b", "kind": "ok"}\n')


def test_missing_input_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["dispatch", str(tmp_path / "nope.jsonl"), str(tmp_path / "out.jsonl")])
    assert code == 2
    assert "nope.jsonl: no such file" in capsys.readouterr().err


def test_exported_names() -> None:
    for name in scheduler.__all__:
        assert getattr(scheduler, name).__module__.startswith("amr_async.scheduler")
    assert {"Dispatcher", "Endpoint", "Limits", "RetryPolicy", "PricingTable"} <= set(
        scheduler.__all__
    )
