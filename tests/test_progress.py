"""Live progress: what the line, the panel and the summary say; modes; the CLI's output."""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import orjson
from rich.console import Console

from amr_async.emulator import RunningEmulator
from amr_async.pipeline import ExitCode
from amr_async.progress import (
    Mode,
    Progress,
    Sample,
    count_lines,
    progress_mode,
    render_line,
    render_panel,
    summary_table,
)
from amr_async.scheduler import MetricsSnapshot
from tests.test_pipeline_cli import _cli


def _metrics(**kw: object) -> MetricsSnapshot:
    base: dict[str, object] = {
        "submitted": 30, "finished": 28, "sent": 33, "ok": 28, "truncated": 0,
        "final_by_kind": {}, "final_by_attempts": {1: 27, 2: 1}, "attempts_by_kind": {},
        "retries_by_kind": {"rate_limited": 3, "timeout": 1}, "rate_limited": 3,
        "retry_budget_denied": 0, "in_flight": 5, "waiting": 2, "achieved_rpm": 1200.0,
        "achieved_tpm": 250_000.0, "limit_rpm": 5000.0, "limit_tpm": 0.0, "tokens_in": 9000,
        "tokens_out": 4000, "cached_tokens_in": 0, "cost_usd": 0.5, "unpriced_models": (),
    }  # fmt: skip
    base.update(kw)
    return MetricsSnapshot(**base)  # type: ignore[arg-type]


SAMPLE = Sample(
    elapsed_s=20.0, total=110, done=8, already_done=10, failed=2, rejected=0, in_progress=4,
    stages={"direct": 14, "decompose": 12}, spent_usd=1.5, metrics=_metrics(), journal_hits=7,
)  # fmt: skip


def test_sample_projects_eta_and_dollars_from_the_pace_so_far() -> None:
    assert SAMPLE.processed == 10
    assert SAMPLE.remaining == 90  # 110 - 10 earlier - 10 processed
    assert SAMPLE.eta_s == 180.0  # 10 items per 20 s
    assert SAMPLE.projected_usd == 1.5 + 0.5 / 10 * 90


def test_line_says_every_figure() -> None:
    line = render_line(SAMPLE)
    for part in (
        "18/110 done (10 earlier), 2 failed, 0 rejected",
        "stages direct 14 decompose 12",
        "in flight 5 (items 4)",
        "rpm 1,200/5,000",
        "tpm 250,000 (no limit known)",
        "retries rate_limited 3, timeout 1",
        "spent $1.5000, projected $6.0000",
        "ETA 3m00s",
    ):
        assert part in line, (part, line)


def _text(renderable: object) -> str:
    out = io.StringIO()
    Console(file=out, width=200).print(renderable)
    return out.getvalue()


def test_panel_and_summary_render() -> None:
    panel = _text(render_panel(SAMPLE))
    assert "1,200/5,000" in panel
    assert "2 waiting for capacity" in panel
    summary = _text(summary_table(SAMPLE))
    assert "teacher calls sent (retries included)" in summary
    assert "33" in summary
    assert "stage decompose" in summary
    hits = next(r for r in summary.splitlines() if "answered from the journal" in r)
    assert hits.strip("│ ").endswith("7")


def test_modes() -> None:
    args = argparse.Namespace(quiet=False, progress_interval=2.0)
    assert progress_mode(args, io.StringIO()) == (Mode.LOG, 2.0)
    assert progress_mode(argparse.Namespace(quiet=True), io.StringIO())[0] is Mode.OFF


async def test_progress_prints_the_summary_at_the_end_unless_off() -> None:
    for mode, expected in ((Mode.LOG, True), (Mode.OFF, False)):
        out = io.StringIO()
        progress = Progress(lambda _: SAMPLE, mode=mode, interval_s=3600, stream=out)
        async with progress:
            pass
        assert ("amr-async run: summary" in out.getvalue()) is expected


def test_count_lines(tmp_path: Path) -> None:
    path = tmp_path / "x"
    path.write_bytes(b"a\nb\nc")
    assert count_lines(path) == 3
    path.write_bytes(b"a\nb\n")
    assert count_lines(path) == 2


async def test_run_without_a_terminal_logs_a_summary_and_quiet_does_not(
    emulator: RunningEmulator, tmp_path: Path
) -> None:
    src = tmp_path / "in.jsonl"
    src.write_bytes(
        b"".join(orjson.dumps({"instruction": f"Write f{i}."}) + b"\n" for i in range(5))
    )
    for quiet in (False, True):
        d = tmp_path / str(quiet)
        d.mkdir()
        argv = ["run", "--input", str(src), "--output", str(d / "o.jsonl"), "--journal"]
        argv += [str(d / "j"), "--base-url", emulator.openai_base_url, "--model", "m"]
        rc, out, err = await _cli([*argv, "--quiet"] if quiet else argv)
        assert rc == ExitCode.OK, err
        assert ("amr-async run: summary" in err) is not quiet
        assert "5 done" in err
        assert out == ""
