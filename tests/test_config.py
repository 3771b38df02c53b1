"""Configuration: TOML file < environment < flags, `config show`, one-line errors."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from amr_async import config
from amr_async.cli import build_parser, main
from amr_async.config import Config, ConfigError, load


def _flags(*argv: str) -> dict[str, object]:
    parser = argparse.ArgumentParser()
    config.add_flags(parser)
    return config.read_flags(parser.parse_args(list(argv)))


def test_precedence_file_then_env_then_flags(tmp_path: Path) -> None:
    toml = tmp_path / "amr.toml"
    toml.write_text('model = "from-file"\nk = 2\nconcurrency = 8\ncache = true\n')
    env = {"AMR_ASYNC_K": "3", "AMR_ASYNC_CONCURRENCY": "16"}
    loaded = load(file=toml, env=env, flags=_flags("--concurrency", "32"))
    c = loaded.config
    assert (c.model, c.k, c.concurrency, c.cache) == ("from-file", 3, 32, True)
    assert c.max_tokens == 3000  # default
    assert loaded.sources["model"] == str(toml)
    assert loaded.sources["k"] == "$AMR_ASYNC_K"
    assert loaded.sources["concurrency"] == "--concurrency"
    assert loaded.sources["max_tokens"] == "default"


def test_resumed_run_keeps_its_settings_unless_a_flag_says_otherwise(tmp_path: Path) -> None:
    stored = {"model": "started-with", "k": 4, "pricing": ["/p.toml"]}
    env = {"AMR_ASYNC_MODEL": "env-model", "AMR_ASYNC_WINDOW": "8"}
    c = load(env=env, stored=stored, flags=_flags("--k", "5")).config
    assert (c.model, c.k, c.window, c.pricing) == ("started-with", 5, 8, ("/p.toml",))


def test_paths_are_absolute_and_url_passwords_removed(tmp_path: Path) -> None:
    flags = _flags("--input", "in.jsonl", "--base-url", "http://bob:hunter2@127.0.0.1:9/v1")
    c = load(env={}, flags=flags).config
    assert c.input is not None
    assert Path(c.input).is_absolute()
    assert c.base_url == "http://127.0.0.1:9/v1"
    assert "hunter2" not in repr(c)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("max_tokens = 0\n", "max_tokens = 0 (in {f}): must be >= 1; e.g. max_tokens = 3000"),
        ('strategy = "amr"\n', "strategy = 'amr' (in {f}): must be one of direct, cot"),
        ('concurrency = "64"\n', "concurrency = '64' (in {f}): must be an integer"),
        ("modle = 'x'\n", "modle (in {f}): unknown key; did you mean 'model'?"),
        ('base_url = "127.0.0.1:8000"\n', "base_url = '127.0.0.1:8000' (in {f}): must be an"),
        ('api_key = "sk-secret"\n', "API keys are read only from the environment"),
        ("model = \n", "is not valid TOML"),
    ],
)
def test_bad_file_values_are_one_line_naming_key_origin_and_fix(
    tmp_path: Path, text: str, message: str
) -> None:
    toml = tmp_path / "amr.toml"
    toml.write_text(text)
    with pytest.raises(ConfigError) as exc:
        load(file=toml, env={})
    assert message.format(f=toml) in str(exc.value)
    assert "\n" not in str(exc.value)
    assert "sk-secret" not in str(exc.value)


def test_bad_env_and_flag_values_name_their_origin() -> None:
    with pytest.raises(ConfigError, match=r"temperature = 7\.0 \(from \$AMR_ASYNC_TEMPERATURE\)"):
        load(env={"AMR_ASYNC_TEMPERATURE": "7"})
    with pytest.raises(ConfigError, match=r"\$AMR_ASYNC_MODLE: unknown setting; did you mean"):
        load(env={"AMR_ASYNC_MODLE": "x"})
    with pytest.raises(ConfigError, match=r"window = 0 \(from --window\): must be >= 1"):
        load(env={}, flags=_flags("--window", "0"))
    with pytest.raises(ConfigError, match="k = 0: must be >= 1"):
        Config(k=0)
    with pytest.raises(ConfigError, match=r"test_timeout = 0\.0 \(from --test-timeout\)"):
        load(env={}, flags=_flags("--test-timeout", "0"))
    with pytest.raises(ConfigError, match=r"sandbox_parallelism = 0 \(from \$AMR_ASYNC_SANDBOX"):
        load(env={"AMR_ASYNC_SANDBOX_PARALLELISM": "0"})


def test_http_transport_reaches_the_client_config_with_a_pool_for_the_concurrency() -> None:
    assert Config().client_config().transport == "lean"
    chosen = load(env={"AMR_ASYNC_HTTP_TRANSPORT": "aiohttp"}, flags=_flags("--concurrency", "500"))
    client = chosen.config.client_config()
    assert (client.transport, client.max_connections) == ("aiohttp", 500)
    assert Config(concurrency=8).client_config().max_connections == 100  # never below the default
    with pytest.raises(ConfigError, match=r"http_transport = 'h2' \(from \$AMR_ASYNC_HTTP_TRA"):
        load(env={"AMR_ASYNC_HTTP_TRANSPORT": "h2"})


def test_sandbox_knobs_default_to_one_second_and_four_jobs_per_core() -> None:
    loaded = load(env={}, flags=_flags("--test-timeout", "2.5", "--sandbox-parallelism", "3"))
    assert (loaded.config.test_timeout, loaded.config.sandbox_parallelism) == (2.5, 3)
    assert (config.DEFAULTS.test_timeout, config.DEFAULTS.sandbox_parallelism) == (1.0, None)


def test_missing_config_file_names_the_fix(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist; fix --config"):
        load(file=tmp_path / "nope.toml", env={})


def test_every_key_has_a_flag_an_env_var_and_a_default() -> None:
    run = build_parser()._subparsers._group_actions[0].choices["run"]  # type: ignore[union-attr]
    flags = {s for a in run._actions for s in a.option_strings}
    for key in config.KEYS:
        assert key.flag in flags
        assert key.env == "AMR_ASYNC_" + key.name.upper()
        assert hasattr(config.DEFAULTS, key.name)
    assert set(config.KEYS_BY_NAME) == {f.name for f in config.dataclasses.fields(Config)}


def test_config_show_prints_values_and_sources_but_no_secret(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    toml = tmp_path / "amr.toml"
    toml.write_text('model = "gpt-4o-mini"\nstrategy = "amr-evol"\n')
    monkeypatch.setenv("OPENAI_API_KEY", "sk-very-secret-value")
    monkeypatch.setenv("AMR_ASYNC_K", "2")
    assert main(["config", "show", "--config", str(toml), "--window", "8"]) == 0
    out = capsys.readouterr().out
    assert f'model = "gpt-4o-mini"  # {toml}' in out
    assert "k = 2  # $AMR_ASYNC_K" in out
    assert "window = 8  # --window" in out
    assert "max_tokens = 3000  # default" in out
    assert "$OPENAI_API_KEY: set" in out
    assert "sk-very-secret-value" not in out


def test_config_show_reports_a_bad_value_in_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("AMR_ASYNC_MAX_TOKENS", "lots")
    assert main(["config", "show"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert "max_tokens = 'lots' (from $AMR_ASYNC_MAX_TOKENS): must be an integer" in err
