"""Teacher wire clients: one per provider protocol, all returning `Outcome`s.

OpenAIClient      Chat Completions (OpenAI and compatible servers: vLLM, SGLang, llama.cpp, Ollama)
AnthropicClient   Messages
TeacherClient     the interface both satisfy: `send(request) -> Outcome`, `aclose()`
ClientConfig      pool size, timeouts, and the HTTP transport: "lean" (the default: our
                  keep-alive HTTP/1.1 pool on httptools) or "aiohttp"
open_session      an aiohttp session several clients can share (they then use aiohttp)
"""

from amr_async.teacher.anthropic_messages import AnthropicClient as AnthropicClient
from amr_async.teacher.base import ClientConfig as ClientConfig
from amr_async.teacher.base import Secret as Secret
from amr_async.teacher.base import TeacherClient as TeacherClient
from amr_async.teacher.base import Timeouts as Timeouts
from amr_async.teacher.base import open_session as open_session
from amr_async.teacher.base import raise_nofile_limit as raise_nofile_limit
from amr_async.teacher.factory import make_client as make_client
from amr_async.teacher.openai_chat import OpenAIClient as OpenAIClient
from amr_async.teacher.types import ChatRequest as ChatRequest
from amr_async.teacher.types import Message as Message
from amr_async.teacher.types import Outcome as Outcome
from amr_async.teacher.types import OutcomeKind as OutcomeKind
from amr_async.teacher.types import Provider as Provider
from amr_async.teacher.types import RateLimitInfo as RateLimitInfo
from amr_async.teacher.types import Usage as Usage

__all__ = [
    "AnthropicClient",
    "ChatRequest",
    "ClientConfig",
    "Message",
    "OpenAIClient",
    "Outcome",
    "OutcomeKind",
    "Provider",
    "RateLimitInfo",
    "Secret",
    "TeacherClient",
    "Timeouts",
    "Usage",
    "make_client",
    "open_session",
    "raise_nofile_limit",
]
