"""Configuration: one table of keys, read from a TOML file, the environment and flags.

Precedence, lowest first: the defaults below, a TOML file, environment variables, command-line
flags. (A resumed run puts its journaled config between the environment and the flags: a run
keeps the settings it started with unless a flag says otherwise.)

- **TOML file**: `--config PATH`, else `$AMR_ASYNC_CONFIG`, else `./amr-async.toml` when it
  exists. Top-level keys with the names below (`model = "gpt-4o-mini"`).
- **Environment**: `AMR_ASYNC_<KEY>` in capitals (`AMR_ASYNC_MODEL=gpt-4o-mini`).
- **Flags**: `--<key>` with dashes (`--model gpt-4o-mini`).
- **API keys** come only from the environment (`OPENAI_API_KEY`, `ANTHROPIC_API_KEY`): a key
  in the file is refused, and no key is ever part of a `Config`, its repr or `config show`.

Every key is a field of `Config`; `KEYS` describes them (type, help, choices, checks), and the
`run` command's flags are generated from it, so the table is the only place a key is written.
A bad value raises `ConfigError` with one line naming the key, where it came from and the fix.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import os
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from amr_async.pipeline._input import DEFAULT_MAX_LINE_BYTES
from amr_async.teacher.types import Provider

if TYPE_CHECKING:
    from amr_async.teacher.base import ClientConfig

CONFIG_ENV = "AMR_ASYNC_CONFIG"
ENV_PREFIX = "AMR_ASYNC_"
DEFAULT_FILE = Path("amr-async.toml")
STRATEGIES = ("direct", "cot", "ansrepair", "amr-evol")
# Environment variables that hold each provider's key (the only place keys are read from).
KEY_ENV = {Provider.OPENAI: "OPENAI_API_KEY", Provider.ANTHROPIC: "ANTHROPIC_API_KEY"}
_SECRET_NAMES = ("api_key", "openai_api_key", "anthropic_api_key", "key", "token", "password")


class ConfigError(ValueError):
    """A configuration value that cannot be used; the message is one line with the fix."""


Check = Callable[[Any], str | None]  # value -> what is wrong (with the fix), or None


def _at_least(low: float) -> Check:
    return lambda v: None if v >= low else f"must be >= {low:g}"


def _between(low: float, high: float) -> Check:
    return lambda v: None if low <= v <= high else f"must be between {low:g} and {high:g}"


def _url(value: str) -> str | None:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return "must be an http(s) URL such as http://127.0.0.1:8000/v1"
    return None


@dataclass(frozen=True, slots=True)
class Key:
    """One configuration key.

    Attributes:
        name: the field of `Config` (TOML key; flag and env var derive from it).
        kind: str | path | int | float | bool | paths (a list of paths).
        help: one line for `--help` and `config show`.
        choices: the allowed values, if a closed set.
        check: a further check of a typed value.
        group: where the flag is listed in `--help`.
        resumable: journaled with a run and reused on resume.
    """

    name: str
    kind: str
    help: str
    choices: tuple[str, ...] = ()
    check: Check | None = None
    group: str = "run"
    resumable: bool = True

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.name.upper()


@dataclass(frozen=True, slots=True)
class Config:
    """The effective settings of a run or an `Engine`. Holds no secret.

    Paths are kept as strings (absolute once loaded by `load`), so the config is JSON-ready
    and can be journaled as is. See `KEYS` for what each field means.
    """

    input: str | None = None
    output: str | None = None
    rejects: str | None = None
    journal: str | None = None
    strategy: str = "direct"
    provider: str = "openai"
    base_url: str | None = None
    model: str | None = None
    max_tokens: int = 3000
    temperature: float = 0.0
    concurrency: int = 64
    http_transport: str = "lean"
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES
    cache: bool = False
    pricing: tuple[str, ...] = ()
    budget_usd: float | None = None
    budget_tokens: int | None = None
    prompts: str | None = None
    db: str | None = None
    embedder: str = "hash"
    k: int = 1
    min_similarity: float = 0.0
    novelty_max_cosine: float = 0.9
    evolve_stubs: bool = True
    window: int = 64
    final_check: bool = False
    drop_failed: bool = False
    keep_raw: bool = False
    isolation: str = "auto"
    test_timeout: float = 1.0
    sandbox_parallelism: int | None = None

    def __post_init__(self) -> None:
        for key in KEYS:
            _check(key, getattr(self, key.name), "")

    def replace(self, **changes: Any) -> Config:
        """A copy with `changes` applied (and checked)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self, *, resumable_only: bool = False) -> dict[str, Any]:
        """JSON-ready mapping of the keys (lists for tuples)."""
        out: dict[str, Any] = {}
        for key in KEYS:
            if resumable_only and not key.resumable:
                continue
            value = getattr(self, key.name)
            out[key.name] = list(value) if isinstance(value, tuple) else value
        return out

    def client_config(self) -> ClientConfig:
        """The wire client's settings: the chosen transport, a pool no smaller than the
        concurrency (a call beyond the pool waits for a connection, inside its time limit)."""
        from amr_async.teacher.base import ClientConfig

        return ClientConfig(
            max_connections=max(self.concurrency, ClientConfig().max_connections),
            transport="aiohttp" if self.http_transport == "aiohttp" else "lean",
        )

    @property
    def key_env(self) -> str:
        """The environment variable this config's provider reads its API key from."""
        return KEY_ENV[Provider(self.provider)]


