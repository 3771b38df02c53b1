"""The errors people hit first: one line on stderr that names the problem and the fix."""

from __future__ import annotations

import os
from pathlib import Path

import orjson
import pytest
from aiohttp import web

from amr_async.cli import main
from amr_async.pipeline import ExitCode
from tests.test_pipeline_cli import _cli

MODEL = "gpt-4o-mini"


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    src = tmp_path / "in.jsonl"
    src.write_bytes(
        b"".join(
            orjson.dumps({"id": i, "instruction": f"Write a function returning {i}."}) + b"\n"
            for i in range(3)
        )
    )
    return {"input": src, "output": tmp_path / "out.jsonl", "journal": tmp_path / "j.db"}


def _args(files: dict[str, Path], *extra: str, **changed: Path) -> list[str]:
    paths = {**files, **changed}
    argv = ["run", "--model", MODEL, *extra]
    for name in ("input", "output", "journal"):
        argv += [f"--{name}", str(paths[name])]
    return argv


def _one_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, err
    return err


def test_no_api_key(
    files: dict[str, Path], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    assert main(_args(files)) == ExitCode.USAGE
    assert "no API key: export OPENAI_API_KEY=..." in _one_line(capsys)
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    assert main(_args(files, "--provider", "anthropic")) == ExitCode.USAGE
    assert "export ANTHROPIC_API_KEY=..." in _one_line(capsys)
    assert not files["journal"].exists()  # nothing started


def test_unreachable_base_url(
    files: dict[str, Path], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-unreachable")
    # Port 1 on loopback: nothing listens, the connection is refused at once.
    url = "http://user:pw-secret@127.0.0.1:1/v1"
    assert main(_args(files, "--base-url", url)) == ExitCode.USAGE
    err = _one_line(capsys)
    assert "cannot reach the teacher at http://127.0.0.1:1/v1 (" in err
    assert "fix --base-url" in err
    assert "pw-secret" not in err
    assert "sk-test-unreachable" not in err


def test_invalid_config_value(
    files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    toml = tmp_path / "amr.toml"
    toml.write_text("concurrency = -4\n")
    assert main(_args(files, "--config", str(toml))) == ExitCode.USAGE
    err = _one_line(capsys)
    assert f"concurrency = -4 (in {toml}): must be >= 1; e.g. concurrency = 64" in err


def test_input_missing_or_unreadable(
    files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nope.jsonl"
    assert main(_args(files, input=missing)) == ExitCode.USAGE
    assert f"input {missing} does not exist: fix --input" in _one_line(capsys)
    assert main(_args(files, input=tmp_path)) == ExitCode.USAGE
    assert f"input {tmp_path} cannot be read (Is a directory)" in _one_line(capsys)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_input_without_read_permission(
    files: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    files["input"].chmod(0)
    assert main(_args(files)) == ExitCode.USAGE
    assert "cannot be read (Permission denied)" in _one_line(capsys)


def test_output_directory_not_writable(
    files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "missing" / "out.jsonl"
    assert main(_args(files, output=out)) == ExitCode.USAGE
    assert f"output directory {out.parent} does not exist: create it" in _one_line(capsys)
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert main(_args(files, output=blocker / "out.jsonl")) == ExitCode.USAGE
    assert f"output directory {blocker} is not a directory" in _one_line(capsys)
    assert main(_args(files, journal=blocker / "j.db")) == ExitCode.USAGE
    assert f"journal directory {blocker} is not a directory: fix --journal" in _one_line(capsys)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes whatever the mode")
def test_output_directory_without_write_permission(
    files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    assert main(_args(files, output=locked / "out.jsonl")) == ExitCode.USAGE
    assert "is not writable (Permission denied)" in _one_line(capsys)


async def test_wrong_model_name_stops_the_run_with_the_fix(
    files: dict[str, Path],
) -> None:
    """A server that answers like vLLM for a model it does not serve (404)."""

    async def models(request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "served-model"}]})

    async def chat(request: web.Request) -> web.Response:
        model = (await request.json())["model"]
        error = {"message": f"The model `{model}` does not exist.", "type": "NotFoundError"}
        return web.json_response({"error": {**error, "code": 404}}, status=404)

    app = web.Application()
    app.router.add_get("/v1/models", models)
    app.router.add_post("/v1/chat/completions", chat)
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        url = f"http://127.0.0.1:{runner.addresses[0][1]}/v1"
        rc, _, err = await _cli(_args(files, "--base-url", url, "--concurrency", "1"))
    finally:
        await runner.cleanup()
    assert rc == ExitCode.TEACHER, err
    assert "answered 404 for model 'gpt-4o-mini'" in err
    assert "fix --model" in err


def test_dry_run_estimates_without_sending(
    files: dict[str, Path], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)  # nothing is sent: no key needed
    with files["input"].open("ab") as f:
        f.write(b"not json\n")
    argv = _args(files, "--dry-run", "--strategy", "amr-evol", "--base-url", "http://127.0.0.1:1")
    assert main(argv) == ExitCode.OK
    out = capsys.readouterr().out
    assert "dry run: amr-evol with gpt-4o-mini; nothing was sent" in out
    assert "items        3 (1 input lines would be rejected)" in out
    assert "calls        12 (direct 3, decompose 3, evolve 3, tests 3)" in out
    assert "cost         $" in out
    assert not files["journal"].exists()
    assert not files["output"].exists()
    assert main([*argv, "--model", "no-such-priced-model"]) == ExitCode.OK
    assert "unknown (no price for this model: add one with --pricing FILE)" in (
        capsys.readouterr().out
    )


async def test_refused_api_key(files: dict[str, Path]) -> None:
    """A server that refuses the key on its model list (as OpenAI does with a bad key)."""

    async def models(request: web.Request) -> web.Response:
        error = {"message": "Incorrect API key provided", "code": "invalid_api_key"}
        return web.json_response({"error": error}, status=401)

    app = web.Application()
    app.router.add_get("/v1/models", models)
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        url = f"http://127.0.0.1:{runner.addresses[0][1]}/v1"
        env = {"OPENAI_API_KEY": "sk-test-refused-key"}
        rc, _, err = await _cli(_args(files, "--base-url", url), env=env)
    finally:
        await runner.cleanup()
    assert rc == ExitCode.USAGE, err
    assert err.strip() == (
        f"amr-async run: the teacher at {url} refused the API key (HTTP 401): "
        "export a valid OPENAI_API_KEY"
    )
    assert not files["journal"].exists()


def test_dry_run_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nope.jsonl"
    assert main(["run", "--dry-run", "--model", MODEL, "--input", str(missing)]) == 2
    assert f"input {missing} does not exist: fix --input" in _one_line(capsys)
    missing.write_text('{"instruction": "x"}\n')
    assert main(["run", "--dry-run", "--input", str(missing)]) == 2
    assert "--model is required for --dry-run" in _one_line(capsys)
