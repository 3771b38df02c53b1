"""One constructor for every provider, for callers that pick the provider from config."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from amr_async.teacher.anthropic_messages import ANTHROPIC_BASE_URL, AnthropicClient
from amr_async.teacher.base import ClientConfig, Secret, TeacherClient
from amr_async.teacher.openai_chat import OPENAI_BASE_URL, OpenAIClient
from amr_async.teacher.types import Provider

if TYPE_CHECKING:
    import aiohttp


def make_client(
    provider: Provider | str,
    *,
    base_url: str | None = None,
    api_key: str | Secret | None = None,
    session: aiohttp.ClientSession | None = None,
    config: ClientConfig | None = None,
    token_param: Literal["max_tokens", "max_completion_tokens"] = "max_tokens",
) -> TeacherClient:
    """A client for `provider`.

    Args:
        provider: `openai` (also OpenAI-compatible servers) or `anthropic`.
        base_url: server root; the provider's public API when None.
        api_key: the key; from the provider's environment variable when None.
        session: a shared session; the client makes its own when None.
        config: pool size and timeouts for an own session.
        token_param: OpenAI only: the body field for the output limit (OpenAI's reasoning
            models need `max_completion_tokens`).

    Returns:
        A client satisfying `TeacherClient`.

    Raises:
        ValueError: unknown provider.
    """
    kind = Provider(provider)
    if kind is Provider.OPENAI:
        return OpenAIClient(
            base_url=base_url or OPENAI_BASE_URL,
            api_key=api_key,
            session=session,
            config=config,
            token_param=token_param,
        )
    return AnthropicClient(
        base_url=base_url or ANTHROPIC_BASE_URL, api_key=api_key, session=session, config=config
    )