_AMR = "amr-evol (and ansrepair's sandbox)"
KEYS: tuple[Key, ...] = (
    Key("input", "path", "input JSONL (one {id, instruction} per line)"),
    Key("output", "path", "output JSONL (one record per finished item)"),
    Key("rejects", "path", "rejected input lines (default OUTPUT.rejects.jsonl)"),
    Key("journal", "path", "the run's SQLite journal (resume, never pay twice)", resumable=False),
    Key("strategy", "str", "pipeline strategy", choices=STRATEGIES),
    Key("provider", "str", "wire protocol", choices=tuple(p.value for p in Provider)),
    Key("base_url", "str", "server root (default: the provider's public API)", check=_url),
    Key("model", "str", "teacher model (required to run)"),
    Key("max_tokens", "int", "output tokens per call", check=_at_least(1)),
    Key("temperature", "float", "sampling temperature", check=_between(0, 2)),
    Key("concurrency", "int", "items in progress at once", check=_at_least(1)),
    Key(
        "http_transport",
        "str",
        "HTTP client: lean (cheapest per call) or aiohttp (when a proxy is needed)",
        choices=("lean", "aiohttp"),
    ),
    Key("max_line_bytes", "int", "reject longer input lines", check=_at_least(1)),
    Key("cache", "bool", "answer calls from other runs' journaled answers (same request key)"),
    Key("pricing", "paths", "pricing TOML files merged over the shipped table"),
    Key(
        "budget_usd",
        "float",
        "stop dispatch once this many $ are spent",
        resumable=False,
        check=_at_least(0),
    ),
    Key(
        "budget_tokens",
        "int",
        "stop dispatch at this many tokens",
        resumable=False,
        check=_at_least(0),
    ),
    Key("prompts", "path", "directory of <kind>.toml templates over the shipped", group=_AMR),
    Key("db", "path", "module database directory (amr-evol; created if absent)", group=_AMR),
    Key("embedder", "str", "module DB embedder", choices=("hash", "minilm"), group=_AMR),
    Key("k", "int", "modules retrieved per stub", check=_at_least(1), group=_AMR),
    Key("min_similarity", "float", "retrieval cosine floor", check=_between(-1, 1), group=_AMR),
    Key(
        "novelty_max_cosine",
        "float",
        "a function this similar to a known one is not new",
        check=_between(0, 1),
        group=_AMR,
    ),
    Key(
        "evolve_stubs",
        "bool",
        "give the evolution prompt the stubs too (off: retrieved only)",
        group=_AMR,
    ),
    Key("window", "int", "input lines per DB window (1 = online)", check=_at_least(1), group=_AMR),
    Key("final_check", "bool", "run the generated tests against the final response", group=_AMR),
    Key(
        "drop_failed",
        "bool",
        "with final_check: keep failing records out of the output (whole, in the rejects file)",
        group=_AMR,
    ),
    Key("keep_raw", "bool", "put each stage's raw teacher answer in the record", group=_AMR),
    Key(
        "isolation", "str", "sandbox isolation", choices=("auto", "namespaces", "none"), group=_AMR
    ),
    Key(
        "test_timeout",
        "float",
        "seconds of CPU per generated test in the sandbox (a looping candidate costs this)",
        check=_between(0.01, 600),
        group=_AMR,
    ),
    Key(
        "sandbox_parallelism",
        "int",
        "sandbox jobs running at once (default: 4 per core)",
        check=_at_least(1),
        group=_AMR,
    ),
)
KEYS_BY_NAME = {k.name: k for k in KEYS}


# ------------------------------------------------------------------------------ parsing


