"""The content key of a teacher call.

Two requests get the same key exactly when a provider would be asked the same thing: same
provider protocol, model, system prompt, messages and sampling parameters, and the same
explicit `sample_index` (a deliberate repeat of one prompt gets its own key). The key is
SHA-256 over a canonical JSON encoding (a fixed-order array, no whitespace, floats in
their shortest round-trip form), so it is stable across processes, machines and Python versions.

Not in the key: the server URL, the API key (never!), timeouts, and anything the client
adds on the wire. So a cross-run cache hit may return an answer from another server that
serves a model of the same name; keep separate journals if that matters.
"""

from __future__ import annotations

import hashlib

import orjson

from amr_async.teacher.types import ChatRequest, Provider

# Bumped if the canonical form ever changes, so old keys can never collide with new ones.
_KEY_VERSION = 1


def normalise_request(provider: Provider | str, request: ChatRequest) -> list[object]:
    """The canonical, JSON-ready form of `request` that its key hashes.

    A list in a fixed order (cheaper to encode than a dict with sorted keys):
    [key version, provider, model, system, [[role, content], ...], max_tokens,
    temperature as a float, seed, stop sequences, sample_index].

    Args:
        provider: the wire protocol the request goes out on.
        request: the request.

    Returns:
        Plain values; equal requests give equal lists.
    """
    return [
        _KEY_VERSION,
        provider.value if isinstance(provider, Provider) else Provider(provider).value,
        request.model,
        request.system,
        [[m.role, m.content] for m in request.messages],
        request.max_tokens,
        # float() so that temperature=0 and temperature=0.0 hash alike.
        float(request.temperature),
        request.seed,
        list(request.stop),
        request.sample_index,
    ]


def request_key(provider: Provider | str, request: ChatRequest) -> bytes:
    """The 32-byte content key of `request` sent over `provider`.

    Args:
        provider: the wire protocol the request goes out on.
        request: the request.

    Returns:
        SHA-256 of the JSON of `normalise_request`.
    """
    return hashlib.sha256(orjson.dumps(normalise_request(provider, request))).digest()
