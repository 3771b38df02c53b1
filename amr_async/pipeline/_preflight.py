"""Checks before a run starts, so the errors people hit first read as one line with the fix.

- no API key for a public API (keys come only from the environment);
- the server cannot be reached (wrong `base_url`, server down);
- the server refuses the key (401/403).

A wrong model name is caught on the first call instead (a 404 stops the run, see
`JournaledTeacher`): model lists are no proof, since some servers (our emulator among them)
answer for models they do not list.

One `GET …/models` is sent; it costs nothing at OpenAI, Anthropic, vLLM or llama.cpp. It goes
through the lean transport the run's calls use, so a run never imports aiohttp (~0.2 s of CPU).
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from yarl import URL

from amr_async.config import KEY_ENV, Config, without_password
from amr_async.teacher._lean import ConnectError, InvalidURLError, LeanPool
from amr_async.teacher.anthropic_messages import ANTHROPIC_BASE_URL
from amr_async.teacher.base import ClientConfig, Timeouts
from amr_async.teacher.openai_chat import OPENAI_BASE_URL
from amr_async.teacher.types import Provider

_CONFIG = ClientConfig(max_connections=1, timeouts=Timeouts(connect=5, total=15))
_ANTHROPIC_VERSION = "2023-06-01"


async def preflight(
    cfg: Config, *, env: Mapping[str, str] | None = None, base_url: str | None = None
) -> str | None:
    """Check the key and the server of `cfg` with one request; the problem, or None.

    Args:
        cfg: the run's settings.
        env: where keys are read from (`os.environ` when None).
        base_url: the server URL as given (may hold credentials); `cfg.base_url` when None.
    """
    env = os.environ if env is None else env
    provider = Provider(cfg.provider)
    key_env = KEY_ENV[provider]
    key = env.get(key_env, "")
    url = base_url or cfg.base_url
    if not key and url is None:
        return (
            f"no API key: export {key_env}=... (keys are read only from the environment), "
            "or set --base-url to a local server that needs none"
        )
    if provider is Provider.OPENAI:
        root = url or OPENAI_BASE_URL
        models_url = root.rstrip("/") + "/models"
        headers = {"Authorization": f"Bearer {key}"} if key else {}
    else:
        root = url or ANTHROPIC_BASE_URL
        models_url = root.rstrip("/") + "/v1/models"
        headers = {"x-api-key": key, "anthropic-version": _ANTHROPIC_VERSION} if key else {}
    shown = without_password(root)
    if key:  # the key authenticates, not credentials in the URL
        models_url = without_password(models_url)
    pool = LeanPool(_CONFIG)
    try:
        target = pool.target(URL(models_url), headers, method="GET")
        status, _, _ = await pool.request(target)
    except (OSError, TimeoutError, ValueError) as exc:
        reason = _reason(exc)
        return (
            f"cannot reach the teacher at {shown} ({reason}): start the server or fix "
            "--base-url / $AMR_ASYNC_BASE_URL"
        )
    finally:
        await pool.aclose()
    if status in (401, 403):
        fix = f"export a valid {key_env}" if key else f"export {key_env}=... (none is set)"
        return f"the teacher at {shown} refused the API key (HTTP {status}): {fix}"
    return None


def _reason(exc: BaseException) -> str:
    """A short reason with no URL in it (a URL may carry credentials)."""
    if isinstance(exc, ConnectError) and isinstance(exc.__cause__, OSError):
        cause = exc.__cause__
        return cause.strerror or type(cause).__name__
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, InvalidURLError | ValueError):
        return "invalid URL"
    return type(exc).__name__