def _typed(key: Key, value: Any, origin: str, *, from_text: bool = False) -> Any:
    """`value` as `key`'s type: TOML values must have it; environment text is parsed."""
    text = from_text and isinstance(value, str)

    def bad(expected: str) -> ConfigError:
        return ConfigError(
            f"{key.name} = {value!r}{origin}: must be {expected}; e.g. {_example(key)}"
        )

    if key.kind in ("str", "path"):
        if not isinstance(value, str):
            raise bad("a string")
        return value
    if key.kind == "paths":
        if text:
            return tuple(p for p in value.split(os.pathsep) if p)
        if not isinstance(value, list) or not all(isinstance(p, str) for p in value):
            raise bad("a list of paths")
        return tuple(value)
    if key.kind == "bool":
        if isinstance(value, bool):
            return value
        if text and value.lower() in ("1", "true", "yes", "on", "0", "false", "no", "off"):
            return value.lower() in ("1", "true", "yes", "on")
        raise bad("true or false")
    if key.kind == "int":
        if text:
            try:
                return int(value)
            except ValueError:
                raise bad("an integer") from None
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad("an integer")
        return value
    if text:
        try:
            return float(value)
        except ValueError:
            raise bad("a number") from None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise bad("a number")
    return float(value)


def _example(key: Key) -> str:
    default = getattr(DEFAULTS, key.name)
    if key.choices:
        return f"{key.name} = {key.choices[0]!r} (one of {', '.join(key.choices)})"
    samples = {"path": "'path'", "paths": "['prices.toml']", "str": "'value'", "bool": "true"}
    if default is not None and key.kind != "paths":
        shown = str(default).lower() if isinstance(default, bool) else repr(default)
        return f"{key.name} = {shown}"
    return f"{key.name} = {samples.get(key.kind, '1')}"


def _check(key: Key, value: Any, origin: str) -> None:
    if value is None:
        return
    problem = None
    if key.choices and value not in key.choices:
        problem = f"must be one of {', '.join(key.choices)}"
    elif key.check is not None:
        problem = key.check(value)
    if problem is not None:
        raise ConfigError(f"{key.name} = {value!r}{origin}: {problem}; e.g. {_example(key)}")


DEFAULTS = Config()


# ------------------------------------------------------------------------------ layers


def config_file(explicit: Path | None, env: Mapping[str, str]) -> Path | None:
    """The TOML file to read: `--config`, else `$AMR_ASYNC_CONFIG`, else ./amr-async.toml."""
    if explicit is not None:
        return explicit
    if env.get(CONFIG_ENV):
        return Path(env[CONFIG_ENV])
    return DEFAULT_FILE if DEFAULT_FILE.is_file() else None


