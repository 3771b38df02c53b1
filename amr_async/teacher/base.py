"""The interface every teacher client shares, its configuration, and the HTTP session.

Every client speaks one provider protocol and returns an `Outcome` for every call: it never
raises on a bad response, a timeout or a dropped connection. Its HTTP goes through its own
lean keep-alive pool (`ClientConfig.transport="lean"`, the default, see `_lean.py`), or
through an `aiohttp.ClientSession` that it owns (`transport="aiohttp"`) or is handed
(`open_session`: one pool shared by several clients).
"""

from __future__ import annotations

import os
import resource
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, Protocol, runtime_checkable

import orjson

from amr_async.teacher.types import ChatRequest, Outcome, Provider

if TYPE_CHECKING:
    # aiohttp is imported only by the code paths that use it (the "aiohttp" transport, a
    # shared session): it costs ~0.4 s of start-up, and the default lean transport does
    # without it.
    import aiohttp

# File descriptors kept free for everything that is not a pooled connection (journal,
# sandbox pipes, logs, the event loop's own).
_FD_HEADROOM = 256


@dataclass(slots=True, frozen=True)
class Timeouts:
    """Per-request time limits in seconds; None disables one.

    Attributes:
        connect: opening a new TCP connection (waiting for a free pooled one counts
            against `total` only).
        read: longest silence while reading the response. Off by default: a non-streamed
            answer is silent until it is complete, so a read limit catches nothing `total`
            does not, and it costs timers per read (measured: ~9% more client CPU per
            request at 200 in flight).
        total: the whole request, from sending to the last byte.
    """

    connect: float | None = 10.0
    read: float | None = None
    total: float | None = 600.0

    def to_aiohttp(self) -> aiohttp.ClientTimeout:
        import aiohttp

        return aiohttp.ClientTimeout(
            total=self.total, sock_connect=self.connect, sock_read=self.read
        )


@dataclass(slots=True, frozen=True)
class ClientConfig:
    """How a client talks HTTP.

    Attributes:
        max_connections: keep-alive pool size; set it to the configured concurrency, since a
            request beyond it waits for a free connection.
        timeouts: per-request limits, see `Timeouts`.
        user_agent: sent on every request.
        transport: the HTTP client a client without a given session uses: "lean" (our
            keep-alive HTTP/1.1 client on httptools, see `teacher/_lean.py`; the cheaper one
            per call) or "aiohttp" (for proxies, redirects or anything else it does and
            the lean one does not). A client handed an aiohttp session always uses it.
    """

    max_connections: int = 100
    timeouts: Timeouts = field(default_factory=Timeouts)
    user_agent: str = "amr-async"
    transport: Literal["lean", "aiohttp"] = "lean"

    def __post_init__(self) -> None:
        if self.max_connections < 1:
            raise ValueError(f"max_connections must be >= 1, got {self.max_connections}")
        if self.transport not in ("lean", "aiohttp"):
            raise ValueError(f"transport must be 'lean' or 'aiohttp', got {self.transport!r}")


@runtime_checkable
class TeacherClient(Protocol):
    """One provider protocol behind one small async interface.

    Implementations are safe to share between tasks of one event loop.
    """

    provider: Provider
    base_url: str

    async def send(self, request: ChatRequest) -> Outcome:
        """Send one request and classify whatever happens into an `Outcome` (never raises)."""
        ...

    async def aclose(self) -> None:
        """Release the session if the client owns it; idempotent."""
        ...


def raise_nofile_limit(needed: int) -> int:
    """Raise the soft RLIMIT_NOFILE so `needed` sockets plus headroom fit.

    Never lowers the limit and never exceeds the hard limit.

    Args:
        needed: sockets the caller may hold open at once.

    Returns:
        The soft limit in force afterwards.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = needed + _FD_HEADROOM
    if soft != resource.RLIM_INFINITY and soft < want:
        new = want if hard == resource.RLIM_INFINITY else min(want, hard)
        if new > soft:
            resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
            soft = new
    return soft


def _json_dumps(obj: object) -> str:
    return orjson.dumps(obj).decode()


def open_session(config: ClientConfig | None = None) -> aiohttp.ClientSession:
    """Create the shared session: pool sized to `config.max_connections`, orjson, timeouts.

    Must be called with an event loop running (aiohttp binds the session to it).

    Args:
        config: pool size and timeouts; defaults to `ClientConfig()`.

    Returns:
        A session the caller closes (or hands to clients created with `session=`).
    """
    import aiohttp

    config = config or ClientConfig()
    raise_nofile_limit(config.max_connections)
    connector = aiohttp.TCPConnector(
        limit=config.max_connections,
        limit_per_host=0,
        ttl_dns_cache=300,
    )
    return aiohttp.ClientSession(
        connector=connector,
        timeout=config.timeouts.to_aiohttp(),
        json_serialize=_json_dumps,
        headers={"User-Agent": config.user_agent},
        # Responses are read as bytes and parsed with orjson; no cookies between calls.
        cookie_jar=aiohttp.DummyCookieJar(),
        auto_decompress=True,
    )


class Secret:
    """An API key that never shows itself in a repr, str or format.

    Use `reveal()` only where the key goes onto the wire.
    """

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __bool__(self) -> bool:
        return bool(self._value)


def key_from(explicit: str | Secret | None, env_var: str) -> Secret:
    """The API key given, else the one in `env_var`, else an empty one (local servers).

    Args:
        explicit: a key passed in by the caller.
        env_var: the environment variable to fall back on.

    Returns:
        The key, wrapped so that it cannot leak into logs.
    """
    if isinstance(explicit, Secret):
        return explicit
    if explicit is not None:
        return Secret(explicit)
    return Secret(os.environ.get(env_var, ""))