def read_file(path: Path) -> dict[str, Any]:
    """The keys of a TOML config file, typed and checked.

    Raises:
        ConfigError: unreadable file, bad TOML, unknown key, secret, or bad value.
    """
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(
            f"config file {path} does not exist; fix --config or ${CONFIG_ENV}"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {path} cannot be read: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    out: dict[str, Any] = {}
    for name, value in data.items():
        origin = f" (in {path})"
        if name.lower() in _SECRET_NAMES or name.lower().endswith("_api_key"):
            raise ConfigError(
                f"{name}{origin}: API keys are read only from the environment; remove it from "
                "the file and export OPENAI_API_KEY or ANTHROPIC_API_KEY"
            )
        key = KEYS_BY_NAME.get(name)
        if key is None:
            raise ConfigError(f"{name}{origin}: unknown key{_did_you_mean(name)}")
        typed = _typed(key, value, origin)
        _check(key, typed, origin)
        out[name] = typed
    return out


def _did_you_mean(name: str) -> str:
    close = difflib.get_close_matches(name, list(KEYS_BY_NAME), n=1)
    if close:
        return f"; did you mean {close[0]!r}?"
    return f"; known keys: {', '.join(KEYS_BY_NAME)}"


def read_env(env: Mapping[str, str]) -> dict[str, Any]:
    """The `AMR_ASYNC_*` variables of `env`, typed and checked (unknown ones are refused)."""
    out: dict[str, Any] = {}
    for var, value in env.items():
        if not var.startswith(ENV_PREFIX) or var == CONFIG_ENV:
            continue
        name = var[len(ENV_PREFIX) :].lower()
        key = KEYS_BY_NAME.get(name)
        origin = f" (from ${var})"
        if key is None:
            raise ConfigError(f"${var}: unknown setting{_did_you_mean(name)}")
        typed = _typed(key, value, origin, from_text=True)
        _check(key, typed, origin)
        out[name] = typed
    return out


def read_flags(args: argparse.Namespace) -> dict[str, Any]:
    """The keys given on the command line (flags left at None were not given)."""
    out: dict[str, Any] = {}
    for key in KEYS:
        value = getattr(args, key.name, None)
        if value is None:
            continue
        if key.kind == "paths":
            value = tuple(str(p) for p in value)
        elif key.kind == "path":
            value = str(value)
        _check(key, value, f" (from {key.flag})")
        out[key.name] = value
    return out


@dataclass(slots=True)
class Loaded:
    """An effective config and where each value came from (`default`, a file, `$VAR`, …)."""

    config: Config
    sources: dict[str, str] = field(default_factory=dict)


def load(
    *,
    file: Path | None = None,
    env: Mapping[str, str] | None = None,
    flags: Mapping[str, Any] | None = None,
    stored: Mapping[str, Any] | None = None,
) -> Loaded:
    """Merge defaults < file < environment < stored (a resumed run's) < flags.

    Args:
        file: the TOML file (see `config_file`); None reads none.
        env: the environment (`os.environ` when None).
        flags: keys given on the command line (`read_flags`).
        stored: a resumed run's journaled config.

    Raises:
        ConfigError: naming the key, its origin and the fix.
    """
    env = os.environ if env is None else env
    layers: list[tuple[str, Mapping[str, Any]]] = []
    if file is not None:
        layers.append((str(file), read_file(file)))
    from_env = read_env(env)
    layers.append(("env", from_env))
    if stored is not None:
        known = {k: v for k, v in stored.items() if k in KEYS_BY_NAME}
        if "pricing" in known:
            known["pricing"] = tuple(known["pricing"])
        layers.append(("journal (resumed run)", known))
    layers.append(("flag", flags or {}))
    values: dict[str, Any] = {}
    sources = {k.name: "default" for k in KEYS}
    for origin, layer in layers:
        for name, value in layer.items():
            values[name] = value
            key = KEYS_BY_NAME[name]
            sources[name] = {"env": f"${key.env}", "flag": key.flag}.get(origin, origin)
    for name in ("input", "output", "rejects", "journal", "prompts", "db"):
        if values.get(name) is not None:
            values[name] = str(Path(values[name]).expanduser().resolve())
    if values.get("pricing"):
        values["pricing"] = tuple(str(Path(p).expanduser().resolve()) for p in values["pricing"])
    if values.get("base_url"):
        values["base_url"] = without_password(values["base_url"])
    try:
        config = Config(**values)
    except ConfigError as exc:
        raise ConfigError(str(exc).replace(": must", _origin(exc, sources), 1)) from None
    return Loaded(config, sources)


def _origin(exc: ConfigError, sources: Mapping[str, str]) -> str:
    name = str(exc).split(" ", 1)[0]
    return f" (from {sources.get(name, 'default')}): must"


def without_password(url: str) -> str:
    """`url` with any `user:password@` removed: configs are journaled and shown, secrets not."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit(parts._replace(netloc=host))


# ------------------------------------------------------------------------------ flags


def add_flags(
    parser: argparse.ArgumentParser, *, exclude: Sequence[str] = (), required: Sequence[str] = ()
) -> None:
    """Add one flag per key (all default to None, meaning "not given"), plus `--config`.

    Args:
        parser: the command's parser.
        exclude: keys that get no flag.
        required: keys whose flag is required.
    """
    parser.add_argument(
        "--config",
        type=Path,
        help=f"TOML config file (default ${CONFIG_ENV}, else ./amr-async.toml if present)",
    )
    groups: dict[str, argparse._ArgumentGroup] = {}
    for key in KEYS:
        if key.name in exclude:
            continue
        target: argparse._ActionsContainer = parser
        if key.group != "run":
            if key.group not in groups:
                groups[key.group] = parser.add_argument_group(key.group)
            target = groups[key.group]
        default = getattr(DEFAULTS, key.name)
        shown = "" if default in (None, ()) else f" (default {default})"
        help_text = f"{key.help}{shown}; env {key.env}"
        kw: dict[str, Any] = {"help": help_text, "default": None}
        if key.name in required:
            kw["required"] = True
        if key.choices:
            kw["choices"] = key.choices
        if key.kind == "bool":
            kw["action"] = argparse.BooleanOptionalAction
        elif key.kind == "paths":
            kw.update(type=Path, action="append")
        else:
            kw["type"] = {"path": Path, "int": int, "float": float}.get(key.kind, str)
        target.add_argument(key.flag, **kw)


def show(loaded: Loaded, env: Mapping[str, str] | None = None) -> str:
    """The effective config as TOML-like lines with their sources, keys only as set/unset."""
    env = os.environ if env is None else env
    lines = ["# effective amr-async config (value  # source)"]
    for key in KEYS:
        value = getattr(loaded.config, key.name)
        if value is None:
            lines.append(f"# {key.name} = (unset)  # {loaded.sources[key.name]}")
            continue
        if isinstance(value, bool):
            rendered = str(value).lower()
        elif isinstance(value, tuple):
            rendered = "[" + ", ".join(f'"{v}"' for v in value) + "]"
        elif isinstance(value, str):
            rendered = f'"{value}"'
        else:
            rendered = repr(value)
        lines.append(f"{key.name} = {rendered}  # {loaded.sources[key.name]}")
    lines.append("# API keys (environment only; values never shown)")
    for var in KEY_ENV.values():
        state = "set" if env.get(var) else "not set"
        lines.append(f"#   ${var}: {state}")
    return "\n".join(lines)
